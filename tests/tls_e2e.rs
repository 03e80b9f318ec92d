//! TLS end to end, with real processes and a CA made at test time: an HTTPS cluster takes writes
//! through a follower's 307 and through the console relay; the manager stores through an HTTPS
//! leader that announced itself over HTTPS; and a certificate of another CA, or one for another
//! name, is refused by the console relay, the manager and the leader's announcement, with a log
//! line saying so and nothing stored.

mod common;

use std::time::Duration;

use common::manager::ManagerProcess;
use common::rabbit::{self, TestQueue};
use common::tls::{call, client, node_ips, product_titles, Pki};
use common::{http_call, poll, TestCluster};

const WAIT: Duration = Duration::from_secs(30);

fn product(title: &str) -> String {
    serde_json::json!({ "title": title, "price": 12.5, "currency": "GBP", "availability": "In stock", "rating": 3 })
        .to_string()
}

fn base(cluster: &TestCluster, id: u32) -> String {
    format!("https://{}", cluster.http_addr(id))
}

fn names(ips: &[String]) -> Vec<&str> {
    ips.iter().map(String::as_str).collect()
}

/// Arguments for a node serving `identity`, verifying its peers against `ca`.
fn node_args(identity: &common::tls::Identity, ca: &std::path::Path, extra: &[String]) -> Vec<String> {
    let mut args = identity.args();
    args.push(format!("--tls-ca={}", ca.display()));
    args.extend(extra.iter().cloned());
    args
}

fn start(nodes: u32, args: &[String]) -> TestCluster {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestCluster::start(nodes, 0, &args)
}

#[test]
fn an_https_cluster_takes_writes_through_the_redirect_and_the_console_relay() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let ips = node_ips(3);
    let nodes = pki.issue(&ca, "nodes", &names(&ips));
    let cluster = start(3, &node_args(&nodes, &ca.pem, &[]));
    let (leader, _) = cluster.wait_for_leader(WAIT);
    let follower = if leader == 1 { 2 } else { 1 };
    let https = client(&ca.pem);

    // Plain HTTP gets no answer: the port speaks TLS only.
    assert!(http_call(cluster.http_addr(follower), "GET", "/healthz", &[], "").is_none_or(|r| r.status != 200));

    // /status names the leader by an https URL.
    let status = poll("the follower's /status to name the leader", WAIT, || {
        let status = call(&https, "GET", &format!("{}/status", base(&cluster, follower)), None).ok()?.json();
        status["leader_url"].is_string().then_some(status)
    });
    assert_eq!(status["scheme"], "https");
    assert_eq!(status["leader_url"], base(&cluster, leader));
    assert!(status["peers"].as_array().unwrap().iter().all(|p| p["url"].as_str().unwrap().starts_with("https://")));

    // A write to a follower is redirected to the leader's https URL, and taken there.
    let body = product("over https");
    let reply = call(&https, "POST", &format!("{}/api/products", base(&cluster, follower)), Some(&body)).unwrap();
    assert_eq!(reply.status, 307, "{}", reply.body);
    let location = reply.location.expect("a Location");
    assert_eq!(location, format!("{}/api/products", base(&cluster, leader)));
    let reply = call(&https, "POST", &location, Some(&body)).unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);

    // Through the console relay, which reaches the leader over https and verifies it.
    let relayed = format!("{}/console/nodes/node{leader}/api/products", base(&cluster, follower));
    let reply = call(&https, "POST", &relayed, Some(&product("through the relay"))).unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);

    for id in 1..=3 {
        poll(&format!("node{id} to hold both products"), WAIT, || {
            let titles = product_titles(&https, &base(&cluster, id))?;
            (titles.contains(&"over https".to_string()) && titles.contains(&"through the relay".to_string()))
                .then_some(())
        });
    }
}

#[test]
fn the_console_relay_refuses_a_certificate_of_another_ca_or_for_another_name() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let rogue_ca = pki.ca("rogue-ca");
    let ips = node_ips(2);

    // The nodes serve certificates of a CA they were not told to trust.
    let rogue = pki.issue(&rogue_ca, "rogue", &names(&ips));
    let cluster = start(2, &node_args(&rogue, &ca.pem, &[]));
    let (leader, _) = cluster.wait_for_leader(WAIT);
    let other = 3 - leader;
    let https = client(&rogue_ca.pem);
    let relayed = format!("{}/console/nodes/node{leader}/api/products", base(&cluster, other));
    let reply = call(&https, "POST", &relayed, Some(&product("relayed to a rogue"))).unwrap();
    assert_eq!(reply.status, 502, "{}", reply.body);
    let error = reply.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains(&format!("node{leader}")) && error.contains("UnknownIssuer"), "{error}");
    poll("the relay's log line", WAIT, || {
        cluster
            .log_text(other)
            .contains(&format!("console relay refused {}/api/products", base(&cluster, leader)))
            .then_some(())
    });
    // Nothing reached the leader: its own list (asked directly) has no such product.
    let titles = product_titles(&https, &base(&cluster, leader)).expect("the leader lists its products");
    assert!(titles.is_empty(), "{titles:?}");
    drop(cluster);

    // Signed by the trusted CA, but for node1's address only.
    let narrow = pki.issue(&ca, "narrow", &["127.0.0.1"]);
    let cluster = start(2, &node_args(&narrow, &ca.pem, &[]));
    let https = client(&ca.pem);
    let reply = call(&https, "GET", &format!("{}/console/nodes/node2/status", base(&cluster, 1)), None).unwrap();
    assert_eq!(reply.status, 502, "{}", reply.body);
    let error = reply.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("not valid for name"), "{error}");
    // node1's own address is covered: relayed to itself, the same request works.
    let reply = call(&https, "GET", &format!("{}/console/nodes/node1/status", base(&cluster, 1)), None).unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn the_manager_stores_through_an_https_leader_and_refuses_another_ca() {
    let Some(url) = rabbit::shared_broker() else { return };
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let rogue_ca = pki.ca("rogue-ca");
    let ips = node_ips(3);
    // One certificate for every node and the manager (127.0.0.1 is node1's and the manager's).
    let certified = pki.issue(&ca, "lab", &names(&ips));
    let https = client(&ca.pem);

    let manager_port = rabbit::free_tcp_port();
    let manager_url = format!("https://127.0.0.1:{manager_port}");
    let cluster = start(3, &node_args(&certified, &ca.pem, &[format!("--manager-url={manager_url}")]));
    let queue = TestQueue::new(&url, "tls");
    let http_port = cluster.raft_port.to_string();
    let ca_arg = format!("--tls-ca={}", ca.pem.display());
    let mut args = vec!["--queue", &queue.name, "--nodes", "3", "--http-port", &http_port, "--https", &ca_arg];
    let identity = certified.args();
    args.extend(identity.iter().map(String::as_str));
    let manager = ManagerProcess::start_at("tls", manager_port, &args, &[("LABCTL_AMQP_URL", &url)], Some(&ca.pem));

    // The leader announced itself over https, verified against the CA.
    let (leader, _) = cluster.wait_for_leader(WAIT);
    poll("the leader's announcement", WAIT, || {
        let known = call(&https, "GET", &format!("{manager_url}/leader"), None).ok()?.json();
        (known["leader"]["name"] == format!("node{leader}")).then_some(())
    });
    let told = format!("told the manager at {manager_url}/leader");
    poll("the leader's log line", WAIT, || cluster.log_text(leader).contains(&told).then_some(()));

    let items = rabbit::products("tls", 0..20);
    rabbit::publish(&url, &queue.name, &items);
    let expected: Vec<String> = (0..20).map(|i| format!("tls book {i}")).collect();
    for id in 1..=3 {
        poll(&format!("node{id} to hold the 20 items once each"), Duration::from_secs(60), || {
            let mut titles = product_titles(&https, &base(&cluster, id))?;
            titles.sort();
            let mut want = expected.clone();
            want.sort();
            (titles == want).then_some(())
        });
    }

    // A manager told to trust another CA refuses every node, and stores nothing.
    let rogue_queue = TestQueue::new(&url, "tls-rogue");
    let rogue_ca_arg = format!("--tls-ca={}", rogue_ca.pem.display());
    let rogue_args =
        ["--queue", &rogue_queue.name, "--nodes", "3", "--http-port", &http_port, "--https", &rogue_ca_arg];
    let mut refusing = ManagerProcess::start("tls-rogue", &rogue_args, &[("LABCTL_AMQP_URL", &url)]);
    rabbit::publish(&url, &rogue_queue.name, &rabbit::products("refused", 0..3));
    refusing.wait_for_log("TLS refused", WAIT);
    assert!(refusing.log_text().contains("UnknownIssuer"), "{}", refusing.log_text());
    assert_eq!(refusing.counter("stored"), 0);
    assert!(refusing.terminate().success());
    for id in 1..=3 {
        let titles = product_titles(&https, &base(&cluster, id)).expect("the node lists its products");
        assert!(titles.iter().all(|t| !t.starts_with("refused")), "node{id} stored a refused item: {titles:?}");
    }
    drop(manager);
}

#[test]
fn a_leader_refuses_to_announce_itself_to_a_manager_of_another_ca() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let rogue_ca = pki.ca("rogue-ca");
    let node = pki.issue(&ca, "node", &["127.0.0.1"]);
    let rogue = pki.issue(&rogue_ca, "rogue-manager", &["127.0.0.1"]);
    // The manager's broker is down: only its HTTP service matters here.
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/%2f", rabbit::free_tcp_port());
    let port = rabbit::free_tcp_port();
    let manager_args = rogue.args();
    let manager_args: Vec<&str> = manager_args.iter().map(String::as_str).collect();
    let manager =
        ManagerProcess::start_at("rogue", port, &manager_args, &[("LABCTL_AMQP_URL", &dead)], Some(&rogue_ca.pem));
    let cluster = start(1, &node_args(&node, &ca.pem, &[format!("--manager-url=https://127.0.0.1:{port}")]));
    let (leader, _) = cluster.wait_for_leader(WAIT);
    poll("the refused announcement in the log", WAIT, || {
        cluster.log_text(leader).contains("refused the manager at https://127.0.0.1").then_some(())
    });
    assert!(cluster.log_text(leader).contains("UnknownIssuer"), "{}", cluster.log_text(leader));
    let known = call(&client(&rogue_ca.pem), "GET", &format!("https://127.0.0.1:{port}/leader"), None).unwrap().json();
    assert_eq!(known["leader"], serde_json::Value::Null, "the manager heard of no leader");
    drop(manager);
}

#[test]
fn a_missing_or_bad_pem_file_stops_node_manager_and_probe_at_start_naming_it() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let good = pki.issue(&ca, "good", &["127.0.0.1"]);
    let other = pki.issue(&ca, "other", &["127.0.0.1"]);
    let junk = pki.path("junk.pem");
    std::fs::write(&junk, "not PEM at all").unwrap();
    let missing = pki.path("missing.pem");
    let data = pki.path("data");
    let show = |p: &std::path::Path| p.display().to_string();
    let cases: Vec<(Vec<String>, String, &str)> = vec![
        (
            vec![format!("--tls-cert={}", show(&missing)), format!("--tls-key={}", show(&good.key))],
            show(&missing),
            "cannot read TLS certificate",
        ),
        (
            vec![format!("--tls-cert={}", show(&junk)), format!("--tls-key={}", show(&good.key))],
            show(&junk),
            "no PEM certificate",
        ),
        (
            vec![format!("--tls-cert={}", show(&good.cert)), format!("--tls-key={}", show(&junk))],
            show(&junk),
            "no PEM private key",
        ),
        (
            vec![format!("--tls-cert={}", show(&good.cert)), format!("--tls-key={}", show(&other.key))],
            show(&other.key),
            "does not go with the certificate",
        ),
        (vec![format!("--tls-cert={}", show(&good.cert))], show(&good.cert), "needs its private key"),
        (vec![format!("--tls-ca={}", show(&junk))], show(&junk), "CA file"),
    ];
    for (tls, file, why) in cases {
        for role in ["node", "manager"] {
            let mut command = std::process::Command::new(common::BIN);
            command.arg(role).args(&tls).env_remove("LABCTL_CONFIG").env("LABCTL_DATA_DIR", &data);
            if role == "node" {
                command.args(["--id", "1", "--nodes", "1", "--raft-port=0", "--http-port=0"]);
            } else {
                command.args(["--listen=127.0.0.1:0", "--amqp-url=amqp://guest:guest@127.0.0.1:1/%2f"]);
            }
            let out = command.output().expect("run labctl");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{role} {tls:?} started");
            assert!(stderr.contains(&file) && stderr.contains(why), "{role} {tls:?}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
            let key = std::fs::read_to_string(&other.key).unwrap();
            let body = key.lines().nth(1).unwrap();
            assert!(!stderr.contains(body), "a key's contents were printed: {stderr}");
        }
    }
    // A node told the cluster serves https, without a certificate of its own; and the reverse.
    let node = |args: &[String]| {
        std::process::Command::new(common::BIN)
            .args(["node", "--id", "1", "--nodes", "1", "--raft-port=0", "--http-port=0"])
            .args(args)
            .env_remove("LABCTL_CONFIG")
            .env("LABCTL_DATA_DIR", &data)
            .output()
            .unwrap()
    };
    let out = node(&["--https".to_string()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("this node has no certificate"));
    let mut args = good.args();
    args.push("--https=false".into());
    let out = node(&args);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("https is off for the cluster"));

    // The probe, with a CA file that holds no certificate.
    let out = std::process::Command::new(common::BIN)
        .args(["health", "https://127.0.0.1:1/healthz", &format!("--tls-ca={}", show(&junk))])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(&show(&junk)) && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
}

#[test]
fn the_health_probe_verifies_the_node_against_the_ca() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let rogue_ca = pki.ca("rogue-ca");
    let node = pki.issue(&ca, "node", &["127.0.0.1"]);
    let cluster = start(1, &node_args(&node, &ca.pem, &[]));
    let url = format!("{}/healthz", base(&cluster, 1));
    let probe = |ca: &std::path::Path| {
        std::process::Command::new(common::BIN)
            .args(["health", &url, &format!("--tls-ca={}", ca.display())])
            .env_remove("LABCTL_CONFIG")
            .output()
            .unwrap()
    };
    let ok = probe(&ca.pem);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("200 "));
    let refused = probe(&rogue_ca.pem);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("UnknownIssuer"), "{stderr}");
}

/// Runs `labctl scrape ARGS` with only `env` as configuration: its exit status and output.
fn scrape(args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(common::BIN);
    command.arg("scrape").args(["--delay-ms", "0", "--out", "out.json"]).args(args).current_dir(dir.path());
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("LABCTL_")) {
        command.env_remove(name);
    }
    let out = command.envs(env.iter().map(|(k, v)| (k, v))).output().expect("run labctl scrape");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_scraper_uploads_and_the_manager_downloads_over_explicit_ftps_verified_against_the_ca() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let rogue_ca = pki.ca("rogue-ca");
    let ftp_cert = pki.issue(&ca, "ftp", &["127.0.0.1"]);
    let Some(server) = common::ftp::start_ftp_with(Some((ftp_cert.cert.clone(), ftp_cert.key.clone()))) else {
        return;
    };
    let site = common::site::Site::books();
    let env = vec![
        ("LABCTL_FTP_HOST", "127.0.0.1".to_string()),
        ("LABCTL_FTP_PORT", server.port.to_string()),
        ("LABCTL_FTP_USER", server.user.clone()),
        ("LABCTL_FTP_PASSWORD", server.password.clone()),
        ("LABCTL_FTP_INTERVAL", "300ms".to_string()),
    ];
    let listing = site.url("/catalogue/page-1.html");
    let uploaded = server.root.join("processed_products.json");

    // The server requires TLS: a plain session is refused, an FTPS one trusting another CA too.
    let (ok, output) = scrape(&["--url", &listing, "--pages", "1", "--upload-ftp"], &env);
    assert!(!ok && !uploaded.exists(), "a plain upload to a TLS-only server: {output}");
    let rogue = format!("--tls-ca={}", rogue_ca.pem.display());
    let (ok, output) = scrape(&["--url", &listing, "--pages", "1", "--upload-ftp", "--ftp-tls", &rogue], &env);
    assert!(!ok, "{output}");
    assert!(output.contains("securing the session (AUTH TLS)") && output.contains("UnknownIssuer"), "{output}");
    assert!(!uploaded.exists());
    let trusted = format!("--tls-ca={}", ca.pem.display());
    let (ok, output) = scrape(&["--url", &listing, "--upload-ftp", "--ftp-tls", &trusted], &env);
    assert!(ok, "{output}");
    assert!(uploaded.exists());

    // The manager downloads it over FTPS and sends it to the leader; one trusting another CA
    // logs why and sends nothing.
    let cluster = start(1, &[]);
    cluster.wait_for_leader(WAIT);
    let port = cluster.raft_port.to_string();
    let mut manager_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/%2f", rabbit::free_tcp_port());
    manager_env.push(("LABCTL_AMQP_URL", &dead));
    let refusing =
        ManagerProcess::start("ftps-rogue", &["--nodes", "1", "--http-port", &port, "--ftp-tls", &rogue], &manager_env);
    refusing.wait_for_log("cannot secure the session with 127.0.0.1 (AUTH TLS)", WAIT);
    assert!(refusing.log_text().contains("UnknownIssuer"), "{}", refusing.log_text());
    assert_eq!(refusing.counter("uploads"), 0);
    drop(refusing);
    assert_eq!(common::manager::product_count(cluster.http_addr(1)), Some(0));
    let manager =
        ManagerProcess::start("ftps", &["--nodes", "1", "--http-port", &port, "--ftp-tls", &trusted], &manager_env);
    poll("the file's nine books on the node", WAIT, || {
        common::manager::product_count(cluster.http_addr(1)).filter(|&n| n == 9)
    });
    assert_eq!(manager.counter("uploads"), 1);
    assert!(manager.log_text().contains("over ftps (explicit, AUTH TLS)"));
}
