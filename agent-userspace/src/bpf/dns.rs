//! The DNS maps: where each cage's DNS goes (`DNS_TARGETS`), which endpoints are
//! resolvers (`DNS_ENDPOINTS`). The grants live with the slots (`EgressMaps`).

use agent_common::{
    dns::{DnsEndpoint, DnsTarget},
    maps,
};
use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};

use super::{maps::take, BpfError};

/// Typed access to `DNS_TARGETS` and `DNS_ENDPOINTS`.
pub struct DnsMaps {
    targets: HashMap<MapData, u64, DnsTarget>,
    endpoints: HashMap<MapData, DnsEndpoint, u64>,
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

impl DnsMaps {
    /// Takes the maps out of `ebpf`.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(Self {
            targets: take(ebpf, maps::DNS_TARGETS)?,
            endpoints: take(ebpf, maps::DNS_ENDPOINTS)?,
        })
    }

    /// Sends cage `cgroup_id`'s DNS to its endpoint (ports on 127.0.0.1 and ::1; 0: none).
    pub fn set(&mut self, cgroup_id: u64, port4: u16, port6: u16) -> Result<(), BpfError> {
        let capacity = |name| move |source| BpfError::Capacity { name, source };
        for (family, port) in [(AF_INET, port4), (AF_INET6, port6)] {
            if port != 0 {
                self.endpoints
                    .insert(DnsEndpoint { family, port }, cgroup_id, 0)
                    .map_err(capacity(maps::DNS_ENDPOINTS))?;
            }
        }
        let target = DnsTarget {
            port4,
            port6,
            _pad: 0,
        };
        self.targets
            .insert(cgroup_id, target, 0)
            .map_err(capacity(maps::DNS_TARGETS))
    }

    /// Forgets a cage's endpoint.
    pub fn remove(&mut self, cgroup_id: u64) {
        if let Ok(t) = self.targets.get(&cgroup_id, 0) {
            for (family, port) in [(AF_INET, t.port4), (AF_INET6, t.port6)] {
                let _ = self.endpoints.remove(&DnsEndpoint { family, port });
            }
        }
        let _ = self.targets.remove(&cgroup_id);
    }
}
