//! Configuration shared by every role.
//!
//! Precedence: command-line flag, then `LABCTL_*` environment variable (both handled by clap),
//! then the TOML config file, then the built-in default. The file is `--config PATH`
//! (`LABCTL_CONFIG`), or `config/labctl.toml` when that exists in the working directory.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file read when no `--config` is given and it exists.
pub const DEFAULT_CONFIG_PATH: &str = "config/labctl.toml";

/// Errors reading or resolving configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
}

/// The whole config file. Every section and field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub cluster: ClusterFile,
    #[serde(default)]
    pub raft: RaftFile,
    #[serde(default)]
    pub node: NodeFile,
    #[serde(default)]
    pub controller: ControllerFile,
    #[serde(default)]
    pub manager: ManagerFile,
    #[serde(default)]
    pub scrape: ScrapeFile,
    #[serde(default)]
    pub smtp: SmtpFile,
    #[serde(default)]
    pub notify: NotifyFile,
    #[serde(default)]
    pub tls: crate::tls::TlsFile,
}

/// `[cluster]`: who the members are and where they live.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Number of members, `node1` … `nodeN`.
    pub nodes: Option<u32>,
    /// Host of node N, with `{id}` replaced by N: `127.0.0.{id}` locally, `node{id}` in Docker.
    pub host: Option<String>,
    /// UDP port for Raft and control traffic on every node.
    pub raft_port: Option<u16>,
    /// HTTP port on every node.
    pub http_port: Option<u16>,
    /// File holding the cluster secret (secure mode); see [`ClusterArgs::cluster_secret_file`].
    pub secret_file: Option<PathBuf>,
    /// The nodes serve HTTPS (each with `[tls]` cert and key): clients reach them with https://.
    pub https: Option<bool>,
}

/// `[raft]`: timing and protocol options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftFile {
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_min_ms: Option<u64>,
    pub election_timeout_max_ms: Option<u64>,
    pub pre_vote: Option<bool>,
    pub check_quorum: Option<bool>,
    /// The largest log entry a leader accepts, in bytes.
    pub max_entry_bytes: Option<usize>,
    /// Compact the log every this many entries (0: never).
    pub compact_every: Option<u64>,
    /// Entries kept before the compaction point, for followers a little behind.
    pub compact_keep: Option<u64>,
}

/// `[node]`: options of one member.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// Directory holding each node's data (`<data_dir>/node3/…`).
    pub data_dir: Option<PathBuf>,
    /// Address to bind instead of the node's own host (e.g. `0.0.0.0` in a container).
    pub bind_host: Option<String>,
    /// Where clients outside the cluster's network reach node N's HTTP API (`{id}` replaced by
    /// N), e.g. `127.0.0.{id}`; none by default. See `labctl node --help`.
    pub public_host: Option<String>,
    /// The HTTP port of the public addresses; the HTTP port by default.
    pub public_http_port: Option<u16>,
    /// Database URL (a SQLite path, or postgres:// / mysql:// with those features); default `<data_dir>/nodeN/labctl.db`.
    pub database_url: Option<String>,
    /// Manager to tell where the leader is (`POST <url>/leader`); none by default.
    pub manager_url: Option<String>,
    /// Token the web console's control buttons must send (`Authorization: Bearer …`); none by default.
    pub console_token: Option<String>,
    /// The largest file `POST /api/upload/file` accepts, in bytes.
    pub max_upload_bytes: Option<usize>,
    /// Secure mode: addresses or networks (`10.0.0.0/24`) whose unsigned control requests are
    /// taken, e.g. a course controller's; none by default.
    pub control_allow: Option<Vec<String>>,
    /// Require accounts on the HTTP API and the console; off by default.
    pub auth: Option<bool>,
    /// How long a login's token is valid (`30s`, `15m`, `12h`); 12 hours by default.
    pub token_ttl: Option<String>,
    /// Name of the first admin account; `admin` by default. Its password never goes here: it
    /// comes from `LABCTL_ADMIN_PASSWORD` or `LABCTL_ADMIN_PASSWORD_FILE`.
    pub admin_name: Option<String>,
}

/// `[controller]`: options of `labctl controller`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerFile {
    /// How long to wait for each reply, in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// `[manager]`: options of `labctl manager`. Where the nodes are comes from `[cluster]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerFile {
    /// Address of the manager's HTTP service, `host:port`.
    pub listen: Option<String>,
    /// RabbitMQ URL, `amqp://user:password@host:port/vhost`.
    pub amqp_url: Option<String>,
    /// Queue of scraped products.
    pub queue: Option<String>,
    /// Queue for items the leader can never accept; default `<queue>.dead`.
    pub dead_letter_queue: Option<String>,
    /// Unacknowledged messages RabbitMQ may hand the manager at once.
    pub prefetch: Option<u16>,
    /// Items posted to the leader at the same time.
    pub concurrency: Option<usize>,
    /// FTP server holding the processed file; FTP sync is off when unset.
    pub ftp_host: Option<String>,
    pub ftp_port: Option<u16>,
    pub ftp_user: Option<String>,
    pub ftp_password: Option<String>,
    /// Path of the processed file on the FTP server.
    pub ftp_path: Option<String>,
    /// Time between two downloads, e.g. `30s`, `500ms`, `2m`.
    pub ftp_interval: Option<String>,
    /// Explicit FTPS (AUTH TLS), the server verified against `[tls] ca`.
    pub ftp_tls: Option<bool>,
    /// The account the manager writes to the nodes as, when they require accounts (`--auth`);
    /// its password comes from `LABCTL_MANAGER_PASSWORD` or `LABCTL_MANAGER_PASSWORD_FILE`.
    pub user: Option<String>,
}

/// `[scrape]`: options of `labctl scrape` (see `config/scrape.toml`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeFile {
    /// First listing page.
    pub url: Option<String>,
    /// Most listing pages to read, following the "next" link.
    pub pages: Option<u32>,
    /// Pause between two requests, in milliseconds.
    pub delay_ms: Option<u64>,
    /// Give up on one request after this long, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Extra attempts at a page that failed.
    pub retries: Option<u32>,
    /// User-Agent header of every request.
    pub user_agent: Option<String>,
    /// Currency of the shop's prices (ISO 4217), for prices that show no symbol or code.
    pub currency: Option<String>,
    /// Second currency to convert prices to.
    pub to_currency: Option<String>,
    /// Units of `to_currency` per unit of `currency`.
    pub rate: Option<f64>,
    /// Keep only items priced at least this much (in `currency`).
    pub min_price: Option<f64>,
    /// Keep only items priced at most this much (in `currency`).
    pub max_price: Option<f64>,
    /// RabbitMQ URL for `--publish`.
    pub amqp_url: Option<String>,
    /// Durable queue the items are published to.
    pub queue: Option<String>,
    /// How long to wait for the broker to confirm the published items, in milliseconds.
    pub confirm_timeout_ms: Option<u64>,
    /// FTP server for `--upload-ftp`.
    pub ftp_host: Option<String>,
    pub ftp_port: Option<u16>,
    pub ftp_user: Option<String>,
    pub ftp_password: Option<String>,
    /// Remote path of the processed file, relative to the FTP user's home.
    pub ftp_path: Option<String>,
    /// Explicit FTPS (AUTH TLS), the server verified against `[tls] ca`.
    pub ftp_tls: Option<bool>,
    #[serde(default)]
    pub selectors: SelectorsFile,
}

/// `[scrape.selectors]`: where the fields of an item are in a listing page. CSS selectors, each
/// optionally ending in `::attr(NAME)` (read that attribute) or `::text` (the default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorsFile {
    pub item: Option<String>,
    pub title: Option<String>,
    pub price: Option<String>,
    pub availability: Option<String>,
    pub rating: Option<String>,
    pub link: Option<String>,
    pub next: Option<String>,
}

/// `[smtp]`: the mail server of `labctl smtp send` and of node notifications.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpFile {
    /// Host name or address of the SMTP server.
    pub server: Option<String>,
    pub port: Option<u16>,
    /// `starttls`, `tls` (implicit TLS) or `none`.
    pub tls: Option<String>,
    /// Login name; the password comes from `password`, `password_file` or the environment.
    pub user: Option<String>,
    pub password: Option<String>,
    /// A file holding the password (its first line), e.g. a Docker secret.
    pub password_file: Option<PathBuf>,
    /// Sender of every message, `user@host` or `Name <user@host>`.
    pub from: Option<String>,
    /// Seconds to wait for the server at each step.
    pub timeout_secs: Option<u64>,
    /// A PEM file of certificates to trust besides the public roots (a private CA, a self-signed server).
    pub ca_cert: Option<PathBuf>,
}

/// `[notify]`: e-mails a node sends through `[smtp]`. Off unless `to` names someone.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyFile {
    /// Who hears of each election a node wins.
    pub to: Option<Vec<String>>,
    /// Mail a task's assignee when a task is assigned to them (default true).
    pub tasks: Option<bool>,
}

impl FileConfig {
    /// Loads `path`, or the default file when `path` is None and it exists, or nothing.
    pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => {
                let p = PathBuf::from(DEFAULT_CONFIG_PATH);
                if !p.exists() {
                    return Ok(FileConfig::default());
                }
                p
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source })
    }
}

/// Flags shared by every role that talks to the cluster (`#[command(flatten)]` them).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterArgs {
    /// Number of cluster members, node1 … nodeN [default: 5]
    #[arg(long, env = "LABCTL_NODES", global = true)]
    pub nodes: Option<u32>,
    /// Host of node N, `{id}` replaced by N [default: 127.0.0.{id}; `node{id}` in Docker]
    #[arg(long, env = "LABCTL_HOST", global = true)]
    pub host: Option<String>,
    /// UDP port for Raft and control traffic [default: 5555]
    #[arg(long, env = "LABCTL_RAFT_PORT", global = true)]
    pub raft_port: Option<u16>,
    /// HTTP port of every node [default: 8000]
    #[arg(long, env = "LABCTL_HTTP_PORT", global = true)]
    pub http_port: Option<u16>,
    /// File holding the cluster secret, at least 16 bytes: with it every datagram is signed and
    /// checked (secure mode). Or set LABCTL_CLUSTER_SECRET to the secret itself. [default: none,
    /// open mode]
    #[arg(long, env = "LABCTL_CLUSTER_SECRET_FILE", global = true, value_name = "PATH")]
    pub cluster_secret_file: Option<PathBuf>,
    /// The nodes serve HTTPS: reach them with https:// (a node serves it when given --tls-cert and --tls-key) [default: false]
    #[arg(long, env = "LABCTL_HTTPS", global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub https: Option<bool>,
}

impl ClusterArgs {
    /// Whether the nodes serve HTTPS, by flag, environment or file (`[cluster] https`); None: not said.
    pub fn https(&self, file: &ClusterFile) -> Option<bool> {
        self.https.or(file.https)
    }

    /// `https` or `http`: how clients reach the nodes.
    pub fn scheme(&self, file: &ClusterFile) -> &'static str {
        if self.https(file) == Some(true) {
            "https"
        } else {
            "http"
        }
    }
}

/// A secret from the environment: the variable `name` itself, or the file named by
/// `<name>_FILE` (the Docker secrets convention; one last line break is not part of the
/// secret). Giving both is an error, and so is a file that cannot be read.
pub fn secret_env(name: &str) -> Result<Option<String>, ConfigError> {
    let file_var = format!("{name}_FILE");
    let value = std::env::var(name).ok().filter(|v| !v.is_empty());
    let path = std::env::var_os(&file_var).filter(|v| !v.is_empty()).map(PathBuf::from);
    match (value, path) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid(format!("{name} and {file_var} are both set: give one"))),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::Invalid(format!("cannot read {file_var} ({}): {e}", path.display())))?;
            let text = text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
            Ok(Some(text.to_string()))
        }
        (None, None) => Ok(None),
    }
}

/// The environment variable that may hold the cluster secret itself (never a flag: a command
/// line is visible to every user of the machine).
pub const CLUSTER_SECRET_ENV: &str = "LABCTL_CLUSTER_SECRET";

/// The key datagrams are signed with, from the cluster secret: the file of
/// `--cluster-secret-file` (flag, `LABCTL_CLUSTER_SECRET_FILE`, or `[cluster] secret_file`), or
/// `LABCTL_CLUSTER_SECRET`. None: open mode.
pub fn cluster_key(args: &ClusterArgs, file: &ClusterFile) -> Result<Option<crate::proto::auth::Key>, ConfigError> {
    let from_env = std::env::var_os(CLUSTER_SECRET_ENV).filter(|v| !v.is_empty());
    let path = args.cluster_secret_file.clone().or_else(|| file.secret_file.clone());
    let secret = match (path, from_env) {
        (Some(path), Some(_)) => {
            return Err(ConfigError::Invalid(format!(
                "the cluster secret is given twice, in {} and in {CLUSTER_SECRET_ENV}: give one",
                path.display()
            )))
        }
        (Some(path), None) => std::fs::read(&path).map_err(|e| {
            ConfigError::Invalid(format!("cannot read the cluster secret file {}: {e}", path.display()))
        })?,
        (None, Some(value)) => value.into_encoded_bytes(),
        (None, None) => return Ok(None),
    };
    crate::proto::auth::Key::derive(&secret).map(Some).map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// The resolved cluster layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub nodes: u32,
    pub host: String,
    pub raft_port: u16,
    pub http_port: u16,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster { nodes: 5, host: "127.0.0.{id}".into(), raft_port: 5555, http_port: 8000 }
    }
}

impl Cluster {
    /// Merges flags/environment over the file over the defaults, and validates.
    pub fn resolve(args: &ClusterArgs, file: &ClusterFile) -> Result<Cluster, ConfigError> {
        let d = Cluster::default();
        let c = Cluster {
            nodes: args.nodes.or(file.nodes).unwrap_or(d.nodes),
            host: args.host.clone().or_else(|| file.host.clone()).unwrap_or(d.host),
            raft_port: args.raft_port.or(file.raft_port).unwrap_or(d.raft_port),
            http_port: args.http_port.or(file.http_port).unwrap_or(d.http_port),
        };
        if c.nodes == 0 || c.nodes > 250 {
            return Err(ConfigError::Invalid(format!("nodes must be between 1 and 250, not {}", c.nodes)));
        }
        if !c.host.contains("{id}") {
            return Err(ConfigError::Invalid(format!("host {:?} must contain {{id}}", c.host)));
        }
        Ok(c)
    }

    /// Ids of all members, 1..=N.
    pub fn ids(&self) -> impl Iterator<Item = u32> {
        1..=self.nodes
    }

    /// Host name or address of node `id`.
    pub fn host_of(&self, id: u32) -> String {
        self.host.replace("{id}", &id.to_string())
    }

    /// Resolves node `id`'s Raft/control UDP address (DNS in Docker, an IP locally).
    pub fn raft_addr(&self, id: u32) -> Result<SocketAddr, ConfigError> {
        resolve(&self.host_of(id), self.raft_port)
    }

    /// Node `id`'s HTTP address as `host:port`, for URLs.
    pub fn http_addr(&self, id: u32) -> String {
        format!("{}:{}", self.host_of(id), self.http_port)
    }
}

/// Resolves `host:port` to one socket address, preferring IPv4.
pub fn resolve(host: &str, port: u16) -> Result<SocketAddr, ConfigError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| ConfigError::Resolve(format!("{host}:{port}"), e.to_string()))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| ConfigError::Resolve(format!("{host}:{port}"), "no address".into()))
}

/// Flags for Raft timing, shared by `node` and `cluster`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RaftArgs {
    /// Leader heartbeat interval in ms [default: 50]
    #[arg(long, env = "LABCTL_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Lower bound of the randomized election timeout in ms [default: 150]
    #[arg(long, env = "LABCTL_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    /// Upper bound of the randomized election timeout in ms [default: 300]
    #[arg(long, env = "LABCTL_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    /// Run the PreVote phase before an election [default: true]
    #[arg(long, env = "LABCTL_PRE_VOTE")]
    pub pre_vote: Option<bool>,
    /// A leader steps down when it has not heard from a majority for an election timeout [default: true]
    #[arg(long, env = "LABCTL_CHECK_QUORUM")]
    pub check_quorum: Option<bool>,
    /// The largest log entry (an uploaded file is one) a leader accepts, in bytes; every node needs the same value [default: 16777216]
    #[arg(long, env = "LABCTL_MAX_ENTRY_BYTES")]
    pub max_entry_bytes: Option<usize>,
    /// Compact the Raft log once the database holds this many entries more on its disk (or 64 MiB of them); a follower too far behind then gets a snapshot of the leader's database. 0: never [default: 0]
    #[arg(long, env = "LABCTL_COMPACT_EVERY")]
    pub compact_every: Option<u64>,
    /// Entries the log keeps before the compaction point, for followers a little behind [default: 5000]
    #[arg(long, env = "LABCTL_COMPACT_KEEP")]
    pub compact_keep: Option<u64>,
}

/// Resolved Raft options: timing in milliseconds, and the largest entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub max_entry_bytes: usize,
    /// Log compaction: every this many entries (0: never), keeping this many.
    pub compact_every: u64,
    pub compact_keep: u64,
}

/// The smallest `max_entry_bytes` accepted: an ordinary write must fit.
pub const MIN_ENTRY_BYTES: usize = 64 * 1024;
/// The largest `max_entry_bytes` accepted.
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024 * 1024;

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            pre_vote: true,
            check_quorum: true,
            max_entry_bytes: crate::node::raft::DEFAULT_MAX_ENTRY_BYTES,
            compact_every: 0,
            compact_keep: 5_000,
        }
    }
}

impl RaftTiming {
    /// Merges flags/environment over the file over the defaults, and validates.
    pub fn resolve(args: &RaftArgs, file: &RaftFile) -> Result<RaftTiming, ConfigError> {
        let d = RaftTiming::default();
        let t = RaftTiming {
            heartbeat_ms: args.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(d.heartbeat_ms),
            election_timeout_min_ms: args
                .election_timeout_min_ms
                .or(file.election_timeout_min_ms)
                .unwrap_or(d.election_timeout_min_ms),
            election_timeout_max_ms: args
                .election_timeout_max_ms
                .or(file.election_timeout_max_ms)
                .unwrap_or(d.election_timeout_max_ms),
            pre_vote: args.pre_vote.or(file.pre_vote).unwrap_or(d.pre_vote),
            check_quorum: args.check_quorum.or(file.check_quorum).unwrap_or(d.check_quorum),
            max_entry_bytes: args.max_entry_bytes.or(file.max_entry_bytes).unwrap_or(d.max_entry_bytes),
            compact_every: args.compact_every.or(file.compact_every).unwrap_or(d.compact_every),
            compact_keep: args.compact_keep.or(file.compact_keep).unwrap_or(d.compact_keep),
        };
        if !(MIN_ENTRY_BYTES..=MAX_ENTRY_BYTES).contains(&t.max_entry_bytes) {
            return Err(ConfigError::Invalid(format!(
                "max_entry_bytes must be between {MIN_ENTRY_BYTES} and {MAX_ENTRY_BYTES}, not {}",
                t.max_entry_bytes
            )));
        }
        if t.heartbeat_ms == 0 {
            return Err(ConfigError::Invalid("heartbeat_ms must be positive".into()));
        }
        if t.election_timeout_min_ms <= t.heartbeat_ms {
            return Err(ConfigError::Invalid(format!(
                "election_timeout_min_ms ({}) must be larger than heartbeat_ms ({})",
                t.election_timeout_min_ms, t.heartbeat_ms
            )));
        }
        if t.election_timeout_max_ms <= t.election_timeout_min_ms {
            return Err(ConfigError::Invalid(format!(
                "election_timeout_max_ms ({}) must be larger than election_timeout_min_ms ({})",
                t.election_timeout_max_ms, t.election_timeout_min_ms
            )));
        }
        Ok(t)
    }

    /// These settings as arguments for a `labctl node` child process.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            format!("--heartbeat-ms={}", self.heartbeat_ms),
            format!("--election-timeout-min-ms={}", self.election_timeout_min_ms),
            format!("--election-timeout-max-ms={}", self.election_timeout_max_ms),
            format!("--pre-vote={}", self.pre_vote),
            format!("--check-quorum={}", self.check_quorum),
            format!("--max-entry-bytes={}", self.max_entry_bytes),
            format!("--compact-every={}", self.compact_every),
            format!("--compact-keep={}", self.compact_keep),
        ]
    }

    /// When the log is compacted, if ever.
    pub fn compaction(&self) -> Option<crate::node::engine::Compaction> {
        (self.compact_every > 0).then_some(crate::node::engine::Compaction {
            every_entries: self.compact_every,
            every_bytes: 64 * 1024 * 1024,
            keep_entries: self.compact_keep,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_comes_from_its_variable_or_the_file_its_file_variable_names() {
        // Names of this test's own, so that no other test sees them change.
        let name = "LABCTL_TEST_SECRET_ENV";
        let file_var = format!("{name}_FILE");
        assert_eq!(secret_env(name).unwrap(), None);
        std::env::set_var(name, "in the variable");
        assert_eq!(secret_env(name).unwrap().as_deref(), Some("in the variable"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "in the file\r\n").unwrap();
        std::env::set_var(&file_var, &path);
        let both = secret_env(name).unwrap_err().to_string();
        assert!(both.contains("both set"), "{both}");
        std::env::remove_var(name);
        assert_eq!(secret_env(name).unwrap().as_deref(), Some("in the file"), "one last line break is dropped");
        std::env::set_var(&file_var, dir.path().join("missing"));
        let missing = secret_env(name).unwrap_err().to_string();
        assert!(missing.contains("cannot read") && missing.contains("missing"), "{missing}");
        assert!(!missing.contains("in the file"));
        std::env::remove_var(&file_var);
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let file: FileConfig = toml::from_str("[cluster]\nnodes = 3\nraft_port = 6000\n").unwrap();
        let args = ClusterArgs { nodes: Some(7), ..ClusterArgs::default() };
        let c = Cluster::resolve(&args, &file.cluster).unwrap();
        assert_eq!(c.nodes, 7);
        assert_eq!(c.raft_port, 6000);
        assert_eq!(c.http_port, 8000);
        assert_eq!(c.host_of(3), "127.0.0.3");
        assert_eq!(c.raft_addr(3).unwrap(), "127.0.0.3:6000".parse().unwrap());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        assert!(toml::from_str::<FileConfig>("[cluster]\nnodez = 3\n").is_err());
        let bad = ClusterArgs { host: Some("localhost".into()), ..ClusterArgs::default() };
        assert!(Cluster::resolve(&bad, &ClusterFile::default()).is_err());
        let bad = RaftArgs { election_timeout_max_ms: Some(100), ..RaftArgs::default() };
        assert!(RaftTiming::resolve(&bad, &RaftFile::default()).is_err());
        let small = RaftArgs { max_entry_bytes: Some(1000), ..RaftArgs::default() };
        assert!(RaftTiming::resolve(&small, &RaftFile::default()).is_err());
        let file: FileConfig = toml::from_str("[raft]\nmax_entry_bytes = 1048576\n").unwrap();
        assert_eq!(RaftTiming::resolve(&RaftArgs::default(), &file.raft).unwrap().max_entry_bytes, 1 << 20);
    }
}
