//! `cargo xtask vm-test`: the test suites on a second kernel. Debian 12's cloud kernel
//! (fetched by `cargo xtask setup`) boots under qemu (TCG) from an initramfs holding the test
//! executables; once with its default LSM list, where BPF LSM is active (the deny tier), and
//! once with BPF LSM left out of `lsm=` (the kill tier). See docs/KERNEL.md.

pub mod artifacts;
mod console;
mod init;
mod initramfs;
pub mod kernel;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::setup::run_setup;
use crate::util::repo_root;
use console::{Qemu, Verdict};
use init::{BootScript, Run};
use initramfs::Stage;

/// One boot of the VM kernel and the test targets it runs.
#[derive(Debug)]
pub struct Boot {
    /// Its name, in `--boot` and in the summary line `vm(NAME): ...`.
    pub name: &'static str,
    /// The kernel's `lsm=`, or None for the kernel's default list.
    pub lsm: Option<&'static str>,
    /// Whether BPF LSM must be active (checked in the VM: a boot that is not the kernel it
    /// claims to be fails).
    pub bpf_lsm: bool,
    /// Test targets (`[[test]]` names), run in this order. A name the build lacks is an error.
    pub tests: &'static [&'static str],
    /// Environment of the test executables.
    pub env: &'static [(&'static str, &'static str)],
}

/// Which test targets run in which boot.
pub const VM_SUITES: &[Boot] = &[
    Boot {
        name: "deny",
        lsm: None,
        bpf_lsm: true,
        tests: &[
            "egress",
            "capture",
            "deny_tier",
            "accounts",
            "inputs",
            "selftest",
        ],
        env: &[("AGENTCAGE_EXPECT_TIER", "deny")],
    },
    Boot {
        name: "kill",
        // The kernel's default list without `bpf` (and tomoyo, which nothing here needs).
        lsm: Some("lockdown,capability,landlock,yama,apparmor"),
        bpf_lsm: false,
        tests: &[
            "egress",
            "capture",
            "kill_tier",
            "accounts",
            "inputs",
            "selftest",
        ],
        env: &[("AGENTCAGE_EXPECT_TIER", "kill")],
    },
];

/// Host programs the tests run, by path (`/bin/sh -c ...`, copies of `/bin/true`) or by name
/// (`bpftool`, `sha256sum`): staged with their libraries at their host paths, so a test sees
/// the same programs as on the host. busybox's applets, last on PATH, cover the rest.
const HOST_TOOLS: &[&str] = &[
    "/bin/sh",
    "/bin/true",
    "/bin/echo",
    "/bin/touch",
    "sha256sum",
    "bpftool",
];

/// Tests left out in every boot, with why: load tests whose work takes minutes under
/// emulation (they run on the host). Passed to the test executables as `--skip NAME`.
const VM_SKIP: &[(&str, &str)] = &[(
    "ten_thousand_execs_are_all_reported_or_counted_as_lost",
    "10,000 execs under TCG outlast every deadline",
)];

/// The VM's vCPUs; the tests run with as many threads.
const VCPUS: u32 = 2;

/// Environment of the test executables in every boot. Emulation makes everything several
/// times slower (loading the programs alone takes seconds), so the harness's deadlines for
/// awaited conditions grow.
const VM_ENV: &[(&str, &str)] = &[("AGENTCAGE_TEST_DEADLINE_SECS", "60")];

/// Seconds one boot may take by default, from qemu's start to its exit. The deny boot takes
/// 3-6 minutes on an idle 2-core machine and was seen at 8.5 minutes on a loaded one; both
/// boots together stay far inside CI's 90 minutes.
pub const DEFAULT_TIMEOUT_SECS: u64 = 1200;

#[derive(clap::Args)]
pub struct VmArgs {
    /// Run only this boot (repeatable; default: every boot in VM_SUITES).
    #[arg(long = "boot", value_name = "NAME")]
    pub boots: Vec<String>,
    /// Seconds one boot may take before it is killed and counted as failed.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Extra arguments for the test executables (e.g. a test name filter), after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// One boot's result.
pub struct Outcome {
    pub name: &'static str,
    pub verdict: Verdict,
}

impl Outcome {
    /// The summary line, e.g. `vm(deny): 12 passed, 0 failed`.
    pub fn summary(&self) -> String {
        format!(
            "vm({}): {} passed, {} failed",
            self.name, self.verdict.passed, self.verdict.failed
        )
    }
}

/// `cargo xtask vm-test`: setup, then [`run`], then the summary; an error if anything failed.
pub fn vm_test(args: &VmArgs) -> Result<()> {
    run_setup()?;
    let outcomes = run(args)?;
    report(&outcomes)
}

/// Prints every boot's summary and errors; an error if any boot failed.
pub fn report(outcomes: &[Outcome]) -> Result<()> {
    for o in outcomes {
        println!("{}", o.summary());
        for e in &o.verdict.errors {
            println!("  vm({}): {e}", o.name);
        }
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.verdict.failed > 0)
        .map(|o| o.name)
        .collect();
    if !failed.is_empty() {
        bail!("VM boots failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Builds, assembles the initramfs and boots each selected boot in turn.
pub fn run(args: &VmArgs) -> Result<Vec<Outcome>> {
    let boots = select(&args.boots)?;
    let kernel = kernel::kernel()?;
    let mut targets: Vec<&str> = boots.iter().flat_map(|b| b.tests.iter().copied()).collect();
    targets.sort_unstable();
    targets.dedup();
    let artifacts = artifacts::build(&targets)?;

    // Every boot's targets are resolved before anything boots: a missing one is an error
    // in the table, not a test failure.
    let mut scripts = Vec::new();
    for boot in &boots {
        let runs = boot
            .tests
            .iter()
            .map(|&name| {
                Ok(Run {
                    name,
                    exe: artifacts.test(name)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        scripts.push(BootScript {
            name: boot.name,
            env: boot.env,
            runs,
        });
    }

    let t = Instant::now();
    let initrd = kernel::vm_dir().join("initramfs.cpio.gz");
    let mut stage = Stage::new(kernel::vm_dir().join("initramfs"))?;
    // /init's interpreter, at the path its first line names.
    let busybox = Path::new(init::BUSYBOX);
    if !is_executable(busybox) {
        bail!(
            "{} is missing (`cargo xtask setup` installs busybox-static)",
            busybox.display()
        );
    }
    stage.executable(busybox)?;
    for exe in artifacts.bins.values() {
        stage.executable(exe)?;
    }
    for s in &scripts {
        for r in &s.runs {
            stage.executable(r.exe)?;
        }
    }
    for tool in HOST_TOOLS {
        let path = if tool.contains('/') {
            PathBuf::from(tool)
        } else {
            which(tool)?
        };
        stage.executable(&path)?;
    }
    for dir in ["/proc", "/sys", "/dev", "/run", "/root"] {
        stage.dir(dir, 0o755)?;
    }
    stage.dir("/tmp", 0o1777)?;
    // Tests switch to uid/gid 65534 by number; the names keep tools that print them happy.
    stage.file(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    stage.file("/etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    // cargo runs integration tests in their package's directory.
    let cwd = repo_root().join("tests");
    stage.host_path(&cwd, false)?;
    let mut test_args = Vec::new();
    for (name, why) in VM_SKIP {
        eprintln!("vm: skipping {name}: {why}");
        test_args.extend(["--skip".to_owned(), (*name).to_owned()]);
    }
    test_args.extend(args.args.iter().cloned());
    let script = init::script(
        &scripts,
        &init::TestRun {
            cwd: &cwd,
            env: VM_ENV,
            test_threads: VCPUS,
            args: &test_args,
        },
    );
    stage.file("/init", &script, 0o755)?;
    stage.archive(&initrd)?;
    let size = std::fs::metadata(&initrd)
        .with_context(|| format!("reading {}", initrd.display()))?
        .len();
    eprintln!(
        "vm: initramfs {} ({} MiB) in {:.1}s",
        initrd.display(),
        size >> 20,
        t.elapsed().as_secs_f64()
    );

    let mut outcomes = Vec::new();
    for boot in boots {
        let t = Instant::now();
        let qemu = Qemu {
            kernel: &kernel,
            initrd: &initrd,
            boot: boot.name,
            lsm: boot.lsm,
            vcpus: VCPUS,
        };
        eprintln!("== vm({}): booting {}", boot.name, kernel.display());
        let report = qemu.run(
            &format!("vm({})| ", boot.name),
            Duration::from_secs(args.timeout),
        )?;
        let verdict = report.verdict(boot.tests, boot.name, boot.bpf_lsm);
        eprintln!(
            "== vm({}): {:.1}s, kernel {}, LSMs {}",
            boot.name,
            t.elapsed().as_secs_f64(),
            report.kernel.as_deref().unwrap_or("?"),
            report.lsm.as_deref().unwrap_or("?")
        );
        outcomes.push(Outcome {
            name: boot.name,
            verdict,
        });
    }
    Ok(outcomes)
}

/// The boots named (all when none is), or an error naming the unknown one.
fn select(names: &[String]) -> Result<Vec<&'static Boot>> {
    if names.is_empty() {
        return Ok(VM_SUITES.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            VM_SUITES.iter().find(|b| b.name == n).with_context(|| {
                format!(
                    "no VM boot named {n:?} (boots: {})",
                    VM_SUITES
                        .iter()
                        .map(|b| b.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        })
        .collect()
}

/// `name` found on PATH, as the tests would find it, or else in the usual system
/// directories (a user's PATH may lack the sbin ones, where bpftool lives).
fn which(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let system = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    std::env::split_paths(&path)
        .chain(system.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .with_context(|| format!("{name} is not on PATH (`cargo xtask setup` installs it)"))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::{select, VM_SUITES};

    #[test]
    fn boots_are_selected_by_name() {
        assert_eq!(select(&[]).unwrap().len(), VM_SUITES.len());
        assert_eq!(select(&["kill".into()]).unwrap()[0].name, "kill");
        let err = select(&["bogus".into()]).unwrap_err().to_string();
        assert!(err.contains("\"bogus\"") && err.contains("deny"), "{err}");
    }

    #[test]
    fn the_deny_boot_keeps_bpf_lsm_and_the_kill_boot_drops_it() {
        for b in VM_SUITES {
            let lsm_has_bpf = b.lsm.is_none_or(|l| l.split(',').any(|m| m == "bpf"));
            assert_eq!(lsm_has_bpf, b.bpf_lsm, "boot {}", b.name);
        }
    }
}
