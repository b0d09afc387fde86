//! The temporal assertion language: a small language over kernel and application events
//! (see `docs/POLICY.md`, "Assertions"). This is its syntax; `runtime::assertions` evaluates
//! it online per agent session.
//!
//! ```text
//! assertion := pattern "precedes" pattern
//!            | pattern "within" DURATION "after" pattern
//! pattern   := KIND [ "(" ARG ")" ]
//! KIND      := approval | reported_approval | egress | exec | tool_call | plan
//!            | ticket_comment | model_call | notify
//! ARG       := NAME | "quoted text"
//! ```
//!
//! `A precedes B`: every B of the session comes after at least one A of the same session.
//! `A within D after B`: every B is followed by an A within D. A pattern without an argument
//! matches every event of its kind; `exec(ARG)` matches command lines starting with ARG.

mod parse;

use std::{fmt, time::Duration};

use schemars::JsonSchema;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Kinds of events a pattern can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternKind {
    /// A person approved something with `agentcage approve` (the agent cannot forge it).
    Approval,
    /// The application reported an approval it obtained itself (as trustworthy as the
    /// agent that sends it).
    ReportedApproval,
    /// An egress decision the kernel allowed; the argument is the rule's `name`.
    Egress,
    /// A command was run; the argument is a prefix of its command line.
    Exec,
    /// A tool call (application event); the argument is the tool's name.
    ToolCall,
    /// A plan (application event).
    Plan,
    /// A ticket comment (application event).
    TicketComment,
    /// A model call (application event); the argument is the model.
    ModelCall,
    /// A notification to a channel (application event); the argument is the channel.
    Notify,
}

impl PatternKind {
    const ALL: [(&'static str, Self); 9] = [
        ("approval", Self::Approval),
        ("reported_approval", Self::ReportedApproval),
        ("egress", Self::Egress),
        ("exec", Self::Exec),
        ("tool_call", Self::ToolCall),
        ("plan", Self::Plan),
        ("ticket_comment", Self::TicketComment),
        ("model_call", Self::ModelCall),
        ("notify", Self::Notify),
    ];

    /// The kind's name in the language.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("?", |(n, _)| n)
    }
}

/// One side of an assertion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    /// What kind of event.
    pub kind: PatternKind,
    /// Its argument, if any.
    pub arg: Option<String>,
}

impl Pattern {
    /// Whether an event of `kind` with argument `arg` matches: same kind, and the argument
    /// equal (for `exec`, a prefix of the command line) when the pattern has one.
    pub fn matches(&self, kind: PatternKind, arg: Option<&str>) -> bool {
        if kind != self.kind {
            return false;
        }
        match (&self.arg, arg) {
            (None, _) => true,
            (Some(want), Some(got)) if self.kind == PatternKind::Exec => {
                got.starts_with(want.as_str())
            }
            (Some(want), Some(got)) => want == got,
            (Some(_), None) => false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        match &self.arg {
            None => Ok(()),
            Some(a)
                if a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c)) =>
            {
                write!(f, "({a})")
            }
            Some(a) => write!(f, "({a:?})"),
        }
    }
}

/// A parsed assertion.
#[derive(Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(with = "AssertionText")]
pub enum Assertion {
    /// `first precedes then`.
    Precedes {
        /// Must have happened...
        first: Pattern,
        /// ...before each of these.
        then: Pattern,
    },
    /// `follow within window after trigger`.
    Within {
        /// Must happen...
        follow: Pattern,
        /// ...within this long...
        window: Duration,
        /// ...after each of these.
        trigger: Pattern,
    },
}

/// The JSON Schema form of an assertion.
#[derive(JsonSchema)]
#[schemars(
    description = "A temporal assertion, e.g. `approval(payout) precedes egress(payments)` or \
                   `ticket_comment within 60s after exec(\"kubectl apply\")`",
    extend("pattern" = r"^.+\s(precedes|within\s.+\safter)\s.+$")
)]
#[expect(dead_code, reason = "only its schema is used")]
struct AssertionText(String);

impl fmt::Display for Assertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Precedes { first, then } => write!(f, "{first} precedes {then}"),
            Self::Within {
                follow,
                window,
                trigger,
            } => write!(
                f,
                "{follow} within {} after {trigger}",
                humantime::format_duration(*window)
            ),
        }
    }
}

impl Assertion {
    /// Both patterns.
    pub fn patterns(&self) -> [&Pattern; 2] {
        match self {
            Self::Precedes { first, then } => [first, then],
            Self::Within {
                follow, trigger, ..
            } => [follow, trigger],
        }
    }
    /// Parses one assertion; the error says what was expected where.
    pub fn parse(text: &str) -> Result<Self, String> {
        parse::parse(text)
    }
}

impl Serialize for Assertion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Assertion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Assertion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an assertion such as `approval(payout) precedes egress(payments)`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Assertion, E> {
                Assertion::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_examples() {
        for text in [
            "approval(payout) precedes egress(payments)",
            "plan precedes exec(\"terraform apply\")",
            "ticket_comment within 1m after exec(\"kubectl apply\")",
        ] {
            let a = Assertion::parse(text).unwrap();
            assert_eq!(Assertion::parse(&a.to_string()).unwrap(), a, "{text}");
        }
        assert_eq!(
            Assertion::parse("ticket_comment within 60s after exec(\"kubectl apply\")")
                .unwrap()
                .to_string(),
            "ticket_comment within 1m after exec(\"kubectl apply\")"
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = Assertion::parse("approval(payout) preceeds egress(payments)").unwrap_err();
        assert!(e.contains("unexpected Word(\"preceeds\")"), "{e}");
        let e = Assertion::parse("aproval precedes plan").unwrap_err();
        assert!(e.contains("unknown event kind \"aproval\""), "{e}");
        let e = Assertion::parse("plan within soon after plan").unwrap_err();
        assert!(e.contains("invalid duration \"soon\""), "{e}");
        let e = Assertion::parse("plan within 5s plan").unwrap_err();
        assert!(e.contains("invalid duration"), "{e}");
        assert!(Assertion::parse("exec(\"x) precedes plan").is_err());
        assert!(Assertion::parse("plan precedes").is_err());
        assert!(Assertion::parse("plan precedes plan plan").is_err());
    }
}
