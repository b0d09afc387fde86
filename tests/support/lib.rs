//! The end-to-end tests' library: a real daemon per test with the real CLI ([`harness`]), the
//! binaries they run ([`bins`]), a real OpenTelemetry collector ([`collector`]), and a real
//! terminal ([`tmux`]).
//!
//! The suites (`tests/*.rs`, one test target each) need root; this library and the probe
//! build as any user.

pub mod bins;
pub mod collector;
pub mod dns;
pub mod harness;
pub mod tmux;
