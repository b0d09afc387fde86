//! Start-up and shutdown: load and attach the programs, take over an earlier daemon's cages,
//! run the tasks until a stop signal, then leave every cage with processes enforced.

use std::sync::Arc;

use agent_common::maps::{EVENTS, EXEC_CONTENT};
use aya::maps::RingBuf;
use nix::sys::inotify::{InitFlags, Inotify};
use tracing::{info, warn};

use super::{
    dashboard, reader,
    server::Shared,
    state::{KernelInfo, RuntimeParts, State},
    tasks,
    watchdog::{pin_tag, watch_links, Signals},
    ConfigFile, DaemonConfig, DaemonError,
};
use crate::{
    bpf::{self, ApprovalMap, AttachedPrograms, BpfError, DnsMaps, EgressMaps, GlobalHooks},
    cage::CageRoot,
    control::AccessPolicy,
    events::EventBus,
    execwatch::{ContentMap, ExecWatch},
    policy::Policy,
};

/// The trust domain (configured, else the host name), the trusted certificate keys, and
/// where keys and certificates are kept.
fn credential_setup(
    config: &DaemonConfig,
    file: &ConfigFile,
) -> Result<super::state::CredentialSetup, DaemonError> {
    let trust_domain = match &file.identity.trust_domain {
        Some(t) => t.clone(),
        None => crate::identity::TrustDomain::of_host()?,
    };
    let trusted_keys = file
        .identity
        .trusted_keys
        .iter()
        .map(|p| crate::credentials::read_public_key(p))
        .collect::<Result<_, _>>()?;
    Ok(super::state::CredentialSetup {
        state_dir: config.state_dir.clone(),
        certificate_dir: config.certificate_dir.clone(),
        trust_domain,
        trusted_keys,
        node: crate::telemetry::resource::node_id(&file.telemetry),
    })
}

pub(super) async fn start(
    config: DaemonConfig,
    file: ConfigFile,
    policy: Policy,
    root: CageRoot,
    access: AccessPolicy,
    (listener, app_listener): (tokio::net::UnixListener, tokio::net::UnixListener),
    signals: Signals,
) -> Result<(), DaemonError> {
    let bpf::Loaded {
        mut ebpf,
        mut caps,
        unix,
    } = bpf::load()?;
    let tier = caps.tier;
    info!(unix = %caps.unix, "Unix sockets of policies with unix: are confined by");
    let exec_watch = start_exec_watch(&mut ebpf, tier)?;
    caps.exec_watch = exec_watch.is_some();
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
    // The resolver's answers (and the spool's readers) need the shared state, which exists
    // only once the state does.
    let shared_slot = Arc::new(std::sync::OnceLock::<std::sync::Weak<Shared>>::new());
    let dns = super::state::DnsState::new(
        file.dns.clone(),
        DnsMaps::take(&mut ebpf)?,
        Arc::new(super::dns::DaemonResolver {
            shared: Arc::clone(&shared_slot),
        }),
    );
    let bus = EventBus::new();
    // Subscribed before anything is published, so the run-time checks miss nothing.
    let runtime_rx = bus.subscribe();
    let ring: RingBuf<_> = ebpf
        .take_map(EVENTS)
        .ok_or(BpfError::MissingMap(EVENTS))
        .and_then(|m| {
            RingBuf::try_from(m).map_err(|source| BpfError::Map {
                name: EVENTS,
                source,
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
        lazy_hooks: Vec::new(),
        controllers: root
            .available_controllers()
            .map_or(0, |c| crate::policy::kernel::controllers_of(&c)),
    };
    // Snapshots and kills run outside the state lock, on the containment worker.
    let (jobs, job_queue) = tokio::sync::mpsc::unbounded_channel();
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
            recording_dir: config.recording_dir.clone(),
            jobs,
            app_socket: config.app_socket.clone(),
            credentials: credential_setup(&config, &file)?,
            dns,
            users: crate::accounts::DynamicUsers::new(config.home_dir.clone(), &config.cgroup_name),
            exec_watch,
        },
    )?;
    let wake = Arc::new(tokio::sync::Notify::new());
    state.set_wake(Arc::clone(&wake));
    let dashboard = match file.dashboard.listen {
        Some(listen) => {
            let listener = dashboard::bind(listen).await?;
            let token: Arc<str> = dashboard::new_token()?.into();
            let addr = listener.local_addr().map_err(|source| DaemonError::Io {
                op: "reading the address of",
                path: "the dashboard's listener".into(),
                source,
            })?;
            Some((listener, token, format!("http://{addr}/")))
        }
        None => None,
    };
    // Started before the programs attach: a telemetry configuration that cannot work stops
    // the daemon with nothing attached, and the spool is the bus's durable sink before any
    // event is read. The spool's readers reach the state through the resolver's slot.
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
    // What an earlier daemon's resolver granted to the cages it left.
    let dns_saved = config
        .socket
        .with_file_name(format!("{}-dns-grants.json", config.cgroup_name));
    if !adopted.is_empty() {
        info!(agents = ?adopted, "took over cages left by an earlier daemon");
        state.dns_restore(&dns_saved);
    }
    let pin_dir = config.pin_dir();
    let tag = pin_tag();
    let mut programs =
        AttachedPrograms::attach(&mut ebpf, unix, root.dir().path(), &pin_dir, &tag)?;
    let hooks = match GlobalHooks::attach(&mut ebpf, &caps, &pin_dir, &tag) {
        Ok(h) => h,
        Err(e) => {
            programs.detach();
            return Err(e.into());
        }
    };
    let mut statuses = hooks.status.clone();
    statuses.extend(programs.unix_status(&caps.unix));
    state.set_hooks(statuses);
    match bpf::CgroupPrograms::of(&ebpf, programs.unix_programs()) {
        Ok(p) => {
            let records = config
                .socket
                .parent()
                .map_or_else(|| "containers".into(), |d| d.join("containers"));
            state.enable_containers(
                p,
                (pin_dir.clone(), tag.clone()),
                config.app_socket.clone(),
                records,
            );
            let taken = state.adopt_containers();
            if !taken.is_empty() {
                info!(containers = ?taken, "took over containers caged by an earlier daemon");
            }
        }
        Err(e) => {
            warn!(error = %e, "containers cannot be caged: the cgroup programs' descriptors are unavailable")
        }
    }
    let ebpf = Arc::new(std::sync::Mutex::new(ebpf));
    // The file and Unix socket hooks attach when a cage first needs them; at once if a cage
    // taken over does (before the earlier daemon's links go), or if the policy has such rules
    // (so no `run` waits, under the state lock, for their verification).
    if caps.tier == bpf::Tier::Deny {
        let sets = [
            (
                bpf::LazyHooks::files(Arc::clone(&ebpf), caps.userns_hook, &pin_dir, &tag),
                state.policy().has_file_rules(),
            ),
            (
                bpf::LazyHooks::unix(Arc::clone(&ebpf), &pin_dir, &tag),
                state.policy().has_unix_rules(),
            ),
        ];
        for (set, now) in sets {
            let set = Arc::new(set);
            let attached = state.add_lazy_hooks(Arc::clone(&set)).and_then(|()| {
                if now {
                    set.ensure_for(u32::MAX)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = attached {
                for lazy in state.lazy_hooks() {
                    lazy.detach();
                }
                hooks.detach();
                programs.detach();
                return Err(e.into());
            }
        }
    }
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
        recordings: crate::recording::RecordingStore::new(
            config.recording_dir.clone(),
            config.recording_max_bytes,
        ),
        app_share: Arc::default(),
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
    let reader = tokio::spawn(reader::read_events(
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
    tasks.spawn(tasks::run_containment(job_queue));
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
            watch_links(&mut programs, &ebpf, root.dir().path(), &shared);
            let mut state = shared.state();
            state.watch_container_links();
            state.reap_retired();
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
    if !kept.is_empty() {
        shared.state().dns_save(&dns_saved);
    }
    let removed = kept.is_empty() && root.remove().is_ok();
    let lazy_hooks = shared.state().lazy_hooks();
    if removed {
        for lazy in &lazy_hooks {
            lazy.detach();
        }
        // Hooks first: detaching the cgroup programs also removes the (then empty) pin dir,
        // once the (empty) directory of containers' links is gone.
        hooks.detach();
        let _ = std::fs::remove_dir(pin_dir.join("containers"));
        programs.detach();
        info!("stopped: no cage held a process; programs detached and cgroups removed");
    } else {
        programs.keep();
        hooks.keep();
        for lazy in &lazy_hooks {
            lazy.keep();
        }
        warn!(
            agents = ?kept,
            pins = %pin_dir.display(),
            "stopped while cages still hold processes: their egress stays enforced by the pinned \
             programs with the last policy; start agentcaged again to manage them"
        );
    }
    Ok(())
}

/// The kill tier's exec watch (exec rules by content), serving on a thread of its own; None
/// in the deny tier (IMA hashes there) or where the kernel lacks fanotify permission events
/// (content rules then refuse the agents that have them, or cover files only).
fn start_exec_watch(
    ebpf: &mut aya::Ebpf,
    tier: bpf::Tier,
) -> Result<Option<Arc<ExecWatch>>, DaemonError> {
    if tier != bpf::Tier::Kill {
        return Ok(None);
    }
    let take = || {
        ebpf.take_map(EXEC_CONTENT)
            .ok_or(BpfError::MissingMap(EXEC_CONTENT))
            .and_then(|m| {
                ContentMap::try_from(m).map_err(|source| BpfError::Map {
                    name: EXEC_CONTENT,
                    source,
                })
            })
    };
    let watch = match ExecWatch::new(take) {
        Ok(w) => Arc::new(w?),
        Err(e) => {
            warn!(error = %e, "exec rules by content are not enforced in the kill tier: deny rules cover the named files only");
            return Ok(None);
        }
    };
    let serving = Arc::clone(&watch);
    std::thread::Builder::new()
        .name("exec-watch".into())
        .spawn(move || serving.serve())
        .map_err(|e| DaemonError::Sys("starting the exec watch", e))?;
    info!("exec watch: kill-tier exec rules judge content (fanotify permission events)");
    Ok(Some(watch))
}
