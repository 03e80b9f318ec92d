//! The command line: one subcommand per role.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::FileConfig;

/// labctl runs a replicated web service: Raft over UDP, an HTTP API, and its data pipeline.
#[derive(Debug, Parser)]
#[command(name = "labctl", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML) [default: config/labctl.toml when it exists]
    #[arg(long, env = "LABCTL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one cluster member: Raft over UDP and the control requests
    Node(crate::node::Args),
    /// Send a control request to nodes over UDP and print the replies
    Controller(crate::controller::Args),
    /// Run a whole cluster of N nodes on loopback (127.0.0.1 … 127.0.0.N)
    Cluster(crate::cluster::Args),
    /// Carry scraped products from RabbitMQ, and the processed file from FTP, to the leader
    Manager(crate::manager::Args),
    /// GET a URL (default: this machine's node /healthz); exit 0 on 2xx, 1 otherwise
    Health(crate::health::Args),
    /// Scrape product listings into the processed file; optionally publish to RabbitMQ and upload to FTP
    Scrape(Box<crate::scrape::Args>),
    /// Send e-mail through an SMTP server
    Smtp(crate::smtp::Args),
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let file = FileConfig::load(cli.config.as_deref())?;
    match cli.command {
        Command::Node(args) => crate::node::run(args, &file),
        Command::Controller(args) => crate::controller::run(args, &file),
        Command::Cluster(args) => crate::cluster::run(args, &file, cli.config.as_deref()),
        Command::Manager(args) => crate::manager::run(args, &file),
        Command::Health(args) => crate::health::run(args, &file),
        Command::Scrape(args) => crate::scrape::run(*args, &file),
        Command::Smtp(args) => crate::smtp::run(args, &file),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        super::Cli::command().debug_assert();
    }
}
