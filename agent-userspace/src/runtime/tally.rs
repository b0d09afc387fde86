//! Counts within a sliding window of time, kept per instant with their number: a summary of
//! a thousand repeated denials is one entry of a thousand, so a flood costs no memory.

use std::collections::VecDeque;

/// Occurrences in a sliding window.
#[derive(Debug, Default)]
pub struct Tally {
    /// (time in ns, how many), oldest first.
    seen: VecDeque<(u64, u64)>,
    total: u64,
}

impl Tally {
    /// Adds `n` occurrences at `now_ns`, forgets those `window_ns` or more before it, and
    /// returns how many are left in the window.
    pub fn add(&mut self, now_ns: u64, n: u64, window_ns: u64) -> u64 {
        self.seen.push_back((now_ns, n));
        self.total += n;
        while let Some(&(t, k)) = self.seen.front() {
            if now_ns.saturating_sub(t) < window_ns {
                break;
            }
            self.seen.pop_front();
            self.total -= k;
        }
        self.total
    }

    /// Starts counting again.
    pub fn clear(&mut self) {
        self.seen.clear();
        self.total = 0;
    }

    /// When the last occurrence was, if any is in the window.
    pub fn last(&self) -> Option<u64> {
        self.seen.back().map(|&(t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fall_out_of_the_window_with_their_number() {
        let mut t = Tally::default();
        assert_eq!(t.add(0, 1000, 10), 1000);
        assert_eq!(t.add(5, 1, 10), 1001);
        assert_eq!(t.add(10, 1, 10), 2, "the thousand at 0 fell out");
        assert_eq!(t.last(), Some(10));
        t.clear();
        assert_eq!(t.add(11, 3, 10), 3);
    }
}
