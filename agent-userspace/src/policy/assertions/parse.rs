//! The assertion language's parser: tokens, then `pattern (precedes | within D after) pattern`.

use super::{Assertion, Pattern, PatternKind};
use crate::policy::Span;

/// Tokens of the language.
#[derive(Clone, Debug, PartialEq)]
enum Token {
    /// A bare word: a kind, a keyword, an argument, part of a duration.
    Word(String),
    /// A "quoted" argument.
    Quoted(String),
    /// `(`
    Open,
    /// `)`
    Close,
}

/// Splits the text into tokens; quotes allow spaces and `\"` inside an argument.
fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Token::Open);
            }
            ')' => {
                chars.next();
                out.push(Token::Close);
            }
            '"' => {
                chars.next();
                let mut text = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e) => text.push(e),
                            None => return Err("unterminated string".into()),
                        },
                        Some(ch) => text.push(ch),
                        None => return Err("unterminated string (missing closing \")".into()),
                    }
                }
                out.push(Token::Quoted(text));
            }
            _ => {
                let mut word = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || ch == '(' || ch == ')' || ch == '"' {
                        break;
                    }
                    word.push(ch);
                    chars.next();
                }
                out.push(Token::Word(word));
            }
        }
    }
    Ok(out)
}

/// Parses one assertion; the error says what was expected where.
pub(super) fn parse(text: &str) -> Result<Assertion, String> {
    let fail = |why: String| {
        Err(format!(
            "invalid assertion {text:?}: {why}; expected `A precedes B` or `A within \
             DURATION after B`, where A and B are approval, reported_approval, egress, exec, \
             tool_call, plan, ticket_comment, model_call or notify, optionally with an \
             argument in ()"
        ))
    };
    let tokens = match tokenize(text) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let mut at = 0;
    let left = match pattern(&tokens, &mut at) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let assertion = match tokens.get(at) {
        Some(Token::Word(w)) if w == "precedes" => {
            at += 1;
            match pattern(&tokens, &mut at) {
                Ok(then) => Assertion::Precedes { first: left, then },
                Err(e) => return fail(e),
            }
        }
        Some(Token::Word(w)) if w == "within" => {
            at += 1;
            // The duration may be written with spaces ("1h 30m"): words up to "after".
            let mut words = Vec::new();
            while let Some(Token::Word(w)) = tokens.get(at) {
                if w == "after" {
                    break;
                }
                words.push(w.clone());
                at += 1;
            }
            let window = match Span::parse(&words.join(" ")) {
                Ok(s) => s.0,
                Err(e) => return fail(e),
            };
            if !matches!(tokens.get(at), Some(Token::Word(w)) if w == "after") {
                return fail("`after` is missing after the duration".into());
            }
            at += 1;
            match pattern(&tokens, &mut at) {
                Ok(trigger) => Assertion::Within {
                    follow: left,
                    window,
                    trigger,
                },
                Err(e) => return fail(e),
            }
        }
        Some(t) => return fail(format!("unexpected {t:?} after {left}")),
        None => return fail(format!("nothing follows {left}")),
    };
    if let Some(t) = tokens.get(at) {
        return fail(format!("unexpected {t:?} at the end"));
    }
    Ok(assertion)
}

/// Reads `KIND [ "(" ARG ")" ]` at `at`, advancing it.
fn pattern(tokens: &[Token], at: &mut usize) -> Result<Pattern, String> {
    let Some(Token::Word(word)) = tokens.get(*at) else {
        return Err(format!(
            "expected an event kind, found {:?}",
            tokens.get(*at)
        ));
    };
    let kind = PatternKind::ALL
        .iter()
        .find(|(n, _)| n == word)
        .map(|(_, k)| *k)
        .ok_or_else(|| format!("unknown event kind {word:?}"))?;
    *at += 1;
    let mut arg = None;
    if tokens.get(*at) == Some(&Token::Open) {
        *at += 1;
        match tokens.get(*at) {
            Some(Token::Word(a) | Token::Quoted(a)) if !a.is_empty() => arg = Some(a.clone()),
            other => {
                return Err(format!(
                    "expected an argument in {word}(...), found {other:?}"
                ))
            }
        }
        *at += 1;
        if tokens.get(*at) != Some(&Token::Close) {
            return Err(format!("expected ) after the argument of {word}"));
        }
        *at += 1;
    }
    Ok(Pattern { kind, arg })
}
