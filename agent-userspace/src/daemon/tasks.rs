//! The daemon's long-running tasks (the ring-buffer reader has a module of its own): cage
//! watcher, kernel-log forwarder, the accept loops, the run-time checks and the timers.

use std::{
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
};

use nix::{errno::Errno, sys::inotify::Inotify};
use tokio::{io::unix::AsyncFd, net::UnixListener};
use tracing::{error, warn};

use super::server::{self, Shared};

/// Registers a descriptor-owning value with tokio's reactor.
pub(super) fn register<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: each T here owns its descriptor (ring buffer map, inotify instance, log ring) and
    // keeps it open for as long as the AsyncFd holds T.
    unsafe { AsyncFd::register(inner) }.map_err(|e| e.into_parts().1)
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

/// At most this many application connections are served at once, each cage holding at most
/// its share (`server::share::PER_CAGE`) of them.
const MAX_APP_CONNECTIONS: usize = 1024;

/// Accepts control connections, one task each, at most [`MAX_CONNECTIONS`] at once.
pub async fn accept(shared: Arc<Shared>, listener: UnixListener) {
    let what = "the control socket";
    accept_with(shared, listener, (what, MAX_CONNECTIONS), server::serve).await;
}

/// Accepts connections on the application socket, one task each, at most
/// [`MAX_APP_CONNECTIONS`] at once.
pub async fn accept_app(shared: Arc<Shared>, listener: UnixListener) {
    let what = "the application socket";
    accept_with(
        shared,
        listener,
        (what, MAX_APP_CONNECTIONS),
        server::serve_app,
    )
    .await;
}

async fn accept_with<F, Fut>(
    shared: Arc<Shared>,
    listener: UnixListener,
    (what, most): (&str, usize),
    serve: F,
) where
    F: Fn(Arc<Shared>, tokio::net::UnixStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(most));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let served = serve(Arc::clone(&shared), stream);
                tokio::spawn(async move {
                    served.await;
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of descriptors or memory: say so once per pause, not in a busy loop.
                warn!(error = %e, "accept failed on {what}; pausing it for 100 ms");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// The run-time checks (approvals, budgets, assertions, deny rate) as a consumer of the
/// event bus: what has arrived is taken together, under one lock of the state.
pub async fn run_checks(
    shared: Arc<Shared>,
    mut rx: tokio::sync::broadcast::Receiver<Arc<crate::events::Event>>,
) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    const BATCH: usize = 1024;
    let lagged = |n| {
        error!(
            missed = n,
            "the run-time checks fell behind the event bus; budgets and assertions missed events"
        );
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        match rx.recv().await {
            Ok(event) => batch.push(event),
            Err(RecvError::Lagged(n)) => lagged(n),
            Err(RecvError::Closed) => return,
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(event) => batch.push(event),
                Err(TryRecvError::Lagged(n)) => lagged(n),
                Err(_) => break,
            }
        }
        let mut state = shared.state();
        for event in batch.drain(..) {
            state.on_event(&event);
        }
    }
}

/// How often time-driven checks run (approval expiry, `within` deadlines, wall clock).
const TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// Runs the time-driven checks.
pub async fn tick(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(TICK);
    loop {
        every.tick().await;
        shared.state().tick();
    }
}

/// Watches the policy file's directory, so that a changed file is reloaded (editors often
/// write a new file and rename it over the old one, hence the directory).
pub struct PolicyWatch {
    inotify: Inotify,
    /// The names in the directory whose change changes the policy: the file's, and, when it
    /// is a symlink through another entry of the directory (a Kubernetes ConfigMap volume:
    /// `policy.yaml -> ..data/policy.yaml`, and the kubelet swaps `..data` by a rename), that
    /// entry's.
    names: Vec<std::ffi::OsString>,
}

impl PolicyWatch {
    /// Watches the directory of `policy`.
    pub fn new(policy: &std::path::Path) -> nix::Result<Self> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags};
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let dir = policy
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        inotify.add_watch(
            dir,
            AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO,
        )?;
        let mut names = vec![policy.file_name().unwrap_or_default().to_owned()];
        if let Some(first) = std::fs::read_link(policy)
            .ok()
            .filter(|target| target.is_relative())
            .and_then(|target| match target.components().next() {
                Some(std::path::Component::Normal(first)) => Some(first.to_owned()),
                _ => None,
            })
        {
            names.push(first);
        }
        Ok(Self { inotify, names })
    }
}

impl AsRawFd for PolicyWatch {
    fn as_raw_fd(&self) -> RawFd {
        use std::os::fd::AsFd as _;
        self.inotify.as_fd().as_raw_fd()
    }
}

/// Reloads the policy when its file changes; a broken file is refused and the policy in
/// force stays.
pub async fn watch_policy(shared: Arc<Shared>, watch: PolicyWatch) {
    let fd = match register(watch) {
        Ok(fd) => fd,
        Err(e) => {
            error!(error = %e, "cannot poll the policy directory watch");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                error!(error = %e, "policy directory watch failed");
                return;
            }
        };
        let w = guard.get_inner();
        match w.inotify.read_events() {
            Ok(events) => {
                let ours = events
                    .iter()
                    .any(|e| e.name.as_ref().is_some_and(|n| w.names.contains(n)));
                if ours {
                    if let Err(e) = shared.state().reload() {
                        error!(error = %e, "policy file changed: reload refused; the previous policy stays in force");
                    }
                }
            }
            Err(Errno::EAGAIN) => guard.clear_ready(),
            Err(e) => {
                error!(error = %e, "reading the policy directory watch failed");
                return;
            }
        }
    }
}

/// Runs containment jobs (forensic snapshots, kills) on blocking threads, outside the state
/// lock, several at once: the kill switch freezes every cage first, then each is written
/// and killed without waiting for the others.
pub async fn run_containment(
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<super::state::ContainJob>,
) {
    while let Some(job) = jobs.recv().await {
        tokio::task::spawn_blocking(move || job.run());
    }
}
