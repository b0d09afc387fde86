//! Lines of a child's output, awaited with a deadline: the harness's one way of waiting.

use std::{
    io::{BufRead as _, BufReader},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::Duration,
};

use crate::harness::deadline;

/// Lines of a child's output, collected by a thread and awaited with a deadline.
pub struct Lines {
    pub(crate) rx: mpsc::Receiver<String>,
    /// Every line so far, for failure messages.
    pub all: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    /// Reads `reader` line by line on a thread of its own until it ends.
    pub fn spawn(reader: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        let all = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&all);
        thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                keep.lock().unwrap().push(line.clone());
                if tx.send(line).is_err() {
                    // Nobody waits any more; keep draining so the child never blocks.
                }
            }
        });
        Self { rx, all }
    }

    /// The next line satisfying `pred`, or a panic naming `what` after the deadline.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_for_within(what, deadline(), pred)
    }

    /// [`Lines::wait_for`] with a deadline of `within`: for a workload whose own length
    /// grows with the machine's load (thousands of execs), not for the daemon's answers.
    pub fn wait_for_within(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "timed out waiting for {what}; output so far:\n{}",
                    self.all.lock().unwrap().join("\n")
                ),
            }
        }
    }
}

impl Lines {
    /// The next line within `within`, if one comes: for asserting that nothing happens
    /// (a frozen process makes no progress), never for waiting on something.
    pub fn next_within(&self, within: Duration) -> Option<String> {
        self.rx.recv_timeout(within).ok()
    }
}

/// Runs `cmd` to its end and returns its output, or kills it and fails the test when it
/// has not ended within the deadline: a daemon that stops answering is a failure, not a hang.
pub fn output_within(mut cmd: std::process::Command, what: &str) -> std::process::Output {
    use crate::bounded::Bounded as _;
    cmd.output_bounded()
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}
