//! Rendering error chains for people.

use std::fmt::Write as _;

/// One line: each cause after the first, unless the message before it already says it (our
/// error types often include their source in their own text).
pub fn render(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {path}: {source}")]
    struct Outer {
        path: String,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn causes_already_said_are_not_repeated() {
        let e = Outer {
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(
            render(&e),
            "reading /x: No such file or directory (os error 2)"
        );
        let wrapped = anyhow::Error::new(e).context("loading policy");
        assert_eq!(
            render(wrapped.as_ref()),
            "loading policy: reading /x: No such file or directory (os error 2)"
        );
    }
}
