//! The approvals map: grants a person gave, with the kernel-clock time they lapse.

use agent_common::{
    approval::{ApprovalExpiry, ApprovalKey},
    maps,
};
use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};

use super::BpfError;

/// Typed access to `APPROVALS`.
pub struct ApprovalMap {
    map: HashMap<MapData, ApprovalKey, ApprovalExpiry>,
}

impl ApprovalMap {
    /// Takes the map out of `ebpf`.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        let map = ebpf
            .take_map(maps::APPROVALS)
            .ok_or(BpfError::MissingMap(maps::APPROVALS))?;
        let map = HashMap::try_from(map).map_err(|source| BpfError::Map {
            name: maps::APPROVALS,
            source,
        })?;
        Ok(Self { map })
    }

    /// Grants `key` until `until_boot_ns` (CLOCK_BOOTTIME, the kernel's clock).
    pub fn grant(&mut self, key: &ApprovalKey, until_boot_ns: u64) -> Result<(), BpfError> {
        self.map
            .insert(key, until_boot_ns, 0)
            .map_err(|source| BpfError::Capacity {
                name: maps::APPROVALS,
                source,
            })
    }

    /// Withdraws a grant (gone already is fine).
    pub fn revoke(&mut self, key: &ApprovalKey) {
        let _ = self.map.remove(key);
    }

    /// Withdraws every grant of a cage.
    pub fn revoke_cage(&mut self, cgroup_id: u64) {
        let keys: Vec<ApprovalKey> = self
            .map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.cgroup_id == cgroup_id)
            .collect();
        for k in keys {
            self.revoke(&k);
        }
    }
}
