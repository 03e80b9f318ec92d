//! `labctl cluster`: a supervised local cluster that reports its leader and stops on SIGINT.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{control, poll, udp_request, BIN};
use labctl::proto::Request;
use serde_json::Value;

/// The `labctl cluster` process, killed on drop (its nodes follow it).
struct Supervisor {
    child: Child,
    dir: PathBuf,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("cluster output kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn leader_of(raft_port: u16, id: u32) -> Option<(u64, Option<String>)> {
    let addr = format!("127.0.0.{id}:{raft_port}").parse().unwrap();
    let reply =
        udp_request(addr, &control(Request::LeaderInfo, None, Value::Null).encode(), Duration::from_millis(300))?;
    Some((reply.term?, reply.value.as_str().map(str::to_string)))
}

#[test]
fn cluster_starts_reports_its_leader_and_stops_on_sigint() {
    let raft_port = common::free_port(3);
    let dir = std::env::temp_dir().join(format!("labctl-cluster-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let stderr = std::fs::File::create(dir.join("cluster.log")).unwrap();
    let child = Command::new(BIN)
        .args(["cluster", "--nodes", "3", "--restart"])
        .arg(format!("--raft-port={raft_port}"))
        .arg(format!("--http-port={}", common::free_port(3)))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "info")
        .env_remove("LABCTL_CONFIG")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn labctl cluster");
    let mut cluster = Supervisor { child, dir: dir.clone() };

    let (lines_tx, lines) = mpsc::channel();
    let stdout = cluster.child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let up = lines.recv_timeout(Duration::from_secs(20)).expect("the cluster reports its leader");
    let rest = up.strip_prefix("cluster of 3 nodes up; ").unwrap_or_else(|| panic!("unexpected line {up:?}"));
    let (leader, term) = rest.split_once(" is LEADER for term ").unwrap_or_else(|| panic!("unexpected line {up:?}"));
    let term: u64 = term.parse().unwrap();
    assert!(labctl::proto::parse_node_name(leader).is_some(), "{up}");

    // The nodes are really there, each with its data under the one directory.
    let (t, l) = leader_of(raft_port, 1).expect("node1 answers");
    assert!(t >= term && l.is_some());
    for id in 1..=3 {
        assert!(dir.join("data").join(format!("node{id}")).is_dir(), "no data directory for node{id}");
    }

    // A node that exits on its own is reported, the others keep running, and with --restart it
    // comes back.
    let log_path = dir.join("cluster.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let victim = if leader == "node3" { 2 } else { 3 };
    let _ = udp_request(
        format!("127.0.0.{victim}:{raft_port}").parse().unwrap(),
        &control(Request::Shutdown, None, Value::Null).encode(),
        Duration::from_millis(1),
    );
    poll("the supervisor to report the exit", Duration::from_secs(5), || {
        log().contains(&format!("node{victim} exited unexpectedly (exit code 0)")).then_some(())
    });
    let other = (1..=3).find(|&id| id != victim).unwrap();
    assert!(leader_of(raft_port, other).is_some(), "node{other} keeps running");
    poll("the node to be restarted and answer", Duration::from_secs(10), || leader_of(raft_port, victim));

    // SIGINT: every node is shut down and the supervisor exits 0.
    let pid = cluster.child.id() as libc::pid_t;
    // SAFETY: signalling our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = poll("the cluster to stop", deadline - Instant::now(), || cluster.child.try_wait().ok().flatten());
    assert!(status.success(), "labctl cluster exited with {status}\n{}", log());
    let mut rest = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        rest.push(line);
    }
    assert!(rest.iter().any(|l| l == "cluster stopped"), "{rest:?}");
    for id in 1..=3 {
        assert!(leader_of(raft_port, id).is_none(), "node{id} still answers after the cluster stopped");
        assert!(log().contains(&format!("node{id} stopped")), "{}", log());
    }
}

#[test]
fn a_secure_cluster_makes_its_secret_and_answers_only_signed_requests() {
    let raft_port = common::free_port(3);
    let dir = std::env::temp_dir().join(format!("labctl-secure-cluster-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new(BIN)
        .args(["cluster", "--nodes", "3", "--secure"])
        .arg(format!("--raft-port={raft_port}"))
        .arg(format!("--http-port={}", common::free_port(3)))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("LABCTL_CONFIG")
        .env_remove("LABCTL_CLUSTER_SECRET")
        .env_remove("LABCTL_CLUSTER_SECRET_FILE")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("cluster.log")).unwrap())
        .spawn()
        .expect("spawn labctl cluster");
    let mut cluster = Supervisor { child, dir: dir.clone() };
    let mut stdout = BufReader::new(cluster.child.stdout.take().unwrap());
    let mut up = String::new();
    stdout.read_line(&mut up).unwrap();
    assert!(up.starts_with("cluster of 3 nodes up; "), "{up:?}");
    let secret = dir.join("data").join("cluster.secret");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the secret is readable by its owner only");
    assert!(std::fs::read_to_string(&secret).unwrap().trim().len() >= 32);
    let controller = |secret_file: Option<&std::path::Path>| {
        let mut command = Command::new(BIN);
        command
            .args(["controller", "status", "--nodes", "3", "--timeout-ms", "500"])
            .arg(format!("--raft-port={raft_port}"))
            .env_remove("LABCTL_CONFIG")
            .env_remove("LABCTL_CLUSTER_SECRET")
            .env_remove("LABCTL_CLUSTER_SECRET_FILE");
        if let Some(path) = secret_file {
            command.env("LABCTL_CLUSTER_SECRET_FILE", path);
        }
        command.output().unwrap()
    };
    let signed = controller(Some(&secret));
    assert!(signed.status.success(), "{}", String::from_utf8_lossy(&signed.stderr));
    let unsigned = controller(None);
    assert!(!unsigned.status.success());
    let stderr = String::from_utf8_lossy(&unsigned.stderr);
    assert!(stderr.contains("give the controller its secret"), "{stderr}");
    // Ctrl-C: the supervisor stops its nodes with signed SHUTDOWNs.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(cluster.child.id() as libc::pid_t, libc::SIGINT) };
    let status = poll("the cluster to stop", Duration::from_secs(15), || cluster.child.try_wait().ok().flatten());
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(dir.join("cluster.log")).unwrap();
    assert!(log.contains("stopped (SHUTDOWN)"), "the nodes were not stopped by SHUTDOWN:\n{log}");
}
