//! The agentcage host daemon.

use agentcage::daemon::{self, DaemonConfig, LogFormat};
use anyhow::Context as _;
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

// The export builds and frees tens of small strings per event on one thread that were decoded
// on another. glibc's malloc took about 40% of the export's CPU (arena locks, consolidation);
// with mimalloc allocation is about 17% of a cost a third lower. `cargo xtask bench events`
// reports what it costs in memory.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if let Err(e) = run() {
        tracing::error!("{}", agentcage::errors::render(e.as_ref()));
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let config = DaemonConfig::parse();
    let filter =
        EnvFilter::try_from_env("AGENTCAGE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(daemon::run(config))?;
    Ok(())
}
