//! The `unix:` section: which Unix-socket addresses a caged process may connect or send to,
//! and its compilation into the automaton the kernel walks (`agent_common::unix`).
//!
//! An entry is an absolute path, a glob over paths, or an abstract name (`@name`, globs
//! too). The kernel reads an address one byte at a time through one deterministic automaton
//! per policy slot, built here from all of an agent's entries at once (regex-automata's dense
//! DFA, minimised): a decision costs the same whatever the list holds.

use std::{collections::HashMap, fmt};

use agent_common::unix::{
    ByteClasses, DfaKey, DfaNext, ACCEPT_APP_SOCKET, DFA_START, UNIX_PATH_MAX,
};
use regex_automata::{
    dfa::{dense, Automaton as _, StartKind},
    nfa::thompson,
    util::{primitives::StateID, start, syntax},
    Anchored, MatchKind,
};
use schemars::JsonSchema;
use serde::{
    de::{self, Deserializer, Visitor},
    Deserialize, Serialize,
};

/// Unix sockets: present, it confines them. A connect or send to a socket whose listener is
/// outside the agent's cage needs an allow entry for its address.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnixPolicy {
    /// Allowed addresses, first match decides (its index is reported): absolute paths,
    /// globs over them (`*` and `?` within one path component, `**` across components,
    /// `[...]` classes), and abstract names as `@name` (globs too).
    #[serde(default)]
    pub allow: Vec<UnixPattern>,
}

/// One `unix.allow` entry, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(with = "UnixPatternText")]
pub struct UnixPattern(String);

/// The JSON Schema form of [`UnixPattern`].
#[derive(JsonSchema)]
#[schemars(
    description = "an absolute socket path or glob (/run/docker.sock, /tmp/ssh-*/agent.*), or an abstract name (@name)",
    extend("pattern" = "^[/@]")
)]
#[expect(dead_code, reason = "only its schema is used")]
struct UnixPatternText(String);

/// Longest entry accepted (a glob can be longer than the addresses it matches).
const MAX_PATTERN_LEN: usize = 4 * UNIX_PATH_MAX;
/// Most automaton states one agent's list may need.
pub const MAX_STATES: usize = 4096;

impl UnixPattern {
    /// The entry as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Checks an entry and translates it into the regular expression the automaton is
    /// built from (bytes, anchored at both ends by the way it is matched).
    fn parse(text: &str) -> Result<(Self, String), String> {
        let expected = "expected an absolute path like /run/docker.sock, a glob like \
                        /tmp/ssh-*/agent.*, or an abstract name like @name";
        if text.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "unix entry of {} bytes is longer than {MAX_PATTERN_LEN}; {expected}",
                text.len()
            ));
        }
        if text.contains('\0') {
            return Err(format!("unix entry {text:?} holds a NUL byte; {expected}"));
        }
        let (mut regex, body) = if let Some(name) = text.strip_prefix('@') {
            if name.is_empty() {
                return Err(format!(
                    "unix entry {text:?} names no abstract socket; {expected}"
                ));
            }
            // The kernel's encoding of an abstract address: a NUL byte, then the name.
            (String::from(r"\x00"), name)
        } else if text.starts_with('/') {
            (String::new(), text)
        } else {
            return Err(format!(
                "invalid unix entry {text:?}: neither an absolute path nor @name (a relative \
                 path would depend on the caller's directory); {expected}"
            ));
        };
        let longest = glob_to_regex(body, &mut regex)
            .map_err(|why| format!("invalid unix entry {text:?}: {why}; {expected}"))?;
        // sun_path holds 108 bytes: a path's NUL ends it, an abstract name has its own NUL.
        if longest.is_some_and(|n| n >= UNIX_PATH_MAX) {
            return Err(format!(
                "unix entry {text:?} is longer than a socket address can be ({} bytes); \
                 {expected}",
                UNIX_PATH_MAX - 1
            ));
        }
        Ok((Self(text.to_owned()), regex))
    }
}

impl fmt::Display for UnixPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UnixPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = UnixPattern;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a socket path, a glob over paths, or @abstract-name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<UnixPattern, E> {
                UnixPattern::parse(s).map(|(p, _)| p).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Appends the regular expression of glob `body` to `out`; returns the longest address it
/// can match, if bounded. Every literal byte is written as `\xNN`, so nothing in a name is
/// ever read as regex syntax.
fn glob_to_regex(body: &str, out: &mut String) -> Result<Option<usize>, String> {
    let bytes = body.as_bytes();
    let mut longest = Some(0usize);
    let mut i = 0;
    let literal = |out: &mut String, b: u8| out.push_str(&format!(r"\x{b:02x}"));
    while i < bytes.len() {
        match bytes[i] {
            b'*' if bytes.get(i + 1) == Some(&b'*') => {
                out.push_str(r"(?s:.)*");
                longest = None;
                i += 2;
            }
            b'*' => {
                out.push_str(r"[^/]*");
                longest = None;
                i += 1;
            }
            b'?' => {
                out.push_str(r"[^/]");
                longest = longest.map(|n| n + 1);
                i += 1;
            }
            b'[' => {
                let close = bytes[i + 1..]
                    .iter()
                    .skip(1)
                    .position(|&b| b == b']')
                    .map(|p| i + 2 + p)
                    .ok_or("a [ class is not closed")?;
                let mut class = &bytes[i + 1..close];
                out.push('[');
                if let Some(rest) = class
                    .strip_prefix(b"!")
                    .or_else(|| class.strip_prefix(b"^"))
                {
                    out.push('^');
                    class = rest;
                }
                for (k, &b) in class.iter().enumerate() {
                    // A range's dash stays a dash; everything else is a literal byte.
                    if b == b'-' && k > 0 && k + 1 < class.len() {
                        out.push('-');
                    } else {
                        literal(out, b);
                    }
                }
                out.push(']');
                longest = longest.map(|n| n + 1);
                i = close + 1;
            }
            b'\\' => {
                let b = *bytes.get(i + 1).ok_or("it ends with a lone \\")?;
                literal(out, b);
                longest = longest.map(|n| n + 1);
                i += 2;
            }
            b'{' | b'}' => {
                return Err("braces are not supported; list each alternative as an entry".into())
            }
            b => {
                literal(out, b);
                longest = longest.map(|n| n + 1);
                i += 1;
            }
        }
    }
    Ok(longest)
}

/// An agent's Unix-socket automaton: its byte classes and its transitions, keyed without
/// the slot. A transition that is not listed leads nowhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledUnix {
    /// Whether the policy confines Unix sockets at all (`unix:` present).
    pub confined: bool,
    /// The class of each byte.
    pub classes: ByteClasses,
    /// (state, class) → next state and acceptance.
    pub transitions: Vec<((u16, u16), DfaNext)>,
}

impl Default for CompiledUnix {
    fn default() -> Self {
        Self {
            confined: false,
            classes: ByteClasses { class: [0; 256] },
            transitions: Vec::new(),
        }
    }
}

impl CompiledUnix {
    /// The index of the first entry that `addr` (a path, or a NUL byte and an abstract name)
    /// matches, walking the automaton exactly as the kernel does; `Some(usize::MAX)` for
    /// the daemon's application socket.
    pub fn first_match(&self, addr: &[u8]) -> Option<usize> {
        let table: HashMap<(u16, u16), DfaNext> = self.transitions.iter().copied().collect();
        let mut state = DFA_START;
        let mut accept = 0;
        for &b in addr.iter().take(UNIX_PATH_MAX) {
            let class = u16::from(self.classes.class[usize::from(b)]);
            let next = table.get(&(state, class))?;
            (state, accept) = (next.next, next.accept);
        }
        match accept {
            _ if addr.is_empty() => None,
            0 => None,
            ACCEPT_APP_SOCKET => Some(usize::MAX),
            n => Some(usize::from(n - 1)),
        }
    }

    /// The map entries for `slot`.
    pub fn entries(&self, slot: u32) -> impl Iterator<Item = (DfaKey, DfaNext)> + '_ {
        self.transitions
            .iter()
            .map(move |&((state, class), next)| (DfaKey { slot, state, class }, next))
    }
}

/// Compiles `unix` (None: not confined); errors name `path` (e.g. `agents.a.unix`).
/// `app_socket`, the daemon's application socket, is allowed too, after every entry.
pub fn compile_unix(
    path: &str,
    unix: Option<&UnixPolicy>,
    app_socket: Option<&[u8]>,
) -> Result<CompiledUnix, String> {
    let Some(unix) = unix else {
        return Ok(CompiledUnix::default());
    };
    let mut compiled = CompiledUnix {
        confined: true,
        ..CompiledUnix::default()
    };
    if unix.allow.is_empty() && app_socket.is_none() {
        return Ok(compiled);
    }
    if unix.allow.len() >= usize::from(u16::MAX) {
        return Err(format!(
            "{path}.allow has {} entries, more than {}",
            unix.allow.len(),
            u16::MAX - 1
        ));
    }
    let mut patterns = unix
        .allow
        .iter()
        .map(|p| UnixPattern::parse(&p.0).map(|(_, regex)| format!("(?-u){regex}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}.allow: {e}"))?;
    let app_pattern = app_socket.map(|bytes| {
        let mut regex = String::from("(?-u)");
        for b in bytes {
            regex.push_str(&format!(r"\x{b:02x}"));
        }
        regex
    });
    patterns.extend(app_pattern);
    let entries = unix.allow.len();
    let too_complex = || {
        format!(
            "{path}.allow: the entries need more than {MAX_STATES} automaton states; use fewer \
             or simpler globs"
        )
    };
    let dfa = dense::Builder::new()
        .configure(
            dense::Config::new()
                .start_kind(StartKind::Anchored)
                .match_kind(MatchKind::All)
                .minimize(true)
                .dfa_size_limit(Some(16 << 20))
                .determinize_size_limit(Some(16 << 20)),
        )
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .thompson(thompson::Config::new().utf8(false))
        .build_many(&patterns)
        .map_err(|e| format!("{path}.allow: {e}"))?;
    let start = dfa
        .start_state(&start::Config::new().anchored(Anchored::Yes))
        .map_err(|e| format!("{path}.allow: {e}"))?;
    let byte_classes = dfa.byte_classes();
    // One representative byte per class (the classes cover every byte, EOI aside).
    let mut representatives: Vec<(u16, u8)> = Vec::new();
    for b in 0..=255u8 {
        let class = byte_classes.get(b);
        compiled.classes.class[usize::from(b)] = class;
        if !representatives.iter().any(|&(c, _)| c == u16::from(class)) {
            representatives.push((u16::from(class), b));
        }
    }
    // Whether an address ending in `n` matches, and the first entry it matches.
    let accept = |n: StateID| -> u16 {
        let eoi = dfa.next_eoi_state(n);
        if !dfa.is_match_state(eoi) {
            return 0;
        }
        match (0..dfa.match_len(eoi))
            .map(|i| dfa.match_pattern(eoi, i).as_usize())
            .min()
        {
            Some(p) if p >= entries => ACCEPT_APP_SOCKET,
            Some(p) => u16::try_from(p + 1).unwrap_or(0),
            None => 0,
        }
    };
    // States numbered from the start state, breadth first; dead transitions are left out.
    let mut ids: HashMap<StateID, u16> = HashMap::from([(start, DFA_START)]);
    let mut queue = vec![start];
    let mut at = 0;
    while let Some(&state) = queue.get(at) {
        let from = ids[&state];
        at += 1;
        for &(class, byte) in &representatives {
            let n = dfa.next_state(state, byte);
            if dfa.is_dead_state(n) || dfa.is_quit_state(n) {
                continue;
            }
            let next = match ids.get(&n) {
                Some(&id) => id,
                None => {
                    let id = u16::try_from(ids.len())
                        .ok()
                        .filter(|&id| usize::from(id) < MAX_STATES)
                        .ok_or_else(too_complex)?;
                    ids.insert(n, id);
                    queue.push(n);
                    id
                }
            };
            let value = DfaNext {
                next,
                accept: accept(n),
            };
            compiled.transitions.push(((from, class), value));
        }
    }
    prune(&mut compiled.transitions);
    Ok(compiled)
}

/// Drops the transitions into states from which no address can be accepted any more (the
/// DFA's one-byte-delayed match states, for one): they only cost map entries.
fn prune(transitions: &mut Vec<((u16, u16), DfaNext)>) {
    let mut useful: std::collections::HashSet<u16> = transitions
        .iter()
        .filter(|(_, n)| n.accept > 0)
        .map(|(_, n)| n.next)
        .collect();
    loop {
        let before = useful.len();
        for ((from, _), next) in transitions.iter() {
            if useful.contains(&next.next) {
                useful.insert(*from);
            }
        }
        if useful.len() == before {
            break;
        }
    }
    transitions.retain(|(_, n)| useful.contains(&n.next));
}

#[cfg(test)]
mod tests;
