//! agentcaged: loads the programs once, attaches them to the cages' parent cgroup, keeps the
//! maps in line with the policy and the cages, and serves the control socket.
//!
//! The kernel decides from maps alone; the daemon is never in the path of a decision, so a
//! slow or dead daemon lets nothing through.

mod config;
mod dashboard;
mod enrich;
mod file;
mod server;
mod state;
mod tasks;

pub use config::{DaemonConfig, LogFormat};
pub use dashboard::DashboardConfig;
pub use file::{ConfigFile, ConfigFileError};
pub use state::{Contained, StateError};

use std::{io, path::PathBuf, sync::Arc};

use agent_common::maps::EVENTS;
use aya::maps::RingBuf;
use nix::sys::inotify::{InitFlags, Inotify};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::{
    bpf::{self, ApprovalMap, AttachedPrograms, BpfError, EgressMaps, GlobalHooks},
    cage::{find_cgroup2_mount, CageError, CageRoot},
    control::AccessPolicy,
    events::EventBus,
    policy::{Policy, PolicyError},
};
use server::Shared;
use state::{KernelInfo, RuntimeParts, State};

/// Why the daemon could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Not running as root.
    #[error("agentcaged must run as root (it loads eBPF programs and manages cgroups)")]
    NotRoot,
    /// The policy file is broken.
    #[error("policy refused: {0}")]
    Policy(#[from] PolicyError),
    /// cgroup discovery or management failed.
    #[error(transparent)]
    Cage(#[from] CageError),
    /// Loading, attaching or pinning failed.
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// The state could not be set up.
    #[error(transparent)]
    State(#[from] StateError),
    /// Another daemon serves the socket.
    #[error("another agentcaged is already serving {0}")]
    AlreadyRunning(PathBuf),
    /// The configured group does not exist.
    #[error("control socket group: {0}")]
    Group(#[source] io::Error),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The configuration file is broken.
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    /// Telemetry could not start (bad configuration, spool not writable).
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    /// The dashboard cannot be served as configured.
    #[error("dashboard: {0}")]
    Dashboard(String),
    /// The kernel refused something else.
    #[error("{0}: {1}")]
    Sys(&'static str, #[source] io::Error),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(DaemonError::NotRoot);
    }
    // Handlers first: a signal during start-up is then handled once we are up, instead of
    // killing the daemon half-way (with cgroups and pins made).
    let signals = Signals::install()?;
    let policy = Policy::load(&config.policy)?;
    // Read before anything is made: a broken file must stop the daemon with nothing changed.
    let mut file = match &config.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    file.telemetry.apply_env(|k| std::env::var(k).ok())?;
    if let Some(listen) = file.dashboard.listen.filter(|l| !l.ip().is_loopback()) {
        return Err(DaemonError::Dashboard(format!(
            "dashboard.listen {listen} is not a loopback address: the dashboard is local only"
        )));
    }
    let access = match &config.group {
        Some(g) => AccessPolicy::with_group(g).map_err(DaemonError::Group)?,
        None => AccessPolicy::root_only(),
    };
    // The socket and the cgroup lock come first: a second daemon must fail before it touches
    // anything the first one owns (its pins above all).
    let listener = server::bind(&config.socket, &access)?;
    let app_listener = match server::bind_app(&config.app_socket) {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(e);
        }
    };
    let started = async {
        if bpf::ensure_bpffs()? {
            info!("mounted bpffs at /sys/fs/bpf");
        }
        let mount = find_cgroup2_mount()?;
        let root = CageRoot::create(&mount, &config.cgroup_name)?;
        let lock = root.lock()?;
        info!(cgroup_root = %root.dir().path().display(), "cgroup v2 found");
        let started = start(
            config.clone(),
            file,
            policy,
            root.clone(),
            access,
            (listener, app_listener),
            signals,
        )
        .await;
        if started.is_err() {
            // Leave nothing behind but what holds processes.
            let _ = root.remove();
        }
        drop(lock);
        started
    }
    .await;
    let _ = std::fs::remove_file(&config.socket);
    let _ = std::fs::remove_file(&config.app_socket);
    started
}

async fn start(
    config: DaemonConfig,
    file: ConfigFile,
    policy: Policy,
    root: CageRoot,
    access: AccessPolicy,
    (listener, app_listener): (tokio::net::UnixListener, tokio::net::UnixListener),
    signals: Signals,
) -> Result<(), DaemonError> {
    let bpf::Loaded { mut ebpf, caps } = bpf::load()?;
    let tier = caps.tier;
    match &caps.missing {
        None => {
            info!(%tier, refused = ?caps.refused(), "enforcement tier: deny (BPF LSM refuses forbidden execs and opens)")
        }
        Some(why) => {
            warn!(%tier, missing = %why, "enforcement tier: kill (forbidden execs are killed with SIGKILL; file rules cannot be enforced)")
        }
    }
    let kernel_log = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(error = %e, "kernel-side logs unavailable");
            None
        }
    };
    let maps = EgressMaps::take(&mut ebpf)?;
    let approval_map = ApprovalMap::take(&mut ebpf)?;
    let bus = EventBus::new();
    // Subscribed before anything is published, so the run-time checks miss nothing.
    let runtime_rx = bus.subscribe();
    let ring: RingBuf<_> = ebpf
        .take_map(EVENTS)
        .ok_or(BpfError::Map {
            name: EVENTS,
            what: "missing from the eBPF object".into(),
        })
        .and_then(|m| {
            RingBuf::try_from(m).map_err(|e| BpfError::Map {
                name: EVENTS,
                what: e.to_string(),
            })
        })?;
    let inotify = Arc::new(
        Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| DaemonError::Sys("inotify_init", e.into()))?,
    );
    // The hooks' states are known once they attach.
    let kernel = KernelInfo {
        caps: caps.clone(),
        hooks: Vec::new(),
    };
    let mut state = State::new(
        policy,
        config.policy.clone(),
        maps,
        root.clone(),
        Arc::clone(&inotify),
        kernel,
        RuntimeParts {
            approval_map,
            bus: bus.clone(),
            snapshot_dir: config.snapshot_dir.clone(),
        },
    );
    let wake = Arc::new(tokio::sync::Notify::new());
    state.set_wake(Arc::clone(&wake));
    let dashboard = match file.dashboard.listen {
        Some(listen) => {
            let listener = dashboard::bind(listen).await?;
            let token: Arc<str> = dashboard::new_token()?.into();
            let addr = listener
                .local_addr()
                .map_err(|e| DaemonError::Dashboard(e.to_string()))?;
            Some((listener, token, format!("http://{addr}/")))
        }
        None => None,
    };
    // Started before the programs attach: a telemetry configuration that cannot work stops
    // the daemon with nothing attached, and the spool subscribes before any event is read.
    let shared_slot = Arc::new(std::sync::OnceLock::<std::sync::Weak<Shared>>::new());
    let telemetry = if file.telemetry.active() {
        let slot = Arc::clone(&shared_slot);
        let identity = crate::telemetry::Identity {
            policy_hash: state.policy().hash().to_owned(),
            instance_id: pin_tag(),
        };
        Some(crate::telemetry::Telemetry::start(
            &file.telemetry,
            &file.spool,
            &bus,
            &identity,
            Arc::new(move || {
                slot.get()
                    .and_then(std::sync::Weak::upgrade)
                    .map_or(0, |s| s.state().total_lost())
            }),
        )?)
    } else {
        None
    };
    // Cages an earlier daemon left (kept enforced by its pinned programs) get maps entries
    // before the new programs attach, so they are never judged as unknown.
    let adopted = state.adopt_existing()?;
    if !adopted.is_empty() {
        info!(agents = ?adopted, "took over cages left by an earlier daemon");
    }
    let pin_dir = config.pin_dir();
    let tag = pin_tag();
    let mut programs = AttachedPrograms::attach(&mut ebpf, root.dir().path(), &pin_dir, &tag)?;
    let hooks = match GlobalHooks::attach(&mut ebpf, &caps, &pin_dir, &tag) {
        Ok(h) => h,
        Err(e) => {
            programs.detach();
            return Err(e.into());
        }
    };
    state.set_hooks(hooks.status.clone());
    // Only now drop the earlier daemon's links: there was no moment without enforcement.
    let released = bpf::release_pinned(&pin_dir, &tag);
    if released > 0 {
        info!(
            released,
            "detached the programs an earlier daemon had pinned"
        );
    }
    // Cages an earlier daemon left that have emptied since go now.
    state.tidy();
    let shared = Arc::new(Shared {
        state: std::sync::Mutex::new(state),
        bus,
        access,
        dashboard: dashboard
            .as_ref()
            .map(|(_, token, url)| format!("{url}#token={token}")),
    });
    let _ = shared_slot.set(Arc::downgrade(&shared));
    {
        let st = shared.state();
        info!(
            socket = %config.socket.display(),
            policy = st.policy().source(),
            policy_hash = st.policy().hash(),
            "agentcaged ready"
        );
    }

    let mut tasks = tokio::task::JoinSet::new();
    let (stop_reading, reading_stop) = tokio::sync::watch::channel(false);
    let reader = tokio::spawn(tasks::read_events(
        Arc::clone(&shared),
        ring,
        reading_stop,
        wake,
    ));
    tasks.spawn(tasks::watch_cages(Arc::clone(&shared), inotify));
    if let Some(log) = kernel_log {
        tasks.spawn(tasks::forward_kernel_log(log));
    }
    tasks.spawn(tasks::report_losses(Arc::clone(&shared)));
    tasks.spawn(tasks::accept(Arc::clone(&shared), listener));
    if let Some((listener, token, _)) = dashboard {
        tasks.spawn(dashboard::serve(Arc::clone(&shared), listener, token));
    }
    tasks.spawn(tasks::accept_app(Arc::clone(&shared), app_listener));
    tasks.spawn(tasks::run_checks(Arc::clone(&shared), runtime_rx));
    tasks.spawn(tasks::tick(Arc::clone(&shared)));
    match tasks::PolicyWatch::new(&config.policy) {
        Ok(w) => {
            tasks.spawn(tasks::watch_policy(Arc::clone(&shared), w));
        }
        Err(e) => {
            warn!(error = %e, "cannot watch the policy directory: reload with SIGHUP or `agentcage policy reload`")
        }
    }

    signals
        .wait_for_stop(&shared, || {
            watch_links(&mut programs, &mut ebpf, root.dir().path(), &shared);
            shared.state().reap_retired();
        })
        .await;
    // Events already in the ring buffer go to the bus (and the spool) before anything stops.
    let _ = stop_reading.send(true);
    let _ = reader.await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    if let Some(t) = telemetry {
        t.shutdown().await;
    }

    // From here no request can make or fill a cage (connections still open are refused), so
    // the decision below cannot be overtaken.
    let kept = shared.state().shutdown();
    let removed = kept.is_empty() && root.remove().is_ok();
    if removed {
        // Hooks first: detaching the cgroup programs also removes the (then empty) pin dir.
        hooks.detach();
        programs.detach();
        info!("stopped: no cage held a process; programs detached and cgroups removed");
    } else {
        programs.keep();
        hooks.keep();
        warn!(
            agents = ?kept,
            pins = %pin_dir.display(),
            "stopped while cages still hold processes: their egress stays enforced by the pinned \
             programs with the last policy; start agentcaged again to manage them"
        );
    }
    Ok(())
}

/// How often the daemon checks that its programs are still attached.
const WATCHDOG_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Puts back any program whose link someone detached (root outside every cage can), and
/// says so loudly: the kernel would otherwise stop judging the cages.
fn watch_links(
    programs: &mut AttachedPrograms,
    ebpf: &mut aya::Ebpf,
    root: &std::path::Path,
    shared: &Shared,
) {
    let missing = match programs.missing(ebpf) {
        Ok(m) if m.is_empty() => return,
        Ok(m) => m,
        Err(e) => {
            error!(error = %e, "cannot check that the programs are still attached");
            return;
        }
    };
    error!(programs = ?missing, "programs were detached from the cages by someone else; re-attaching");
    match programs.repair(ebpf, &missing) {
        Ok(()) => warn!(programs = ?missing, "programs re-attached"),
        Err(e) => {
            // Fail closed: with a hook missing, nothing in a cage may run until it is back.
            let frozen = std::fs::write(root.join("cgroup.freeze"), "1").is_ok();
            error!(error = %e, frozen, "could not re-attach the programs; every cage is frozen");
            let hash = shared.state().policy().hash().to_owned();
            shared.bus.publish(crate::events::Event::daemon(
                &hash,
                crate::events::EventDetail::Containment(crate::events::ContainmentDetail {
                    rung: if frozen { "paused" } else { "unchanged" }.into(),
                    previous: "any".into(),
                    reason: format!(
                        "watchdog: programs {missing:?} detached and not re-attachable ({e}); \
                         every cage {}",
                        if frozen {
                            "frozen"
                        } else {
                            "could NOT be frozen"
                        }
                    ),
                    snapshot: None,
                }),
            ));
        }
    }
}

/// Names this daemon's pins apart from any earlier daemon's: pid and start time.
fn pin_tag() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{now}", std::process::id())
}

/// The signals the daemon acts on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, DaemonError> {
        let install =
            |kind| signal(kind).map_err(|e| DaemonError::Sys("installing signal handlers", e));
        Ok(Self {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }

    /// Waits for SIGTERM or SIGINT; reloads the policy on SIGHUP and runs `watchdog` every
    /// [`WATCHDOG_PERIOD`] meanwhile.
    async fn wait_for_stop(mut self, shared: &Shared, mut watchdog: impl FnMut()) {
        let mut every = tokio::time::interval(WATCHDOG_PERIOD);
        loop {
            tokio::select! {
                _ = every.tick() => watchdog(),
                _ = self.term.recv() => { info!("SIGTERM: stopping"); return; }
                _ = self.int.recv() => { info!("SIGINT: stopping"); return; }
                _ = self.hup.recv() => {
                    let result = shared.state().reload();
                    if let Err(e) = result {
                        error!(error = %e, "SIGHUP: policy reload refused; the previous policy stays in force");
                    }
                }
            }
        }
    }
}
