//! Five real `labctl node` processes on loopback, driven over real UDP.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{control, poll, TestCluster};
use labctl::proto::{LogEntry, Request};
use serde_json::{json, Value};

const ELECTION: Duration = Duration::from_secs(5);

#[test]
fn five_nodes_elect_one_leader_and_keep_it() {
    let cluster = TestCluster::start(5, 0, &[]);
    let (leader, term) = cluster.wait_for_leader(ELECTION);
    // Every node names the same leader and term.
    let all: Vec<u32> = (1..=5).collect();
    poll("all five nodes to agree", ELECTION, || {
        all.iter().all(|&id| cluster.leader_info(id) == Some((term, Some(format!("node{leader}"))))).then_some(())
    });
    // With nothing failing, the term does not change: watch it for two seconds.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for &id in &all {
            assert_eq!(cluster.leader_info(id), Some((term, Some(format!("node{leader}")))), "node{id} changed");
        }
    }
    let text = cluster.log_text(leader);
    assert!(text.contains(&format!("node{leader} is LEADER for term {term}")), "{text}");
}

#[test]
fn killing_the_leader_elects_a_new_one() {
    let mut cluster = TestCluster::start(5, 0, &[]);
    for _ in 0..3 {
        let (old, old_term) = cluster.wait_for_leader(ELECTION);
        cluster.kill(old);
        let (new, new_term) = cluster.wait_for_leader(ELECTION);
        assert_ne!(new, old);
        assert!(new_term > old_term, "term {new_term} after {old_term}");
        cluster.spawn(old);
        poll("the old leader to follow the new one", ELECTION, || {
            let (term, leader) = cluster.leader_info(old)?;
            (term >= new_term && leader.is_some()).then_some(())
        });
    }
}

#[test]
fn a_cut_off_leader_is_replaced_and_follows_when_it_returns() {
    let mut cluster = TestCluster::start(5, 0, &[]);
    let (old, old_term) = cluster.wait_for_leader(ELECTION);
    let others: Vec<u32> = (1..=5).filter(|&id| id != old).collect();
    cluster.freeze(old, true);
    let (new, new_term) = poll("a new leader among the others", ELECTION, || cluster.agreed_leader(&others));
    assert_ne!(new, old);
    assert!(new_term > old_term);
    cluster.freeze(old, false);
    // Back: the old leader learns the newer term and follows; still one leader.
    poll("the old leader to follow", ELECTION, || {
        (cluster.leader_info(old) == Some((new_term, Some(format!("node{new}"))))).then_some(())
    });
    assert_eq!(cluster.agreed_leader(&[1, 2, 3, 4, 5]), Some((new, new_term)));
}

#[test]
fn a_minority_has_no_leader_until_the_majority_returns() {
    let mut cluster = TestCluster::start(5, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    // Cut off three nodes, the leader among them: the two left must not have a leader.
    let followers: Vec<u32> = (1..=5).filter(|&id| id != leader).collect();
    let (cut, left) = (vec![leader, followers[0], followers[1]], vec![followers[2], followers[3]]);
    for &id in &cut {
        cluster.freeze(id, true);
    }
    poll("the minority to forget its leader", ELECTION, || {
        left.iter().all(|&id| cluster.leader_info(id).is_some_and(|(_, l)| l.is_none())).then_some(())
    });
    // And it stays without one: watch for a second.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        for &id in &left {
            let (_, l) = cluster.leader_info(id).expect("minority node answers");
            assert_eq!(l, None, "node{id} names a leader in a minority");
        }
    }
    for &id in &cut {
        cluster.freeze(id, false);
    }
    cluster.wait_for_leader(ELECTION);
    poll("all five to agree again", ELECTION, || {
        let (id, term) = cluster.agreed_leader(&[1, 2, 3, 4, 5])?;
        (1..=5).all(|n| cluster.leader_info(n) == Some((term, Some(format!("node{id}"))))).then_some(())
    });
}

#[test]
fn store_and_retrieve_go_through_the_leader() {
    let cluster = TestCluster::start(5, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let follower = (1..=5).find(|&id| id != leader).unwrap();

    // A follower answers STORE and RETRIEVE with who leads.
    let reply = cluster.store(follower, "k0", json!("v0")).expect("follower replies");
    assert_eq!(reply.request.as_deref(), Some("LEADER_INFO"));
    assert_eq!(reply.value, json!(format!("node{leader}")));
    assert_eq!(cluster.retrieve(follower), None);

    for i in 1..=5 {
        // Like any client, retry a STORE whose entry a new leader replaced before it committed
        // (an election may happen on a loaded machine); such an entry is never in the log.
        let reply = poll(&format!("STORE k{i} to be acknowledged"), ELECTION, || {
            let (leader, _) = cluster.wait_for_leader(ELECTION);
            let reply = cluster.store(leader, &format!("k{i}"), json!(format!("v{i}")))?;
            let lost = reply.value == json!("lost leadership before commit");
            (!lost && reply.request.as_deref() == Some("STORE")).then_some(reply)
        });
        assert_eq!(reply.success, Some(true), "{reply:?}");
        assert_eq!(reply.key.as_deref(), Some(format!("k{i}").as_str()));
    }
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let log = cluster.retrieve(leader).expect("leader answers RETRIEVE");
    let keys: Vec<&str> = log.iter().filter_map(|e| e.key.as_deref()).collect();
    assert_eq!(keys, ["k1", "k2", "k3", "k4", "k5"]);
    assert!(log.iter().all(|e| e.term >= 1 && e.value.to_value().as_str().is_some()));
}

#[test]
fn timeout_makes_an_up_to_date_follower_leader() {
    let cluster = TestCluster::start(5, 0, &[]);
    let (leader, term) = cluster.wait_for_leader(ELECTION);
    let target = (1..=5).find(|&id| id != leader).unwrap();
    cluster.send(target, &control(Request::Timeout, None, Value::Null));
    let (new, new_term) = poll("the timed-out node to lead", ELECTION, || {
        cluster.agreed_leader(&[1, 2, 3, 4, 5]).filter(|&(id, _)| id == target)
    });
    assert_eq!(new, target);
    assert!(new_term > term);

    // CONVERT_FOLLOWER on the leader: it stops leading, and the cluster has a leader again.
    cluster.send(target, &control(Request::ConvertFollower, None, Value::Null));
    poll("a leader after CONVERT_FOLLOWER", ELECTION, || {
        cluster.agreed_leader(&[1, 2, 3, 4, 5]).filter(|&(_, t)| t > new_term)
    });
}

#[test]
fn restarted_nodes_recover_their_term_and_log() {
    let mut cluster = TestCluster::start(5, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    for i in 0..20 {
        let reply = cluster.store(leader, &format!("key{i}"), json!(i)).expect("acknowledged");
        assert_eq!(reply.success, Some(true));
    }
    let before: Vec<LogEntry> = cluster.retrieve(leader).unwrap();
    let (term_before, _) = cluster.leader_info(leader).unwrap();

    // Crash every node at once, then start them all again.
    for id in 1..=5 {
        cluster.kill(id);
    }
    for id in 1..=5 {
        cluster.spawn(id);
    }
    let (leader, term) = cluster.wait_for_leader(ELECTION);
    assert!(term > term_before, "term {term} after restart, {term_before} before");
    let after = poll("the new leader to commit the old entries", ELECTION, || {
        cluster.retrieve(leader).filter(|log| log.len() >= before.len())
    });
    assert_eq!(after, before, "committed entries changed across a full restart");
    for id in 1..=5 {
        let text = cluster.log_text(id);
        assert!(text.contains(&format!("node{id}: recovered term ")), "{text}");
    }
}

#[test]
fn garbage_datagrams_change_nothing() {
    let mut cluster = TestCluster::start(5, 0, &[]);
    let (leader, term) = cluster.wait_for_leader(ELECTION);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut junk: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\xff\xfe\x00garbage".to_vec(),
        b"null".to_vec(),
        b"[1,2,3]".to_vec(),
        b"{\"request\":".to_vec(),
        br#"{"request":"HELLO"}"#.to_vec(),
        br#"{"request":42,"term":"x"}"#.to_vec(),
        br#"{"sender_name":"node2","request":"VOTE_REQUEST","term":"high"}"#.to_vec(),
        br#"{"sender_name":"node2","request":"APPEND_RPC","term":-5}"#.to_vec(),
        br#"{"sender_name":"Controller","request":"VOTE_REQUEST","term":99,"last_log_index":0,"last_log_term":0}"#
            .to_vec(),
        br#"{"sender_name":"node99","request":"VOTE_REQUEST","term":99,"last_log_index":0,"last_log_term":0}"#.to_vec(),
        br#"{"sender_name":"node2","request":"APPEND_RPC","term":1e400}"#.to_vec(),
        // Control requests read `term` and `key` leniently (a key 7 is "7"), but not everything.
        br#"{"sender_name":"Controller","request":"STORE","term":null,"key":"\ud800","value":null}"#.to_vec(),
        br#"{"sender_name":"Controller","request":"STORE","key":"k","entries":"x"}"#.to_vec(),
        // A Raft message's term must be a whole number up to 2^53; any other reads as none, and a
        // Raft message without a term is refused (these also come from the wrong address).
        br#"{"sender_name":"node2","request":"VOTE_ACK","term":"NULL"}"#.to_vec(),
        br#"{"sender_name":"node2","request":"VOTE_ACK","term":9007199254740993}"#.to_vec(),
        format!(r#"{{"sender_name":"Controller","request":"STORE","key":"k","value":"{}"}}"#, "x".repeat(70_000))
            .into_bytes(),
        vec![b'{'; 65_000],
    ];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for len in [1usize, 7, 64, 512, 1400, 9000] {
        let bytes = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        junk.push(bytes);
    }
    for round in 0..5 {
        for bytes in &junk {
            for id in 1..=5 {
                // Oversized datagrams may be refused by the kernel; that is fine too.
                let _ = socket.send_to(bytes, cluster.addr(id));
            }
        }
        assert_eq!(cluster.agreed_leader(&[1, 2, 3, 4, 5]), Some((leader, term)), "round {round}");
    }
    for id in 1..=5 {
        assert!(cluster.is_running(id), "node{id} died");
        assert_eq!(cluster.leader_info(id), Some((term, Some(format!("node{leader}")))));
    }
    assert!(cluster.log_text(leader).contains("dropped datagram"));
    // The nodes still work: a STORE commits.
    assert_eq!(cluster.store(leader, "after", json!("junk")).and_then(|r| r.success), Some(true));
    // …and it is the only entry: no junk datagram was taken for a STORE.
    let keys: Vec<Option<String>> = cluster.retrieve(leader).unwrap_or_default().into_iter().map(|e| e.key).collect();
    assert_eq!(keys, [Some("after".to_string())]);
    let _ = &mut cluster;
}

#[test]
fn shutdown_exits_cleanly() {
    let mut cluster = TestCluster::start(3, 0, &[]);
    cluster.wait_for_leader(ELECTION);
    for id in 1..=3 {
        cluster.send(id, &control(Request::Shutdown, None, Value::Null));
        let status = cluster.wait_exit(id, Duration::from_secs(5));
        assert!(status.success(), "node{id} exited with {status}");
        let text = cluster.log_text(id);
        assert!(!text.contains("ERROR") && !text.contains("panicked"), "node{id} wrote errors:\n{text}");
        assert!(text.contains("stopped (SHUTDOWN)"), "{text}");
    }
}

#[test]
fn an_id_outside_the_cluster_is_refused() {
    let out = std::process::Command::new(common::BIN)
        .args(["node", "--id", "9", "--nodes", "5"])
        .env_remove("LABCTL_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--id 9 is not a member: the cluster has node1 … node5"), "{stderr}");
}

/// A SQLite database in memory would be a different, empty one for each of the node's
/// connections: the node refuses it before it starts.
#[test]
fn a_database_in_memory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for url in [":memory:", "sqlite://:memory:"] {
        let out = std::process::Command::new(common::BIN)
            .args(["node", "--id", "1", "--nodes", "1", "--host", "127.0.0.{id}", "--data-dir"])
            .arg(dir.path())
            .args(["--database-url", url])
            .env_remove("LABCTL_CONFIG")
            .env_remove("LABCTL_DATABASE_URL")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{url}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("is a SQLite database in memory"), "{url}: {stderr}");
    }
}

#[test]
fn a_raft_log_cut_behind_the_nodes_database_is_refused() {
    let mut cluster = TestCluster::start(1, 0, &[]);
    cluster.wait_for_leader(ELECTION);
    let product = json!({ "title": "kept", "price": 1.0, "currency": "GBP" });
    let headers = [("Content-Type", "application/json")];
    let reply =
        common::http_call(cluster.http_addr(1), "POST", "/api/products", &headers, &product.to_string()).unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
    cluster.terminate(1, Duration::from_secs(10));
    // The log emptied by hand: the database has applied entries the log no longer holds.
    std::fs::write(cluster.data_dir().join("node1").join("raft.log"), b"").unwrap();
    cluster.spawn(1);
    let status = cluster.wait_exit(1, Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let text = cluster.log_text(1);
    assert!(
        text.contains("but ") && text.contains("holds entries only up to 0: the Raft log was cut or replaced"),
        "{text}"
    );
}

#[test]
fn a_raft_log_damaged_before_its_last_record_stops_the_node_and_is_left_as_it_was() {
    let mut cluster = TestCluster::start(1, 0, &[]);
    cluster.wait_for_leader(ELECTION);
    let headers = [("Content-Type", "application/json")];
    for title in ["first", "second", "third"] {
        let product = json!({ "title": title, "price": 1.0, "currency": "GBP" });
        let reply =
            common::http_call(cluster.http_addr(1), "POST", "/api/products", &headers, &product.to_string()).unwrap();
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    cluster.terminate(1, Duration::from_secs(10));
    // One byte of the second record turned to zero, as a bad sector or a stray write would.
    let path = cluster.data_dir().join("node1").join("raft.log");
    let good = std::fs::read(&path).unwrap();
    let second = good.iter().position(|&b| b == b'\n').unwrap() + 1;
    let mut damaged = good.clone();
    damaged[second + 20] = 0;
    std::fs::write(&path, &damaged).unwrap();
    cluster.spawn(1);
    let status = cluster.wait_exit(1, Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let text = cluster.log_text(1);
    assert!(text.contains(&format!("damaged record at byte {second} (line 2)")), "{text}");
    assert!(text.contains("does not start"), "{text}");
    assert_eq!(std::fs::read(&path).unwrap(), damaged, "the node cut nothing off");
    // The file put back, the node starts with every write.
    std::fs::write(&path, &good).unwrap();
    cluster.spawn(1);
    cluster.wait_for_leader(ELECTION);
    let reply = common::http_call(cluster.http_addr(1), "GET", "/api/products?limit=10", &[], "").unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    for title in ["first", "second", "third"] {
        assert!(reply.body.contains(title), "{title}: {}", reply.body);
    }
}
