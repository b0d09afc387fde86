//! Loopback listeners for the suites, and reading a command's output.

use std::{
    net::{TcpListener, UdpSocket},
    process::Output,
};

/// A TCP listener on a loopback address; accepted connections are simply dropped.
pub fn tcp_listener(ip: &str) -> (TcpListener, u16) {
    let l = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// Listeners on 127.0.0.1 and 127.0.0.2 at the same port: the allowed and the denied
/// destination of most tests. Keep the pair alive while connecting.
pub fn listener_pair() -> ((TcpListener, TcpListener), u16) {
    let (allowed, port) = tcp_listener("127.0.0.1");
    let denied = tcp_listener_at("127.0.0.2", port);
    ((allowed, denied), port)
}

/// Asserts that a command failed and said `needle` on stderr.
pub fn assert_refused(output: &Output, needle: &str) {
    assert!(!output.status.success(), "expected a failure: {output:?}");
    let err = stderr(output);
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

/// A TCP listener on `ip` at a given port.
pub fn tcp_listener_at(ip: &str, port: u16) -> TcpListener {
    TcpListener::bind((ip, port)).unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"))
}

/// A non-blocking UDP socket on a loopback address.
pub fn udp_listener(ip: &str) -> (UdpSocket, u16) {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_nonblocking(true).unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

/// Stdout of an output, trimmed.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Stderr of an output.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
