//! `labctl cluster`: N node processes on loopback, supervised.
//!
//! Starts `labctl node --id N` for every member as a child process of this same executable,
//! waits until a majority names one leader (LEADER_INFO over UDP), and reports it. On Ctrl-C or
//! SIGTERM it sends every node SHUTDOWN, waits for them to exit and exits 0; a node that does
//! not stop in time is terminated. A node that dies unexpectedly is reported with its exit
//! status; the rest keep running, and with `--restart` it is started again.
//!
//! Children run in their own process group, so a terminal's Ctrl-C reaches only this
//! supervisor and the nodes are stopped in order; they are also told (Linux `PDEATHSIG`) to
//! stop should the supervisor itself be killed, so no node outlives it.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Cluster, ClusterArgs, ConfigError, FileConfig, RaftArgs, RaftTiming};
use crate::proto::client::{self, LeaderSummary, Reply};
use crate::proto::{node_name, Request};

/// Data directory when neither `--data-dir` nor `[node] data_dir` is given.
pub const DEFAULT_DATA_DIR: &str = "data";

/// How often children are checked and LEADER_INFO is polled while waiting for a leader.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long one LEADER_INFO poll waits for replies.
const POLL_WAIT: Duration = Duration::from_millis(300);
/// How long nodes get to exit after SHUTDOWN, and then again after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Pause before a node that died is started again (`--restart`).
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Options of `labctl cluster`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Node N binds the host pattern with {id}=N (127.0.0.N by default) on the Raft UDP \
port, so N nodes share one port number on N loopback addresses. Each node's log lines (stdout and \
stderr) are shown on this terminal's stderr, prefixed with [nodeN]; RUST_LOG applies to the nodes too. \
Ctrl-C or SIGTERM sends SHUTDOWN to every node, waits for them and exits 0.")]
pub struct Args {
    /// Directory holding every node's data, <data-dir>/nodeN [default: data; config: [node] data_dir]
    #[arg(long, env = "LABCTL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Start a node again (after 1 s) when it exits on its own
    #[arg(long)]
    pub restart: bool,
    /// How long to wait for a leader after starting the nodes, in milliseconds; the cluster is
    /// stopped and the command fails if none is elected by then
    #[arg(long, default_value_t = 15_000)]
    pub ready_timeout_ms: u64,
    /// Secure mode without a secret of your own: make a random cluster secret in
    /// <data-dir>/cluster.secret (kept for the next start, readable only by you) and give it to
    /// every node. A secret given by --cluster-secret-file or LABCTL_CLUSTER_SECRET is used as it is.
    #[arg(long)]
    pub secure: bool,
    /// Require accounts on every node's HTTP API and console (labctl node --auth). The first
    /// admin's password comes from LABCTL_ADMIN_PASSWORD or LABCTL_ADMIN_PASSWORD_FILE; without
    /// either, the leader makes one and prints it once, here.
    #[arg(long)]
    pub auth: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub raft: RaftArgs,
}

/// Why `labctl cluster` failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the data directory {path}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot find the labctl executable to start nodes with: {0}")]
    Exe(std::io::Error),
    #[error("cannot start {node}")]
    Spawn { node: String, source: std::io::Error },
    #[error("cannot set up signal handling or the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("no leader was elected within {0} ms; the nodes have been stopped")]
    NoLeader(u64),
    #[error("every node has exited")]
    AllExited,
    #[error("cannot make the cluster secret file {path}")]
    Secret { path: PathBuf, source: std::io::Error },
}

/// Writes 32 random bytes, hex-encoded, to `path` unless it exists, readable only by its owner.
fn write_secret(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let hex = crate::proto::auth::random_hex(32)?;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut file) => file.write_all(format!("{hex}\n").as_bytes()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs `labctl cluster` until Ctrl-C or SIGTERM.
pub fn run(args: Args, file: &FileConfig, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let cluster = Cluster::resolve(&args.cluster, &file.cluster)?;
    let timing = RaftTiming::resolve(&args.raft, &file.raft)?;
    let data_dir = args.data_dir.clone().or_else(|| file.node.data_dir.clone()).unwrap_or(DEFAULT_DATA_DIR.into());
    std::fs::create_dir_all(&data_dir).map_err(|source| ClusterError::DataDir { path: data_dir.clone(), source })?;
    let exe = std::env::current_exe().map_err(ClusterError::Exe)?;
    let mut secret_file = args.cluster.cluster_secret_file.clone().or_else(|| file.cluster.secret_file.clone());
    let mut key = crate::config::cluster_key(&args.cluster, &file.cluster)?;
    if args.secure && key.is_none() {
        let path = data_dir.join("cluster.secret");
        write_secret(&path).map_err(|source| ClusterError::Secret { path: path.clone(), source })?;
        let secret = std::fs::read(&path).map_err(|source| ClusterError::Secret { path: path.clone(), source })?;
        key = Some(crate::proto::auth::Key::derive(&secret).map_err(|e| ConfigError::Invalid(e.to_string()))?);
        eprintln!(
            "secure mode: the cluster secret is in {}; give it to the controller with \
             LABCTL_CLUSTER_SECRET_FILE={}",
            path.display(),
            path.display()
        );
        secret_file = Some(path);
    }
    let signing = key.map(|key| std::sync::Arc::new(client::Signing::new(key)));
    let supervisor = Supervisor {
        launch: Launch {
            exe,
            config: config_path.map(Path::to_path_buf),
            cluster,
            timing,
            data_dir,
            secret_file,
            auth: args.auth,
        },
        signing,
        restart: args.restart,
        ready_timeout: Duration::from_millis(args.ready_timeout_ms),
    };
    // One thread: children are forked from the thread that lives as long as the process,
    // which PDEATHSIG is tied to.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ClusterError::Runtime)?;
    runtime.block_on(supervisor.run())?;
    Ok(ExitCode::SUCCESS)
}

/// Everything needed to start one node process.
#[derive(Debug, Clone)]
struct Launch {
    exe: PathBuf,
    config: Option<PathBuf>,
    cluster: Cluster,
    timing: RaftTiming,
    data_dir: PathBuf,
    /// The cluster secret's file, handed to every node (a secret in the environment is
    /// inherited instead).
    secret_file: Option<PathBuf>,
    /// Every node requires accounts.
    auth: bool,
}

impl Launch {
    /// The arguments of `labctl node` for member `id`: the resolved settings, spelled out so
    /// every node runs with exactly what this supervisor resolved.
    fn node_args(&self, id: u32) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(config) = &self.config {
            args.push(format!("--config={}", config.display()));
        }
        let c = &self.cluster;
        args.extend([
            "node".to_string(),
            format!("--id={id}"),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--bind-host={}", c.host_of(id)),
            format!("--nodes={}", c.nodes),
            format!("--host={}", c.host),
            format!("--raft-port={}", c.raft_port),
            format!("--http-port={}", c.http_port),
        ]);
        args.extend(self.timing.to_args());
        if let Some(path) = &self.secret_file {
            args.push(format!("--cluster-secret-file={}", path.display()));
        }
        if self.auth {
            args.push("--auth".into());
        }
        args
    }

    fn spawn(&self, id: u32) -> Result<Child, ClusterError> {
        let mut command = Command::new(&self.exe);
        command
            .args(self.node_args(id))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let node = node_name(id);
        let mut child = command.spawn().map_err(|source| ClusterError::Spawn { node: node.clone(), source })?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_lines(out, node.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward_lines(err, node.clone()));
        }
        log::info!("started {node} (pid {})", child.id().unwrap_or(0));
        Ok(child)
    }
}

/// Copies a child's output to stderr, each line prefixed with the node's name.
async fn forward_lines(stream: impl AsyncRead + Unpin, node: String) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("[{node}] {line}");
    }
}

/// One member's process, if it is running.
struct Member {
    id: u32,
    child: Option<Child>,
    /// When to start it again after it died (`--restart`).
    restart_at: Option<Instant>,
}

struct Supervisor {
    launch: Launch,
    signing: Option<std::sync::Arc<client::Signing>>,
    restart: bool,
    ready_timeout: Duration,
}

impl Supervisor {
    async fn run(self) -> Result<(), ClusterError> {
        let mut interrupt = signal(SignalKind::interrupt()).map_err(ClusterError::Runtime)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(ClusterError::Runtime)?;
        let mut members = Vec::new();
        for id in self.launch.cluster.ids() {
            match self.launch.spawn(id) {
                Ok(child) => members.push(Member { id, child: Some(child), restart_at: None }),
                Err(e) => {
                    stop_all(&self.launch.cluster, self.signing.as_deref(), &mut members).await;
                    return Err(e);
                }
            }
        }
        let nodes = members.len();
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        let ready_deadline = Instant::now() + self.ready_timeout;
        let mut leader_known = false;
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                _ = tick.tick() => {
                    if let Err(e) = self.check_members(&mut members) {
                        stop_all(&self.launch.cluster, self.signing.as_deref(), &mut members).await;
                        return Err(e);
                    }
                    if leader_known {
                        continue;
                    }
                    if let Some((leader, term)) = poll_leader(self.launch.cluster.clone(), self.signing.clone()).await {
                        println!("cluster of {nodes} nodes up; {leader} is LEADER for term {term}");
                        leader_known = true;
                    } else if Instant::now() >= ready_deadline {
                        stop_all(&self.launch.cluster, self.signing.as_deref(), &mut members).await;
                        return Err(ClusterError::NoLeader(self.ready_timeout.as_millis() as u64));
                    }
                }
            }
        }
        log::info!("stopping the cluster");
        stop_all(&self.launch.cluster, self.signing.as_deref(), &mut members).await;
        println!("cluster stopped");
        Ok(())
    }

    /// Reports members that exited, and restarts them when asked to.
    fn check_members(&self, members: &mut [Member]) -> Result<(), ClusterError> {
        for member in members.iter_mut() {
            if let Some(child) = &mut member.child {
                match child.try_wait() {
                    Ok(None) => {}
                    Ok(Some(status)) => {
                        log::error!("{} exited unexpectedly ({})", node_name(member.id), describe(status));
                        member.child = None;
                        if self.restart {
                            member.restart_at = Some(Instant::now() + RESTART_DELAY);
                        }
                    }
                    Err(e) => log::warn!("cannot check on {}: {e}", node_name(member.id)),
                }
            }
            if member.child.is_none() && member.restart_at.is_some_and(|at| at <= Instant::now()) {
                member.restart_at = None;
                match self.launch.spawn(member.id) {
                    Ok(child) => member.child = Some(child),
                    Err(e) => {
                        log::error!("{}; trying again in {} s", with_causes(&e), RESTART_DELAY.as_secs());
                        member.restart_at = Some(Instant::now() + RESTART_DELAY);
                    }
                }
            }
        }
        if members.iter().all(|m| m.child.is_none() && m.restart_at.is_none()) {
            return Err(ClusterError::AllExited);
        }
        Ok(())
    }
}

/// Asks every member LEADER_INFO; the leader and term a majority names, if any.
async fn poll_leader(cluster: Cluster, signing: Option<std::sync::Arc<client::Signing>>) -> Option<(String, u64)> {
    let found = tokio::task::spawn_blocking(move || {
        let targets: Vec<_> = cluster.ids().filter_map(|id| cluster.raft_addr(id).ok().map(|a| (id, a))).collect();
        let message = client::control_message(Request::LeaderInfo);
        let replies = client::exchange_all(signing.as_deref(), &targets, &message, Some(POLL_WAIT));
        let infos: Vec<_> = replies
            .into_iter()
            .map(|(_, result)| match result {
                Ok(Some(client::Answer { reply: Reply::LeaderInfo(info), .. })) => Some(info),
                _ => None,
            })
            .collect();
        let mut all = infos.iter().map(Option::as_ref).collect::<Vec<_>>();
        // Members whose address did not resolve count as silent.
        all.resize(cluster.nodes as usize, None);
        LeaderSummary::from_replies(all).agreed_leader().map(|(name, term)| (name.to_string(), term))
    })
    .await;
    found.ok().flatten()
}

/// Sends SHUTDOWN to every running member and waits for them; SIGTERM, then SIGKILL, for
/// those that do not exit in time.
async fn stop_all(cluster: &Cluster, signing: Option<&client::Signing>, members: &mut [Member]) {
    let shutdown = client::control_message(Request::Shutdown);
    for member in members.iter().filter(|m| m.child.is_some()) {
        match cluster.raft_addr(member.id) {
            Ok(addr) => {
                if let Err(e) = client::exchange_with(signing, member.id, addr, &shutdown, None) {
                    log::warn!("cannot send SHUTDOWN to {}: {}", node_name(member.id), with_causes(&e));
                }
            }
            Err(e) => log::warn!("cannot send SHUTDOWN to {}: {e}", node_name(member.id)),
        }
    }
    if !wait_all(members, STOP_GRACE).await {
        for member in members.iter() {
            if let Some(pid) = member.child.as_ref().and_then(Child::id) {
                log::warn!("{} did not stop after SHUTDOWN; sending SIGTERM", node_name(member.id));
                // SAFETY: kill(2) on a child's pid that has not been reaped yet.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
        }
        if !wait_all(members, STOP_GRACE).await {
            for member in members.iter_mut() {
                if let Some(child) = &mut member.child {
                    log::warn!("{} did not stop after SIGTERM; killing it", node_name(member.id));
                    let _ = child.start_kill();
                }
            }
            wait_all(members, STOP_GRACE).await;
        }
    }
    // Let the last lines of the nodes' output through.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Waits until every member has exited or `grace` passed; true when all have.
async fn wait_all(members: &mut [Member], grace: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + grace;
    for member in members.iter_mut() {
        let Some(child) = &mut member.child else { continue };
        match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(Ok(status)) if status.success() => log::info!("{} stopped", node_name(member.id)),
            Ok(Ok(status)) => log::warn!("{} stopped with {}", node_name(member.id), describe(status)),
            Ok(Err(e)) => log::warn!("cannot wait for {}: {e}", node_name(member.id)),
            Err(_) => return false,
        }
        member.child = None;
    }
    true
}

/// An error with its causes, "a: b: c", for a log line.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An exit status in words: "exit code 1", "killed by signal 9".
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_args_spell_out_the_resolved_settings() {
        let launch = Launch {
            exe: "labctl".into(),
            config: Some("config/labctl.toml".into()),
            cluster: Cluster { nodes: 3, raft_port: 16_000, ..Cluster::default() },
            timing: RaftTiming::default(),
            data_dir: "data".into(),
            secret_file: None,
            auth: false,
        };
        let args = launch.node_args(2);
        assert_eq!(args[0], "--config=config/labctl.toml");
        assert_eq!(args[1], "node");
        for expected in [
            "--id=2",
            "--data-dir=data",
            "--bind-host=127.0.0.2",
            "--nodes=3",
            "--host=127.0.0.{id}",
            "--raft-port=16000",
            "--http-port=8000",
            "--heartbeat-ms=50",
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected} missing from {args:?}");
        }
    }

    #[test]
    fn node_args_parse_as_a_node_command() {
        use clap::Parser;
        let launch = Launch {
            exe: "labctl".into(),
            config: None,
            cluster: Cluster::default(),
            timing: RaftTiming::default(),
            data_dir: "/tmp/x".into(),
            secret_file: Some("/tmp/x/cluster.secret".into()),
            auth: true,
        };
        let argv = std::iter::once("labctl".to_string()).chain(launch.node_args(4));
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let crate::cli::Command::Node(node) = cli.command else { panic!("not a node command") };
        assert_eq!(node.id, 4);
        assert_eq!(node.cluster.nodes, Some(5));
        assert_eq!(node.raft.heartbeat_ms, Some(50));
        assert_eq!(node.cluster.cluster_secret_file, Some("/tmp/x/cluster.secret".into()));
        assert_eq!(node.auth, Some(true));
    }

    #[test]
    fn example_config_holds_the_defaults() {
        let file: FileConfig = toml::from_str(include_str!("../../config/labctl.toml")).unwrap();
        assert_eq!(Cluster::resolve(&ClusterArgs::default(), &file.cluster).unwrap(), Cluster::default());
        assert_eq!(RaftTiming::resolve(&RaftArgs::default(), &file.raft).unwrap(), RaftTiming::default());
        assert_eq!(file.node.data_dir.as_deref(), Some(Path::new(DEFAULT_DATA_DIR)));
        assert_eq!(file.node.bind_host, None);
        assert_eq!(file.node.max_upload_bytes, Some(crate::node::api::DEFAULT_MAX_UPLOAD));
        assert_eq!(file.controller.timeout_ms, Some(crate::controller::DEFAULT_TIMEOUT_MS));
    }

    #[test]
    fn exit_statuses_in_words() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(ExitStatus::from_raw(1 << 8)), "exit code 1");
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by signal 9");
    }
}
