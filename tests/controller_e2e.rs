//! `labctl controller` against five real `labctl node` processes on loopback.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{poll, TestCluster, BIN};
use serde_json::Value;

const ELECTION: Duration = Duration::from_secs(5);

/// Runs `labctl controller ARGS` against `cluster`.
fn controller(cluster: &TestCluster, args: &[&str]) -> Output {
    controller_at(cluster.nodes, cluster.raft_port, args)
}

fn controller_at(nodes: u32, raft_port: u16, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("controller")
        .args(args)
        .arg(format!("--nodes={nodes}"))
        .arg(format!("--raft-port={raft_port}"))
        .env_remove("LABCTL_CONFIG")
        .env_remove("LABCTL_CONTROLLER_TIMEOUT_MS")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run labctl controller")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(out: Output) -> String {
    assert!(out.status.success(), "controller failed ({}):\n{}{}", out.status, stdout(&out), stderr(&out));
    stdout(&out)
}

/// The (leader, term) of every row of a `leader-info` table.
fn table_rows(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .skip(1)
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            (cells[0].to_string(), cells.get(1).unwrap_or(&"").to_string(), cells.get(2).unwrap_or(&"").to_string())
        })
        .collect()
}

#[test]
fn leader_info_and_status_agree_on_one_leader() {
    let cluster = TestCluster::start(5, 0, &[]);
    let (leader, term) = cluster.wait_for_leader(ELECTION);
    let name = format!("node{leader}");

    // Every node names the same leader in the same term.
    let table = poll("all rows of leader-info to name the leader", ELECTION, || {
        let text = ok(controller(&cluster, &["leader-info"]));
        let rows = table_rows(&text);
        (rows.len() == 5 && rows.iter().all(|(_, l, t)| *l == name && *t == term.to_string())).then_some(text)
    });
    assert!(table.starts_with("NODE"), "{table}");

    // --json: one reply object per node, as the node sent it.
    let text = ok(controller(&cluster, &["leader-info", "--json"]));
    let replies: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(replies.len(), 5, "{text}");
    for reply in &replies {
        assert_eq!(reply["request"], "LEADER_INFO");
        assert_eq!(reply["key"], "LEADER");
        assert!(reply["term"].as_u64().is_some(), "{reply}");
        assert!(reply["value"].as_str().is_some_and(|l| l.starts_with("node")), "{reply}");
    }

    // Chosen nodes, case-insensitive names.
    let text = ok(controller(&cluster, &["leader-info", "Node2", "NODE4"]));
    let nodes: Vec<String> = table_rows(&text).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(nodes, ["node2", "node4"]);

    // The leader and term were checked above; from here on only agreement is, so that a
    // re-election on a loaded machine does not fail the test.
    let text = ok(controller(&cluster, &["status"]));
    assert!(text.contains("named by 5 of 5 nodes"), "{text}");
    assert!(text.contains("all 5 answering nodes are in term"), "{text}");
    let status: Value = serde_json::from_str(&ok(controller(&cluster, &["status", "--json"]))).expect("JSON");
    assert!(status["leader"].as_str().is_some_and(|l| l.starts_with("node")), "{status}");
    assert!(status["term"].as_u64().is_some_and(|t| t >= term), "{status}");
    assert_eq!(status["replies"].as_array().map(Vec::len), Some(5));
}

#[test]
fn a_python_udp_client_gets_the_leader_info_answer() {
    let cluster = TestCluster::start(5, 0, &[]);
    cluster.wait_for_leader(ELECTION);
    let script = r#"
import json, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 0))
sock.settimeout(3)
msg = {"sender_name": "Controller", "request": "LEADER_INFO", "term": None, "key": None, "value": None}
sock.sendto(json.dumps(msg).encode("utf-8"), ("127.0.0.3", int(sys.argv[1])))
data, addr = sock.recvfrom(65535)
print(data.decode("utf-8"))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &cluster.raft_port.to_string()])
        .output()
        .expect("python3 is installed");
    let text = ok(out);
    let reply: Value = serde_json::from_str(text.trim()).expect("the reply is JSON");
    assert_eq!(reply["sender_name"], "node3");
    assert_eq!(reply["request"], "LEADER_INFO");
    assert_eq!(reply["key"], "LEADER");
    assert!(reply["value"].as_str().is_some_and(|l| l.starts_with("node")), "{reply}");
    assert!(reply["term"].as_u64().is_some(), "{reply}");
}

/// A course-style Python controller that fills the fields loosely: `term` as the string
/// "NULL", a number, a numeric string or a float, `key` as a number or "NULL", request names
/// in lower or mixed case, `sender_name` "controller". Prints one JSON object of the replies.
const LOOSE_CONTROLLER: &str = r#"
import json, socket, sys, time
port, follower, old_term = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))

def send(node, msg):
    sock.sendto(json.dumps(msg).encode("utf-8"), ("127.0.0.%d" % node, port))

def ask(node, msg, request, timeout):
    # The first reply whose request is `request`, or None after `timeout` seconds.
    send(node, msg)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65535)
        except socket.timeout:
            return None
        reply = json.loads(data.decode("utf-8"))
        if reply.get("request") == request:
            return reply

def control(request, term, key=None, value=None):
    return {"sender_name": "controller", "request": request, "term": term, "key": key, "value": value}

out = {}
send(follower, control("timeout", "NULL", "NULL", "NULL"))
# Poll until the follower names itself leader in a newer term.
deadline = time.monotonic() + 10
while True:
    info = ask(follower, control("leader_info", 0), "LEADER_INFO", 0.5)
    if info and info.get("value") == "node%d" % follower and info.get("term", 0) > old_term:
        break
    if time.monotonic() > deadline:
        sys.exit("node%d did not become leader: last LEADER_INFO %r" % (follower, info))
    time.sleep(0.02)
out["leader_info"] = info
term = info["term"]
terms = ["NULL", "null", "None", "", term, str(term), float(term), "high", -1]
out["leader_info_forms"] = [ask(follower, control("Leader_Info", t), "LEADER_INFO", 2) for t in terms]
out["store"] = ask(follower, control("store", str(term), 7, "NULL"), "STORE", 5)
retrieve = {"sender_name": "CONTROLLER", "request": "Retrieve", "term": float(term)}
out["retrieve"] = ask(follower, retrieve, "RETRIEVE", 2)
print(json.dumps(out))
"#;

#[test]
fn a_loose_python_controller_is_understood() {
    let cluster = TestCluster::start(5, 0, &[]);
    let (leader, term) = cluster.wait_for_leader(ELECTION);
    let follower = (1..=5).find(|&id| id != leader).unwrap();
    let args = [cluster.raft_port.to_string(), follower.to_string(), term.to_string()];
    let out =
        Command::new("python3").args(["-c", LOOSE_CONTROLLER]).args(&args).output().expect("python3 is installed");
    let text = ok(out);
    let replies: Value = serde_json::from_str(text.trim()).expect("the script prints JSON");

    // TIMEOUT with "NULL" fields made the follower leader; a LEADER_INFO with a number term saw it.
    let name = format!("node{follower}");
    let info = &replies["leader_info"];
    assert_eq!((&info["key"], &info["value"]), (&Value::from("LEADER"), &Value::from(name.as_str())), "{info}");
    // LEADER_INFO is answered whatever the term, numbers and strings alike.
    let forms = replies["leader_info_forms"].as_array().expect("a list");
    assert_eq!(forms.len(), 9);
    for reply in forms {
        assert_eq!(reply["request"], "LEADER_INFO", "{replies}");
        assert_eq!(reply["key"], "LEADER", "{reply}");
        assert!(reply["term"].as_u64().is_some_and(|t| t > term), "{reply}");
    }
    // STORE with the key 7 committed as the key "7"; the value "NULL" is data, kept as sent.
    let store = &replies["store"];
    assert_eq!(store["request"], "STORE", "{replies}");
    assert_eq!(store["success"], true, "{store}");
    assert_eq!((&store["key"], &store["value"]), (&Value::from("7"), &Value::from("NULL")), "{store}");
    let retrieve = &replies["retrieve"];
    assert!(matches!(retrieve["key"].as_str(), Some("COMMITED_LOGS" | "COMMITTED_LOGS")), "{replies}");
    let entries: Vec<&Value> =
        retrieve["value"].as_array().expect("a list of entries").iter().filter(|e| e["Key"] == "7").collect();
    assert_eq!(entries.len(), 1, "{retrieve}");
    assert_eq!(entries[0]["Value"], "NULL", "{retrieve}");
    assert!(entries[0]["Term"].as_u64().is_some_and(|t| t > term), "{retrieve}");
}

#[test]
fn timeout_elects_the_follower_and_convert_follower_forces_a_new_election() {
    let cluster = TestCluster::start(5, 0, &[]);
    let (leader, term) = cluster.wait_for_leader(ELECTION);
    let follower = (1..=5).find(|&id| id != leader).unwrap();

    let text = ok(controller(&cluster, &["timeout", &format!("Node{follower}")]));
    assert_eq!(text.trim(), format!("sent TIMEOUT to node{follower}"));
    let (new_leader, new_term) = poll("the timed-out follower to lead", ELECTION, || {
        let running = cluster.running();
        cluster.agreed_leader(&running).filter(|&(id, t)| id == follower && t > term)
    });
    assert_eq!(new_leader, follower);

    let text = ok(controller(&cluster, &["convert-follower", &format!("node{follower}")]));
    assert_eq!(text.trim(), format!("sent CONVERT_FOLLOWER to node{follower}"));
    poll("a leader again, in a higher term", ELECTION, || {
        let running = cluster.running();
        cluster.agreed_leader(&running).filter(|&(_, t)| t > new_term)
    });
}

#[test]
fn store_then_retrieve_shows_the_entries() {
    let cluster = TestCluster::start(5, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let follower = (1..=5).find(|&id| id != leader).unwrap();

    // To the leader found with LEADER_INFO.
    let text = ok(controller(&cluster, &["store", "colour", "blue"]));
    assert!(text.contains(r#"stored "colour" = "blue""#), "{text}");
    // To a follower: its LEADER_INFO answer is followed to the leader.
    let text = ok(controller(&cluster, &["store", "size", "10", "--node", &format!("node{follower}")]));
    assert!(text.contains(&format!("leader node{leader}")), "{text}");
    // --json: the leader's acknowledgement as sent.
    let ack: Value = serde_json::from_str(&ok(controller(&cluster, &["store", "shape", "round", "--json"]))).unwrap();
    assert_eq!(ack["request"], "STORE");
    assert_eq!(ack["key"], "shape");

    let text = ok(controller(&cluster, &["retrieve"]));
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["TERM", "KEY", "VALUE"], "{text}");
    let kv: Vec<(&str, &str)> = rows[1..].iter().map(|r| (r[1], r[2])).collect();
    assert_eq!(kv, [("colour", "blue"), ("size", "10"), ("shape", "round")], "{text}");

    let reply: Value =
        serde_json::from_str(&ok(controller(&cluster, &["retrieve", "--json", "--node", &format!("node{follower}")])))
            .unwrap();
    assert_eq!(reply["request"], "RETRIEVE");
    assert!(matches!(reply["key"].as_str(), Some("COMMITED_LOGS" | "COMMITTED_LOGS")), "{reply}");
    let keys: Vec<&str> = reply["value"].as_array().unwrap().iter().filter_map(|e| e["Key"].as_str()).collect();
    assert_eq!(keys, ["colour", "size", "shape"]);
}

#[test]
fn shutdown_stops_the_node_cleanly_and_a_silent_node_fails_the_command() {
    let mut cluster = TestCluster::start(5, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(ELECTION);
    let follower = (1..=5).find(|&id| id != leader).unwrap();
    let name = format!("node{follower}");

    assert_eq!(ok(controller(&cluster, &["shutdown", &name])).trim(), format!("sent SHUTDOWN to {name}"));
    let status = cluster.wait_exit(follower, ELECTION);
    assert!(status.success(), "{name} exited with {status}");
    let log = cluster.log_text(follower);
    assert!(!log.contains(" ERROR ") && !log.contains("panicked"), "{name} logged errors:\n{log}");

    let out = controller(&cluster, &["leader-info", &name, "--timeout-ms", "300"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&format!("no reply from {name} within 300 ms")), "{}", stderr(&out));
    assert!(stdout(&out).contains("no reply"), "{}", stdout(&out));

    // The rest still answer; the table marks the silent node and the command fails.
    let out = controller(&cluster, &["status", "--timeout-ms", "300"]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("named by 4 of 5 nodes"), "{}", stdout(&out));
    // A majority is left, so the cluster still commits.
    ok(controller(&cluster, &["store", "after", "shutdown"]));
}

#[test]
fn without_nodes_every_command_that_waits_fails_clearly() {
    // Nothing listens on this port.
    let port = common::free_port(3);
    let out = controller_at(3, port, &["leader-info", "--timeout-ms", "200"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no reply from node1, node2, node3 within 200 ms"), "{}", stderr(&out));
    let out = controller_at(3, port, &["store", "k", "v", "--timeout-ms", "200"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no reply"), "{}", stderr(&out));
    let out = controller_at(3, port, &["retrieve", "--node", "node2", "--timeout-ms", "200"]);
    assert!(stderr(&out).contains("no reply from node2"), "{}", stderr(&out));

    let out = controller_at(3, port, &["timeout", "node4"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("node4 is not a member"), "{}", stderr(&out));
    let out = controller_at(3, port, &["shutdown", "server1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a node name"), "{}", stderr(&out));
}
