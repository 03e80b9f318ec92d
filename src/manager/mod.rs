//! `labctl manager`: carries scraped products from RabbitMQ to the cluster's leader, and the
//! processed file from FTP to the leader's upload endpoint (SPEC §5).
//!
//! # Threads
//! - The HTTP service ([`http`], actix-web, on the main thread): `POST /leader` (the leader's
//!   announcement), `GET /leader`, `GET /healthz`, `GET /status`. It stops on SIGINT/SIGTERM, and the
//!   other threads with it.
//! - The consumer ([`consumer`]): one thread owns the RabbitMQ connection, receives deliveries and
//!   acknowledges them; a pool of workers posts the items to the leader, several at once.
//! - The FTP sync ([`ftp`]): downloads the processed file at an interval and uploads it when it
//!   changed.
//!
//! Consumer and FTP sync reach the leader through one [`leader::LeaderClient`], which knows where
//! the leader is (announcements, redirects, or asking the nodes) and retries through leader changes.

pub mod consumer;
pub mod ftp;
pub mod http;
pub mod leader;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::{Cluster, ClusterArgs, ConfigError, FileConfig, ManagerFile};

/// The environment variable holding the FTP password (never a flag); `…_FILE` names a file
/// holding it instead.
pub const FTP_PASSWORD_ENV: &str = "LABCTL_FTP_PASSWORD";

/// The environment variable holding the password of the manager's account on the nodes.
pub const PASSWORD_ENV: &str = "LABCTL_MANAGER_PASSWORD";
/// The environment variable naming a file that holds it (Docker secrets).
pub const PASSWORD_FILE_ENV: &str = "LABCTL_MANAGER_PASSWORD_FILE";

/// Options of `labctl manager`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// Address of the manager's HTTP service (POST/GET /leader, /healthz, /status) [default: 0.0.0.0:8080]
    #[arg(long, env = "LABCTL_MANAGER_LISTEN")]
    pub listen: Option<String>,
    /// RabbitMQ URL; give one with a password through LABCTL_AMQP_URL or the config file
    /// [default: amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long, env = "LABCTL_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// Durable queue of scraped products [default: scraped_products]
    #[arg(long, env = "LABCTL_QUEUE")]
    pub queue: Option<String>,
    /// Durable queue for items the leader can never accept [default: <queue>.dead]
    #[arg(long, env = "LABCTL_DEAD_LETTER_QUEUE")]
    pub dead_letter_queue: Option<String>,
    /// Unacknowledged messages RabbitMQ may hand the manager at once [default: 256]
    #[arg(long, env = "LABCTL_PREFETCH")]
    pub prefetch: Option<u16>,
    /// Items posted to the leader at the same time [default: 64]
    #[arg(long, env = "LABCTL_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// FTP server holding the processed file; FTP sync is off without one [default: none]
    #[arg(long, env = "LABCTL_FTP_HOST")]
    pub ftp_host: Option<String>,
    /// FTP control port [default: 21]
    #[arg(long, env = "LABCTL_FTP_PORT")]
    pub ftp_port: Option<u16>,
    /// FTP user; its password comes from LABCTL_FTP_PASSWORD or ftp_password in the config file
    /// [default: anonymous]
    #[arg(long, env = "LABCTL_FTP_USER")]
    pub ftp_user: Option<String>,
    /// Path of the processed file on the FTP server [default: processed_products.json]
    #[arg(long, env = "LABCTL_FTP_PATH")]
    pub ftp_path: Option<String>,
    /// Time between two downloads of the processed file: 30s, 500ms, 2m [default: 30s]
    #[arg(long, env = "LABCTL_FTP_INTERVAL")]
    pub ftp_interval: Option<String>,
    /// Explicit FTPS (AUTH TLS) to the FTP server, verified against --tls-ca [default: false]
    #[arg(long, env = "LABCTL_FTP_TLS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub ftp_tls: Option<bool>,
    /// Account the manager writes to the nodes as, when they require accounts (--auth); its password comes from LABCTL_MANAGER_PASSWORD or LABCTL_MANAGER_PASSWORD_FILE, never a flag [default: none]
    #[arg(long, env = "LABCTL_MANAGER_USER")]
    pub user: Option<String>,
    /// Where the nodes are: the manager asks their /status when it does not know the leader
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The manager serves HTTPS with --tls-cert and --tls-key, and verifies https nodes with --tls-ca
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// The resolved options.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listen: SocketAddr,
    pub consumer: consumer::ConsumerSettings,
    /// `host:port` of every node's HTTP API.
    pub nodes: Vec<String>,
    /// `https` or `http`: how the nodes are reached.
    pub node_scheme: &'static str,
    /// The manager's own certificate, and the CA file nodes are verified against.
    pub tls: crate::tls::TlsSettings,
    /// None: FTP sync is off.
    pub ftp: Option<ftp::FtpSettings>,
}

impl Settings {
    /// Merges flags/environment over the file over the defaults, and validates. `ftp_password_env`
    /// is the value of [`FTP_PASSWORD_ENV`].
    pub fn resolve(args: &Args, file: &FileConfig, ftp_password_env: Option<String>) -> Result<Settings, ConfigError> {
        let m: &ManagerFile = &file.manager;
        let listen_text = args.listen.clone().or_else(|| m.listen.clone()).unwrap_or_else(|| "0.0.0.0:8080".into());
        let listen = parse_listen(&listen_text)?;
        let queue = args.queue.clone().or_else(|| m.queue.clone()).unwrap_or_else(|| "scraped_products".into());
        let dead_letter_queue = args
            .dead_letter_queue
            .clone()
            .or_else(|| m.dead_letter_queue.clone())
            .unwrap_or_else(|| format!("{queue}.dead"));
        if queue.is_empty() || dead_letter_queue.is_empty() || queue == dead_letter_queue {
            return Err(ConfigError::Invalid(format!(
                "queue ({queue:?}) and dead_letter_queue ({dead_letter_queue:?}) must be two different names"
            )));
        }
        let prefetch = args.prefetch.or(m.prefetch).unwrap_or(256);
        let concurrency = args.concurrency.or(m.concurrency).unwrap_or(64);
        if prefetch == 0 {
            return Err(ConfigError::Invalid("prefetch must be at least 1".into()));
        }
        if concurrency == 0 || concurrency > 1024 {
            return Err(ConfigError::Invalid(format!("concurrency must be between 1 and 1024, not {concurrency}")));
        }
        let amqp_url = args
            .amqp_url
            .clone()
            .or_else(|| m.amqp_url.clone())
            .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        if !amqp_url.starts_with("amqp://") {
            return Err(ConfigError::Invalid(format!(
                "amqp_url must start with amqp://, not {}",
                redact_url(&amqp_url)
            )));
        }
        let cluster = Cluster::resolve(&args.cluster, &file.cluster)?;
        let nodes = cluster.ids().map(|id| cluster.http_addr(id)).collect();
        let node_scheme = args.cluster.scheme(&file.cluster);
        let tls = crate::tls::TlsSettings::resolve(&args.tls, &file.tls)?;

        let interval_text =
            args.ftp_interval.clone().or_else(|| m.ftp_interval.clone()).unwrap_or_else(|| "30s".into());
        let interval = parse_duration(&interval_text).filter(|d| !d.is_zero()).ok_or_else(|| {
            ConfigError::Invalid(format!("ftp_interval {interval_text:?} is not a duration like 30s"))
        })?;
        let ftp = args.ftp_host.clone().or_else(|| m.ftp_host.clone()).map(|host| ftp::FtpSettings {
            host,
            port: args.ftp_port.or(m.ftp_port).unwrap_or(21),
            user: args.ftp_user.clone().or_else(|| m.ftp_user.clone()).unwrap_or_else(|| "anonymous".into()),
            password: ftp_password_env.or_else(|| m.ftp_password.clone()).unwrap_or_default(),
            path: args
                .ftp_path
                .clone()
                .or_else(|| m.ftp_path.clone())
                .unwrap_or_else(|| "processed_products.json".into()),
            interval,
            tls: args.ftp_tls.or(m.ftp_tls).unwrap_or(false),
        });
        Ok(Settings {
            listen,
            consumer: consumer::ConsumerSettings { amqp_url, queue, dead_letter_queue, prefetch, concurrency },
            nodes,
            node_scheme,
            tls,
            ftp,
        })
    }
}

/// `host:port`, the host an address or a name.
fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let invalid = || ConfigError::Invalid(format!("listen {text:?} is not host:port"));
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    crate::config::resolve(host.trim_start_matches('[').trim_end_matches(']'), port)
}

/// `30s`, `500ms`, `2m`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// The URL with its password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Sleeps for `wait` unless the stop channel closes first; true when stopping.
pub(crate) fn pause(stop: &Receiver<()>, wait: Duration) -> bool {
    !matches!(stop.recv_timeout(wait), Err(RecvTimeoutError::Timeout))
}

/// True once the stop channel has closed.
pub(crate) fn stopping(stop: &Receiver<()>) -> bool {
    matches!(stop.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected))
}

/// What the manager has done since it started, shown by `GET /status`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Deliveries received from RabbitMQ (a redelivered message counts again).
    pub consumed: AtomicU64,
    /// Items the leader accepted, acknowledged to RabbitMQ.
    pub stored: AtomicU64,
    /// Requests to the cluster that are tried again (no leader, leader gone, 5xx, timeouts).
    pub retried: AtomicU64,
    /// Items moved to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Processed files the leader imported.
    pub uploads: AtomicU64,
    /// FTP downloads of an unchanged file, not sent again.
    pub ftp_unchanged: AtomicU64,
    /// FTP downloads that failed, and files the leader refused.
    pub ftp_errors: AtomicU64,
    /// Connections made to RabbitMQ.
    pub amqp_connects: AtomicU64,
    pub amqp_connected: AtomicBool,
    /// Items being posted right now.
    pub in_flight: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn to_json(&self) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "consumed": get(&self.consumed),
            "stored": get(&self.stored),
            "retried": get(&self.retried),
            "dead_lettered": get(&self.dead_lettered),
            "uploads": get(&self.uploads),
            "ftp_unchanged": get(&self.ftp_unchanged),
            "ftp_errors": get(&self.ftp_errors),
            "amqp_connects": get(&self.amqp_connects),
            "amqp_connected": self.amqp_connected.load(Ordering::Relaxed),
            "in_flight": get(&self.in_flight),
        })
    }
}

/// The `Authorization` the manager sends the nodes: HTTP Basic with its account, when one is
/// configured. The password comes from the environment or a file, never from a flag or the
/// config file, and is never logged.
fn node_credentials(args: &Args, file: &FileConfig) -> anyhow::Result<Option<String>> {
    let Some(user) = args.user.clone().or_else(|| file.manager.user.clone()).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let password = match std::env::var_os(PASSWORD_ENV).filter(|p| !p.is_empty()) {
        Some(p) => p.into_string().map_err(|_| anyhow::anyhow!("{PASSWORD_ENV} is not UTF-8"))?,
        None => {
            let path = std::env::var_os(PASSWORD_FILE_ENV).filter(|p| !p.is_empty()).ok_or_else(|| {
                anyhow::anyhow!(
                    "the manager's user {user:?} needs a password: set {PASSWORD_ENV} or {PASSWORD_FILE_ENV}"
                )
            })?;
            let path = std::path::PathBuf::from(path);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{PASSWORD_FILE_ENV}: cannot read {}", path.display()))?;
            text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string()
        }
    };
    use base64ct::Encoding;
    log::info!("manager: writing to the nodes as {user:?}");
    Ok(Some(format!("Basic {}", base64ct::Base64::encode_string(format!("{user}:{password}").as_bytes()))))
}

/// Runs the manager until SIGINT or SIGTERM.
pub fn run(args: Args, file: &FileConfig) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(&args, file, crate::config::secret_env(FTP_PASSWORD_ENV)?)?;
    // Every TLS file is read now: a bad one stops the manager at start.
    let server_tls = settings.tls.server_config()?;
    let client_tls = settings.tls.client()?;
    let stats = Arc::new(Stats::default());
    let book = Arc::new(leader::LeaderBook::new(settings.nodes.clone()));
    let key = crate::config::cluster_key(&args.cluster, &file.cluster)?;
    // Closing this channel (dropping the sender) tells every thread to stop.
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let client = Arc::new(
        leader::LeaderClient::new(
            book.clone(),
            settings.nodes.clone(),
            settings.node_scheme,
            &client_tls,
            settings.consumer.concurrency,
            stats.clone(),
            stop_rx.clone(),
        )
        .with_authorization(node_credentials(&args, file)?),
    );
    match &key {
        Some(_) => log::info!("manager: secure mode: leader announcements must be signed with the cluster secret"),
        None => log::info!(
            "manager: open mode (no cluster secret): a leader announcement counts once the member confirms it"
        ),
    }
    let status = http::Status { book, client: client.clone(), key, stats: stats.clone(), settings: settings.clone() };

    actix_web::rt::System::new().block_on(async move {
        let scheme = if server_tls.is_some() { "https" } else { "http" };
        let (server, addr) = http::bind(settings.listen, server_tls, status)
            .with_context(|| format!("cannot serve {} on {}", scheme.to_ascii_uppercase(), settings.listen))?;
        log::info!("manager: HTTP on {scheme}://{addr}");
        log::info!(
            "manager: nodes {}",
            settings.nodes.iter().map(|n| format!("{}://{n}", settings.node_scheme)).collect::<Vec<_>>().join(", ")
        );
        if settings.node_scheme == "https" || settings.tls.ca.is_some() {
            log::info!("manager: https:// nodes are verified against {}", client_tls.trusted());
        }
        let consumer = consumer::start(settings.consumer.clone(), client.clone(), stats.clone(), stop_rx.clone())?;
        let ftp = match settings.ftp.clone() {
            Some(f) => {
                let tls = if f.tls { Some(settings.tls.ftp_client()?) } else { None };
                Some(ftp::start(f, tls, client.clone(), stats.clone(), stop_rx.clone())?)
            }
            None => {
                log::info!("manager: FTP sync is off (no ftp_host configured)");
                None
            }
        };
        let served = server.await;
        log::info!("manager: stopping");
        drop(stop_tx);
        for (name, thread) in [("consumer", Some(consumer)), ("FTP sync", ftp)] {
            if let Some(thread) = thread {
                if thread.join().is_err() {
                    log::error!("manager: the {name} thread panicked");
                }
            }
        }
        served.context("the HTTP service failed")
    })?;
    log::info!("manager: stopped");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_file_beats_default_and_the_password_comes_from_env_or_file() {
        let file: FileConfig = toml::from_str(
            "[cluster]\nnodes = 3\nhttp_port = 9000\n[manager]\nqueue = \"items\"\nprefetch = 10\n\
             ftp_host = \"ftp\"\nftp_password = \"from-file\"\nftp_interval = \"500ms\"\n",
        )
        .unwrap();
        let args = Args { prefetch: Some(20), ..Args::default() };
        let s = Settings::resolve(&args, &file, None).unwrap();
        assert_eq!(s.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(s.consumer.queue, "items");
        assert_eq!(s.consumer.dead_letter_queue, "items.dead");
        assert_eq!(s.consumer.prefetch, 20);
        assert_eq!(s.consumer.concurrency, 64);
        assert_eq!(s.nodes, ["127.0.0.1:9000", "127.0.0.2:9000", "127.0.0.3:9000"]);
        let ftp = s.ftp.unwrap();
        assert_eq!((ftp.host.as_str(), ftp.port, ftp.user.as_str()), ("ftp", 21, "anonymous"));
        assert_eq!(ftp.password, "from-file");
        assert_eq!(ftp.interval, Duration::from_millis(500));
        let s = Settings::resolve(&args, &file, Some("from-env".into())).unwrap();
        assert_eq!(s.ftp.unwrap().password, "from-env");

        let none = Settings::resolve(&Args::default(), &FileConfig::default(), None).unwrap();
        assert_eq!(none.ftp, None, "FTP sync is off without a host");
        assert_eq!(none.consumer.queue, "scraped_products");
        assert_eq!(none.nodes.len(), 5);
        assert_eq!(none.nodes[4], "127.0.0.5:8000");
    }

    #[test]
    fn the_example_config_file_gives_the_defaults() {
        let file: FileConfig = toml::from_str(include_str!("../../config/manager.toml")).unwrap();
        let from_file = Settings::resolve(&Args::default(), &file, None).unwrap();
        let defaults = Settings::resolve(&Args::default(), &FileConfig::default(), None).unwrap();
        assert_eq!(from_file, defaults);
    }

    #[test]
    fn bad_values_are_refused() {
        let file = FileConfig::default();
        for args in [
            Args { prefetch: Some(0), ..Args::default() },
            Args { concurrency: Some(0), ..Args::default() },
            Args { listen: Some("nowhere".into()), ..Args::default() },
            Args { amqp_url: Some("http://x".into()), ..Args::default() },
            Args { ftp_interval: Some("soon".into()), ..Args::default() },
            Args { queue: Some("q".into()), dead_letter_queue: Some("q".into()), ..Args::default() },
        ] {
            assert!(Settings::resolve(&args, &file, None).is_err(), "{args:?}");
        }
        assert!(toml::from_str::<FileConfig>("[manager]\nqueeu = \"x\"\n").is_err());
    }

    #[test]
    fn durations_and_redaction() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5 days"), None);
        assert_eq!(redact_url("amqp://user:secret@host:5672/%2f"), "amqp://user:***@host:5672/%2f");
        assert_eq!(redact_url("amqp://host:5672"), "amqp://host:5672");
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "the FIPS 180-2 test vector"
        );
    }
}
