//! `agentcage cred request|verify|list|revoke`: just-in-time credentials.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use clap::{Args, Subcommand};
use jsonwebtoken::jwk::JwkSet;

use super::{Cli, CliError, Command, Output};
use crate::{
    control::{
        credential::{CredentialMessage, CredentialReply, LiveCredential},
        Client, Request, Response,
    },
    credentials::{CredentialRequest, Expected},
};

/// Exit status of `cred request` when the credential is refused (and of `event` when the
/// action may not go ahead).
pub(super) const REFUSED: i32 = 3;

/// The tool, method and resource of one call.
#[derive(Clone, Debug, Args)]
pub struct Scope {
    /// The tool.
    #[arg(long)]
    tool: String,
    /// The method.
    #[arg(long)]
    method: String,
    /// The one resource.
    #[arg(long)]
    resource: String,
}

/// `agentcage cred ...`.
#[derive(Clone, Debug, Subcommand)]
pub enum CredCommand {
    /// From inside a cage: ask for a token for one tool call (printed alone on stdout).
    /// Exit status 3 when refused (the reason on stderr; `pending-approval` names the
    /// approval to decide).
    Request {
        /// What the token is for.
        #[command(flatten)]
        scope: Scope,
        /// How long the token should live (default 60s, never beyond the rule's max_ttl).
        #[arg(long)]
        ttl: Option<String>,
        /// The user the agent acts for (the grant stays inside that user's envelope).
        #[arg(long = "for", value_name = "USER")]
        on_behalf_of: Option<String>,
        /// Print the daemon's whole answer as JSON.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Check a token offline against the node's public keys (exit 0, or 1 with the reason):
    /// signature, expiry, tool, method and resource. Revocations are known to the daemon's
    /// verify endpoint only.
    Verify {
        /// The token (`-` reads it from stdin).
        token: String,
        /// What it must be good for.
        #[command(flatten)]
        scope: Scope,
        /// A JWKS document (`agentcage keys jwks > FILE`); the daemon's STATE_DIR/jwks.json
        /// by default.
        #[arg(long)]
        jwks: Option<PathBuf>,
    },
    /// The live credentials.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Revoke a live credential by id, or every live credential of an agent.
    Revoke {
        /// The token's id (`jti`).
        #[arg(required_unless_present = "agent", conflicts_with = "agent")]
        jti: Option<String>,
        /// Every live credential of this agent.
        #[arg(long)]
        agent: Option<String>,
    },
}

/// Sends one JSON line on the application socket and returns the answer line.
pub(super) fn app_round_trip(
    socket: &Path,
    message: &impl serde::Serialize,
) -> Result<String, CliError> {
    let stream = UnixStream::connect(socket)
        .map_err(CliError::os(format!("connecting to {}", socket.display())))?;
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(&line)
        .map_err(CliError::os("sending the message"))?;
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .map_err(CliError::os("reading the answer"))?;
    Ok(answer)
}

/// Runs `cred`.
pub fn dispatch(cli: &Cli) -> Result<i32, CliError> {
    let Command::Cred(command) = &cli.command else {
        return Err(CliError::Usage("not a cred command".into()));
    };
    match command {
        CredCommand::Request {
            scope,
            ttl,
            on_behalf_of,
            output,
        } => {
            let credential = CredentialRequest {
                tool: scope.tool.clone(),
                method: scope.method.clone(),
                resource: scope.resource.clone(),
                ttl: ttl.clone(),
                on_behalf_of: on_behalf_of.clone(),
            };
            credential.check().map_err(CliError::Usage)?;
            let message = CredentialMessage {
                agent: None,
                credential,
            };
            let answer = app_round_trip(&cli.app_socket, &message)?;
            let reply: CredentialReply = serde_json::from_str(&answer)
                .map_err(|e| CliError::Unexpected(format!("{e}: {answer:?}")))?;
            if *output == Output::Json {
                println!("{}", answer.trim());
            }
            match reply {
                CredentialReply::Granted { token, .. } => {
                    if *output == Output::Text {
                        println!("{token}");
                    }
                    Ok(0)
                }
                CredentialReply::Refused {
                    reason, message, ..
                } => {
                    eprintln!("refused ({reason}): {message}");
                    Ok(REFUSED)
                }
                CredentialReply::Error { message } => {
                    Err(crate::control::ClientError::Refused(message).into())
                }
            }
        }
        CredCommand::Verify { token, scope, jwks } => {
            let want = Expected {
                tool: &scope.tool,
                method: &scope.method,
                resource: &scope.resource,
            };
            verify(cli, token, want, jwks.as_deref())
        }
        CredCommand::List { output } => {
            match Client::connect(&cli.socket)?.call(&Request::Credentials {})? {
                Response::Credentials { credentials } => {
                    match output {
                        Output::Json => println!("{}", serde_json::to_string_pretty(&credentials)?),
                        Output::Text if credentials.is_empty() => println!("no live credentials"),
                        Output::Text => print_live(&credentials),
                    }
                    Ok(0)
                }
                other => Err(CliError::unexpected(&other)),
            }
        }
        CredCommand::Revoke { jti, agent } => {
            let request = Request::Revoke {
                jti: jti.clone(),
                agent: agent.clone(),
            };
            match Client::connect(&cli.socket)?.call(&request)? {
                Response::Credentials { credentials } => {
                    for c in &credentials {
                        println!(
                            "revoked {} (agent:{}, {} {})",
                            c.jti, c.agent, c.tool, c.scope
                        );
                    }
                    Ok(0)
                }
                other => Err(CliError::unexpected(&other)),
            }
        }
    }
}

/// The public keys of `--jwks FILE`, or of the daemon's state directory.
pub(super) fn read_jwks(cli: &Cli, file: Option<&Path>) -> Result<JwkSet, CliError> {
    let default = cli.state_dir.join("jwks.json");
    let path = file.unwrap_or(&default);
    let text = std::fs::read(path).map_err(CliError::os(format!(
        "reading the node's public keys at {} (give --jwks FILE, e.g. from `agentcage keys \
         jwks`)",
        path.display()
    )))?;
    serde_json::from_slice(&text)
        .map_err(|e| CliError::Usage(format!("{}: not a JWKS document: {e}", path.display())))
}

fn verify(
    cli: &Cli,
    token: &str,
    want: Expected<'_>,
    jwks: Option<&Path>,
) -> Result<i32, CliError> {
    let token = if token == "-" {
        let mut t = String::new();
        std::io::stdin()
            .read_to_string(&mut t)
            .map_err(CliError::os("reading the token from stdin"))?;
        t.trim().to_owned()
    } else {
        token.to_owned()
    };
    let keys = read_jwks(cli, jwks)?;
    let now = crate::clock::now_unix_nano() / 1_000_000_000;
    match crate::credentials::verify(&token, &keys, want, now) {
        Ok(claims) => {
            println!("{}", serde_json::to_string_pretty(&claims)?);
            Ok(0)
        }
        Err(e) => {
            eprintln!("invalid: {e}");
            Ok(1)
        }
    }
}

fn print_live(credentials: &[LiveCredential]) {
    for c in credentials {
        let user = c
            .on_behalf_of
            .as_ref()
            .map(|u| format!(" for {u}"))
            .unwrap_or_default();
        let until = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(c.expires_unix),
        );
        println!(
            "{}  agent:{:<16} {} {}{user}  until {until}",
            c.jti, c.agent, c.tool, c.scope
        );
    }
}
