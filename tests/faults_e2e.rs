//! The fault suite: five real `labctl node` processes on loopback, concurrent clients, and a
//! seeded nemesis that cuts the network between nodes (iptables), kills nodes (SIGKILL) and
//! starts them again, pauses the leader (SIGSTOP), slows a node's disk (blkio throttling), fills
//! one node's disk and keeps the cores busy with other work.
//! Every operation is recorded with its call and return time and its outcome; afterwards the
//! registers' history is checked for linearizability (`faults::checker`), the creations for
//! lost, duplicated and phantom writes, and every node for the same data.
//!
//! `LABCTL_FAULT_SECONDS` (default 40) sets how long the faults go on, `LABCTL_FAULT_SEED` the
//! seed of the nemesis' and clients' choices (printed at the start of every run). Each run's
//! history, faults and verdict are saved under the target directory's `tmp/fault-histories/`.
//! docs/TESTING.md describes the fault model and how to replay a run.

mod common;
mod faults;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::rabbit::{ci, skipped};
use common::TestCluster;
use faults::checker::{self, Kind, Op};
use faults::{Client, Clock, Fault, History, Outcome, Partitions, Registers, Rng, Saturation, SlowDisk, SmallDisk};

const NODES: u32 = 5;
/// One per node.
const CLIENTS: usize = NODES as usize;
const REGISTERS: usize = 3;

fn op(client: usize, kind: Kind, call: u64, ret: Option<u64>) -> Op {
    Op { client, key: "x".into(), kind, call, ret }
}

fn write(value: &str) -> Kind {
    Kind::Write(value.into())
}

fn read(value: Option<&str>) -> Kind {
    Kind::Read(value.map(str::to_string))
}

#[test]
fn the_checker_accepts_overlapping_operations_in_some_order() {
    // A read overlapping a write may see either value; a later read must see the write.
    let history = [
        op(1, write("a"), 0, Some(10)),
        op(2, read(Some("a")), 5, Some(6)),
        op(3, read(None), 4, Some(7)),
        op(1, read(Some("a")), 11, Some(12)),
    ];
    assert!(checker::check(&history).is_ok());
    // Of two overlapping writes, reads after both may see one, but all of them the same one.
    let history = [
        op(1, write("a"), 0, Some(10)),
        op(2, write("b"), 0, Some(10)),
        op(3, read(Some("b")), 11, Some(12)),
        op(3, read(Some("b")), 13, Some(14)),
    ];
    assert!(checker::check(&history).is_ok());
}

#[test]
fn the_checker_finds_stale_reads_and_values_that_flip_back() {
    // A read after an acknowledged write sees the old value.
    let stale = [op(1, write("a"), 0, Some(10)), op(2, read(None), 11, Some(12))];
    let violation = checker::check(&stale).unwrap_err();
    assert_eq!(violation.key, "x");
    assert_eq!(violation.longest_prefix.len(), 1, "{violation:?}");
    // Two overlapping writes, and reads after both that disagree on which came last.
    let flip = [
        op(1, write("a"), 0, Some(10)),
        op(2, write("b"), 0, Some(10)),
        op(3, read(Some("a")), 11, Some(12)),
        op(3, read(Some("b")), 13, Some(14)),
    ];
    assert!(checker::check(&flip).is_err());
    // A value nobody wrote.
    assert!(checker::check(&[op(1, read(Some("z")), 0, Some(1))]).is_err());
}

#[test]
fn the_checker_lets_a_write_without_an_answer_happen_late_or_never() {
    // Never: later reads still see the old value.
    let never = [op(1, write("a"), 0, Some(1)), op(2, write("b"), 2, None), op(3, read(Some("a")), 50, Some(51))];
    assert!(checker::check(&never).is_ok());
    // Late: long after its client gave up.
    let late = [
        op(1, write("a"), 0, Some(1)),
        op(2, write("b"), 2, None),
        op(3, read(Some("a")), 50, Some(51)),
        op(3, read(Some("b")), 60, Some(61)),
    ];
    assert!(checker::check(&late).is_ok());
    // But not before it was sent.
    let early = [op(3, read(Some("b")), 0, Some(1)), op(2, write("b"), 2, None)];
    assert!(checker::check(&early).is_err());
    // Registers are checked apart: a violation on one key is reported with that key.
    let mut two = late.to_vec();
    two.push(Op { client: 4, key: "y".into(), kind: read(Some("q")), call: 0, ret: Some(1) });
    assert_eq!(checker::check(&two).unwrap_err().key, "y");
}

#[test]
fn the_checker_takes_a_long_history_of_many_overlapping_clients() {
    // 4 clients, 2,000 operations on one register, each overlapping the next ones: the cache
    // of visited configurations keeps this to moments.
    let mut history = Vec::new();
    let mut value = None;
    for i in 0..2000u64 {
        let client = (i % 4) as usize;
        let (call, ret) = (i * 10, i * 10 + 35);
        if i % 3 == 0 {
            let v = format!("v{i}");
            history.push(op(client, write(&v), call, Some(ret)));
            value = Some(v);
        } else {
            // Reads see the newest write that returned before they started, or one overlapping.
            history.push(op(client, Kind::Read(value.clone()), call + 40, Some(ret + 40)));
        }
    }
    let started = Instant::now();
    assert!(checker::check(&history).is_ok());
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The tests of this file that start a cluster run one at a time: the fault suite keeps both
/// cores busy and slows disks on purpose, which would be faults in the others' runs too.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What became of node `id`'s lone writes run ahead of their commit: answered, rolled back,
/// pauses (`/status`'s `run_ahead`); None when it does not answer.
fn run_ahead_of(cluster: &TestCluster, id: u32) -> Option<[u64; 3]> {
    let status: serde_json::Value =
        serde_json::from_str(&common::http_get(cluster.http_addr(id), "/status")?.1).ok()?;
    let r = &status["run_ahead"];
    Some([r["answered"].as_u64()?, r["rolled_back"].as_u64()?, r["pauses"].as_u64()?])
}

/// The same, summed over the nodes that run.
fn run_ahead_total(cluster: &TestCluster) -> [u64; 3] {
    (1..=NODES).filter_map(|id| run_ahead_of(cluster, id)).fold([0; 3], |a, b| [a[0] + b[0], a[1] + b[1], a[2] + b[2]])
}

/// The node that the first answering node names as leader.
fn leader_of(cluster: &TestCluster) -> Option<u32> {
    cluster.running().into_iter().find_map(|id| {
        let (_, leader) = cluster.leader_info(id)?;
        labctl::proto::parse_node_name(&leader?)
    })
}

#[test]
fn five_nodes_under_partitions_kills_pauses_and_busy_cores_keep_every_answered_write() {
    let _alone = one_cluster_at_a_time();
    let seconds: u64 = env_or("LABCTL_FAULT_SECONDS", 40);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seed: u64 = env_or("LABCTL_FAULT_SEED", now.as_nanos() as u64 % 1_000_000_000);
    let line = format!("\nfault suite: seed {seed}, {seconds} s of faults; run again with LABCTL_FAULT_SEED={seed}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    let mut cluster = TestCluster::start(NODES, 0, &[]);
    let port = cluster.addr(1).port();
    let (_, first_term) = cluster.wait_for_leader(Duration::from_secs(10));
    let partitions = Partitions::new(port);
    if partitions.is_none() {
        let what = "network partitions of the fault suite: iptables is not usable here (root and `apt-get install iptables` are needed)";
        assert!(!ci(), "{what}");
        skipped(what);
    }

    let slow_disk = SlowDisk::new(&format!("labctl-faults-{port}"), cluster.data_dir(), faults::SLOW_IOPS);
    if slow_disk.is_none() {
        let what = "slow disks of the fault suite: blkio throttling (cgroup v1, root, a data dir on a block device) is not usable here";
        assert!(!ci(), "{what}");
        skipped(what);
    }

    // The last node's data dir on a small file system of its own, which the nemesis fills.
    cluster.kill(NODES);
    // Room for what the node itself writes in the run (its log keeps every entry), and more:
    // 64 MiB and 32 MiB per minute of faults.
    let small_disk = SmallDisk::new(&cluster.data_dir().join(format!("node{NODES}")), 64 + 32 * seconds.div_ceil(60));
    if small_disk.is_none() {
        let what = "full disks of the fault suite: a loop device, mkfs.ext4 and mount (root) are not usable here";
        assert!(!ci(), "{what}");
        skipped(what);
    }
    cluster.spawn(NODES);

    let clock = Clock::new();
    let history = Arc::new(Mutex::new(History::default()));
    let registers = Registers::create(&mut Client::new(port, NODES, 1), REGISTERS, clock, &history);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (1..=CLIENTS)
        .map(|number| {
            let (ids, history, stop) = (registers.ids.clone(), history.clone(), stop.clone());
            let rng = Rng::new(seed ^ (number as u64).wrapping_mul(0x9e37_79b9));
            let client = Client::new(port, NODES, number as u32);
            std::thread::spawn(move || faults::run_client(number, client, ids, rng, clock, history, stop))
        })
        .collect();

    // The nemesis: one fault at a time, held for a while, then healed.
    let mut rng = Rng::new(seed);
    let mut big_writes = 0;
    let started = Instant::now();
    let record = |what: String| {
        eprintln!("{:>8.3} s  {what}", clock.now() as f64 / 1e6);
        history.lock().unwrap().faults.push(Fault { at: clock.now(), what });
    };
    // Writes run ahead of their commit (see the README): counts of nodes that were killed, and
    // what happened during pauses of the leader and while the cores were busy.
    let mut run_ahead_before_kills = [0u64; 3];
    let mut run_ahead_during: std::collections::BTreeMap<&str, [u64; 3]> = Default::default();
    let mut add_during = |kind: &'static str, before: [u64; 3], after: [u64; 3]| {
        let sum = run_ahead_during.entry(kind).or_default();
        for i in 0..3 {
            sum[i] += after[i].saturating_sub(before[i]);
        }
    };
    let mut kinds = vec!["kill", "pause-leader", "busy-cores"];
    if partitions.is_some() {
        kinds.extend(["isolate-leader", "split"]);
    }
    if slow_disk.is_some() {
        kinds.push("slow-disk");
    }
    if small_disk.is_some() {
        kinds.push("full-disk");
    }
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(rng.range(200, 1200)));
        let hold = Duration::from_millis(rng.range(300, 2500));
        let leader = leader_of(&cluster);
        match kinds[rng.range(0, kinds.len() as u64) as usize] {
            "kill" => {
                let id = match leader {
                    Some(l) if rng.range(0, 2) == 0 => l,
                    _ => rng.range(1, NODES as u64 + 1) as u32,
                };
                record(format!("kill node{id} (SIGKILL), start it again after {hold:?}"));
                if let Some(counts) = run_ahead_of(&cluster, id) {
                    (0..3).for_each(|i| run_ahead_before_kills[i] += counts[i]);
                }
                cluster.kill(id);
                std::thread::sleep(hold);
                cluster.spawn(id);
                record(format!("node{id} started"));
            }
            "pause-leader" => {
                let Some(id) = leader else { continue };
                record(format!("pause node{id}, the leader (SIGSTOP), for {hold:?}"));
                let before = run_ahead_total(&cluster);
                cluster.freeze(id, true);
                std::thread::sleep(hold);
                cluster.freeze(id, false);
                record(format!("node{id} resumed (SIGCONT)"));
                add_during("pauses of the leader", before, run_ahead_total(&cluster));
            }
            "slow-disk" => {
                let id = match leader {
                    Some(l) if rng.range(0, 2) == 0 => l,
                    _ => rng.range(1, NODES as u64 + 1) as u32,
                };
                let (Some(disk), Some(pid)) = (slow_disk.as_ref(), cluster.pid(id)) else { continue };
                record(format!("slow disk for node{id} ({} writes/s) for {hold:?}", faults::SLOW_IOPS));
                disk.slow(pid);
                std::thread::sleep(hold);
                disk.restore(pid);
                record(format!("node{id}'s disk at full speed"));
            }
            "full-disk" => {
                let Some(disk) = small_disk.as_ref() else { continue };
                record(format!("node{NODES}'s disk full, while 320 products of 9 KB are written"));
                disk.fill();
                // More than the log's and the database's room held in advance.
                // A leader whose database is full answers no write until it has room (the
                // writes commit, their answers wait on its database): the writes stop after 8 s.
                let mut client = Client::new(port, NODES, 1);
                client.answer_within = Duration::from_secs(2);
                let big = "y".repeat(9000);
                let until = Instant::now() + Duration::from_secs(8);
                for n in 0..320 {
                    if Instant::now() >= until {
                        record(format!("{n} of the 320 written when the time was up"));
                        break;
                    }
                    big_writes += 1;
                    let (key, title) = (format!("big-{big_writes}"), format!("created-big-{big_writes}"));
                    let body = serde_json::json!({ "title": title, "price": 1.0, "currency": "GBP", "link": big });
                    let headers = [("Content-Type", "application/json"), ("Idempotency-Key", key.as_str())];
                    let mut acknowledged = false;
                    for _ in 0..4 {
                        match client.call("POST", "/api/products", &headers, &body.to_string(), Duration::from_secs(2))
                        {
                            Outcome::Answered(reply) => {
                                assert_eq!(reply.status, 201, "large product {n}: {}", reply.body);
                                acknowledged = true;
                                break;
                            }
                            Outcome::NotDone | Outcome::Unknown => std::thread::sleep(Duration::from_millis(200)),
                        }
                    }
                    history.lock().unwrap().creates.insert(key, faults::Create { title, acknowledged });
                }
                std::thread::sleep(hold);
                disk.free();
                record(format!("node{NODES}'s disk has room again"));
                if !cluster.is_running(NODES) {
                    // A node that cannot write its log stops, saying why; it is started again.
                    let status = cluster.wait_exit(NODES, Duration::from_secs(5));
                    let log = cluster.log_text(NODES);
                    let why = log.lines().rev().find(|l| l.starts_with("labctl: ")).unwrap_or("(no reason given)");
                    assert!(
                        why.contains("No space left on device"),
                        "node{NODES} stopped ({status}) without saying why:\n{log}"
                    );
                    record(format!("node{NODES} had stopped ({status}): {why}; started again"));
                    cluster.spawn(NODES);
                }
            }
            "busy-cores" => {
                record(format!("both cores busy with other work for {hold:?}"));
                let before = run_ahead_total(&cluster);
                let busy = Saturation::start(2);
                std::thread::sleep(hold);
                let after = run_ahead_total(&cluster);
                drop(busy);
                record("cores free".into());
                add_during("busy cores", before, after);
            }
            kind => {
                let p = partitions.as_ref().expect("partitions are usable");
                let mut ids: Vec<u32> = (1..=NODES).collect();
                let cut = if kind == "isolate-leader" {
                    let Some(l) = leader else { continue };
                    ids.retain(|&id| id != l);
                    vec![l]
                } else {
                    // A random minority of two.
                    let a = ids.remove(rng.range(0, ids.len() as u64) as usize);
                    let b = ids.remove(rng.range(0, ids.len() as u64) as usize);
                    vec![a, b]
                };
                record(format!("partition {cut:?} from {ids:?} for {hold:?}"));
                p.split(&cut, &ids);
                std::thread::sleep(hold);
                p.heal();
                record("partition healed".into());
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let done: usize = clients.into_iter().map(|c| c.join().expect("client thread")).sum();

    // Everything healed: every node runs and hears the others.
    for id in 1..=NODES {
        if !cluster.is_running(id) {
            cluster.spawn(id);
        }
    }
    let (_, last_term) = cluster.wait_for_leader(Duration::from_secs(30));
    // A last strong read of each register, part of the history.
    let mut last = Client::new(port, NODES, 1);
    for (k, id) in registers.ids.iter().enumerate() {
        let path = format!("/api/products/{id}?consistency=strong");
        let call = clock.now();
        let Outcome::Answered(reply) = last.call("GET", &path, &[], "", Duration::from_secs(30)) else {
            panic!("no final read of register {k}")
        };
        assert_eq!(reply.status, 200, "{}", reply.body);
        let value = reply.json()["title"].as_str().map(str::to_string);
        let op = Op { client: 0, key: format!("r{k}"), kind: Kind::Read(value), call, ret: Some(clock.now()) };
        history.lock().unwrap().ops.push(op);
    }
    // All nodes converge to the same data.
    let everywhere = common::poll("every node to hold the same products", Duration::from_secs(60), || {
        for id in 1..=NODES {
            if !cluster.is_running(id) {
                let log = cluster.log_text(id);
                panic!("node{id} stopped: {}", log.lines().last().unwrap_or_default());
            }
        }
        let all: Vec<Vec<(i64, String)>> = (1..=NODES)
            .map(|id| {
                let products = common::manager::products_on(cluster.http_addr(id))?;
                Some(products.iter().map(|p| (p["id"].as_i64().unwrap_or(-1), p["title"].to_string())).collect())
            })
            .collect::<Option<_>>()?;
        all.windows(2).all(|w| w[0] == w[1]).then(|| common::manager::products_on(cluster.http_addr(1))).flatten()
    });

    let now = run_ahead_total(&cluster);
    let run_ahead: Vec<u64> = (0..3).map(|i| run_ahead_before_kills[i] + now[i]).collect();
    let during: Vec<String> = run_ahead_during
        .iter()
        .map(|(kind, [a, r, p])| format!("{a} answered, {r} rolled back, {p} pauses during {kind}"))
        .collect();
    let run_ahead_line = format!(
        "lone writes run ahead of their commit: {} answered, {} rolled back, {} pauses ({})",
        run_ahead[0],
        run_ahead[1],
        run_ahead[2],
        during.join("; ")
    );
    let history = Arc::try_unwrap(history).ok().expect("clients are done").into_inner().unwrap();
    let verdict = checker::check(&history.ops);
    let anomalies = faults::anomalies(&history, &faults::titles(&everywhere), REGISTERS);
    let acknowledged = history.creates.values().filter(|c| c.acknowledged).count();
    let unknown = history.ops.iter().filter(|op| op.ret.is_none()).count();
    let summary = format!(
        "seed {seed}: {} register operations checked ({unknown} writes without an answer), {} creations \
         ({acknowledged} acknowledged), {} faults, {done} client operations, terms {first_term} to {last_term}; \
         linearizable: {}; anomalies: {}; {run_ahead_line}",
        history.ops.len(),
        history.creates.len(),
        history.faults.len() / 2,
        verdict.is_ok(),
        anomalies.len()
    );
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-histories");
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join(format!("seed-{seed}.json"));
    let report = serde_json::json!({
        "seed": seed,
        "seconds": seconds,
        "summary": summary,
        "violation": verdict.as_ref().err(),
        "anomalies": anomalies,
        "history": history,
    });
    std::fs::write(&saved, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    // Past the harness's capture, so that every run's counts are in the test output (and CI's log).
    let line = format!("\nfault suite: {summary}; history in {}\n", saved.display());
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    if verdict.is_err() || !anomalies.is_empty() {
        for id in 1..=NODES {
            let _ = std::fs::copy(cluster.log_path(id), dir.join(format!("seed-{seed}-node{id}.log")));
        }
    }
    if let Err(violation) = verdict {
        panic!(
            "not linearizable: register {} ({} operations; the longest order found holds {}); seed {seed}, \
             history and report in {}",
            violation.key,
            violation.ops.len(),
            violation.longest_prefix.len(),
            saved.display()
        );
    }
    assert!(anomalies.is_empty(), "{anomalies:#?}\nseed {seed}, history in {}", saved.display());
    for id in 1..=NODES {
        let log = cluster.log_text(id);
        assert!(!log.contains("panicked"), "node{id} panicked; seed {seed}:\n{log}");
    }
    assert!(history.ops.iter().any(|op| matches!(op.kind, Kind::Read(_)) && op.client > 0), "no read was answered");
    assert!(acknowledged > 0, "no creation was acknowledged");
    // The checks above covered the lone write's path that runs its transaction ahead of its
    // commit (kept only while this suite finds it correct under pauses and busy cores).
    assert!(run_ahead[0] > 0, "no write was answered from a transaction run ahead of its commit");
    // The faults did what they are for: leaders were lost and elected again.
    assert!(last_term > first_term, "no election in {} faults: term {first_term} throughout", history.faults.len() / 2);
}

#[test]
fn a_leader_whose_disk_is_full_hands_over_and_writes_go_on() {
    let _alone = one_cluster_at_a_time();
    let mut cluster = TestCluster::start(NODES, 0, &[]);
    let port = cluster.addr(1).port();
    cluster.wait_for_leader(Duration::from_secs(10));
    // node1's data dir on a small file system of its own, and node1 the leader.
    cluster.kill(1);
    let Some(disk) = SmallDisk::new(&cluster.data_dir().join("node1"), 64) else {
        let what = "a full disk: a loop device, mkfs.ext4 and mount (root) are not usable here";
        assert!(!ci(), "{what}");
        return skipped(what);
    };
    cluster.spawn(1);
    common::poll("node1 to lead", Duration::from_secs(20), || {
        if leader_of(&cluster) == Some(1) {
            return Some(());
        }
        cluster.send(1, &common::control(labctl::proto::Request::Timeout, None, serde_json::Value::Null));
        std::thread::sleep(Duration::from_millis(300));
        None
    });
    disk.fill();
    // Writes through node2, which sends them on to whoever leads. node1's log or database
    // runs out of room: either it stops (its log) or it gives up leading (its database).
    let mut client = Client::new(port, NODES, 2);
    client.answer_within = Duration::from_secs(2);
    let big = "y".repeat(9000);
    let started = Instant::now();
    let mut answered_elsewhere = 0;
    let mut n = 0;
    while answered_elsewhere < 20 {
        assert!(started.elapsed() < Duration::from_secs(30), "writes did not go on: {}", cluster.log_text(1));
        n += 1;
        let body = serde_json::json!({ "title": format!("w{n}"), "price": 1.0, "currency": "GBP", "link": big });
        let key = format!("w{n}");
        let headers = [("Content-Type", "application/json"), ("Idempotency-Key", key.as_str())];
        if let Outcome::Answered(reply) =
            client.call("POST", "/api/products", &headers, &body.to_string(), Duration::from_secs(2))
        {
            assert_eq!(reply.status, 201, "{}", reply.body);
            if leader_of(&cluster).is_some_and(|l| l != 1) {
                answered_elsewhere += 1;
            }
        }
    }
    let log = cluster.log_text(1);
    if cluster.is_running(1) {
        assert!(log.contains("it does not lead until it does"), "{log}");
        eprintln!("node1 gave up leading: its database could not apply");
    } else {
        assert!(log.contains("No space left on device"), "{log}");
        eprintln!("node1 stopped: its log had no room");
    }
    // Room again: node1 catches up and may lead again.
    disk.free();
    if !cluster.is_running(1) {
        cluster.spawn(1);
    }
    common::poll("node1 to apply the log again", Duration::from_secs(30), || {
        let status = common::http_get(cluster.http_addr(1), "/status")?;
        let status: serde_json::Value = serde_json::from_str(&status.1).ok()?;
        let leader = leader_of(&cluster)?;
        let leading: serde_json::Value =
            serde_json::from_str(&common::http_get(cluster.http_addr(leader), "/status")?.1).ok()?;
        (status["applied_index"].as_u64()? >= leading["commit_index"].as_u64()?).then_some(())
    });
}

/// The `/status` of node `id`: its role and term, and the leaders it has seen.
fn role_term_changes(cluster: &TestCluster, id: u32) -> Option<(String, u64, u64)> {
    let status: serde_json::Value =
        serde_json::from_str(&common::http_get(cluster.http_addr(id), "/status")?.1).ok()?;
    Some((status["role"].as_str()?.to_string(), status["term"].as_u64()?, status["leader_changes"].as_u64()?))
}

/// Writes through `client` for `how_long`, each a new product; how many were answered.
fn write_for(client: &mut Client, how_long: Duration, tag: &str) -> usize {
    let started = Instant::now();
    let mut answered = 0;
    let mut n = 0;
    while started.elapsed() < how_long {
        n += 1;
        let body = serde_json::json!({ "title": format!("{tag}{n}"), "price": 1.0, "currency": "GBP" });
        let key = format!("{tag}{n}");
        let headers = [("Content-Type", "application/json"), ("Idempotency-Key", key.as_str())];
        if let Outcome::Answered(reply) =
            client.call("POST", "/api/products", &headers, &body.to_string(), Duration::from_secs(5))
        {
            assert_eq!(reply.status, 201, "{}", reply.body);
            answered += 1;
        }
    }
    answered
}

/// A cluster of five whose leader's disk can be slowed, and a client that writes through the
/// leader.
struct SlowLeader {
    cluster: TestCluster,
    disk: SlowDisk,
    leader: u32,
    term: u64,
    pid: u32,
    client: Client,
}

/// The [`SlowLeader`] cluster, the disk throttled to `iops` when slowed; None (the test
/// skipped) where blkio throttling cannot be used here.
fn with_slow_disk_for_the_leader(iops: u32) -> Option<SlowLeader> {
    let cluster = TestCluster::start(NODES, 0, &[]);
    let port = cluster.addr(1).port();
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(10));
    let Some(disk) = SlowDisk::new(&format!("labctl-slow-leader-{port}"), cluster.data_dir(), iops) else {
        let what = "a slow disk: blkio throttling (cgroup v1, root, a data dir on a block device) is not usable here";
        assert!(!ci(), "{what}");
        skipped(what);
        return None;
    };
    let pid = cluster.pid(leader).expect("the leader runs");
    let mut client = Client::new(port, NODES, leader);
    client.answer_within = Duration::from_secs(5);
    Some(SlowLeader { cluster, disk, leader, term, pid, client })
}

#[test]
fn a_leader_whose_disk_stalls_for_a_moment_keeps_its_lead() {
    let _alone = one_cluster_at_a_time();
    // The Raft log is written beside the Raft thread: a leader whose flushes take hundreds of
    // milliseconds for a while still sends its heartbeats in time. (When the Raft thread
    // waited for its own flushes, the followers' election timers, 150-300 ms, fired while it
    // waited, and leaders came and went.)
    let Some(SlowLeader { cluster, disk, leader, term, pid, mut client }) = with_slow_disk_for_the_leader(4) else {
        return;
    };
    let (_, _, changes) = role_term_changes(&cluster, leader).expect("the leader's status");
    write_for(&mut client, Duration::from_millis(300), "before");
    disk.slow(pid);
    let slow = write_for(&mut client, Duration::from_millis(800), "slow");
    disk.restore(pid);
    let after = write_for(&mut client, Duration::from_secs(2), "after");
    let log = cluster.log_text(leader);
    assert_eq!(
        role_term_changes(&cluster, leader),
        Some(("LEADER".to_string(), term, changes)),
        "node{leader} lost its lead while its disk stalled:\n{log}"
    );
    assert!(after >= 100, "only {after} writes answered in the 2 s after the stall");
    eprintln!(
        "node{leader} kept its lead through 800 ms of 4 disk writes a second: {slow} writes then, {after} in 2 s after"
    );
}

#[test]
fn a_leader_whose_disk_stays_slow_hands_over_and_writes_go_on() {
    let _alone = one_cluster_at_a_time();
    // A leader answers a write once it is on its own disk too: one whose disk stays slow would
    // make every write as slow as its disk, though the followers' disks are fast. It hands over.
    let Some(SlowLeader { cluster, disk, leader, pid, mut client, .. }) = with_slow_disk_for_the_leader(4) else {
        return;
    };
    disk.slow(pid);
    let started = Instant::now();
    let handed_over = common::poll("another node to lead", Duration::from_secs(10), || {
        write_for(&mut client, Duration::from_millis(100), "slow");
        leader_of(&cluster).filter(|&l| l != leader).map(|l| (l, started.elapsed()))
    });
    let answered = write_for(&mut client, Duration::from_secs(2), "after");
    disk.restore(pid);
    let log = cluster.log_text(leader);
    assert!(log.contains("its disk is slower than theirs"), "{log}");
    assert!(answered >= 100, "only {answered} writes answered in 2 s by node{} after the hand-over", handed_over.0);
    eprintln!(
        "node{leader}, its disk at 4 writes a second, handed over to node{} after {:.1?}; then {answered} writes in 2 s",
        handed_over.0, handed_over.1
    );
}
