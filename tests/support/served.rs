//! Probes serving operations one line at a time, in a cage or outside any, and a follower
//! of the daemon's events.

use std::{
    io::Write as _,
    process::{Child, ChildStdin, Command, Stdio},
};

use crate::{bins::probe, lines::Lines};

/// Who a probe started outside any cage runs as.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outsider {
    /// Root with every capability.
    Root,
    /// uid/gid 65534, but free to regain capabilities by exec (no no_new_privs).
    Nobody,
    /// uid/gid 65534 with no_new_privs: fit for a cage.
    Cageable,
}

/// A probe serving operations outside any cage.
pub fn serve_outside(who: Outsider) -> Served {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new(probe());
    cmd.arg("serve");
    if who != Outsider::Root {
        // std clears the supplementary groups when root changes uid.
        cmd.uid(65534).gid(65534);
    }
    if who == Outsider::Cageable {
        // SAFETY: drop_for_cage is async-signal-safe; it runs after the uid change.
        unsafe { cmd.pre_exec(|| agentcage::caps::drop_for_cage(false)) };
    }
    Served::start(&mut cmd)
}

/// A probe serving operations, in a cage or not.
pub struct Served {
    /// The probe, or `agentcage run` holding it.
    pub child: Child,
    stdin: Option<ChildStdin>,
    /// Its answers.
    pub out: Lines,
    /// The probe's own pid, as it reported it.
    pub pid: u32,
}

impl Served {
    /// Spawns `cmd` (a probe in serve mode, or what runs one) and waits for it to be ready.
    pub(crate) fn start(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn probe");
        let stdin = child.stdin.take().unwrap();
        let out = Lines::spawn(child.stdout.take().unwrap());
        let ready = out.wait_for("the probe to start", |l| l.starts_with("ready "));
        let pid = ready.trim_start_matches("ready ").parse().unwrap();
        Self {
            child,
            stdin: Some(stdin),
            out,
            pid,
        }
    }

    /// Runs one operation in the cage; returns "ok" or "err N".
    pub fn op(&mut self, op: &str) -> String {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{op}").unwrap();
        stdin.flush().unwrap();
        self.out.wait_for(op, |l| {
            l == "ok" || l.starts_with("ok ") || l.starts_with("err ")
        })
    }

    /// The answer to an operation sent with [`Served::send`].
    pub fn read_answer(&mut self) -> String {
        self.out.wait_for("an answer", |l| {
            l == "ok" || l.starts_with("ok ") || l.starts_with("err ")
        })
    }

    /// Sends one operation without waiting for its answer.
    pub fn send(&mut self, op: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{op}").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes stdin and waits for the probe (and `agentcage run`) to exit.
    pub fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        crate::bounded::wait_bounded(self.child, "the served probe's exit after its stdin closed")
    }
}

/// `agentcage events --follow` running.
pub struct Follower {
    pub(crate) child: Child,
    /// The event lines it printed.
    pub lines: Lines,
}

impl Follower {
    /// The next event (as JSON) matching `pred`.
    pub fn wait_event(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let line = self.lines.wait_for(what, |l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| pred(&v))
        });
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
