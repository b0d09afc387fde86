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

/// Opens `dir` and every file in it to every uid (the directory as /tmp is: anyone may add
/// a socket): agents run under uids of their own, and only the hooks, not file modes, may
/// stop them in these tests.
pub fn open_to_all(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let mode =
        |p: &std::path::Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    mode(dir, 0o1777).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_symlink() {
            mode(&path, 0o777).unwrap();
        }
    }
}

/// Accepts one connection on `listener` within the deadline, or fails the test: a caged
/// peer that never connects is a failure, not a hang.
pub fn accept_within(
    listener: &std::os::unix::net::UnixListener,
    what: &str,
) -> std::os::unix::net::UnixStream {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd as _;
    let ms = crate::harness::deadline().as_millis().min(i32::MAX as u128) as i32;
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let ready = poll(
        &mut fds,
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
    )
    .unwrap_or_else(|e| panic!("poll for {what}: {e}"));
    assert!(
        ready > 0,
        "no connection for {what} within {:?}",
        crate::harness::deadline()
    );
    listener.accept().unwrap().0
}
