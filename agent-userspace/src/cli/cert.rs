//! `agentcage cert create|sign|verify|show`: behavior certificates.

use std::{path::PathBuf, time::Duration};

use clap::Subcommand;

use super::{Cli, CliError, Command};
use crate::{
    certificates::{Certificate, Evidence},
    control::{Client, Request, Response},
    credentials::{key_id, keys::public_key, read_private_key, read_public_key},
    policy::Policy,
};

/// `agentcage cert ...`.
#[derive(Clone, Debug, Subcommand)]
pub enum CertCommand {
    /// Make an (unsigned) certificate of an agent's configuration under a policy: its
    /// identity, models, tools, budgets, the policy's canonical hash, the test run's results
    /// and sample traces by digest. A failing test run is refused.
    Create {
        /// The agent.
        #[arg(long)]
        agent: String,
        /// The policy file the agent is deployed with.
        #[arg(long)]
        policy: PathBuf,
        /// The test run's output (cargo test output, JUnit XML, or JSON
        /// {"passed":N,"failed":N,"skipped":N}).
        #[arg(long)]
        tests: Option<PathBuf>,
        /// Sample traces (any files), recorded by digest.
        #[arg(long, num_args = 1..)]
        traces: Vec<PathBuf>,
        /// How long it is valid (e.g. 30d, 12h).
        #[arg(long, default_value = "30d", value_parser = super::parse_span)]
        valid_for: Duration,
        /// Where to write it.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Sign a certificate in place: with the node key (through the daemon), or with a key of
    /// your own (`--key`, an Ed25519 PKCS#8 PEM file, mode 0600).
    Sign {
        /// The certificate.
        cert: PathBuf,
        /// A private key instead of the node key.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Check a certificate against a policy file: exit 0, or 1 when it is unsigned, signed by
    /// an unknown key, changed since signing, expired, or made for another policy hash.
    Verify {
        /// The certificate.
        cert: PathBuf,
        /// The policy file to be deployed.
        #[arg(long)]
        against_policy: PathBuf,
        /// Public keys (SPKI PEM) to trust besides the node's.
        #[arg(long)]
        trust: Vec<PathBuf>,
        /// The node's public keys as a JWKS document; STATE_DIR/jwks.json by default (not
        /// needed when every signer is given with --trust).
        #[arg(long)]
        jwks: Option<PathBuf>,
    },
    /// Print a certificate: its id, signatures and statement.
    Show {
        /// The certificate.
        cert: PathBuf,
    },
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(CliError::os(format!("reading {}", path.display())))
}

fn cert_err(e: crate::certificates::CertError) -> CliError {
    CliError::Usage(e.to_string())
}

/// Runs `cert`.
pub fn dispatch(cli: &Cli) -> Result<i32, CliError> {
    let Command::Cert(command) = &cli.command else {
        return Err(CliError::Usage("not a cert command".into()));
    };
    let now = crate::clock::now_unix_nano() / 1_000_000_000;
    match command {
        CertCommand::Create {
            agent,
            policy,
            tests,
            traces,
            valid_for,
            output,
        } => {
            let p = Policy::load(policy)?;
            let tests = tests
                .as_ref()
                .map(|t| Ok::<_, CliError>((t.display().to_string(), read(t)?)))
                .transpose()?;
            let traces = traces
                .iter()
                .map(|t| Ok((t.display().to_string(), read(t)?)))
                .collect::<Result<Vec<_>, CliError>>()?;
            let evidence = Evidence {
                tests: tests.as_ref().map(|(n, b)| (n.as_str(), b.as_slice())),
                traces: traces
                    .iter()
                    .map(|(n, b)| (n.as_str(), b.as_slice()))
                    .collect(),
                now,
                valid_for: *valid_for,
            };
            let cert = Certificate::create(&p, agent, &evidence).map_err(cert_err)?;
            cert.save(output).map_err(cert_err)?;
            println!(
                "{}: certificate {} of agent:{agent} for policy sha256 {} (unsigned: `agentcage \
                 cert sign {}`)",
                output.display(),
                cert.id(),
                p.hash(),
                output.display()
            );
            Ok(0)
        }
        CertCommand::Sign { cert, key } => {
            let mut c = Certificate::load(cert).map_err(cert_err)?;
            let signer = match key {
                Some(path) => {
                    let key = read_private_key(path).map_err(|e| CliError::Usage(e.to_string()))?;
                    let kid = key_id(&key.verifying_key());
                    c.sign(&key, &kid);
                    kid
                }
                None => {
                    let text = String::from_utf8_lossy(&read(cert)?).into_owned();
                    match Client::connect(&cli.socket)?
                        .call(&Request::CertSign { certificate: text })?
                    {
                        Response::CertSigned { signature } => {
                            let kid = signature.keyid.clone();
                            c.add_signature(signature);
                            kid
                        }
                        other => return Err(CliError::unexpected(&other)),
                    }
                }
            };
            c.save(cert).map_err(cert_err)?;
            println!(
                "{}: certificate {} signed by key {signer}",
                cert.display(),
                c.id()
            );
            Ok(0)
        }
        CertCommand::Verify {
            cert,
            against_policy,
            trust,
            jwks,
        } => {
            let policy = Policy::load(against_policy)?;
            let mut keys = Vec::new();
            for path in trust {
                keys.push(read_public_key(path).map_err(|e| CliError::Usage(e.to_string()))?);
            }
            // The node's keys when it has any here; with --trust alone they are optional.
            match super::cred::read_jwks(cli, jwks.as_deref()) {
                Ok(set) => keys.extend(set.keys.iter().filter_map(|k| {
                    let jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(p) = &k.algorithm
                    else {
                        return None;
                    };
                    Some((k.common.key_id.clone()?, public_key(&p.x)?))
                })),
                Err(e) if jwks.is_some() || trust.is_empty() => return Err(e),
                Err(_) => {}
            }
            let c = Certificate::load(cert).map_err(cert_err)?;
            match c.verify(&policy, None, &keys, now) {
                Ok(v) => {
                    println!(
                        "{}: valid certificate {} of agent:{} for policy sha256 {}, signed by \
                         {}, expires {}",
                        cert.display(),
                        v.id,
                        v.agent,
                        v.policy_sha256,
                        v.signed_by,
                        v.expires
                    );
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("{}: invalid: {e}", cert.display());
                    Ok(1)
                }
            }
        }
        CertCommand::Show { cert } => {
            let c = Certificate::load(cert).map_err(cert_err)?;
            println!("id {}", c.id());
            if c.envelope().signatures.is_empty() {
                println!("unsigned");
            }
            for s in &c.envelope().signatures {
                println!("signed by {}", s.keyid);
            }
            let statement = c.statement().map_err(cert_err)?;
            println!("{}", serde_json::to_string_pretty(&statement)?);
            Ok(0)
        }
    }
}
