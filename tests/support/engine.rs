//! A real container engine for the container suite: Debian's `dockerd` (docker.io, with its
//! containerd and runc; installed by `cargo xtask setup`) on a data root, exec root, pid
//! file and socket of its own under a temporary directory, so it touches nothing else on
//! the machine, with `agentcage-runtime` registered as the runtime `agentcage`, talking to
//! one test daemon. Images are made offline: a root file system holding busybox-static and
//! the probe (with the libraries it links), imported with `docker import`.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

use crate::{
    bins::{agentcage_runtime, probe},
    harness::{stderr, Daemon, Lines},
};

/// Debian's engine and client, by path: another `docker` earlier on PATH may be a client of
/// another version.
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's Docker client.
pub const DOCKER: &str = "/usr/bin/docker";
/// Debian's runc, which agentcage-runtime hands over to.
pub const RUNC: &str = "/usr/sbin/runc";
/// busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";
/// The image every test runs: busybox applets in /bin, the probe at /probe.
pub const IMAGE: &str = "agentcage-test:1";

/// One running dockerd.
pub struct Engine {
    child: Option<Child>,
    dir: tempfile::TempDir,
    socket: PathBuf,
    /// The engine's log (stderr).
    pub log: Lines,
}

impl Engine {
    /// Starts dockerd with the runtime `agentcage` talking to `daemon`, and imports
    /// [`IMAGE`]; waits until the engine answers.
    pub fn start(daemon: &Daemon) -> Self {
        for tool in [DOCKERD, DOCKER, RUNC, BUSYBOX] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: `cargo xtask setup` installs docker.io, runc and busybox-static"
            );
        }
        // Short paths: containerd's sockets live under the exec root.
        let dir = tempfile::Builder::new()
            .prefix("ace")
            .tempdir_in("/tmp")
            .unwrap();
        let config = dir.path().join("daemon.json");
        let runtime = serde_json::json!({
            "runtimes": {"agentcage": {
                "path": agentcage_runtime(),
                "runtimeArgs": [
                    format!("--agentcage-socket={}", daemon.socket.display()),
                    format!("--agentcage-runtime={RUNC}"),
                ],
            }}
        });
        fs::write(&config, runtime.to_string()).unwrap();
        let socket = dir.path().join("docker.sock");
        let mut child = Command::new(DOCKERD)
            .arg("--config-file")
            .arg(&config)
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dockerd");
        let log = Lines::spawn(child.stderr.take().unwrap());
        let engine = Self {
            child: Some(child),
            dir,
            socket,
            log,
        };
        // dockerd says so once its API serves, after its containerd is up.
        engine
            .log
            .wait_for("dockerd's API", |l| l.contains("API listen on"));
        engine.import_image();
        engine
    }

    /// `docker -H SOCKET ARGS...`, run to completion.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_cmd().args(args).output().expect("run docker")
    }

    /// `docker -H SOCKET`, to add arguments to.
    pub fn docker_cmd(&self) -> Command {
        let mut c = Command::new(DOCKER);
        c.arg("-H").arg(format!("unix://{}", self.socket.display()));
        c
    }

    /// Where the engine's runc keeps its containers' state (runc's `--root`).
    pub fn runc_root(&self) -> PathBuf {
        self.dir.path().join("exec/runtime-runc/moby")
    }

    /// The engine's log so far.
    pub fn log_text(&self) -> String {
        self.log.all.lock().unwrap().join("\n")
    }

    /// The full id of container `name`.
    pub fn id_of(&self, name: &str) -> String {
        let out = self.docker(&["inspect", "-f", "{{.Id}}", name]);
        assert!(out.status.success(), "inspect {name}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A field of `docker inspect` (a Go template) of container `name`.
    pub fn inspect(&self, name: &str, template: &str) -> String {
        let out = self.docker(&["inspect", "-f", template, name]);
        assert!(out.status.success(), "inspect {name}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Builds the root file system (busybox applets, the probe and its libraries) and
    /// imports it as [`IMAGE`].
    fn import_image(&self) {
        let root = self.dir.path().join("rootfs");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "cat", "ls", "true", "dd", "wget"] {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let probe = probe();
        fs::copy(&probe, root.join("probe")).unwrap();
        for lib in shared_libraries(&probe) {
            let to = root.join(lib.strip_prefix("/").unwrap());
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(&lib, &to).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
        }
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let out = self
            .docker_cmd()
            .args(["import", "-", IMAGE])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(
            tar.wait().unwrap().success(),
            "tar of the image's root failed"
        );
        assert!(out.status.success(), "docker import: {}", stderr(&out));
    }
}

/// The libraries `ldd` says `exe` loads, and its loader, by their real paths.
fn shared_libraries(exe: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(exe).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Containers first (their cgroups go with them), then the engine.
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        // dockerd leaves mounts under its roots (its network namespace's, layers of a
        // crash): they would keep the temporary directory from being removed.
        unmount_below(self.dir.path());
    }
}

/// Unmounts everything mounted below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&p)
            .stderr(Stdio::null())
            .status();
    }
}
