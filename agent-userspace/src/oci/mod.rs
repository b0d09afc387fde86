//! `agentcage-runtime`: an OCI runtime for container engines that cages containers naming
//! an agent, and hands everything to the real runtime (runc or crun).
//!
//! - A container without the `agentcage.agent` annotation (or Docker label) runs exactly as
//!   with the real runtime: the wrapper execs it with the same arguments.
//! - `create`/`run` of one with it: the daemon is asked whether the agent may run (an
//!   unknown agent is refused here, with the reason in the engine's error); the bundle's
//!   config loses the capabilities that could undo a cage, gets the agent's annotation, the
//!   application socket and, first among its `createRuntime` hooks, this program's hook; then
//!   the real runtime takes over. The runtime runs the hook once the container's init is in
//!   its cgroup and before the container's program starts: the hook asks the daemon to make
//!   that cgroup a cage of the agent, and a refusal fails the create.
//! - `exec` into a caged container: the process loses the same capabilities.
//!
//! The wrapper never stays between the engine and the runtime: it execs it.

pub mod args;
pub mod bundle;
mod hook;

use std::{
    ffi::OsString,
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
};

use serde_json::{json, Value};

use crate::{
    caps,
    control::{Client, ClientError, Request, Response, DEFAULT_SOCKET},
};
use args::{Command, Invocation};
use bundle::{Bundle, BundleError, AGENT_KEY};

/// Errors of the wrapper; each is written where the engine reports runtime errors.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The command line could not be read.
    #[error(transparent)]
    Args(#[from] args::ArgsError),
    /// The bundle could not be read, checked or written.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The daemon could not be asked.
    #[error("agentcaged could not be asked, so the container is not started uncaged: {0}")]
    Daemon(#[source] ClientError),
    /// The daemon refused.
    #[error("agentcage refused container {id} of agent {agent:?}: {message}")]
    Refused {
        /// The container.
        id: String,
        /// Its agent.
        agent: String,
        /// The daemon's reason.
        message: String,
    },
    /// The daemon answered something unexpected.
    #[error("agentcaged answered {0}")]
    Unexpected(String),
    /// No real runtime was found.
    #[error("no OCI runtime to hand over to: give --agentcage-runtime PATH or AGENTCAGE_RUNTIME, or install runc or crun")]
    NoRuntime,
    /// The real runtime could not be started.
    #[error("starting {path}: {source}")]
    Exec {
        /// The runtime.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An `exec` asks for a capability a cage must not hold.
    #[error(
        "agentcage refused exec in container {id} of agent {agent:?}: {caps:?} could undo its cage"
    )]
    ForbiddenCaps {
        /// The container.
        id: String,
        /// Its agent.
        agent: String,
        /// The capabilities asked for.
        caps: Vec<String>,
    },
    /// The hook's input was not the container state the OCI spec describes.
    #[error("the hook's container state: {0}")]
    State(String),
}

/// Runs the wrapper; returns the exit code when it does not exec the real runtime.
pub fn main(raw: Vec<OsString>) -> i32 {
    let inv = match args::parse(raw) {
        Ok(inv) => inv,
        Err(e) => return fail(None, &e.into()),
    };
    let log = LogTarget::of(&inv.globals);
    let result = match &inv.command {
        Command::Hook { agent, meta } => return hook::run(&socket(&inv), agent, meta),
        Command::Install { dir } => {
            return match install(dir) {
                Ok(path) => {
                    println!("agentcage-runtime installed as {}", path.display());
                    0
                }
                Err(e) => fail(None, &e),
            }
        }
        Command::Create { bundle, id } => create(&inv, bundle.as_deref(), id),
        Command::Exec { id, process, caps } => exec(&inv, id, process.as_deref(), caps),
        Command::Other => Ok(()),
    };
    match result.and_then(|()| hand_over(&inv)) {
        Ok(()) => 0,
        Err(e) => fail(Some(&log), &e),
    }
}

/// The daemon's control socket: `--agentcage-socket`, `AGENTCAGE_SOCKET`, or the default.
fn socket(inv: &Invocation) -> PathBuf {
    inv.own
        .socket
        .clone()
        .or_else(|| std::env::var_os("AGENTCAGE_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| DEFAULT_SOCKET.into())
}

/// The real runtime: `--agentcage-runtime`, `AGENTCAGE_RUNTIME`, else `runc` or `crun` on
/// PATH (never this program itself).
fn real_runtime(inv: &Invocation) -> Result<PathBuf, OciError> {
    if let Some(p) = inv
        .own
        .runtime
        .clone()
        .or_else(|| std::env::var_os("AGENTCAGE_RUNTIME").map(PathBuf::from))
    {
        return Ok(p);
    }
    let me = std::env::current_exe().and_then(|p| p.canonicalize()).ok();
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    for name in ["runc", "crun"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            let is_me = candidate.canonicalize().ok() == me;
            if candidate.is_file() && !is_me {
                return Ok(candidate);
            }
        }
    }
    Err(OciError::NoRuntime)
}

/// Execs the real runtime with the engine's arguments (less the wrapper's own).
fn hand_over(inv: &Invocation) -> Result<(), OciError> {
    let path = real_runtime(inv)?;
    let source = std::process::Command::new(&path)
        .args(&inv.runtime_args)
        .exec();
    Err(OciError::Exec { path, source })
}

/// Copies this program to `DIR/agentcage-runtime` (beside it first, then renamed, so an
/// engine never runs a half-written file).
fn install(dir: &Path) -> Result<PathBuf, OciError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OciError::Exec { path, source }
    };
    let me = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(".agentcage-runtime.new");
    let to = dir.join("agentcage-runtime");
    std::fs::copy(&me, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &to).map_err(io(&to))?;
    Ok(to)
}

/// The capabilities a caged container must not hold.
fn forbidden(raw_sockets: bool) -> Vec<&'static str> {
    caps::names(caps::forbidden_mask(raw_sockets))
}

/// `create`/`run`: a container naming an agent is made fit for a cage, with the hook.
fn create(inv: &Invocation, bundle: Option<&Path>, id: &str) -> Result<(), OciError> {
    let dir = match bundle {
        Some(b) => b.to_path_buf(),
        None => std::env::current_dir().map_err(|source| BundleError::Io {
            op: "finding",
            path: "the working directory (the default bundle)".into(),
            source,
        })?,
    };
    let mut bundle = Bundle::read(&dir)?;
    let Some((agent, meta)) = bundle.agent(id) else {
        return Ok(());
    };
    if bundle.is_sandbox() {
        // A pod's pause container runs the runtime's image, none of the agent's code.
        return Ok(());
    }
    let refused = |message: String| OciError::Refused {
        id: id.to_owned(),
        agent: agent.clone(),
        message,
    };
    bundle.check_fit().map_err(|e| refused(e.to_string()))?;
    let socket = socket(inv);
    let answer = Client::connect(&socket).and_then(|mut c| {
        c.call(&Request::ContainerPrepare {
            agent: agent.clone(),
        })
    });
    let (raw_sockets, app_socket) = match answer {
        Ok(Response::ContainerPrepared {
            raw_sockets,
            app_socket,
            ..
        }) => (raw_sockets, PathBuf::from(app_socket)),
        Ok(other) => return Err(OciError::Unexpected(format!("{other:?}"))),
        Err(ClientError::Refused(message)) => return Err(refused(message)),
        Err(e) => return Err(OciError::Daemon(e)),
    };
    let exe = std::env::current_exe().map_err(|source| OciError::Exec {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let meta_json = serde_json::to_string(&meta).unwrap_or_default();
    let hook = json!({
        "path": exe,
        "args": [
            exe,
            format!("--agentcage-socket={}", socket.display()),
            args::HOOK,
            format!("--agent={agent}"),
            format!("--meta={meta_json}"),
        ],
        "timeout": 30,
    });
    // The socket appears in the container only if it is there to mount.
    let app = app_socket.exists().then_some(app_socket.as_path());
    bundle.prepare(&agent, &forbidden(raw_sockets), hook, app);
    bundle.write()?;
    Ok(())
}

/// `exec` into a caged container: the process loses what a cage must not hold.
fn exec(
    inv: &Invocation,
    id: &str,
    process: Option<&Path>,
    asked: &[String],
) -> Result<(), OciError> {
    let Some(bundle) = state_bundle(inv, id) else {
        // Not a container the runtime knows: it will say so itself.
        return Ok(());
    };
    let Some(agent) = bundle.annotation(AGENT_KEY).map(str::to_owned) else {
        return Ok(());
    };
    // The container's bounding set says whether raw sockets were allowed at create.
    let forbidden = forbidden(bundle.bounding_has("CAP_NET_RAW"));
    let bad: Vec<String> = asked
        .iter()
        .filter(|c| forbidden.contains(&c.as_str()))
        .cloned()
        .collect();
    if !bad.is_empty() {
        return Err(OciError::ForbiddenCaps {
            id: id.to_owned(),
            agent,
            caps: bad,
        });
    }
    if let Some(path) = process {
        let text = std::fs::read(path).map_err(|source| BundleError::Io {
            op: "reading",
            path: path.to_path_buf(),
            source,
        })?;
        let mut value: Value =
            serde_json::from_slice(&text).map_err(|source| BundleError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        Bundle::strip_caps(&mut value, &forbidden);
        Bundle::from_value(path.to_path_buf(), value).write()?;
    }
    Ok(())
}

/// The bundle of container `id`, from the real runtime's `state`.
fn state_bundle(inv: &Invocation, id: &str) -> Option<Bundle> {
    let runtime = real_runtime(inv).ok()?;
    let out = std::process::Command::new(runtime)
        .args(&inv.globals)
        .arg("state")
        .arg(id)
        .output()
        .ok()?;
    let state: Value = serde_json::from_slice(&out.stdout).ok()?;
    Bundle::read(Path::new(state.get("bundle")?.as_str()?)).ok()
}

/// Where the engine reads a failed runtime's error: runc's `--log` file, in its
/// `--log-format` (containerd reports the last `error` line of a JSON log).
struct LogTarget {
    path: Option<PathBuf>,
    json: bool,
}

impl LogTarget {
    fn of(globals: &[OsString]) -> Self {
        let args: Vec<String> = globals
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let value = |name: &str| {
            args.iter().enumerate().find_map(|(i, a)| {
                a.strip_prefix(&format!("{name}="))
                    .map(str::to_owned)
                    .or_else(|| (a == name).then(|| args.get(i + 1).cloned()).flatten())
            })
        };
        Self {
            path: value("--log").map(PathBuf::from),
            json: value("--log-format").as_deref() == Some("json"),
        }
    }
}

/// Reports `e` on stderr and in the runtime log; returns the exit code.
fn fail(log: Option<&LogTarget>, e: &OciError) -> i32 {
    let message = crate::errors::render(e);
    eprintln!("agentcage-runtime: {message}");
    if let Some(LogTarget {
        path: Some(path),
        json,
    }) = log
    {
        let line = if *json {
            json!({
                "level": "error",
                "msg": message,
                "time": humantime::format_rfc3339(std::time::SystemTime::now()).to_string(),
            })
            .to_string()
        } else {
            format!("agentcage-runtime: {message}")
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    1
}
