//! The `taskbroker` binary: parse, init tracing, build the real environment, run.
//!
//! A failure is printed as one line, `taskbroker: error: ...`, with exit code 1; usage errors
//! exit 2 (clap).

use anyhow::Context;
use clap::Parser;
use taskbroker_node::cli::{Cli, Command, ServeArgs};
use taskbroker_node::config::{NodeConfig, PartialConfig};
use taskbroker_node::env::Env;

fn main() {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(ServeArgs::default()));
    // Nodes log at info; client commands only warn, so their stdout/stderr stay readable.
    let default_filter = if command.is_server() {
        "info,openraft=warn,tarpc=warn"
    } else {
        "warn,taskbroker_client::client=error,openraft=warn,tarpc=error"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(command) {
        eprintln!("taskbroker: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        match command {
            Command::Serve(args) => serve(args).await,
            Command::Local(args) => Ok(taskbroker_node::cli::local::run(args).await?),
            client => Ok(client.run_client().await?),
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut partial = args.to_partial();
    if let Some(path) = &args.config {
        partial = partial.or(PartialConfig::from_file(path)?);
    }
    partial = partial.or(PartialConfig::from_env(std::env::vars())?);
    let config = NodeConfig::resolve(partial)?;
    let env = Env::production(config.storage_backend)?;
    taskbroker_node::run(config, env, taskbroker_node::cli::shutdown_signal()).await?;
    Ok(())
}
