//! The command line an engine gives an OCI runtime (runc's and crun's shape: global options,
//! a subcommand, its options, the container id), read only as far as the wrapper needs; the
//! real runtime gets it back untouched, less the wrapper's own `--agentcage-*` options.

use std::{ffi::OsString, path::PathBuf};

/// The wrapper's own options, removed before the real runtime sees the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Own {
    /// `--agentcage-socket PATH`: the daemon's control socket.
    pub socket: Option<PathBuf>,
    /// `--agentcage-runtime PATH`: the real runtime.
    pub runtime: Option<PathBuf>,
}

/// What the engine asked for, as far as the wrapper cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `create` or `run`: a container is made from a bundle.
    Create {
        /// The bundle directory (`--bundle`, else the working directory).
        bundle: Option<PathBuf>,
        /// The container id.
        id: String,
    },
    /// `exec`: a process started in a running container.
    Exec {
        /// The container id.
        id: String,
        /// `--process FILE`: the process's JSON.
        process: Option<PathBuf>,
        /// `--cap` values: capabilities added to the process.
        caps: Vec<String>,
    },
    /// The wrapper's hook (`agentcage-hook`), run by the runtime at `createRuntime`.
    Hook {
        /// `--agent NAME`.
        agent: String,
        /// `--meta JSON`: the container's description.
        meta: String,
    },
    /// `agentcage-install DIR`: copies this program into DIR (a node's runtime directory,
    /// from the DaemonSet's init container).
    Install {
        /// Where to.
        dir: PathBuf,
    },
    /// Anything else: passed to the real runtime unchanged.
    Other,
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// The wrapper's options.
    pub own: Own,
    /// The arguments for the real runtime (ours removed), in order.
    pub runtime_args: Vec<OsString>,
    /// The global options before the subcommand (for `state` calls to the real runtime).
    pub globals: Vec<OsString>,
    /// The subcommand.
    pub command: Command,
}

/// The subcommand name of the wrapper's hook.
pub const HOOK: &str = "agentcage-hook";

/// The subcommand that installs the wrapper on a node.
pub const INSTALL: &str = "agentcage-install";

/// Global options of runc and crun that take a value.
const GLOBAL_VALUES: &[&str] = &[
    "--root",
    "--log",
    "--log-format",
    "--log-level",
    "--criu",
    "--rootless",
    "--cgroup-manager",
];

/// Options of `create`/`run` that take a value.
const CREATE_VALUES: &[&str] = &[
    "--bundle",
    "-b",
    "--console-socket",
    "--pid-file",
    "--preserve-fds",
];

/// Options of `exec` that take a value.
const EXEC_VALUES: &[&str] = &[
    "--console-socket",
    "--cwd",
    "--env",
    "-e",
    "--process",
    "-p",
    "--pid-file",
    "--process-label",
    "--apparmor",
    "--user",
    "-u",
    "--additional-gids",
    "-g",
    "--cap",
    "-c",
    "--preserve-fds",
    "--cgroup",
];

/// Hook options.
const HOOK_VALUES: &[&str] = &["--agent", "--meta"];

/// One option with its value, read from `args` at `i` (`--name=value` or `--name value`).
fn option_value(
    args: &[String],
    i: &mut usize,
    names: &[&str],
) -> Option<(String, Option<String>)> {
    let arg = &args[*i];
    if let Some((name, value)) = arg.split_once('=') {
        if names.contains(&name) {
            return Some((name.to_owned(), Some(value.to_owned())));
        }
        return None;
    }
    if names.contains(&arg.as_str()) {
        *i += 1;
        return Some((arg.clone(), args.get(*i).cloned()));
    }
    None
}

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// An argument is not UTF-8 (ids, paths and options the wrapper reads must be).
    #[error("argument {0:?} is not UTF-8")]
    NotUtf8(OsString),
    /// An option lacks its value.
    #[error("option {0} needs a value")]
    NoValue(String),
    /// The subcommand lacks its container id.
    #[error("{0}: no container id")]
    NoId(String),
}

/// Parses what an engine (or the runtime, for the hook) gave the wrapper.
pub fn parse(raw: Vec<OsString>) -> Result<Invocation, ArgsError> {
    let args: Vec<String> = raw
        .into_iter()
        .map(|a| a.into_string().map_err(ArgsError::NotUtf8))
        .collect::<Result<_, _>>()?;
    let mut own = Own::default();
    let mut rest = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        match option_value(
            &args,
            &mut i,
            &["--agentcage-socket", "--agentcage-runtime"],
        ) {
            Some((name, value)) => {
                let value = PathBuf::from(value.ok_or(ArgsError::NoValue(name.clone()))?);
                if name == "--agentcage-socket" {
                    own.socket = Some(value);
                } else {
                    own.runtime = Some(value);
                }
            }
            None => rest.push(args[i].clone()),
        }
        i += 1;
    }
    // Global options, up to the subcommand.
    let mut i = 0;
    while i < rest.len() && rest[i].starts_with('-') {
        option_value(&rest, &mut i, GLOBAL_VALUES);
        i += 1;
    }
    let globals = rest[..i.min(rest.len())].to_vec();
    let sub = rest.get(i).cloned().unwrap_or_default();
    let tail: Vec<String> = rest
        .get(i + 1..)
        .map(<[String]>::to_vec)
        .unwrap_or_default();
    let command = match sub.as_str() {
        "create" | "run" => {
            let (opts, positional) = split(&tail, CREATE_VALUES)?;
            let bundle = opts
                .iter()
                .find(|(n, _)| n == "--bundle" || n == "-b")
                .map(|(_, v)| PathBuf::from(v));
            let id = positional
                .last()
                .cloned()
                .ok_or_else(|| ArgsError::NoId(sub.clone()))?;
            Command::Create { bundle, id }
        }
        "exec" => {
            let (opts, positional) = split_until_first_positional(&tail, EXEC_VALUES)?;
            let id = positional.ok_or_else(|| ArgsError::NoId(sub.clone()))?;
            Command::Exec {
                id,
                process: opts
                    .iter()
                    .find(|(n, _)| n == "--process" || n == "-p")
                    .map(|(_, v)| PathBuf::from(v)),
                caps: opts
                    .iter()
                    .filter(|(n, _)| n == "--cap" || n == "-c")
                    .map(|(_, v)| v.clone())
                    .collect(),
            }
        }
        HOOK => {
            let (opts, _) = split(&tail, HOOK_VALUES)?;
            let get = |name: &str| {
                opts.iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| ArgsError::NoValue(name.to_owned()))
            };
            Command::Hook {
                agent: get("--agent")?,
                meta: get("--meta")?,
            }
        }
        INSTALL => Command::Install {
            dir: tail
                .first()
                .map(PathBuf::from)
                .ok_or_else(|| ArgsError::NoValue(INSTALL.to_owned()))?,
        },
        _ => Command::Other,
    };
    Ok(Invocation {
        own,
        runtime_args: rest.into_iter().map(OsString::from).collect(),
        globals: globals.into_iter().map(OsString::from).collect(),
        command,
    })
}

type Options = Vec<(String, String)>;

/// Options with values (flags are skipped) and positional arguments.
fn split(args: &[String], values: &[&str]) -> Result<(Options, Vec<String>), ArgsError> {
    let mut opts = Vec::new();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if let Some((name, value)) = option_value(args, &mut i, values) {
            opts.push((name.clone(), value.ok_or(ArgsError::NoValue(name))?));
        } else if !args[i].starts_with('-') {
            positional.push(args[i].clone());
        }
        i += 1;
    }
    Ok((opts, positional))
}

/// `exec ID COMMAND...`: options up to the id; what follows the id is the command's.
fn split_until_first_positional(
    args: &[String],
    values: &[&str],
) -> Result<(Options, Option<String>), ArgsError> {
    let mut opts = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if let Some((name, value)) = option_value(args, &mut i, values) {
            opts.push((name.clone(), value.ok_or(ArgsError::NoValue(name))?));
        } else if !args[i].starts_with('-') {
            return Ok((opts, Some(args[i].clone())));
        }
        i += 1;
    }
    Ok((opts, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Invocation {
        parse(s.split_whitespace().map(OsString::from).collect()).unwrap()
    }

    #[test]
    fn containerds_create_line() {
        let inv = parse_str(
            "--root /run/containerd/runc/moby --log /x/log.json --log-format json \
             --systemd-cgroup create --bundle /b --pid-file /b/init.pid c1",
        );
        assert_eq!(
            inv.command,
            Command::Create {
                bundle: Some("/b".into()),
                id: "c1".into()
            }
        );
        assert_eq!(inv.globals.len(), 7);
        assert_eq!(inv.runtime_args.len(), 13);
        assert_eq!(inv.own, Own::default());
    }

    #[test]
    fn own_options_are_taken_out_in_either_form() {
        let inv = parse_str(
            "--agentcage-socket=/s --root /r --agentcage-runtime /usr/sbin/runc run -b=/b --detach c2",
        );
        assert_eq!(inv.own.socket.as_deref(), Some("/s".as_ref()));
        assert_eq!(inv.own.runtime.as_deref(), Some("/usr/sbin/runc".as_ref()));
        let args: Vec<_> = inv
            .runtime_args
            .iter()
            .map(|a| a.to_str().unwrap())
            .collect();
        assert_eq!(args, ["--root", "/r", "run", "-b=/b", "--detach", "c2"]);
        assert_eq!(
            inv.command,
            Command::Create {
                bundle: Some("/b".into()),
                id: "c2".into()
            }
        );
    }

    #[test]
    fn exec_takes_the_id_before_the_command() {
        let inv = parse_str(
            "--root /r exec --process /p.json -c CAP_SYS_ADMIN --cap=CAP_BPF -d c3 sh -c x",
        );
        assert_eq!(
            inv.command,
            Command::Exec {
                id: "c3".into(),
                process: Some("/p.json".into()),
                caps: vec!["CAP_SYS_ADMIN".into(), "CAP_BPF".into()],
            }
        );
    }

    #[test]
    fn hooks_and_other_commands() {
        let inv = parse_str("agentcage-hook --agent web --meta {}");
        assert_eq!(
            inv.command,
            Command::Hook {
                agent: "web".into(),
                meta: "{}".into()
            }
        );
        assert_eq!(
            parse_str("--root /r delete --force c1").command,
            Command::Other
        );
        assert_eq!(parse_str("--version").command, Command::Other);
        assert!(parse(vec!["create".into(), "--bundle".into()]).is_err());
    }
}
