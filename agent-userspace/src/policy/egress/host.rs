//! `host:` allow rules: a DNS name (`api.example.com`) or every name below one
//! (`*.example.com`), matched case-insensitively and without a trailing dot.

use std::fmt;

/// A name or a wildcard over the names below one, as written in a `host:` rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPattern {
    /// The name (lower case, no trailing dot); for a wildcard, the name below which it
    /// matches.
    name: String,
    /// `*.name`: any name below `name`, not `name` itself.
    wildcard: bool,
}

/// The form every host error ends with.
const HOST_EXPECTED: &str = "expected a DNS name like api.example.com or \"*.example.com\"";

impl HostPattern {
    /// Parses `api.example.com` or `*.example.com`; refuses a wildcard over a public suffix
    /// (`*.com`, `*.co.uk`), which would admit every domain registered under it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: String| format!("invalid host {s:?}: {why}; {HOST_EXPECTED}");
        let text = s.trim();
        let (wildcard, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let name = normalize(rest).map_err(bad)?;
        if name.contains('*') {
            return Err(bad(
                "'*' may only stand alone as the first label (\"*.example.com\")".to_owned(),
            ));
        }
        if wildcard && is_public_suffix(&name) {
            return Err(format!(
                "invalid host {s:?}: {name} is a public suffix, so \"*.{name}\" would admit \
                 every domain registered under it; name the domain instead, e.g. \
                 \"*.example.{name}\""
            ));
        }
        Ok(Self { name, wildcard })
    }

    /// Whether the pattern admits `qname` (lower case, no trailing dot; see [`normalize`]).
    pub fn matches(&self, qname: &str) -> bool {
        if self.wildcard {
            qname.len() > self.name.len() + 1
                && qname.ends_with(&self.name)
                && qname.as_bytes()[qname.len() - self.name.len() - 1] == b'.'
        } else {
            qname == self.name
        }
    }

    /// Whether it is a wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// A DNS name in the form rules match: ASCII lower case, without the trailing dot; labels
/// of 1-63 letters, digits, '-' and '_' (no '-' at either end), 253 characters at most.
pub fn normalize(name: &str) -> Result<String, String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if name.len() > 253 {
        return Err(format!("{} characters is longer than 253", name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (two dots in a row)".to_owned());
        }
        if label.len() > 63 {
            return Err(format!("the label {label:?} is longer than 63 characters"));
        }
        if label == "*" {
            continue; // Refused by the caller with a better message.
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "{c:?} is not a letter, digit, '-' or '_' (write internationalized names in \
                 their xn-- form)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("the label {label:?} starts or ends with '-'"));
        }
    }
    Ok(name)
}

/// Whether `name` is a public suffix by the public suffix list (a listed suffix, or a
/// top-level domain the list does not know, by its default rule).
fn is_public_suffix(name: &str) -> bool {
    psl::suffix(name.as_bytes()).is_some_and(|s| s.as_bytes() == name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_wildcards_match_as_written() {
        let exact = HostPattern::parse("API.Example.com.").unwrap();
        assert_eq!(exact.to_string(), "api.example.com");
        assert!(exact.matches("api.example.com"));
        assert!(!exact.matches("x.api.example.com"));
        assert!(!exact.matches("example.com"));
        let wild = HostPattern::parse("*.Example.com").unwrap();
        assert_eq!(wild.to_string(), "*.example.com");
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.example.com"), "any depth below");
        assert!(!wild.matches("example.com"), "not the name itself");
        assert!(!wild.matches("badexample.com"), "a label boundary");
        assert!(HostPattern::parse("*.pythonhosted.org").is_ok());
        assert!(HostPattern::parse("*.wild.test").is_ok());
    }

    #[test]
    fn wildcards_over_public_suffixes_are_refused() {
        for s in ["*.com", "*.co.uk", "*.test", "*.github.io"] {
            let e = HostPattern::parse(s).unwrap_err();
            assert!(e.contains("public suffix"), "{s}: {e}");
        }
        assert!(HostPattern::parse("*.example.co.uk").is_ok());
        assert!(
            HostPattern::parse("co.uk").is_ok(),
            "a name itself is only that name"
        );
    }

    #[test]
    fn malformed_names_are_named() {
        for (s, why) in [
            ("", "empty"),
            ("a..b", "empty label"),
            ("a.*.b", "first label"),
            ("*", "first label"),
            ("-a.com", "starts or ends"),
            ("a b.com", "not a letter"),
            ("bücher.de", "xn--"),
        ] {
            let e = HostPattern::parse(s).unwrap_err();
            assert!(e.contains(why), "{s:?}: {e}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(HostPattern::parse(&long).unwrap_err().contains("63"));
    }
}
