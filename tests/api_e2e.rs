//! The data API on real nodes: writes through the Raft leader, reads on every node.
//!
//! The tests of what a client sees of the data (CRUD, listings, idempotency keys, bad input)
//! run once per backend: on each node's own SQLite file, and, with the cargo features, on a
//! PostgreSQL and on a MySQL/MariaDB database given by URL (see `common::server_db`).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{http_call, http_exchange, poll, HttpReply, NoAnswer, TestCluster};
use serde_json::{json, Value};

const ELECTION: Duration = Duration::from_secs(5);
const JSON: (&str, &str) = ("Content-Type", "application/json");

fn post(addr: SocketAddr, path: &str, body: &Value, extra: &[(&str, &str)]) -> Option<HttpReply> {
    let mut headers = vec![JSON];
    headers.extend_from_slice(extra);
    http_call(addr, "POST", path, &headers, &body.to_string())
}

fn product(title: &str, price: f64) -> Value {
    json!({ "title": title, "price": price, "currency": "GBP" })
}

fn list(addr: SocketAddr, path: &str) -> Value {
    let reply = http_call(addr, "GET", path, &[], "").expect("node answers");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// Runs each `test(database)` as a module of tests, one per backend: `sqlite` (the nodes' own
/// files, no arguments), `postgres` and `mysql` (`--database-url` of a fresh database).
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[test]
                fn sqlite() {
                    super::$test(&[]);
                }
                #[cfg(feature = "postgres")]
                #[test]
                fn postgres() {
                    super::on_server(super::common::server_db::Server::Postgres, super::$test);
                }
                #[cfg(feature = "mysql")]
                #[test]
                fn mysql() {
                    super::on_server(super::common::server_db::Server::Mysql, super::$test);
                }
            }
        )*
    };
}

on_every_backend!(
    an_idempotency_key_makes_a_retried_write_happen_once,
    bad_input_gets_a_json_4xx_never_a_500,
    listings_page_and_filter,
    users_and_tasks_are_created_filtered_updated_and_deleted,
);

/// Runs `test` with the nodes on a fresh database of `server`.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn on_server(server: common::server_db::Server, test: fn(&[&str])) {
    let Some(db) = common::server_db::SharedDb::new(server) else { return };
    test(&["--database-url", &db.url]);
}

#[test]
fn a_write_on_the_leader_is_readable_on_every_node() {
    let cluster = TestCluster::start(5, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let reply = post(cluster.http_addr(leader), "/api/products", &product("Dune", 9.5), &[]).unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
    let created = reply.json();
    assert_eq!(created["title"], "Dune");
    let id = created["id"].as_i64().unwrap();
    for node in 1..=5 {
        let got = poll(&format!("node{node} to have the product"), ELECTION, || {
            let r = http_call(cluster.http_addr(node), "GET", &format!("/api/products/{id}"), &[], "")?;
            (r.status == 200).then(|| r.json())
        });
        assert_eq!(got, created, "node{node} holds a different row");
    }
    // Update and delete go through the leader too, and every node follows.
    let path = format!("/api/products/{id}");
    let body = product("Dune Messiah", 11.0).to_string();
    let reply = http_call(cluster.http_addr(leader), "PUT", &path, &[JSON], &body).unwrap();
    assert_eq!((reply.status, &reply.json()["title"]), (200, &json!("Dune Messiah")));
    let reply = http_call(cluster.http_addr(leader), "DELETE", &path, &[], "").unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    for node in 1..=5 {
        poll(&format!("node{node} to drop the product"), ELECTION, || {
            let r = http_call(cluster.http_addr(node), "GET", &path, &[], "")?;
            (r.status == 404).then_some(())
        });
    }
}

/// One keep-alive HTTP/1.1 connection, as a client library keeps: the next request leaves as
/// soon as the last answer is read.
struct KeepAlive {
    stream: std::io::BufReader<std::net::TcpStream>,
    host: SocketAddr,
}

impl KeepAlive {
    fn open(addr: SocketAddr) -> KeepAlive {
        let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.set_nodelay(true).unwrap();
        KeepAlive { stream: std::io::BufReader::new(stream), host: addr }
    }

    /// Sends one request and reads its answer: status and JSON body.
    fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        use std::io::{BufRead, Read, Write};
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).expect("send");
        let (mut status, mut length) = (0u16, 0usize);
        loop {
            let mut line = String::new();
            assert!(self.stream.read_line(&mut line).expect("read") > 0, "connection closed");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if status == 0 {
                status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
            } else if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("content-length");
                }
            }
        }
        let mut bytes = vec![0u8; length];
        self.stream.read_exact(&mut bytes).expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

#[test]
fn a_client_reads_its_write_at_once_on_the_node_it_wrote_to() {
    let cluster = TestCluster::start(3, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let mut client = KeepAlive::open(cluster.http_addr(leader));
    let listing = "/api/products?limit=100";
    assert_eq!(
        client.call("GET", listing, None),
        (200, json!({ "data": [], "pagination": { "total": 0, "offset": 0, "limit": 100, "has_more": false } }))
    );
    // Each read leaves the moment the write's answer is in: the row and a listing page the
    // node has cached since the last write must both show it.
    for i in 1..=100u64 {
        let (status, created) = client.call("POST", "/api/products", Some(&product(&format!("r{i}"), i as f64)));
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_i64().expect("id");
        assert_eq!(client.call("GET", &format!("/api/products/{id}"), None), (200, created.clone()), "write {i}");
        let (status, page) = client.call("GET", listing, None);
        assert_eq!((status, &page["pagination"]["total"]), (200, &json!(i)), "write {i}: listing");
        assert_eq!(page["data"].as_array().unwrap().last(), Some(&created), "write {i}: listing");
    }
}

#[test]
fn a_follower_redirects_writes_to_the_leader() {
    let cluster = TestCluster::start(5, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let follower = (1..=5).find(|&id| id != leader).unwrap();
    poll("the follower to know the leader", ELECTION, || {
        let status = list(cluster.http_addr(follower), "/status");
        (status["leader"] == json!(format!("node{leader}"))).then_some(())
    });
    let reply = post(cluster.http_addr(follower), "/api/products?from=follower", &product("Emma", 4.0), &[]).unwrap();
    assert_eq!(reply.status, 307, "{}", reply.body);
    assert_eq!(reply.header("x-raft-leader"), Some(format!("node{leader}").as_str()));
    let location = reply.header("location").unwrap().to_string();
    assert_eq!(location, format!("http://{}/api/products?from=follower", cluster.http_addr(leader)));
    // Following the redirect (curl -L) writes on the leader.
    let target: SocketAddr = location.trim_start_matches("http://").split('/').next().unwrap().parse().unwrap();
    let reply = post(target, "/api/products?from=follower", &product("Emma", 4.0), &[]).unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
}

#[test]
fn without_a_leader_writes_get_503_with_retry_after() {
    let mut cluster = TestCluster::start(3, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let others: Vec<u32> = (1..=3).filter(|&id| id != leader).collect();
    cluster.kill(leader);
    cluster.kill(others[0]);
    let lone = cluster.http_addr(others[1]);
    let reply = poll("the lone node to refuse writes with 503", ELECTION, || {
        let r = post(lone, "/api/products", &product("Lost", 1.0), &[])?;
        (r.status == 503).then_some(r)
    });
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(reply.json()["error"].is_string());
}

fn an_idempotency_key_makes_a_retried_write_happen_once(database: &[&str]) {
    let cluster = TestCluster::start(3, 0, database);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let addr = cluster.http_addr(leader);
    let user = json!({ "name": "Ann", "email": "ann@example.org" });
    let first = post(addr, "/api/users", &user, &[("Idempotency-Key", "user-ann")]).unwrap();
    assert_eq!(first.status, 201, "{}", first.body);
    let location = format!("/api/users/{}", first.json()["id"]);
    assert_eq!(first.header("location"), Some(location.as_str()), "a new object is named where it is read");
    let again = post(addr, "/api/users", &user, &[("Idempotency-Key", "user-ann")]).unwrap();
    assert_eq!(again.status, first.status);
    assert_eq!(again.json(), first.json());
    assert_eq!(list(addr, "/api/users")["pagination"]["total"], 1);
    // Without the key the same body is a second write, refused by the unique e-mail.
    let dup = post(addr, "/api/users", &user, &[]).unwrap();
    assert_eq!(dup.status, 409, "{}", dup.body);
    // The key given with another request, on the same endpoint or another, is refused and
    // changes nothing; the first request still gets its answer.
    let bob = json!({ "name": "Bob", "email": "bob@example.org" });
    let other_body = post(addr, "/api/users", &bob, &[("Idempotency-Key", "user-ann")]).unwrap();
    let elsewhere = post(addr, "/api/products", &product("p", 1.0), &[("Idempotency-Key", "user-ann")]).unwrap();
    for reused in [other_body, elsewhere] {
        assert_eq!(reused.status, 422, "{}", reused.body);
        assert!(reused.json()["error"].as_str().unwrap().contains("was used for another request"), "{}", reused.body);
    }
    assert_eq!(list(addr, "/api/users")["pagination"]["total"], 1);
    assert_eq!(list(addr, "/api/products")["pagination"]["total"], 0);
    let third = post(addr, "/api/users", &user, &[("Idempotency-Key", "user-ann")]).unwrap();
    assert_eq!((third.status, third.json()), (first.status, first.json()));
}

fn bad_input_gets_a_json_4xx_never_a_500(database: &[&str]) {
    let cluster = TestCluster::start(1, 0, database);
    let addr = cluster.http_addr(1);
    cluster.wait_for_leader(ELECTION);
    let big = format!("{{\"title\":\"{}\",\"price\":1,\"currency\":\"GBP\"}}", "x".repeat(1_100_000));
    // (method, path, headers, body, expected status)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, String, u16);
    let cases: Vec<Case> = vec![
        ("POST", "/api/products", vec![JSON], "{not json".into(), 400),
        ("POST", "/api/products", vec![JSON], r#"{"title":5,"price":1,"currency":"GBP"}"#.into(), 400),
        ("POST", "/api/products", vec![JSON], r#"{"title":"t","price":"cheap","currency":"GBP"}"#.into(), 400),
        ("POST", "/api/products", vec![JSON], r#"{"title":"t","price":1,"currency":"GBP","x":1}"#.into(), 400),
        // An object's fields given as an array, in order, are not an object.
        ("POST", "/api/products", vec![JSON], r#"["t",1,"GBP"]"#.into(), 400),
        ("POST", "/api/users", vec![JSON], r#"["a","a@b.c"]"#.into(), 400),
        ("PUT", "/api/tasks/1", vec![JSON], r#"["t"]"#.into(), 400),
        ("POST", "/api/products", vec![JSON], r#"{"title":"","price":-1,"currency":"GBP"}"#.into(), 422),
        ("POST", "/api/products", vec![("Content-Type", "text/plain")], "hello".into(), 415),
        ("POST", "/api/products", vec![JSON], big, 413),
        ("GET", "/api/products/12345", vec![], String::new(), 404),
        ("GET", "/api/products/abc", vec![], String::new(), 404),
        ("PUT", "/api/products/12345", vec![JSON], product("t", 1.0).to_string(), 404),
        ("DELETE", "/api/tasks/777", vec![], String::new(), 404),
        ("GET", "/api/products?limit=ten", vec![], String::new(), 400),
        ("GET", "/api/products?colour=red", vec![], String::new(), 400),
        ("GET", "/api/tasks?status=sleeping", vec![], String::new(), 400),
        // Another resource's filter is refused, not ignored.
        ("GET", "/api/users?status=done", vec![], String::new(), 400),
        ("GET", "/api/products?assignee=1", vec![], String::new(), 400),
        ("GET", "/api/tasks?min_price=3", vec![], String::new(), 400),
        ("POST", "/api/tasks", vec![JSON], r#"{"title":"t","assignee":999}"#.into(), 422),
        // What a database could not store is refused alike on every backend.
        ("POST", "/api/products", vec![JSON], r#"{"title":"a\u0000b","price":1,"currency":"GBP"}"#.into(), 422),
        ("POST", "/api/users", vec![JSON], r#"{"name":"bell\u0007","email":"a@b.c"}"#.into(), 422),
        ("POST", "/api/tasks", vec![JSON], r#"{"title":"t","due_date":"+10000-01-01"}"#.into(), 422),
        ("POST", "/api/tasks", vec![JSON], r#"{"title":"t","due_date":"2026-02-30"}"#.into(), 400),
        ("POST", "/api/users", vec![JSON, ("Idempotency-Key", "")], r#"{"name":"a","email":"a@b.c"}"#.into(), 400),
        ("PATCH", "/api/products", vec![JSON], "{}".into(), 405),
    ];
    for (method, path, headers, body, want) in cases {
        let reply =
            http_call(addr, method, path, &headers, &body).unwrap_or_else(|| panic!("{method} {path}: no answer"));
        assert_eq!(reply.status, want, "{method} {path}: {}", reply.body.chars().take(300).collect::<String>());
        let body: Value = serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {:?}", reply.body));
        assert!(body["error"].is_string(), "{method} {path}: {}", reply.body);
    }
    // A method a resource does not answer is told which it does.
    for (path, allowed) in [
        ("/api/products", "GET, HEAD, POST"),
        ("/api/products/1", "GET, HEAD, PUT, DELETE"),
        ("/api/users/1", "GET, HEAD, PUT, DELETE"),
        ("/api/tasks", "GET, HEAD, POST"),
        ("/api/tasks/stats", "GET, HEAD"),
        ("/api/upload/file", "POST"),
        ("/healthz", "GET, HEAD"),
    ] {
        let reply = http_call(addr, "PATCH", path, &[JSON], "{}").unwrap();
        assert_eq!((reply.status, reply.header("allow")), (405, Some(allowed)), "PATCH {path}: {}", reply.body);
        assert_eq!(reply.json()["error"], format!("this endpoint answers {allowed} only"));
    }
    // HEAD is answered as GET is, without the body.
    let id = post(addr, "/api/products", &product("headed", 2.0), &[]).unwrap().json()["id"].clone();
    for path in
        ["/healthz".to_string(), "/api/products".into(), format!("/api/products/{id}"), "/api/tasks/stats".into()]
    {
        let (head, get) =
            (http_call(addr, "HEAD", &path, &[], "").unwrap(), http_call(addr, "GET", &path, &[], "").unwrap());
        assert_eq!((head.status, head.body.as_str()), (200, ""), "HEAD {path}");
        assert_eq!(head.header("content-length"), Some(get.body.len().to_string().as_str()), "HEAD {path}");
        assert_eq!(head.header("content-type"), get.header("content-type"), "HEAD {path}");
    }
    let missing = http_call(addr, "HEAD", "/api/products/424242", &[], "").unwrap();
    assert_eq!((missing.status, missing.body.as_str()), (404, ""));
    // Errors speak of the request, not of the code that read it.
    let not_an_id = http_call(addr, "GET", "/api/products/abc", &[], "").unwrap();
    assert_eq!(not_an_id.json()["error"], "no such id: \"abc\" is not a whole number");
    let unknown = http_call(addr, "GET", "/api/users?status=done", &[], "").unwrap();
    assert!(
        unknown.json()["error"].as_str().unwrap().starts_with("bad query: unknown field `status`"),
        "{}",
        unknown.body
    );
    assert!(cluster.agreed_leader(&[1]).is_some(), "the node survived");
    // And it goes on taking writes.
    let reply = post(addr, "/api/products", &product("after the bad input", 1.0), &[]).unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
}

fn listings_page_and_filter(database: &[&str]) {
    let cluster = TestCluster::start(1, 0, database);
    let addr = cluster.http_addr(1);
    cluster.wait_for_leader(ELECTION);
    for i in 1..=7 {
        let reply = post(addr, "/api/products", &product(&format!("p{i}"), i as f64 * 10.0), &[]).unwrap();
        assert_eq!(reply.status, 201);
    }
    let page = list(addr, "/api/products?offset=2&limit=3&min_price=20&max_price=60");
    let titles: Vec<&str> = page["data"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["p4", "p5", "p6"]);
    assert_eq!(page["pagination"], json!({ "total": 5, "offset": 2, "limit": 3, "has_more": false }));

    // The same page asked again after each change shows the change at once (a write is
    // answered only once the node's reads see it).
    for (i, price) in (8..28).map(|i| (i, if i % 2 == 0 { 55.0 } else { 25.0 })) {
        assert_eq!(list(addr, "/api/products?min_price=20&max_price=60&limit=100")["pagination"]["total"], i - 3);
        let reply = post(addr, "/api/products", &product(&format!("p{i}"), price), &[]).unwrap();
        assert_eq!(reply.status, 201);
        let page = list(addr, "/api/products?min_price=20&max_price=60&limit=100");
        assert_eq!(page["pagination"]["total"], i - 2);
        assert!(page["data"].as_array().unwrap().iter().any(|p| p["title"] == format!("p{i}").as_str()));
    }
    let deleted = http_call(addr, "DELETE", "/api/products/4", &[], "").unwrap();
    assert_eq!(deleted.status, 200);
    assert_eq!(list(addr, "/api/products?min_price=20&max_price=60&limit=100")["pagination"]["total"], 24);
}

fn users_and_tasks_are_created_filtered_updated_and_deleted(database: &[&str]) {
    let cluster = TestCluster::start(1, 0, database);
    let addr = cluster.http_addr(1);
    cluster.wait_for_leader(ELECTION);
    let call = |method: &str, path: &str, body: &Value| {
        let reply = http_call(addr, method, path, &[JSON], &body.to_string()).expect("the node answers");
        (reply.status, reply.json())
    };
    let (status, ann) = call("POST", "/api/users", &json!({ "name": "Ann", "email": " Ann@Example.org " }));
    assert_eq!((status, &ann["email"]), (201, &json!("ann@example.org")), "{ann}");
    let (status, bob) = call("POST", "/api/users", &json!({ "name": "Bob", "email": "bob@example.org" }));
    assert_eq!(status, 201, "{bob}");
    let (ann_id, bob_id) = (ann["id"].as_i64().unwrap(), bob["id"].as_i64().unwrap());
    let (status, taken) = call("POST", "/api/users", &json!({ "name": "Other Ann", "email": "ANN@example.org" }));
    assert_eq!(status, 409, "{taken}");

    let (status, write) = call(
        "POST",
        "/api/tasks",
        &json!({ "title": "write", "priority": "high", "assignee": ann_id, "due_date": "2000-01-01" }),
    );
    assert_eq!((status, &write["status"], &write["due_date"]), (201, &json!("todo"), &json!("2000-01-01")), "{write}");
    let (status, review) =
        call("POST", "/api/tasks", &json!({ "title": "review", "status": "in_progress", "assignee": bob_id }));
    assert_eq!((status, &review["priority"]), (201, &json!("medium")), "{review}");
    let (status, ship) = call("POST", "/api/tasks", &json!({ "title": "ship", "description": "on Friday" }));
    assert_eq!((status, &ship["assignee"]), (201, &Value::Null), "{ship}");
    let titles = |path: &str| -> Vec<String> {
        let page = list(addr, path);
        page["data"].as_array().unwrap().iter().map(|t| t["title"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(titles(&format!("/api/tasks?assignee={ann_id}")), ["write"]);
    assert_eq!(titles("/api/tasks?status=in_progress"), ["review"]);
    assert_eq!(titles("/api/tasks?priority=high&status=todo"), ["write"]);
    assert_eq!(titles("/api/tasks"), ["write", "review", "ship"]);
    let stats = list(addr, "/api/tasks/stats");
    assert_eq!((&stats["total"], &stats["overdue"]), (&json!(3), &json!(1)), "{stats}");

    // PUT replaces every field.
    let id = write["id"].as_i64().unwrap();
    let (status, done) =
        call("PUT", &format!("/api/tasks/{id}"), &json!({ "title": "written", "status": "done", "assignee": bob_id }));
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        (&done["title"], &done["priority"], &done["due_date"]),
        (&json!("written"), &json!("medium"), &Value::Null)
    );
    assert_eq!(done["created_at"], write["created_at"]);
    let stats = list(addr, "/api/tasks/stats");
    assert_eq!(stats["by_status"], json!({ "todo": 1, "in_progress": 1, "done": 1 }), "{stats}");
    assert_eq!(stats["overdue"], 0, "{stats}");
    let (status, renamed) =
        call("PUT", &format!("/api/users/{ann_id}"), &json!({ "name": "Ann B", "email": "ann@example.org" }));
    assert_eq!((status, &renamed["name"]), (200, &json!("Ann B")), "{renamed}");
    let (status, _) = call("PUT", &format!("/api/tasks/{id}"), &json!({ "title": "x", "assignee": 9_999 }));
    assert_eq!(status, 422);

    // Deleting a user unassigns their tasks; a deleted row is gone.
    assert_eq!(call("DELETE", &format!("/api/users/{bob_id}"), &Value::Null).0, 200);
    assert_eq!(titles(&format!("/api/tasks?assignee={bob_id}")), Vec::<String>::new());
    let (status, unassigned) = call("GET", &format!("/api/tasks/{id}"), &Value::Null);
    assert_eq!((status, &unassigned["assignee"], &unassigned["title"]), (200, &Value::Null, &json!("written")));
    assert_eq!(list(addr, "/api/users")["pagination"]["total"], 1);
    let ship_id = ship["id"].as_i64().unwrap();
    assert_eq!(call("DELETE", &format!("/api/tasks/{ship_id}"), &Value::Null).0, 200);
    assert_eq!(call("GET", &format!("/api/tasks/{ship_id}"), &Value::Null).0, 404);
    assert_eq!(titles("/api/tasks"), ["written", "review"]);
}

/// Clients write concurrently, each retrying with its write's idempotency key (following
/// redirects, moving on from nodes that do not answer) until it is acknowledged, while the
/// leader is killed with writes in flight: some of those were committed before the answer was
/// lost, and their retries must return the first outcome instead of writing again.
#[test]
fn retried_writes_survive_a_leader_kill_without_loss_or_duplicates() {
    const WRITERS: usize = 6;
    const EACH: usize = 20;
    let mut cluster = TestCluster::start(5, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let addrs: Vec<SocketAddr> = (1..=5).map(|id| cluster.http_addr(id)).collect();
    let acknowledged_so_far = AtomicUsize::new(0);
    let in_flight_to_leader = AtomicUsize::new(0);
    let lost = AtomicUsize::new(0);
    let (acknowledged, ids): (BTreeSet<String>, BTreeSet<i64>) = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (addrs, acked, in_flight, lost) = (&addrs, &acknowledged_so_far, &in_flight_to_leader, &lost);
                scope.spawn(move || {
                    let mut node = leader;
                    let mut done = Vec::new();
                    for i in 0..EACH {
                        let key = format!("w{w}-{i}");
                        let body = product(&key, 1.0 + i as f64).to_string();
                        let headers = [JSON, ("Idempotency-Key", key.as_str())];
                        let deadline = Instant::now() + Duration::from_secs(30);
                        loop {
                            assert!(Instant::now() < deadline, "{key} was never acknowledged");
                            let to_leader = node == leader;
                            if to_leader {
                                in_flight.fetch_add(1, Ordering::SeqCst);
                            }
                            let answer =
                                http_exchange(addrs[node as usize - 1], "POST", "/api/products", &headers, &body);
                            if to_leader {
                                in_flight.fetch_sub(1, Ordering::SeqCst);
                            }
                            match answer {
                                Ok(r) if r.status == 201 => {
                                    let created = r.json();
                                    assert_eq!(created["title"], key.as_str());
                                    done.push((key, created["id"].as_i64().unwrap()));
                                    acked.fetch_add(1, Ordering::SeqCst);
                                    break;
                                }
                                Ok(r) if r.status == 307 => {
                                    let hint = r.header("x-raft-leader").and_then(labctl::proto::parse_node_name);
                                    node = hint.unwrap_or(node % 5 + 1);
                                }
                                Ok(r) if r.status == 503 => std::thread::sleep(Duration::from_millis(20)),
                                Ok(r) => panic!("{key}: {} {}", r.status, r.body),
                                Err(e) => {
                                    if e == NoAnswer::Lost {
                                        lost.fetch_add(1, Ordering::SeqCst);
                                    }
                                    node = node % 5 + 1;
                                }
                            }
                        }
                    }
                    done
                })
            })
            .collect();
        poll("a quarter of the writes to be acknowledged", Duration::from_secs(30), || {
            (acknowledged_so_far.load(Ordering::SeqCst) >= WRITERS * EACH / 4).then_some(())
        });
        poll("writes in flight on the leader", Duration::from_secs(10), || {
            (in_flight_to_leader.load(Ordering::SeqCst) >= 2).then_some(())
        });
        cluster.kill(leader);
        let all: Vec<(String, i64)> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        (all.iter().map(|(k, _)| k.clone()).collect(), all.iter().map(|(_, id)| *id).collect())
    });
    assert_eq!(acknowledged.len(), WRITERS * EACH);
    assert_eq!(ids.len(), WRITERS * EACH, "two writes were acknowledged with the same id");
    assert!(
        lost.load(Ordering::SeqCst) >= 1,
        "no write lost its answer in the kill, so no retry of a write the cluster may have made was tested"
    );
    let total = (WRITERS * EACH) as u64;
    for node in cluster.running() {
        let rows = poll(&format!("node{node} to hold the acknowledged rows"), ELECTION, || {
            let page = list(cluster.http_addr(node), "/api/products?limit=100");
            let rest = list(cluster.http_addr(node), "/api/products?offset=100&limit=100");
            (page["pagination"]["total"].as_u64()? >= total).then_some([page, rest])
        });
        let held = rows[0]["pagination"]["total"].as_u64().unwrap();
        assert_eq!(held, total, "node{node} holds {held} rows for {total} acknowledged writes");
        let rows: Vec<&Value> = rows.iter().flat_map(|page| page["data"].as_array().unwrap()).collect();
        let titles: BTreeSet<String> = rows.iter().map(|p| p["title"].as_str().unwrap().to_string()).collect();
        assert_eq!(rows.len(), WRITERS * EACH, "node{node}: duplicated rows");
        assert_eq!(titles, acknowledged, "node{node}: lost or duplicated rows");
        let row_ids: BTreeSet<i64> = rows.iter().map(|p| p["id"].as_i64().unwrap()).collect();
        assert_eq!(row_ids, ids, "node{node}: the rows are not those acknowledged");
    }
}

#[test]
fn data_survives_a_restart_of_every_node() {
    let mut cluster = TestCluster::start(5, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    for i in 0..5 {
        let reply = post(cluster.http_addr(leader), "/api/products", &product(&format!("keep{i}"), 5.0), &[]).unwrap();
        assert_eq!(reply.status, 201);
    }
    for id in 1..=5 {
        cluster.kill(id);
    }
    for id in 1..=5 {
        cluster.spawn(id);
    }
    cluster.wait_for_leader(ELECTION);
    for node in 1..=5 {
        let page = poll(&format!("node{node} to serve its data"), ELECTION, || {
            let r = http_call(cluster.http_addr(node), "GET", "/api/products", &[], "")?;
            (r.status == 200).then(|| r.json())
        });
        assert_eq!(page["pagination"]["total"], 5, "node{node}: {page}");
    }
}

/// A node's own database is written without flushes: it is used again after the node was
/// killed, rebuilt from the Raft log after the machine restarted under it (here: a marker
/// naming another boot, and a file torn to garbage), and flushed and marked clean on a normal stop.
#[test]
fn a_node_rebuilds_its_database_after_a_reboot_and_keeps_it_after_a_crash() {
    let mut cluster = TestCluster::start(3, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    for i in 0..5 {
        let reply = post(cluster.http_addr(leader), "/api/products", &product(&format!("p{i}"), 5.0), &[]).unwrap();
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    let addr = cluster.http_addr(victim);
    let total = || {
        let r = http_call(addr, "GET", "/api/products", &[], "")?;
        (r.status == 200).then(|| r.json()["pagination"]["total"].clone())
    };
    poll("the follower to apply the 5 writes", ELECTION, || (total()? == json!(5)).then_some(()));
    let node_dir = cluster.data_dir().join(format!("node{victim}"));
    let (db, marker) = (node_dir.join("labctl.db"), node_dir.join("labctl.db-state"));
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim().to_string();
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), format!("open {boot}\n"));

    // Killed: the OS kept every write, so the file is used as it is.
    cluster.kill(victim);
    cluster.spawn(victim);
    poll("the killed node to serve its 5 rows", ELECTION, || (total()? == json!(5)).then_some(()));
    assert!(cluster.log_text(victim).contains("the machine has not restarted since"), "{}", cluster.log_text(victim));

    // Killed, then the machine restarted: the file may be torn, so it is rebuilt from the log.
    cluster.kill(victim);
    std::fs::write(&marker, "open 00000000-0000-0000-0000-000000000000\n").unwrap();
    std::fs::write(&db, vec![0x5a; 8192]).unwrap();
    let reply = post(cluster.http_addr(leader), "/api/products", &product("while down", 6.0), &[]).unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
    cluster.spawn(victim);
    poll("the rebuilt node to serve all 6 rows", ELECTION, || (total()? == json!(6)).then_some(()));
    assert!(cluster.log_text(victim).contains("rebuilding"), "{}", cluster.log_text(victim));
    let page = list(cluster.http_addr(victim), "/api/products?limit=10");
    let ids: Vec<i64> = page["data"].as_array().unwrap().iter().map(|p| p["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (1..=6).collect::<Vec<_>>(), "the same ids as the leader's");

    // A normal stop flushes the file and says so.
    let status = cluster.terminate(victim, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "clean\n");
}

#[test]
fn strong_reads_go_through_the_leader_and_fail_without_a_majority() {
    let mut cluster = TestCluster::start(3, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let addr = cluster.http_addr(leader);
    let created = post(addr, "/api/products", &product("Strong", 7.0), &[]).unwrap().json();
    let id = created["id"].as_i64().unwrap();

    let page = list(addr, "/api/products?consistency=strong");
    assert_eq!(page["pagination"]["total"], 1);
    let one = http_call(addr, "GET", &format!("/api/products/{id}?consistency=strong"), &[], "").unwrap();
    assert_eq!((one.status, one.json()), (200, created));

    let follower = (1..=3).find(|&id| id != leader).unwrap();
    poll("the follower to know the leader", ELECTION, || {
        (list(cluster.http_addr(follower), "/status")["leader"] == json!(format!("node{leader}"))).then_some(())
    });
    let redirected =
        http_call(cluster.http_addr(follower), "GET", "/api/products?consistency=strong", &[], "").unwrap();
    assert_eq!(redirected.status, 307, "{}", redirected.body);
    assert_eq!(redirected.header("x-raft-leader"), Some(format!("node{leader}").as_str()));
    let bad = http_call(addr, "GET", "/api/products?consistency=eventual", &[], "").unwrap();
    assert_eq!(bad.status, 400);

    // Cut the leader off from both followers: local reads still answer, strong reads must not.
    for id in (1..=3).filter(|&id| id != leader) {
        cluster.freeze(id, true);
    }
    let local = http_call(addr, "GET", "/api/products", &[], "").unwrap();
    assert_eq!(local.status, 200);
    let strong = http_call(addr, "GET", "/api/products?consistency=strong", &[], "").unwrap();
    assert_eq!(strong.status, 503, "a cut-off leader served a strong read: {}", strong.body);
    assert_eq!(strong.header("retry-after"), Some("1"));
    for id in (1..=3).filter(|&id| id != leader) {
        cluster.freeze(id, false);
    }
}

/// A leader cut off from its followers with a write in flight answers that write with 503 as
/// soon as it stops leading, not when the write times out; the client's retry with the same
/// key lands once.
#[test]
fn a_cut_off_leader_answers_its_write_in_flight_soon_and_the_retry_lands_once() {
    let mut cluster = TestCluster::start(3, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let followers: Vec<u32> = (1..=3).filter(|&id| id != leader).collect();
    for &id in &followers {
        cluster.freeze(id, true);
    }
    let key = [("Idempotency-Key", "cut-off-1")];
    let started = Instant::now();
    let reply = post(cluster.http_addr(leader), "/api/products", &product("in flight", 3.0), &key).unwrap();
    let waited = started.elapsed();
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.header("retry-after"), Some("1"));
    // The write would time out after 10 s; stepping down takes an election timeout or so.
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}: {}", reply.body);
    for &id in &followers {
        cluster.freeze(id, false);
    }
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let addr = cluster.http_addr(leader);
    let created = poll("the retried write", ELECTION, || {
        post(addr, "/api/products", &product("in flight", 3.0), &key).filter(|r| r.status == 201)
    });
    let again = post(addr, "/api/products", &product("in flight", 3.0), &key).unwrap();
    assert_eq!(again.json(), created.json());
    assert_eq!(list(addr, "/api/products")["pagination"]["total"], 1);
}

/// A request whose body stops arriving before its announced length is answered `408` once
/// nothing more has come for 10 s, a JSON write as an upload; the node goes on serving.
#[test]
fn a_body_that_stops_arriving_is_answered_408() {
    use std::io::{Read, Write};
    let cluster = TestCluster::start(1, 0, &[]);
    cluster.wait_for_leader(ELECTION);
    let addr = cluster.http_addr(1);
    let cut_short = |path: &'static str, content_type: &'static str| {
        std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: 100\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(br#"{"title":"half","price":1,"currency":"G"#).unwrap();
            let started = Instant::now();
            let mut raw = Vec::new();
            let _ = stream.read_to_end(&mut raw);
            (String::from_utf8_lossy(&raw).into_owned(), started.elapsed())
        })
    };
    let json = cut_short("/api/products", "application/json");
    let upload = cut_short("/api/upload/file", "multipart/form-data; boundary=b");
    for (what, answer) in [("write", json), ("upload", upload)] {
        let (text, waited) = answer.join().unwrap();
        assert!(text.starts_with("HTTP/1.1 408"), "{what} after {waited:?}: {text:?}");
        assert!(text.contains("the request body stopped arriving for 10 s"), "{what}: {text}");
        assert!(waited >= Duration::from_secs(9), "{what} answered after {waited:?}");
    }
    let reply = post(addr, "/api/products", &product("after the stalled bodies", 1.0), &[]).unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
}

/// The batching counters of a node's `/status`.
fn batching(addr: SocketAddr) -> [u64; 4] {
    let b = list(addr, "/status")["batching"].clone();
    ["log_writes", "log_entries", "append_messages", "append_entries"]
        .map(|k| b[k].as_u64().unwrap_or_else(|| panic!("no batching.{k} in /status: {b}")))
}

/// Concurrent writes share log flushes and AppendEntries messages; a lone writer's write
/// waits for no batch to fill.
#[test]
fn concurrent_writes_share_log_flushes_and_messages() {
    const WRITERS: usize = 32;
    const EACH: usize = 10;
    let cluster = TestCluster::start(3, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let addr = cluster.http_addr(leader);
    let follower = cluster.http_addr((1..=3).find(|&id| id != leader).unwrap());
    let delta = |before: [u64; 4], after: [u64; 4]| -> [u64; 4] { std::array::from_fn(|i| after[i] - before[i]) };

    // One client, one write at a time: each write is a log write of its own.
    let before = batching(addr);
    for i in 0..20 {
        let reply = post(addr, "/api/products", &product(&format!("alone{i}"), 1.0), &[]).unwrap();
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    let [writes, entries, _, _] = delta(before, batching(addr));
    assert_eq!((writes, entries), (20, 20), "a lone writer's writes are flushed one by one");

    let (leader_before, follower_before) = (batching(addr), batching(follower));
    std::thread::scope(|scope| {
        for w in 0..WRITERS {
            scope.spawn(move || {
                for i in 0..EACH {
                    let reply = post(addr, "/api/products", &product(&format!("w{w}-{i}"), 1.0), &[]).unwrap();
                    assert_eq!(reply.status, 201, "{}", reply.body);
                }
            });
        }
    });
    let total = (WRITERS * EACH) as u64;
    // Every entry goes to both followers: to the second one, outside the pair a commit needs,
    // up to a heartbeat later.
    let [writes, entries, messages, sent] = poll("both followers to be sent every entry", ELECTION, || {
        let d = delta(leader_before, batching(addr));
        (d[3] >= 2 * total).then_some(d)
    });
    eprintln!("leader: {entries} entries in {writes} log writes; {sent} entries in {messages} AppendEntries");
    assert_eq!(entries, total, "one entry per write");
    assert!(writes * 2 <= entries, "{entries} entries in {writes} log writes: concurrent writes were not batched");
    assert!(messages * 2 <= sent, "{sent} entries in {messages} AppendEntries: not batched");
    let [writes, entries, _, _] = poll("the follower to write every entry", ELECTION, || {
        let d = delta(follower_before, batching(follower));
        (d[1] >= total).then_some(d)
    });
    eprintln!("follower: {entries} entries in {writes} log writes");
    assert!(writes * 2 <= entries, "the follower wrote {entries} entries in {writes} log writes");
}

/// A node's own SQLite file is held by the node alone while it runs: another process that
/// opens it is told it is locked (and cannot change it under the node); after a normal stop it
/// opens as any SQLite file, with every row.
#[test]
fn a_nodes_own_file_is_held_by_that_node_alone() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let mut cluster = TestCluster::start(1, 0, &[]);
    cluster.wait_for_leader(ELECTION);
    let reply = post(cluster.http_addr(1), "/api/products", &product("mine", 3.0), &[]).unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
    let path = cluster.data_dir().join("node1").join("labctl.db").to_string_lossy().into_owned();
    let mut other = diesel::SqliteConnection::establish(&path).expect("the file opens");
    let refused = other.batch_execute("SELECT count(*) FROM products").expect_err("read beside the node");
    assert!(refused.to_string().contains("locked"), "{refused}");
    let refused = other.batch_execute("DELETE FROM products").expect_err("write beside the node");
    assert!(refused.to_string().contains("locked"), "{refused}");
    drop(other);
    assert_eq!(list(cluster.http_addr(1), "/api/products")["pagination"]["total"], 1);

    let status = cluster.terminate(1, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let mut after = labctl::node::store::Store::connect(&path).unwrap();
    let rows = after.list_products(&Default::default()).unwrap();
    assert_eq!(rows.data.iter().map(|p| p.title.as_str()).collect::<Vec<_>>(), ["mine"]);
}
