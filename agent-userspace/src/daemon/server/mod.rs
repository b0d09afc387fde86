//! The daemon's two sockets: the control socket (`control`, root or the configured group,
//! never a caged process; containment requests in `contain`) and the application socket
//! (`app`, any process, each message checked against the sender's cage). One task per
//! connection, the peer checked before anything is read.

mod app;
mod contain;
mod control;
mod identity;
mod share;

pub use app::serve_app;
pub use control::serve;
pub use share::CageShare;

use std::{
    fs, io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::PermissionsExt as _,
    },
    path::Path,
    sync::Mutex,
};

use nix::unistd::{chown, Gid};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::{unix::OwnedWriteHalf, UnixListener},
};

use super::{state::State, DaemonError};
use crate::{control::AccessPolicy, events::EventBus};

/// The longest request line served.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a connection may sit without sending its next request.
const IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Shared by every connection.
pub struct Shared {
    /// The daemon's state.
    pub state: Mutex<State>,
    /// Events for followers.
    pub bus: EventBus,
    /// Who may connect.
    pub access: AccessPolicy,
    /// The dashboard's address with its token, when it is served.
    pub dashboard: Option<String>,
    /// Where recordings the policy requires are made.
    pub recordings: crate::recording::RecordingStore,
    /// Each cage's share of the application socket's connections.
    pub app_share: std::sync::Arc<CageShare>,
}

impl Shared {
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Binds a Unix socket at `path`: refuses to steal a live daemon's socket and replaces a
/// stale one. The caller sets its owner and mode.
fn bind_fresh(path: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(path, "creating the directory of"))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::AlreadyRunning(path.to_path_buf()));
        }
        fs::remove_file(path).map_err(io_err(path, "removing stale socket"))?;
    }
    UnixListener::bind(path).map_err(io_err(path, "binding"))
}

/// The error of file operation `op` on `path`.
fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Binds the control socket with mode 0660 and the configured group.
pub fn bind(path: &Path, access: &AccessPolicy) -> Result<UnixListener, DaemonError> {
    let listener = bind_fresh(path)?;
    chown(path, None, Some(access.gid().unwrap_or(Gid::from_raw(0))))
        .map_err(|e| io_err(path, "setting the group of")(e.into()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .map_err(io_err(path, "setting the mode of"))?;
    Ok(listener)
}

/// Writes one JSON line.
async fn send<T: serde::Serialize>(write: &mut OwnedWriteHalf, value: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// Sends a response with a descriptor attached to its first byte (SCM_RIGHTS).
async fn send_with_fd<T: serde::Serialize>(
    write: &mut OwnedWriteHalf,
    value: &T,
    fd: OwnedFd,
) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    let stream: &tokio::net::UnixStream = write.as_ref();
    let raw = [fd.as_raw_fd()];
    let sent = loop {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[io::IoSlice::new(&line)],
                &[ControlMessage::ScmRights(&raw)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(io::Error::from)
        }) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    };
    // Our copy goes; the client's is the one that holds the file (and its lock) now.
    drop(fd);
    write.write_all(&line[sent..]).await
}

/// How reading the next line of a connection ended.
enum Line {
    /// A line (with its newline, if it had one).
    Read(String),
    /// The peer closed the connection, or it was idle too long.
    Closed,
    /// The line was longer than [`MAX_REQUEST`]: the connection must close.
    TooLong,
    /// The connection failed.
    Failed(io::Error),
}

/// Reads the next line, at most [`MAX_REQUEST`] bytes, waiting at most [`IDLE`].
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Line {
    let mut line = String::new();
    let mut limited = reader.take(MAX_REQUEST + 1);
    match tokio::time::timeout(IDLE, limited.read_line(&mut line)).await {
        Ok(Ok(0)) | Err(_) => Line::Closed,
        Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST => Line::TooLong,
        Ok(Ok(_)) => Line::Read(line),
        Ok(Err(e)) => Line::Failed(e),
    }
}

/// Binds the application socket, mode 0666: any process may connect, and each message is
/// checked against the sender's cage.
pub fn bind_app(path: &Path) -> Result<UnixListener, DaemonError> {
    let listener = bind_fresh(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))
        .map_err(io_err(path, "setting the mode of"))?;
    Ok(listener)
}
