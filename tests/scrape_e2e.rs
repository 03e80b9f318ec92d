//! `labctl scrape` end to end: the real binary against a locally served copy of the shop, the
//! real RabbitMQ on 127.0.0.1:5672 and a private pure-ftpd.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use amiquip::{Connection, QueueDeclareOptions, QueueDeleteOptions};
use common::site::Site;
use labctl::scrape::process::{ProcessedFile, Product};

const RABBITMQ: &str = "amqp://guest:guest@127.0.0.1:5672";

/// Every valid item of the three saved pages, in page order, with its price.
const BOOKS: [(&str, f64); 9] = [
    ("A Light in the Attic", 51.77),
    ("Tipping the Velvet", 53.74),
    ("Soumission", 50.10),
    ("Sharp Objects", 47.82),
    ("Set Me Free", 17.46),
    ("Rip it Up and Start Again", 35.02),
    ("Mesaerion: The Best Science Fiction Stories 1800-1849", 37.59),
    ("Libertarianism for Beginners", 51.33),
    ("It's Only the Himalayas", 45.17),
];

/// A finished `labctl scrape` run.
struct Run {
    output: Output,
    dir: tempfile::TempDir,
}

impl Run {
    fn ok(&self) -> bool {
        self.output.status.success()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn out_path(&self) -> PathBuf {
        self.dir.path().join("out.json")
    }

    fn out(&self) -> ProcessedFile {
        let text = std::fs::read_to_string(self.out_path()).expect("the --out file");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("--out is not a processed file ({e}):\n{text}"))
    }

    /// Asserts a clean failure: a non-zero exit and `message` on stderr, no panic.
    fn assert_fails_with(&self, message: &str) {
        let stderr = self.stderr();
        assert!(!self.ok(), "the run should fail; stderr:\n{stderr}");
        assert!(stderr.contains(message), "stderr should say {message:?}:\n{stderr}");
        assert!(!stderr.contains("panicked"), "a panic reached the user:\n{stderr}");
    }
}

/// Runs `labctl scrape ARGS` in a fresh directory (so no config file is read), with `env`
/// added, and waits for it to exit, up to 60 s.
fn scrape(args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(common::BIN);
    command.arg("scrape").args(args).current_dir(dir.path());
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("LABCTL_")) {
        command.env_remove(name);
    }
    command.envs(env.iter().copied()).env("RUST_LOG", "info").stdin(Stdio::null());
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn labctl scrape");
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || done_tx.send(child.wait_with_output()));
    let output = match done_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => output.expect("wait for labctl scrape"),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("labctl scrape {args:?} did not finish within 60 s");
        }
    };
    Run { output, dir }
}

fn titles(file: &ProcessedFile) -> Vec<&str> {
    file.items.iter().map(|i| i.title.as_str()).collect()
}

/// A TCP port on 127.0.0.1 with nothing listening.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn follows_every_page_politely_and_writes_the_processed_file() {
    let site = Site::books();
    let started = chrono::Utc::now();
    let url = site.url("/catalogue/page-1.html");
    let run = scrape(&["--url", &url, "--pages", "10", "--delay-ms", "150", "--rate", "1.2", "--out", "out.json"], &[]);
    assert!(run.ok(), "{}", run.stderr());
    assert_eq!(run.stdout(), "", "with --out nothing goes to stdout");

    let file = run.out();
    assert_eq!(titles(&file), BOOKS.map(|(t, _)| t));
    assert_eq!(file.items.iter().map(|i| i.price).collect::<Vec<_>>(), BOOKS.map(|(_, p)| p));
    assert_eq!((file.count, file.total, file.total_converted), (9, 390.0, 467.99));
    assert_eq!((file.currency.as_str(), file.converted_currency.as_str(), file.rate), ("GBP", "EUR", 1.2));
    assert_eq!(file.source, url);
    let first = &file.items[0];
    assert_eq!(
        first,
        &Product {
            title: "A Light in the Attic".into(),
            price: 51.77,
            currency: "GBP".into(),
            converted_price: Some(62.12),
            converted_currency: Some("EUR".into()),
            availability: Some("In stock".into()),
            rating: Some(3),
            link: Some(site.url("/catalogue/a-light-in-the-attic_1000/index.html")),
            scraped_at: Some(file.scraped_at.clone()),
        }
    );
    let at = chrono::DateTime::parse_from_rfc3339(&file.scraped_at).expect("RFC 3339");
    assert!(file.scraped_at.ends_with('Z'), "UTC: {}", file.scraped_at);
    assert!(at >= started - chrono::Duration::seconds(1) && at <= chrono::Utc::now());

    let stderr = run.stderr();
    for reason in [
        "item 2 (\"The Requiem Red\") skipped: missing price",
        "item 3 (\"The Dirty Little Secrets of Getting Your Dream Job\") skipped: unparsable price \"£N/A\"",
        "item 4 skipped: missing title",
        "item 6 (\"Olio\") skipped: price \"$23.88\" is in USD",
    ] {
        assert!(stderr.contains(reason), "stderr should report {reason:?}:\n{stderr}");
    }

    let requests = site.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/catalogue/page-1.html", "/catalogue/page-2.html", "/catalogue/page-3.html"]);
    for r in &requests {
        let agent = r.user_agent.as_deref().unwrap_or("");
        assert!(agent.starts_with("labctl/"), "User-Agent {agent:?} should name labctl");
    }
    for pair in requests.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(150), "only {gap:?} between two requests");
    }
}

#[test]
fn pages_caps_the_crawl_and_the_price_filter_applies_to_stdout() {
    let site = Site::books();
    let url = site.url("/catalogue/page-1.html");
    let run = scrape(
        &["--url", &url, "--pages", "2", "--delay-ms", "0", "--min-price", "40", "--max-price", "52"],
        &[("LABCTL_SCRAPE_TO_CURRENCY", "USD"), ("LABCTL_SCRAPE_RATE", "1.1")],
    );
    assert!(run.ok(), "{}", run.stderr());
    assert_eq!(site.paths(), ["/catalogue/page-1.html", "/catalogue/page-2.html"]);
    let file: ProcessedFile = serde_json::from_str(&run.stdout()).expect("the processed file on stdout");
    // Pages 1–2 hold six valid items; 51.77, 50.10 and 47.82 are within [40, 52].
    assert_eq!(titles(&file), ["A Light in the Attic", "Soumission", "Sharp Objects"]);
    assert_eq!((file.min_price, file.max_price), (Some(40.0), Some(52.0)));
    // 51.77 × 1.1 = 56.947 → 56.95; 50.10 × 1.1 = 55.11; 47.82 × 1.1 = 52.602 → 52.60.
    let converted: Vec<Option<f64>> = file.items.iter().map(|i| i.converted_price).collect();
    assert_eq!(converted, [Some(56.95), Some(55.11), Some(52.6)]);
    assert_eq!((file.count, file.total, file.total_converted), (3, 149.69, 164.66));
    assert_eq!(file.converted_currency, "USD");
}

#[test]
fn a_page_that_fails_for_a_moment_is_retried() {
    let site = Site::books();
    site.fail("/catalogue/page-2.html", 503, 2);
    let run = scrape(&["--url", &site.url("/catalogue/page-1.html"), "--delay-ms", "0", "--out", "out.json"], &[]);
    assert!(run.ok(), "{}", run.stderr());
    assert_eq!(run.out().count, 9);
    let page_2 = site.paths().iter().filter(|p| p.as_str() == "/catalogue/page-2.html").count();
    assert_eq!(page_2, 3, "two 503s, then the page");
    assert!(run.stderr().contains("HTTP status 503; trying again"), "{}", run.stderr());
}

#[test]
fn a_run_with_nothing_usable_fails_with_the_reason() {
    let unreachable = format!("http://127.0.0.1:{}/catalogue/page-1.html", closed_port());
    scrape(&["--url", &unreachable, "--retries", "1"], &[]).assert_fails_with("cannot read the first page");

    let site = Site::empty();
    scrape(&["--url", &site.url("/missing.html")], &[]).assert_fails_with("HTTP status 404");

    site.page("/bad.html", r#"<article class="product_pod"><h3><a title="No Price">x</a></h3></article>
        <article class="product_pod"><h3><a title="Bad Price">x</a></h3><div class="product_price"><p class="price_color">soon</p></div></article>"#);
    let run = scrape(&["--url", &site.url("/bad.html")], &[]);
    run.assert_fails_with("every one of the 2 items found was bad");
    assert!(run.stderr().contains("missing price") && run.stderr().contains("unparsable price \"soon\""));

    site.page("/other-shop.html", "<div class=\"card\">A laptop, $300</div>");
    scrape(&["--url", &site.url("/other-shop.html")], &[]).assert_fails_with("no item on the first page");

    scrape(&["--price-selector", "p:first-child"], &[]).assert_fails_with("invalid selector");
}

/// Whether RabbitMQ answers on 127.0.0.1:5672; a loud skip (or a failure under CI) if not.
fn rabbitmq_up() -> bool {
    if std::net::TcpStream::connect_timeout(&"127.0.0.1:5672".parse().unwrap(), Duration::from_secs(2)).is_ok() {
        return true;
    }
    let message = "RabbitMQ does not answer on 127.0.0.1:5672 (start it: rabbitmq-server -detached)";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}");
    }
    let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("\n!!! SKIPPED: {message}\n").as_bytes());
    false
}

/// A queue name no other test run uses.
fn unique_queue(what: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("labctl_test_{what}_{}_{nanos}", std::process::id())
}

/// Takes every message off `queue` (acknowledging them) until `expected` arrived or 10 s passed.
fn drain(queue: &str, expected: usize) -> Vec<amiquip::Delivery> {
    let mut connection = Connection::insecure_open(RABBITMQ).expect("connect to RabbitMQ");
    let channel = connection.open_channel(None).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < expected && Instant::now() < deadline {
        match channel.basic_get(queue, false).expect("basic.get") {
            Some(get) => {
                let delivery = get.delivery.clone();
                get.ack(&channel).unwrap();
                got.push(delivery);
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    // Nothing more than expected.
    if let Some(extra) = channel.basic_get(queue, true).unwrap() {
        got.push(extra.delivery);
    }
    got
}

/// Deletes the test queue when the test ends, passed or not.
struct QueueGuard(String);

impl Drop for QueueGuard {
    fn drop(&mut self) {
        if let Ok(mut connection) = Connection::insecure_open(RABBITMQ) {
            if let Ok(channel) = connection.open_channel(None) {
                let _ = channel.queue_delete(self.0.as_str(), QueueDeleteOptions::default());
            }
        }
    }
}

#[test]
fn publish_sends_exactly_the_valid_items_as_persistent_confirmed_messages() {
    if !rabbitmq_up() {
        return;
    }
    let site = Site::books();
    let queue = QueueGuard(unique_queue("publish"));
    let run = scrape(
        &["--url", &site.url("/catalogue/page-1.html"), "--delay-ms", "0", "--out", "out.json", "--publish"],
        &[("LABCTL_QUEUE", &queue.0), ("LABCTL_AMQP_URL", RABBITMQ)],
    );
    assert!(run.ok(), "{}", run.stderr());
    assert!(run.stderr().contains("published 9 items"), "{}", run.stderr());
    let file = run.out();

    let messages = drain(&queue.0, file.items.len());
    let bodies: Vec<Product> =
        messages.iter().map(|m| serde_json::from_slice(&m.body).expect("a product JSON body")).collect();
    assert_eq!(bodies, file.items, "the queue holds exactly the file's items, in order");
    let mut ids = std::collections::HashSet::new();
    for m in &messages {
        let p = &m.properties;
        assert_eq!(p.content_type().as_deref(), Some("application/json"));
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        let id = p.message_id().clone().expect("a message_id");
        assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert!(ids.insert(id), "message ids are unique");
        assert_eq!(m.routing_key, queue.0);
    }

    // The queue is durable: declaring it as transient is refused.
    let mut connection = Connection::insecure_open(RABBITMQ).unwrap();
    let channel = connection.open_channel(None).unwrap();
    let Err(err) = channel.queue_declare(queue.0.as_str(), QueueDeclareOptions::default()) else {
        panic!("the queue should be durable")
    };
    assert!(err.to_string().contains("406") || err.to_string().contains("PRECONDITION"), "{err}");
}

#[test]
fn items_the_broker_refuses_fail_the_run_with_the_count() {
    if !rabbitmq_up() {
        return;
    }
    // An existing queue that holds two messages and refuses (nacks) further publishes.
    let queue = QueueGuard(unique_queue("full"));
    let mut arguments = amiquip::FieldTable::new();
    arguments.insert("x-max-length".into(), amiquip::AmqpValue::LongInt(2));
    arguments.insert("x-overflow".into(), amiquip::AmqpValue::LongString("reject-publish".into()));
    let mut connection = Connection::insecure_open(RABBITMQ).unwrap();
    let channel = connection.open_channel(None).unwrap();
    let options = QueueDeclareOptions { durable: true, arguments, ..QueueDeclareOptions::default() };
    channel.queue_declare(queue.0.as_str(), options).expect("declare the bounded queue");

    let site = Site::books();
    let run = scrape(
        &["--url", &site.url("/catalogue/page-1.html"), "--pages", "1", "--publish", "--queue", &queue.0],
        &[("LABCTL_AMQP_URL", RABBITMQ)],
    );
    run.assert_fails_with("refused 2 of 4 items (negative confirm), first \"Soumission\"");
    assert_eq!(drain(&queue.0, 2).len(), 2);
}

#[test]
fn publishing_to_a_dead_broker_fails_without_showing_the_password() {
    let site = Site::books();
    let dead = format!("amqp://guest:s3cret@127.0.0.1:{}", closed_port());
    let run = scrape(
        &["--url", &site.url("/catalogue/page-1.html"), "--pages", "1", "--publish", "--out", "out.json"],
        &[("LABCTL_AMQP_URL", &dead)],
    );
    run.assert_fails_with("cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:");
    assert!(!run.stderr().contains("s3cret"), "{}", run.stderr());
    assert_eq!(run.out().count, 4, "the file is written before publishing");
}

fn ftp_env(server: &common::ftp::FtpServer) -> Vec<(&'static str, String)> {
    vec![
        ("LABCTL_FTP_HOST", "127.0.0.1".to_string()),
        ("LABCTL_FTP_PORT", server.port.to_string()),
        ("LABCTL_FTP_USER", server.user.clone()),
        ("LABCTL_FTP_PASSWORD", server.password.clone()),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn upload_ftp_puts_the_same_file_on_the_server_and_replaces_it_whole() {
    let Some(server) = common::ftp::start_ftp() else { return };
    let site = Site::books();
    let env = ftp_env(&server);
    let remote = server.root.join("processed_products.json");

    let url = site.url("/catalogue/page-1.html");
    let run = scrape(&["--url", &url, "--delay-ms", "0", "--out", "out.json", "--upload-ftp"], &env_refs(&env));
    assert!(run.ok(), "{}\n{}", run.stderr(), server.log_text());
    assert_eq!(std::fs::read(&remote).unwrap(), std::fs::read(run.out_path()).unwrap());
    assert_eq!(run.out().count, 9);

    // A second run replaces the file; no temporary file is left behind.
    let run = scrape(&["--url", &url, "--pages", "1", "--out", "out.json", "--upload-ftp"], &env_refs(&env));
    assert!(run.ok(), "{}", run.stderr());
    assert_eq!(std::fs::read(&remote).unwrap(), std::fs::read(run.out_path()).unwrap());
    assert_eq!(run.out().count, 4);
    assert_eq!(files_in(&server.root), ["processed_products.json"]);

    // Another remote path, from the flag.
    let run = scrape(
        &["--url", &url, "--pages", "1", "--out", "out.json", "--upload-ftp", "--ftp-path", "books.json"],
        &env_refs(&env),
    );
    assert!(run.ok(), "{}", run.stderr());
    assert_eq!(std::fs::read(server.root.join("books.json")).unwrap(), std::fs::read(run.out_path()).unwrap());
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn a_wrong_ftp_password_fails_with_the_servers_answer() {
    let Some(server) = common::ftp::start_ftp() else { return };
    let site = Site::books();
    let mut env = ftp_env(&server);
    env.retain(|(k, _)| *k != "LABCTL_FTP_PASSWORD");
    env.push(("LABCTL_FTP_PASSWORD", "not-the-password".into()));
    let run = scrape(
        &["--url", &site.url("/catalogue/page-1.html"), "--pages", "1", "--upload-ftp", "--out", "out.json"],
        &env_refs(&env),
    );
    run.assert_fails_with("failed while logging in");
    assert!(run.stderr().contains("530"), "{}", run.stderr());
    assert!(!run.stderr().contains("not-the-password"));
    assert!(files_in(&server.root).is_empty());

    let dead = [("LABCTL_FTP_PORT", closed_port().to_string())];
    let mut env = ftp_env(&server);
    env.retain(|(k, _)| *k != "LABCTL_FTP_PORT");
    env.extend(dead.iter().map(|(k, v)| (*k, v.clone())));
    let run = scrape(
        &["--url", &site.url("/catalogue/page-1.html"), "--pages", "1", "--upload-ftp", "--out", "out.json"],
        &env_refs(&env),
    );
    run.assert_fails_with("failed while connecting");
}
