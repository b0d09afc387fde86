//! The daemon's answers to the cages' resolver endpoints: each query is decided and granted
//! under the state lock (briefly; upstream is asked without it).

use std::sync::{Arc, OnceLock, Weak};

use super::server::Shared;
use crate::dns::{
    wire::{Chain, Question},
    Resolve, Transport,
};

/// Hands the resolver's decisions to the state, once the daemon is up.
pub(super) struct DaemonResolver {
    pub(super) shared: Arc<OnceLock<Weak<Shared>>>,
}

impl DaemonResolver {
    fn shared(&self) -> Option<Arc<Shared>> {
        self.shared.get().and_then(Weak::upgrade)
    }
}

impl Resolve for DaemonResolver {
    fn admit(
        &self,
        cage: u64,
        q: &Question,
        t: Transport,
    ) -> Option<(Vec<std::net::SocketAddr>, std::time::Duration)> {
        // Before the daemon is ready (taking over an earlier daemon's cages) nothing is
        // answered: the stub asks again.
        self.shared()?.state().dns_admit(cage, q, t)
    }

    fn grant(&self, cage: u64, q: &Question, t: Transport, chain: &Chain) -> Option<u32> {
        self.shared()?.state().dns_grant(cage, q, t, chain)
    }

    fn settle(&self) {
        if let Some(s) = self.shared() {
            s.state().dns_settle();
        }
    }

    fn failed(&self, cage: u64, q: &Question, t: Transport, error: &str) {
        if let Some(s) = self.shared() {
            s.state().dns_failed(cage, q, t, error);
        }
    }
}
