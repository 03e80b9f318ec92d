//! Shared-database mode: three real nodes given one PostgreSQL or one MySQL/MariaDB database
//! apply every write once, and a write that database could not store is refused without
//! stopping the log; and a node whose database stops answering is not ready.
//!
//! The admin URLs are `LABCTL_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `LABCTL_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`). A server that does not answer fails its tests under
//! `CI=true` and skips them, loudly, otherwise.
#![cfg(any(feature = "postgres", feature = "mysql"))]

mod common;

use std::time::Duration;

use common::server_db::{Server, SharedDb};
use common::{http_call, poll, TestCluster};
use serde_json::{json, Value};

fn post(cluster: &TestCluster, node: u32, path: &str, body: &Value) -> common::HttpReply {
    let headers = [("Content-Type", "application/json")];
    http_call(cluster.http_addr(node), "POST", path, &headers, &body.to_string()).expect("the node answers")
}

fn three_nodes_on_one_database_apply_every_write_once(server: Server) {
    let Some(db) = SharedDb::new(server) else { return };
    let cluster = TestCluster::start(3, 0, &["--database-url", &db.url]);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10));
    let mut ids = Vec::new();
    for i in 0..30 {
        let reply = post(
            &cluster,
            leader,
            "/api/products",
            &json!({ "title": format!("shared{i} ✓"), "price": 1.0 + i as f64, "currency": "EUR" }),
        );
        assert_eq!(reply.status, 201, "{}", reply.body);
        ids.push(reply.json()["id"].as_i64().unwrap());
    }
    assert_eq!(ids, (1..=30).collect::<Vec<i64>>(), "ids are assigned once, in log order");

    // Writes the database could not store (a NUL byte, a date too long for its column) are
    // refused as the other backends refuse them, and the log goes on behind them.
    let refused = [
        ("/api/products", json!({ "title": "nul\0byte", "price": 1.0, "currency": "EUR" })),
        ("/api/users", json!({ "name": "Nul", "email": "nul\0@example.org" })),
        ("/api/tasks", json!({ "title": "far off", "due_date": "+10000-01-01" })),
    ];
    for (path, body) in &refused {
        let reply = post(&cluster, leader, path, body);
        assert_eq!(reply.status, 422, "{path} {body}: {}", reply.body);
        assert!(reply.json()["error"].is_string(), "{}", reply.body);
    }
    let reply = post(&cluster, leader, "/api/products", &json!({ "title": "after", "price": 2.0, "currency": "EUR" }));
    assert_eq!((reply.status, &reply.json()["id"]), (201, &json!(31)), "{}", reply.body);
    // Accented e-mails are compared byte for byte, as on the other backends.
    for email in ["josé@example.org", "jose@example.org"] {
        let reply = post(&cluster, leader, "/api/users", &json!({ "name": "José 🙂", "email": email }));
        assert_eq!(reply.status, 201, "{email}: {}", reply.body);
    }

    // Every node reads the same 31 rows: three appliers, one application per entry.
    for node in 1..=3 {
        let page: Value = poll(&format!("node{node} to see 31 rows"), Duration::from_secs(10), || {
            let r = http_call(cluster.http_addr(node), "GET", "/api/products?limit=100", &[], "")?;
            let page = r.json();
            (page["pagination"]["total"] == json!(31)).then_some(page)
        });
        let titles: Vec<&str> = page["data"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap()).collect();
        assert_eq!(titles[..2], ["shared0 ✓", "shared1 ✓"]);
        assert_eq!(titles.last(), Some(&"after"));
    }
    // Each node's applied index catches up with the commit index.
    for node in 1..=3 {
        poll(&format!("node{node} to apply everything committed"), Duration::from_secs(10), || {
            let s = http_call(cluster.http_addr(node), "GET", "/status", &[], "")?.json();
            (s["applied_index"] == s["commit_index"] && s["commit_index"].as_u64()? >= 37).then_some(())
        });
    }
}

#[cfg(feature = "postgres")]
#[test]
fn three_nodes_on_one_postgresql_database_apply_every_write_once() {
    three_nodes_on_one_database_apply_every_write_once(Server::Postgres);
}

#[cfg(feature = "mysql")]
#[test]
fn three_nodes_on_one_mysql_database_apply_every_write_once() {
    three_nodes_on_one_database_apply_every_write_once(Server::Mysql);
}

/// Runs `sql` on the PostgreSQL database at `url`, behind the nodes' backs.
#[cfg(feature = "postgres")]
fn on_postgres(url: &str, sql: &str) {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let mut conn = diesel::PgConnection::establish(url).unwrap();
    conn.batch_execute(sql).unwrap();
}

/// A fresh PostgreSQL database, a one-node cluster on it with its leader elected, and the
/// node's HTTP address; None when PostgreSQL is missing outside CI.
#[cfg(feature = "postgres")]
fn one_node_on_postgres() -> Option<(SharedDb, TestCluster, std::net::SocketAddr)> {
    let db = SharedDb::new(Server::Postgres)?;
    let cluster = TestCluster::start(1, 0, &["--database-url", &db.url]);
    cluster.wait_for_leader(Duration::from_secs(10));
    let addr = cluster.http_addr(1);
    Some((db, cluster, addr))
}

/// The body of `/readyz` once it answers 503, which asks the client to come back in a second.
#[cfg(feature = "postgres")]
fn not_ready(addr: std::net::SocketAddr, what: &str) -> serde_json::Value {
    let reply = poll(what, Duration::from_secs(10), || {
        let r = http_call(addr, "GET", "/readyz", &[], "")?;
        (r.status == 503).then_some(r)
    });
    assert_eq!(reply.header("retry-after"), Some("1"), "{}", reply.body);
    reply.json()
}

#[cfg(feature = "postgres")]
#[test]
fn a_node_whose_database_stops_answering_is_not_ready() {
    let Some((db, _cluster, addr)) = one_node_on_postgres() else { return };
    let ready = http_call(addr, "GET", "/readyz", &[], "").unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["checks"], json!({ "node": true, "leader": true, "database": true, "applying": true }));

    // The server ends the node's sessions, as a database restart or failover would.
    Server::Postgres
        .admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
            db.name
        ))
        .unwrap();
    let body = not_ready(addr, "the node to report its database");
    assert_eq!(body["ready"], json!(false));
    assert_eq!(body["checks"], json!({ "node": true, "leader": true, "database": false, "applying": true }), "{body}");
    assert!(body["database_error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    assert_eq!(http_call(addr, "GET", "/healthz", &[], "").unwrap().status, 200, "still alive");
}

/// A committed entry the database refuses with an error that is no refusal of the write (here:
/// its table was renamed away under the node) is tried again until the database takes it,
/// and the node says meanwhile that it is not ready, and why. The client is answered once it is
/// applied, with the write applied once.
#[cfg(feature = "postgres")]
#[test]
fn a_node_that_cannot_apply_an_entry_is_not_ready_until_it_has() {
    let Some((db, cluster, addr)) = one_node_on_postgres() else { return };
    let on_db = |sql: &str| on_postgres(&db.url, sql);
    on_db("ALTER TABLE products RENAME TO products_away");
    let writer = std::thread::spawn(move || {
        let body = json!({ "title": "waits", "price": 1.0, "currency": "EUR" }).to_string();
        http_call(addr, "POST", "/api/products", &[("Content-Type", "application/json")], &body)
    });
    let body = not_ready(addr, "the node to report that it cannot apply");
    assert_eq!(body["checks"], json!({ "node": true, "leader": true, "database": true, "applying": false }), "{body}");
    let error = body["apply_error"].as_str().unwrap_or_default();
    assert!(error.starts_with("entry ") && error.contains("products"), "{body}");
    assert!(cluster.log_text(1).contains("trying again (attempt 1)"), "{}", cluster.log_text(1));

    on_db("ALTER TABLE products_away RENAME TO products");
    let answer = writer.join().unwrap().expect("the writer is answered");
    assert_eq!((answer.status, &answer.json()["id"]), (201, &json!(1)), "{}", answer.body);
    poll("the node to be ready again", Duration::from_secs(10), || {
        (http_call(addr, "GET", "/readyz", &[], "")?.status == 200).then_some(())
    });
    let page = http_call(addr, "GET", "/api/products", &[], "").unwrap().json();
    assert_eq!(page["pagination"]["total"], 1, "{page}");
    assert!(cluster.log_text(1).contains("after all"), "{}", cluster.log_text(1));
}

/// A node told to stop while its database keeps failing a committed entry stops at once,
/// without waiting for the database, and answers nobody that the write was done. The entry
/// stays in its Raft log and is applied, once, when the node starts again.
#[cfg(feature = "postgres")]
#[test]
fn a_node_that_cannot_apply_an_entry_still_stops_and_applies_it_when_started_again() {
    let Some((db, mut cluster, addr)) = one_node_on_postgres() else { return };
    on_postgres(&db.url, "ALTER TABLE products RENAME TO products_away");
    let writer = std::thread::spawn(move || {
        let body = json!({ "title": "kept", "price": 1.0, "currency": "EUR" }).to_string();
        http_call(addr, "POST", "/api/products", &[("Content-Type", "application/json")], &body)
    });
    not_ready(addr, "the node to report that it cannot apply");

    let status = cluster.terminate(1, Duration::from_secs(10));
    assert!(status.success(), "node1 exited with {status}:\n{}", cluster.log_text(1));
    let log = cluster.log_text(1);
    assert!(log.contains("not applied") && log.contains("applied when the node starts again"), "{log}");
    match writer.join().unwrap() {
        None => {}
        Some(reply) => assert_eq!(reply.status, 503, "the writer is not told the write was done: {}", reply.body),
    }

    on_postgres(&db.url, "ALTER TABLE products_away RENAME TO products");
    cluster.spawn(1);
    cluster.wait_for_leader(Duration::from_secs(10));
    let page = poll("the entry to be applied after the restart", Duration::from_secs(10), || {
        let page = http_call(addr, "GET", "/api/products", &[], "")?.json();
        (page["pagination"]["total"] == 1).then_some(page)
    });
    assert_eq!(page["data"][0]["title"], "kept", "{page}");
    assert_eq!(http_call(addr, "GET", "/readyz", &[], "").unwrap().status, 200);
}
