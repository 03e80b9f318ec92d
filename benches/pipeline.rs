//! The pipeline's throughput: items from a RabbitMQ queue, through `labctl manager`, committed
//! on a 5-node loopback cluster.
//!
//! Starts 5 `labctl node`s (default timing, fsync on) and waits for a leader. Then, for each
//! `--concurrency` value: publishes `--items` product messages (persistent, publisher confirms)
//! to a fresh durable queue, starts `labctl manager` on that backlog with that many requests in
//! flight, and measures until the manager's `/status` counts every item `stored` — acknowledged
//! after the leader's 2xx, which the leader sends once the write is committed and applied. Then
//! every node is checked to hold exactly the items published so far.
//!
//! Prints, per concurrency: the drain time of the backlog (from the manager's start to the last
//! item stored), items/s over the drain, and the best and worst whole second.
//!
//! ```text
//! cargo bench --bench pipeline -- [--items 10000] [--concurrency 16,64] [--raft-port 17655] [--amqp-url URL]
//! ```
//! RabbitMQ must run (default `amqp://guest:guest@127.0.0.1:5672/%2f`); its queues are deleted
//! after each round.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use amiquip::{AmqpProperties, Confirm, Connection, Publish, QueueDeclareOptions};
use common::labctl::{LabctlCluster, Timing};
use common::{wait_for_agreement, Args, Proc, TempDir};

const MEMBERS: usize = 5;

fn main() {
    let args = Args::from_env();
    args.check(&["--items", "--concurrency", "--raft-port", "--amqp-url"]);
    let items: u32 = args.parse("--items", 10_000);
    let port: u16 = args.parse("--raft-port", 17655);
    let amqp_url = args.value("--amqp-url").unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let concurrencies: Vec<usize> = args
        .value("--concurrency")
        .unwrap_or_else(|| "64".into())
        .split(',')
        .map(|c| c.trim().parse().expect("--concurrency: numbers separated by commas"))
        .collect();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_labctl"));
    if let Err(e) = Connection::insecure_open(&amqp_url).and_then(|c| c.close()) {
        eprintln!("\n!!! RabbitMQ at {amqp_url} does not answer ({e}): start it (rabbitmq-server -detached)\n");
        std::process::exit(1);
    }

    println!("# Pipeline: {items} queued items → labctl manager → 5-node loopback cluster\n");
    println!("machine: {}  ", common::machine());
    let mut cluster = LabctlCluster::start(binary.clone(), MEMBERS, port, Timing::DEFAULT).expect("start labctl nodes");
    let all: Vec<usize> = (0..MEMBERS).collect();
    let leader = wait_for_agreement(&mut cluster, &all, Duration::from_secs(30)).expect("a leader");
    let nodes: Vec<String> = (1..=MEMBERS).map(|id| format!("127.0.0.{id}:{}", cluster.http_port())).collect();
    let leader_http = nodes[leader].clone();

    println!();
    println!("| concurrency | items | drain time | items/s | best second | worst second | load average after |");
    println!("|---:|---:|---:|---:|---:|---:|---|");
    for &concurrency in &concurrencies {
        let queue = format!("labctl-bench.pipeline.{}.{concurrency}", std::process::id());
        eprintln!(
            "== concurrency {concurrency}: publishing {items} items to {queue} (load average {})",
            common::loadavg()
        );
        publish(&amqp_url, &queue, items);
        let before = product_count(&leader_http).expect("the leader lists products");
        let round = drain(&binary, &amqp_url, &queue, &cluster, concurrency, items);
        delete_queues(&amqp_url, &queue);
        match round {
            Ok(r) => {
                // Every node holds them (a follower may trail the leader by a moment).
                let expected = before + u64::from(items);
                let deadline = Instant::now() + Duration::from_secs(30);
                for node in nodes.iter() {
                    while product_count(node) != Some(expected) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if let Some(n) = product_count(node).filter(|&n| n != expected) {
                        eprintln!("   {node} holds {n} products, not {expected}");
                    }
                }
                let secs = r.drain.as_secs_f64();
                println!(
                    "| {concurrency} | {items} | {secs:.2} s | {:.0} | {} | {} | {} |",
                    f64::from(items) / secs,
                    r.best_second,
                    r.worst_second,
                    common::loadavg()
                );
            }
            Err(e) => println!("| {concurrency} | {items} | failed: {e} | | | | |"),
        }
    }
}

struct Round {
    drain: Duration,
    /// Items stored in the best and the worst whole second of the drain.
    best_second: u64,
    worst_second: u64,
}

/// Starts a manager on `queue` and waits until it has stored `items`.
fn drain(
    binary: &PathBuf,
    amqp_url: &str,
    queue: &str,
    cluster: &LabctlCluster,
    concurrency: usize,
    items: u32,
) -> Result<Round, String> {
    let dir = TempDir::new("labctl-bench-manager").map_err(|e| e.to_string())?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(binary);
    cmd.current_dir(dir.path())
        .env("RUST_LOG", "info")
        .env("LABCTL_AMQP_URL", amqp_url)
        .env_remove("LABCTL_CONFIG")
        .arg("manager")
        .arg(format!("--listen={listen}"))
        .arg(format!("--queue={queue}"))
        .arg(format!("--concurrency={concurrency}"))
        .arg(format!("--prefetch={}", (concurrency * 4).min(u16::MAX as usize)))
        .arg(format!("--nodes={MEMBERS}"))
        .arg(format!("--http-port={}", cluster.http_port()));
    let start = Instant::now();
    let _manager = Proc::spawn(cmd, &dir.path().join("manager.log")).map_err(|e| e.to_string())?;
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(2))).build().new_agent();
    let stored = || -> Option<u64> {
        let status: serde_json::Value =
            agent.get(&format!("http://{listen}/status")).call().ok()?.body_mut().read_json().ok()?;
        status["stored"].as_u64()
    };
    let mut seconds = Vec::new();
    let (mut last_second, mut at_last_second) = (start, 0);
    let deadline = start + Duration::from_secs(600);
    loop {
        let now = Instant::now();
        let n = stored().unwrap_or(at_last_second);
        if now.duration_since(last_second) >= Duration::from_secs(1) {
            seconds.push(n - at_last_second);
            (last_second, at_last_second) = (now, n);
        }
        if n >= u64::from(items) {
            let drain = now.duration_since(start);
            return Ok(Round {
                drain,
                best_second: seconds.iter().copied().max().unwrap_or(n),
                worst_second: seconds.iter().copied().skip(1).min().unwrap_or(n),
            });
        }
        if now > deadline {
            return Err(format!("{n} of {items} stored after {:?}", now.duration_since(start)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Publishes `items` product messages, persistent, and waits for every confirm.
fn publish(url: &str, queue: &str, items: u32) {
    let mut connection = Connection::insecure_open(url).expect("connect to RabbitMQ");
    let channel = connection.open_channel(None).expect("channel");
    channel.queue_declare(queue, QueueDeclareOptions { durable: true, ..Default::default() }).expect("declare");
    channel.enable_publisher_confirms().expect("confirms");
    let confirms = channel.listen_for_publisher_confirms().expect("confirms");
    for i in 0..items {
        let body = serde_json::json!({
            "title": format!("bench book {i}"),
            "price": 10.0 + f64::from(i % 5000) / 100.0,
            "currency": "GBP",
            "converted_price": 11.6 + f64::from(i % 5000) / 100.0,
            "converted_currency": "EUR",
            "availability": "In stock",
            "rating": (i % 5 + 1) as i32,
            "link": format!("http://books.local/{queue}/{i}.html"),
            "scraped_at": "2026-01-02T03:04:05Z",
        });
        let properties = AmqpProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(format!("{queue}|{i}"));
        let body = serde_json::to_vec(&body).expect("JSON");
        channel.basic_publish("", Publish::with_properties(&body, queue, properties)).expect("publish");
    }
    let mut confirmed = 0;
    while confirmed < u64::from(items) {
        match confirms.recv_timeout(Duration::from_secs(60)).expect("a confirm") {
            Confirm::Ack(p) => confirmed = confirmed.max(p.delivery_tag),
            Confirm::Nack(p) => panic!("RabbitMQ refused message {}", p.delivery_tag),
        }
    }
    let _ = connection.close();
}

fn delete_queues(url: &str, queue: &str) {
    if let Ok(mut connection) = Connection::insecure_open(url) {
        if let Ok(channel) = connection.open_channel(None) {
            for q in [queue.to_string(), format!("{queue}.dead")] {
                let _ = channel.queue_delete(q, Default::default());
            }
        }
        let _ = connection.close();
    }
}

/// Products held by the node at `http` (`host:port`).
fn product_count(http: &str) -> Option<u64> {
    let mut response = ureq::get(&format!("http://{http}/api/products?limit=1")).call().ok()?;
    let page: serde_json::Value = response.body_mut().read_json().ok()?;
    page["pagination"]["total"].as_u64()
}
