//! Log compaction and snapshots with real `labctl node` processes on loopback: a follower
//! that was down while the others compacted their logs past it catches up through a snapshot
//! of the leader's database sent over UDP, and ends with the same data.

mod common;

use std::time::Duration;

use common::{http_call, poll, TestCluster};
use serde_json::{json, Value};

const ELECTION: Duration = Duration::from_secs(5);
const JSON: (&str, &str) = ("content-type", "application/json");

fn status(cluster: &TestCluster, id: u32) -> Option<Value> {
    let reply = http_call(cluster.http_addr(id), "GET", "/status", &[], "")?;
    serde_json::from_str(&reply.body).ok()
}

fn product(cluster: &TestCluster, id: u32, product: u64) -> Option<Value> {
    let reply = http_call(cluster.http_addr(id), "GET", &format!("/api/products/{product}"), &[], "")?;
    (reply.status == 200).then(|| reply.json())
}

/// Writes `count` products through `leader`, each with a long description of a title, so
/// that the database takes several pieces of a snapshot; returns their ids.
fn write_products(cluster: &TestCluster, leader: u32, from: u64, count: u64) -> Vec<u64> {
    (from..from + count)
        .map(|n| {
            let body =
                json!({ "title": format!("p{n}-{}", "x".repeat(2000)), "price": n as f64 / 4.0, "currency": "GBP" });
            let reply = http_call(cluster.http_addr(leader), "POST", "/api/products", &[JSON], &body.to_string())
                .expect("the leader answers");
            assert_eq!(reply.status, 201, "{}", reply.body);
            reply.json()["id"].as_u64().expect("an id")
        })
        .collect()
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_through_a_snapshot() {
    let mut cluster = TestCluster::start(3, 0, &["--compact-every", "50", "--compact-keep", "10"]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let behind = if leader == 1 { 2 } else { 1 };
    cluster.kill(behind);
    let ids = write_products(&cluster, leader, 0, 300);
    let leader_log = poll("the leader to compact its log", Duration::from_secs(20), || {
        let text = cluster.log_text(leader);
        text.contains("log compacted up to index").then_some(text)
    });
    assert!(!leader_log.contains(" ERROR "), "{leader_log}");

    cluster.spawn(behind);
    let commit = status(&cluster, leader).expect("the leader's status")["commit_index"].as_u64().unwrap();
    poll("the follower to apply what the leader had committed", Duration::from_secs(30), || {
        let s = status(&cluster, behind)?;
        (s["applied_index"].as_u64()? >= commit).then_some(())
    });
    let text = cluster.log_text(behind);
    assert!(text.contains("installed the snapshot at index"), "it caught up without a snapshot:\n{text}");
    let leader_text = cluster.log_text(leader);
    assert!(leader_text.contains(&format!("sending node{behind} the snapshot at index")), "{leader_text}");
    for &id in ids.iter().step_by(37).chain(ids.last()) {
        assert_eq!(product(&cluster, behind, id), product(&cluster, leader, id), "product {id}");
        assert!(product(&cluster, behind, id).is_some(), "product {id} on node{behind}");
    }

    // New writes reach it as entries, and it restarts from its compacted log and database.
    let more = write_products(&cluster, leader, 300, 20);
    cluster.kill(behind);
    cluster.spawn(behind);
    let last = *more.last().unwrap();
    poll("the restarted follower to have the newest product", Duration::from_secs(30), || {
        product(&cluster, behind, last).filter(|p| *p == product(&cluster, leader, last).unwrap_or_default())
    });
    assert!(cluster.is_running(behind), "{}", cluster.log_text(behind));
}
