//! `agentcage run`: start a command inside the agent's cage, so that none of its instructions
//! runs uncaged, and stand in for it (signals forwarded, exit status passed on).
//!
//! The child asks the daemon to move it into the cage between fork and exec: the daemon knows
//! its pid from the kernel (SO_PEERCRED), moves it, answers, and only then does the child
//! exec. This works for members of the daemon's group too, who may not write cgroup files.
//!
//! On a terminal the agent gets a pseudo-terminal and a session of its own ([`super::pty`]),
//! relayed and optionally recorded by [`super::relay`]; pipes stay pipes.

use std::{
    fs::File,
    io::{self, BufWriter},
    os::unix::{ffi::OsStrExt as _, fs::OpenOptionsExt as _, process::CommandExt as _},
    path::Path,
    process::Command,
};

use nix::{
    sys::{
        signal::{signal, SigHandler, SigmaskHow, Signal},
        wait::WaitStatus,
    },
    unistd::Pid,
};

use super::{
    pty::{self, Mode, RawMode},
    relay::{self, Session, Signals},
    CliError, RunArgs,
};
use crate::{
    accounts::RunAsGrant,
    confine::Confinement,
    control::{Client, Request, Response},
    policy::validate_agent_name,
    recording::{Header, Recorder},
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

/// What `--no-pty` gives the agent, said every time it is used.
const NO_PTY_WARNING: &str = "agentcage: --no-pty: the agent shares your terminal and session: \
it can push input into your shell (TIOCSTI, where the kernel allows it), change your \
terminal's settings, and read what you type after it exits";

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
    let mode = pty::choose(args.no_pty);
    if args.no_pty {
        eprintln!("{NO_PTY_WARNING}");
    }
    // Prepare: the daemon checks the agent against the policy, creates the cage and holds it
    // while this connection stays open, so it cannot vanish before the child joins.
    let mut hold = Client::connect(socket)?;
    let (policy_hash, raw_sockets, policy_source, required, grant) =
        match hold.call_receiving_fd(&Request::Prepare {
            agent: args.agent.clone(),
            user: args.user.clone(),
        })? {
            (
                Response::Prepared {
                    policy_hash,
                    raw_sockets,
                    policy_source,
                    recording,
                    run_as,
                    ..
                },
                fd,
            ) => (
                policy_hash,
                raw_sockets,
                policy_source,
                recording.map(|r| (r, fd)),
                run_as,
            ),
            (other, _) => return Err(CliError::unexpected(&other)),
        };
    let mut sinks: Vec<(File, Option<u64>)> = Vec::new();
    if let Some((grant, fd)) = required {
        let fd = fd.ok_or_else(|| {
            CliError::Unexpected(format!(
                "the daemon requires a recording ({}) but sent no file",
                grant.path
            ))
        })?;
        eprintln!(
            "agentcage: the policy of agent:{} requires a recording of this session: {}",
            args.agent, grant.path
        );
        sinks.push((File::from(fd), Some(grant.max_bytes)));
    }
    if let Some(path) = &args.record {
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(CliError::os(format!(
                "creating the recording {}",
                path.display()
            )))?;
        sinks.push((file, None));
    }
    let size = (0..3)
        .find_map(pty::window_size)
        .map_or((80, 24), |w| (w.ws_col, w.ws_row));
    let header = Header::new(&args.agent, &args.command, size);
    let mut recorders = sinks
        .into_iter()
        .map(|(file, limit)| Recorder::start(BufWriter::new(file), &header, limit))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CliError::os("writing the recording's header"))?;
    // SAFETY: isatty only inspects the descriptor.
    let on_terminal = (0..3).any(|fd| unsafe { libc::isatty(fd) } == 1);
    if !recorders.is_empty() && args.no_pty && on_terminal {
        let why = "this session must be recorded, and --no-pty leaves the agent on your own \
                   terminal, where nothing can record it: drop --no-pty";
        for r in &mut recorders {
            // The attempt stays on record too.
            let _ = r
                .note(&format!("agentcage: run refused: {why}"))
                .and_then(|()| r.flush());
        }
        return Err(CliError::Usage(why.into()));
    }
    let (child_side, side, handoff) = pty::plumb(&mode, !recorders.is_empty(), args.record_input)?;

    let kept_out = super::fds::keep_ip_sockets_out();
    if !kept_out.is_empty() {
        eprintln!(
            "agentcage: not handing the agent the network socket(s) it would inherit (fd {}): \
             they were made outside its cage",
            kept_out
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let join = JoinRequest::new(socket, &args.agent)?;
    let confinement = Confinement::prepare(grant.as_ref(), raw_sockets, &policy_source)
        .map_err(CliError::os("preparing the agent's confinement"))?;
    if let (Some(g), true) = (&grant, confinement.switches()) {
        // Its terminal is its own to reopen (`tty`, programs that open /dev/pts/N).
        child_side.give_terminal(g.uid, g.gid)?;
    }
    // Block the handled signals before spawning so none is lost; the loop reads them from a
    // signalfd, and the child restores the original mask before exec.
    let handled = relay::handled(&FORWARDED);
    let original = handled
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .map_err(|e| CliError::os("blocking signals")(e.into()))?;
    let unblock = || {
        let _ = original.thread_set_mask();
    };
    let signalfd = relay::signalfd(&handled).map_err(|e| {
        unblock();
        CliError::os("signalfd")(e)
    })?;
    // An inherited SIG_IGN for SIGCHLD would have the kernel reap the agent for us.
    // SAFETY: restoring the default disposition installs no handler.
    let _ = unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) };

    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| CliError::Usage("no command given".into()))?;
    let mut command = Command::new(program);
    command
        .args(rest)
        .env("AGENTCAGE_AGENT", &args.agent)
        .env("AGENTCAGE_POLICY_HASH", &policy_hash);
    if let (Some(g), true) = (&grant, confinement.switches()) {
        account_environment(&mut command, g);
    }
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (unshare, mount, prctl, set*id, socket, connect, write, read,
    // close, setsid, ioctl, dup2, sigprocmask) on memory prepared before the fork; it
    // allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // Connected while the child may still (the control socket is root's and its
            // group's), used once it holds its account, which the daemon checks.
            let fd = join.connect()?;
            let confined = confinement.apply();
            let joined = confined.and_then(|()| join.exchange(fd));
            libc::close(fd);
            joined?;
            child_side.apply()?;
            libc::pthread_sigmask(libc::SIG_SETMASK, original.as_ref(), std::ptr::null_mut());
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| {
        unblock();
        let account = match (&grant, e.raw_os_error()) {
            (Some(g), Some(libc::EACCES)) if g.uid != 0 => format!(
                " as uid {} (run_as: {}), which must be able to enter the working directory \
                 and run the program",
                g.uid, g.account
            ),
            _ => String::new(),
        };
        CliError::os(format!(
            "starting {program:?} in the cage of agent:{}{account} (the daemon must move it in \
             before it runs)",
            args.agent
        ))(e)
    })?;
    // The child is in the cage (exec only happens after the daemon moved it), so the hold is
    // done with; closing it now leaves the agent no open control connection to reach for.
    drop(hold);
    drop(handoff);
    let raw = match side.input_termios.clone() {
        Some(saved) => match RawMode::enter(0, saved) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("agentcage: your terminal stays in its mode: {e}");
                None
            }
        },
        None => None,
    };
    let session = Session {
        child: Pid::from_raw(child.id() as i32),
        signalfd,
        signals: if matches!(mode, Mode::Inherit) {
            Signals::Shared
        } else {
            Signals::OwnSession
        },
        side,
        raw,
        recorders,
        record_input: args.record_input,
    };
    let status = session
        .run()
        .map_err(CliError::os("relaying the agent's terminal"))?;
    Ok(match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 1,
    })
}

/// HOME, USER and LOGNAME of the account the agent runs as.
fn account_environment(command: &mut Command, grant: &RunAsGrant) {
    if let Some(home) = &grant.home {
        command.env("HOME", home);
    }
    let name = grant.name.clone().unwrap_or_else(|| grant.uid.to_string());
    command.env("USER", &name).env("LOGNAME", &name);
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

    /// In the child: a connection to the control socket; the caller closes it.
    /// Async-signal-safe.
    fn connect(&self) -> io::Result<i32> {
        // SAFETY: plain syscalls on a descriptor this function owns; addr is a valid
        // sockaddr_un of addr_len bytes.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::connect(fd, (&raw const self.addr).cast(), self.addr_len) != 0 {
                let e = io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            Ok(fd)
        }
    }

    /// In the child: ask to be moved, wait for the answer. Async-signal-safe.
    fn exchange(&self, fd: i32) -> io::Result<()> {
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
