//! Raw HTTP/1.1 to the daemon's loopback listener: the suites check the status codes and
//! headers the way a browser or a tool's backend would meet them, with no client library
//! smoothing anything over.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
};

/// Sends one raw request (which should say `Connection: close`) to `authority`; returns the
/// status code and the body.
pub fn exchange(authority: &str, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(authority).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_owned())
}
