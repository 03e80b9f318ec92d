//! `labctl cluster`: N node processes on loopback.

use std::path::Path;
use std::process::ExitCode;

use crate::config::FileConfig;

/// Options of `labctl cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {}

pub fn run(args: Args, file: &FileConfig, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let _ = (args, file, config_path);
    anyhow::bail!("labctl cluster is not built yet")
}
