//! `labctl controller`: sends control requests to nodes over UDP and prints the replies.

use std::process::ExitCode;

use crate::config::{ClusterArgs, FileConfig};

/// Options of `labctl controller`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

pub fn run(args: Args, file: &FileConfig) -> anyhow::Result<ExitCode> {
    let _ = (args, file);
    anyhow::bail!("labctl controller is not built yet")
}
