//! The event stream of `agentcage events` and `agentcage top`, decoded only as far as the CLI
//! needs: an event's JSON is kept exactly as the daemon wrote it, so a CLI older than the
//! daemon passes on fields and kinds it does not know instead of failing on them.

use std::io::Write;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::CliError;
use crate::control::ClientError;

/// One response line of an event stream: the tag and the fields the stream's responses carry
/// (`event`, `lost`, `subscribed`, `error`).
#[derive(Deserialize)]
struct Envelope<'a> {
    /// The response's kind.
    #[serde(rename = "type")]
    kind: String,
    /// An event's JSON, undecoded.
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    /// How many events a `lost` response stands for.
    #[serde(default)]
    count: Option<u64>,
    /// Why an `error` response refused the request.
    #[serde(default)]
    message: Option<String>,
}

/// What one line of the stream says.
#[derive(Debug, PartialEq)]
pub enum Item<'a> {
    /// An event: its JSON exactly as the daemon sent it.
    Event(&'a str),
    /// Events this reader missed because it read too slowly.
    Lost(u64),
    /// The follow subscription is live.
    Subscribed,
}

/// Decodes one response line of an event stream; the daemon's refusal becomes
/// [`ClientError::Refused`].
pub fn parse(line: &str) -> Result<Item<'_>, CliError> {
    let unreadable = |why: String| ClientError::Protocol(format!("{why}: {line:?}"));
    let envelope: Envelope<'_> =
        serde_json::from_str(line).map_err(|e| unreadable(e.to_string()))?;
    match (envelope.kind.as_str(), envelope.event, envelope.count) {
        ("event", Some(event), _) => Ok(Item::Event(event.get())),
        ("lost", _, Some(count)) => Ok(Item::Lost(count)),
        ("subscribed", _, _) => Ok(Item::Subscribed),
        ("error", _, _) => Err(ClientError::Refused(envelope.message.unwrap_or_default()).into()),
        ("event" | "lost", _, _) => {
            Err(unreadable(format!("a {} without its field", envelope.kind)).into())
        }
        _ => Err(CliError::Unexpected(line.trim_end().to_owned())),
    }
}

/// `agentcage events`: writes one response line's event to `out` as the daemon sent it (a
/// `lost` response as `{"lost":N}`), and says on stderr what is not an event.
pub fn pass_through(line: &str, out: &mut impl Write) -> Result<(), CliError> {
    let written = match parse(line)? {
        Item::Event(json) => writeln!(out, "{json}"),
        Item::Lost(count) => {
            eprintln!("agentcage: {count} events were missed because this reader was too slow");
            writeln!(out, "{{\"lost\":{count}}}")
        }
        Item::Subscribed => {
            eprintln!("agentcage: following events (Ctrl-C to stop)");
            return Ok(());
        }
    };
    written
        .and_then(|()| out.flush())
        .map_err(CliError::os("writing events"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `agentcage events` prints for `line`.
    fn printed(line: &str) -> String {
        let mut out = Vec::new();
        pass_through(line, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_event_with_fields_this_cli_does_not_know_is_printed_unchanged() {
        // A newer daemon's event: a kind, fields and a field order this CLI has never seen,
        // spacing and escapes as the daemon wrote them.
        let event = r#"{"kind":"dns","zone":"example.test.","answers":[{"a":"127.0.0.1"}],"time_unix_nano":1,"note":"caf\u00e9 \"q\"","agent": "x"}"#;
        let line = format!(r#"{{"type":"event","event":{event},"added_later":true}}"#);
        assert_eq!(printed(&line), format!("{event}\n"));
        assert_eq!(parse(&line).unwrap(), Item::Event(event));
    }

    #[test]
    fn lost_subscribed_and_errors_are_handled_as_before() {
        assert_eq!(printed(r#"{"type":"lost","count":7}"#), "{\"lost\":7}\n");
        assert_eq!(printed(r#"{"type":"subscribed"}"#), "");
        let refused = pass_through(r#"{"type":"error","message":"no"}"#, &mut Vec::new());
        assert!(
            matches!(&refused, Err(CliError::Client(ClientError::Refused(m))) if m == "no"),
            "{refused:?}"
        );
    }

    #[test]
    fn what_is_no_stream_response_is_refused() {
        let e = parse(r#"{"type":"pong","version":"1"}"#).unwrap_err();
        assert!(matches!(e, CliError::Unexpected(_)), "{e:?}");
        let e = parse(r#"{"type":"event"}"#).unwrap_err();
        assert!(e.to_string().contains("without its field"), "{e}");
        let e = parse("not json").unwrap_err();
        assert!(e.to_string().contains("unreadable response"), "{e}");
    }
}
