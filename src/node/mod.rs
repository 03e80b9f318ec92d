//! `labctl node`: one cluster member.
//!
//! [`raft`] is the consensus core; the other modules are its edges: UDP transport, the
//! durable log on disk, and the driver loop that feeds the core messages and time.

pub mod accounts;
pub mod advertise;
pub mod announce;
pub mod api;
pub mod apply;
pub mod auth;
pub mod console;
pub mod driver;
pub mod engine;
pub mod guard;
pub mod handshake;
pub mod http;
pub mod listings;
pub mod log_writer;
pub mod notify;
pub mod raft;
pub mod respond;
pub mod snapshot_files;
pub mod status;
pub mod storage;
pub mod store;
pub mod transfer;
pub mod transport;
pub mod waiting;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::net::IpAddr;

use anyhow::Context;

use self::apply::Applier;
use self::driver::Driver;
use self::raft::{NodeId, Raft};
use self::storage::Storage;
use self::store::own_file::{OwnFile, Verdict};
use self::store::pool::ReadPool;
use self::store::Store;
use self::transport::Transport;
use crate::config::{Cluster, ClusterArgs, FileConfig, RaftArgs, RaftTiming};
use crate::proto;
use crate::tls::{TlsArgs, TlsSettings};

/// Options of `labctl node`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// This node's id: node N binds <host of N>:<raft port>
    #[arg(long, env = "LABCTL_NODE_ID")]
    pub id: u32,
    /// Directory for node data; this node uses <data-dir>/nodeN [default: data]
    #[arg(long, env = "LABCTL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: a SQLite path, or postgres:// / mysql:// in builds with those features [default: <data-dir>/nodeN/labctl.db]
    #[arg(long, env = "LABCTL_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Manager to tell, after each election won, where the leader is: POST <url>/leader [default: none]
    #[arg(long, env = "LABCTL_MANAGER_URL")]
    pub manager_url: Option<String>,
    /// Host to bind instead of this node's own host, e.g. 0.0.0.0 in a container
    #[arg(long, env = "LABCTL_BIND_HOST")]
    pub bind_host: Option<String>,
    /// Where clients outside the cluster's network reach node N's HTTP API, `{id}` replaced by
    /// N, e.g. 127.0.0.{id} where a compose lab publishes its ports. Redirects and /status then
    /// name members by these addresses to every client that did not name this node by its
    /// cluster address [default: none: the cluster addresses for every client]
    #[arg(long, env = "LABCTL_PUBLIC_HOST", value_name = "HOST")]
    pub public_host: Option<String>,
    /// The HTTP port of the public addresses (see --public-host) [default: the HTTP port]
    #[arg(long, env = "LABCTL_PUBLIC_HTTP_PORT", value_name = "PORT")]
    pub public_http_port: Option<u16>,
    /// The largest file POST /api/upload/file accepts, in bytes [default: 8388608]
    #[arg(long, env = "LABCTL_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<usize>,
    /// With a cluster secret: addresses or networks, comma-separated (127.0.0.9,10.0.0.0/24),
    /// whose unsigned control requests are still taken, e.g. a course controller's [default:
    /// none; without a secret every address may send them]
    #[arg(long, env = "LABCTL_CONTROL_ALLOW", value_name = "ADDRS")]
    pub control_allow: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Require accounts on the HTTP API and the console: on or off (--auth alone: on). The first admin's password comes from LABCTL_ADMIN_PASSWORD or LABCTL_ADMIN_PASSWORD_FILE, else the leader makes one and prints it once [default: off]
    #[arg(long, env = "LABCTL_AUTH", num_args = 0..=1, default_missing_value = "on", value_parser = parse_switch)]
    pub auth: Option<bool>,
    /// How long a login's token is valid: 30s, 15m, 12h, or seconds [default: 12h]
    #[arg(long, env = "LABCTL_TOKEN_TTL")]
    pub token_ttl: Option<String>,
    /// Name of the first admin account, made when authentication is on and no admin exists [default: admin]
    #[arg(long, env = "LABCTL_ADMIN_NAME")]
    pub admin_name: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub raft: RaftArgs,
}

/// `on`/`off` (also `true`/`false`, `yes`/`no`, `1`/`0`).
fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        other => Err(format!("{other:?} is neither on nor off")),
    }
}

/// The environment variable with the token of the console's control buttons in open mode
/// (`…_FILE` names a file holding it instead); `[node] console_token` in the file.
pub const CONSOLE_TOKEN_ENV: &str = "LABCTL_CONSOLE_TOKEN";

/// Database connections for HTTP reads at most (opened as reads need them).
const READ_CONNECTIONS: u32 = 8;

/// Runs a node until SHUTDOWN or a signal.
pub fn run(args: Args, file: &FileConfig) -> anyhow::Result<ExitCode> {
    let cluster = Cluster::resolve(&args.cluster, &file.cluster)?;
    let timing = RaftTiming::resolve(&args.raft, &file.raft)?;
    if args.id == 0 || args.id > cluster.nodes {
        anyhow::bail!("--id {} is not a member: the cluster has node1 … node{}", args.id, cluster.nodes);
    }
    let name = proto::node_name(args.id);
    let data_dir =
        args.data_dir.clone().or_else(|| file.node.data_dir.clone()).unwrap_or_else(|| PathBuf::from("data"));
    let node_dir = data_dir.join(&name);
    let bind_host = args.bind_host.clone().or_else(|| file.node.bind_host.clone()).unwrap_or_else(|| {
        let own = cluster.host_of(args.id);
        if own.parse::<IpAddr>().is_ok() {
            own
        } else {
            "0.0.0.0".into()
        }
    });
    let bind = crate::config::resolve(&bind_host, cluster.raft_port)?;
    let max_upload_bytes = args.max_upload_bytes.or(file.node.max_upload_bytes).unwrap_or(api::DEFAULT_MAX_UPLOAD);
    if max_upload_bytes == 0 {
        anyhow::bail!("max_upload_bytes must be positive");
    }
    let http_bind = crate::config::resolve(&bind_host, cluster.http_port)?;
    let key = crate::config::cluster_key(&args.cluster, &file.cluster)?;
    // A secret: from the environment or a file, never a flag; read now, so that a missing file
    // stops the node at start.
    let console_token = crate::config::secret_env(CONSOLE_TOKEN_ENV)?.or_else(|| file.node.console_token.clone());
    let allow_text = args.control_allow.clone().or_else(|| file.node.control_allow.as_ref().map(|l| l.join(",")));
    let allow = guard::AllowList::parse(allow_text.as_deref().unwrap_or(""))
        .map_err(|e| anyhow::anyhow!("control_allow: {e}"))?;
    if key.is_none() && !allow.is_empty() {
        anyhow::bail!(
            "control_allow ({allow}) needs a cluster secret: without one every address may send control requests"
        );
    }
    // Every TLS file is read now, so that a bad one stops the node before it joins the cluster.
    let tls = TlsSettings::resolve(&args.tls, &file.tls)?;
    let server_tls = tls.server_config()?;
    let client_tls = tls.client()?;
    // The cluster serves one scheme: a node with a certificate expects its peers to have one.
    let scheme = match (server_tls.is_some(), args.cluster.https(&file.cluster)) {
        (true, Some(false)) => anyhow::bail!("https is off for the cluster, but this node was given a TLS certificate"),
        (false, Some(true)) => anyhow::bail!(
            "https is on for the cluster, but this node has no certificate: give --tls-cert and --tls-key \
             (LABCTL_TLS_CERT and LABCTL_TLS_KEY, or [tls] cert and key)"
        ),
        (true, _) => "https",
        (false, _) => "http",
    };
    let public_host = args.public_host.clone().or_else(|| file.node.public_host.clone());
    if let Some(pattern) = public_host.as_deref().filter(|p| !p.contains("{id}")) {
        anyhow::bail!("public_host {pattern:?} must contain {{id}}, like host (e.g. 127.0.0.{{id}})");
    }
    let public_http_port = args.public_http_port.or(file.node.public_http_port);
    let advertised = advertise::Advertised::new(scheme, &cluster, args.id, public_host.as_deref(), public_http_port);
    if let Some(pattern) = &public_host {
        log::info!(
            "{name}: clients outside the cluster's network are given members' public addresses {pattern}:{} \
             (those naming this node {} are given cluster addresses)",
            public_http_port.unwrap_or(cluster.http_port),
            cluster.http_addr(args.id)
        );
    }
    let auth_on = args.auth.or(file.node.auth).unwrap_or(false);
    let token_ttl = match args.token_ttl.as_deref().or(file.node.token_ttl.as_deref()) {
        Some(text) => crate::manager::parse_duration(text)
            .filter(|d| !d.is_zero() && *d <= std::time::Duration::from_secs(366 * 24 * 3600))
            .ok_or_else(|| {
                anyhow::anyhow!("token_ttl {text:?} is not a duration from 1 ms to a year (30s, 15m, 12h)")
            })?,
        None => auth::DEFAULT_TOKEN_TTL,
    };
    let admin_name = args.admin_name.clone().or_else(|| file.node.admin_name.clone()).unwrap_or_else(|| "admin".into());
    if let Err(e) = store::check_account_name(&admin_name) {
        anyhow::bail!("admin_name {admin_name:?}: {e}");
    }
    // Read (and checked) at start, so that a missing file stops the node at once.
    let admin_password = if auth_on { Some(accounts::AdminPassword::from_env()?) } else { None };

    let given_url = args.database_url.clone().or_else(|| file.node.database_url.clone());
    if let Some(url) = given_url.as_deref().filter(|url| store::is_sqlite_in_memory(url)) {
        anyhow::bail!(
            "{url:?} is a SQLite database in memory, which each of the node's connections would see \
             empty but its own: give a file, or no --database-url for the node's own file"
        );
    }
    let (storage, recovered) = Storage::open(&node_dir).with_context(|| format!("cannot open the data of {name}"))?;
    log::info!(
        "{name}: recovered term {} and {} log entries after index {} from {}",
        recovered.hard_state.term,
        recovered.entries.len(),
        recovered.base.index,
        node_dir.display()
    );

    let private = given_url.is_none();
    let database_url = given_url.unwrap_or_else(|| node_dir.join("labctl.db").to_string_lossy().into_owned());
    // The node's own file is written without flushes, and rebuilt if the machine restarted under it.
    let own_file = if private {
        let (own, verdict) = OwnFile::prepare(Path::new(&database_url), timing.compaction().is_some())
            .with_context(|| format!("cannot check the state of {database_url}"))?;
        match verdict {
            Verdict::Rebuilt(why) => log::warn!("{name}: rebuilding {database_url} from the Raft log: {why}"),
            Verdict::Kept(why) => log::info!("{name}: using {database_url}: {why}"),
            Verdict::New => {}
        }
        own
    } else {
        None
    };
    // The node's own file is the node's alone: its connections lock each other in memory, and
    // other processes are kept out.
    let open_url = if private { store::exclusive_sqlite_url(&database_url) } else { database_url.clone() };
    let mut write_store = Store::open(&open_url).with_context(|| format!("cannot open the database of {name}"))?;
    if private {
        // The node's own file, in its own data dir: no other node applies to it.
        write_store = write_store.private();
        // It applies only what the log holds, so it cannot be ahead of the log: if it is, the
        // log was cut or replaced, and the node would have forgotten entries (and the term and
        // vote) it had promised the others to keep.
        let applied = write_store.last_applied().with_context(|| format!("cannot read the database of {name}"))?;
        let last = recovered.last_index();
        // A snapshot loaded just before the node stopped, before its log was rewritten to
        // start after it: the database is ahead of the log, rightly.
        let loaded = snapshot_files::SnapshotFiles::loaded_at(&node_dir.join("snapshots"));
        if applied.index > last && loaded == Some(applied.index) {
            log::info!("{name}: the database holds the snapshot at index {} it received last", applied.index);
        } else if applied.index < recovered.base.index {
            anyhow::bail!(
                "{name}: {database_url} has applied the log up to entry {}, but {} was compacted up to entry {}:                  the entries between are in no file of this node (its database was lost or rebuilt, as after a                  restart of the machine). Keep the node stopped; a node that lost its database after compaction                  cannot be recovered yet (see the README, \"When a node's disk fails\")",
                applied.index,
                node_dir.join("raft.log").display(),
                recovered.base.index,
            );
        } else if applied.index > last {
            anyhow::bail!(
                "{name}: {database_url} has applied the log up to entry {}, but {} holds entries only up to \
                 {last}: the Raft log was cut or replaced, and this node has lost entries it acknowledged. Put \
                 the log back, or keep the node stopped; starting it empty is not safe (see the README, \"When a \
                 node's disk fails\")",
                applied.index,
                node_dir.join("raft.log").display(),
            );
        }
    }
    if own_file.is_some() {
        // A compacted log cannot rebuild the file after a reboot: it is written checkpointed.
        let set_up =
            if timing.compaction().is_some() { write_store.checkpointed() } else { write_store.without_flushes() };
        set_up.with_context(|| format!("cannot set up the database of {name}"))?;
    }
    let reads = ReadPool::open(&open_url, READ_CONNECTIONS)
        .with_context(|| format!("cannot open read connections to the database of {name}"))?;
    log::info!("{name}: database {database_url}");
    let access_epoch = write_store.access_epoch();
    let applier = Applier::start(write_store, own_file, name.clone())?;
    let notifier = notify::Notifier::start(file, &name, &open_url, &advertised)?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stopped = runtime.block_on(async {
        let transport = Transport::bind(bind, cluster.clone())
            .await
            .with_context(|| format!("cannot bind UDP {bind} for {name}"))?;
        let transport_addr = transport.local_addr()?;
        log::info!("{name}: Raft and control on udp://{transport_addr}");
        match (&key, allow.is_empty()) {
            (None, _) => log::warn!(
                "{name}: open mode (no cluster secret): datagrams are not signed, and any process that reaches \
                 udp://{transport_addr} may send control requests (SHUTDOWN, STORE, TIMEOUT…); node messages \
                 count only from their member's address. Set LABCTL_CLUSTER_SECRET_FILE for secure mode"
            ),
            (Some(_), true) => log::info!(
                "{name}: secure mode: every datagram is signed with the cluster secret; unsigned control \
                 requests are dropped"
            ),
            (Some(_), false) => log::info!(
                "{name}: secure mode: every datagram is signed with the cluster secret; unsigned control \
                 requests are taken only from {allow}"
            ),
        }
        let peers: Vec<NodeId> = cluster.ids().filter(|&i| i != args.id).collect();
        let config = raft::Config {
            heartbeat: timing.heartbeat_ms * 1000,
            election_min: timing.election_timeout_min_ms * 1000,
            election_max: timing.election_timeout_max_ms * 1000,
            pre_vote: timing.pre_vote,
            check_quorum: timing.check_quorum,
            max_entry_bytes: timing.max_entry_bytes,
            ..raft::Config::new(args.id, peers)
        };
        let origin = tokio::time::Instant::now();
        let log = raft::Log::after(recovered.base.index, recovered.base.term, recovered.entries);
        let raft = Raft::restored(config, recovered.hard_state, log, 0, entropy_seed());
        let (proposals_tx, proposals) = tokio::sync::mpsc::channel(4096);
        let applied = applier.applied_index();
        let socket = transport.sending_socket().context("cannot share the Raft socket with the log writer")?;
        let writer = log_writer::LogWriter::start(&name, storage, socket).context("cannot start the log writer")?;
        let mut driver = Driver::new(raft, writer, transport, origin, cluster.clone(), proposals, applier);
        driver.restore_retained(recovered.base.retained);
        let snapshots = snapshot_files::SnapshotFiles::open(&node_dir.join("snapshots"));
        driver.snapshots(snapshots, timing.compaction());
        if private {
            driver.step_down_on_stall(applied.clone());
        }
        if let Some(key) = key.clone() {
            driver.secure(guard::Guard::new(key, args.id, cluster.nodes, allow));
        }
        let api = actix_web::web::Data::new(api::Api {
            proposals: proposals_tx,
            status: driver.subscribe(),
            reads,
            applied,
            listings: Default::default(),
            notify: notifier.clone(),
            max_upload: max_upload_bytes,
            advertised,
            auth: auth::Auth::new(auth_on, token_ttl, access_epoch),
        });
        if auth_on && console_token.is_some() {
            log::warn!("{name}: console_token is ignored with authentication on: the control buttons need an admin");
        }
        let announce_key = key.clone();
        let mut console = console::Console::new(
            name.clone(),
            console_token,
            transport_addr,
            cluster.clone(),
            scheme,
            &client_tls,
            auth_on,
        );
        if let Some(key) = key {
            console = console.sign_with(key);
        }
        let control = if auth_on {
            "need an admin"
        } else if console.token_required() {
            "need the console token"
        } else {
            "are open (no console_token)"
        };
        if auth_on {
            log::info!("{name}: authentication is on: accounts and roles on the HTTP API (tokens live {token_ttl:?})");
        } else {
            log::info!(
                "{name}: authentication is off: every HTTP request is allowed (start with --auth to require accounts)"
            );
        }
        let admin =
            admin_password.map(|password| tokio::spawn(accounts::ensure_admin(api.clone(), admin_name, password)));
        let http =
            http::Server::start(http_bind, server_tls, driver.subscribe(), api, actix_web::web::Data::new(console))
                .with_context(|| format!("cannot serve {} on {http_bind} for {name}", scheme.to_ascii_uppercase()))?;
        log::info!("{name}: HTTP on {scheme}://{}, web console at / (control buttons {control})", http.local_addr());
        if tls.ca.is_some() || scheme == "https" {
            log::info!("{name}: https:// servers (peers, the manager) are verified against {}", client_tls.trusted());
        }
        let manager_url = args.manager_url.clone().or_else(|| file.node.manager_url.clone());
        let announcer = manager_url
            .map(|url| tokio::spawn(announce::run(url, client_tls.clone(), driver.subscribe(), announce_key)));
        let mailer = notifier.map(|n| tokio::spawn(n.watch_elections(driver.subscribe())));
        let stopped = driver.run(stop_signal()).await;
        if let Some(task) = announcer {
            task.abort();
        }
        if let Some(task) = admin {
            task.abort();
        }
        if let Some(task) = mailer {
            task.abort();
        }
        http.stop().await;
        stopped.map_err(anyhow::Error::from)
    })?;
    log::info!("{name}: stopped ({stopped})");
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            log::warn!("cannot listen for signals; stop the node with SHUTDOWN");
            std::future::pending::<()>().await
        }
    }
}

/// A seed that differs between nodes and runs (election timeouts, fragment ids).
pub(crate) fn entropy_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos ^ ((std::process::id() as u64) << 32)
}
