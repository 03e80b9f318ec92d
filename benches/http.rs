//! HTTP throughput and latency: durable writes, local reads and strong reads against a 5-node
//! labctl cluster on loopback, driven by `wrk`, beside etcd 3.4's JSON gateway under the same load.
//!
//! Each run starts a fresh cluster (5 `labctl node` processes on 127.0.0.1–5, a SQLite file and
//! an fsync'd Raft log per node in a temp dir), waits for a leader, and measures one `wrk` load
//! after the other, each for `--seconds`:
//!
//! 1. **writes**: `POST /api/products` to the leader, a new product with a unique title per
//!    request (`benches/wrk/labctl_write.lua`), with 1 and with 64 connections;
//! 2. **local reads** on a follower, 64 connections: `GET /api/products?limit=20`, and
//!    `GET /api/products/{id}` with ids drawn from the products written;
//! 3. **strong reads** on the leader, 64 connections: `GET /api/products/{id}?consistency=strong`.
//!
//! Then, when etcd is installed, the same for etcd (members on 127.0.0.11–15, their own data
//! dirs, fsync on as by default): `POST /v3/kv/put` with the same product JSON as value (base64,
//! as the gateway wants) with 1 and 64 connections to the leader, serializable `range` reads on a
//! follower and linearizable ones on the leader. labctl and etcd alternate run by run, so a
//! change in the machine's load touches both. The table gives the median over runs of each
//! figure; wrk's latency distribution gives p50 and p99. It also gives the CPU time (user +
//! system, from `/proc`) that all the cluster's processes spent per request: on a machine that
//! other work shares, a steadier comparison than the rates.
//!
//! Every process is killed when its cluster is dropped, on Ctrl-C (checked at least every
//! 50 ms) and on failure; children also die with the benchmark (`PR_SET_PDEATHSIG`).
//! All traffic stays on loopback.
//!
//! ```text
//! apt-get install -y wrk                 # required
//! apt-get install -y etcd-server         # optional: without it, labctl only
//! cargo bench --bench http -- [--seconds 10] [--runs 3] [--no-etcd] [--only labctl|etcd]
//!                             [--raft-port 17655] [--binary PATH]
//! ```
//! `--binary` measures another labctl executable (e.g. a copy built from an earlier commit)
//! instead of the one cargo built.
//!
//! `--paired N` measures only the 1-connection writes, in pairs: one labctl and one etcd cluster
//! are started and kept running, and N pairs of loads alternate between them (labctl first in
//! odd pairs, etcd first in even ones), each pair giving one ratio. A run of the default mode
//! measures etcd a minute or more after labctl; where the machine's speed drifts between
//! minutes, as on a shared virtual machine, the two loads of a pair are seconds apart instead.
//! `--connections C` gives the paired loads C connections instead of 1. Each pair loads the
//! leaders of the moment: when an election moved one, the pair after it goes to the new leader
//! (a pair during which it moved has errors and is left out).
//!
//! `--secure` (with `--paired`) runs labctl as it runs where others can reach it: every datagram signed with a
//! cluster secret, and the HTTP API requiring accounts (`--auth`), every request carrying the
//! admin's HTTP Basic credentials (checked from the node's cache after the first). etcd runs as
//! always, without authentication.
//! `LABCTL_BENCH_SECONDS` and `LABCTL_BENCH_RUNS` set the same as the options.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::etcd::{self, EtcdCluster};
use common::labctl::{LabctlCluster, Security, Timing};
use common::{wait_for_agreement, Args, Proc, System, TempDir};

const MEMBERS: usize = 5;
const STABLE_DEADLINE: Duration = Duration::from_secs(30);
/// wrk gives up on a request after this.
const WRK_TIMEOUT: &str = "5s";
/// The goals of issue 3, and etcd's figures measured on the reference machine, used for the
/// ratios when etcd is not installed here.
const ETCD_REFERENCE: [(u32, f64); 2] = [(1, 652.0), (64, 4116.0)];
const GOAL_WRITES: [(u32, f64); 2] = [(1, 3.0), (64, 2.0)];
/// The goals of issue 20: writes with a cluster secret and accounts on, against etcd.
const GOAL_SECURE_WRITES: [(u32, f64); 2] = [(1, 2.5), (64, 3.0)];
const GOAL_LOCAL_READS: f64 = 30_000.0;
const GOAL_STRONG_READS: f64 = 5_000.0;

const COMMON_LUA: &str = include_str!("wrk/common.lua");
const SCRIPTS: [(&str, &str); 5] = [
    ("labctl_write.lua", include_str!("wrk/labctl_write.lua")),
    ("labctl_get.lua", include_str!("wrk/labctl_get.lua")),
    ("etcd_write.lua", include_str!("wrk/etcd_write.lua")),
    ("etcd_range.lua", include_str!("wrk/etcd_range.lua")),
    ("report.lua", include_str!("wrk/report.lua")),
];

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn stopped() -> Result<(), String> {
    if STOP.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// What one wrk run reports (its `done` hook in common.lua).
#[derive(Debug, Clone, Default)]
struct WrkResult {
    requests: u64,
    duration_us: u64,
    /// Answers other than 2xx (wrk itself counts only 4xx and 5xx).
    non2xx: u64,
    /// The first of them: status and the start of the body.
    example: String,
    socket_errors: u64,
    p50_us: u64,
    p99_us: u64,
    /// CPU time (user + system) of all the cluster's processes during the load, per request.
    cpu_per_request_us: f64,
}

impl WrkResult {
    /// Requests answered with a 2xx status.
    fn ok(&self) -> u64 {
        self.requests.saturating_sub(self.non2xx)
    }
    fn ok_per_second(&self) -> f64 {
        self.ok() as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }
    fn errors(&self) -> u64 {
        self.non2xx + self.socket_errors
    }
}

/// One measured load: which system, which load, how many connections.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Load {
    system: &'static str,
    kind: Kind,
    what: &'static str,
    connections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Write,
    LocalRead,
    StrongRead,
}

struct Sample {
    load: Load,
    run: usize,
    result: WrkResult,
}

struct Options {
    seconds: u64,
    runs: usize,
    port: u16,
    labctl: bool,
    etcd: bool,
    /// `--secure`: a cluster secret and accounts on the labctl nodes.
    security: Option<Security>,
    /// Connections of the `--paired` loads.
    paired_connections: u32,
}

/// The admin's password the `--secure` nodes are started with.
const BENCH_ADMIN_PASSWORD: &str = "bench-admin-password";

impl Options {
    /// The nodes' cluster in the chosen mode.
    fn start_labctl(&self, binary: &Path) -> Result<LabctlCluster, String> {
        LabctlCluster::start_with(binary.to_path_buf(), MEMBERS, self.port, Timing::DEFAULT, self.security.clone())
            .map_err(|e| format!("cannot start the nodes: {e}"))
    }

    /// The headers every labctl request carries: the admin's credentials in `--secure` mode.
    fn labctl_headers(&self) -> Vec<String> {
        use base64ct::Encoding;
        match &self.security {
            Some(s) => {
                let basic = base64ct::Base64::encode_string(format!("admin:{}", s.admin_password).as_bytes());
                vec![format!("Authorization: Basic {basic}")]
            }
            None => Vec::new(),
        }
    }

    /// In `--secure` mode, waits until the leader at `http` knows the admin (the leader makes
    /// the account through the log once it leads).
    fn wait_for_admin(&self, http: std::net::SocketAddr) -> Result<(), String> {
        let Some(header) = self.labctl_headers().pop() else { return Ok(()) };
        let value = header.trim_start_matches("Authorization: ").to_string();
        let deadline = Instant::now() + STABLE_DEADLINE;
        loop {
            let answer = agent().get(&format!("http://{http}/api/me")).header("Authorization", &value).call();
            if answer.is_ok_and(|r| r.status().as_u16() == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("the admin account was not there within {STABLE_DEADLINE:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn main() {
    let args = Args::from_env();
    args.check(&[
        "--seconds",
        "--runs",
        "--no-etcd",
        "--only",
        "--raft-port",
        "--binary",
        "--paired",
        "--connections",
        "--secure",
    ]);
    let env_or = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let only = args.value("--only");
    let opts = Options {
        seconds: args.parse("--seconds", env_or("LABCTL_BENCH_SECONDS", 10)).max(1),
        runs: args.parse("--runs", env_or("LABCTL_BENCH_RUNS", 3) as usize).max(1),
        port: args.parse("--raft-port", 17655),
        labctl: only.as_deref().is_none_or(|o| o == "labctl"),
        etcd: only.as_deref().is_none_or(|o| o == "etcd") && !args.flag("--no-etcd"),
        security: args.flag("--secure").then(|| Security {
            secret: format!("bench-secret-{}-{}", std::process::id(), labctl::proto::auth::clock_micros()),
            admin_password: BENCH_ADMIN_PASSWORD.into(),
        }),
        paired_connections: args.parse("--connections", 1u32).max(1),
    };
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let Some(wrk) = find_on_path("wrk") else {
        eprintln!("\n!!! wrk is not installed: apt-get install -y wrk (Debian), then run again.\n");
        std::process::exit(2);
    };
    let etcd_bin = if opts.etcd {
        let found = etcd::find_binary();
        if found.is_none() {
            let banner = "!".repeat(78);
            eprintln!("\n{banner}\n!!! etcd is NOT installed: labctl only, ratios against the reference figures.");
            eprintln!("!!! apt-get install -y etcd-server   (Debian), then run again.\n{banner}\n");
        }
        found
    } else {
        None
    };
    // Another build (e.g. of an earlier commit) can be measured beside this one in the same minute.
    let binary = args.value("--binary").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_labctl")), PathBuf::from);
    let scratch = TempDir::new("labctl-bench-http").expect("create a scratch dir");
    let wrk = Wrk::new(wrk, scratch.path()).expect("write the wrk scripts");

    println!("# HTTP: 5 members on loopback, fsync on, load from wrk\n");
    println!("machine: {}  ", common::machine());
    let source = if args.value("--binary").is_some() { "given with --binary".into() } else { revision() };
    println!("labctl: {} ({source})  ", binary.display());
    if let Some(bin) = &etcd_bin {
        println!("etcd: {}  ", etcd::version(bin));
    }
    println!("wrk: {}  ", wrk.version());
    if opts.security.is_some() {
        println!(
            "labctl in secure mode: cluster secret (every datagram signed), --auth, HTTP Basic on every request  "
        );
    }
    println!("{} s per load, {} runs, load average at the start {}", opts.seconds, opts.runs, common::loadavg());

    if opts.security.is_some() && args.value("--paired").is_none() {
        eprintln!("--secure measures the writes of --paired: give --paired N");
        std::process::exit(2);
    }
    if let Some(pairs) = args.value("--paired") {
        let pairs: usize = pairs.parse().unwrap_or_else(|_| {
            eprintln!("--paired takes a number of pairs, not {pairs:?}");
            std::process::exit(2)
        });
        let Some(bin) = etcd_bin else {
            eprintln!("--paired compares with etcd: apt-get install -y etcd-server");
            std::process::exit(2)
        };
        println!("{} s per load, {pairs} pairs of {}-connection writes", opts.seconds, opts.paired_connections);
        let started = Instant::now();
        if let Err(e) = paired(&wrk, &binary, bin, &opts, pairs.max(1)) {
            eprintln!("paired writes failed: {e}");
            std::process::exit(1);
        }
        println!("\nload average at the end: {}; {:.0} s in all", common::loadavg(), started.elapsed().as_secs_f64());
        return;
    }

    let mut samples = Vec::new();
    let started = Instant::now();
    for run in 1..=opts.runs {
        if opts.labctl {
            eprintln!("== run {run}: labctl (load average {})", common::loadavg());
            match run_labctl(&wrk, &binary, &opts, run) {
                Ok(s) => samples.extend(s),
                Err(e) => eprintln!("   labctl run {run} failed: {e}"),
            }
        }
        if let Some(bin) = etcd_bin.clone() {
            if stopped().is_ok() {
                eprintln!("== run {run}: etcd (load average {})", common::loadavg());
                match run_etcd(&wrk, bin, &opts, run) {
                    Ok(s) => samples.extend(s),
                    Err(e) => eprintln!("   etcd run {run} failed: {e}"),
                }
            }
        }
        if stopped().is_err() {
            eprintln!("interrupted: reporting what was measured");
            break;
        }
    }
    report(&samples, etcd_bin.is_some());
    println!("\nload average at the end: {}; {:.0} s in all", common::loadavg(), started.elapsed().as_secs_f64());
}

/// One labctl run: a fresh cluster, the write loads, then the read loads.
fn run_labctl(wrk: &Wrk, binary: &Path, opts: &Options, run: usize) -> Result<Vec<Sample>, String> {
    let mut cluster = LabctlCluster::start(binary.to_path_buf(), MEMBERS, opts.port, Timing::DEFAULT)
        .map_err(|e| format!("cannot start the nodes: {e}"))?;
    let all: Vec<usize> = (0..MEMBERS).collect();
    let leader = wait_for_agreement(&mut cluster, &all, STABLE_DEADLINE)?;
    let leader_http = cluster.http_addr(leader);
    let follower = (leader + 1) % MEMBERS;
    let follower_http = cluster.http_addr(follower);
    // The leader serves writes once its first entry is applied.
    poll_status(leader_http, |s| s["role"] == "LEADER" && s["applied_index"].as_u64() >= s["commit_index"].as_u64())?;
    eprintln!("   leader node{}, reads on node{}", leader + 1, follower + 1);

    let url = format!("http://{leader_http}/api/products");
    let mut samples = writes(wrk, &pids(&cluster), opts, run, "labctl", "POST /api/products", &url)?;
    let acknowledged: u64 = samples.iter().map(|s| s.result.ok()).sum();
    // Every acknowledged write is stored (wrk may stop with writes in flight: those may be too).
    let total = product_total(leader_http)?;
    eprintln!("   {acknowledged} writes acknowledged, {total} products stored on the leader");
    if total < acknowledged {
        return Err(format!("only {total} products stored after {acknowledged} acknowledged writes"));
    }
    let commit = status(leader_http)?["commit_index"].as_u64().unwrap_or(0);
    poll_status(follower_http, |s| s["applied_index"].as_u64() >= Some(commit))?;

    let max_id = total.to_string();
    let follower_url = format!("http://{follower_http}");
    let leader_url = format!("http://{leader_http}");
    // (kind, what, URL, script, script arguments)
    let reads = [
        (
            Kind::LocalRead,
            "GET /api/products?limit=20 (follower)",
            format!("{follower_url}/api/products?limit=20"),
            "report.lua",
            vec![],
        ),
        (
            Kind::LocalRead,
            "GET /api/products/{id} (follower)",
            format!("{follower_url}/api/products/1"),
            "labctl_get.lua",
            vec![max_id.as_str()],
        ),
        (
            Kind::StrongRead,
            "GET /api/products/{id}?consistency=strong (leader)",
            format!("{leader_url}/api/products/1"),
            "labctl_get.lua",
            vec![max_id.as_str(), "?consistency=strong"],
        ),
    ];
    for (kind, what, url, script, script_args) in reads {
        stopped()?;
        let result = wrk.run(&pids(&cluster), 64, opts.seconds, &url, script, &script_args)?;
        samples.push(Sample { load: Load { system: "labctl", kind, what, connections: 64 }, run, result });
    }
    let views = cluster.leaders(&all, Duration::from_millis(200));
    if common::agreed_leader(&views, MEMBERS, None) != Some(leader) {
        eprintln!("   !!! the leader changed during the run: {views:?}");
    }
    Ok(samples)
}

/// One etcd run: a fresh cluster, puts with 1 and 64 connections, then range reads.
fn run_etcd(wrk: &Wrk, bin: PathBuf, opts: &Options, run: usize) -> Result<Vec<Sample>, String> {
    let mut cluster = EtcdCluster::start(bin, MEMBERS, 150, 30).map_err(|e| format!("cannot start etcd: {e}"))?;
    let all: Vec<usize> = (0..MEMBERS).collect();
    let leader = wait_for_agreement(&mut cluster, &all, STABLE_DEADLINE)?;
    let follower = (leader + 1) % MEMBERS;
    let leader_url = format!("http://{}", EtcdCluster::client_addr(leader));
    let follower_url = format!("http://{}", EtcdCluster::client_addr(follower));
    let mut samples =
        writes(wrk, &pids(&cluster), opts, run, "etcd", "POST /v3/kv/put", &format!("{leader_url}/v3/kv/put"))?;
    let written_by_one = samples.first().map_or(0, |s| s.result.ok());
    let prefix = format!("r{run}c1");
    let max = written_by_one.max(1).to_string();
    let reads = [
        (Kind::LocalRead, "POST /v3/kv/range serializable (follower)", &follower_url, "serializable"),
        (Kind::StrongRead, "POST /v3/kv/range linearizable (leader)", &leader_url, "linearizable"),
    ];
    for (kind, what, url, mode) in reads {
        stopped()?;
        let range = format!("{url}/v3/kv/range");
        let result = wrk.run(&pids(&cluster), 64, opts.seconds, &range, "etcd_range.lua", &[&prefix, &max, mode])?;
        samples.push(Sample { load: Load { system: "etcd", kind, what, connections: 64 }, run, result });
    }
    Ok(samples)
}

/// `--paired`: both clusters kept running, 1-connection write loads alternating between them,
/// one ratio per pair; prints each pair and the medians.
fn paired(wrk: &Wrk, binary: &Path, etcd_bin: PathBuf, opts: &Options, pairs: usize) -> Result<(), String> {
    let all: Vec<usize> = (0..MEMBERS).collect();
    let mut labctl = opts.start_labctl(binary)?;
    let leader = wait_for_agreement(&mut labctl, &all, STABLE_DEADLINE)?;
    let leader_http = labctl.http_addr(leader);
    poll_status(leader_http, |s| s["role"] == "LEADER" && s["applied_index"].as_u64() >= s["commit_index"].as_u64())?;
    opts.wait_for_admin(leader_http)?;
    let labctl_wrk = wrk.with_headers(opts.labctl_headers());
    let connections = opts.paired_connections;
    let mut etcd = EtcdCluster::start(etcd_bin, MEMBERS, 150, 30).map_err(|e| format!("cannot start etcd: {e}"))?;
    let etcd_leader = wait_for_agreement(&mut etcd, &all, STABLE_DEADLINE)?;
    eprintln!("   labctl leader node{}, etcd leader member {}", leader + 1, etcd_leader + 1);
    let (mut leader, mut etcd_leader) = (leader, etcd_leader);
    let mut rows: Vec<(f64, f64)> = Vec::new();
    for pair in 1..=pairs {
        stopped()?;
        eprintln!("== pair {pair} (load average {})", common::loadavg());
        // A leader may change under load (an election timer fires while the machine is
        // saturated): each pair loads the leaders of the moment, not those of the start.
        let now = wait_for_agreement(&mut labctl, &all, STABLE_DEADLINE)?;
        if now != leader {
            eprintln!("   labctl leader is now node{} (was node{})", now + 1, leader + 1);
            leader = now;
            poll_status(labctl.http_addr(leader), |s| {
                s["role"] == "LEADER" && s["applied_index"].as_u64() >= s["commit_index"].as_u64()
            })?;
        }
        let now = wait_for_agreement(&mut etcd, &all, STABLE_DEADLINE)?;
        if now != etcd_leader {
            eprintln!("   etcd leader is now member {} (was member {})", now + 1, etcd_leader + 1);
            etcd_leader = now;
        }
        let labctl_url = format!("http://{}/api/products", labctl.http_addr(leader));
        let etcd_url = format!("http://{}/v3/kv/put", EtcdCluster::client_addr(etcd_leader));
        let prefix = format!("p{pair}");
        let labctl_load =
            || labctl_wrk.run(&pids(&labctl), connections, opts.seconds, &labctl_url, "labctl_write.lua", &[&prefix]);
        let etcd_load = || wrk.run(&pids(&etcd), connections, opts.seconds, &etcd_url, "etcd_write.lua", &[&prefix]);
        let (l, e) = if pair % 2 == 1 {
            let l = labctl_load()?;
            (l, etcd_load()?)
        } else {
            let e = etcd_load()?;
            (labctl_load()?, e)
        };
        if l.errors() + e.errors() > 0 {
            // A leader that changed answers 307 or nothing: not a measurement of either.
            eprintln!("   !!! pair {pair} left out: {} labctl and {} etcd errors", l.errors(), e.errors());
            continue;
        }
        rows.push((l.ok_per_second(), e.ok_per_second()));
    }
    if rows.is_empty() {
        return Err("no pair without errors".into());
    }
    let goal = match (opts.security.is_some(), connections) {
        (true, 1) => GOAL_SECURE_WRITES[0].1,
        (true, _) => GOAL_SECURE_WRITES[1].1,
        (false, 1) => GOAL_WRITES[0].1,
        (false, _) => GOAL_WRITES[1].1,
    };
    println!("\n| pair | labctl writes/s | etcd writes/s | ratio |\n|---:|---:|---:|---:|");
    for (i, (l, e)) in rows.iter().enumerate() {
        println!("| {} | {l:.0} | {e:.0} | {:.2}× |", i + 1, l / e.max(f64::MIN_POSITIVE));
    }
    let ratios: Vec<f64> = rows.iter().map(|(l, e)| l / e.max(f64::MIN_POSITIVE)).collect();
    let at_goal = ratios.iter().filter(|&&r| r >= goal).count();
    let ratio = median(ratios);
    println!(
        "\nmedians of {} pairs: labctl {:.0}/s, etcd {:.0}/s; median ratio {ratio:.2}× ({} at {goal}× or more); \
         goal {goal}×: {}",
        rows.len(),
        median(rows.iter().map(|r| r.0).collect()),
        median(rows.iter().map(|r| r.1).collect()),
        format_args!("{at_goal} of {}", rows.len()),
        if ratio >= goal { "met" } else { "NOT met" }
    );
    Ok(())
}

/// The process ids of a cluster's members.
fn pids(cluster: &dyn System) -> Vec<u32> {
    cluster.pids().into_iter().map(|(_, pid)| pid).collect()
}

/// The write loads, with 1 and then 64 connections, each writing names prefixed
/// `r<run>c<connections>` (the script is `<system>_write.lua`).
fn writes(
    wrk: &Wrk,
    pids: &[u32],
    opts: &Options,
    run: usize,
    system: &'static str,
    what: &'static str,
    url: &str,
) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for connections in [1, 64] {
        stopped()?;
        let prefix = format!("r{run}c{connections}");
        let result = wrk.run(pids, connections, opts.seconds, url, &format!("{system}_write.lua"), &[&prefix])?;
        samples.push(Sample { load: Load { system, kind: Kind::Write, what, connections }, run, result });
    }
    Ok(samples)
}

/// wrk with the scenario scripts written out to a scratch dir.
#[derive(Clone)]
struct Wrk {
    bin: PathBuf,
    dir: PathBuf,
    /// Sent with every request (`-H`).
    headers: Vec<String>,
}

impl Wrk {
    fn new(bin: PathBuf, dir: &Path) -> std::io::Result<Wrk> {
        for (name, text) in SCRIPTS {
            std::fs::write(dir.join(name), format!("{COMMON_LUA}\n{text}"))?;
        }
        Ok(Wrk { bin, dir: dir.to_path_buf(), headers: Vec::new() })
    }

    /// The same wrk, sending `headers` with every request.
    fn with_headers(&self, headers: Vec<String>) -> Wrk {
        Wrk { headers, ..self.clone() }
    }

    fn version(&self) -> String {
        Command::new(&self.bin)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
            .unwrap_or_default()
    }

    /// Runs `script` against `url` with `connections` for `seconds`; the output goes to a log
    /// in the scratch dir.
    /// The CPU time of `pids` over the run is divided among the requests answered.
    fn run(
        &self,
        pids: &[u32],
        connections: u32,
        seconds: u64,
        url: &str,
        script: &str,
        args: &[&str],
    ) -> Result<WrkResult, String> {
        let threads = connections.min(2);
        let log = self.dir.join(format!("wrk-{}.log", next_log_number()));
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("-t{threads}"))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{seconds}s"))
            .arg(format!("--timeout={WRK_TIMEOUT}"));
        for header in &self.headers {
            cmd.arg("-H").arg(header);
        }
        cmd.arg("-s").arg(self.dir.join(script)).arg(url);
        if !args.is_empty() {
            cmd.arg("--").args(args);
        }
        eprint!("   {url} {script} {args:?}, {connections} connections: ");
        let cpu_before = cluster_cpu(pids);
        let mut proc = Proc::spawn(cmd, &log).map_err(|e| format!("cannot start wrk: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(seconds + 30);
        loop {
            match proc.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline && stopped().is_ok() => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    proc.kill();
                    proc.reap();
                    stopped()?;
                    return Err(format!("wrk did not finish within {seconds} s + 30 s"));
                }
                Err(e) => return Err(format!("wrk: {e}")),
            }
        }
        let cpu = cluster_cpu(pids).saturating_sub(cpu_before);
        let output = std::fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut result = parse_wrk(&output).ok_or_else(|| format!("no result from wrk; its output:\n{output}"))?;
        result.cpu_per_request_us = cpu.as_secs_f64() * 1e6 / result.requests.max(1) as f64;
        eprintln!(
            "{:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {:.0} us CPU per request, {} errors",
            result.ok_per_second(),
            result.p50_us as f64 / 1e3,
            result.p99_us as f64 / 1e3,
            result.cpu_per_request_us,
            result.errors()
        );
        if result.non2xx > 0 {
            eprintln!("   !!! {} answers were not 2xx, e.g. {}", result.non2xx, result.example);
        }
        Ok(result)
    }
}

/// CPU time used so far by the processes `pids` (those still running).
fn cluster_cpu(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|&pid| common::proc_sample(pid).ok()).map(|s| s.cpu).sum()
}

/// Numbers the wrk logs of a run.
fn next_log_number() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn parse_wrk(output: &str) -> Option<WrkResult> {
    let line = output.lines().find_map(|l| l.strip_prefix("WRK_RESULT "))?;
    let v: Value = serde_json::from_str(line).ok()?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    Some(WrkResult {
        requests: n("requests"),
        duration_us: n("duration_us"),
        non2xx: n("non2xx"),
        example: v["example"].as_str().unwrap_or("").to_string(),
        socket_errors: n("connect_errors") + n("read_errors") + n("write_errors") + n("timeouts"),
        p50_us: n("p50_us"),
        p99_us: n("p99_us"),
        cpu_per_request_us: 0.0,
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent()
}

fn get_json(url: &str) -> Result<Value, String> {
    let mut response = agent().get(url).call().map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: {}", response.status()));
    }
    response.body_mut().read_json::<Value>().map_err(|e| format!("{url}: {e}"))
}

fn status(addr: std::net::SocketAddr) -> Result<Value, String> {
    get_json(&format!("http://{addr}/status"))
}

/// Polls a node's `/status` until `ready` holds.
fn poll_status(addr: std::net::SocketAddr, ready: impl Fn(&Value) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + STABLE_DEADLINE;
    let mut last = String::new();
    while Instant::now() < deadline {
        stopped()?;
        match status(addr) {
            Ok(s) if ready(&s) => return Ok(()),
            Ok(s) => last = s.to_string(),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{addr} not ready within {STABLE_DEADLINE:?}; last status {last}"))
}

fn product_total(addr: std::net::SocketAddr) -> Result<u64, String> {
    let page = get_json(&format!("http://{addr}/api/products?limit=1"))?;
    page["pagination"]["total"].as_u64().ok_or_else(|| format!("no total in {page}"))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The source revision measured, for the record.
fn revision() -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown revision".into(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Medians over runs of one load: (requests/s, p50 ms, p99 ms, CPU µs per request).
fn medians(samples: &[&Sample]) -> (f64, f64, f64, f64) {
    (
        median(samples.iter().map(|s| s.result.ok_per_second()).collect()),
        median(samples.iter().map(|s| s.result.p50_us as f64 / 1e3).collect()),
        median(samples.iter().map(|s| s.result.p99_us as f64 / 1e3).collect()),
        median(samples.iter().map(|s| s.result.cpu_per_request_us).collect()),
    )
}

fn report(samples: &[Sample], etcd_measured: bool) {
    let mut loads: Vec<&Load> = Vec::new();
    for s in samples {
        if !loads.contains(&&s.load) {
            loads.push(&s.load);
        }
    }
    println!();
    println!("| system | load | connections | requests/s | p50 | p99 | CPU per request | errors | runs (requests/s) |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    for load in &loads {
        let mine: Vec<&Sample> = samples.iter().filter(|s| &s.load == *load).collect();
        let (rate, p50, p99, cpu) = medians(&mine);
        let errors: u64 = mine.iter().map(|s| s.result.errors()).sum();
        let runs: Vec<String> = mine.iter().map(|s| format!("{}: {:.0}", s.run, s.result.ok_per_second())).collect();
        println!(
            "| {} | {} | {} | {rate:.0} | {p50:.2} ms | {p99:.2} ms | {cpu:.0} µs | {errors} | {} |",
            load.system,
            load.what,
            load.connections,
            runs.join(", ")
        );
    }

    let rate_of = |system: &str, kind: Kind, connections: u32, what: Option<&str>| {
        let mine: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.load.system == system
                    && s.load.kind == kind
                    && s.load.connections == connections
                    && what.is_none_or(|w| s.load.what == w)
            })
            .collect();
        (!mine.is_empty()).then(|| medians(&mine).0)
    };
    println!();
    println!("| goal | labctl | target | met |");
    println!("|---|---:|---:|---|");
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    for ((connections, factor), (_, reference)) in GOAL_WRITES.iter().zip(ETCD_REFERENCE) {
        let Some(labctl) = rate_of("labctl", Kind::Write, *connections, None) else { continue };
        let (etcd, source) = match rate_of("etcd", Kind::Write, *connections, None) {
            Some(e) if etcd_measured => (e, "etcd in this run"),
            _ => (reference, "etcd's reference figure"),
        };
        let target = factor * etcd;
        println!(
            "| writes, {connections} connection(s): {factor}× {source} ({etcd:.0}/s) | {labctl:.0}/s ({:.2}×) | {target:.0}/s | {} |",
            labctl / etcd,
            verdict(labctl >= target)
        );
    }
    for load in loads.iter().filter(|l| l.system == "labctl" && l.kind != Kind::Write) {
        let Some(rate) = rate_of("labctl", load.kind, load.connections, Some(load.what)) else { continue };
        let target = if load.kind == Kind::StrongRead { GOAL_STRONG_READS } else { GOAL_LOCAL_READS };
        println!(
            "| {}, {} connections | {rate:.0}/s | {target:.0}/s | {} |",
            load.what,
            load.connections,
            verdict(rate >= target)
        );
    }
}
