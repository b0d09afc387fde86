//! The end-to-end tests' library: a real daemon per test with the real CLI ([`harness`]) and
//! probes serving operations in its cages ([`served`]), the
//! binaries they run ([`bins`]), a real OpenTelemetry collector ([`collector`]), the daemon's
//! spool as files ([`spool`]), a real container engine ([`engine`]), a real terminal
//! ([`tmux`]), and credentials checked as tools would check them ([`identity`]).
//!
//! The suites (`tests/*.rs`, one test target each) need root; this library and the probe
//! build as any user.

pub mod bins;
pub mod bounded;
pub mod collector;
pub mod dns;
pub mod engine;
pub mod harness;
pub mod http;
pub mod identity;
pub mod lines;
pub mod served;
pub mod sockets;
pub mod spool;
pub mod stall;
pub mod tmux;
