//! Finds the line and column of a value in policy YAML, for errors found after parsing.
//!
//! serde_norway exposes positions only through errors, so this walks the document along a
//! path, ignoring everything else, and fails on purpose at the target: the error's location
//! is the target's. It runs only when reporting an error.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path: a mapping key or a sequence index.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step<'a> {
    /// A mapping key.
    Key(&'a str),
    /// A sequence index.
    Index(usize),
}

/// The 1-based (line, column) of the value at `path` in `text`, if it is there.
pub(crate) fn locate(text: &str, path: &[Step<'_>]) -> Option<(usize, usize)> {
    let de = serde_norway::Deserializer::from_str(text);
    match Walk(path).deserialize(de) {
        Ok(()) => None,
        Err(e) => e.location().map(|l| (l.line(), l.column())),
    }
}

/// Follows the rest of a path.
struct Walk<'p, 'a>(&'p [Step<'a>]);

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.0.split_first() {
            None => d.deserialize_any(Here),
            Some((Step::Key(key), rest)) => d.deserialize_map(InMap { key, rest }),
            Some((Step::Index(index), rest)) => d.deserialize_seq(InSeq {
                index: *index,
                rest,
            }),
        }
    }
}

/// Fails on whatever it meets; the failure carries the position.
struct Here;

impl Visitor<'_> for Here {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("nothing (locating a value)")
    }
}

struct InMap<'p, 'a> {
    key: &'p str,
    rest: &'p [Step<'a>],
}

impl<'de> Visitor<'de> for InMap<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(k) = map.next_key::<String>()? {
            if k == self.key {
                map.next_value_seed(Walk(self.rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct InSeq<'p, 'a> {
    index: usize,
    rest: &'p [Step<'a>],
}

impl<'de> Visitor<'de> for InSeq<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let found = if i == self.index {
                seq.next_element_seed(Walk(self.rest))?
            } else {
                seq.next_element::<IgnoredAny>()?.map(|_| ())
            };
            if found.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
version: 1
agents:
  demo:
    egress:
      allow:
        - cidr: 10.0.0.0/8
        - cidr: 127.0.0.1/32
          ports: [80]
        - {cidr: 192.0.2.0/24}
";

    #[test]
    fn finds_values() {
        let allow = |i| {
            [
                Step::Key("agents"),
                Step::Key("demo"),
                Step::Key("egress"),
                Step::Key("allow"),
                Step::Index(i),
            ]
        };
        assert_eq!(locate(DOC, &allow(0)), Some((6, 11)));
        assert_eq!(locate(DOC, &allow(1)), Some((7, 11)));
        assert_eq!(locate(DOC, &allow(2)), Some((9, 11)));
        assert_eq!(locate(DOC, &allow(3)), None);
        assert_eq!(locate(DOC, &[Step::Key("version")]), Some((1, 10)));
        assert_eq!(locate(DOC, &[Step::Key("nope")]), None);
    }
}
