//! What the daemon needs from the kernel and says about it, on every kernel the suite meets
//! (the host, and each boot of `cargo xtask vm-test`): BPF memory where it is charged to
//! RLIMIT_MEMLOCK (before Linux 5.11), and the policy features this kernel cannot enforce,
//! each refused naming what is missing.

use agentcage_tests::bounded::Bounded as _;
use std::os::unix::process::CommandExt as _;

use agentcage_tests::harness::{self, stderr, Daemon};

/// Whether the running kernel is older than `major.minor`.
fn kernel_before(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap());
    (v.next().unwrap(), v.next().unwrap()) < (major, minor)
}

/// A daemon whose RLIMIT_MEMLOCK is 64 KiB (the usual default) and that cannot raise it
/// (CAP_SYS_RESOURCE dropped from the bounding set, so root does not regain it at exec).
/// From Linux 5.11 BPF memory is charged to the memory cgroup and it starts; before, the
/// maps do not fit and the error says that the limit is the cause and how to lift it.
#[test]
fn a_memlock_limit_that_cannot_be_raised_matters_only_where_bpf_memory_is_charged_to_it() {
    const LIMIT: libc::rlim_t = 64 * 1024;
    /// `CAP_SYS_RESOURCE` in linux/capability.h.
    const CAP_SYS_RESOURCE: libc::c_ulong = 24;
    let started = Daemon::try_start_customized("version: 1\nagents: {}\n", |c| {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(|| {
                let r = libc::rlimit {
                    rlim_cur: LIMIT,
                    rlim_max: LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const r) != 0
                    || libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_RESOURCE, 0, 0, 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    if kernel_before(5, 11) {
        let log = match started {
            Ok(_) => panic!("the maps fit in 64 KiB of locked memory?"),
            Err(log) => log,
        };
        for needle in ["RLIMIT_MEMLOCK", "64 KiB", "CAP_SYS_RESOURCE", "ulimit -l"] {
            assert!(log.contains(needle), "{needle:?} is named in: {log}");
        }
    } else {
        let daemon = started.unwrap_or_else(|log| panic!("the daemon did not start: {log}"));
        assert!(daemon.status()["tier"].is_string());
    }
}

/// Each policy feature some kernels cannot enforce starts where this kernel can enforce it
/// and is refused, naming what is missing, where it cannot; which ones are refused is what
/// the runner expects of this kernel (AGENTCAGE_EXPECT_TIER, AGENTCAGE_EXPECT_REFUSED).
#[test]
fn refusals_name_what_this_kernel_lacks() {
    let digest = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let daemon = Daemon::start(&format!(
        "version: 1\nagents:\n  strict:\n    enforcement: deny\n  files:\n    files:\n      \
         protect:\n        - path: /etc/shadow\n  digest:\n    exec:\n      deny: [\"{digest}\"]\n"
    ));
    let tier = std::env::var("AGENTCAGE_EXPECT_TIER")
        .unwrap_or_else(|_| daemon.status()["tier"].as_str().unwrap().to_owned());
    daemon.expect_tier(&tier);
    let refused = harness::expected_refused(&tier);
    let cases = [
        ("strict", "deny_enforcement", "enforcement: deny", "BPF LSM"),
        ("files", "file_rules", "files rules", "userns_create"),
        (
            "digest",
            "content_rules",
            "exec rules by sha256",
            "bpf_ima_file_hash",
        ),
    ];
    for (agent, feature, needs, deny_tier_why) in cases {
        let out = daemon
            .cli()
            .args(["run", "--agent", agent, "--", "/bin/true"])
            .output_bounded()
            .unwrap();
        if !refused.contains(&feature) {
            assert!(out.status.success(), "{agent}: {}", stderr(&out));
            continue;
        }
        assert!(!out.status.success(), "{agent} must not start");
        let err = stderr(&out);
        assert!(err.contains(needs), "{err}");
        let why = if tier == "kill" {
            "BPF LSM"
        } else {
            deny_tier_why
        };
        assert!(err.contains(why), "the message names {why:?}: {err}");
        assert!(
            !daemon.cgroup_root().join(agent).exists(),
            "no cage is made for a refused agent"
        );
    }
}
