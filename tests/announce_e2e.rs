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
}

/// A small HTTP server that answers 503 to the first `refuse` POSTs, then 200, and records the
/// bodies of the POSTs it accepted.
fn manager(refuse: usize) -> Manager {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(0usize));
    let (acc, count) = (accepted.clone(), seen.clone());
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
            let ok = line.starts_with("POST /leader ") && n > refuse;
            if ok {
                acc.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            }
            let status = if ok { "200 OK" } else { "503 Service Unavailable" };
            let _ = stream
                .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
        }
    });
    Manager { url, accepted, seen }
}

#[test]
fn each_new_leader_announces_itself_to_the_manager() {
    let Manager { url, accepted, seen } = manager(2);
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
