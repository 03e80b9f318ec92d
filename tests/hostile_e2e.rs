//! Node messages from an address that is no member's change nothing (SPEC §7, open mode).
//!
//! Real node processes on 127.0.0.N; the strangers are sockets on other ports of the members'
//! own addresses and on an address no member has. Every kind of Raft message is forged in the
//! members' names: absurd terms, heartbeats of a newer term, votes, acknowledgements, entries
//! that match a follower's log, the election handshake, and a flood of fragments. The cluster
//! keeps its leader and its data, and a node's memory stays bounded.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{http_call, poll, TestCluster};
use labctl::node::raft::MAX_WIRE_NUMBER;
use serde_json::{json, Value};

const ELECTION: Duration = Duration::from_secs(10);

/// Sockets that are not any member's: other ports on node1's and node2's addresses, and an
/// address of the loopback range no member has.
fn strangers() -> Vec<UdpSocket> {
    ["127.0.0.1:0", "127.0.0.2:0", "127.0.0.9:0"].iter().map(|a| UdpSocket::bind(a).expect("bind a stranger")).collect()
}

fn status(cluster: &TestCluster, id: u32) -> Value {
    http_call(cluster.http_addr(id), "GET", "/status", &[], "").expect("the node answers").json()
}

/// The titles of the products node `id` holds.
fn titles(cluster: &TestCluster, id: u32) -> Vec<String> {
    let reply = http_call(cluster.http_addr(id), "GET", "/api/products?limit=100", &[], "").expect("the node answers");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let data = reply.json()["data"].as_array().cloned().unwrap_or_default();
    data.iter().filter_map(|p| p["title"].as_str().map(str::to_string)).collect()
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the node's /proc status");
    let line = text.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS in kB")
}

/// Every forged node message, each naming member `claimed`, against a cluster whose leader is
/// `leader` in `term` with a log up to `last`.
fn forgeries(claimed: u32, leader: u32, term: u64, last: u64) -> Vec<Value> {
    let name = format!("node{claimed}");
    let absurd = [json!(u64::MAX), json!(MAX_WIRE_NUMBER + 1), json!(term + 1000)];
    let command = json!({
        "at": "2026-01-01T00:00:00Z",
        "op": { "type": "create_product", "product": { "title": "injected", "price": 1.0, "currency": "GBP" } }
    });
    let mut out = Vec::new();
    for t in &absurd {
        out.push(json!({"sender_name": name, "request": "APPEND_RPC", "term": t, "key": null, "value": null,
                        "prev_log_index": 0, "prev_log_term": 0, "entries": [], "leader_commit": 0}));
        out.push(json!({"sender_name": name, "request": "VOTE_REQUEST", "term": t, "key": null, "value": null,
                        "last_log_index": 1_000_000, "last_log_term": t, "force": true}));
        out.push(json!({"sender_name": name, "request": "PRE_VOTE_REQUEST", "term": t, "key": null, "value": null,
                        "last_log_index": 1_000_000, "last_log_term": t}));
        out.push(json!({"sender_name": name, "request": "VOTE_ACK", "term": t, "key": null, "value": null}));
        out.push(json!({"sender_name": name, "request": "APPEND_REPLY", "term": t, "key": null, "value": null,
                        "success": false, "match_index": 0}));
    }
    // In the current term: entries that match every follower's log, as the leader's; a newer
    // leader's heartbeat; votes for a candidate; acknowledgements of entries never sent.
    let leader_name = format!("node{leader}");
    out.push(json!({"sender_name": leader_name, "request": "APPEND_RPC", "term": term, "key": null, "value": null,
                    "prev_log_index": last, "prev_log_term": term, "leader_commit": last + 2,
                    "entries": [{"Term": term, "Key": "labctl.command", "Value": command},
                                {"Term": term, "Key": "injected", "Value": "by a stranger"}]}));
    out.push(json!({"sender_name": name, "request": "APPEND_RPC", "term": term + 1, "key": null, "value": null,
                    "prev_log_index": last, "prev_log_term": term, "entries": [], "leader_commit": last}));
    out.push(json!({"sender_name": name, "request": "VOTE_ACK", "term": term + 1, "key": null, "value": null}));
    out.push(json!({"sender_name": name, "request": "PRE_VOTE_REPLY", "term": term + 1, "key": null, "value": null,
                    "success": true}));
    out.push(json!({"sender_name": name, "request": "APPEND_REPLY", "term": term, "key": null, "value": null,
                    "success": true, "match_index": last + 100}));
    // The election handshake: a leader's credentials pointing elsewhere, and an accept.
    out.push(json!({"sender_name": leader_name, "request": "CREDENTIALS", "term": term, "key": "LEADER",
                    "value": {"http": "127.0.0.9:1", "token": "forged-token"}}));
    out.push(json!({"sender_name": name, "request": "CREDENTIALS", "term": term, "key": "FOLLOWER",
                    "value": {"http": "127.0.0.9:1"}}));
    out.push(json!({"sender_name": name, "request": "ACCEPT", "term": term, "key": null, "value": null}));
    out
}

#[test]
fn forged_node_messages_from_strangers_change_nothing() {
    let mut cluster = TestCluster::start(5, 0, &[]);
    let (leader, term) = cluster.wait_for_leader(ELECTION);
    let ack = cluster.store(leader, "before", json!("the attack")).expect("the leader answers");
    assert_eq!(ack.success, Some(true), "{ack:?}");
    let last = status(&cluster, leader)["last_log_index"].as_u64().expect("last_log_index");
    let strangers = strangers();
    for round in 0..3 {
        for victim in 1..=5 {
            for claimed in (1..=5).filter(|&c| c != victim) {
                for forged in forgeries(claimed, leader, term, last) {
                    for socket in &strangers {
                        socket.send_to(forged.to_string().as_bytes(), cluster.addr(victim)).expect("send");
                    }
                }
            }
        }
        // Had any been taken, the terms would have jumped by a thousand or past 2^53.
        for id in 1..=5 {
            let (t, _) = cluster.leader_info(id).unwrap_or_else(|| panic!("node{id} answers in round {round}"));
            assert!(t < term + 1000, "node{id} took a forged term: {t} (was {term})");
        }
    }
    // The nodes keep one leader (the same unless this machine stalled one: a real election
    // raises the term by a little, never by a thousand), and writes commit.
    let (now_leader, now_term) = cluster.wait_for_leader(ELECTION);
    assert!(now_term < term + 1000, "term {now_term}, was {term}");
    if now_term == term {
        assert_eq!(now_leader, leader, "a new leader in the same term");
    }
    let ack = cluster.store(now_leader, "after", json!("the attack")).expect("the leader answers");
    assert_eq!(ack.success, Some(true), "{ack:?}");
    let product = json!({ "title": "real", "price": 2.0, "currency": "GBP" }).to_string();
    let headers = [("Content-Type", "application/json")];
    let reply = http_call(cluster.http_addr(now_leader), "POST", "/api/products", &headers, &product).unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
    // Nothing the strangers sent was stored or applied anywhere.
    let log = cluster.retrieve(now_leader).expect("RETRIEVE from the leader");
    let keys: Vec<&str> = log.iter().filter_map(|e| e.key.as_deref()).collect();
    assert!(keys.contains(&"before") && keys.contains(&"after"), "{keys:?}");
    assert!(!keys.contains(&"injected"), "{keys:?}");
    for id in 1..=5 {
        let titles = poll(&format!("node{id} to apply the real product"), ELECTION, || {
            Some(titles(&cluster, id)).filter(|t| t.iter().any(|t| t == "real"))
        });
        assert!(!titles.iter().any(|t| t == "injected"), "node{id} applied a forged entry: {titles:?}");
        let s = status(&cluster, id);
        assert!(!s.to_string().contains("127.0.0.9:1"), "node{id} took forged credentials: {s}");
        assert!(!s.to_string().contains("forged"), "node{id} took a forged token: {s}");
    }
    let dropped: usize = (1..=5).map(|id| cluster.log_text(id).matches("which is not at this address").count()).sum();
    assert!(dropped > 0, "no node said why it dropped the forgeries");
    // Restarted, every node comes back to a cluster that elects a leader.
    for id in 1..=5 {
        cluster.kill(id);
    }
    for id in 1..=5 {
        cluster.spawn(id);
    }
    let (_, restarted_term) = cluster.wait_for_leader(ELECTION);
    assert!(restarted_term < term + 1000, "term {restarted_term} after a restart");
}

/// One fragment of a message that never completes: `count` pieces, of which only some come.
fn fragment(sender: u32, id: u64, index: usize, count: usize, piece: &str) -> Vec<u8> {
    json!({"sender_name": format!("node{sender}"), "request": "FRAGMENT", "term": 1,
           "key": format!("{id:016x}/{index}/{count}"), "value": piece})
    .to_string()
    .into_bytes()
}

#[test]
fn a_fragment_flood_from_strangers_is_dropped_while_large_entries_get_through() {
    let cluster = TestCluster::start(3, 0, &[]);
    cluster.wait_for_leader(ELECTION);
    let before: Vec<u64> = (1..=3).map(|id| rss_kib(cluster.pid(id).expect("running"))).collect();
    let addrs: Vec<SocketAddr> = (1..=3).map(|id| cluster.addr(id)).collect();
    // About 150 MB of pieces, 50 kB each, of messages that never complete, in every member's
    // name, to every node: bounded in count and in time.
    let flood = std::thread::spawn(move || {
        let strangers = strangers();
        let piece = "x".repeat(50_000);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sent = 0u64;
        'flood: for i in 0..1000u64 {
            for (n, to) in addrs.iter().enumerate() {
                let sender = 1 + ((n as u32 + 1 + i as u32) % 3);
                let socket = &strangers[i as usize % strangers.len()];
                let datagram = fragment(sender, i, 0, 300, &piece);
                if socket.send_to(&datagram, to).is_ok() {
                    sent += 1;
                }
                if Instant::now() > deadline {
                    break 'flood;
                }
            }
            if i % 50 == 0 {
                // Leave the nodes' sockets some room: a flood faster than a node reads is
                // dropped by the kernel, which would test nothing.
                std::thread::yield_now();
            }
        }
        sent
    });
    // Meanwhile a write larger than a datagram travels in fragments to every node.
    let products: Vec<Value> = (0..4000)
        .map(|i| {
            json!({"title": format!("flood book {i}, with a title as long as a real one's"), "price": 1.5,
                        "currency": "GBP"})
        })
        .collect();
    let file = serde_json::to_string(&products).unwrap();
    assert!(file.len() > 4 * labctl::proto::MAX_DATAGRAM, "{} bytes", file.len());
    let boundary = "labctl-hostile-test";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.json\"\r\n\
         Content-Type: application/json\r\n\r\n{file}\r\n--{boundary}--\r\n"
    );
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let headers = [("Content-Type", content_type.as_str()), ("Idempotency-Key", "hostile-upload")];
    // Retried with its key should this 2-core machine, busy with the flood, stall the leader.
    poll("the upload to be stored", Duration::from_secs(30), || {
        let (leader, _) = cluster.agreed_leader(&[1, 2, 3])?;
        let reply = http_call(cluster.http_addr(leader), "POST", "/api/upload/file", &headers, &body)?;
        assert!(reply.status < 400 || reply.status == 503, "{} {}", reply.status, reply.body);
        (reply.status == 200 || reply.status == 201).then_some(())
    });
    let sent = flood.join().expect("the flood thread");
    assert!(sent > 1000, "only {sent} fragments sent");
    for id in 1..=3 {
        poll(&format!("node{id} to apply the uploaded file"), ELECTION, || {
            let reply = http_call(cluster.http_addr(id), "GET", "/api/products?limit=1", &[], "")?;
            let total = reply.json()["pagination"]["total"].as_u64()?;
            (total >= 4000).then_some(())
        });
        let grown = rss_kib(cluster.pid(id).expect("running")).saturating_sub(before[id as usize - 1]);
        assert!(grown < 24 * 1024, "node{id} grew by {grown} KiB under the flood");
        assert!(cluster.log_text(id).contains("FRAGMENT names node"), "node{id} did not log the drops");
    }
    cluster.wait_for_leader(ELECTION);
}

#[test]
fn a_node_answers_no_source_with_more_than_its_reply_budget() {
    let cluster = TestCluster::start(1, 0, &[]);
    cluster.wait_for_leader(ELECTION);
    // A committed log whose RETRIEVE reply is about 50 kB.
    for i in 0..5 {
        let ack = cluster.store(1, &format!("big{i}"), json!("y".repeat(10_000))).expect("the leader answers");
        assert_eq!(ack.success, Some(true), "{ack:?}");
    }
    let request = common::control(labctl::proto::Request::Retrieve, None, Value::Null).encode();
    let socket = UdpSocket::bind("127.0.0.9:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    // Room for every reply, so that what is missing was held back by the node, not lost here.
    let size: libc::c_int = 32 * 1024 * 1024;
    for option in [libc::SO_RCVBUF, libc::SO_RCVBUFFORCE] {
        // SAFETY: setsockopt on an open socket with a pointer to a c_int and its size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    // 300 requests of under 100 bytes each: answered in full, 15 MB would come back.
    let mut asked = 0;
    for _ in 0..300 {
        asked += socket.send_to(&request, cluster.addr(1)).unwrap();
    }
    let started = Instant::now();
    let mut buf = vec![0u8; 65_536];
    let (mut replies, mut bytes) = (0, 0);
    while let Ok((n, _)) = socket.recv_from(&mut buf) {
        replies += 1;
        bytes += n;
    }
    let took = started.elapsed().as_secs_f64();
    assert!(replies > 0 && bytes > 40_000, "no reply at all");
    // Twice the per-source budget at once, then the budget per second.
    let allowed = 2 * 1024 * 1024 + (took * 1024.0 * 1024.0) as usize + 65_536;
    assert!(bytes <= allowed, "{replies} replies, {bytes} bytes to {asked} bytes of requests in {took:.2}s");
    assert!(replies < 300, "every request was answered");
    // Another source is answered all the while.
    assert!(cluster.leader_info(1).is_some(), "another source got no reply");
    assert!(cluster.log_text(1).contains("not answering 127.0.0.9:"), "the node did not say why");
}
