//! `agentcage agents` (the inventory) and `agentcage keys show|rotate|jwks`.

use clap::Subcommand;

use super::{Cli, CliError, Command, Output};
use crate::control::{
    credential::{AgentInventory, KeyInfo},
    Client, Request, Response,
};

/// `agentcage keys ...`.
#[derive(Clone, Debug, Subcommand)]
pub enum KeysCommand {
    /// The node's keys: the signing one, and retired ones kept until their tokens expired.
    Show {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Make a new signing key. The old private key is deleted at once; its public key stays
    /// in the JWKS until every token it signed has expired. Certificates it signed must be
    /// signed again.
    Rotate,
    /// Print the public keys as a JWKS document (what tools verify tokens against).
    Jwks,
}

/// Runs `agents` or `keys`.
pub fn dispatch(cli: &Cli) -> Result<i32, CliError> {
    let mut client = Client::connect(&cli.socket)?;
    match &cli.command {
        Command::Agents { output } => match client.call(&Request::Agents {})? {
            Response::Agents {
                trust_domain,
                agents,
            } => {
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&agents)?),
                    Output::Text => print_agents(&trust_domain, &agents),
                }
                Ok(0)
            }
            other => Err(CliError::unexpected(&other)),
        },
        Command::Keys(command) => {
            let request = match command {
                KeysCommand::Rotate => Request::KeysRotate {},
                KeysCommand::Show { .. } | KeysCommand::Jwks => Request::Keys {},
            };
            let Response::Keys {
                current,
                keys,
                jwks,
            } = client.call(&request)?
            else {
                return Err(CliError::Usage(
                    "unexpected answer to a keys request".into(),
                ));
            };
            match command {
                KeysCommand::Jwks => println!("{}", serde_json::to_string_pretty(&jwks)?),
                KeysCommand::Show {
                    output: Output::Json,
                } => println!("{}", serde_json::to_string_pretty(&keys)?),
                KeysCommand::Show { .. } => print_keys(&keys),
                KeysCommand::Rotate => {
                    println!("signing key is now {current}");
                    print_keys(&keys);
                }
            }
            Ok(0)
        }
        _ => Err(CliError::Usage("not an identity command".into())),
    }
}

fn print_agents(trust_domain: &str, agents: &[AgentInventory]) {
    println!("trust domain {trust_domain}");
    if agents.is_empty() {
        println!("the policy defines no agents");
        return;
    }
    for a in agents {
        let state = match (&a.rung, a.running) {
            (Some(rung), true) => format!("running ({rung})"),
            _ => "not running".to_owned(),
        };
        println!("{}  {}  {state}", a.id, a.spiffe_id);
        let i = &a.identity;
        if let Some(owner) = &i.owner {
            println!("  owner        {owner}");
        }
        if let Some(purpose) = &i.purpose {
            println!("  purpose      {purpose}");
        }
        for (label, list) in [
            ("data classes", &i.data_classes),
            ("tools", &i.tools),
            ("models", &i.models),
        ] {
            if !list.is_empty() {
                println!("  {label:<12} {}", list.join(", "));
            }
        }
        println!("  tier         {}", a.tier);
        let c = &a.certificate;
        let detail =
            c.id.as_deref()
                .or(c.reason.as_deref())
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
        let required = if c.required { "required, " } else { "" };
        println!("  certificate  {required}{}{detail}", c.state);
    }
}

fn print_keys(keys: &[KeyInfo]) {
    for k in keys {
        let state = match (&k.retired, &k.kept_until) {
            (None, _) => "signing".to_owned(),
            (Some(r), Some(u)) => format!("retired {r}, kept until {u}"),
            (Some(r), None) => format!("retired {r}"),
        };
        println!("{}  created {}  {state}", k.kid, k.created);
        print!("{}", k.public_key_pem);
    }
}
