//! The `dns:` section of the daemon's configuration file.

use std::{net::SocketAddr, time::Duration};

use serde::{de, Deserialize, Deserializer};

/// Where the cages' resolver asks, and how long its grants last.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Upstream resolvers (`127.0.0.53:53`, or an address alone for port 53); empty means
    /// the nameservers of /etc/resolv.conf.
    #[serde(deserialize_with = "servers")]
    pub upstream: Vec<SocketAddr>,
    /// Grants live at least this long, whatever the answer's TTL.
    #[serde(deserialize_with = "duration")]
    pub min_ttl: Duration,
    /// And at most this long.
    #[serde(deserialize_with = "duration")]
    pub max_ttl: Duration,
    /// How many addresses one cage may hold granted at once; past it the oldest grants are
    /// evicted (and counted).
    pub max_grants: usize,
    /// How long to wait for one upstream server.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            upstream: Vec::new(),
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            max_grants: 4096,
            timeout: Duration::from_secs(2),
        }
    }
}

impl DnsConfig {
    /// The upstream servers: the configured ones, or those of /etc/resolv.conf.
    pub fn servers(&self) -> Vec<SocketAddr> {
        if !self.upstream.is_empty() {
            return self.upstream.clone();
        }
        std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| resolv_conf(&t))
            .unwrap_or_default()
    }

    /// A grant's lifetime for an answer's TTL (seconds), within the bounds.
    pub fn clamp(&self, ttl_s: u32) -> Duration {
        Duration::from_secs(u64::from(ttl_s)).clamp(self.min_ttl, self.max_ttl.max(self.min_ttl))
    }

    /// Checks the values serde cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.max_ttl < self.min_ttl {
            return Err(format!(
                "dns.max_ttl ({:?}) is below dns.min_ttl ({:?})",
                self.max_ttl, self.min_ttl
            ));
        }
        if self.max_grants == 0 {
            return Err("dns.max_grants is 0: no name could ever be used".to_owned());
        }
        Ok(())
    }
}

/// The `nameserver` lines of a resolv.conf, port 53.
pub fn resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            let addr = rest.split_whitespace().next()?;
            // A scoped IPv6 address (fe80::1%eth0) is left out.
            addr.parse::<std::net::IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

fn servers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|t| {
            t.parse::<SocketAddr>()
                .or_else(|_| {
                    t.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                })
                .map_err(|_| {
                    de::Error::custom(format!(
                        "invalid upstream {t:?}; expected an address with an optional port, \
                         like 127.0.0.53:53, 127.0.0.1 or [::1]:53"
                    ))
                })
        })
        .collect()
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let t = String::deserialize(d)?;
    humantime::parse_duration(&t).map_err(|e| {
        de::Error::custom(format!("invalid duration {t:?}: {e}; expected e.g. 5s, 1h"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_on_port_53() {
        let got = resolv_conf(
            "# comment\nnameserver 127.0.0.53\noptions edns0\nnameserver ::1\nnameserver fe80::1%eth0\n",
        );
        assert_eq!(
            got,
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn ttls_are_clamped() {
        let c = DnsConfig::default();
        assert_eq!(c.clamp(1), Duration::from_secs(5));
        assert_eq!(c.clamp(60), Duration::from_secs(60));
        assert_eq!(c.clamp(86_400), Duration::from_secs(3600));
    }
}
