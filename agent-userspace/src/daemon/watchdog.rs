//! Watching the daemon's own enforcement (programs detached by someone else are put back,
//! or every cage is frozen), and the signals the daemon acts on.

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use super::{server::Shared, DaemonError};
use crate::bpf::AttachedPrograms;

/// How often the daemon checks that its programs are still attached.
pub(super) const WATCHDOG_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Puts back any program whose link someone detached (root outside every cage can), and
/// says so loudly: the kernel would otherwise stop judging the cages.
pub(super) fn watch_links(
    programs: &mut AttachedPrograms,
    ebpf: &std::sync::Mutex<aya::Ebpf>,
    root: &std::path::Path,
    shared: &Shared,
) {
    // The program object is locked only while it is used: the state lock is taken below,
    // and the file hooks take this one under the state lock.
    let missing = match programs.missing(&ebpf.lock().unwrap_or_else(|p| p.into_inner())) {
        Ok(m) if m.is_empty() => return,
        Ok(m) => m,
        Err(e) => {
            error!(error = %e, "cannot check that the programs are still attached");
            return;
        }
    };
    error!(programs = ?missing, "programs were detached from the cages by someone else; re-attaching");
    let repaired = programs.repair(
        &mut ebpf.lock().unwrap_or_else(|p| p.into_inner()),
        &missing,
    );
    match repaired {
        Ok(()) => warn!(programs = ?missing, "programs re-attached"),
        Err(e) => {
            // Fail closed: with a hook missing, nothing in a cage may run until it is back.
            let frozen = std::fs::write(root.join("cgroup.freeze"), "1").is_ok();
            error!(error = %e, frozen, "could not re-attach the programs; every cage is frozen");
            let hash = shared.state().policy().hash().to_owned();
            use crate::events::RungState;
            shared.bus.publish(crate::events::Event::daemon(
                &hash,
                crate::events::EventDetail::Containment(crate::events::ContainmentDetail {
                    rung: if frozen {
                        RungState::Paused
                    } else {
                        RungState::Unchanged
                    },
                    previous: RungState::Any,
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
pub(super) fn pin_tag() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{now}", std::process::id())
}

/// The signals the daemon acts on.
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn install() -> Result<Self, DaemonError> {
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
    pub(super) async fn wait_for_stop(mut self, shared: &Shared, mut watchdog: impl FnMut()) {
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
