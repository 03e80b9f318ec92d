//! `POST /api/upload/file` on real nodes: a file of thousands of products is one log entry,
//! far larger than a datagram, replicated in fragments to every node.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{http_call, poll, HttpReply, TestCluster};
use labctl::proto::MAX_DATAGRAM;
use serde_json::{json, Value};

const ELECTION: Duration = Duration::from_secs(10);
const BOUNDARY: &str = "labctl-upload-test-5f1c";

/// A multipart/form-data body with the given (field name, content) parts.
fn form(parts: &[(&str, &str)]) -> String {
    let mut body = String::new();
    for (name, content) in parts {
        body.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.json\"\r\n\
             Content-Type: application/json\r\n\r\n{content}\r\n"
        ));
    }
    body.push_str(&format!("--{BOUNDARY}--\r\n"));
    body
}

fn upload(addr: SocketAddr, path: &str, body: &str, extra: &[(&str, &str)]) -> HttpReply {
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let mut headers = vec![("Content-Type", content_type.as_str())];
    headers.extend_from_slice(extra);
    http_call(addr, "POST", path, &headers, body).expect("the node answers")
}

fn products(n: usize, tag: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut p = json!({
                "title": format!("{tag} book {i}: a title long enough to look like a real one"),
                "price": 10.0 + (i % 500) as f64 / 10.0,
                "currency": "GBP",
            });
            if i % 2 == 0 {
                p["converted_price"] = json!(12.0 + (i % 500) as f64 / 10.0);
                p["converted_currency"] = json!("EUR");
                p["availability"] = json!("In stock (22 available)");
                p["rating"] = json!(i % 6);
                p["link"] = json!(format!("https://books.toscrape.com/catalogue/{tag}-{i}/index.html"));
                p["scraped_at"] = json!("2026-11-22T10:00:00Z");
            }
            p
        })
        .collect()
}

fn status(addr: SocketAddr) -> Value {
    http_call(addr, "GET", "/status", &[], "").expect("the node answers").json()
}

fn total(addr: SocketAddr) -> Option<u64> {
    let reply = http_call(addr, "GET", "/api/products?limit=1", &[], "")?;
    reply.json()["pagination"]["total"].as_u64()
}

/// Election timeouts for a cluster taking a file of thousands of products. Tests run a debug
/// build, which encodes JSON some fifty times slower than a release build: the leader's turn
/// that takes half a megabyte of entry (size it, store it, encode it once for four followers)
/// then lasts up to a second on a busy machine, longer than the default 150–300 ms timeout.
const SLOW_BUILD_TIMEOUTS: [&str; 6] =
    ["--heartbeat-ms", "100", "--election-timeout-min-ms", "2000", "--election-timeout-max-ms", "3000"];

#[test]
fn a_file_of_2000_products_is_one_entry_and_reaches_every_node() {
    let cluster = TestCluster::start(5, 0, &SLOW_BUILD_TIMEOUTS);
    let (leader, term) = cluster.wait_for_leader(ELECTION);
    let leader_addr = cluster.http_addr(leader);
    // The leader's no-op is committed and applied: from here on the upload is the only entry.
    let before = poll("the leader to apply its no-op", ELECTION, || {
        let s = status(leader_addr);
        let settled = s["commit_index"].as_u64()? >= 1 && s["commit_index"] == s["last_log_index"];
        (settled && s["applied_index"] == s["commit_index"]).then_some(s)
    });
    let items = products(2000, "upload");
    let file = json!({
        "source": "https://books.toscrape.com/",
        "scraped_at": "2026-11-22T10:00:00Z",
        "currency": "GBP",
        "converted_currency": "EUR",
        "rate": 1.17,
        "count": items.len(),
        "total": 0.0,
        "total_converted": 0.0,
        "items": items,
    })
    .to_string();
    assert!(file.len() > 5 * MAX_DATAGRAM, "the file ({} bytes) is several datagrams", file.len());

    let body = form(&[("file", &file)]);
    let reply = upload(leader_addr, "/api/upload/file", &body, &[("Idempotency-Key", "upload-2000")]);
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.json(), json!({ "imported": 2000, "ids": [1, 2000] }));
    // `/status` is published at the end of the node's turn, which may be just after the
    // answer left: the commit it shows catches up within moments.
    let after = poll("the leader's status to show the upload committed", ELECTION, || {
        let s = status(leader_addr);
        (s["commit_index"].as_u64()? > before["commit_index"].as_u64()?).then_some(s)
    });
    assert_eq!(
        after["commit_index"].as_u64().unwrap(),
        before["commit_index"].as_u64().unwrap() + 1,
        "the whole file is one log entry"
    );
    assert_eq!(after["term"], json!(term), "the leader kept its term while sending the file");

    for node in 1..=5 {
        let addr = cluster.http_addr(node);
        poll(&format!("node{node} to hold 2000 products"), ELECTION, || (total(addr)? == 2000).then_some(()));
        for id in [1, 2, 777, 2000] {
            let row = http_call(addr, "GET", &format!("/api/products/{id}"), &[], "").unwrap().json();
            let sent = &items[id - 1];
            assert_eq!(row["title"], sent["title"], "node{node} product {id}");
            assert_eq!(row["price"], sent["price"], "node{node} product {id}");
            assert_eq!(row["link"], sent.get("link").cloned().unwrap_or(Value::Null), "node{node} product {id}");
        }
    }
    // The same upload again with its key: the first answer, nothing imported twice.
    let again = upload(leader_addr, "/api/upload/file", &body, &[("Idempotency-Key", "upload-2000")]);
    assert_eq!((again.status, again.json()), (201, json!({ "imported": 2000, "ids": [1, 2000] })));
    assert_eq!(total(leader_addr), Some(2000));
    assert_eq!(status(leader_addr)["term"], json!(term), "no election during the uploads");
}

/// Follows a 307 once, as `curl -L` does: the same method and body to `Location`.
fn follow(reply: &HttpReply, body: &str) -> HttpReply {
    assert_eq!(reply.status, 307, "{}", reply.body);
    let location = reply.header("location").expect("a Location header");
    let rest = location.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    upload(host.parse().expect("host:port"), &format!("/{path}"), body, &[])
}

#[test]
fn uploads_on_a_follower_are_redirected_and_bad_uploads_get_a_json_4xx() {
    let limit = 200_000;
    let limit_arg = limit.to_string();
    let mut args = vec!["--max-upload-bytes", &limit_arg];
    args.extend(SLOW_BUILD_TIMEOUTS);
    let cluster = TestCluster::start(3, 0, &args);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let follower_addr = cluster.http_addr(follower);
    poll("the follower to know the leader's address", ELECTION, || {
        status(follower_addr)["leader_http"].as_str().map(drop)
    });

    // A plain array of products, sent to a follower: redirected, then imported.
    let items = Value::Array(products(300, "follower")).to_string();
    assert!(items.len() > MAX_DATAGRAM && items.len() < limit);
    let body = form(&[("note", "uploaded by a test"), ("file", &items)]);
    let first = upload(follower_addr, "/api/upload/file", &body, &[]);
    assert_eq!(first.header("x-raft-leader"), Some(format!("node{leader}").as_str()));
    let done = follow(&first, &body);
    assert_eq!((done.status, done.json()), (201, json!({ "imported": 300, "ids": [1, 300] })));
    poll("the follower to hold the upload", ELECTION, || (total(follower_addr)? == 300).then_some(()));

    let addr = cluster.http_addr(leader);
    let bad_price = {
        let mut items = products(5, "bad");
        items[3]["price"] = json!(-4);
        Value::Array(items).to_string()
    };
    let wrong_type = {
        let mut items = products(5, "bad");
        items[1]["rating"] = json!("five");
        Value::Array(items).to_string()
    };
    let too_large = Value::Array(products(1000, "large")).to_string();
    assert!(too_large.len() > limit);
    let multipart = format!("multipart/form-data; boundary={BOUNDARY}");
    // (what, content type, body, expected status, expected words in the error)
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("not JSON", &multipart, form(&[("file", "title,price\nDune,9.5\n")]), 415, "not JSON"),
        ("a number", &multipart, form(&[("file", "42")]), 422, "array"),
        ("an object without items", &multipart, form(&[("file", r#"{"source":"x"}"#)]), 422, "items"),
        ("an empty list", &multipart, form(&[("file", "[]")]), 422, "no products"),
        ("an empty processed file", &multipart, form(&[("file", r#"{"items":[]}"#)]), 422, "no products"),
        ("a bad price", &multipart, form(&[("file", &bad_price)]), 422, "item 3"),
        ("a wrong type", &multipart, form(&[("file", &wrong_type)]), 422, "item 1"),
        ("an item as an array", &multipart, form(&[("file", r#"[["Dune",9.5,"GBP"]]"#)]), 422, "item 0"),
        ("no field file", &multipart, form(&[("upload", "[]")]), 400, "no field `file`"),
        ("two fields file", &multipart, form(&[("file", &items), ("file", &items)]), 400, "more than one"),
        ("over the limit", &multipart, form(&[("file", &too_large)]), 413, "larger than"),
        ("JSON, not a form", "application/json", items.clone(), 415, "multipart"),
        ("no boundary", "multipart/form-data", form(&[("file", &items)]), 400, "multipart"),
    ];
    for (what, content_type, body, want, words) in cases {
        let reply = http_call(addr, "POST", "/api/upload/file", &[("Content-Type", content_type)], &body)
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(reply.status, want, "{what}: {}", reply.body);
        let error = reply.json()["error"].as_str().unwrap_or_else(|| panic!("{what}: {}", reply.body)).to_string();
        assert!(error.contains(words), "{what}: {error:?} does not say {words:?}");
    }
    let get = http_call(addr, "GET", "/api/upload/file", &[], "").unwrap();
    assert_eq!((get.status, get.header("allow")), (405, Some("POST")));

    // Nothing of the bad uploads was imported, and the node goes on serving.
    assert_eq!(http_call(addr, "GET", "/healthz", &[], "").unwrap().status, 200);
    let ok = upload(addr, "/api/upload/file", &form(&[("file", &Value::Array(products(2, "ok")).to_string())]), &[]);
    assert_eq!((ok.status, ok.json()), (201, json!({ "imported": 2, "ids": [301, 302] })));
    assert_eq!(total(addr), Some(302));
}
