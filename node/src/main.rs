//! The `taskbroker` binary: parse, init tracing, build the real environment, run.

use anyhow::Context;
use clap::Parser;
use taskbroker_node::cli::{Cli, Command, ServeArgs};
use taskbroker_node::config::{NodeConfig, PartialConfig};
use taskbroker_node::env::Env;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn,tarpc=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
            Command::Serve(args) => serve(args).await,
            Command::Local(args) => Ok(taskbroker_node::cli::local::run(args).await?),
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
