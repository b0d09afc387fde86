//! Every wait on a process, bounded by the deadline. A command, probe or daemon that stops
//! answering fails its test, naming what hung and where each of its threads (and every
//! daemon's) sleeps in the kernel, instead of holding its suite until the runner's own
//! timeout (a VM boot's 30 minutes), which says neither which test it was nor why.

use std::{
    fmt::Write as _,
    fs, io,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use crate::harness::deadline;

/// Bounded forms of `Command::output` and `Command::status`.
pub trait Bounded {
    /// `output()` that kills the command and fails the test once the deadline has passed.
    /// Stdin is /dev/null, as with `output()`.
    fn output_bounded(&mut self) -> io::Result<Output>;
    /// `status()` that kills the command and fails the test once the deadline has passed.
    fn status_bounded(&mut self) -> io::Result<ExitStatus>;
}

impl Bounded for Command {
    fn output_bounded(&mut self) -> io::Result<Output> {
        let what = describe(self);
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(bounded(child, &what, Child::wait_with_output))
    }

    fn status_bounded(&mut self) -> io::Result<ExitStatus> {
        let what = describe(self);
        let child = self.spawn()?;
        Ok(bounded(child, &what, |mut c| c.wait()))
    }
}

/// Waits for `child` to exit (and reaps it); after the deadline, reports where it is stuck,
/// kills it and fails the test.
pub fn wait_bounded(child: Child, what: &str) -> ExitStatus {
    bounded(child, what, |mut c| c.wait())
}

/// Runs `finish` (which waits for `child`) on a thread of its own, bounded by the deadline.
fn bounded<T: Send + 'static>(
    child: Child,
    what: &str,
    finish: impl FnOnce(Child) -> io::Result<T> + Send + 'static,
) -> T {
    bounded_within(child, what, deadline(), finish)
}

fn bounded_within<T: Send + 'static>(
    child: Child,
    what: &str,
    within: Duration,
    finish: impl FnOnce(Child) -> io::Result<T> + Send + 'static,
) -> T {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(finish(child));
    });
    match rx.recv_timeout(within) {
        Ok(done) => done.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            let report = stuck(pid);
            // Not yet reaped (the waiting thread holds it), so the pid is still the child's.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!(
                "{what} did not end within {within:?}; where it, its descendants and every \
                 agentcaged wait:\n{report}"
            );
        }
    }
}

/// The program and arguments of `cmd`, for messages.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// For `pid`, its descendants and every agentcaged: each thread's name, state, wait channel
/// and kernel stack. A process that holds a pipe open after its parent exited shows here too.
pub fn stuck(pid: u32) -> String {
    let procs = processes();
    let mut wanted = vec![pid];
    let mut i = 0;
    while i < wanted.len() {
        let parent = wanted[i];
        wanted.extend(procs.iter().filter(|p| p.ppid == parent).map(|p| p.pid));
        i += 1;
    }
    let daemons: Vec<u32> = procs
        .iter()
        .filter(|p| p.comm == "agentcaged" && !wanted.contains(&p.pid))
        .map(|p| p.pid)
        .collect();
    wanted.extend(daemons);
    let mut out = String::new();
    for p in wanted {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            let _ = writeln!(out, "pid {p}: gone");
            continue;
        };
        let cmdline = fs::read(format!("/proc/{p}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let _ = writeln!(out, "pid {p}: {}", cmdline.trim_end());
        for t in tasks.flatten() {
            let dir = t.path();
            let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
            let stat = read("stat");
            // The state follows the parenthesised name, which may itself hold spaces.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?")
                .to_owned();
            let _ = writeln!(
                out,
                "  tid {} {:?} state {state} wchan {}",
                t.file_name().to_string_lossy(),
                read("comm").trim_end(),
                read("wchan")
            );
            for frame in read("stack").lines().take(12) {
                let _ = writeln!(out, "    {frame}");
            }
        }
    }
    out
}

struct Proc {
    pid: u32,
    ppid: u32,
    comm: String,
}

fn processes() -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some(Proc { pid, ppid, comm })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{process::Command, time::Duration};

    #[test]
    fn a_command_past_its_bound_is_killed_and_reported_with_its_child() {
        // A shell whose child holds the pipes: what a hung `agentcage run` looks like.
        let child = Command::new("sh")
            .args(["-c", "sleep 1000 & sleep 1001; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let err = std::panic::catch_unwind(|| {
            super::bounded_within(child, "the hung shell", Duration::from_millis(300), |c| {
                c.wait_with_output()
            })
        })
        .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.starts_with("the hung shell did not end within 300ms"),
            "{msg}"
        );
        assert!(msg.contains("sleep 1000"), "the child is named: {msg}");
        assert!(msg.contains("state S wchan"), "{msg}");
        // The shell itself was killed (its children are the harness's cleanup's business).
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty()
                || state
                    .rsplit_once(')')
                    .unwrap()
                    .1
                    .trim_start()
                    .starts_with('Z'),
            "{state}"
        );
        let _ = Command::new("pkill")
            .args(["-f", "^sleep 100[01]$"])
            .status();
    }
}
