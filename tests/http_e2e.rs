//! The node's HTTP endpoints, against real nodes on loopback.

mod common;

use std::time::Duration;

use common::{control, http_get, http_request, poll, TestCluster};
use labctl::proto::Request;
use serde_json::{json, Value};

const ELECTION: Duration = Duration::from_secs(5);

fn get_json(cluster: &TestCluster, id: u32, path: &str) -> (u16, Value) {
    let (code, body) = http_get(cluster.http_addr(id), path).unwrap_or_else(|| panic!("no answer from node{id}"));
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} on node{id} is not JSON ({e}): {body}"));
    (code, value)
}

#[test]
fn status_readyz_and_heartbeat_describe_the_cluster() {
    let cluster = TestCluster::start(3, 0, &[]);
    let (leader, term) = cluster.wait_for_leader(ELECTION);
    let leader_name = format!("node{leader}");
    let leader_http = cluster.http_addr(leader).to_string();
    for id in 1..=3 {
        // Followers learn the commit index with the leader's next heartbeat.
        let (code, status) = poll("every node's /status to name the leader and the no-op committed", ELECTION, || {
            let (code, status) = get_json(&cluster, id, "/status");
            let committed = status["commit_index"].as_u64().is_some_and(|c| c >= 1);
            (status["leader"] == json!(leader_name) && committed).then_some((code, status))
        });
        assert_eq!(code, 200);
        assert_eq!(status["name"], json!(format!("node{id}")));
        assert_eq!(status["term"], json!(term));
        assert_eq!(status["leader_http"], json!(leader_http));
        let role = if id == leader { "LEADER" } else { "FOLLOWER" };
        assert_eq!(status["role"], json!(role));
        let peers: Vec<&str> =
            status["peers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(peers.len(), 2);
        assert!(!peers.contains(&format!("node{id}").as_str()));

        let (code, ready) = get_json(&cluster, id, "/readyz");
        assert_eq!((code, &ready["ready"]), (200, &json!(true)), "{ready}");
        assert_eq!(
            ready["checks"],
            json!({ "node": true, "leader": true, "database": true, "applying": true }),
            "{ready}"
        );
        let (code, health) = get_json(&cluster, id, "/healthz");
        assert_eq!((code, &health["status"]), (200, &json!("ok")));
        let (code, beat) = get_json(&cluster, id, "/heartbeat");
        assert_eq!(code, 200);
        assert_eq!(beat["role"], json!(role));
        assert_eq!(beat["leader"], json!(leader_name));
    }
    // The leader reports how far each follower's log matches.
    let (_, status) = get_json(&cluster, leader, "/status");
    assert!(status["peers"].as_array().unwrap().iter().all(|p| p["match_index"].as_u64().is_some()), "{status}");
}

#[test]
fn a_node_without_a_leader_is_not_ready() {
    let mut cluster = TestCluster::start(3, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let others: Vec<u32> = (1..=3).filter(|&id| id != leader).collect();
    // Alone, a follower loses its leader and must say it is not ready.
    cluster.kill(others[0]);
    cluster.kill(leader);
    let lone = others[1];
    let (code, ready) = poll("the lone node to report not ready", ELECTION, || {
        let (code, ready) = get_json(&cluster, lone, "/readyz");
        (code == 503).then_some((code, ready))
    });
    assert_eq!(code, 503);
    assert_eq!(ready["ready"], json!(false));
    assert_eq!(ready["checks"]["leader"], json!(false));
    assert_eq!(ready["checks"]["database"], json!(true), "{ready}");
    let (code, _) = get_json(&cluster, lone, "/healthz");
    assert_eq!(code, 200, "a node without a leader is still alive");
}

#[test]
fn metrics_follow_elections_and_requests() {
    let cluster = TestCluster::start(3, 0, &[]);
    let (leader, term) = cluster.wait_for_leader(ELECTION);
    let target = (1..=3).find(|&id| id != leader).unwrap();
    cluster.send(target, &control(Request::Timeout, None, Value::Null));
    poll("the timed-out node to lead", ELECTION, || cluster.agreed_leader(&[1, 2, 3]).filter(|&(id, _)| id == target));
    let _ = http_get(cluster.http_addr(target), "/no-such-thing");
    let (code, text) = http_get(cluster.http_addr(target), "/metrics").unwrap();
    assert_eq!(code, 200);
    let sample =
        |line: &str| text.lines().find(|l| l.starts_with(line)).map(|l| l.rsplit(' ').next().unwrap().to_string());
    let node = format!("node=\"node{target}\"");
    assert_eq!(sample(&format!("labctl_role{{{node},role=\"LEADER\"}}")).as_deref(), Some("1"), "{text}");
    let new_term: u64 = sample(&format!("labctl_term{{{node}}}")).unwrap().parse().unwrap();
    assert!(new_term > term);
    let elections: u64 = sample(&format!("labctl_elections_total{{{node}}}")).unwrap().parse().unwrap();
    assert!(elections >= 1);
    assert_eq!(sample(&format!("labctl_http_requests_total{{{node},status=\"404\"}}")).as_deref(), Some("1"), "{text}");
}

#[test]
fn wrong_paths_and_methods_get_json_errors() {
    let cluster = TestCluster::start(1, 0, &[]);
    let addr = cluster.http_addr(1);
    let (code, body) = http_get(addr, "/nope").unwrap();
    assert_eq!(code, 404);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string(), "{body}");
    let (code, body) = http_request(addr, "POST", "/status").unwrap();
    assert_eq!(code, 405);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string(), "{body}");
}

#[test]
fn a_taken_http_port_is_a_clear_error() {
    let port = common::free_port(1);
    let _taken = std::net::TcpListener::bind(format!("127.0.0.1:{port}")).unwrap();
    let dir = std::env::temp_dir().join(format!("labctl-http-taken-{}", std::process::id()));
    let out = std::process::Command::new(common::BIN)
        .args(["node", "--id", "1", "--nodes", "1"])
        .arg(format!("--raft-port={port}"))
        .arg(format!("--http-port={port}"))
        .arg("--data-dir")
        .arg(&dir)
        .env_remove("LABCTL_CONFIG")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot serve HTTP on 127.0.0.1:{port} for node1")), "{stderr}");
}

#[test]
fn the_election_handshake_shows_in_status() {
    let cluster = TestCluster::start(3, 0, &[]);
    let (leader, term) = cluster.wait_for_leader(ELECTION);
    let followers: Vec<u32> = (1..=3).filter(|&id| id != leader).collect();
    // The leader learns every follower's HTTP address through ACCEPT / CREDENTIALS.
    let status = poll("both followers to complete the handshake", ELECTION, || {
        let (_, status) = get_json(&cluster, leader, "/status");
        (status["accepted_by"].as_object().map_or(0, |m| m.len()) == 2).then_some(status)
    });
    for &f in &followers {
        assert_eq!(status["accepted_by"][format!("node{f}")], json!(cluster.http_addr(f).to_string()));
        let (_, fs) = get_json(&cluster, f, "/status");
        let creds = &fs["leader_credentials"];
        assert_eq!(creds["leader"], json!(format!("node{leader}")), "{fs}");
        assert_eq!(creds["term"], json!(term));
        assert_eq!(creds["http"], json!(cluster.http_addr(leader).to_string()));
        assert_eq!(creds["token_prefix"].as_str().map(str::len), Some(6));
        assert!(creds.get("token").is_none(), "the full token is not published");
    }
    // Both followers got the same token for the term.
    let prefixes: Vec<Value> = followers
        .iter()
        .map(|&f| get_json(&cluster, f, "/status").1["leader_credentials"]["token_prefix"].clone())
        .collect();
    assert_eq!(prefixes[0], prefixes[1]);
}

/// Listeners on 127.0.1.1 … 127.0.1.N, one port for all: where the test publishes the nodes.
fn public_listeners(nodes: u32) -> (u16, Vec<std::net::TcpListener>) {
    use std::net::TcpListener;
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.1.1:0").expect("listen on 127.0.1.1");
        let port = first.local_addr().unwrap().port();
        let rest: Vec<_> =
            (2..=nodes).filter_map(|id| TcpListener::bind(format!("127.0.1.{id}:{port}")).ok()).collect();
        if rest.len() == nodes as usize - 1 {
            return (port, std::iter::once(first).chain(rest).collect());
        }
    }
    panic!("no port is free on 127.0.1.1 … 127.0.1.{nodes}");
}

/// Forwards the connections `listener` takes to `to`, as a container engine's published port
/// does, until the test ends (the threads end with the test process).
fn publish(listener: std::net::TcpListener, to: std::net::SocketAddr) {
    use std::net::{Shutdown, TcpStream};
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(to) else { continue };
            let (Ok(client_out), Ok(server_out)) = (client.try_clone(), server.try_clone()) else { continue };
            let pipe = |mut from: TcpStream, mut to: TcpStream| {
                move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                }
            };
            std::thread::spawn(pipe(client, server_out));
            std::thread::spawn(pipe(server, client_out));
        }
    });
}

/// With public addresses (`--public-host`, as a compose lab publishes each node's port on the
/// host), a client that reaches a follower at its public address is redirected to the leader's
/// public address, and `/status` names the members by theirs; a client inside the cluster's
/// network, naming the node by its cluster address, gets cluster addresses.
#[test]
fn clients_outside_get_public_addresses() {
    let (public_port, listeners) = public_listeners(3);
    let public = |id: u32| -> std::net::SocketAddr { format!("127.0.1.{id}:{public_port}").parse().unwrap() };
    let public_port_text = public_port.to_string();
    let cluster = TestCluster::start(3, 0, &["--public-host", "127.0.1.{id}", "--public-http-port", &public_port_text]);
    for (id, listener) in (1..=3).zip(listeners) {
        publish(listener, cluster.http_addr(id));
    }
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let body = r#"{"title":"published","price":1.5,"currency":"GBP"}"#;
    let json = [("Content-Type", "application/json")];

    // From outside, through the follower's published port: to the leader's published port.
    let reply = poll("the follower to know the leader", ELECTION, || {
        common::http_call(public(follower), "POST", "/api/products", &json, body).filter(|r| r.status == 307)
    });
    let location = format!("http://{}/api/products", public(leader));
    assert_eq!(reply.header("location"), Some(location.as_str()), "{reply:?}");
    assert_eq!(reply.json()["leader_http"], json!(public(leader).to_string()));
    // The redirect works for that client: the write lands, and every node has it.
    let created = common::http_call(public(leader), "POST", "/api/products", &json, body).unwrap();
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.json()["id"].as_i64().unwrap();
    for node in 1..=3 {
        poll("every node to have the product", ELECTION, || {
            common::http_call(public(node), "GET", &format!("/api/products/{id}"), &[], "").filter(|r| r.status == 200)
        });
    }
    let (_, status) = http_request_json(public(follower), "/status");
    assert_eq!(status["leader_http"], json!(public(leader).to_string()), "{status}");
    assert_eq!(status["leader_url"], json!(format!("http://{}", public(leader))), "{status}");
    for peer in status["peers"].as_array().unwrap() {
        let n: u32 = peer["name"].as_str().unwrap().trim_start_matches("node").parse().unwrap();
        assert_eq!(peer["http"], json!(public(n).to_string()), "{status}");
    }

    // From inside, by the follower's cluster address: cluster addresses, as without them.
    let reply = common::http_call(cluster.http_addr(follower), "POST", "/api/products", &json, body).unwrap();
    assert_eq!(reply.status, 307, "{reply:?}");
    let location = format!("http://{}/api/products", cluster.http_addr(leader));
    assert_eq!(reply.header("location"), Some(location.as_str()));
    let (_, status) = get_json(&cluster, follower, "/status");
    assert_eq!(status["leader_http"], json!(cluster.http_addr(leader).to_string()), "{status}");
}

fn http_request_json(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let (code, body) = http_get(addr, path).unwrap_or_else(|| panic!("no answer from {addr}"));
    (code, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} on {addr} is not JSON ({e}): {body}")))
}
