//! Temporal assertions evaluated online, one session per agent: the language is
//! `policy::assertions`; this feeds it what the agent does and reports violations.

use std::collections::VecDeque;

pub use crate::policy::assertions::{Assertion, Pattern, PatternKind};

/// An event as assertions see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Its kind.
    pub kind: PatternKind,
    /// Its argument (rule name, tool name, command line...).
    pub arg: Option<String>,
    /// When, in nanoseconds on any one monotonic clock.
    pub at_ns: u64,
}

/// A violation found by [`Session`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The assertion, as written.
    pub assertion: String,
    /// What happened.
    pub what: String,
}

/// One agent session's online evaluation of its assertions.
#[derive(Debug)]
pub struct Session {
    assertions: Vec<Assertion>,
    /// Per `Precedes` assertion: whether its `first` has been seen.
    seen_first: Vec<bool>,
    /// Per `Within` assertion: deadlines of triggers not yet followed, oldest first.
    pending: Vec<VecDeque<u64>>,
}

impl Session {
    /// A session with nothing seen yet.
    pub fn new(assertions: Vec<Assertion>) -> Self {
        let n = assertions.len();
        Self {
            assertions,
            seen_first: vec![false; n],
            pending: vec![VecDeque::new(); n],
        }
    }

    /// The assertions evaluated.
    pub fn assertions(&self) -> &[Assertion] {
        &self.assertions
    }

    /// Feeds one event; returns the violations it reveals (including deadlines it passed).
    pub fn observe(&mut self, seen: &Observed) -> Vec<Violation> {
        let mut out = self.tick(seen.at_ns);
        for (i, a) in self.assertions.iter().enumerate() {
            match a {
                Assertion::Precedes { first, then } => {
                    if matches(then, seen) && !self.seen_first[i] {
                        out.push(Violation {
                            assertion: a.to_string(),
                            what: format!("{then} happened before any {first}"),
                        });
                    }
                    if matches(first, seen) {
                        self.seen_first[i] = true;
                    }
                }
                Assertion::Within {
                    follow,
                    window,
                    trigger,
                } => {
                    if matches(follow, seen) {
                        // One follow-up answers every trigger waiting for it.
                        self.pending[i].clear();
                    }
                    if matches(trigger, seen) {
                        let ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
                        self.pending[i].push_back(seen.at_ns.saturating_add(ns));
                    }
                }
            }
        }
        out
    }

    /// Reports `within` deadlines that passed by `now_ns`.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Violation> {
        let mut out = Vec::new();
        for (i, a) in self.assertions.iter().enumerate() {
            let Assertion::Within {
                follow, trigger, ..
            } = a
            else {
                continue;
            };
            while self.pending[i].front().is_some_and(|&d| d <= now_ns) {
                self.pending[i].pop_front();
                out.push(Violation {
                    assertion: a.to_string(),
                    what: format!("no {follow} within the window after {trigger}"),
                });
            }
        }
        out
    }
}

fn matches(p: &Pattern, seen: &Observed) -> bool {
    p.matches(seen.kind, seen.arg.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(kind: PatternKind, arg: Option<&str>, at_s: u64) -> Observed {
        Observed {
            kind,
            arg: arg.map(str::to_owned),
            at_ns: at_s * 1_000_000_000,
        }
    }

    #[test]
    fn precedes_is_violated_by_the_second_before_the_first() {
        let a = Assertion::parse("approval(payout) precedes egress(payments)").unwrap();
        let mut s = Session::new(vec![a.clone()]);
        let v = s.observe(&obs(PatternKind::Egress, Some("payments"), 1));
        assert_eq!(v.len(), 1);
        let mut s = Session::new(vec![a]);
        assert!(s
            .observe(&obs(PatternKind::Egress, Some("other"), 1))
            .is_empty());
        assert!(s
            .observe(&obs(PatternKind::Approval, Some("payout"), 2))
            .is_empty());
        assert!(s
            .observe(&obs(PatternKind::Egress, Some("payments"), 3))
            .is_empty());
    }

    #[test]
    fn within_fires_when_the_deadline_passes_unanswered() {
        let a =
            Assertion::parse("ticket_comment within 60s after exec(\"kubectl apply\")").unwrap();
        let mut s = Session::new(vec![a]);
        let exec = obs(PatternKind::Exec, Some("kubectl apply -f x.yaml"), 10);
        assert!(s.observe(&exec).is_empty());
        assert!(s
            .observe(&obs(PatternKind::TicketComment, None, 30))
            .is_empty());
        assert!(s.tick(200 * 1_000_000_000).is_empty(), "answered in time");
        assert!(s.observe(&exec).is_empty());
        assert_eq!(s.tick(69 * 1_000_000_000).len(), 0);
        assert_eq!(s.tick(70 * 1_000_000_000).len(), 1);
        assert!(s.tick(500 * 1_000_000_000).is_empty(), "reported once");
    }
}
