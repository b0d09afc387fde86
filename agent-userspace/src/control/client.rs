//! A blocking client for the CLI: connect, send one request, read responses.

use std::{
    io::{self, BufRead as _, BufReader, IoSliceMut, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use super::{Request, Response};

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket does not exist or nobody listens on it.
    #[error("agentcaged is not running (no listener at {path}): start it with `cargo xtask run` or `agentcaged --policy FILE`")]
    NotRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket's permissions refused us.
    #[error("permission denied connecting to {path}: the control socket admits root and the group agentcaged was started with (--group)")]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
    },
    /// Any other I/O failure.
    #[error("talking to agentcaged at {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The daemon sent something that is not a response.
    #[error("agentcaged sent an unreadable response: {0}")]
    Protocol(String),
    /// The daemon refused the request.
    #[error("{0}")]
    Refused(String),
}

/// A connection to the daemon.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the daemon's socket.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                path: path.to_path_buf(),
            },
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                path: path.to_path_buf(),
            },
            _ => ClientError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
        })
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends a request.
    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.reader
            .get_mut()
            .write_all(&line)
            .map_err(|e| self.io(e))
    }

    /// The next response line as the daemon sent it, or None when the daemon closed the
    /// connection.
    pub fn read_line(&mut self) -> Result<Option<String>, ClientError> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|e| self.io(e))?;
        Ok((n > 0).then_some(line))
    }

    /// The next response, or None when the daemon closed the connection.
    pub fn read_response(&mut self) -> Result<Option<Response>, ClientError> {
        let Some(line) = self.read_line()? else {
            return Ok(None);
        };
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| ClientError::Protocol(format!("{e}: {line:?}")))
    }

    /// Sends a request and returns its first response; an `Error` response becomes
    /// [`ClientError::Refused`].
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        if let Err(e) = self.send(request) {
            // A refused peer is sent the reason and disconnected before it can write: read
            // the reason rather than report a broken pipe.
            return match self.read_response() {
                Ok(Some(Response::Error { message })) => Err(ClientError::Refused(message)),
                _ => Err(e),
            };
        }
        match self.read_response()? {
            Some(Response::Error { message }) => Err(ClientError::Refused(message)),
            Some(r) => Ok(r),
            None => Err(ClientError::Protocol(
                "connection closed without a response".into(),
            )),
        }
    }

    /// Like [`Self::call`] for the first request on a connection whose answer may carry a
    /// descriptor (SCM_RIGHTS): the response, and the descriptor if one came with it.
    pub fn call_receiving_fd(
        &mut self,
        request: &Request,
    ) -> Result<(Response, Option<OwnedFd>), ClientError> {
        if !self.reader.buffer().is_empty() {
            return Err(ClientError::Protocol(
                "a descriptor can only come with the first answer on a connection".into(),
            ));
        }
        if let Err(e) = self.send(request) {
            return match self.read_response() {
                Ok(Some(Response::Error { message })) => Err(ClientError::Refused(message)),
                _ => Err(e),
            };
        }
        let fd = self.reader.get_ref().as_raw_fd();
        let mut line = Vec::new();
        let mut received = None;
        while !line.contains(&b'\n') {
            let mut buf = [0u8; 4096];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 2]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
                .map_err(|e| self.io(e.into()))?;
            for cmsg in msg.cmsgs().map_err(|e| self.io(e.into()))? {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    for raw in fds {
                        // SAFETY: the kernel just installed this descriptor for us.
                        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                        received.get_or_insert(owned);
                    }
                }
            }
            let n = msg.bytes;
            if n == 0 {
                return Err(ClientError::Protocol(
                    "connection closed without a response".into(),
                ));
            }
            line.extend_from_slice(&buf[..n]);
        }
        if line.last() != Some(&b'\n') {
            return Err(ClientError::Protocol(
                "more than one answer to one request".into(),
            ));
        }
        match serde_json::from_slice(&line) {
            Ok(Response::Error { message }) => Err(ClientError::Refused(message)),
            Ok(r) => Ok((r, received)),
            Err(e) => Err(ClientError::Protocol(format!(
                "{e}: {:?}",
                String::from_utf8_lossy(&line)
            ))),
        }
    }
}
