//! Shared-database mode: three real nodes given one PostgreSQL database apply every write once;
//! and a node whose database stops answering is not ready.
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use common::{http_call, poll, TestCluster};
use diesel::connection::SimpleConnection;
use diesel::Connection;
use serde_json::{json, Value};

fn admin_url() -> String {
    std::env::var("LABCTL_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn admin(sql: &str) -> Result<(), String> {
    let mut conn = diesel::PgConnection::establish(&admin_url()).map_err(|e| e.to_string())?;
    conn.batch_execute(sql).map_err(|e| e.to_string())
}

/// A fresh database, dropped afterwards.
struct SharedDb {
    name: String,
    url: String,
}

impl SharedDb {
    fn new() -> Option<SharedDb> {
        if let Err(e) = admin("SELECT 1") {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "PostgreSQL is needed (CI=true): {e}");
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("\n!!! SKIPPED: PostgreSQL does not answer ({e})\n").as_bytes(),
            );
            return None;
        }
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("labctl_shared_{}_{n}", std::process::id());
        let _ = admin(&format!("DROP DATABASE IF EXISTS {name}"));
        admin(&format!("CREATE DATABASE {name}")).unwrap();
        let base = admin_url().rsplit_once('/').unwrap().0.to_string();
        Some(SharedDb { url: format!("{base}/{name}"), name })
    }
}

impl Drop for SharedDb {
    fn drop(&mut self) {
        let _ = admin(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

#[test]
fn three_nodes_on_one_postgresql_database_apply_every_write_once() {
    let Some(db) = SharedDb::new() else { return };
    let cluster = TestCluster::start(3, 0, &["--database-url", &db.url]);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10));
    let mut ids = Vec::new();
    for i in 0..30 {
        let body = json!({ "title": format!("shared{i}"), "price": 1.0 + i as f64, "currency": "EUR" }).to_string();
        let reply = http_call(
            cluster.http_addr(leader),
            "POST",
            "/api/products",
            &[("Content-Type", "application/json")],
            &body,
        )
        .unwrap();
        assert_eq!(reply.status, 201, "{}", reply.body);
        ids.push(reply.json()["id"].as_i64().unwrap());
    }
    assert_eq!(ids, (1..=30).collect::<Vec<i64>>(), "ids are assigned once, in log order");
    // Every node reads the same 30 rows: three appliers, one application per entry.
    for node in 1..=3 {
        let page: Value = poll(&format!("node{node} to see 30 rows"), Duration::from_secs(10), || {
            let r = http_call(cluster.http_addr(node), "GET", "/api/products?limit=100", &[], "")?;
            let page = r.json();
            (page["pagination"]["total"] == json!(30)).then_some(page)
        });
        let titles: Vec<&str> = page["data"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap()).collect();
        assert_eq!(titles.len(), 30);
    }
    // Each node's applied index catches up with the commit index.
    for node in 1..=3 {
        poll(&format!("node{node} to apply everything committed"), Duration::from_secs(10), || {
            let s = http_call(cluster.http_addr(node), "GET", "/status", &[], "")?.json();
            (s["applied_index"] == s["commit_index"] && s["commit_index"].as_u64()? >= 31).then_some(())
        });
    }
}

#[test]
fn a_node_whose_database_stops_answering_is_not_ready() {
    let Some(db) = SharedDb::new() else { return };
    let cluster = TestCluster::start(1, 0, &["--database-url", &db.url]);
    cluster.wait_for_leader(Duration::from_secs(10));
    let addr = cluster.http_addr(1);
    let ready = http_call(addr, "GET", "/readyz", &[], "").unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["checks"], json!({ "node": true, "leader": true, "database": true }));

    // The server ends the node's sessions, as a database restart or failover would.
    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    ))
    .unwrap();
    let reply = poll("the node to report its database", Duration::from_secs(10), || {
        let r = http_call(addr, "GET", "/readyz", &[], "")?;
        (r.status == 503).then_some(r)
    });
    assert_eq!(reply.header("retry-after"), Some("1"));
    let body = reply.json();
    assert_eq!(body["ready"], json!(false));
    assert_eq!(body["checks"], json!({ "node": true, "leader": true, "database": false }), "{body}");
    assert!(body["database_error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    assert_eq!(http_call(addr, "GET", "/healthz", &[], "").unwrap().status, 200, "still alive");
}
