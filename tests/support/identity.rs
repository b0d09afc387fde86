//! What the credential and certificate suites share: a daemon with a known trust domain and
//! the loopback listener (for the verify endpoint), credential requests from inside a cage,
//! `agentcage cred verify`, the daemon's verify endpoint over raw HTTP, and PyJWT (installed
//! by `cargo xtask setup` into `.tools/pyjwt`) as a tool's backend in another language.

use crate::bounded::Bounded as _;
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::harness::{stdout, Daemon, Served};

/// The trust domain the suites configure.
pub const TRUST_DOMAIN: &str = "test.example";

/// A daemon on `policy` with trust domain [`TRUST_DOMAIN`] and the loopback listener on a
/// free port; the configuration's directory must outlive it.
pub fn daemon(policy: &str) -> (Daemon, tempfile::TempDir) {
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("agentcaged.yaml");
    fs::write(
        &conf,
        format!("identity:\n  trust_domain: {TRUST_DOMAIN}\ndashboard:\n  listen: 127.0.0.1:0\n"),
    )
    .unwrap();
    let daemon = Daemon::start_args(policy, &["--config", conf.to_str().unwrap()]);
    (daemon, conf_dir)
}

/// A caged probe connected to the application socket.
pub fn cage(daemon: &Daemon, agent: &str) -> Served {
    let mut cage = daemon.serve_in(agent);
    let app = daemon.app_socket();
    assert_eq!(cage.op(&format!("ctl-connect {}", app.display())), "ok");
    cage
}

/// Sends `{"credential":{...}}` (the request object given) from inside the cage; returns
/// the daemon's answer.
pub fn request(cage: &mut Served, credential: &serde_json::Value) -> serde_json::Value {
    let line = serde_json::json!({ "credential": credential });
    request_line(cage, &line.to_string())
}

/// Sends one line on the cage's application connection; returns the daemon's answer.
pub fn request_line(cage: &mut Served, line: &str) -> serde_json::Value {
    let answer = cage.op(&format!("ctl-send {line}"));
    let json = answer
        .strip_prefix("ok ")
        .unwrap_or_else(|| panic!("no answer from the application socket: {answer}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

/// A granted token (and its reply), or a panic naming the refusal.
pub fn grant(cage: &mut Served, credential: &serde_json::Value) -> (String, serde_json::Value) {
    let reply = request(cage, credential);
    assert_eq!(reply["type"], "granted", "expected a grant: {reply}");
    (reply["token"].as_str().unwrap().to_owned(), reply)
}

/// `agentcage cred verify TOKEN --tool --method --resource` (against the daemon's
/// jwks.json): exit status and output.
pub fn cred_verify(
    daemon: &Daemon,
    token: &str,
    tool: &str,
    method: &str,
    resource: &str,
) -> Output {
    daemon
        .cli()
        .args(["cred", "verify", token, "--tool", tool, "--method", method])
        .args(["--resource", resource])
        .output_bounded()
        .unwrap()
}

/// The loopback listener's address (`agentcage dashboard` prints it).
pub fn listener(daemon: &Daemon) -> String {
    let out = daemon.cli().arg("dashboard").output_bounded().unwrap();
    assert!(out.status.success(), "{out:?}");
    let url = stdout(&out);
    let base = url.split_once("#token=").map_or(url.as_str(), |(b, _)| b);
    base.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// `POST /v1/credentials/verify` as a tool's backend sends it: status code and body.
pub fn http_verify(
    authority: &str,
    token: &str,
    tool: &str,
    method: &str,
    resource: &str,
) -> (u16, serde_json::Value) {
    let body = serde_json::json!({
        "token": token, "tool": tool, "method": method, "resource": resource,
    })
    .to_string();
    let (code, body) = crate::http::exchange(
        authority,
        &format!(
            "POST /v1/credentials/verify HTTP/1.1\r\nHost: {authority}\r\nContent-Type: \
             application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    (code, json)
}

/// `agentcage keys jwks`, written to `file`.
pub fn save_jwks(daemon: &Daemon, file: &Path) -> serde_json::Value {
    let out = daemon
        .cli()
        .args(["keys", "jwks"])
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    fs::write(file, &out.stdout).unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Verifies `token` for audience `tool` with PyJWT against the JWKS in `jwks` (a tool's
/// backend in Python): Ok(claims) or Err(PyJWT's exception name).
pub fn pyjwt_verify(jwks: &Path, token: &str, tool: &str) -> Result<serde_json::Value, String> {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/pyjwt");
    assert!(
        tools.join("jwt").is_dir(),
        "PyJWT is missing from {}: run `cargo xtask setup`",
        tools.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/pyjwt_verify.py");
    // -S: no site-packages, so only the pinned PyJWT and cryptography are found.
    let out = Command::new("python3")
        .arg("-S")
        .arg(&script)
        .arg(jwks)
        .arg(token)
        .arg(tool)
        .env("PYTHONPATH", &tools)
        .output_bounded()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() {
        Ok(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}")))
    } else {
        assert_eq!(
            out.status.code(),
            Some(1),
            "the script itself failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Err(text)
    }
}

/// A scratch file path in `dir`.
pub fn scratch(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
