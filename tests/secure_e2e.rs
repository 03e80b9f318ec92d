//! Secure mode on real nodes: a cluster secret signs every datagram (SPEC §7).
//!
//! Three `labctl node` processes share a secret file and let unsigned control requests in
//! from 127.0.0.9 only, where a Python controller runs; the test harness signs its own.
//! Unsigned, wrongly signed and replayed requests from elsewhere change nothing;
//! `labctl controller` with the secret, the console's buttons and the allowed Python
//! controller work.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Output};
use std::time::Duration;

use common::{control, http_call, poll, TestCluster, BIN};
use labctl::proto::auth::{self, Key};
use labctl::proto::{Message, Request};
use serde_json::{json, Value};

const ELECTION: Duration = Duration::from_secs(10);
const SECRET: &str = "correct horse battery staple, but longer\n";

struct Secure {
    cluster: TestCluster,
    secret: tempfile::NamedTempFile,
}

fn start(nodes: u32) -> Secure {
    let mut secret = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut secret, SECRET.as_bytes()).unwrap();
    let flag = format!("--cluster-secret-file={}", secret.path().display());
    let cluster = TestCluster::start_signing(nodes, 0, &[&flag, "--control-allow=127.0.0.9"], &[], Some(key()));
    Secure { cluster, secret }
}

fn key() -> Key {
    Key::derive(SECRET.as_bytes()).unwrap()
}

/// `labctl controller ARGS` against the cluster, with the secret file when `signed`.
fn controller(s: &Secure, signed: bool, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .arg("controller")
        .args(args)
        .arg(format!("--nodes={}", s.cluster.nodes))
        .arg(format!("--raft-port={}", s.cluster.raft_port))
        .env_remove("LABCTL_CONFIG")
        .env_remove("LABCTL_CLUSTER_SECRET")
        .env_remove("LABCTL_CLUSTER_SECRET_FILE")
        .current_dir(std::env::temp_dir());
    if signed {
        command.env("LABCTL_CLUSTER_SECRET_FILE", s.secret.path());
    }
    command.output().expect("run labctl controller")
}

/// Sends `bytes` to node `id` from `socket` and returns the reply, if one comes in 500 ms.
fn ask(s: &Secure, socket: &UdpSocket, id: u32, bytes: &[u8]) -> Option<Vec<u8>> {
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    socket.send_to(bytes, s.cluster.addr(id)).unwrap();
    let mut buf = vec![0u8; 65_536];
    socket.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}

fn keys(s: &Secure, leader: u32) -> Vec<String> {
    s.cluster.retrieve(leader).expect("RETRIEVE from the leader").into_iter().filter_map(|e| e.key).collect()
}

#[test]
fn unsigned_and_replayed_requests_change_nothing() {
    let s = start(3);
    let (leader, term) = s.cluster.wait_for_leader(ELECTION);
    let follower = if leader == 1 { 2 } else { 1 };
    let stranger = UdpSocket::bind("127.0.0.7:0").unwrap();
    // Unsigned, from an address that is not allowed: no reply, no effect.
    let store = control(Request::Store, Some("unsigned"), json!("x")).encode();
    assert_eq!(ask(&s, &stranger, leader, &store), None);
    assert_eq!(ask(&s, &stranger, leader, &control(Request::LeaderInfo, None, Value::Null).encode()), None);
    for id in 1..=3 {
        stranger.send_to(&control(Request::Timeout, None, Value::Null).encode(), s.cluster.addr(id)).unwrap();
        stranger.send_to(&control(Request::Shutdown, None, Value::Null).encode(), s.cluster.addr(id)).unwrap();
    }
    // Signed with another secret, or for another node: the same.
    let other = Key::derive(b"a secret that is not the cluster's").unwrap();
    let now = auth::clock_micros();
    assert_eq!(ask(&s, &stranger, leader, &auth::seal(&other, &store, &format!("node{leader}"), now)), None);
    assert_eq!(ask(&s, &stranger, leader, &auth::seal(&key(), &store, &format!("node{follower}"), now)), None);
    // Signed with the secret: stored once, and the same datagram sent again is refused.
    let good = control(Request::Store, Some("signed-once"), json!("y")).encode();
    let sealed = auth::seal(&key(), &good, &format!("node{leader}"), auth::clock_micros());
    let reply = ask(&s, &stranger, leader, &sealed).expect("the leader answers a signed STORE");
    let opened = auth::open(&key(), &reply).expect("the reply is signed");
    assert_eq!(opened.to, "Controller");
    let (reply, _) = Message::decode(&reply).unwrap();
    assert_eq!(reply.success, Some(true), "{reply:?}");
    assert_eq!(ask(&s, &stranger, leader, &sealed), None, "a replay is answered");
    // Signed, but from before the node's freshness window.
    let old = auth::seal(
        &key(),
        &control(Request::Store, Some("old"), json!("z")).encode(),
        &format!("node{leader}"),
        now - 60_000_000,
    );
    assert_eq!(ask(&s, &stranger, leader, &old), None);
    let stored = keys(&s, leader);
    assert_eq!(stored, ["signed-once"], "only the signed STORE, once");
    for id in 1..=3 {
        assert_eq!(s.cluster.leader_info(id), Some((term, Some(format!("node{leader}")))), "node{id}");
    }
    let text = s.cluster.log_text(leader);
    assert!(text.contains("secure mode") && text.contains("taken only from 127.0.0.9/32"), "{text}");
    // The secret itself is in no log line of any node.
    for id in 1..=3 {
        let text = s.cluster.log_text(id);
        assert!(!text.contains(SECRET.trim()), "node{id} logged the cluster secret");
    }
    assert!(text.contains("an unsigned STORE from an address that is not allowed"), "{text}");
}

#[test]
fn the_controller_with_the_secret_the_console_and_an_allowed_python_controller_work() {
    let s = start(3);
    let (leader, _) = s.cluster.wait_for_leader(ELECTION);
    // Without the secret, the controller (from 127.0.0.1, not allowed) hears nothing.
    let out = controller(&s, false, &["leader-info", &format!("node{leader}")]);
    assert!(!out.status.success(), "an unsigned controller got an answer: {out:?}");
    // With it, every request.
    let out = controller(&s, true, &["status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("leader: node{leader}")), "{out:?}");
    let out = controller(&s, true, &["store", "color", "blue"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = controller(&s, true, &["retrieve"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("color"), "{out:?}");
    let target = if leader == 3 { 2 } else { 3 };
    // A node wins an election only with a log as new as a majority's: let it catch up first.
    let last = |id: u32| {
        let reply = http_call(s.cluster.http_addr(id), "GET", "/status", &[], "")?;
        reply.json()["last_log_index"].as_u64()
    };
    let catch_up = |id: u32, leader: u32| {
        let leader_last = last(leader).expect("the leader's /status");
        poll(&format!("node{id} to hold the leader's log"), ELECTION, || last(id).filter(|&n| n >= leader_last));
    };
    catch_up(target, leader);
    let out = controller(&s, true, &["timeout", &format!("node{target}")]);
    assert!(out.status.success(), "{out:?}");
    poll("the timed-out node to lead", ELECTION, || (s.cluster.agreed_leader(&[1, 2, 3])?.0 == target).then_some(()));
    // The console's button sends a signed TIMEOUT to its own node.
    let other = if target == 1 { 2 } else { 1 };
    catch_up(other, target);
    let reply = http_call(s.cluster.http_addr(other), "POST", "/api/control/timeout", &[], "").unwrap();
    assert_eq!(reply.status, 202, "{}", reply.body);
    poll("the console's node to lead", ELECTION, || (s.cluster.agreed_leader(&[1, 2, 3])?.0 == other).then_some(()));
    // A course controller in Python, unsigned, from the allowed address.
    let script = r#"
import json, socket, sys
port = int(sys.argv[1]); leader = sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.9", 0)); s.settimeout(3)
def ask(msg, to):
    s.sendto(json.dumps(msg).encode(), ("127.0.0.%s" % to, port))
    return json.loads(s.recvfrom(65536)[0])
info = ask({"sender_name": "Controller", "request": "LEADER_INFO", "term": None, "key": None, "value": None}, 1)
assert info["value"] == "node" + leader, info
assert "mac" not in info, info
ack = ask({"sender_name": "Controller", "request": "STORE", "term": None, "key": "py", "value": "ok"}, leader)
assert ack["request"] == "STORE" and ack.get("success") is True, ack
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script, &s.cluster.raft_port.to_string(), &other.to_string()])
        .output()
        .expect("python3 is installed");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok", "{}", String::from_utf8_lossy(&out.stderr));
    let stored = keys(&s, other);
    assert!(stored.contains(&"color".to_string()) && stored.contains(&"py".to_string()), "{stored:?}");
}
