//! Shared-database mode on one SQLite file: three real nodes take turns applying, and a client
//! whose write another node applied first still gets the created object, not just "applied".

mod common;

use std::time::Duration;

use common::{http_call, poll, TestCluster};
use diesel::connection::SimpleConnection;
use diesel::Connection;
use serde_json::{json, Value};

const ELECTION: Duration = Duration::from_secs(10);

fn commit_index(cluster: &TestCluster, node: u32) -> Option<u64> {
    http_call(cluster.http_addr(node), "GET", "/status", &[], "")?.json()["commit_index"].as_u64()
}

#[test]
fn every_write_is_answered_with_its_real_outcome_whichever_node_applied_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db").to_string_lossy().into_owned();
    let cluster = TestCluster::start(3, 0, &["--database-url", &db]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let leader_addr = cluster.http_addr(leader);
    for round in 1..=8i64 {
        let base = poll("every node to apply what is committed", ELECTION, || {
            let s = http_call(leader_addr, "GET", "/status", &[], "")?.json();
            (s["applied_index"] == s["commit_index"]).then(|| s["commit_index"].as_u64()).flatten()
        });
        // The test takes the database's write lock: every node's applier waits for it and,
        // when it is released, whichever node's retry comes first applies the entry.
        let mut lock = diesel::SqliteConnection::establish(&db).unwrap();
        lock.batch_execute("BEGIN IMMEDIATE").unwrap();
        let title = format!("shared {round}");
        let body = json!({ "title": title, "price": round as f64, "currency": "GBP" }).to_string();
        let write = std::thread::spawn(move || {
            http_call(leader_addr, "POST", "/api/products", &[("Content-Type", "application/json")], &body)
        });
        for node in 1..=3 {
            poll(&format!("node{node} to know the write committed"), ELECTION, || {
                (commit_index(&cluster, node)? > base).then_some(())
            });
        }
        lock.batch_execute("COMMIT").unwrap();
        let reply = write.join().unwrap().expect("the leader answers");
        assert_eq!(reply.status, 201, "round {round}: {}", reply.body);
        let created: Value = reply.json();
        assert_eq!((created["id"].as_i64(), created["title"].as_str()), (Some(round), Some(title.as_str())));
    }
    let page = http_call(cluster.http_addr(1), "GET", "/api/products?limit=100", &[], "").unwrap().json();
    assert_eq!(page["pagination"]["total"], json!(8), "each write applied once");
}
