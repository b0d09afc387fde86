//! The agentcage command line.

use agentcage::{
    cli::{dispatch, Cli},
    errors::render,
};
use clap::Parser as _;

fn main() {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("agentcage: {}", render(&e));
            std::process::exit(2);
        }
    }
}
