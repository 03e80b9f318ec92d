//! Every example in config/ is a file labctl really loads: parsed by the config loader (unknown
//! keys are errors) and resolved into valid settings, so an example cannot drift from the binary.

use std::path::PathBuf;
use std::process::Command;

use labctl::config::{Cluster, ClusterArgs, FileConfig, RaftArgs, RaftTiming};

fn examples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("config/")
        .map(|e| e.expect("config/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_loads_and_resolves() {
    let files = examples();
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for expected in ["labctl.toml", "docker.toml"] {
        assert!(names.iter().any(|n| n == expected), "config/{expected} is missing: {names:?}");
    }
    for path in &files {
        let file = FileConfig::load(Some(path)).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        Cluster::resolve(&ClusterArgs::default(), &file.cluster).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        RaftTiming::resolve(&RaftArgs::default(), &file.raft).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// The binary itself accepts each file (`--config FILE`), as a user would pass it.
#[test]
fn the_binary_accepts_every_example() {
    for path in examples() {
        let out = Command::new(env!("CARGO_BIN_EXE_labctl"))
            .arg("--config")
            .arg(&path)
            .args(["health", "http://127.0.0.1:9/", "--timeout-ms", "200"])
            .output()
            .expect("run labctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The probe of a closed port fails; a bad file would fail earlier, naming the file.
        assert!(stderr.contains("cannot GET http://127.0.0.1:9/"), "{}: {stderr}", path.display());
    }
}

#[test]
fn the_docker_example_places_nodes_by_compose_dns() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/docker.toml");
    let file = FileConfig::load(Some(&path)).unwrap();
    let cluster = Cluster::resolve(&ClusterArgs::default(), &file.cluster).unwrap();
    assert_eq!(cluster.nodes, 5);
    assert_eq!(
        (1..=5).map(|id| cluster.host_of(id)).collect::<Vec<_>>(),
        ["node1", "node2", "node3", "node4", "node5"]
    );
    assert_eq!(cluster.http_addr(3), "node3:8000");
    assert_eq!(cluster.raft_port, 5555);
    assert_eq!(file.node.bind_host.as_deref(), Some("0.0.0.0"));
    assert_eq!(file.node.data_dir, Some(PathBuf::from("/data")));
    // No database URL: SQLite per node unless the shared-database override sets one.
    assert_eq!(file.node.database_url, None);
}
