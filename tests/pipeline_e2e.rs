//! The whole pipeline with real parts: `labctl scrape` against a locally served copy of the shop,
//! the real RabbitMQ, a private pure-ftpd, `labctl manager`, and a 5-node loopback cluster of
//! `labctl node`. What the scraper found must be stored exactly once on every node, by the queue
//! and by the FTP file; FTP failures, a restart of the FTP server among them, are logged and the
//! manager goes on.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::ftp::{start_ftp, FtpServer};
use common::manager::{assert_stored_once_everywhere, ManagerProcess};
use common::rabbit::{self, TestQueue};
use common::site::{Site, BOOKS};
use common::{poll, TestCluster};

const NODES: u32 = 5;

fn books(titles: &[&str]) -> BTreeSet<String> {
    titles.iter().map(|t| t.to_string()).collect()
}

/// Runs `labctl scrape ARGS` with only `env` as configuration and waits (up to 60 s) for it to
/// succeed.
fn scrape(args: &[&str], env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(common::BIN);
    command.arg("scrape").args(["--delay-ms", "0"]).args(args).current_dir(dir.path());
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("LABCTL_")) {
        command.env_remove(name);
    }
    let log = dir.path().join("scrape.log");
    let out = std::fs::File::create(&log).unwrap();
    command.envs(env.iter().copied()).stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out);
    let mut child = command.spawn().expect("spawn labctl scrape");
    let status = poll("labctl scrape to finish", Duration::from_secs(60), || child.try_wait().ok().flatten());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "labctl scrape {args:?} failed ({status}):\n{text}");
}

/// The manager's FTP settings for `server`, all from the environment as in Docker.
fn ftp_env(server: &FtpServer, password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("LABCTL_FTP_HOST", "127.0.0.1".into()),
        ("LABCTL_FTP_PORT", server.port.to_string()),
        ("LABCTL_FTP_USER", server.user.clone()),
        ("LABCTL_FTP_PASSWORD", password.into()),
        ("LABCTL_FTP_INTERVAL", "300ms".into()),
    ]
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A RabbitMQ URL where nothing listens: for tests of the FTP side only.
fn no_broker() -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", rabbit::free_tcp_port())
}

#[test]
fn scraped_items_go_through_the_queue_and_the_manager_to_every_node_once() {
    let Some(url) = rabbit::shared_broker() else { return };
    let queue = TestQueue::new(&url, "pipeline");
    let site = Site::books();
    let port = common::free_port(NODES);
    let manager = ManagerProcess::start(
        "pipeline",
        &["--queue", &queue.name, "--nodes", "5", "--http-port", &port.to_string()],
        &[("LABCTL_AMQP_URL", &url)],
    );
    let cluster = TestCluster::start(NODES, port, &["--manager-url", &manager.url()]);

    scrape(
        &["--url", &site.url("/catalogue/page-1.html"), "--publish", "--out", "out.json"],
        &[("LABCTL_AMQP_URL", &url), ("LABCTL_QUEUE", &queue.name)],
    );
    let all: Vec<u32> = (1..=NODES).collect();
    assert_stored_once_everywhere(&cluster, &all, &books(&BOOKS));
    poll("the manager to count 9 stored", Duration::from_secs(10), || (manager.counter("stored") == 9).then_some(()));
    assert_eq!(rabbit::queue_len(&url, &queue.name), Some(0), "every message is acknowledged");
}

#[test]
fn the_processed_file_goes_by_ftp_to_every_node_once_and_is_not_sent_again_unchanged() {
    let Some(server) = start_ftp() else { return };
    let site = Site::books();
    let port = common::free_port(NODES);
    let broker = no_broker();
    let mut env = ftp_env(&server, &server.password);
    env.push(("LABCTL_AMQP_URL", broker));
    let manager = ManagerProcess::start("ftp", &["--nodes", "5", "--http-port", &port.to_string()], &refs(&env));
    let cluster = TestCluster::start(NODES, port, &["--manager-url", &manager.url()]);

    let scrape_env = ftp_env(&server, &server.password);
    let listing = site.url("/catalogue/page-1.html");
    scrape(&["--url", &listing, "--upload-ftp"], &refs(&scrape_env));
    let all: Vec<u32> = (1..=NODES).collect();
    assert_stored_once_everywhere(&cluster, &all, &books(&BOOKS));
    assert_eq!(manager.counter("uploads"), 1);
    // Before the scraper's file arrived, the manager found none: logged errors, not failures.
    let errors_before = manager.counter("ftp_errors");
    // Downloaded again and again, the same file is not sent again.
    poll("three downloads of the unchanged file", Duration::from_secs(20), || {
        (manager.counter("ftp_unchanged") >= 3).then_some(())
    });
    assert_eq!(manager.counter("uploads"), 1);

    // A new scrape, of the first page only and items over £50, replaces the file: it is sent.
    scrape(&["--url", &listing, "--pages", "1", "--min-price", "50", "--upload-ftp"], &refs(&scrape_env));
    poll("the second upload", Duration::from_secs(20), || (manager.counter("uploads") == 2).then_some(()));
    let mut expected: Vec<String> = BOOKS.iter().map(|t| t.to_string()).collect();
    // Page 1 items over 50: A Light in the Attic (51.77), Tipping the Velvet (53.74), Soumission (50.10).
    expected.extend(["A Light in the Attic", "Tipping the Velvet", "Soumission"].map(String::from));
    for id in 1..=NODES {
        let addr = cluster.http_addr(id);
        poll(&format!("node{id} to hold 12 products"), Duration::from_secs(30), || {
            common::manager::product_count(addr).filter(|&n| n == 12)
        });
        let mut titles: Vec<String> = common::manager::products_on(addr)
            .unwrap()
            .iter()
            .map(|p| p["title"].as_str().unwrap().to_string())
            .collect();
        titles.sort();
        expected.sort();
        assert_eq!(titles, expected, "node{id}: each file imported once");
    }
    assert_eq!(manager.counter("ftp_errors"), errors_before, "{}", manager.log_text());
}

#[test]
fn a_wrong_ftp_password_or_a_missing_file_is_logged_and_the_manager_goes_on() {
    let Some(server) = start_ftp() else { return };
    let port = common::free_port(NODES);
    let mut env = ftp_env(&server, "not-the-password");
    env.push(("LABCTL_AMQP_URL", no_broker()));
    let mut refused = ManagerProcess::start("ftp-refused", &[], &refs(&env));
    poll("two failed logins", Duration::from_secs(20), || (refused.counter("ftp_errors") >= 2).then_some(()));
    assert!(refused.log_text().contains("login as testuser refused"), "{}", refused.log_text());
    assert!(!refused.log_text().contains("not-the-password"), "the password is never logged");
    assert!(refused.is_running());
    assert!(refused.terminate().success());

    // The right password, but no file yet: logged, tried again, and imported once it appears.
    let mut env = ftp_env(&server, &server.password);
    env.push(("LABCTL_AMQP_URL", no_broker()));
    let manager =
        ManagerProcess::start("ftp-missing", &["--nodes", "5", "--http-port", &port.to_string()], &refs(&env));
    let cluster = TestCluster::start(NODES, port, &["--manager-url", &manager.url()]);
    poll("two failed downloads", Duration::from_secs(20), || (manager.counter("ftp_errors") >= 2).then_some(()));
    assert!(manager.log_text().contains("cannot retrieve processed_products.json"), "{}", manager.log_text());

    write_processed_file(&server.root.join("processed_products.json"), &["Late Book One", "Late Book Two"]);
    let all: Vec<u32> = (1..=NODES).collect();
    assert_stored_once_everywhere(&cluster, &all, &books(&["Late Book One", "Late Book Two"]));
    assert_eq!(manager.counter("uploads"), 1);
}

#[test]
fn the_manager_goes_on_while_the_ftp_server_is_down_and_imports_the_file_it_finds_after_a_restart() {
    let Some(mut server) = start_ftp() else { return };
    let file = server.root.join("processed_products.json");
    write_processed_file(&file, &["Before The Restart"]);
    let port = common::free_port(NODES);
    let mut env = ftp_env(&server, &server.password);
    env.push(("LABCTL_AMQP_URL", no_broker()));
    let mut manager =
        ManagerProcess::start("ftp-restart", &["--nodes", "5", "--http-port", &port.to_string()], &refs(&env));
    let cluster = TestCluster::start(NODES, port, &["--manager-url", &manager.url()]);
    let all: Vec<u32> = (1..=NODES).collect();
    assert_stored_once_everywhere(&cluster, &all, &books(&["Before The Restart"]));
    poll("the first upload", Duration::from_secs(10), || (manager.counter("uploads") == 1).then_some(()));

    let errors_before = manager.counter("ftp_errors");
    server.stop();
    poll("two failed connections", Duration::from_secs(20), || {
        (manager.counter("ftp_errors") >= errors_before + 2).then_some(())
    });
    let refused = format!("cannot connect to 127.0.0.1:{}", server.port);
    assert!(manager.log_text().contains(&refused), "{}", manager.log_text());
    assert!(manager.is_running(), "a stopped FTP server does not stop the manager");

    // Back on the same port, with a new file: the manager takes it up at its next download.
    write_processed_file(&file, &["After The Restart"]);
    server.start_again();
    assert_stored_once_everywhere(&cluster, &all, &books(&["Before The Restart", "After The Restart"]));
    poll("the second upload", Duration::from_secs(10), || (manager.counter("uploads") == 2).then_some(()));
}

/// Writes a processed file as the scraper does (interfaces: the object with `items`).
fn write_processed_file(path: &Path, titles: &[&str]) {
    let items: Vec<serde_json::Value> = titles
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"title": t, "price": 10.0 + i as f64, "currency": "GBP"}))
        .collect();
    let total: f64 = (0..titles.len()).map(|i| 10.0 + i as f64).sum();
    let file = serde_json::json!({
        "source": "http://books.local/",
        "scraped_at": "2026-01-02T03:04:05Z",
        "currency": "GBP",
        "converted_currency": "EUR",
        "rate": 1.0,
        "count": titles.len(),
        "total": total,
        "total_converted": total,
        "items": items,
    });
    // Written aside and renamed, so the manager never downloads half a file.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, serde_json::to_vec(&file).unwrap()).unwrap();
    std::fs::rename(&partial, path).unwrap();
}
