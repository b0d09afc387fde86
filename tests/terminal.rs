//! `agentcage run` in a real terminal (tmux: `send-keys` types, `capture-pane` reads): the
//! agent gets a pseudo-terminal and session of its own, so nothing it does reaches the
//! operator's terminal (TIOCSTI, settings); full-screen programs, resizes, Ctrl-C and the
//! agent's own job control work; pipes stay pipes; sessions are recorded as asciicast v2.
//! Each attack also runs with `--no-pty`, where it must succeed: the tests can fail.

use agentcage_tests::{harness, tmux};

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use harness::{agentcage, deadline, stderr, stdout, Daemon};
use tmux::Tmux;

const POLICY: &str = "version: 1
agents:
  t: {}
  rec:
    record: always
";

/// An attacker in the cage: pushes `LINE` and a newline into a terminal's input with TIOCSTI
/// (`stdin`, or the controlling terminal through /dev/tty).
const INJECT: &str = r#"
import fcntl, os, sys, termios
try:
    fd = 0 if sys.argv[1] == "stdin" else os.open("/dev/tty", os.O_RDWR)
    for c in sys.argv[2] + "\n":
        fcntl.ioctl(fd, termios.TIOCSTI, c.encode())
    print("injected")
except OSError as e:
    print("refused errno", e.errno)
"#;

/// Whether this kernel lets an unprivileged process use TIOCSTI on its own terminal (no
/// sysctl before 6.2: always).
fn legacy_tiocsti() -> bool {
    fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti").map_or(true, |v| v.trim() == "1")
}

/// Runs the injecting agent with `flags` and `redirect`, then a marker command in the
/// operator's shell; returns whether the injected command ran there.
fn injection_reached_the_shell(tmux: &Tmux, flags: &str, via: &str, redirect: &str) -> bool {
    let script = tmux.path("inject.py");
    fs::write(&script, INJECT).unwrap();
    let marker = tmux.path(&format!("pwned-{}", tmux.commands.get()));
    let injected = format!("touch {}; echo INJECTED-$((6*7))", marker.display());
    let status = tmux.run(&format!(
        "$A run --agent t {flags} -- /usr/bin/python3 {} {via} '{injected}' {redirect}",
        script.display()
    ));
    assert_eq!(status, 0);
    // Whatever the injection queued in the shell's input runs before this.
    assert_eq!(tmux.run("echo DONE-$((1+1))"), 0);
    let ran = tmux.history().lines().any(|l| l.trim() == "INJECTED-42");
    assert_eq!(ran, marker.exists(), "{}", tmux.history());
    ran
}

#[test]
fn tiocsti_from_the_agent_never_reaches_the_operators_shell() {
    let daemon = Daemon::start(POLICY);
    let tmux = Tmux::start(&daemon, 120, 40);
    // On its own terminal, the agent only fills its own input.
    assert!(!injection_reached_the_shell(&tmux, "", "stdin", ""));
    assert!(
        tmux.history().contains("injected"),
        "the attack itself ran: {}",
        tmux.history()
    );
    // Without a terminal on its standard descriptors it has a session of its own and no
    // controlling terminal: /dev/tty is not the operator's.
    let out = tmux.path("detached.out");
    let redirect = format!("</dev/null >{} 2>&1", out.display());
    assert!(!injection_reached_the_shell(&tmux, "", "tty", &redirect));
    let said = fs::read_to_string(&out).unwrap();
    assert!(said.contains("refused errno 6"), "ENXIO expected: {said}");
    if legacy_tiocsti() {
        // The control: sharing the operator's terminal, the same attack runs in its shell.
        assert!(injection_reached_the_shell(&tmux, "--no-pty", "stdin", ""));
        assert!(injection_reached_the_shell(
            &tmux, "--no-pty", "tty", &redirect
        ));
        assert!(tmux
            .history()
            .contains("--no-pty: the agent shares your terminal"));
    } else {
        eprintln!("dev.tty.legacy_tiocsti is 0: the --no-pty control cannot inject here");
    }
    daemon.stop();
}

/// An attacker in the cage: leaves a process behind that ignores the job-control signals and
/// keeps taking the foreground of its terminal to read what is typed there after the agent
/// has exited (into `STOLEN`); `LOG` says when its terminal hung up.
const STEAL: &str = r#"
import os, signal, sys, time
stolen, log = sys.argv[1], sys.argv[2]
if os.fork() == 0:
    for s in (signal.SIGTTOU, signal.SIGTTIN, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    end = time.time() + 20
    noted = False
    while time.time() < end:
        try:
            os.tcsetpgrp(0, os.getpgrp())
        except OSError:
            pass
        try:
            data = os.read(0, 1024)
        except OSError:
            data = b""
        if data:
            with open(stolen, "ab") as f:
                f.write(data)
        else:
            if not noted:
                with open(log, "w") as f:
                    f.write("hangup\n")
                noted = True
            time.sleep(0.01)
    os._exit(0)
print("left a reader behind")
"#;

#[test]
fn what_the_operator_types_after_the_agent_exited_is_not_readable_by_it() {
    let daemon = Daemon::start(POLICY);
    let tmux = Tmux::start(&daemon, 100, 30);
    let script = tmux.path("steal.py");
    fs::write(&script, STEAL).unwrap();
    // The agent (a uid of its own) writes what it stole and its log beside the script.
    use std::os::unix::fs::PermissionsExt as _;
    let dir = script.parent().unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
    let (stolen, log, typed) = (tmux.path("stolen"), tmux.path("log"), tmux.path("typed"));
    let status = tmux.run(&format!(
        "$A run --agent t -- /usr/bin/python3 {} {} {}",
        script.display(),
        stolen.display(),
        log.display()
    ));
    assert_eq!(status, 0);
    // The reader it left behind is still there, and its terminal has hung up. (With
    // --no-pty the terminal is the operator's, which never hangs up: this wait fails.)
    let end = Instant::now() + deadline();
    while !fs::read_to_string(&log).is_ok_and(|l| l.contains("hangup")) {
        assert!(
            Instant::now() < end,
            "the reader never saw its terminal end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!daemon.status()["agents"][0]["pids"]
        .as_array()
        .unwrap()
        .is_empty());
    let n = tmux.start_command(&format!("cat > {}", typed.display()));
    tmux.line("typed-secret");
    tmux.key("C-d");
    assert_eq!(tmux.exit_of(n), 0);
    assert_eq!(fs::read_to_string(&typed).unwrap(), "typed-secret\n");
    assert!(!stolen.exists(), "the agent read: {:?}", fs::read(&stolen));
    let out = daemon.cli().args(["kill", "t"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    daemon.stop();
}

#[test]
fn a_full_screen_program_works_and_follows_resizes() {
    let daemon = Daemon::start(POLICY);
    let tmux = Tmux::start(&daemon, 100, 30);
    let file = tmux.path("lines");
    let text: String = (1..=300).map(|i| format!("line-{i:03}\n")).collect();
    fs::write(&file, text).unwrap();
    let n = tmux.start_command(&format!("$A run --agent t -- less {}", file.display()));
    // A 30-row screen: 29 lines and less's prompt.
    let first = |s: &str| s.lines().next().unwrap_or("").trim().to_owned();
    tmux.wait_for("less's first page", |_| {
        let s = tmux.screen();
        first(&s) == "line-001" && s.contains("line-029") && !s.contains("line-030")
    });
    tmux.tmux(&["resize-window", "-t", "t", "-x", "80", "-y", "12"]);
    // less learns the new size only through SIGWINCH on its terminal: paging now moves by
    // 11 lines, not 29.
    tmux.wait_for("less to redraw for 12 rows", |_| {
        let s = tmux.screen();
        s.lines().count() <= 12 && first(&s) == "line-001" && s.contains("line-011")
    });
    tmux.key("Space");
    tmux.wait_for("the next 11-line page", |_| {
        let s = tmux.screen();
        first(&s) == "line-012" && s.contains("line-022") && !s.contains("line-023")
    });
    tmux.key("q");
    assert_eq!(tmux.exit_of(n), 0);
    daemon.stop();
}

/// The agent changes its terminal's settings and waits; Ctrl-C ends it.
const CHANGES_ITS_TERMINAL: &str =
    "sh -c 'stty -echo -icanon -isig 2>/dev/null; stty isig; echo READY; exec sleep 1000'";

#[test]
fn ctrl_c_stops_the_agent_and_the_operators_terminal_is_unchanged() {
    let daemon = Daemon::start(POLICY);
    let tmux = Tmux::start(&daemon, 100, 30);
    let before = tmux.stty();
    let n = tmux.start_command(&format!("$A run --agent t -- {CHANGES_ITS_TERMINAL}"));
    tmux.wait_for("the agent", |s| s.lines().any(|l| l.trim() == "READY"));
    tmux.key("C-c");
    assert_eq!(tmux.exit_of(n), 130, "SIGINT's exit status is passed on");
    assert_eq!(tmux.stty(), before);

    // The control: sharing the terminal, the agent's settings stay behind.
    let n = tmux.start_command(&format!(
        "$A run --no-pty --agent t -- {CHANGES_ITS_TERMINAL}"
    ));
    tmux.wait_for("the agent", |s| {
        s.lines().filter(|l| l.trim() == "READY").count() == 2
    });
    tmux.key("C-c");
    assert_eq!(tmux.exit_of(n), 130);
    let after = tmux.stty();
    assert_ne!(after, before, "the control changed nothing");
    assert!(after.contains("-echo"), "{after}");
    tmux.line("stty sane");
    daemon.stop();
}

#[test]
fn the_terminal_is_restored_when_run_is_signalled_the_cage_killed_or_the_daemon_gone() {
    let daemon = Daemon::start(POLICY);
    let tmux = Tmux::start(&daemon, 100, 30);
    let before = tmux.stty();
    let agent = "sh -c 'stty -echo; echo READY; exec sleep 1000'";
    let ready = |count: usize| {
        tmux.wait_for("the agent", |s| {
            s.lines().filter(|l| l.trim() == "READY").count() == count
        });
    };

    // A signal to run: forwarded, and the agent's status passed on.
    let n = tmux.start_command(&format!("$A run --agent t -- {agent}"));
    ready(1);
    let run_pid = pid_of_run();
    Command::new("kill")
        .args(["-TERM", &run_pid.to_string()])
        .status()
        .unwrap();
    assert_eq!(tmux.exit_of(n), 128 + 15);
    assert_eq!(tmux.stty(), before);

    // The cage killed.
    let n = tmux.start_command(&format!("$A run --agent t -- {agent}"));
    ready(2);
    let out = daemon.cli().args(["kill", "t"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tmux.exit_of(n), 128 + 9);
    assert_eq!(tmux.stty(), before);

    // The daemon gone: the agent goes on (its cage stays enforced) and ends as usual.
    let n = tmux.start_command(&format!("$A run --agent t -- {agent}"));
    ready(3);
    let (_dir, _policy, _socket, _name) = daemon.kill_keeping_paths();
    tmux.key("C-c");
    assert_eq!(tmux.exit_of(n), 130);
    assert_eq!(tmux.stty(), before);
}

/// The pid of the one `agentcage run` process whose agent says READY (ours: its parent is
/// this test's tmux shell).
fn pid_of_run() -> u32 {
    let me = agentcage();
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.first() == Some(&me.as_bytes())
            && args.iter().any(|a| a == b"run")
            && args
                .iter()
                .any(|a| a.ends_with(b"exec sleep 1000'") || a.ends_with(b"exec sleep 1000"))
        {
            found.push(pid);
        }
    }
    assert_eq!(found.len(), 1, "expected one run process: {found:?}");
    found[0]
}

#[test]
fn job_control_of_the_agents_own_shell_works() {
    let daemon = Daemon::start(POLICY);
    let tmux = Tmux::start(&daemon, 100, 30);
    let n = tmux.start_command("$A run --agent t -- env PS1='INNER$ ' bash --norc --noprofile -i");
    let prompts = |s: &str| s.lines().filter(|l| l.starts_with("INNER$")).count();
    // The shell's own prompt, at the start of a line (the command line above names it too).
    tmux.wait_for("the agent's shell", |s| prompts(s) == 1);
    tmux.line("sleep 1000");
    tmux.wait_for("sleep to start", |s| s.contains("INNER$ sleep 1000"));
    // Ctrl-Z stops the shell's foreground job, not the shell.
    tmux.key("C-z");
    tmux.wait_for("the job to stop", |s| {
        s.lines()
            .any(|l| l.contains("Stopped") && l.contains("sleep 1000"))
            && prompts(s) == 2
    });
    // fg gives it the terminal again; Ctrl-C then reaches the job, and the shell goes on.
    tmux.line("fg");
    tmux.wait_for("the job in the foreground", |s| {
        s.lines().any(|l| l.trim() == "sleep 1000")
    });
    tmux.key("C-c");
    tmux.wait_for("the shell's prompt after Ctrl-C", |s| prompts(s) == 3);
    tmux.line("exit 7");
    assert_eq!(tmux.exit_of(n), 7);
    daemon.stop();
}

#[test]
fn a_piped_run_passes_bytes_unchanged_through_the_same_pipes() {
    let daemon = Daemon::start(POLICY);
    // In the terminal, with stdout on it.
    let tmux = Tmux::start(&daemon, 100, 30);
    assert_eq!(
        tmux.run("echo piped-$((40+2)) | $A run --agent t -- cat"),
        0
    );
    assert!(
        tmux.history().lines().any(|l| l.trim() == "piped-42"),
        "{}",
        tmux.history()
    );
    // Without a terminal: every byte, and the agent's descriptors are our pipes themselves.
    let bytes: Vec<u8> = (0..=255u8).chain(*b"\r\n\x03\x04\x1a end").collect();
    let mut child = daemon
        .cli()
        .args(["run", "--agent", "t", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, &bytes).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, bytes);

    let (read, write) = std::io::pipe().unwrap();
    let (read_out, write_out) = std::io::pipe().unwrap();
    let inode = |f: &dyn std::os::fd::AsRawFd| {
        fs::metadata(format!("/proc/self/fd/{}", f.as_raw_fd()))
            .unwrap()
            .ino()
    };
    let (ino_in, ino_out) = (inode(&read), inode(&write_out));
    let mut child = daemon
        .cli()
        .args(["run", "--agent", "t", "--", "sh", "-c"])
        .arg("readlink /proc/self/fd/0 /proc/self/fd/1")
        .stdin(read)
        .stdout(write_out)
        .spawn()
        .unwrap();
    drop(write);
    let status = child.wait().unwrap();
    assert!(status.success());
    let mut links = String::new();
    std::io::Read::read_to_string(&mut { read_out }, &mut links).unwrap();
    assert_eq!(
        links,
        format!("pipe:[{ino_in}]\npipe:[{ino_out}]\n"),
        "the agent must hold the very pipes it was given"
    );
    daemon.stop();
}

fn cast_events(text: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut lines = text.lines();
    let header = serde_json::from_str(lines.next().expect("a header")).unwrap();
    let events = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    (header, events)
}

fn text_of(events: &[serde_json::Value], kind: &str) -> String {
    events
        .iter()
        .filter(|e| e[1] == kind)
        .map(|e| e[2].as_str().unwrap().to_owned())
        .collect()
}

/// `asciinema cat FILE` (asciinema from PyPI, installed by `cargo xtask setup`).
fn asciinema_cat(file: &Path) -> String {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/asciinema");
    assert!(
        tools.join("asciinema").is_dir(),
        "asciinema is missing from {}: run `cargo xtask setup`",
        tools.display()
    );
    let out = Command::new("python3")
        .args(["-m", "asciinema", "cat"])
        .arg(file)
        .env("PYTHONPATH", &tools)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "asciinema cat: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn record_writes_asciicast_v2_that_asciinema_prints_back() {
    let daemon = Daemon::start(POLICY);
    let tmux = Tmux::start(&daemon, 90, 25);
    let file = tmux.path("session.cast");
    let n = tmux.start_command(&format!(
        "$A run --agent t --record {} --record-input -- sh -c 'echo hello-$((2+3)); read l; echo got-$l'",
        file.display()
    ));
    tmux.wait_for("the agent's greeting", |s| {
        s.lines().any(|l| l.trim() == "hello-5")
    });
    tmux.line("typed");
    assert_eq!(tmux.exit_of(n), 0);
    let text = fs::read_to_string(&file).unwrap();
    let (header, events) = cast_events(&text);
    assert_eq!(header["version"], 2);
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(90), Some(25))
    );
    assert_eq!(header["title"], "agent:t");
    let output = text_of(&events, "o");
    assert!(output.contains("hello-5\r\n"), "{output:?}");
    assert!(output.contains("got-typed"), "{output:?}");
    assert!(text_of(&events, "i").contains("typed\r"), "{text}");
    let times: Vec<f64> = events.iter().map(|e| e[0].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let printed = asciinema_cat(&file);
    assert!(printed.contains("hello-5\r\n"), "{printed:?}");
    assert!(printed.contains("got-typed"), "{printed:?}");
    daemon.stop();
}

#[test]
fn a_policy_that_requires_recording_gets_a_private_bounded_recording_in_snapshots() {
    let recordings = tempfile::tempdir().unwrap();
    let dir = recordings.path().join("recordings");
    let daemon = Daemon::start_args(
        POLICY,
        &[
            "--recording-dir",
            dir.to_str().unwrap(),
            "--recording-max-bytes",
            "8192",
        ],
    );
    let tmux = Tmux::start(&daemon, 100, 30);
    let before = tmux.stty();
    // More output than the bound; then it waits to be killed.
    let n = tmux.start_command(
        "$A run --agent rec -- sh -c 'echo secret-$((3*3)); head -c 20000 /dev/zero | tr \"\\0\" y; echo; echo READY; exec sleep 1000'",
    );
    tmux.wait_for("the agent", |s| s.lines().any(|l| l.trim() == "READY"));
    assert!(
        tmux.history()
            .contains("requires a recording of this session"),
        "run says the session is recorded: {}",
        tmux.history()
    );
    let files: Vec<PathBuf> = fs::read_dir(dir.join("rec"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let rec = &files[0];
    let meta = fs::metadata(rec).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // A forensic snapshot names the live recording and carries its last kilobytes.
    let out = daemon.cli().args(["kill", "rec"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let snapshot = stdout(&out)
        .split("(snapshot ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("no snapshot in {}", stdout(&out)))
        .to_owned();
    assert_eq!(tmux.exit_of(n), 137);
    assert_eq!(tmux.stty(), before);
    let snap: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&snapshot).unwrap()).unwrap();
    let listed = &snap["recordings"][0];
    assert_eq!(listed["path"], rec.display().to_string(), "{snap}");
    let tail = listed["tail"].as_str().unwrap();
    assert!(tail.contains("recording cut here"), "{tail}");

    let text = fs::read_to_string(rec).unwrap();
    assert!(text.len() <= 8192, "{} bytes", text.len());
    let (_, events) = cast_events(&text);
    assert!(text_of(&events, "o").contains("secret-9"), "{text}");
    let marker = events
        .iter()
        .find(|e| e[1] == "m")
        .expect("the cut's marker");
    assert!(marker[2]
        .as_str()
        .unwrap()
        .contains("size bound of 8192 bytes"));
    assert!(asciinema_cat(rec).contains("recording cut here"));

    // Runs that could not be recorded are refused, not run unrecorded.
    let refused = tmux.run("$A run --no-pty --agent rec -- true 2>&1");
    assert_ne!(refused, 0);
    assert!(
        tmux.history().contains("drop --no-pty"),
        "{}",
        tmux.history()
    );
    let mut outsider = Command::new("sleep").arg("1000").spawn().unwrap();
    let adopt = daemon.adopt("rec", outsider.id());
    let _ = outsider.kill();
    let _ = outsider.wait();
    harness::assert_refused(&adopt, "must be recorded");

    // Without a terminal the output goes through run's pipes, unchanged, into the file.
    let mut child = daemon
        .cli()
        .args(["run", "--agent", "rec", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"piped \xe2\x82\xac bytes\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"piped \xe2\x82\xac bytes\n");
    let others: Vec<String> = fs::read_dir(dir.join("rec"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != rec)
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(
        others.len(),
        2,
        "the refused run's and the piped run's: {others:?}"
    );
    let refused = others
        .iter()
        .find(|t| t.contains("drop --no-pty"))
        .expect("the refused run says so in its recording");
    assert_eq!(text_of(&cast_events(refused).1, "o"), "");
    let piped = others.iter().find(|t| t.contains("\"o\"")).unwrap();
    assert_eq!(text_of(&cast_events(piped).1, "o"), "piped € bytes\n");
    daemon.stop();
}
