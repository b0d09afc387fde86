//! The daemon's long-running tasks: ring-buffer reader, cage watcher, kernel-log forwarder,
//! and the accept loop.

use std::{
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
};

use aya::maps::{MapData, RingBuf};
use nix::{errno::Errno, sys::inotify::Inotify};
use tokio::{io::unix::AsyncFd, net::UnixListener};
use tracing::{error, warn};

use super::server::{self, Shared};
use crate::{
    capture::HashCache,
    events::{decode, EventDetail, RawEvent},
};

/// Registers a descriptor-owning value with tokio's reactor.
fn register<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: each T here owns its descriptor (ring buffer map, inotify instance, log ring) and
    // keeps it open for as long as the AsyncFd holds T.
    unsafe { AsyncFd::register(inner) }.map_err(|e| e.into_parts().1)
}

/// Reads kernel events, enriches them and publishes them on the bus.
pub async fn read_events(shared: Arc<Shared>, ring: RingBuf<MapData>) {
    let mut fd = match register(ring) {
        Ok(fd) => fd,
        Err(e) => {
            error!(error = %e, "cannot poll the event ring buffer: no events will be reported");
            return;
        }
    };
    let mut hashes = HashCache::default();
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                error!(error = %e, "event ring buffer poll failed");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(raw) => {
                    drop(item);
                    let mut event = shared.state().enrich(&raw);
                    // Hashing reads the file: outside the state lock, from a cache.
                    if let (EventDetail::Exec(d), RawEvent::Exec(e)) = (&mut event.detail, &raw) {
                        match hashes.hash(event.tgid, &d.filename, e.dev, e.ino) {
                            Ok(h) => d.sha256 = Some(h),
                            Err(why) => d.sha256_error = Some(why),
                        }
                    }
                    shared.bus.publish(event);
                }
                Err(e) => warn!(error = %e, "undecodable event record skipped"),
            }
        }
        guard.clear_ready();
    }
}

/// Lets tokio poll the inotify instance the state adds watches to.
struct InotifyFd(Arc<Inotify>);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

/// Removes cages whose last process exited (cgroup.events changes).
pub async fn watch_cages(shared: Arc<Shared>, inotify: Arc<Inotify>) {
    let fd = match register(InotifyFd(Arc::clone(&inotify))) {
        Ok(fd) => fd,
        Err(e) => {
            error!(error = %e, "cannot poll inotify: empty cages will not be removed");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                error!(error = %e, "inotify poll failed");
                return;
            }
        };
        match inotify.read_events() {
            Ok(events) => {
                let mut state = shared.state();
                for event in events {
                    state.on_watch(event.wd);
                }
            }
            Err(Errno::EAGAIN) => guard.clear_ready(),
            Err(e) => {
                error!(error = %e, "reading inotify failed");
                return;
            }
        }
    }
}

/// Forwards aya-log records from the programs to the daemon's log.
pub async fn forward_kernel_log(log: aya_log::EbpfLogger<&'static dyn log::Log>) {
    let Ok(mut fd) = register(log) else { return };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// Says in the log when the kernel could not report events (ring buffer full), so loss never
/// goes unnoticed even when nobody runs `agentcage status`.
pub async fn report_losses(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
    let mut last = 0;
    loop {
        every.tick().await;
        let total = shared.state().total_lost();
        if total > last {
            warn!(
                lost = total - last,
                total,
                "events lost: the ring buffer was full (agentcage status shows them per agent)"
            );
        }
        last = total;
    }
}

/// Accepts control connections, one task each.
/// At most this many control connections are served at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 256;

/// Accepts control connections, one task each, at most [`MAX_CONNECTIONS`] at once.
pub async fn accept(shared: Arc<Shared>, listener: UnixListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    server::serve(shared, stream).await;
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of descriptors or memory: say so once per pause, not in a busy loop.
                warn!(error = %e, "accept failed; pausing the control socket for 100 ms");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
