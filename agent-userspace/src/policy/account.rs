//! `run_as`: which account an agent's processes run under (see docs/POLICY.md).
//!
//! The default is `dynamic`: a uid and gid of the agent's own, allocated by the daemon, so
//! agents can neither signal, trace nor read each other or the operator's processes. Root
//! must be written out. A list names what `agentcage run --user` may choose; its first entry
//! is the default.

use std::fmt;

use schemars::JsonSchema;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// One account an agent may run under.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Account {
    /// A uid and gid of the agent's own from the daemon's reserved range.
    Dynamic,
    /// uid 0 (with the shield `agentcage run` gives root agents).
    Root,
    /// Whoever runs `agentcage run`, when that is not root.
    Caller,
    /// A named account (or a numeric uid) from the host's account databases.
    User(String),
}

impl Account {
    /// Parses one entry: `dynamic`, `root`, `caller`, an account name or a uid.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "dynamic" => Self::Dynamic,
            "root" | "0" => Self::Root,
            "caller" => Self::Caller,
            _ => {
                let valid = !s.is_empty()
                    && s.len() <= 32
                    && !s.starts_with('-')
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                if !valid {
                    return Err(format!(
                        "invalid run_as {s:?}: expected dynamic, root, caller, an account name \
                         (letters, digits, '_', '-', '.') or a numeric uid"
                    ));
                }
                Self::User(s.to_owned())
            }
        })
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dynamic => f.write_str("dynamic"),
            Self::Root => f.write_str("root"),
            Self::Caller => f.write_str("caller"),
            Self::User(name) => f.write_str(name),
        }
    }
}

/// The accounts an agent may run under; the first is the default. Never empty.
#[derive(Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(with = "RunAsForm")]
pub struct RunAs(Vec<Account>);

impl Default for RunAs {
    fn default() -> Self {
        Self(vec![Account::Dynamic])
    }
}

impl RunAs {
    /// The default account (`agentcage run` without `--user`).
    pub fn default_account(&self) -> &Account {
        &self.0[0]
    }

    /// Every account the policy allows.
    pub fn accounts(&self) -> &[Account] {
        &self.0
    }

    /// The account `agentcage run --user REQUESTED` gets: the default without a request;
    /// a listed account, or `dynamic` (always allowed: it narrows); else why not.
    pub fn choose(&self, requested: Option<&str>) -> Result<Account, String> {
        let Some(requested) = requested else {
            return Ok(self.default_account().clone());
        };
        let want = Account::parse(requested)?;
        if want == Account::Dynamic || self.0.contains(&want) {
            return Ok(want);
        }
        Err(format!(
            "--user {requested} is not allowed: the policy's run_as is {self}; list it there \
             to allow it"
        ))
    }
}

impl fmt::Display for RunAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [one] = self.0.as_slice() {
            return write!(f, "{one}");
        }
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "[{}]", names.join(", "))
    }
}

impl Serialize for RunAs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        names.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RunAs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = RunAs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("dynamic, root, caller, an account name, or a list of them")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RunAs, E> {
                Account::parse(s).map(|a| RunAs(vec![a])).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RunAs, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RunAs, A::Error> {
                let mut all = Vec::new();
                while let Some(entry) = seq.next_element::<Entry>()? {
                    if all.contains(&entry.0) {
                        return Err(de::Error::custom(format!("run_as lists {} twice", entry.0)));
                    }
                    all.push(entry.0);
                }
                if all.is_empty() {
                    return Err(de::Error::custom(
                        "run_as is an empty list; expected at least one account (the first is \
                         the default)",
                    ));
                }
                Ok(RunAs(all))
            }
        }
        d.deserialize_any(V)
    }
}

/// One list entry, checked as it is read (so errors point at it).
struct Entry(Account);

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Entry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("dynamic, root, caller or an account name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Entry, E> {
                Account::parse(s).map(Entry).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Entry, E> {
                self.visit_str(&n.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

/// The JSON Schema form of [`RunAs`].
#[derive(JsonSchema)]
#[serde(untagged)]
#[expect(dead_code, reason = "only its schema is used")]
enum RunAsForm {
    /// One account.
    One(AccountText),
    /// Accounts `agentcage run --user` may choose; the first is the default.
    Many(Vec<AccountText>),
}

/// The JSON Schema form of [`Account`].
#[derive(JsonSchema)]
#[schemars(
    description = "dynamic (a uid of the agent's own), root, caller (whoever runs agentcage \
                   run, when not root), an account name or a uid",
    extend("pattern" = r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}$")
)]
#[expect(dead_code, reason = "only its schema is used")]
struct AccountText(String);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RunAs, String> {
        serde_norway::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn one_account_or_a_list_whose_first_is_the_default() {
        assert_eq!(parse("dynamic").unwrap(), RunAs::default());
        let r = parse("[root, nobody, 1000]").unwrap();
        assert_eq!(r.default_account(), &Account::Root);
        assert_eq!(r.accounts()[2], Account::User("1000".into()));
        assert_eq!(r.to_string(), "[root, nobody, 1000]");
        assert!(parse("[]").unwrap_err().contains("empty list"));
        assert!(parse("[root, root]").unwrap_err().contains("twice"));
        assert!(parse("\"a b\"").unwrap_err().contains("invalid run_as"));
    }

    #[test]
    fn run_user_chooses_within_the_list_and_may_always_narrow_to_dynamic() {
        let r = parse("[root, nobody]").unwrap();
        assert_eq!(r.choose(None).unwrap(), Account::Root);
        assert_eq!(
            r.choose(Some("nobody")).unwrap(),
            Account::User("nobody".into())
        );
        assert_eq!(r.choose(Some("dynamic")).unwrap(), Account::Dynamic);
        let e = RunAs::default().choose(Some("root")).unwrap_err();
        assert!(e.contains("run_as is dynamic"), "{e}");
    }
}
