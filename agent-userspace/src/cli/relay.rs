//! `run`'s one loop while the agent runs: signals (through a signalfd: forwarded, the window
//! size followed, the child's end or stop noticed) and, when the agent has a terminal or
//! recorded pipes, the bytes between them and the operator's descriptors. One poll over every
//! descriptor, reads and writes of up to 64 KiB at a time; nothing spins.

use std::{
    fs::File,
    io::{self, BufWriter},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, RawFd},
    time::Duration,
};

use nix::{
    errno::Errno,
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::{
        signal::{kill, killpg, SigSet, Signal},
        signalfd::{SfdFlags, SignalFd},
        wait::{waitpid, WaitPidFlag, WaitStatus},
    },
    unistd::{getpid, Pid},
};

use super::pty::{self, ParentSide, RawMode};
use crate::recording::Recorder;

/// How long output may still come after the agent exited, from processes it left behind
/// that hold its terminal or pipes open, before `run` stops waiting for it.
const LINGER: Duration = Duration::from_millis(200);

const CHUNK: usize = 64 * 1024;

/// How signals reach the agent.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Signals {
    /// The agent shares `run`'s process group: what the terminal sent reached it already.
    Shared,
    /// The agent has a session of its own: everything is forwarded.
    OwnSession,
}

/// Everything the loop works with.
pub struct Session {
    pub child: Pid,
    pub signalfd: SignalFd,
    pub signals: Signals,
    pub side: ParentSide,
    pub raw: Option<RawMode>,
    pub recorders: Vec<Recorder<BufWriter<File>>>,
    pub record_input: bool,
}

/// One stream of bytes being relayed.
struct Flow {
    from: RawFd,
    to: RawFd,
    /// Output of the agent (recorded as "o"); otherwise the operator's input.
    output: bool,
    open: bool,
}

fn read_some(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reads into a buffer we own.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes all of `buf` to `fd`, waiting for room if the descriptor is non-blocking.
fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: writes from a buffer we own.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf = &buf[n as usize..];
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => {
                // SAFETY: fd stays open for this call.
                let b = unsafe { BorrowedFd::borrow_raw(fd) };
                let _ = poll(&mut [PollFd::new(b, PollFlags::POLLOUT)], PollTimeout::NONE);
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

impl Session {
    /// Runs until the agent has exited and its output is relayed; returns its wait status.
    pub fn run(mut self) -> io::Result<WaitStatus> {
        let mut flows = Vec::new();
        if let Some(master) = &self.side.master {
            let m = master.as_raw_fd();
            flows.push(Flow {
                from: m,
                to: self.side.output_fd,
                output: true,
                open: true,
            });
            if self.side.input_termios.is_some() {
                flows.push(Flow {
                    from: 0,
                    to: m,
                    output: false,
                    open: true,
                });
            }
        }
        for (read, to) in &self.side.pipes_out {
            flows.push(Flow {
                from: read.as_raw_fd(),
                to: *to,
                output: true,
                open: true,
            });
        }
        if let Some(w) = &self.side.pipe_in {
            flows.push(Flow {
                from: 0,
                to: w.as_raw_fd(),
                output: false,
                open: true,
            });
        }
        let mut pending_in: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; CHUNK];
        let mut status = None;
        loop {
            let input_to = flows.iter().find(|f| !f.output && f.open).map(|f| f.to);
            let mut fds = vec![PollFd::new(self.signalfd.as_fd(), PollFlags::POLLIN)];
            let mut which = Vec::new();
            for (i, f) in flows.iter().enumerate() {
                // Output is read until it ends; input only while the agent runs and the
                // input read before has reached it.
                let wanted = f.output || (status.is_none() && pending_in.is_empty());
                if f.open && wanted {
                    // SAFETY: a flow's descriptors stay open while the session lives.
                    let b = unsafe { BorrowedFd::borrow_raw(f.from) };
                    fds.push(PollFd::new(b, PollFlags::POLLIN));
                    which.push(Some(i));
                }
            }
            if let (false, Some(to)) = (pending_in.is_empty(), input_to) {
                // SAFETY: as above.
                let b = unsafe { BorrowedFd::borrow_raw(to) };
                fds.push(PollFd::new(b, PollFlags::POLLOUT));
                which.push(None);
            }
            let any_output = flows.iter().any(|f| f.output && f.open);
            if status.is_some() && !any_output {
                break;
            }
            let timeout = if status.is_some() {
                PollTimeout::try_from(LINGER).unwrap_or(PollTimeout::ZERO)
            } else {
                PollTimeout::NONE
            };
            let ready = match poll(&mut fds, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if ready == 0 {
                // The agent is gone and nothing more came: what is left holds its terminal.
                break;
            }
            let revents: Vec<PollFlags> = fds
                .iter()
                .map(|p| p.revents().unwrap_or(PollFlags::empty()))
                .collect();
            drop(fds);
            if !revents[0].is_empty() {
                if let Some(s) = self.on_signals()? {
                    status = Some(s);
                }
            }
            for (k, slot) in which.iter().enumerate() {
                let ev = revents[k + 1];
                if ev.is_empty() {
                    continue;
                }
                match slot {
                    Some(i) => {
                        let f = &mut flows[*i];
                        match read_some(f.from, &mut buf) {
                            Ok(0) => f.open = false,
                            Ok(n) => {
                                let data = &buf[..n];
                                if f.output {
                                    // An operator's terminal that went away loses the
                                    // output; the agent must still be read so it never
                                    // blocks.
                                    let _ = write_all(f.to, data);
                                    self.record(|r| r.output(data));
                                } else {
                                    pending_in.extend_from_slice(data);
                                    if self.record_input {
                                        self.record(|r| r.input(data));
                                    }
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            // EIO: the pty's other side is closed (no process holds it).
                            Err(_) => f.open = false,
                        }
                        if !f.open && !f.output {
                            self.input_closed(&mut flows);
                        }
                    }
                    None => {
                        if let Some(to) = input_to {
                            // SAFETY: writes from our buffer to an open descriptor.
                            let n = unsafe {
                                libc::write(to, pending_in.as_ptr().cast(), pending_in.len())
                            };
                            if n > 0 {
                                pending_in.drain(..n as usize);
                            } else if n < 0
                                && !matches!(
                                    io::Error::last_os_error().raw_os_error(),
                                    Some(libc::EAGAIN | libc::EINTR)
                                )
                            {
                                pending_in.clear();
                            }
                        }
                    }
                }
            }
            self.record(|r| r.flush());
        }
        self.record(|r| r.flush());
        Ok(status.unwrap_or(WaitStatus::StillAlive))
    }

    /// The operator's input ended: a pipe into the agent is closed so it sees the end too.
    fn input_closed(&mut self, flows: &mut [Flow]) {
        if self.side.pipe_in.take().is_some() {
            for f in flows.iter_mut().filter(|f| !f.output) {
                f.open = false;
            }
        }
    }

    fn record(&mut self, mut f: impl FnMut(&mut Recorder<BufWriter<File>>) -> io::Result<()>) {
        // A recording that fails to write is reported once and dropped; the session goes on
        // (the operator sees the message, the file ends where the error came).
        self.recorders.retain_mut(|r| match f(r) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("agentcage: the recording stopped: {e}");
                false
            }
        });
    }

    /// Reads every pending signal; returns the child's status once it has exited.
    fn on_signals(&mut self) -> io::Result<Option<WaitStatus>> {
        let mut exited = None;
        while let Some(info) = self.signalfd.read_signal().map_err(io::Error::from)? {
            let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match signal {
                Signal::SIGCHLD => {
                    if let Some(s) = self.reap()? {
                        exited = Some(s);
                    }
                }
                Signal::SIGWINCH if self.side.master.is_some() => self.follow_window_size(),
                _ => self.forward(signal, info.ssi_code),
            }
        }
        Ok(exited)
    }

    fn reap(&mut self) -> io::Result<Option<WaitStatus>> {
        loop {
            match waitpid(
                self.child,
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED),
            ) {
                Ok(WaitStatus::StillAlive) => return Ok(None),
                Ok(WaitStatus::Stopped(..)) => self.suspend(),
                Ok(s @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return Ok(Some(s)),
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The agent stopped (SIGSTOP, or a job-control stop): so does `run`, with the
    /// operator's terminal as it was; when the operator continues `run`, the agent goes on.
    fn suspend(&mut self) {
        if let Some(raw) = &self.raw {
            raw.restore();
        }
        let _ = kill(getpid(), Signal::SIGSTOP);
        if let Some(raw) = &self.raw {
            let _ = raw.apply();
        }
        self.follow_window_size();
        let _ = kill(self.child, Signal::SIGCONT);
    }

    fn follow_window_size(&mut self) {
        let (Some(master), Some(from)) = (&self.side.master, self.side.size_from) else {
            return;
        };
        if let Some(ws) = pty::window_size(from) {
            pty::set_window_size(master.as_raw_fd(), &ws);
            self.record(|r| r.resize((ws.ws_col, ws.ws_row)));
        }
    }

    fn forward(&mut self, signal: Signal, code: i32) {
        if self.signals == Signals::Shared && code == libc::SI_KERNEL {
            // The terminal sent it to the whole foreground group, the agent included.
            return;
        }
        // Keyboard signals go where the terminal would send them: the foreground group of
        // the agent's terminal (a job of the agent's shell, say).
        if matches!(signal, Signal::SIGINT | Signal::SIGQUIT) {
            if let Some(master) = &self.side.master {
                // SAFETY: tcgetpgrp on our own open master.
                let pgrp = unsafe { libc::tcgetpgrp(pty::raw(master)) };
                if pgrp > 0 && killpg(Pid::from_raw(pgrp), signal).is_ok() {
                    return;
                }
            }
        }
        let _ = kill(self.child, signal);
    }
}

/// The signals `run` handles itself, blocked in every thread and read from a signalfd.
pub fn handled(forwarded: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for &s in forwarded {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// A signalfd for `set` (already blocked).
pub fn signalfd(set: &SigSet) -> io::Result<SignalFd> {
    SignalFd::with_flags(set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).map_err(Into::into)
}
