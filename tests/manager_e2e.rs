//! `labctl manager` against real things: RabbitMQ, a 5-node loopback cluster of `labctl node`
//! processes, and the manager process itself. Items go queue → manager → leader → every node;
//! each must end up stored exactly once on every node, through a leader kill and a RabbitMQ
//! restart. Items the cluster can never take end in the dead-letter queue.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::manager::{assert_stored_once_everywhere, drain_and_stop, ManagerProcess};
use common::rabbit::{self, PrivateRabbit, TestQueue};
use common::{http_call, poll, TestCluster};
use serde_json::{json, Value};

const NODES: u32 = 5;

fn titles(tag: &str, range: std::ops::Range<u32>) -> BTreeSet<String> {
    range.map(|i| format!("{tag} book {i}")).collect()
}

/// Starts a manager for `queue` on `amqp_url`, telling it where the cluster's nodes are.
fn manager_for(name: &str, amqp_url: &str, queue: &TestQueue, http_port: u16, extra: &[&str]) -> ManagerProcess {
    let port = http_port.to_string();
    let mut args = vec!["--queue", &queue.name, "--nodes", "5", "--http-port", &port];
    args.extend_from_slice(extra);
    ManagerProcess::start(name, &args, &[("LABCTL_AMQP_URL", amqp_url)])
}

#[test]
fn the_http_service_tracks_the_leader_and_the_manager_survives_a_dead_broker() {
    let cluster = TestCluster::start(3, 0, &[]);
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = if leader == 1 { 2 } else { 1 };
    // Nothing listens on this port: the consumer keeps failing and retrying.
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/%2f", rabbit::free_tcp_port());
    let port = cluster.raft_port.to_string();
    let mut manager =
        ManagerProcess::start("http", &["--nodes", "3", "--http-port", &port], &[("LABCTL_AMQP_URL", &dead)]);
    let post = |body: &str| http_call(manager.addr, "POST", "/leader", &[("Content-Type", "application/json")], body);
    let announcement = |id: u32, term: u64| {
        json!({"name": format!("node{id}"), "term": term, "http": cluster.http_addr(id).to_string()}).to_string()
    };

    let reply = http_call(manager.addr, "GET", "/leader", &[], "").unwrap();
    assert_eq!(reply.json()["leader"], Value::Null);

    // The leader's own announcement, which it confirms on its /status.
    let reply = post(&announcement(leader, term)).unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["accepted"], true);
    // An older term is answered with what is known, and changes nothing.
    let reply = post(&announcement(follower, term - 1)).unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["accepted"], false);
    assert_eq!(reply.json()["leader"]["name"], format!("node{leader}"));
    // A follower does not confirm a newer term in its own name: refused, nothing learned.
    let reply = post(&announcement(follower, term + 1_000_000)).unwrap();
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(reply.json()["error"].as_str().unwrap().contains(&format!("names node{leader} in term {term}")));
    // Strangers, and members somewhere else: refused.
    for stranger in [
        json!({"name": "node9", "term": term + 1, "http": "127.0.0.9:8000"}),
        json!({"name": format!("node{leader}"), "term": term + 1, "http": "127.0.0.9:8000"}),
    ] {
        let reply = post(&stranger.to_string()).unwrap();
        assert_eq!(reply.status, 403, "{stranger}: {}", reply.body);
    }
    let reply = http_call(manager.addr, "GET", "/leader", &[], "").unwrap();
    assert_eq!(
        reply.json()["leader"],
        json!({"name": format!("node{leader}"), "term": term, "http": cluster.http_addr(leader).to_string()})
    );
    assert_eq!(reply.json()["term"], term, "no refused announcement raised the term");

    for bad in ["not json", r#"{"name":"node1"}"#, r#"{"name":"","term":1,"http":"x:1"}"#] {
        let reply = post(bad).unwrap();
        assert_eq!(reply.status, 400, "{bad}");
        assert!(reply.json()["error"].is_string());
    }
    assert_eq!(http_call(manager.addr, "DELETE", "/leader", &[], "").unwrap().status, 405);
    assert_eq!(http_call(manager.addr, "GET", "/nowhere", &[], "").unwrap().status, 404);

    manager.wait_for_log("cannot consume scraped_products", Duration::from_secs(10));
    let status = manager.status();
    assert_eq!(status["amqp_connected"], false);
    assert_eq!(status["rabbitmq"]["queue"], "scraped_products");
    assert_eq!(status["rabbitmq"]["dead_letter_queue"], "scraped_products.dead");
    assert!(!status["rabbitmq"]["url"].as_str().unwrap().contains("guest:guest"), "the password is hidden");
    for counter in ["consumed", "stored", "retried", "dead_lettered", "uploads"] {
        assert_eq!(status[counter], 0, "{counter}");
    }
    assert!(manager.is_running(), "a dead broker does not stop the manager");
    assert!(manager.terminate().success(), "SIGTERM stops the manager cleanly");
}

#[test]
fn every_item_is_stored_once_on_every_node() {
    let Some(url) = rabbit::shared_broker() else { return };
    let queue = TestQueue::new(&url, "once");
    // Items already waiting when the manager starts, and items arriving while it runs.
    rabbit::publish(&url, &queue.name, &rabbit::products("once", 0..400));
    let port = common::free_port(NODES);
    let manager = manager_for("once", &url, &queue, port, &[]);
    let cluster = TestCluster::start(NODES, port, &["--manager-url", &manager.url()]);
    rabbit::publish(&url, &queue.name, &rabbit::products("once", 400..500));

    let all: Vec<u32> = (1..=NODES).collect();
    assert_stored_once_everywhere(&cluster, &all, &titles("once", 0..500));
    poll("the manager to count 500 stored", Duration::from_secs(10), || {
        (manager.counter("stored") == 500).then_some(())
    });
    let status = manager.status();
    assert_eq!(status["dead_lettered"], 0);
    assert_eq!(rabbit::queue_len(&url, &queue.name), Some(0), "every message is acknowledged");
    // The leader told the manager where it is.
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(5));
    poll("the manager to know the leader", Duration::from_secs(10), || {
        let known = &manager.status()["leader"];
        (known["name"] == format!("node{leader}") && known["term"] == term).then_some(())
    });
}

#[test]
fn a_leader_killed_mid_stream_loses_and_duplicates_nothing() {
    let Some(url) = rabbit::shared_broker() else { return };
    let queue = TestQueue::new(&url, "failover");
    let total = 2000;
    rabbit::publish(&url, &queue.name, &rabbit::products("failover", 0..total));
    let port = common::free_port(NODES);
    let mut cluster = TestCluster::start(NODES, port, &[]);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10));
    // Many writes in flight when the leader dies: some it committed without answering.
    let mut manager = manager_for("failover", &url, &queue, port, &["--concurrency", "32", "--prefetch", "64"]);

    poll("a quarter of the items stored", Duration::from_secs(60), || {
        (manager.counter("stored") >= u64::from(total / 4)).then_some(())
    });
    cluster.kill(leader);
    let stored_at_kill = manager.counter("stored");
    assert!(stored_at_kill < u64::from(total), "the leader died before the stream ended ({stored_at_kill} stored)");

    let survivors: Vec<u32> = (1..=NODES).filter(|&id| id != leader).collect();
    assert_stored_once_everywhere(&cluster, &survivors, &titles("failover", 0..total));
    assert!(manager.counter("retried") > 0, "some writes were retried through the leader change");
    // The old leader, back, catches up with the same items, each once.
    cluster.spawn(leader);
    assert_stored_once_everywhere(&cluster, &[leader], &titles("failover", 0..total));
    // Once every message is acknowledged (one whose acknowledgement was lost would be counted
    // twice) and the manager has stopped, no late write can add a copy: each node holds each
    // item once.
    let status = drain_and_stop(&mut manager, &url, &queue.name, u64::from(total));
    assert_eq!(status["dead_lettered"], 0);
    let all: Vec<u32> = (1..=NODES).collect();
    assert_stored_once_everywhere(&cluster, &all, &titles("failover", 0..total));
}

#[test]
fn a_rabbitmq_restart_mid_stream_loses_and_duplicates_nothing() {
    let Some(mut broker) = PrivateRabbit::start("restart") else { return };
    let url = broker.url();
    let queue = TestQueue::new(&url, "restart");
    let total = 1500;
    rabbit::publish(&url, &queue.name, &rabbit::products("restart", 0..total));
    let port = common::free_port(NODES);
    let cluster = TestCluster::start(NODES, port, &[]);
    let mut manager = manager_for("restart", &url, &queue, port, &["--concurrency", "4", "--prefetch", "8"]);

    poll("a third of the items stored", Duration::from_secs(60), || {
        (manager.counter("stored") >= u64::from(total / 3)).then_some(())
    });
    broker.stop();
    let stored_at_stop = manager.counter("stored");
    assert!(stored_at_stop < u64::from(total), "RabbitMQ stopped before the stream ended ({stored_at_stop} stored)");
    manager.wait_for_log("lost RabbitMQ", Duration::from_secs(20));
    poll("the manager to notice", Duration::from_secs(20), || {
        (manager.status()["amqp_connected"] == false).then_some(())
    });
    broker.start_again();

    let all: Vec<u32> = (1..=NODES).collect();
    assert_stored_once_everywhere(&cluster, &all, &titles("restart", 0..total));
    assert!(manager.counter("amqp_connects") >= 2, "the manager connected again");
    // Redelivered messages are posted again: once all are acknowledged and the manager has
    // stopped, each node still holds each item once.
    let status = drain_and_stop(&mut manager, &url, &queue.name, u64::from(total));
    assert_eq!(status["dead_lettered"], 0);
    assert_stored_once_everywhere(&cluster, &all, &titles("restart", 0..total));
}

#[test]
fn an_item_the_cluster_refuses_goes_to_the_dead_letter_queue() {
    let Some(url) = rabbit::shared_broker() else { return };
    let queue = TestQueue::new(&url, "dead");
    let mut messages = rabbit::products("dead", 0..20);
    let refused = [
        (Some("dead|no-price".to_string()), br#"{"title":"no price","currency":"GBP"}"#.to_vec()),
        (Some("dead|bad-rating".to_string()), br#"{"title":"x","price":1.0,"currency":"GBP","rating":42}"#.to_vec()),
        (None, b"this is not JSON".to_vec()),
    ];
    messages.extend(refused.iter().cloned());
    rabbit::publish(&url, &queue.name, &messages);
    let port = common::free_port(NODES);
    let manager = manager_for("dead", &url, &queue, port, &[]);
    let cluster = TestCluster::start(NODES, port, &["--manager-url", &manager.url()]);

    let all: Vec<u32> = (1..=NODES).collect();
    assert_stored_once_everywhere(&cluster, &all, &titles("dead", 0..20));
    poll("three dead letters", Duration::from_secs(30), || (manager.counter("dead_lettered") == 3).then_some(()));
    let dead = rabbit::drain(&url, &queue.dead);
    assert_eq!(dead.len(), 3, "{dead:?}");
    let mut ids: Vec<Option<String>> = dead.iter().map(|d| d.message_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, [None, Some("dead|bad-rating".into()), Some("dead|no-price".into())]);
    for letter in &dead {
        let status: u16 = letter.header("x-labctl-status").expect("status header").parse().unwrap();
        assert!((400..500).contains(&status), "{letter:?}");
        assert!(!letter.header("x-labctl-reason").unwrap_or("").is_empty(), "{letter:?}");
    }
    assert_eq!(manager.counter("stored"), 20);
    assert_eq!(rabbit::queue_len(&url, &queue.name), Some(0));
}

/// In secure mode the manager takes only announcements signed with the cluster secret: the
/// leader's own, and nobody's unsigned one.
#[test]
fn with_a_cluster_secret_only_signed_announcements_count() {
    let secret = "the secret the nodes and the manager share";
    let key = labctl::proto::auth::Key::derive(secret.as_bytes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("cluster.secret");
    std::fs::write(&secret_file, secret).unwrap();
    let secret_path = secret_file.to_str().unwrap();
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/%2f", rabbit::free_tcp_port());
    let port = common::free_port(3);
    let manager = ManagerProcess::start(
        "secure",
        &["--nodes", "3", "--http-port", &port.to_string()],
        &[("LABCTL_AMQP_URL", &dead), ("LABCTL_CLUSTER_SECRET_FILE", secret_path)],
    );
    // A forged announcement before the real one: refused.
    let forged = json!({"name": "node2", "term": 7, "http": format!("127.0.0.2:{port}")}).to_string();
    let reply = http_call(manager.addr, "POST", "/leader", &[("Content-Type", "application/json")], &forged).unwrap();
    assert_eq!(reply.status, 401, "{}", reply.body);
    let flag = format!("--cluster-secret-file={secret_path}");
    let cluster = TestCluster::start_signing(3, port, &[&flag, "--manager-url", &manager.url()], &[], Some(key));
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(10));
    let known = poll("the manager to learn the leader", Duration::from_secs(10), || {
        let reply = http_call(manager.addr, "GET", "/leader", &[], "")?;
        let known = reply.json()["leader"].clone();
        (known["name"] == format!("node{leader}") && known["term"] == term).then_some(known)
    });
    assert_eq!(known["http"], cluster.http_addr(leader).to_string());
    let log = manager.log_text();
    assert!(log.contains("secure mode") && log.contains("from its announcement"), "{log}");
    assert!(log.contains("refused a leader announcement from 127.0.0.1"), "{log}");
}

/// With `--auth` on the nodes, the manager writes as its own account (Basic, its password from
/// a file): refused credentials hold the items back (no dead letters), the right ones store
/// each item once.
#[test]
fn with_accounts_required_the_manager_writes_as_its_own_account() {
    let Some(url) = rabbit::shared_broker() else { return };
    let queue = TestQueue::new(&url, "auth");
    rabbit::publish(&url, &queue.name, &rabbit::products("auth", 0..20));
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("manager_password");
    std::fs::write(&password_file, "pipeline-pass-1\n").unwrap();
    let password_file = password_file.to_string_lossy().into_owned();
    let admin_password = "admin-pass-for-manager";
    let admin = format!("Basic {}", {
        use base64ct::Encoding;
        base64ct::Base64::encode_string(format!("admin:{admin_password}").as_bytes())
    });
    let port = common::free_port(3);
    let cluster = TestCluster::start_with_env(3, port, &["--auth"], &[("LABCTL_ADMIN_PASSWORD", admin_password)]);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10));
    let leader = cluster.http_addr(leader);
    let json = [("Content-Type", "application/json"), ("Authorization", admin.as_str())];
    let account = r#"{"name":"pipeline","password":"pipeline-pass-1","role":"member"}"#;
    poll("the admin to create the manager's account", Duration::from_secs(10), || {
        (http_call(leader, "POST", "/api/accounts", &json, account)?.status == 201).then_some(())
    });
    let port = port.to_string();
    let args = ["--queue", &queue.name, "--nodes", "3", "--http-port", &port, "--user", "pipeline"];

    let mut refused = ManagerProcess::start(
        "auth-wrong",
        &args,
        &[("LABCTL_AMQP_URL", &url), ("LABCTL_MANAGER_PASSWORD", "not-the-password")],
    );
    refused.wait_for_log("refused the manager's credentials (401)", Duration::from_secs(15));
    assert_eq!(refused.counter("dead_lettered"), 0, "a refused account is no reason to drop items");
    assert!(refused.terminate().success());

    let manager = ManagerProcess::start(
        "auth",
        &args,
        &[("LABCTL_AMQP_URL", &url), ("LABCTL_MANAGER_PASSWORD_FILE", &password_file)],
    );
    poll("the manager to store 20 items", Duration::from_secs(20), || (manager.counter("stored") == 20).then_some(()));
    assert_eq!(manager.counter("dead_lettered"), 0);
    let listed = http_call(leader, "GET", "/api/products?limit=100", &json, "").unwrap();
    assert_eq!(listed.json()["pagination"]["total"], 20, "{}", listed.body);
    assert!(!manager.log_text().contains("pipeline-pass-1"), "the manager logs no password");
}
