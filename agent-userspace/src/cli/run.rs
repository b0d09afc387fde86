//! `agentcage run`: start a command inside the agent's cage, so that none of its instructions
//! runs uncaged, and stand in for it (stdio inherited, signals forwarded, exit status passed
//! on).
//!
//! The child asks the daemon to move it into the cage between fork and exec: the daemon knows
//! its pid from the kernel (SO_PEERCRED), moves it, answers, and only then does the child
//! exec. This works for members of the daemon's group too, who may not write cgroup files.

use std::{
    io,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _, process::ExitStatusExt as _},
    path::Path,
    process::Command,
    thread,
};

use nix::{
    sys::signal::{kill, SigSet, Signal},
    unistd::Pid,
};

use super::{shield::Shield, CliError, RunArgs};
use crate::{
    control::{Client, Request, Response},
    policy::validate_agent_name,
};

/// Signals passed on to the agent.
const FORWARDED: [Signal; 8] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
];

/// Runs the command; returns its exit code (128 + signal when killed, as shells do).
pub fn run(socket: &Path, args: &RunArgs) -> Result<i32, CliError> {
    validate_agent_name(&args.agent)?;
    // This process stays outside the cage with the agent's uid: make it off limits to
    // ptrace, /proc/PID/mem and pidfd_getfd from the agent (exec makes the agent itself
    // dumpable again).
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(CliError::os("prctl(PR_SET_DUMPABLE)")(
            io::Error::last_os_error(),
        ));
    }
    // Prepare: the daemon checks the agent against the policy, creates the cage and holds it
    // while this connection stays open, so it cannot vanish before the child joins.
    let mut hold = Client::connect(socket)?;
    let (policy_hash, raw_sockets, policy_source) = match hold.call(&Request::Prepare {
        agent: args.agent.clone(),
    })? {
        Response::Prepared {
            policy_hash,
            raw_sockets,
            policy_source,
            ..
        } => (policy_hash, raw_sockets, policy_source),
        other => return Err(CliError::unexpected(&other)),
    };

    let join = JoinRequest::new(socket, &args.agent)?;
    let shield = Shield::for_root_agent(&policy_source)?;
    let signals = forwarded_set();
    // Block the forwarded signals before spawning so none is lost between spawn and the
    // forwarding thread; the child unblocks them before exec.
    signals
        .thread_block()
        .map_err(|e| CliError::os("blocking signals")(e.into()))?;

    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| CliError::Usage("no command given".into()))?;
    let mut command = Command::new(program);
    command
        .args(rest)
        .env("AGENTCAGE_AGENT", &args.agent)
        .env("AGENTCAGE_POLICY_HASH", &policy_hash);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (socket, connect, write, read, close, sigprocmask) on memory
    // prepared before the fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // Hide what a root agent could undo its cage with, while we may still mount;
            // then the capabilities: the daemon refuses to cage a process that could undo it.
            if let Some(shield) = &shield {
                shield.raise()?;
            }
            crate::caps::drop_for_cage(raw_sockets)?;
            join.send_from_child()?;
            let set = forwarded_set();
            libc::pthread_sigmask(libc::SIG_UNBLOCK, set.as_ref(), std::ptr::null_mut());
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| {
        let _ = forwarded_set().thread_unblock();
        CliError::os(format!(
            "starting {program:?} in the cage of agent:{} (the daemon must move it in before it runs)",
            args.agent
        ))(e)
    })?;

    // The child is in the cage (exec only happens after the daemon moved it), so the hold is
    // done with; closing it now leaves the agent no open control connection to reach for.
    drop(hold);
    let child_pid = Pid::from_raw(child.id() as i32);
    thread::spawn(move || forward_signals(signals, child_pid));
    let status = child
        .wait()
        .map_err(CliError::os("waiting for the agent"))?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    })
}

fn forwarded_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set
}

/// Waits for the blocked signals and sends each to the agent. Signals the terminal sent to
/// the whole foreground group (Ctrl-C) already reached the agent and are not sent twice.
fn forward_signals(set: SigSet, child: Pid) {
    loop {
        let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::uninit();
        // SAFETY: set is a valid sigset and info is writable.
        let sig = unsafe { libc::sigwaitinfo(set.as_ref(), info.as_mut_ptr()) };
        if sig < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        // SAFETY: sigwaitinfo succeeded and filled `info`.
        let code = unsafe { info.assume_init() }.si_code;
        if code == libc::SI_KERNEL {
            continue;
        }
        if let Ok(signal) = Signal::try_from(sig) {
            if kill(child, signal).is_err() {
                return;
            }
        }
    }
}

/// Everything the child needs to join the cage, prepared before fork.
struct JoinRequest {
    addr: libc::sockaddr_un,
    addr_len: libc::socklen_t,
    line: Vec<u8>,
}

impl JoinRequest {
    fn new(socket: &Path, agent: &str) -> Result<Self, CliError> {
        // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = socket.as_os_str().as_bytes();
        if path.len() >= addr.sun_path.len() {
            return Err(CliError::Usage(format!(
                "socket path {} is too long",
                socket.display()
            )));
        }
        for (dst, src) in addr.sun_path.iter_mut().zip(path) {
            *dst = *src as libc::c_char;
        }
        let addr_len = (size_of::<libc::sa_family_t>() + path.len() + 1) as libc::socklen_t;
        let mut line = serde_json::to_vec(&Request::Join {
            agent: agent.to_owned(),
        })?;
        line.push(b'\n');
        Ok(Self {
            addr,
            addr_len,
            line,
        })
    }

    /// In the child: connect, ask to be moved, wait for the answer. Async-signal-safe.
    fn send_from_child(&self) -> io::Result<()> {
        // SAFETY: plain syscalls on a descriptor this function owns and buffers it holds.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let result = self.exchange(fd);
            libc::close(fd);
            result
        }
    }

    unsafe fn exchange(&self, fd: i32) -> io::Result<()> {
        // SAFETY: addr is a valid sockaddr_un of addr_len bytes.
        if unsafe { libc::connect(fd, (&raw const self.addr).cast(), self.addr_len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut sent = 0;
        while sent < self.line.len() {
            // SAFETY: the slice bounds are checked by the loop.
            let n = unsafe {
                libc::write(
                    fd,
                    self.line[sent..].as_ptr().cast(),
                    self.line.len() - sent,
                )
            };
            if n <= 0 {
                return Err(io::Error::last_os_error());
            }
            sent += n as usize;
        }
        const JOINED: &[u8] = br#"{"type":"joined""#;
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < JOINED.len() {
            // SAFETY: reads into the unfilled part of a stack buffer.
            let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
            if n <= 0 {
                break;
            }
            got += n as usize;
        }
        if got >= JOINED.len() && &buf[..JOINED.len()] == JOINED {
            Ok(())
        } else {
            // The daemon refused (it logs why); never exec outside the cage.
            Err(io::Error::from_raw_os_error(libc::EPERM))
        }
    }
}
