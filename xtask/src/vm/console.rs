//! One boot under qemu: starts it, echoes and reads its serial console, enforces the
//! deadline, and turns the `@@vmtest` markers and libtest's summary lines into a verdict.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::init::{BOOT_ARG, MARKER};
use crate::results::count;
use crate::util::describe;

/// What qemu runs: Debian's kernel under TCG (`-enable-kvm` hangs on these machines), two
/// vCPUs, no network device (the tests use loopback only), the console on stdio.
pub struct Qemu<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The boot's name, passed to /init on the kernel command line.
    pub boot: &'a str,
    /// `lsm=` for the kernel, when the boot leaves its default list.
    pub lsm: Option<&'a str>,
    pub vcpus: u32,
}

impl Qemu<'_> {
    fn command(&self) -> Command {
        let mut append = format!("console=ttyS0 quiet panic=-1 {BOOT_ARG}={}", self.boot);
        if let Some(lsm) = self.lsm {
            append.push_str(&format!(" lsm={lsm}"));
        }
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-accel", "tcg", "-cpu", "max", "-m", "2048"])
            .arg("-smp")
            .arg(self.vcpus.to_string())
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .arg("-kernel")
            .arg(self.kernel)
            .arg("-initrd")
            .arg(self.initrd)
            .arg("-append")
            .arg(append);
        c
    }

    /// Boots, echoing every console line prefixed with `prefix`, and returns what the console
    /// said; a boot still running after `timeout` is killed and reported as timed out.
    pub fn run(&self, prefix: &str, timeout: Duration) -> Result<Report> {
        let mut c = self.command();
        let line = describe(&c);
        eprintln!("+ {line}");
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!("could not start `{line}` (installed by `cargo xtask setup`)")
            })?;
        let stdout = child.stdout.take().context("qemu stdout")?;
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let l = plain(&String::from_utf8_lossy(&buf));
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let mut report = Report::default();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    println!("{prefix}{l}");
                    report.feed(&l);
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    report.timed_out = Some(timeout);
                    // Our own child: killing it by its handle cannot hit anything else.
                    let _ = child.kill();
                    break;
                }
            }
        }
        let status = child.wait().context("waiting for qemu")?;
        let _ = reader.join();
        if report.timed_out.is_none() && !status.success() {
            report.problems.push(format!("qemu exited with {status}"));
        }
        Ok(report)
    }
}

/// A console line without its line end, terminal escape sequences and other control
/// characters: the firmware clears the screen, which would wipe the terminal that echoes it.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI (`ESC [ params final`) or a two-character escape (`ESC c`).
                if chars.next_if_eq(&'[').is_some() {
                    while chars
                        .next()
                        .is_some_and(|p| !('\u{40}'..='\u{7e}').contains(&p))
                    {}
                } else {
                    chars.next();
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// One test executable's outcome as the console told it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Binary {
    pub name: String,
    /// Passed and failed from libtest's `test result:` line.
    pub summary: Option<(u64, u64)>,
    /// Its exit status.
    pub exit: Option<i32>,
    /// The tests it was to run (`--list` before the run).
    pub listed: Vec<String>,
    /// The tests that reported a result, and those of them that failed.
    pub finished: Vec<String>,
    pub failed: Vec<String>,
}

impl Binary {
    /// Listed tests that never reported a result.
    fn unfinished(&self) -> Vec<&str> {
        self.listed
            .iter()
            .filter(|t| !self.finished.contains(t))
            .map(String::as_str)
            .collect()
    }
}

/// One step's (a command run before the tests) output as the console told it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StepOutput {
    pub name: String,
    /// Its lines, as printed.
    pub lines: Vec<String>,
    /// Its exit status.
    pub exit: Option<i32>,
}

/// What one boot's console said.
#[derive(Debug, Default)]
pub struct Report {
    /// The boot /init says it runs.
    pub boot: Option<String>,
    /// `/sys/kernel/security/lsm` in the VM.
    pub lsm: Option<String>,
    pub kernel: Option<String>,
    /// Executables in the order they started; the last may still be running.
    pub binaries: Vec<Binary>,
    /// Steps in the order they started; the last may still be running.
    pub steps: Vec<StepOutput>,
    /// /init reached its end.
    pub done: bool,
    /// Reasons for failing that are not a test's.
    pub problems: Vec<String>,
    pub timed_out: Option<Duration>,
}

impl Report {
    /// Reads one console line.
    pub fn feed(&mut self, line: &str) {
        // Kernel messages can share a line with ours; the marker may not start it.
        if let Some(at) = line.find(MARKER) {
            let rest = line[at + MARKER.len()..].trim();
            let (word, arg) = rest.split_once(' ').unwrap_or((rest, ""));
            match word {
                "boot" => self.boot = Some(arg.to_owned()),
                "kernel" => self.kernel = Some(arg.to_owned()),
                "lsm" => self.lsm = Some(arg.to_owned()),
                "start" => self.binaries.push(Binary {
                    name: arg.to_owned(),
                    ..Binary::default()
                }),
                "exit" => {
                    let last = self
                        .binaries
                        .last_mut()
                        .map(|b| (b.name.as_str(), &mut b.exit));
                    close(&mut self.problems, last, arg, "");
                }
                "step" => self.steps.push(StepOutput {
                    name: arg.to_owned(),
                    ..StepOutput::default()
                }),
                "step-exit" => {
                    let last = self
                        .steps
                        .last_mut()
                        .map(|st| (st.name.as_str(), &mut st.exit));
                    close(&mut self.problems, last, arg, "step ");
                }
                "listed" => {
                    if let Some(b) = self.binaries.last_mut() {
                        b.listed.push(arg.to_owned());
                    }
                }
                "done" => self.done = true,
                "fatal" => self.problems.push(format!("/init failed: {arg}")),
                _ => self.problems.push(format!("unknown marker line: {line}")),
            }
        } else if let Some(st) = self.steps.last_mut().filter(|st| st.exit.is_none()) {
            st.lines.push(line.to_owned());
        } else if let Some(b) = self.binaries.last_mut().filter(|b| b.exit.is_none()) {
            let l = line.trim_start();
            if let Some(rest) = l.strip_prefix("test result: ") {
                b.summary = Some((count(rest, " passed"), count(rest, " failed")));
            } else if let Some((name, result)) =
                l.strip_prefix("test ").and_then(|t| t.rsplit_once(" ... "))
            {
                b.finished.push(name.to_owned());
                if result.starts_with("FAILED") {
                    b.failed.push(name.to_owned());
                }
            }
        }
    }
}

/// Reads an exit marker's `NAME CODE` into the exit status of `last` (the executable or step
/// that started last, with its name), which must be NAME and still running; a stray marker
/// is a problem.
fn close(
    problems: &mut Vec<String>,
    last: Option<(&str, &mut Option<i32>)>,
    arg: &str,
    what: &str,
) {
    let (name, code) = arg.rsplit_once(' ').unwrap_or((arg, ""));
    match last {
        Some((started, exit)) if started == name && exit.is_none() => *exit = code.parse().ok(),
        _ => problems.push(format!(
            "an exit marker for {what}{name} that never started"
        )),
    }
}

/// One boot's verdict: tests passed and failed, and what else went wrong (each counted as one
/// failure, so that a boot that ran nothing cannot pass).
#[derive(Debug, Default)]
pub struct Verdict {
    pub passed: u64,
    pub failed: u64,
    pub errors: Vec<String>,
}

/// What a boot must show.
pub struct Expect<'a> {
    /// The boot /init must run.
    pub boot: &'a str,
    /// How `uname -r` must begin.
    pub release: &'a str,
    /// Whether BPF LSM must be active.
    pub bpf_lsm: bool,
    /// The steps it runs, in order; each must exit 0.
    pub steps: &'a [&'a str],
    /// The test targets it runs, in order.
    pub tests: &'a [&'a str],
}

impl Report {
    /// Judges the report against what the boot must show.
    pub fn verdict(&self, e: &Expect<'_>) -> Verdict {
        let (expected, boot, bpf_lsm) = (e.tests, e.boot, e.bpf_lsm);
        let mut v = Verdict::default();
        let error = |v: &mut Verdict, e: String| {
            v.failed += 1;
            v.errors.push(e);
        };
        for p in &self.problems {
            error(&mut v, p.clone());
        }
        if self.boot.as_deref() != Some(boot) {
            error(
                &mut v,
                match &self.boot {
                    None => "the VM never reached /init's tests (no boot marker)".to_owned(),
                    Some(b) => format!("/init ran boot {b:?}, not {boot:?}"),
                },
            );
        }
        match &self.lsm {
            None if self.boot.is_some() => {
                error(&mut v, "/init did not report the active LSMs".to_owned());
            }
            None => {}
            Some(list) => {
                let active = list.split(',').any(|l| l.trim() == "bpf");
                if active != bpf_lsm {
                    error(
                        &mut v,
                        format!(
                            "BPF LSM should be {} in this boot, but the active LSMs are {list:?}",
                            if bpf_lsm { "active" } else { "inactive" }
                        ),
                    );
                }
            }
        }
        match &self.kernel {
            Some(k) if !k.starts_with(e.release) => error(
                &mut v,
                format!("the VM runs kernel {k}, not {}*", e.release),
            ),
            None if self.boot.is_some() => {
                error(&mut v, "/init did not report the kernel".to_owned());
            }
            _ => {}
        }
        for (i, name) in e.steps.iter().enumerate() {
            match self.steps.get(i).filter(|st| st.name == *name) {
                Some(StepOutput { exit: Some(0), .. }) => {}
                Some(StepOutput {
                    exit: Some(code), ..
                }) => error(&mut v, format!("step {name}: exited with {code}")),
                Some(_) => error(&mut v, format!("step {name}: did not finish")),
                None if self.boot.is_some() => {
                    error(&mut v, format!("step {name}: never started"));
                }
                None => {}
            }
        }
        for (i, name) in expected.iter().enumerate() {
            let Some(b) = self.binaries.get(i).filter(|b| b.name == *name) else {
                let why = match self.timed_out {
                    Some(t) => format!("timed out after {}s", t.as_secs()),
                    None => "/init stopped".to_owned(),
                };
                error(&mut v, format!("{name}: never started ({why} before it)"));
                continue;
            };
            if let Some((passed, failed)) = b.summary {
                v.passed += passed;
                v.failed += failed;
            }
            match (b.exit, b.summary) {
                (Some(0), Some(_)) => {}
                (Some(code), Some((_, failed))) if failed > 0 => {
                    v.errors.push(format!(
                        "{name}: {failed} failed (exit {code}): {}",
                        b.failed.join(", ")
                    ));
                }
                (Some(code), _) => error(
                    &mut v,
                    format!("{name}: exited with {code} without a passing test summary"),
                ),
                (None, _) => error(
                    &mut v,
                    match self.timed_out {
                        Some(t) => format!(
                            "{name}: still running at the {}s timeout; unfinished: {}",
                            t.as_secs(),
                            b.unfinished().join(", ")
                        ),
                        None => format!(
                            "{name}: did not finish (the VM stopped); unfinished: {}",
                            b.unfinished().join(", ")
                        ),
                    },
                ),
            }
        }
        if self.binaries.len() > expected.len() {
            error(
                &mut v,
                format!(
                    "ran {} executables, expected {}",
                    self.binaries.len(),
                    expected.len()
                ),
            );
        }
        if !self.done && v.errors.is_empty() {
            error(&mut v, "/init did not reach its end".to_owned());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{plain, Expect, Report};

    fn report(lines: &[&str]) -> Report {
        let mut r = Report::default();
        for l in lines {
            r.feed(l);
        }
        r
    }

    fn expect<'a>(tests: &'a [&'a str], boot: &'a str, bpf_lsm: bool) -> Expect<'a> {
        Expect {
            boot,
            release: "6.1.",
            bpf_lsm,
            steps: &["doctor"],
            tests,
        }
    }

    const GOOD: &[&str] = &[
        "@@vmtest boot deny",
        "@@vmtest kernel 6.1.0-28-cloud-amd64",
        "@@vmtest lsm lockdown,capability,landlock,yama,apparmor,tomoyo,bpf",
        "@@vmtest step doctor",
        "kernel            6.1.0-28-cloud-amd64",
        "@@vmtest step-exit doctor 0",
        "@@vmtest start egress",
        "running 3 tests",
        "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.1s",
        "@@vmtest exit egress 0",
        "@@vmtest done",
    ];

    #[test]
    fn a_clean_boot_passes() {
        let v = report(GOOD).verdict(&expect(&["egress"], "deny", true));
        assert_eq!((v.passed, v.failed), (3, 0), "{:?}", v.errors);
        assert!(v.errors.is_empty());
    }

    #[test]
    fn a_wrong_lsm_list_fails() {
        let v = report(GOOD).verdict(&expect(&["egress"], "deny", false));
        assert_eq!(v.failed, 1);
        assert!(v.errors[0].contains("inactive"), "{:?}", v.errors);
    }

    #[test]
    fn failing_tests_are_counted() {
        let mut lines = GOOD.to_vec();
        lines[8] = "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured";
        lines[9] = "@@vmtest exit egress 101";
        let v = report(&lines).verdict(&expect(&["egress"], "deny", true));
        assert_eq!((v.passed, v.failed), (2, 1));
    }

    #[test]
    fn a_crash_without_summary_is_a_failure() {
        let mut lines = GOOD.to_vec();
        lines.remove(8);
        lines[8] = "@@vmtest exit egress 134";
        let v = report(&lines).verdict(&expect(&["egress"], "deny", true));
        assert_eq!((v.passed, v.failed), (0, 1));
        assert!(v.errors[0].contains("134"), "{:?}", v.errors);
    }

    #[test]
    fn a_cut_short_run_names_its_unfinished_and_failed_tests() {
        let mut r = report(&[
            "@@vmtest start egress",
            "@@vmtest listed udp_works",
            "@@vmtest listed tcp_works",
            "@@vmtest listed ipv6_works",
            "running 3 tests",
            "test udp_works ... ok",
            "test ipv6_works ... FAILED",
        ]);
        r.timed_out = Some(Duration::from_secs(300));
        let v = r.verdict(&expect(&["egress"], "deny", true));
        assert!(
            v.errors
                .iter()
                .any(|e| e.ends_with("timeout; unfinished: tcp_works")),
            "{:?}",
            v.errors
        );
        let mut lines = GOOD.to_vec();
        lines.insert(8, "test ipv6_works ... FAILED");
        lines[9] = "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured";
        lines[10] = "@@vmtest exit egress 101";
        let v = report(&lines).verdict(&expect(&["egress"], "deny", true));
        assert_eq!(v.errors, ["egress: 1 failed (exit 101): ipv6_works"]);
    }

    #[test]
    fn a_timeout_or_a_missing_target_fails() {
        let mut r = report(&GOOD[..8]);
        r.timed_out = Some(Duration::from_secs(300));
        let v = r.verdict(&expect(&["egress", "kill_tier"], "deny", true));
        assert_eq!(v.failed, 2, "{:?}", v.errors);
        assert!(v.errors[0].contains("still running at the 300s timeout"));
        assert!(v.errors[1].contains("kill_tier: never started"));
    }

    #[test]
    fn steps_are_collected_and_judged() {
        let r = report(GOOD);
        assert_eq!(r.steps.len(), 1);
        assert_eq!(r.steps[0].lines, ["kernel            6.1.0-28-cloud-amd64"]);
        let mut lines = GOOD.to_vec();
        lines[5] = "@@vmtest step-exit doctor 1";
        let v = report(&lines).verdict(&expect(&["egress"], "deny", true));
        assert_eq!(v.failed, 1, "{:?}", v.errors);
        assert!(v.errors[0].contains("step doctor: exited with 1"));
    }

    #[test]
    fn another_kernel_than_claimed_fails() {
        let mut e = expect(&["egress"], "deny", true);
        e.release = "5.10.";
        let v = report(GOOD).verdict(&e);
        assert_eq!(v.failed, 1, "{:?}", v.errors);
        assert!(v.errors[0].contains("not 5.10.*"), "{:?}", v.errors);
    }

    #[test]
    fn a_boot_that_never_reached_init_fails() {
        let r = report(&["Kernel panic - not syncing: VFS: Unable to mount root fs"]);
        let v = r.verdict(&expect(&["egress"], "kill", false));
        assert!(v.failed >= 1);
        assert!(v.errors[0].contains("never reached"), "{:?}", v.errors);
    }

    #[test]
    fn escapes_and_control_characters_are_dropped() {
        assert_eq!(
            plain("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS (version 1.16)\r\n"),
            "SeaBIOS (version 1.16)"
        );
        assert_eq!(plain("a\tb"), "a\tb");
    }

    #[test]
    fn a_marker_after_kernel_noise_is_read() {
        let r = report(&["[   3.1] random: crng init done@@vmtest boot kill"]);
        assert_eq!(r.boot.as_deref(), Some("kill"));
    }
}
