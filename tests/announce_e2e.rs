//! The leader tells the manager where it is after each election, retrying until accepted.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{control, poll, TestCluster};
use labctl::proto::Request;
use serde_json::Value;

/// What the stand-in manager saw.
struct Manager {
    url: String,
    /// Bodies of the announcements it accepted.
    accepted: Arc<Mutex<Vec<Value>>>,
    /// Requests it received, accepted or not.
    seen: Arc<Mutex<usize>>,
    /// Bodies of every POST, accepted or not.
    posted: Arc<Mutex<Vec<Value>>>,
}

/// A small HTTP server that answers 503 to the first `refuse` POSTs, then 200, and records the
/// bodies of the POSTs it accepted.
fn manager(refuse: usize) -> Manager {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(0usize));
    let posted = Arc::new(Mutex::new(Vec::new()));
    let (acc, count, all) = (accepted.clone(), seen.clone(), posted.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let mut length = 0;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
                if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let n = {
                let mut c = count.lock().unwrap();
                *c += 1;
                *c
            };
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            all.lock().unwrap().push(body.clone());
            let ok = line.starts_with("POST /leader ") && n > refuse;
            if ok {
                acc.lock().unwrap().push(body);
            }
            let status = if ok { "200 OK" } else { "503 Service Unavailable" };
            let _ = stream
                .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
        }
    });
    Manager { url, accepted, seen, posted }
}

#[test]
fn each_new_leader_announces_itself_to_the_manager() {
    let Manager { url, accepted, seen, .. } = manager(2);
    let cluster = TestCluster::start(3, 0, &["--manager-url", &url]);
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(5));
    let first =
        poll("the leader's announcement", Duration::from_secs(10), || accepted.lock().unwrap().first().cloned());
    assert!(*seen.lock().unwrap() >= 3, "two refusals, then accepted");
    assert_eq!(first["name"], format!("node{leader}"));
    assert_eq!(first["term"], term);
    assert_eq!(first["http"], cluster.http_addr(leader).to_string());

    // A new leader announces itself too.
    let next = (1..=3).find(|&id| id != leader).unwrap();
    cluster.send(next, &control(Request::Timeout, None, Value::Null));
    let announced = poll("the new leader's announcement", Duration::from_secs(10), || {
        accepted.lock().unwrap().iter().find(|a| a["name"] == format!("node{next}")).cloned()
    });
    assert!(announced["term"].as_u64().unwrap() > term);
    assert!(cluster.log_text(leader).contains("manager at"), "the refusal is logged");
}

/// A leader that the manager keeps refusing retries until another node wins a later term, then
/// stops: only the current leader's announcements go on.
#[test]
fn a_superseded_leader_stops_announcing() {
    let Manager { url, posted, accepted, .. } = manager(usize::MAX);
    let cluster = TestCluster::start(3, 0, &["--manager-url", &url]);
    let (old, term) = cluster.wait_for_leader(Duration::from_secs(5));
    let from = |name: &str| posted.lock().unwrap().iter().filter(|b| b["name"] == name).count();
    let old_name = format!("node{old}");
    poll("the leader to try twice", Duration::from_secs(10), || (from(&old_name) >= 2).then_some(()));

    let next = (1..=3).find(|&id| id != old).unwrap();
    let next_name = format!("node{next}");
    cluster.send(next, &control(Request::Timeout, None, Value::Null));
    poll("the old leader to give up its term", Duration::from_secs(10), || {
        cluster.log_text(old).contains(&format!("no longer leads term {term}; stops announcing")).then_some(())
    });
    let (leader, new_term) = cluster.wait_for_leader(Duration::from_secs(5));
    assert_eq!(leader, next);
    assert!(new_term > term);
    let old_count = from(&old_name);
    // The new leader's own attempts (100 ms, 200 ms, 400 ms, 800 ms apart) serve as the clock:
    // five of them span a second and a half, and the old leader sends nothing in that time.
    poll("the new leader to try five times", Duration::from_secs(20), || (from(&next_name) >= 5).then_some(()));
    assert_eq!(from(&old_name), old_count, "the superseded leader went on announcing");
    let posted = posted.lock().unwrap();
    assert!(posted.iter().filter(|b| b["name"] == next_name.as_str()).all(|b| b["term"] == new_term));
    assert!(accepted.lock().unwrap().is_empty());
}

/// A leader the manager keeps refusing backs off (100 ms doubling) however busy it is: a
/// node's status changes with every write, and none of those changes is a reason to ask again.
#[test]
fn a_refused_leader_backs_off_while_clients_write() {
    let Manager { url, posted, .. } = manager(usize::MAX);
    let cluster = TestCluster::start(1, 0, &["--manager-url", &url]);
    cluster.wait_for_leader(Duration::from_secs(5));
    poll("the leader's first announcement", Duration::from_secs(10), || {
        (!posted.lock().unwrap().is_empty()).then_some(())
    });
    let first = std::time::Instant::now();
    let addr = cluster.http_addr(1);
    let body = serde_json::json!({ "title": "busy", "price": 1.0, "currency": "EUR" }).to_string();
    let mut written = 0;
    while first.elapsed() < Duration::from_secs(2) {
        let reply = common::http_call(addr, "POST", "/api/products", &[("Content-Type", "application/json")], &body);
        assert_eq!(reply.map(|r| r.status), Some(201));
        written += 1;
    }
    let attempts = posted.lock().unwrap().len();
    // Attempt k comes at least 100 ms × (2^(k-1) - 1) after the first (with 50 ms for the first
    // to reach the manager): the most there can have been by now.
    let elapsed = first.elapsed().as_secs_f64() + 0.05;
    let most = (1..).take_while(|k| 0.1 * (2f64.powi(k - 1) - 1.0) <= elapsed).count();
    assert!(written >= 10, "only {written} writes in two seconds");
    assert!(attempts >= 2, "the leader tried again");
    assert!(
        attempts <= most,
        "{attempts} announcements in {elapsed:.2} s with {written} writes; backoff allows {most}"
    );
}
