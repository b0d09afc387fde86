//! The agent's terminal. An agent that shares the operator's terminal can push input into it
//! (TIOCSTI, where the kernel still allows it), change its settings, or take the foreground and
//! read what the operator types once it has exited. So `run` gives the agent a session of its
//! own and, when any of its standard descriptors is a terminal, a pseudo-terminal of its own
//! (as `sudo` with `use_pty` and `ssh -t` do), relayed to the operator's.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd, RawFd},
};

use nix::{
    fcntl::{fcntl, FcntlArg, FdFlag, OFlag},
    pty::{openpty, Winsize},
    sys::termios::{cfmakeraw, tcgetattr, tcsetattr, OutputFlags, SetArg, Termios},
    unistd::pipe2,
};

use super::CliError;

/// How the agent is connected to the operator's terminal.
pub enum Mode {
    /// The agent inherits everything (`--no-pty`, or no terminal anywhere).
    Inherit,
    /// A session of its own without a terminal: `run` has a controlling terminal but none of
    /// the agent's standard descriptors is one, so the agent must not reach it through
    /// `/dev/tty`.
    Detached,
    /// A pseudo-terminal of its own, relayed.
    Pty,
}

fn isatty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Whether this process has a controlling terminal.
fn has_controlling_terminal() -> bool {
    // SAFETY: open/close of a constant path.
    unsafe {
        let fd = libc::open(
            c"/dev/tty".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::close(fd);
        }
        fd >= 0
    }
}

/// Picks the mode for this process's descriptors.
pub fn choose(no_pty: bool) -> Mode {
    if no_pty {
        Mode::Inherit
    } else if (0..3).any(isatty) {
        Mode::Pty
    } else if has_controlling_terminal() {
        Mode::Detached
    } else {
        Mode::Inherit
    }
}

fn os(what: &'static str) -> impl FnOnce(nix::Error) -> CliError {
    move |e| CliError::os(what)(e.into())
}

fn set_cloexec(fd: &OwnedFd, nonblocking: bool) -> Result<(), CliError> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(os("fcntl(FD_CLOEXEC)"))?;
    if nonblocking {
        fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(os("fcntl(O_NONBLOCK)"))?;
    }
    Ok(())
}

/// The window size of terminal `fd`.
pub fn window_size(fd: RawFd) -> Option<Winsize> {
    let mut ws = Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize.
    (unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0).then_some(ws)
}

/// Sets the window size of the pty (the kernel then sends SIGWINCH to its foreground).
pub fn set_window_size(master: RawFd, ws: &Winsize) {
    // SAFETY: TIOCSWINSZ reads one winsize.
    unsafe { libc::ioctl(master, libc::TIOCSWINSZ, ws) };
}

/// The operator's terminal in raw mode, restored when dropped (and around a suspension).
pub struct RawMode {
    fd: RawFd,
    saved: Termios,
}

impl RawMode {
    /// Puts terminal `fd` in raw mode: keys, Ctrl-C included, go to the agent's terminal as
    /// bytes, and its line discipline does the rest.
    pub fn enter(fd: RawFd, saved: Termios) -> Result<Self, CliError> {
        let mode = Self { fd, saved };
        mode.apply()?;
        Ok(mode)
    }

    /// Raw mode again (after a suspension).
    pub fn apply(&self) -> Result<(), CliError> {
        let mut raw = self.saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(self.borrowed(), SetArg::TCSADRAIN, &raw).map_err(os("tcsetattr (raw mode)"))
    }

    /// The operator's settings back.
    pub fn restore(&self) {
        let _ = tcsetattr(self.borrowed(), SetArg::TCSADRAIN, &self.saved);
    }

    fn borrowed(&self) -> BorrowedFd<'_> {
        // SAFETY: fd is one of this process's standard descriptors, open for its lifetime.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.restore();
    }
}

/// What the child does with its descriptors between fork and exec; prepared before fork.
#[derive(Default)]
pub struct ChildSide {
    new_session: bool,
    controlling: Option<RawFd>,
    dups: Vec<(RawFd, RawFd)>,
}

impl ChildSide {
    /// Gives the agent's terminal (when it has one) to the account it runs as.
    pub fn give_terminal(&self, uid: u32, gid: Option<u32>) -> Result<(), CliError> {
        if let Some(fd) = self.controlling {
            // SAFETY: fd is the pty's slave, open in this process until the child has it.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            nix::unistd::fchown(
                fd,
                Some(nix::unistd::Uid::from_raw(uid)),
                gid.map(nix::unistd::Gid::from_raw),
            )
            .map_err(os("fchown of the agent's terminal"))?;
        }
        Ok(())
    }

    /// In the child: a new session, the pty as its controlling terminal, the standard
    /// descriptors connected. Async-signal-safe (reads memory prepared before fork).
    pub fn apply(&self) -> io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: plain syscalls on descriptors the parent prepared.
        unsafe {
            if self.new_session {
                check(libc::setsid())?;
            }
            if let Some(fd) = self.controlling {
                check(libc::ioctl(fd, libc::TIOCSCTTY, 0))?;
            }
            for &(from, to) in &self.dups {
                check(libc::dup2(from, to))?;
            }
        }
        Ok(())
    }
}

/// The parent's ends of the agent's terminal or pipes.
#[derive(Default)]
pub struct ParentSide {
    /// The pty's master (non-blocking), when the agent has a pty.
    pub master: Option<OwnedFd>,
    /// Pipes carrying the agent's output to `run`'s own descriptor (recording without a
    /// terminal): (read end, non-blocking; where it goes).
    pub pipes_out: Vec<(OwnedFd, RawFd)>,
    /// The pipe into the agent's stdin (recording input without a terminal).
    pub pipe_in: Option<OwnedFd>,
    /// Where the pty's output goes: the first of stdout, stderr, stdin that is a terminal.
    pub output_fd: RawFd,
    /// The operator's terminal settings, when its stdin is a terminal whose input is relayed.
    pub input_termios: Option<Termios>,
    /// The terminal whose window size the agent's follows.
    pub size_from: Option<RawFd>,
}

/// Descriptors the child needs until it execs; the parent drops them after spawning.
pub struct Handoff(
    #[expect(dead_code, reason = "held open until the child has them")] Vec<OwnedFd>,
);

/// Builds both sides for `mode`. `record` asks for the agent's output to pass through `run`
/// even without a terminal (through pipes), `record_input` for its input too.
pub fn plumb(
    mode: &Mode,
    record: bool,
    record_input: bool,
) -> Result<(ChildSide, ParentSide, Handoff), CliError> {
    let mut child = ChildSide::default();
    let mut parent = ParentSide::default();
    let mut keep = Vec::new();
    match mode {
        Mode::Inherit if !record => return Ok((child, parent, Handoff(keep))),
        Mode::Inherit => {}
        Mode::Detached => child.new_session = true,
        Mode::Pty => {
            let ttys: Vec<RawFd> = (0..3).filter(|&fd| isatty(fd)).collect();
            let first = ttys[0];
            // SAFETY: standard descriptors stay open for the life of this process.
            let term = |fd| tcgetattr(unsafe { BorrowedFd::borrow_raw(fd) });
            let mut settings = term(first).map_err(os("tcgetattr"))?;
            let input = isatty(0);
            if !input {
                // The operator's terminal stays as it is and does the output processing:
                // the agent's passes bytes through unchanged.
                settings.output_flags.remove(OutputFlags::OPOST);
            }
            let size = window_size(first);
            let pty = openpty(size.as_ref(), Some(&settings)).map_err(os("openpty"))?;
            set_cloexec(&pty.master, true)?;
            set_cloexec(&pty.slave, false)?;
            child.new_session = true;
            child.controlling = Some(pty.slave.as_raw_fd());
            child.dups = ttys.iter().map(|&fd| (pty.slave.as_raw_fd(), fd)).collect();
            parent.output_fd = [1, 2, 0].into_iter().find(|&fd| isatty(fd)).unwrap_or(1);
            parent.input_termios = input
                .then(|| term(0))
                .transpose()
                .map_err(os("tcgetattr"))?;
            parent.size_from = Some(first);
            parent.master = Some(pty.master);
            keep.push(pty.slave);
            return Ok((child, parent, Handoff(keep)));
        }
    }
    // Without a terminal, a recording needs the agent's output to pass through `run`.
    if record {
        for fd in [1, 2] {
            let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(os("pipe2"))?;
            set_cloexec(&read, true)?;
            child.dups.push((write.as_raw_fd(), fd));
            parent.pipes_out.push((read, fd));
            keep.push(write);
        }
        if record_input {
            let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(os("pipe2"))?;
            set_cloexec(&write, true)?;
            child.dups.push((read.as_raw_fd(), 0));
            parent.pipe_in = Some(write);
            keep.push(read);
        }
    }
    Ok((child, parent, Handoff(keep)))
}

/// The raw descriptor of a borrowed one, for the few libc calls nix lacks.
pub fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_fd().as_raw_fd()
}
