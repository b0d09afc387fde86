//! Behavior certificates, end to end: made, signed and verified with the real CLI; with
//! `certificate: required` the real daemon starts the agent and issues it credentials only
//! with a valid certificate for the policy in force, and stamps its id on the agent's events.

use agentcage_tests::bounded::Bounded as _;
use std::{fs, path::Path, process::Command};

use agentcage_tests::{harness, identity};

use harness::{assert_refused, stderr, stdout, Daemon};
use serde_json::json;

const POLICY: &str = r#"version: 1
agents:
  payer:
    identity:
      owner: team-payments
      purpose: pays refunds
      data_classes: [payments]
      tools: [payments]
      models: [m-large]
    credentials:
      - tool: payments
        methods: [POST]
        resources: ["/payouts/*"]
    certificate: required
  helper: {}
"#;

const TESTS: &str = "running 12 tests\ntest result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out\n";

/// `agentcage cert create` for payer under `policy` into `cert`.
fn create(daemon: &Daemon, policy: &Path, cert: &Path, dir: &Path) {
    let tests = dir.join("results.txt");
    fs::write(&tests, TESTS).unwrap();
    let trace = dir.join("trace.jsonl");
    fs::write(&trace, "{\"kind\":\"session\"}\n").unwrap();
    let out = daemon
        .cli()
        .args(["cert", "create", "--agent", "payer", "--policy"])
        .arg(policy)
        .arg("--tests")
        .arg(&tests)
        .arg("--traces")
        .arg(&trace)
        .arg("-o")
        .arg(cert)
        .output_bounded()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

fn verify(daemon: &Daemon, cert: &Path, policy: &Path, trust: &[&Path]) -> std::process::Output {
    let mut c = daemon.cli();
    c.args(["cert", "verify"])
        .arg(cert)
        .arg("--against-policy")
        .arg(policy);
    for t in trust {
        c.arg("--trust").arg(t);
    }
    c.output_bounded().unwrap()
}

fn sign(daemon: &Daemon, cert: &Path, key: Option<&Path>) {
    let mut c = daemon.cli();
    c.args(["cert", "sign"]).arg(cert);
    if let Some(k) = key {
        c.arg("--key").arg(k);
    }
    let out = c.output_bounded().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Changes one byte of the certificate's payload (decoded), keeping its signatures.
fn tamper(cert: &Path, out: &Path) {
    let mut envelope: serde_json::Value = serde_json::from_slice(&fs::read(cert).unwrap()).unwrap();
    let payload = envelope["payload"].as_str().unwrap().to_owned();
    let mut body = base64_decode(&payload);
    let at = body
        .iter()
        .position(|b| *b == b'1')
        .expect("a digit to change");
    body[at] = b'2';
    envelope["payload"] = json!(base64_encode(&body));
    fs::write(out, serde_json::to_vec(&envelope).unwrap()).unwrap();
}

fn base64_decode(text: &str) -> Vec<u8> {
    let out = pipe("base64", &["-d"], text.as_bytes());
    assert!(!out.is_empty());
    out
}

fn base64_encode(bytes: &[u8]) -> String {
    String::from_utf8(pipe("base64", &["-w0"], bytes)).unwrap()
}

fn pipe(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut p = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(input).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(out.status.success(), "{program} failed");
    out.stdout
}

#[test]
fn unsigned_tampered_and_foreign_certificates_fail_verification() {
    let (daemon, _conf) = identity::daemon(POLICY);
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("payer.json");
    create(&daemon, &daemon.policy, &cert, dir.path());
    let unsigned = verify(&daemon, &cert, &daemon.policy, &[]);
    assert_eq!(unsigned.status.code(), Some(1));
    assert!(
        stderr(&unsigned).contains("unsigned"),
        "{}",
        stderr(&unsigned)
    );

    // The node key, through the daemon.
    sign(&daemon, &cert, None);
    let ok = verify(&daemon, &cert, &daemon.policy, &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let tampered = dir.path().join("tampered.json");
    tamper(&cert, &tampered);
    let bad = verify(&daemon, &tampered, &daemon.policy, &[]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("changed after it was signed"),
        "{}",
        stderr(&bad)
    );

    // A key of the user's: unknown until trusted.
    let key = dir.path().join("ci.pem");
    let public = dir.path().join("ci.pub.pem");
    let gen = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .output_bounded()
        .unwrap();
    assert!(gen.status.success(), "{}", stderr(&gen));
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pubout = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .output_bounded()
        .unwrap();
    assert!(pubout.status.success(), "{}", stderr(&pubout));
    let ci = dir.path().join("ci-signed.json");
    create(&daemon, &daemon.policy, &ci, dir.path());
    sign(&daemon, &ci, Some(&key));
    let unknown = verify(&daemon, &ci, &daemon.policy, &[]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("unknown key"),
        "{}",
        stderr(&unknown)
    );
    let trusted = verify(&daemon, &ci, &daemon.policy, &[&public]);
    assert!(trusted.status.success(), "{}", stderr(&trusted));

    // What it says: the configuration and the test run, by digest and summary.
    let show = daemon
        .cli()
        .args(["cert", "show"])
        .arg(&cert)
        .output_bounded()
        .unwrap();
    let text = stdout(&show);
    let statement: serde_json::Value =
        serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    let p = &statement["predicate"];
    assert_eq!(p["tools"], json!(["payments"]));
    assert_eq!(p["models"], json!(["m-large"]));
    assert_eq!(
        p["tests"]["summary"],
        json!({"passed": 12, "failed": 0, "skipped": 1})
    );
    assert_eq!(p["tests"]["digest"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(p["traces"].as_array().unwrap().len(), 1);

    // A failing run is not certified.
    let failing = dir.path().join("failing.txt");
    fs::write(
        &failing,
        "test result: FAILED. 3 passed; 1 failed; 0 ignored\n",
    )
    .unwrap();
    let out = daemon
        .cli()
        .args(["cert", "create", "--agent", "payer", "--policy"])
        .arg(&daemon.policy)
        .arg("--tests")
        .arg(&failing)
        .arg("-o")
        .arg(dir.path().join("no.json"))
        .output_bounded()
        .unwrap();
    assert_refused(&out, "1 test(s) failed");
    daemon.stop();
}

#[test]
fn a_required_certificate_gates_run_and_credentials_and_a_policy_change_invalidates_it() {
    let (daemon, _conf) = identity::daemon(POLICY);
    let events = daemon.follow_events();
    // Any operation that succeeds in a cage.
    let op = ["list", "/"];

    // No certificate: `run` refuses the agent; agents without the requirement run.
    let refused = daemon.probe_in("payer", &op);
    assert_refused(&refused, "requires a behavior certificate");
    let helper = daemon.probe_in("helper", &op);
    assert!(helper.status.success(), "{}", stderr(&helper));

    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(daemon.certificate_dir()).unwrap();
    let installed = daemon.certificate_dir().join("payer.json");
    create(&daemon, &daemon.policy, &installed, dir.path());
    let unsigned = daemon.probe_in("payer", &op);
    assert_refused(&unsigned, "unsigned");
    sign(&daemon, &installed, None);
    let show = daemon
        .cli()
        .args(["cert", "show"])
        .arg(&installed)
        .output_bounded()
        .unwrap();
    let id = stdout(&show)
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("id ")
        .to_owned();

    // Certified: it runs, its events carry the certificate, its tokens name it.
    let mut cage = identity::cage(&daemon, "payer");
    let start = events.wait_event("payer's session", |e| {
        e["kind"] == "session" && e["agent"] == "agent:payer" && e["action"] == "start"
    });
    assert_eq!(start["certificate"], id.as_str(), "{start}");
    let (token, reply) = identity::grant(
        &mut cage,
        &json!({"tool":"payments","method":"POST","resource":"/payouts/7"}),
    );
    let out = identity::cred_verify(&daemon, &token, "payments", "POST", "/payouts/7");
    let claims: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(claims["cert"], id.as_str());
    let agents = daemon
        .cli()
        .args(["agents", "-o", "json"])
        .output_bounded()
        .unwrap();
    let inventory: serde_json::Value = serde_json::from_slice(&agents.stdout).unwrap();
    let payer = inventory
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "payer")
        .unwrap();
    assert_eq!(payer["certificate"]["state"], "valid", "{payer}");
    assert_eq!(payer["identity"]["owner"], "team-payments");
    assert_eq!(payer["running"], true);

    // The policy changes: the certificate is bound to the old hash.
    let changed = POLICY.replace("pays refunds", "pays refunds and invoices");
    let out = daemon.rewrite_policy(&changed);
    assert!(out.status.success(), "{}", stderr(&out));
    let revoked = events.wait_event("the revocation", |e| {
        e["kind"] == "credential" && e["action"] == "revoked"
    });
    assert_eq!(revoked["jti"], reply["jti"]);
    let again = identity::request(
        &mut cage,
        &json!({"tool":"payments","method":"POST","resource":"/payouts/8"}),
    );
    assert_eq!(again["reason"], "certificate", "{again}");
    let stale = verify(&daemon, &installed, &daemon.policy, &[]);
    assert_eq!(stale.status.code(), Some(1));
    assert!(
        stderr(&stale).contains("policy changed"),
        "{}",
        stderr(&stale)
    );
    cage.finish();
    let refused = daemon.probe_in("payer", &op);
    assert_refused(&refused, "the policy changed since the agent was certified");
    daemon.stop();
}
