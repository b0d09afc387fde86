//! Typed access to the programs' maps. Policy changes fill a fresh slot, then swap the
//! cage's slot in one map update, then delete the old slot: a decision never sees half of two
//! policies.

use std::{collections::HashSet, net::IpAddr};

use agent_common::{
    cage::{CageConfig, CageStats},
    egress::{Key4, Key6, PortRules, SLOT_BITS},
    file::{FileRule, InodeKey},
    maps,
    process::{ExecRule, HashKey},
    unix::{ByteClasses, DfaKey, DfaNext},
};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
    },
    util::nr_cpus,
    Ebpf,
};

use super::BpfError;
use crate::policy::{canonical, CompiledAgent, CompiledEgress};

/// The keys one policy slot put in the tries, so the slot can be emptied later.
#[derive(Default)]
pub struct SlotEntries {
    slot: u32,
    v4: Vec<Key<Key4>>,
    v6: Vec<Key<Key6>>,
    ingress_v4: Vec<Key<Key4>>,
    ingress_v6: Vec<Key<Key6>>,
    unix: Vec<DfaKey>,
    unix_classes: bool,
    exec_inodes: Vec<InodeKey>,
    exec_hashes: Vec<HashKey>,
    files: Vec<InodeKey>,
    /// Granted addresses (canonical: IPv4-mapped IPv6 as IPv4), entries of the tries.
    grants: HashSet<IpAddr>,
}

impl SlotEntries {
    /// The slot these entries belong to.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

/// The egress maps, taken out of the loaded object.
pub struct EgressMaps {
    cages: HashMap<MapData, u64, CageConfig>,
    stats: PerCpuHashMap<MapData, u64, CageStats>,
    v4: LpmTrie<MapData, Key4, PortRules>,
    v6: LpmTrie<MapData, Key6, PortRules>,
    ingress_v4: LpmTrie<MapData, Key4, PortRules>,
    ingress_v6: LpmTrie<MapData, Key6, PortRules>,
    unix: HashMap<MapData, DfaKey, DfaNext>,
    unix_classes: HashMap<MapData, u32, ByteClasses>,
    exec_inodes: HashMap<MapData, InodeKey, ExecRule>,
    exec_hashes: HashMap<MapData, HashKey, ExecRule>,
    file_rules: HashMap<MapData, InodeKey, FileRule>,
    global_lost: PerCpuArray<MapData, u64>,
    cpus: usize,
    /// The deny tier's hooks that only some cages need, attached before the first of them.
    lazy_hooks: Vec<std::sync::Arc<super::LazyHooks>>,
}

pub(super) fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, BpfError> {
    let map = ebpf.take_map(name).ok_or(BpfError::MissingMap(name))?;
    T::try_from(map).map_err(|e| map_err(name, e))
}

fn map_err(name: &'static str, source: MapError) -> BpfError {
    BpfError::Map { name, source }
}

impl EgressMaps {
    /// Takes the maps out of `ebpf`.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        let cpus = nr_cpus().map_err(|(what, source)| BpfError::Cpus { what, source })?;
        Ok(Self {
            cages: take(ebpf, maps::CAGES)?,
            stats: take(ebpf, maps::CAGE_STATS)?,
            v4: take(ebpf, maps::EGRESS_V4)?,
            v6: take(ebpf, maps::EGRESS_V6)?,
            ingress_v4: take(ebpf, maps::INGRESS_V4)?,
            ingress_v6: take(ebpf, maps::INGRESS_V6)?,
            unix: take(ebpf, maps::UNIX_DFA)?,
            unix_classes: take(ebpf, maps::UNIX_CLASSES)?,
            exec_inodes: take(ebpf, maps::EXEC_INODES)?,
            exec_hashes: take(ebpf, maps::EXEC_HASHES)?,
            file_rules: take(ebpf, maps::FILE_RULES)?,
            global_lost: take(ebpf, maps::GLOBAL_LOST)?,
            cpus,
            lazy_hooks: Vec::new(),
        })
    }

    /// From now on a cage whose flags need `hooks` gets them attached before its
    /// configuration is written; cages already in the map (left by an earlier daemon) that
    /// need them get them now.
    pub fn add_lazy_hooks(
        &mut self,
        hooks: std::sync::Arc<super::LazyHooks>,
    ) -> Result<(), BpfError> {
        let flags = self
            .cages
            .iter()
            .flatten()
            .fold(0, |flags, (_, c)| flags | c.flags);
        hooks.ensure_for(flags)?;
        self.lazy_hooks.push(hooks);
        Ok(())
    }

    /// Writes a compiled policy into `slot`. On failure, whatever was written is removed.
    pub fn fill_slot(
        &mut self,
        slot: u32,
        compiled: &CompiledAgent,
    ) -> Result<SlotEntries, BpfError> {
        let mut entries = SlotEntries {
            slot,
            ..Default::default()
        };
        let result = self.fill_into(&mut entries, compiled);
        if let Err(e) = result {
            self.clear_slot(&entries);
            return Err(e);
        }
        Ok(entries)
    }

    fn fill_into(
        &mut self,
        entries: &mut SlotEntries,
        compiled: &CompiledAgent,
    ) -> Result<(), BpfError> {
        let slot = entries.slot;
        for (&(dev, ino), rule) in &compiled.exec.inodes {
            let key = InodeKey { slot, dev, ino };
            self.exec_inodes
                .insert(key, rule, 0)
                .map_err(|e| capacity(maps::EXEC_INODES, e))?;
            entries.exec_inodes.push(key);
        }
        for (digest, rule) in &compiled.exec.hashes {
            let key = HashKey {
                slot,
                sha256: *digest,
            };
            self.exec_hashes
                .insert(key, rule, 0)
                .map_err(|e| capacity(maps::EXEC_HASHES, e))?;
            entries.exec_hashes.push(key);
        }
        for (&(dev, ino), rule) in &compiled.files.inodes {
            let key = InodeKey { slot, dev, ino };
            self.file_rules
                .insert(key, rule, 0)
                .map_err(|e| capacity(maps::FILE_RULES, e))?;
            entries.files.push(key);
        }
        if !compiled.unix.transitions.is_empty() {
            self.unix_classes
                .insert(slot, compiled.unix.classes, 0)
                .map_err(|e| capacity(maps::UNIX_CLASSES, e))?;
            entries.unix_classes = true;
        }
        for (key, next) in compiled.unix.entries(slot) {
            self.unix
                .insert(key, next, 0)
                .map_err(|e| capacity(maps::UNIX_DFA, e))?;
            entries.unix.push(key);
        }
        let tries = [
            (
                &compiled.egress,
                &mut self.v4,
                &mut self.v6,
                [maps::EGRESS_V4, maps::EGRESS_V6],
            ),
            (
                &compiled.ingress,
                &mut self.ingress_v4,
                &mut self.ingress_v6,
                [maps::INGRESS_V4, maps::INGRESS_V6],
            ),
        ];
        let mut keys = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
        let mut result = Ok(());
        for ((compiled, v4, v6, names), (k4, k6)) in tries.into_iter().zip(&mut keys) {
            result = fill_tries(slot, compiled, (v4, v6), names, (k4, k6));
            if result.is_err() {
                break;
            }
        }
        let [(v4, v6), (ingress_v4, ingress_v6)] = keys;
        entries.v4 = v4;
        entries.v6 = v6;
        entries.ingress_v4 = ingress_v4;
        entries.ingress_v6 = ingress_v6;
        result
    }

    /// Deletes a slot's entries (best effort: a missing entry is already gone).
    pub fn clear_slot(&mut self, entries: &SlotEntries) {
        for key in &entries.v4 {
            let _ = self.v4.remove(key);
        }
        for key in &entries.v6 {
            let _ = self.v6.remove(key);
        }
        for key in &entries.ingress_v4 {
            let _ = self.ingress_v4.remove(key);
        }
        for key in &entries.ingress_v6 {
            let _ = self.ingress_v6.remove(key);
        }
        for key in &entries.unix {
            let _ = self.unix.remove(key);
        }
        if entries.unix_classes {
            let _ = self.unix_classes.remove(&entries.slot);
        }
        for key in &entries.exec_inodes {
            let _ = self.exec_inodes.remove(key);
        }
        for key in &entries.exec_hashes {
            let _ = self.exec_hashes.remove(key);
        }
        for key in &entries.files {
            let _ = self.file_rules.remove(key);
        }
        for addr in &entries.grants {
            match *addr {
                IpAddr::V4(a) => {
                    let _ = self.v4.remove(&key4(entries.slot, a.octets(), 32));
                }
                IpAddr::V6(a) => {
                    let _ = self.v6.remove(&key6(entries.slot, a.octets(), 128));
                }
            }
        }
    }

    /// Grants `addr` in `entries`' slot (a name the cage's resolver answered): `rules`, from
    /// `CompiledEgress::grant_entry`, become the address's own trie entry. The slot remembers
    /// it, so it goes with the slot.
    pub fn grant(
        &mut self,
        entries: &mut SlotEntries,
        addr: IpAddr,
        rules: &PortRules,
    ) -> Result<(), BpfError> {
        let addr = canonical(addr);
        self.put(entries.slot, addr, rules)?;
        entries.grants.insert(addr);
        Ok(())
    }

    /// Withdraws the grant of `addr` in `entries`' slot: `cidr`, the slot's CIDR entry of
    /// exactly that address if it has one, is put back; else the entry goes (gone already is
    /// fine) and the address falls under its covering CIDR entry again.
    pub fn revoke(&mut self, entries: &mut SlotEntries, addr: IpAddr, cidr: Option<&PortRules>) {
        let addr = canonical(addr);
        if !entries.grants.remove(&addr) {
            return;
        }
        if let Some(rules) = cidr {
            if self.put(entries.slot, addr, rules).is_ok() {
                return;
            }
        }
        let _ = match addr {
            IpAddr::V4(a) => self.v4.remove(&key4(entries.slot, a.octets(), 32)),
            IpAddr::V6(a) => self.v6.remove(&key6(entries.slot, a.octets(), 128)),
        };
    }

    /// Writes `rules` as the entry of the single address `addr` in `slot`.
    fn put(&mut self, slot: u32, addr: IpAddr, rules: &PortRules) -> Result<(), BpfError> {
        match addr {
            IpAddr::V4(a) => self
                .v4
                .insert(&key4(slot, a.octets(), 32), rules, 0)
                .map_err(|e| capacity(maps::EGRESS_V4, e)),
            IpAddr::V6(a) => self
                .v6
                .insert(&key6(slot, a.octets(), 128), rules, 0)
                .map_err(|e| capacity(maps::EGRESS_V6, e)),
        }
    }

    /// How many grants the slot holds.
    pub fn grants_in(entries: &SlotEntries) -> usize {
        entries.grants.len()
    }

    /// Installs or replaces a cage's configuration in one map update, and makes sure it has
    /// counters.
    pub fn set_cage(&mut self, cgroup_id: u64, config: CageConfig) -> Result<(), BpfError> {
        for hooks in &self.lazy_hooks {
            hooks.ensure_for(config.flags)?;
        }
        let new = self.stats.get(&cgroup_id, 0).is_err();
        if new {
            let zeros = PerCpuValues::try_from(vec![CageStats::default(); self.cpus]).map_err(
                |source| BpfError::Cpus {
                    what: "the per-CPU values",
                    source,
                },
            )?;
            self.stats
                .insert(cgroup_id, zeros, 0)
                .map_err(|e| capacity(maps::CAGE_STATS, e))?;
        }
        self.cages.insert(cgroup_id, config, 0).map_err(|e| {
            if new {
                let _ = self.stats.remove(&cgroup_id);
            }
            capacity(maps::CAGES, e)
        })
    }

    /// A cage's configuration as the kernel has it.
    pub fn cage(&self, cgroup_id: u64) -> Option<CageConfig> {
        self.cages.get(&cgroup_id, 0).ok()
    }

    /// Forgets a removed cage.
    pub fn remove_cage(&mut self, cgroup_id: u64) {
        let _ = self.cages.remove(&cgroup_id);
        let _ = self.stats.remove(&cgroup_id);
    }

    /// A cage's counters, summed over CPUs.
    pub fn stats(&self, cgroup_id: u64) -> CageStats {
        self.stats
            .get(&cgroup_id, 0)
            .map(|per_cpu| {
                per_cpu.iter().fold(CageStats::default(), |mut acc, s| {
                    acc.allowed += s.allowed;
                    acc.denied += s.denied;
                    acc.lost += s.lost;
                    acc.killed += s.killed;
                    for (a, b) in acc.lost_by_kind.iter_mut().zip(s.lost_by_kind) {
                        *a += b;
                    }
                    acc
                })
            })
            .unwrap_or_default()
    }

    /// Events lost for callers in no known cage.
    pub fn global_lost(&self) -> u64 {
        self.global_lost
            .get(&0, 0)
            .map(|v| v.iter().sum())
            .unwrap_or_default()
    }
}

/// The trie entries of `compiled` for `slot`, written into one pair of tries; the keys
/// written so far are kept in `keys` so the slot can be emptied whatever happens.
fn fill_tries(
    slot: u32,
    compiled: &CompiledEgress,
    (v4, v6): (
        &mut LpmTrie<MapData, Key4, PortRules>,
        &mut LpmTrie<MapData, Key6, PortRules>,
    ),
    [name4, name6]: [&'static str; 2],
    (keys4, keys6): (&mut Vec<Key<Key4>>, &mut Vec<Key<Key6>>),
) -> Result<(), BpfError> {
    let slot_be = slot.to_be_bytes();
    for (addr, prefix, rules) in &compiled.v4 {
        let key = Key::new(
            SLOT_BITS + prefix,
            Key4 {
                slot_be,
                addr: *addr,
            },
        );
        v4.insert(&key, rules, 0).map_err(|e| capacity(name4, e))?;
        keys4.push(key);
    }
    for (addr, prefix, rules) in &compiled.v6 {
        let key = Key::new(
            SLOT_BITS + prefix,
            Key6 {
                slot_be,
                addr: *addr,
            },
        );
        v6.insert(&key, rules, 0).map_err(|e| capacity(name6, e))?;
        keys6.push(key);
    }
    Ok(())
}

fn capacity(name: &'static str, source: MapError) -> BpfError {
    BpfError::Capacity { name, source }
}

/// The IPv4 trie key of `addr`/`prefix` in `slot`.
fn key4(slot: u32, addr: [u8; 4], prefix: u32) -> Key<Key4> {
    Key::new(
        SLOT_BITS + prefix,
        Key4 {
            slot_be: slot.to_be_bytes(),
            addr,
        },
    )
}

/// The IPv6 trie key of `addr`/`prefix` in `slot`.
fn key6(slot: u32, addr: [u8; 16], prefix: u32) -> Key<Key6> {
    Key::new(
        SLOT_BITS + prefix,
        Key6 {
            slot_be: slot.to_be_bytes(),
            addr,
        },
    )
}
