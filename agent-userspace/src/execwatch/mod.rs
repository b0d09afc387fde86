//! Exec rules by content in the kill tier. Without BPF LSM the kernel cannot hash a file
//! for the programs, so the daemon does, just in time: every mount of a watched cage's mount
//! namespace carries a fanotify `FAN_OPEN_EXEC_PERM` mark ([`marks`]), so each exec there
//! (of the program, of a script's interpreter, of the ELF interpreter) waits while the daemon
//! reads the file and puts its SHA-256, with the change time and size it had, in the
//! `EXEC_CONTENT` map ([`content`]). Then the exec goes on, and the `sched_process_exec`
//! tracepoint judges the content against the policy's content rules before the new image
//! runs an instruction.
//!
//! The daemon only ever answers "go on": the decision is the tracepoint's, which kills an
//! exec whose content it does not find (or finds changed since). So whatever goes wrong here
//! (the daemon dead, a file it cannot read, an exec through a mount it did not mark, a
//! `memfd`) fails closed: the exec is killed, never let through unjudged. Only processes in
//! a watched namespace ever wait for the daemon; nothing else on the host is touched.

pub mod content;
pub mod marks;

use std::{
    collections::HashMap,
    fs::File,
    io,
    sync::{mpsc, Arc, Mutex, PoisonError},
};

use agent_common::process::{ContentEntry, ContentKey};
use aya::maps::{HashMap as BpfHashMap, MapData};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyEvent, FanotifyResponse, InitFlags, MarkFlags, MaskFlags,
    Response,
};
use tracing::{debug, warn};

use content::{ContentCache, ContentError};
pub use marks::Marked;

/// The content map, as user space holds it.
pub type ContentMap = BpfHashMap<MapData, ContentKey, ContentEntry>;

/// Threads that read files for waiting execs.
const WORKERS: usize = 2;
/// Mount ids remembered (with their devices); the table is emptied when full.
const MAX_MOUNTS: usize = 65_536;

/// Why the watch cannot start or cannot watch a process.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The kernel has no fanotify permission events (`CONFIG_FANOTIFY_ACCESS_PERMISSIONS`).
    #[error("fanotify permission events are unavailable ({0}); the kernel needs CONFIG_FANOTIFY_ACCESS_PERMISSIONS")]
    Unavailable(#[source] io::Error),
    /// The process shares the daemon's (or init's) mount namespace, whose mounts every
    /// process on the host uses: marking them would hold every exec on the host.
    #[error("process {pid} is in the host's mount namespace, which the daemon does not watch")]
    HostNamespace {
        /// The process.
        pid: u32,
    },
    /// An adopted process: its namespace may be shared with processes outside any cage.
    #[error("process {pid} is adopted, and its mount namespace may be shared with processes outside any cage")]
    Adopted {
        /// The process.
        pid: u32,
    },
    /// The process's namespace could not be read or marked.
    #[error("watching the mount namespace of process {pid}: {source}")]
    Io {
        /// The process.
        pid: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The watch: the fanotify group, the content map and what is known of files and mounts.
pub struct ExecWatch {
    group: Fanotify,
    /// Mount namespaces never marked: the daemon's and init's.
    host_namespaces: [u64; 2],
    /// Mount id → device, for the mounts marked.
    mounts: Mutex<HashMap<u64, u32>>,
    content: Mutex<ContentMap>,
    cache: Mutex<ContentCache>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ExecWatch {
    /// A fanotify group for exec permission events, writing into the content map given by
    /// `content` (asked for only once the kernel has shown it can watch: the map must stay
    /// with the programs that use it otherwise).
    pub fn new<E>(
        content: impl FnOnce() -> Result<ContentMap, E>,
    ) -> Result<Result<Self, E>, WatchError> {
        let group = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_UNLIMITED_QUEUE,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(|e| WatchError::Unavailable(e.into()))?;
        probe_mark(&group).map_err(WatchError::Unavailable)?;
        let own = marks::namespace_of(std::process::id())
            .map_err(|source| WatchError::Io { pid: 0, source })?;
        // init's, where this process may see it (a pid namespace or hidepid may hide it).
        let init = marks::namespace_of(1).unwrap_or(own);
        Ok(content().map(|content| Self {
            group,
            host_namespaces: [own, init],
            mounts: Mutex::default(),
            content: Mutex::new(content),
            cache: Mutex::default(),
        }))
    }

    /// Marks the mount namespace of process `pid` (which must have one of its own), so its
    /// execs wait for their content to be known. Idempotent.
    pub fn watch_process(&self, pid: u32) -> Result<Marked, WatchError> {
        let io = |source| WatchError::Io { pid, source };
        let ns = marks::namespace_of(pid).map_err(io)?;
        if self.host_namespaces.contains(&ns) {
            return Err(WatchError::HostNamespace { pid });
        }
        let marked = marks::mark_namespace(&self.group, pid).map_err(io)?;
        if marked.mounts.is_empty() {
            return Err(io(io::Error::other("no mount could be marked")));
        }
        let mut mounts = lock(&self.mounts);
        if mounts.len() + marked.mounts.len() > MAX_MOUNTS {
            mounts.clear();
        }
        mounts.extend(marked.mounts.iter().copied());
        Ok(marked)
    }

    /// Serves permission events until the group fails (the process's life, normally):
    /// starts the workers and reads on this thread.
    pub fn serve(self: Arc<Self>) {
        let (tx, rx) = mpsc::sync_channel::<FanotifyEvent>(256);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..WORKERS {
            let (watch, rx) = (Arc::clone(&self), Arc::clone(&rx));
            let spawned = std::thread::Builder::new()
                .name(format!("exec-watch-{i}"))
                .spawn(move || loop {
                    let Ok(event) = lock(&rx).recv() else {
                        return;
                    };
                    watch.handle(event);
                });
            if let Err(e) = spawned {
                warn!(error = %e, "exec watch: a worker did not start");
            }
        }
        loop {
            let events = match self.group.read_events() {
                Ok(e) => e,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    // Execs in watched cages now wait for nothing: they are killed as unknown.
                    warn!(error = %e, "exec watch stopped reading");
                    return;
                }
            };
            for event in events {
                if event.fd().is_none() {
                    warn!("exec watch: the kernel's queue overflowed");
                    continue;
                }
                if tx.send(event).is_err() {
                    return;
                }
            }
        }
    }

    /// One exec waiting: puts its file's content in the map (if it can be known), then lets
    /// it go on whatever happened.
    fn handle(&self, event: FanotifyEvent) {
        let reply = Reply {
            group: &self.group,
            event,
        };
        if let Err(e) = self.record(&reply.event) {
            let path = reply
                .event
                .fd()
                .and_then(|fd| {
                    std::fs::read_link(format!(
                        "/proc/self/fd/{}",
                        std::os::fd::AsRawFd::as_raw_fd(&fd)
                    ))
                    .ok()
                })
                .unwrap_or_default();
            warn!(pid = reply.event.pid(), path = %path.display(), error = %e, "exec watch: content not known, the exec will be killed");
        }
    }

    fn record(&self, event: &FanotifyEvent) -> Result<(), ContentError> {
        let fd = event
            .fd()
            .ok_or_else(|| io::Error::other("no file"))?
            .try_clone_to_owned()?;
        let file = File::from(fd);
        let dev = self.dev_of(&file, event.pid())?;
        let entry = content::entry(&self.cache, &file, dev)?;
        let key = ContentKey {
            dev,
            _pad: 0,
            ino: std::os::unix::fs::MetadataExt::ino(&file.metadata()?),
        };
        lock(&self.content)
            .insert(key, entry, 0)
            .map_err(|e| io::Error::other(format!("the content map refused the entry: {e}")))?;
        debug!(dev, ino = key.ino, "exec watch: content recorded");
        Ok(())
    }

    /// The kernel device of the mount `file` is on: from the mounts marked, else the
    /// process's mountinfo.
    fn dev_of(&self, file: &File, pid: i32) -> io::Result<u32> {
        let id = marks::mount_id(file)?;
        if let Some(dev) = lock(&self.mounts).get(&id) {
            return Ok(*dev);
        }
        let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
        marks::parse_mountinfo(&text)
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.dev)
            .ok_or_else(|| io::Error::other(format!("mount {id} is not in process {pid}'s")))
    }
}

/// Lets a waiting exec go on when dropped, whatever happened before.
struct Reply<'a> {
    group: &'a Fanotify,
    event: FanotifyEvent,
}

impl Drop for Reply<'_> {
    fn drop(&mut self) {
        if let Some(fd) = self.event.fd() {
            // A failed answer leaves nothing to do: the kernel answers for a closed group.
            let _ = self
                .group
                .write_response(FanotifyResponse::new(fd, Response::FAN_ALLOW));
        }
    }
}

/// Whether the kernel takes an exec permission mark: one on a fresh file nobody runs.
fn probe_mark(group: &Fanotify) -> io::Result<()> {
    let file = tempfile::tempfile()?;
    group
        .mark(
            MarkFlags::FAN_MARK_ADD,
            MaskFlags::FAN_OPEN_EXEC_PERM,
            &file,
            None::<&str>,
        )
        .map_err(io::Error::from)?;
    let _ = group.mark(
        MarkFlags::FAN_MARK_REMOVE,
        MaskFlags::FAN_OPEN_EXEC_PERM,
        &file,
        None::<&str>,
    );
    Ok(())
}
