//! `limits`: what an agent's cage may use of the host, enforced by the cage's cgroup v2
//! controllers (`pids.max`, `memory.max`, `cpu.max`). Where the cgroup v2 hierarchy lacks a
//! controller, an agent whose policy sets that limit is refused (never silently weaker).

use std::fmt;

use schemars::JsonSchema;
use serde::{de, Deserialize, Deserializer, Serialize};

/// Resource limits of one agent's cage; each absent one is not limited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most processes and threads at once (`pids.max`): a fork bomb stops there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<Pids>,
    /// Most memory, in bytes or with a unit (`512M`, `2G`), page cache included
    /// (`memory.max`); beyond it the kernel reclaims, then kills inside the cage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// CPUs' worth of time (`1.5` = one and a half CPUs), enforced per 100 ms period
    /// (`cpu.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
}

impl Limits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The cgroup v2 controllers these limits need, by name.
    pub fn controllers(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.pids.is_some() {
            c.push("pids");
        }
        if self.memory.is_some() {
            c.push("memory");
        }
        if self.cpu.is_some() {
            c.push("cpu");
        }
        c
    }

    /// The cgroup files to write, with their contents.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let mut f = Vec::new();
        if let Some(Pids(n)) = self.pids {
            f.push(("pids.max", n.to_string()));
        }
        if let Some(Memory(bytes)) = self.memory {
            f.push(("memory.max", bytes.to_string()));
        }
        if let Some(cpu) = self.cpu {
            f.push(("cpu.max", format!("{} {CPU_PERIOD_US}", cpu.quota_us())));
        }
        f
    }
}

/// The `cpu.max` period, in microseconds (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// A process count, at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(with = "u32", extend("minimum" = 1))]
pub struct Pids(pub u32);

impl<'de> Deserialize<'de> for Pids {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        match u32::try_from(n) {
            Ok(n) if n >= 1 => Ok(Self(n)),
            _ => Err(de::Error::custom(format!(
                "invalid limits.pids {n}: expected 1 to {}",
                u32::MAX
            ))),
        }
    }
}

/// A memory size in bytes, at least 1 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(with = "MemoryForm")]
pub struct Memory(pub u64);

/// The JSON Schema form of [`Memory`].
#[derive(JsonSchema)]
#[serde(untagged)]
#[expect(dead_code, reason = "only its schema is used")]
enum MemoryForm {
    /// Bytes.
    Bytes(u64),
    /// A number with a unit: K, M, G or T (powers of 1024).
    Text(MemoryText),
}

/// The JSON Schema form of a memory size with a unit.
#[derive(JsonSchema)]
#[schemars(extend("pattern" = r"^[0-9]+(\.[0-9]+)?\s*([KMGT]i?B?)?$"))]
#[expect(dead_code, reason = "only its schema is used")]
struct MemoryText(String);

/// The smallest memory limit accepted: below it nothing starts.
const MIN_MEMORY: u64 = 1 << 20;

impl Memory {
    /// Parses `536870912`, `512M`, `512MiB`, `1.5G`...
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = (&t[..split], t[split..].trim());
        let shift = match unit.trim_end_matches('B').trim_end_matches('i') {
            "" => 0,
            "K" | "k" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            _ => {
                return Err(format!(
                    "invalid limits.memory {s:?}: unknown unit {unit:?}; expected e.g. 512M or 2G"
                ))
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid limits.memory {s:?}: expected e.g. 512M or 2G"))?;
        let bytes = value * (1u64 << shift) as f64;
        if !bytes.is_finite() || bytes > (1u64 << 62) as f64 {
            return Err(format!("invalid limits.memory {s:?}: too large"));
        }
        Self::check(bytes as u64)
    }

    fn check(bytes: u64) -> Result<Self, String> {
        if bytes < MIN_MEMORY {
            return Err(format!(
                "invalid limits.memory {bytes}: expected at least 1M ({MIN_MEMORY} bytes)"
            ));
        }
        Ok(Self(bytes))
    }
}

impl Serialize for Memory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Memory;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a memory size such as 536870912, 512M or 2G")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Memory, E> {
                Memory::check(n).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Memory, E> {
                Err(E::custom(format!(
                    "invalid limits.memory {n}: it is negative"
                )))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Memory, E> {
                Memory::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// CPUs' worth of time, above 0 and at most 1024.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, JsonSchema)]
#[schemars(with = "f64", extend("minimum" = 0.01, "maximum" = 1024))]
pub struct Cpu(pub f64);

impl Cpu {
    /// The `cpu.max` quota per [`CPU_PERIOD_US`].
    pub fn quota_us(self) -> u64 {
        (self.0 * CPU_PERIOD_US as f64).round() as u64
    }
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        // The kernel refuses a quota under 1 ms per period.
        if !(0.01..=1024.0).contains(&v) {
            return Err(de::Error::custom(format!(
                "invalid limits.cpu {v}: expected CPUs from 0.01 to 1024, e.g. 0.5 or 2"
            )));
        }
        Ok(Self(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(yaml: &str) -> Result<Limits, String> {
        serde_norway::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn sizes_counts_and_cpus_become_cgroup_files() {
        let l = limits("{pids: 64, memory: 512M, cpu: 1.5}").unwrap();
        assert_eq!(l.controllers(), ["pids", "memory", "cpu"]);
        assert_eq!(
            l.files(),
            [
                ("pids.max", "64".to_owned()),
                ("memory.max", (512u64 << 20).to_string()),
                ("cpu.max", "150000 100000".to_owned()),
            ]
        );
        assert_eq!(Memory::parse("2GiB").unwrap(), Memory(2 << 30));
        assert_eq!(Memory::parse("1.5G").unwrap(), Memory(3 << 29));
        assert_eq!(
            limits("{memory: 1048576}").unwrap().memory,
            Some(Memory(1 << 20))
        );
        assert!(limits("{}").unwrap().is_empty());
    }

    #[test]
    fn out_of_range_values_are_refused_with_what_is_expected() {
        for (yaml, needle) in [
            ("{pids: 0}", "expected 1 to"),
            ("{pids: -1}", "pids"),
            ("{memory: 100}", "at least 1M"),
            ("{memory: 5X}", "unknown unit"),
            ("{memory: 1e300}", "memory"),
            ("{cpu: 0}", "0.01 to 1024"),
            ("{cpu: .nan}", "0.01 to 1024"),
            ("{cpu: 1e300}", "0.01 to 1024"),
            ("{swap: 1}", "unknown field"),
        ] {
            let e = limits(yaml).unwrap_err();
            assert!(e.contains(needle), "{yaml}: {e}");
        }
    }
}
