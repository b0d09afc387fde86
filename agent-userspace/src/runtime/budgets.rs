//! Budgets: usage metered per agent, user group and workflow against soft limits (an alert
//! event) and hard limits (throttling, then the containment rung); loop detection.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use super::tally::Tally;
use crate::policy::{Budgets, Limit, TimeLimit};

/// What is metered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Model tokens.
    Tokens,
    /// US dollars.
    Usd,
    /// Tool calls.
    ToolCalls,
    /// Allowed egress connections and sends.
    EgressConnections,
}

impl Metric {
    /// The budget's name in policies and events.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tokens => "tokens",
            Self::Usd => "usd",
            Self::ToolCalls => "tool_calls",
            Self::EgressConnections => "egress_connections",
        }
    }

    fn limit(self, b: &Budgets) -> Option<Limit> {
        match self {
            Self::Tokens => b.tokens,
            Self::Usd => b.usd,
            Self::ToolCalls => b.tool_calls,
            Self::EgressConnections => b.egress_connections,
        }
    }
}

/// Latencies kept apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    /// Queued before the model ran.
    Queue,
    /// The model's own time.
    Model,
    /// A tool call, start to end.
    Tool,
}

impl Latency {
    /// The budget's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Queue => "queue_latency",
            Self::Model => "model_latency",
            Self::Tool => "tool_latency",
        }
    }

    fn limit(self, b: &Budgets) -> Option<TimeLimit> {
        match self {
            Self::Queue => b.queue_latency,
            Self::Model => b.model_latency,
            Self::Tool => b.tool_latency,
        }
    }
}

/// Soft or hard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// An alert.
    Soft,
    /// Throttle, then contain.
    Hard,
}

impl Level {
    /// `soft` or `hard`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Soft => "soft",
            Self::Hard => "hard",
        }
    }
}

impl From<Level> for crate::events::BudgetLevel {
    fn from(l: Level) -> Self {
        match l {
            Level::Soft => Self::Soft,
            Level::Hard => Self::Hard,
        }
    }
}

/// A limit reached.
#[derive(Clone, Debug, PartialEq)]
pub struct Breach {
    /// The budget's name.
    pub budget: &'static str,
    /// Soft or hard.
    pub level: Level,
    /// The value reached.
    pub value: f64,
    /// The limit.
    pub limit: f64,
}

/// Loop detection follows at most this many keys per scope.
const REPEAT_KEYS: usize = 4096;

/// Usage of one scope (agent, group or workflow).
#[derive(Debug, Default)]
pub struct Meter {
    totals: HashMap<Metric, f64>,
    /// Limits already reported, so each is reported once.
    reported: BTreeSet<(&'static str, Level)>,
    /// Loop detection: key → times seen (ns), within the window.
    repeats: HashMap<String, Tally>,
}

impl Meter {
    /// Adds `amount` of `metric`; returns the limits first reached by it.
    pub fn add(&mut self, budgets: &Budgets, metric: Metric, amount: f64) -> Vec<Breach> {
        let total = self.totals.entry(metric).or_default();
        *total += amount;
        let value = *total;
        let Some(limit) = metric.limit(budgets) else {
            return Vec::new();
        };
        self.check(metric.name(), value, limit.soft, limit.hard)
    }

    /// The total of `metric` so far.
    pub fn total(&self, metric: Metric) -> f64 {
        self.totals.get(&metric).copied().unwrap_or_default()
    }

    /// Checks one call's latency (each call on its own: a per-call limit).
    pub fn latency(&mut self, budgets: &Budgets, which: Latency, took: Duration) -> Vec<Breach> {
        let Some(limit) = which.limit(budgets) else {
            return Vec::new();
        };
        let secs = |s: Option<crate::policy::Span>| s.map(|s| s.0.as_secs_f64());
        let mut out = Vec::new();
        // Per call: a slow call alerts each time (not once), hard limits once.
        for (level, lim) in [
            (Level::Soft, secs(limit.soft)),
            (Level::Hard, secs(limit.hard)),
        ] {
            if let Some(lim) = lim {
                if took.as_secs_f64() >= lim
                    && (level == Level::Soft || self.reported.insert((which.name(), level)))
                {
                    out.push(Breach {
                        budget: which.name(),
                        level,
                        value: took.as_secs_f64(),
                        limit: lim,
                    });
                }
            }
        }
        out
    }

    /// Checks the session's age against the wall-clock budget.
    pub fn wall_clock(&mut self, budgets: &Budgets, age: Duration) -> Vec<Breach> {
        let Some(limit) = budgets.wall_clock else {
            return Vec::new();
        };
        let secs = |s: Option<crate::policy::Span>| s.map(|s| s.0.as_secs_f64());
        self.check(
            "wall_clock",
            age.as_secs_f64(),
            secs(limit.soft),
            secs(limit.hard),
        )
    }

    /// Counts `n` occurrences of `key` (a tool call with its arguments digest, a denied
    /// destination) at `now_ns`; a breach when it repeats as often as the loop rule says.
    pub fn repeat(&mut self, budgets: &Budgets, key: &str, now_ns: u64, n: u64) -> Option<Breach> {
        let rule = budgets.loop_rule?;
        let window = u64::try_from(rule.window.0.as_nanos()).unwrap_or(u64::MAX);
        // Bound the memory (and time) an agent trying many distinct keys can make the
        // daemon use: past the bound, keys out of the window go, and if that is not enough
        // the less recently seen half (a looping key is recent, so it stays). Amortized,
        // each key costs O(1).
        if self.repeats.len() >= REPEAT_KEYS && !self.repeats.contains_key(key) {
            self.repeats.retain(|_, seen| {
                seen.last()
                    .is_some_and(|t| now_ns.saturating_sub(t) < window)
            });
            if self.repeats.len() >= REPEAT_KEYS / 2 {
                let mut last: Vec<u64> = self.repeats.values().filter_map(Tally::last).collect();
                let mid = last.len() / 2;
                let cut = *last.select_nth_unstable(mid).1;
                self.repeats
                    .retain(|_, seen| seen.last().is_some_and(|t| t > cut));
            }
        }
        let seen = self.repeats.entry(key.to_owned()).or_default();
        let count = seen.add(now_ns, n, window);
        if count >= u64::from(rule.repeats) {
            seen.clear();
            return Some(Breach {
                budget: "loop",
                level: Level::Hard,
                value: count as f64,
                limit: f64::from(rule.repeats),
            });
        }
        None
    }

    fn check(
        &mut self,
        name: &'static str,
        value: f64,
        soft: Option<f64>,
        hard: Option<f64>,
    ) -> Vec<Breach> {
        let mut out = Vec::new();
        for (level, limit) in [(Level::Soft, soft), (Level::Hard, hard)] {
            if let Some(limit) = limit {
                if value >= limit && self.reported.insert((name, level)) {
                    out.push(Breach {
                        budget: name,
                        level,
                        value,
                        limit,
                    });
                }
            }
        }
        out
    }

    /// Forgets which hard limits were reported (a person resumed the agent), so that the
    /// next use over them throttles again.
    pub fn rearm(&mut self) {
        self.reported.retain(|(_, level)| *level == Level::Soft);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{LoopRule, Span};

    #[test]
    fn soft_then_hard_each_once() {
        let b = Budgets {
            tokens: Some(Limit {
                soft: Some(100.0),
                hard: Some(200.0),
            }),
            ..Budgets::default()
        };
        let mut m = Meter::default();
        assert!(m.add(&b, Metric::Tokens, 50.0).is_empty());
        let v = m.add(&b, Metric::Tokens, 60.0);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].level, Level::Soft);
        assert!(m.add(&b, Metric::Tokens, 10.0).is_empty());
        let v = m.add(&b, Metric::Tokens, 100.0);
        assert_eq!(v[0].level, Level::Hard);
        assert_eq!(v[0].value, 220.0);
        assert!(m.add(&b, Metric::Tokens, 100.0).is_empty());
        assert!(m.add(&b, Metric::Usd, 100.0).is_empty(), "no usd budget");
    }

    #[test]
    fn loops_are_repeats_within_the_window() {
        let b = Budgets {
            loop_rule: Some(LoopRule {
                repeats: 3,
                window: Span(Duration::from_secs(10)),
            }),
            ..Budgets::default()
        };
        let s = 1_000_000_000;
        let mut m = Meter::default();
        assert!(m.repeat(&b, "k", 0, 1).is_none());
        assert!(m.repeat(&b, "k", 5 * s, 1).is_none());
        assert!(m.repeat(&b, "k", 11 * s, 1).is_none(), "the first fell out");
        assert!(m.repeat(&b, "other", 12 * s, 1).is_none());
        assert!(m.repeat(&b, "k", 12 * s, 1).is_some());
        // A summary of repeats counts as all of them.
        assert!(m.repeat(&b, "flood", 20 * s, 1).is_none());
        assert!(m.repeat(&b, "flood", 21 * s, 2).is_some());
        // Many distinct keys cannot push out a key that keeps repeating, nor grow the table
        // without bound.
        for i in 0..(4 * REPEAT_KEYS as u64) {
            let t = 30 * s + i;
            assert!(m.repeat(&b, &format!("distinct {i}"), t, 1).is_none());
            if i % 1000 == 0 && i > 0 {
                let looped = m.repeat(&b, "loop", t, 1);
                assert_eq!(looped.is_some(), (i / 1000) % 3 == 0, "at {i}");
            }
        }
        assert!(m.repeats.len() <= REPEAT_KEYS);
    }
}
