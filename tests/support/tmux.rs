//! A real terminal for the tests: a tmux server of the test's own (its own socket), one window
//! running bash; `send-keys` types, `capture-pane` reads, and every wait polls the screen for
//! a condition until the deadline.

use std::{
    fs,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::harness::{agentcage, deadline, stderr, Daemon};

/// A tmux server of the test's own, one window running bash.
pub struct Tmux {
    dir: tempfile::TempDir,
    socket: PathBuf,
    /// How many commands [`Tmux::run`] and [`Tmux::start_command`] have typed: each one's
    /// number tags its exit status.
    pub commands: std::cell::Cell<u32>,
}

impl Tmux {
    /// Starts bash in a `cols` x `rows` terminal, talking to `daemon`.
    pub fn start(daemon: &Daemon, cols: u16, rows: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tmux.sock");
        let shell = format!(
            "env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
             HOME={home} TERM=xterm PS1='PROMPT$ ' HISTFILE=/dev/null \
             AGENTCAGE_SOCKET={socket} A={a} bash --norc --noprofile",
            home = dir.path().display(),
            socket = daemon.socket.display(),
            a = agentcage(),
        );
        let t = Self {
            dir,
            socket,
            commands: std::cell::Cell::new(0),
        };
        let (c, r) = (cols.to_string(), rows.to_string());
        t.tmux(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &c,
            "-y",
            &r,
            &shell,
        ]);
        t.wait_for("the shell's prompt", |s| s.contains("PROMPT$"));
        t
    }

    /// Runs `tmux ARGS` against this server; its stdout, or a panic naming its failure.
    pub fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux (installed by `cargo xtask setup`)");
        assert!(out.status.success(), "tmux {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` (literally) and Enter.
    pub fn line(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "t", "-l", text]);
        self.key("Enter");
    }

    /// Presses a key (`C-c`, `Space`...).
    pub fn key(&self, key: &str) {
        self.tmux(&["send-keys", "-t", "t", key]);
    }

    /// The visible screen.
    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-t", "t"])
    }

    /// The screen and what scrolled off it.
    pub fn history(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-1000", "-t", "t"])
    }

    /// Polls the screen (and its history) until `pred` holds, or fails after the deadline.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + deadline();
        loop {
            let text = self.history();
            if pred(&text) {
                return text;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; the terminal shows:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `command`, waits until it has finished, returns its exit status.
    pub fn run(&self, command: &str) -> i32 {
        let n = self.commands.get() + 1;
        self.commands.set(n);
        self.line(&format!("{command}; echo EXIT-{n}=$?"));
        self.exit_of(n)
    }

    /// Types `command` without waiting; [`Self::exit_of`] waits for it.
    pub fn start_command(&self, command: &str) -> u32 {
        let n = self.commands.get() + 1;
        self.commands.set(n);
        self.line(&format!("{command}; echo EXIT-{n}=$?"));
        n
    }

    /// The exit status of command `n`, once the shell has printed it.
    pub fn exit_of(&self, n: u32) -> i32 {
        let tag = format!("EXIT-{n}=");
        let text = self.wait_for(&format!("command {n} to finish"), |s| {
            s.lines().any(|l| exit_value(l, &tag).is_some())
        });
        text.lines().find_map(|l| exit_value(l, &tag)).unwrap()
    }

    /// The operator's terminal settings, as `stty -a` prints them.
    pub fn stty(&self) -> String {
        let file = self
            .dir
            .path()
            .join(format!("stty-{}", self.commands.get()));
        assert_eq!(self.run(&format!("stty -a > {}", file.display())), 0);
        fs::read_to_string(file).unwrap()
    }

    /// A file in the test's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn exit_value(line: &str, tag: &str) -> Option<i32> {
    line.trim().strip_prefix(tag)?.parse().ok()
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}
