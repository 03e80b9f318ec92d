//! `labctl node`: one cluster member.
//!
//! [`raft`] is the consensus core; the other modules are its edges: UDP transport, the
//! durable log on disk, and the driver loop that feeds the core messages and time.

pub mod raft;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{ClusterArgs, FileConfig, RaftArgs};

/// Options of `labctl node`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// This node's id: node N binds <host of N>:<raft port>
    #[arg(long, env = "LABCTL_NODE_ID")]
    pub id: u32,
    /// Directory for node data; this node uses <data-dir>/nodeN [default: data]
    #[arg(long, env = "LABCTL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Host to bind instead of this node's own host, e.g. 0.0.0.0 in a container
    #[arg(long, env = "LABCTL_BIND_HOST")]
    pub bind_host: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub raft: RaftArgs,
}

/// Runs a node until SHUTDOWN or a signal.
pub fn run(args: Args, file: &FileConfig) -> anyhow::Result<ExitCode> {
    let _ = (args, file);
    anyhow::bail!("labctl node is not built yet")
}
