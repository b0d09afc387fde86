//! `cargo xtask vm-test`: the test suites on other kernels. Debian's cloud kernels 5.10,
//! 6.1 and 6.12 (fetched by `cargo xtask setup`) boot under qemu (TCG) from one initramfs
//! holding the test executables, each twice: with BPF LSM active (the deny tier) and without
//! it (the kill tier). See docs/KERNEL.md.

pub mod artifacts;
mod boots;
mod console;
mod init;
mod initramfs;
pub mod kernel;
mod table;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::repo_root;
pub use boots::{Boot, Tier, DOCTOR, VM_SUITES};
use console::{Expect, Qemu, Verdict};
use init::{BootScript, Run, StepRun};
use initramfs::Stage;

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
/// emulation, and tests needing what the initramfs lacks (they run on the host). Passed to
/// the test executables as `--skip NAME`.
const VM_SKIP: &[(&str, &str)] = &[
    (
        "ten_thousand_execs_are_all_reported_or_counted_as_lost",
        "10,000 execs under TCG outlast every deadline",
    ),
    (
        "every_attempt_of_the_selftest_is_contained",
        "the selftest step ran the same catalogue in this boot (a daemon start fewer)",
    ),
    (
        "dns_ten_thousand_names_keep_memory_bounded_and_evict_the_oldest",
        "10,000 resolutions take minutes under TCG, and the bound and eviction are the \
         daemon's, whatever the tier",
    ),
    (
        "a_kill_in_progress_holds_up_neither_events_nor_status",
        "it holds the kill with a fuse mount, and Debian's kernels build fuse as a module the initramfs lacks",
    ),
];

/// The VM's vCPUs; the tests run with as many threads.
const VCPUS: u32 = 2;

/// Environment of the test executables in every boot. Emulation makes everything several
/// times slower, and a machine shared with other VMs slower still: a daemon start (loading
/// and verifying the programs) took 10-20 s on 6.1 alone, 30-90 s in 5.10's deny tier and
/// over 60 s on 6.1 at a load average of 12 on 2 cores. So the harness's deadlines for
/// awaited conditions grow; they only bound waits, so a fast run does not get slower.
const VM_ENV: &[(&str, &str)] = &[("AGENTCAGE_TEST_DEADLINE_SECS", "180")];

/// Seconds one boot may take by default, from qemu's start to its exit. A deny boot takes
/// 3-6 minutes on an idle 2-core machine (5.10's about 8), and 5.10's took 19 minutes at a
/// load average of 12 (other sessions' VMs); a timeout fails only that boot, and a passing
/// run is not slower for a longer one.
pub const DEFAULT_TIMEOUT_SECS: u64 = 1800;

#[derive(clap::Args)]
pub struct VmArgs {
    /// Run only boots of this kernel (repeatable: 5.10, 6.1, 6.12; default: every kernel).
    #[arg(long = "kernel", value_name = "VERSION")]
    pub kernels: Vec<String>,
    /// Run only this boot (repeatable): `deny` or `kill` on every selected kernel, or one
    /// boot by its full name (`5.10/deny`). Default: every boot in VM_SUITES.
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
    pub name: String,
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

/// `cargo xtask vm-test` after setup: [`run`], then the summary; an error if anything failed.
pub fn vm_test(args: &VmArgs) -> Result<()> {
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
        .map(|o| o.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("VM boots failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Builds, assembles the initramfs (one for every boot) and boots each selected boot in
/// turn.
pub fn run(args: &VmArgs) -> Result<Vec<Outcome>> {
    let boots = select(&args.kernels, &args.boots)?;
    // Every image is found before anything is built: a missing one is a setup problem.
    let images = boots
        .iter()
        .map(|b| kernel::image(b.kernel))
        .collect::<Result<Vec<_>>>()?;
    let mut targets: Vec<&str> = boots.iter().flat_map(|b| b.tests.iter().copied()).collect();
    targets.sort_unstable();
    targets.dedup();
    let artifacts = artifacts::build(&targets)?;
    // The steps run the CLI beside the daemon.
    let bin = |name: &str| {
        artifacts
            .bins
            .get(name)
            .with_context(|| format!("the build made no {name} binary"))
    };
    let (cli, agentcaged) = (bin("agentcage")?, bin("agentcaged")?);

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
        let mut args = Vec::new();
        for (name, why) in boot.skip.iter().copied().flatten() {
            eprintln!("vm({}): skipping {name}: {why}", boot.name());
            args.extend(["--skip".to_owned(), (*name).to_owned()]);
        }
        scripts.push(BootScript {
            name: boot.name(),
            env: vec![
                ("AGENTCAGE_EXPECT_TIER", boot.tier.name().to_owned()),
                ("AGENTCAGE_EXPECT_REFUSED", boot.refused.join(",")),
            ],
            steps: boot
                .steps
                .iter()
                .map(|st| StepRun {
                    name: st.name,
                    argv: std::iter::once(cli.display().to_string())
                        .chain(st.args.iter().map(|a| (*a).to_owned()))
                        .collect(),
                    daemon: st.daemon,
                })
                .collect(),
            runs,
            args,
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
    stage.file(init::POLICY, "version: 1\nagents: {}\n", 0o644)?;
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
            agentcaged,
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

    let out_dir = kernel::vm_dir().join("output");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut outcomes = Vec::new();
    let mut doctors = Vec::new();
    for (boot, image) in boots.into_iter().zip(&images) {
        let name = boot.name();
        let t = Instant::now();
        let qemu = Qemu {
            kernel: image,
            initrd: &initrd,
            boot: &name,
            lsm: boot.lsm,
            vcpus: VCPUS,
        };
        eprintln!("== vm({name}): booting {}", image.display());
        let report = qemu.run(&format!("vm({name})| "), Duration::from_secs(args.timeout))?;
        let steps: Vec<&str> = boot.steps.iter().map(|st| st.name).collect();
        let verdict = report.verdict(&Expect {
            boot: &name,
            release: boot.kernel.release,
            bpf_lsm: boot.tier == Tier::Deny,
            steps: &steps,
            tests: boot.tests,
        });
        let mut verdict = verdict;
        for st in &report.steps {
            let file = out_dir.join(format!("{}-{}.txt", name.replace('/', "-"), st.name));
            std::fs::write(&file, st.lines.join("\n") + "\n")
                .with_context(|| format!("writing {}", file.display()))?;
            eprintln!("== vm({name}): {} output in {}", st.name, file.display());
            if st.name == DOCTOR.name && st.exit == Some(0) {
                match table::Column::parse(&name, &st.lines) {
                    Ok(c) => doctors.push(c),
                    Err(e) => {
                        verdict.failed += 1;
                        verdict.errors.push(format!("{e:#}"));
                    }
                }
            }
        }
        eprintln!(
            "== vm({name}): {:.1}s, kernel {}, LSMs {}",
            t.elapsed().as_secs_f64(),
            report.kernel.as_deref().unwrap_or("?"),
            report.lsm.as_deref().unwrap_or("?")
        );
        outcomes.push(Outcome { name, verdict });
    }
    if !doctors.is_empty() {
        let file = out_dir.join("doctor-table.md");
        std::fs::write(&file, table::markdown(&doctors))
            .with_context(|| format!("writing {}", file.display()))?;
        eprintln!(
            "vm: what doctor said in each boot, as a table: {}",
            file.display()
        );
    }
    Ok(outcomes)
}

/// The boots of the kernels named (all when none is) whose tier or full name is among
/// `boots` (all when none is), or an error naming an unknown kernel or boot.
fn select(kernels: &[String], boots: &[String]) -> Result<Vec<&'static Boot>> {
    for k in kernels {
        kernel::by_name(k)?;
    }
    for b in boots {
        let known = VM_SUITES
            .iter()
            .any(|s| s.tier.name() == b || s.name() == *b);
        if !known {
            bail!(
                "no VM boot named {b:?} (boots: deny, kill, or one of {})",
                VM_SUITES
                    .iter()
                    .map(Boot::name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let chosen: Vec<&Boot> = VM_SUITES
        .iter()
        .filter(|s| kernels.is_empty() || kernels.iter().any(|k| k == s.kernel.name))
        .filter(|s| boots.is_empty() || boots.iter().any(|b| s.tier.name() == b || s.name() == *b))
        .collect();
    if chosen.is_empty() {
        bail!(
            "no VM boot is both of kernel {} and named {}",
            kernels.join(" or "),
            boots.join(" or ")
        );
    }
    Ok(chosen)
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
    use super::boots::{KILL_REFUSED, KILL_REFUSED_BEFORE_6_7};
    use super::{select, Tier, VM_SUITES};

    fn names(kernels: &[&str], boots: &[&str]) -> Vec<String> {
        let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        select(&own(kernels), &own(boots))
            .unwrap()
            .iter()
            .map(|b| b.name())
            .collect()
    }

    #[test]
    fn boots_are_selected_by_kernel_tier_or_name() {
        assert_eq!(names(&[], &[]).len(), VM_SUITES.len());
        assert_eq!(names(&["5.10"], &["deny"]), ["5.10/deny"]);
        assert_eq!(
            names(&[], &["kill"]),
            ["5.10/kill", "6.1/kill", "6.12/kill"]
        );
        assert_eq!(names(&["6.12"], &[]), ["6.12/deny", "6.12/kill"]);
        assert_eq!(names(&[], &["6.1/deny"]), ["6.1/deny"]);
        let err = select(&[], &["bogus".into()]).unwrap_err().to_string();
        assert!(
            err.contains("\"bogus\"") && err.contains("5.10/deny"),
            "{err}"
        );
        let err = select(&["4.19".into()], &[]).unwrap_err().to_string();
        assert!(err.contains("\"4.19\""), "{err}");
    }

    /// Every kernel boots once in each tier; BPF LSM is in `lsm=` exactly in the deny boots
    /// (a default list is the kernel's, measured in docs/KERNEL.md); the kill tier refuses
    /// every feature.
    #[test]
    fn each_kernel_boots_in_both_tiers_as_declared() {
        for k in super::kernel::KERNELS {
            for tier in [Tier::Deny, Tier::Kill] {
                let n = VM_SUITES
                    .iter()
                    .filter(|b| b.kernel.name == k.name && b.tier == tier)
                    .count();
                assert_eq!(n, 1, "{} {}", k.name, tier.name());
            }
        }
        for b in VM_SUITES {
            if let Some(l) = b.lsm {
                let has_bpf = l.split(',').any(|m| m == "bpf");
                assert_eq!(has_bpf, b.tier == Tier::Deny, "boot {}", b.name());
            }
            if b.tier == Tier::Kill {
                // Unix sockets are confined in the kill tier from 6.7 (cgroup Unix hooks).
                let want = if b.kernel.name == "6.12" {
                    KILL_REFUSED
                } else {
                    KILL_REFUSED_BEFORE_6_7
                };
                assert_eq!(b.refused, want, "boot {}", b.name());
            }
            for r in b.refused {
                assert!(
                    [
                        "deny_enforcement",
                        "file_rules",
                        "content_rules",
                        "unix_sockets"
                    ]
                    .contains(r),
                    "boot {}: {r}",
                    b.name()
                );
            }
        }
    }
}
