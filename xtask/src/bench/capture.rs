//! `cargo xtask bench capture`: what process capture costs, measured as ratios in one run.
//!
//! Two questions, each answered by variants interleaved round by round (so drift in the
//! machine's speed hits every variant alike), with medians reported:
//! 1. Does anyone else pay? `xtask __syscall-loop` (getpid() + openat()/close() of /dev/null,
//!    uncaged) with agentcaged stopped (a) and running with its hooks attached (b).
//!    Target b/a <= 1.01: the hooks are on exec, fork and exit only, never on the syscall path.
//! 2. What does a caged agent pay? `xtask __exec-loop` (fork + exec of /bin/true, waited for)
//!    uncaged (c), caged with full capture: exec, fork and exit events, argv, content hashes
//!    (d), and uncaged under auditd with an execve rule, which captures the same execs (e).
//!    Targets: d/c <= 1.05, and d < e.

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;

use super::common::{measure, median, Daemon, WorkDir};
use crate::{
    setup::run_setup,
    util::{cmd, describe, output, require_root, run},
};

const DAEMON_CGROUP: &str = "agentcage-bench-capture";
const TARGET_B_OVER_A: f64 = 1.01;
const TARGET_D_OVER_C: f64 = 1.05;
const AUDIT_KEY: &str = "agentcage-bench";

#[derive(Args)]
pub struct CaptureArgs {
    /// getpid()+openat()+close() triples per syscall run.
    #[arg(long, default_value_t = 300_000)]
    syscalls: u32,
    /// fork+exec of /bin/true per exec run.
    #[arg(long, default_value_t = 2_000)]
    execs: u32,
    /// Rounds; each runs every variant once.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Leave out the auditd variant (e).
    #[arg(long)]
    no_auditd: bool,
}

#[derive(Args)]
pub struct SyscallLoopArgs {
    #[arg(long)]
    iterations: u32,
}

#[derive(Args)]
pub struct ExecLoopArgs {
    #[arg(long)]
    iterations: u32,
}

/// `xtask __syscall-loop`: prints ns per getpid()+openat()+close().
pub fn syscall_loop(args: &SyscallLoopArgs) -> Result<()> {
    ensure!(args.iterations > 0, "--iterations must be at least 1");
    let path = c"/dev/null";
    let start = Instant::now();
    for _ in 0..args.iterations {
        // SAFETY: plain syscalls on a static NUL-terminated path; the fd is closed at once.
        unsafe {
            libc::getpid();
            let fd = libc::openat(
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            ensure!(
                fd >= 0,
                "openat /dev/null: {}",
                std::io::Error::last_os_error()
            );
            libc::close(fd);
        }
    }
    println!(
        "{:.1}",
        start.elapsed().as_nanos() as f64 / f64::from(args.iterations)
    );
    Ok(())
}

/// `xtask __exec-loop`: prints ns per fork+exec+wait of /bin/true.
pub fn exec_loop(args: &ExecLoopArgs) -> Result<()> {
    ensure!(args.iterations > 0, "--iterations must be at least 1");
    let start = Instant::now();
    for i in 0..args.iterations {
        let status = Command::new("/bin/true")
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("exec #{i} of /bin/true"))?;
        ensure!(status.success(), "/bin/true failed: {status}");
    }
    println!(
        "{:.1}",
        start.elapsed().as_nanos() as f64 / f64::from(args.iterations)
    );
    Ok(())
}

pub fn bench_capture(args: &CaptureArgs) -> Result<()> {
    require_root("`cargo xtask bench capture`")?;
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    run_setup()?;
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let work = WorkDir::new()?;
    let policy = "version: 1\nagents:\n  bench: {}\n";
    let syscall_argv = |n: u32| -> Vec<String> {
        vec![
            exe.display().to_string(),
            "__syscall-loop".into(),
            "--iterations".into(),
            n.to_string(),
        ]
    };
    let exec_argv = |n: u32| -> Vec<String> {
        vec![
            exe.display().to_string(),
            "__exec-loop".into(),
            "--iterations".into(),
            n.to_string(),
        ]
    };
    let uncaged = |argv: &[String]| {
        let mut c = cmd(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    let auditd = !args.no_auditd;
    if auditd {
        ensure!(
            which("auditctl") && which("auditd"),
            "auditd is not installed (cargo xtask setup installs it); or pass --no-auditd"
        );
    }

    let mut samples: [Vec<f64>; 5] = Default::default();
    for round in 1..=args.rounds {
        // (a): no daemon at all.
        samples[0].push(measure(&mut uncaged(&syscall_argv(args.syscalls)))?);
        {
            let daemon = Daemon::start_with_policy(&work.0, policy, DAEMON_CGROUP)?;
            // (b): the daemon runs, hooks attached, a cage exists; the loop is uncaged.
            samples[1].push(measure(&mut uncaged(&syscall_argv(args.syscalls)))?);
            // (c) and (d) both with the daemon running: only caging differs.
            samples[2].push(measure(&mut uncaged(&exec_argv(args.execs)))?);
            samples[3].push(measure(&mut daemon.run_cmd(&exec_argv(args.execs)))?);
        }
        if auditd {
            let _audit = Auditd::start(&work.0)?;
            samples[4].push(measure(&mut uncaged(&exec_argv(args.execs)))?);
        }
        let last: Vec<String> = samples
            .iter()
            .filter_map(|s| s.last())
            .map(|x| format!("{x:.0}"))
            .collect();
        eprintln!("round {round}/{}: {}", args.rounds, last.join(" "));
    }

    let labels = [
        "(a) syscalls, no daemon",
        "(b) syscalls, daemon running",
        "(c) fork+exec, uncaged",
        "(d) fork+exec, caged + capture",
        "(e) fork+exec, auditd execve rule",
    ];
    println!(
        "bench capture: {} getpid+openat+close, {} fork+exec per run, {} rounds interleaved, \
         median ns/op",
        args.syscalls, args.execs, args.rounds
    );
    let mut m = [0f64; 5];
    for (i, (label, s)) in labels.iter().zip(&samples).enumerate() {
        if s.is_empty() {
            continue;
        }
        m[i] = median(s);
        let mut runs = String::new();
        for x in s {
            let _ = write!(runs, " {x:.0}");
        }
        println!("  {label:<36} {:>10.0} ns/op   (runs:{runs})", m[i]);
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let ba = m[1] / m[0];
    println!(
        "  b/a = {ba:.3}   target <= {TARGET_B_OVER_A:.2}: {}",
        verdict(ba <= TARGET_B_OVER_A)
    );
    let dc = m[3] / m[2];
    println!(
        "  d/c = {dc:.3}   target <= {TARGET_D_OVER_C:.2}: {}",
        verdict(dc <= TARGET_D_OVER_C)
    );
    if auditd {
        let de = m[3] / m[4];
        println!(
            "  d/e = {de:.3}   target < 1 (agentcage faster than auditd): {}",
            verdict(de < 1.0)
        );
    }
    Ok(())
}

fn which(program: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).exists())
}

/// auditd running with an execve rule, for one variant; stopped and the rule removed on drop.
struct Auditd {
    child: std::process::Child,
}

impl Auditd {
    fn start(work: &Path) -> Result<Self> {
        let log = work.join("audit.log");
        let conf = work.join("auditd.conf");
        std::fs::write(
            &conf,
            format!(
                "log_file = {}\nlog_format = ENRICHED\nflush = INCREMENTAL_ASYNC\nfreq = 50\n\
                 max_log_file = 512\nmax_log_file_action = ROTATE\nnum_logs = 2\n\
                 space_left = 2\nadmin_space_left = 1\ndisk_full_action = IGNORE\n\
                 disk_error_action = IGNORE\n",
                log.display()
            ),
        )?;
        // auditd refuses a config file that others may write.
        std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let mut c = cmd("auditd");
        c.args(["-n", "-c"])
            .arg(work)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = c
            .spawn()
            .with_context(|| format!("starting `{}`", describe(&c)))?;
        let d = Self { child };
        // Ready once the kernel names it as the audit daemon.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let status = output(cmd("auditctl").arg("-s"))?;
            if status
                .lines()
                .any(|l| l.trim() == format!("pid {}", d.child.id()))
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("auditd did not register with the kernel: {status}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        run(cmd("auditctl").args(["-D"]))?;
        run(cmd("auditctl").args([
            "-a",
            "always,exit",
            "-F",
            "arch=b64",
            "-S",
            "execve",
            "-k",
            AUDIT_KEY,
        ]))?;
        run(cmd("auditctl").args(["-e", "1"]))?;
        Ok(d)
    }
}

impl Drop for Auditd {
    fn drop(&mut self) {
        let _ = cmd("auditctl").args(["-D"]).status();
        let _ = cmd("auditctl").args(["-e", "0"]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
