//! The fault suite's parts: clients that record every operation with its call and return time
//! and outcome, a seeded nemesis that breaks real `labctl node` processes, and the checks of
//! what the clients saw (see `tests/faults_e2e.rs` and docs/TESTING.md).

pub mod checker;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::common::{http_exchange_within, HttpReply, NoAnswer};
use checker::{Kind, Op};
pub use labctl::node::raft::Rng;

/// Microseconds since the history began, shared by clients and nemesis.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Clock {
        Clock(Instant::now())
    }

    pub fn now(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// How a request ended, as far as its client can tell.
pub enum Outcome {
    /// An answer from the node that acted on it.
    Answered(HttpReply),
    /// Certainly not carried out: refused before it was proposed, or never delivered.
    NotDone,
    /// Sent, and no answer came (or one that does not say): it may have taken effect.
    Unknown,
}

/// A client of the cluster, bound to one node as Jepsen's clients are: every request starts
/// there and follows its `307` to the leader. So a node that believes it leads when it no longer
/// does (paused, or cut off) keeps getting requests, as it would from its own users.
pub struct Client {
    port: u16,
    nodes: u32,
    home: u32,
    leader: u32,
    /// How long an answer is waited for, once the request is sent.
    pub answer_within: Duration,
}

impl Client {
    pub fn new(port: u16, nodes: u32, home: u32) -> Client {
        Client { port, nodes, home, leader: home, answer_within: Duration::from_secs(20) }
    }

    fn addr(&self, id: u32) -> SocketAddr {
        format!("127.0.0.{id}:{}", self.port).parse().unwrap()
    }

    /// One request, tried on the leader until it is carried out, refused for certain, or
    /// `patience` has passed. Only attempts that certainly did nothing are followed by another.
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
        patience: Duration,
    ) -> Outcome {
        let deadline = Instant::now() + patience;
        self.leader = self.home;
        loop {
            if Instant::now() >= deadline {
                return Outcome::NotDone;
            }
            match http_exchange_within(self.addr(self.leader), method, path, headers, body, self.answer_within) {
                Err(NoAnswer::NotConnected) => self.next_node(),
                Err(NoAnswer::Lost) => return Outcome::Unknown,
                Ok(reply) if reply.status == 307 => {
                    // A follower names the leader and did nothing.
                    match reply.header("x-raft-leader").and_then(labctl::proto::parse_node_name) {
                        Some(id) if id != self.leader => self.leader = id,
                        _ => self.next_node(),
                    }
                }
                Ok(reply) if reply.status == 503 && reply.body.contains("no leader is known") => {
                    self.next_node();
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(reply) if reply.status >= 500 => return Outcome::Unknown,
                Ok(reply) => return Outcome::Answered(reply),
            }
        }
    }

    fn next_node(&mut self) {
        self.leader = self.leader % self.nodes + 1;
    }
}

/// What the clients record.
#[derive(Default, Serialize)]
pub struct History {
    pub ops: Vec<Op>,
    /// Creations by idempotency key: the title, and whether a client was told it was done.
    pub creates: BTreeMap<String, Create>,
    pub faults: Vec<Fault>,
}

#[derive(Clone, Serialize)]
pub struct Create {
    pub title: String,
    pub acknowledged: bool,
}

/// A fault as the nemesis made it.
#[derive(Clone, Serialize)]
pub struct Fault {
    pub at: u64,
    pub what: String,
}

/// The registers: products made before the workload, each updated in place (`PUT`) and read
/// with `consistency=strong`.
pub struct Registers {
    pub ids: Vec<i64>,
}

pub fn product(title: &str) -> String {
    json!({ "title": title, "price": 1.0, "currency": "GBP" }).to_string()
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

impl Registers {
    /// Creates `count` registers; their creations are the first writes of the history.
    pub fn create(client: &mut Client, count: usize, clock: Clock, history: &Mutex<History>) -> Registers {
        let mut ids = Vec::new();
        for k in 0..count {
            let title = format!("r{k}-initial");
            let call = clock.now();
            let outcome = client.call("POST", "/api/products", &[JSON], &product(&title), Duration::from_secs(30));
            let Outcome::Answered(reply) = outcome else { panic!("register {k} could not be created") };
            assert_eq!(reply.status, 201, "register {k}: {}", reply.body);
            let id = reply.json()["id"].as_i64().expect("an id");
            let op = Op { client: 0, key: format!("r{k}"), kind: Kind::Write(title), call, ret: Some(clock.now()) };
            history.lock().unwrap().ops.push(op);
            ids.push(id);
        }
        Registers { ids }
    }
}

/// Runs one client until `stop`: writes and strong reads of the registers, and creations of
/// new products with an `Idempotency-Key`, retried with the same key while their outcome is
/// unknown.
pub fn run_client(
    number: usize,
    mut client: Client,
    ids: Vec<i64>,
    mut rng: Rng,
    clock: Clock,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut done = 0;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let k = rng.range(0, ids.len() as u64) as usize;
        let path = format!("/api/products/{}", ids[k]);
        let key = format!("r{k}");
        match rng.range(0, 10) {
            0..=3 => {
                let value = format!("r{k}-c{number}-{n}");
                let call = clock.now();
                let outcome = client.call("PUT", &path, &[JSON], &product(&value), Duration::from_secs(5));
                let ret = match outcome {
                    Outcome::Answered(reply) if reply.status == 200 => Some(clock.now()),
                    Outcome::Answered(_) | Outcome::NotDone => continue,
                    Outcome::Unknown => None,
                };
                history.lock().unwrap().ops.push(Op { client: number, key, kind: Kind::Write(value), call, ret });
            }
            4..=8 => {
                let call = clock.now();
                let outcome =
                    client.call("GET", &format!("{path}?consistency=strong"), &[], "", Duration::from_secs(5));
                let Outcome::Answered(reply) = outcome else { continue };
                let ret = clock.now();
                let value = match reply.status {
                    200 => reply.json()["title"].as_str().map(str::to_string),
                    // A register that was made is never gone: a 404 is an anomaly to report.
                    404 => Some("<not found>".to_string()),
                    _ => continue,
                };
                history.lock().unwrap().ops.push(Op {
                    client: number,
                    key,
                    kind: Kind::Read(value),
                    call,
                    ret: Some(ret),
                });
            }
            _ => {
                let idempotency_key = format!("c{number}-{n}");
                let title = format!("created-c{number}-{n}");
                let headers = [JSON, ("Idempotency-Key", idempotency_key.as_str())];
                let mut acknowledged = false;
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    match client.call("POST", "/api/products", &headers, &product(&title), Duration::from_secs(5)) {
                        Outcome::Answered(reply) => {
                            acknowledged = reply.status == 201;
                            break;
                        }
                        Outcome::NotDone | Outcome::Unknown => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
                history.lock().unwrap().creates.insert(idempotency_key, Create { title, acknowledged });
            }
        }
        done += 1;
    }
    done
}

/// Raft traffic between two groups of nodes dropped, both ways, with iptables rules on
/// loopback in a chain of the cluster's own; HTTP still reaches every node.
pub struct Partitions {
    chain: String,
    port: u16,
}

impl Partitions {
    /// None where iptables cannot be used here (not root, or not installed).
    pub fn new(port: u16) -> Option<Partitions> {
        let chain = format!("LABCTL-FAULTS-{port}");
        let partitions = Partitions { chain, port };
        let made = iptables(&["-N", &partitions.chain]) && iptables(&["-I", "OUTPUT", "-j", &partitions.chain]);
        made.then_some(partitions)
    }

    /// Cuts every node of `a` off from every node of `b`.
    pub fn split(&self, a: &[u32], b: &[u32]) {
        for &x in a {
            for &y in b {
                for (from, to) in [(x, y), (y, x)] {
                    let (s, d, port) = (format!("127.0.0.{from}"), format!("127.0.0.{to}"), self.port.to_string());
                    let rule = ["-A", &self.chain, "-p", "udp", "-s", &s, "-d", &d, "--dport", &port, "-j", "DROP"];
                    assert!(iptables(&rule), "cannot add an iptables rule");
                }
            }
        }
    }

    pub fn heal(&self) {
        assert!(iptables(&["-F", &self.chain]), "cannot flush {}", self.chain);
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        iptables(&["-D", "OUTPUT", "-j", &self.chain]);
        iptables(&["-F", &self.chain]);
        iptables(&["-X", &self.chain]);
    }
}

fn iptables(args: &[&str]) -> bool {
    Command::new("iptables").args(args).output().is_ok_and(|o| o.status.success())
}

/// Keeps every core busy with other work until dropped.
pub struct Saturation {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Saturation {
    pub fn start(threads: usize) -> Saturation {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
                    }
                })
            })
            .collect();
        Saturation { stop, threads }
    }
}

impl Drop for Saturation {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What every node holds at the end, by title: how many products carry it.
pub fn titles(products: &[Value]) -> BTreeMap<String, usize> {
    let mut titles = BTreeMap::new();
    for p in products {
        *titles.entry(p["title"].as_str().unwrap_or("<no title>").to_string()).or_insert(0) += 1;
    }
    titles
}

/// Lost, duplicated and phantom writes among the creations and the registers.
pub fn anomalies(history: &History, titles: &BTreeMap<String, usize>, registers: usize) -> Vec<String> {
    let mut found = Vec::new();
    let made: BTreeSet<&str> = history.creates.values().map(|c| c.title.as_str()).collect();
    let written: BTreeSet<&str> = history
        .ops
        .iter()
        .filter_map(|op| match &op.kind {
            Kind::Write(v) => Some(v.as_str()),
            Kind::Read(_) => None,
        })
        .collect();
    for (key, create) in &history.creates {
        let copies = titles.get(&create.title).copied().unwrap_or(0);
        if create.acknowledged && copies == 0 {
            found.push(format!("lost: {} (key {key}) was acknowledged and is not stored", create.title));
        }
        if copies > 1 {
            found.push(format!("duplicated: {} (key {key}) is stored {copies} times", create.title));
        }
    }
    let register_rows = titles.iter().filter(|(t, _)| t.starts_with('r')).map(|(_, n)| n).sum::<usize>();
    if register_rows != registers {
        found.push(format!("{register_rows} register rows stored, {registers} made"));
    }
    for title in titles.keys() {
        if !made.contains(title.as_str()) && !written.contains(title.as_str()) {
            found.push(format!("phantom: {title} is stored and no client wrote it"));
        }
    }
    found
}

/// A slow disk for one node at a time: its process is moved into a blkio cgroup (cgroup v1)
/// whose writes to the disk that holds the data dir are throttled to a few operations per
/// second, so every flush of its Raft log and database takes tens to hundreds of milliseconds.
pub struct SlowDisk {
    cgroup: std::path::PathBuf,
}

const BLKIO: &str = "/sys/fs/cgroup/blkio";
/// Writes per second on the slow disk.
pub const SLOW_IOPS: u32 = 20;

impl SlowDisk {
    /// Writes throttled to `iops` a second. None where blkio throttling cannot be used here
    /// (no cgroup v1 blkio hierarchy, not root, or `dir` on a file system without a block
    /// device, such as tmpfs).
    pub fn new(name: &str, dir: &std::path::Path, iops: u32) -> Option<SlowDisk> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(dir).ok()?.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        if major == 0 {
            return None;
        }
        // Throttling applies to whole disks: a partition's writes are counted on its disk.
        let sys = std::path::PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        let disk = if sys.join("partition").exists() {
            std::fs::read_to_string(sys.join("..").join("dev")).ok()?.trim().to_string()
        } else {
            format!("{major}:{minor}")
        };
        let cgroup = std::path::Path::new(BLKIO).join(name);
        std::fs::create_dir_all(&cgroup).ok()?;
        let slow = SlowDisk { cgroup };
        std::fs::write(slow.cgroup.join("blkio.throttle.write_iops_device"), format!("{disk} {iops}")).ok()?;
        Some(slow)
    }

    /// Makes process `pid`'s writes slow.
    pub fn slow(&self, pid: u32) {
        let _ = std::fs::write(self.cgroup.join("cgroup.procs"), pid.to_string());
    }

    /// Gives process `pid` its own speed back.
    pub fn restore(&self, pid: u32) {
        let _ = std::fs::write(std::path::Path::new(BLKIO).join("cgroup.procs"), pid.to_string());
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.cgroup.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse().ok()) {
                self.restore(pid);
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// A file system of its own for one node's data dir (an ext4 image on a loop device), which the
/// nemesis fills up and empties again.
pub struct SmallDisk {
    image: std::path::PathBuf,
    device: String,
    mount: std::path::PathBuf,
    filler: std::path::PathBuf,
}

fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl SmallDisk {
    /// Moves `node_dir` (its node stopped) onto a new file system of `mib` MiB. None where loop
    /// devices, mkfs.ext4 or mount cannot be used here (they need root).
    pub fn new(node_dir: &std::path::Path, mib: u64) -> Option<SmallDisk> {
        let image = node_dir.with_extension("img");
        std::fs::File::create(&image).ok()?.set_len(mib << 20).ok()?;
        let image_arg = image.to_str()?;
        // No blocks reserved for root: the nodes run as root here, and full must mean full.
        run("mkfs.ext4", &["-q", "-F", "-m", "0", image_arg])?;
        let device = run("losetup", &["-f", "--show", image_arg])?;
        let disk = SmallDisk { image, device, mount: node_dir.to_path_buf(), filler: node_dir.join("filler") };
        let aside = node_dir.with_extension("before");
        std::fs::rename(node_dir, &aside).ok()?;
        std::fs::create_dir(node_dir).ok()?;
        run("mount", &[&disk.device, node_dir.to_str()?])?;
        for file in std::fs::read_dir(&aside).ok()?.flatten() {
            std::fs::copy(file.path(), node_dir.join(file.file_name())).ok()?;
        }
        let _ = std::fs::remove_dir_all(&aside);
        Some(disk)
    }

    /// Takes every free block.
    pub fn fill(&self) {
        let Ok(file) = std::fs::File::create(&self.filler) else { return };
        use std::os::fd::AsRawFd;
        // Large pieces first, then smaller ones, until not even a block is left.
        let mut offset: i64 = 0;
        let mut piece: i64 = 64 << 20;
        while piece >= 4096 {
            // SAFETY: fallocate(2) on a file this function opened.
            if unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, piece) } == 0 {
                offset += piece;
            } else {
                piece /= 2;
            }
        }
    }

    /// Gives the blocks back.
    pub fn free(&self) {
        let _ = std::fs::remove_file(&self.filler);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: the node may still run, until the cluster is dropped after this.
        let _ = run("umount", &["-l", self.mount.to_str().unwrap_or_default()]);
        let _ = run("losetup", &["-d", &self.device]);
        let _ = std::fs::remove_file(&self.image);
    }
}
