//! Polling a resolver on this host for its answer instead of sleeping on the socket. A new
//! name costs the daemon two wakeups more than a query sent straight upstream, each about
//! 75 us from idle on a VM; polling for the upstream's answer saves the second. It is spent
//! CPU, so it is bounded: a query polls for at most [`POLL_MAX`], and beyond the first
//! [`FREE`] of each poll (about what the wakeup it saves costs the query anyway) all cages
//! together may poll [`BUDGET`] a second. An agent flooding new names to a slow resolver thus
//! burns at most a fifth of a CPU this way, and never holds a thread more than 300 us.

use std::{
    io,
    net::UdpSocket,
    sync::Mutex,
    time::{Duration, Instant},
};

use hickory_proto::op::Message;

use super::upstream::answer_in;

/// The longest a query polls for its answer.
const POLL_MAX: Duration = Duration::from_micros(300);
/// What each poll may take uncharged.
const FREE: Duration = Duration::from_micros(50);
/// What all polls together may be charged per second.
const BUDGET: Duration = Duration::from_millis(200);

/// The charged polling of the current second.
#[derive(Debug)]
struct Budget {
    since: Option<Instant>,
    used: Duration,
}

impl Budget {
    const fn new() -> Self {
        Self {
            since: None,
            used: Duration::ZERO,
        }
    }

    /// How long a poll starting `now` may last.
    fn allowance(&mut self, now: Instant) -> Duration {
        match self.since {
            Some(since) if now.duration_since(since) < Duration::from_secs(1) => {}
            _ => (self.since, self.used) = (Some(now), Duration::ZERO),
        }
        (BUDGET + FREE).saturating_sub(self.used).min(POLL_MAX)
    }

    /// Charges a poll that took `took`.
    fn charge(&mut self, took: Duration) {
        self.used += took.saturating_sub(FREE);
    }
}

static SPENT: Mutex<Budget> = Mutex::new(Budget::new());

fn budget() -> std::sync::MutexGuard<'static, Budget> {
    SPENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Polls `socket`, connected to a resolver on this host, for the answer to `query` while
/// the budget allows; None when it has not come by then (the caller then sleeps on it).
pub(super) fn answer(
    socket: &UdpSocket,
    query: &Message,
    buf: &mut [u8],
) -> io::Result<Option<Message>> {
    let start = Instant::now();
    let allowance = budget().allowance(start);
    let mut found = None;
    while found.is_none() && start.elapsed() < allowance {
        match socket.recv(buf) {
            // Anything else (a late or forged datagram) is ignored, as when sleeping.
            Ok(n) => found = answer_in(query, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    budget().charge(start.elapsed());
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_stop_when_a_second_has_used_the_budget_and_resume_the_next() {
        let mut b = Budget::new();
        let t0 = Instant::now();
        let mut polls = 0;
        while b.allowance(t0) > Duration::ZERO {
            b.charge(POLL_MAX);
            polls += 1;
        }
        // 300 us polls charged 250 us each: 200 ms lasts 800 of them (and a last, shorter).
        assert!((800..=802).contains(&polls), "{polls} polls");
        assert_eq!(b.allowance(t0 + Duration::from_millis(999)), Duration::ZERO);
        assert_eq!(b.allowance(t0 + Duration::from_secs(1)), POLL_MAX);
    }

    #[test]
    fn a_poll_within_the_free_part_is_not_charged() {
        let mut b = Budget::new();
        let t0 = Instant::now();
        for _ in 0..100_000 {
            assert_eq!(b.allowance(t0), POLL_MAX);
            b.charge(FREE);
        }
    }

    #[test]
    fn a_resolver_that_answers_is_polled_and_a_silent_one_is_given_up() {
        let resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(resolver.local_addr().unwrap()).unwrap();
        socket.set_nonblocking(true).unwrap();
        let name = hickory_proto::rr::Name::from_ascii("a.test.").unwrap();
        let query = super::super::wire::upstream_query(&name, hickory_proto::rr::RecordType::A);
        let mut buf = [0u8; 512];
        assert!(answer(&socket, &query, &mut buf).unwrap().is_none());
        // An answer already waiting is found at the first look.
        let mut reply = query.clone();
        reply.metadata.message_type = hickory_proto::op::MessageType::Response;
        resolver
            .send_to(&reply.to_vec().unwrap(), socket.local_addr().unwrap())
            .unwrap();
        let got = answer(&socket, &query, &mut buf).unwrap();
        assert_eq!(got.map(|m| m.metadata.id), Some(query.metadata.id));
    }
}
