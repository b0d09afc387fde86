//! Reading libtest's `test result:` lines, for the host suite and the VM boots alike.

/// The number before `what` in e.g. `ok. 9 passed; 0 failed; ...`.
pub fn count(result: &str, what: &str) -> u64 {
    result
        .split(';')
        .find_map(|part| part.trim_end().strip_suffix(what))
        .and_then(|n| n.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_result_lines() {
        let r = "ok. 9 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.33s";
        assert_eq!(count(r, " passed"), 9);
        assert_eq!(count(r, " failed"), 0);
        let f = "FAILED. 8 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(count(f, " passed"), 8);
        assert_eq!(count(f, " failed"), 2);
    }
}
