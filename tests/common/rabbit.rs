//! RabbitMQ for tests: the machine's shared broker on 127.0.0.1:5672 (each test with queues of
//! its own), or a private broker a test may stop and start ([`PrivateRabbit`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use amiquip::{AmqpProperties, AmqpValue, Confirm, Connection, Publish, QueueDeclareOptions};
use serde_json::Value;

use super::poll;

/// The shared broker every test may use, with queue names of its own.
pub const SHARED_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// True when CI=true: a missing service fails the test instead of skipping it.
pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Says loudly, past the test harness's capture, that a test did not run.
pub fn skipped(what: &str) {
    let message = format!("\n!!! SKIPPED: {what}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), message.as_bytes());
}

/// The shared broker's URL when it answers; None (and a SKIPPED message) when it does not,
/// outside CI.
pub fn shared_broker() -> Option<String> {
    match Connection::insecure_open(SHARED_URL) {
        Ok(connection) => {
            let _ = connection.close();
            Some(SHARED_URL.to_string())
        }
        Err(e) if ci() => panic!("RabbitMQ at 127.0.0.1:5672 is needed by this test (CI=true): {e}"),
        Err(e) => {
            skipped(&format!("RabbitMQ at 127.0.0.1:5672 does not answer ({e}); start it (rabbitmq-server -detached)"));
            None
        }
    }
}

/// Queue names no other test or run uses; deleted (with their dead-letter queue) on drop.
pub struct TestQueue {
    pub url: String,
    pub name: String,
    pub dead: String,
}

impl TestQueue {
    pub fn new(url: &str, test: &str) -> TestQueue {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let name = format!("labctl-test.{test}.{}.{nanos}", std::process::id());
        TestQueue { url: url.to_string(), dead: format!("{name}.dead"), name }
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        if let Ok(mut connection) = Connection::insecure_open(&self.url) {
            if let Ok(channel) = connection.open_channel(None) {
                for queue in [&self.name, &self.dead] {
                    let _ = channel.queue_delete(queue.as_str(), Default::default());
                }
            }
            let _ = connection.close();
        }
    }
}

/// Publishes each `(message_id, body)` persistently to the durable `queue` and waits for
/// RabbitMQ's confirms, as the scraper does.
pub fn publish(url: &str, queue: &str, messages: &[(Option<String>, Vec<u8>)]) {
    let mut connection = Connection::insecure_open(url).expect("connect to RabbitMQ");
    let channel = connection.open_channel(None).unwrap();
    channel.queue_declare(queue, QueueDeclareOptions { durable: true, ..Default::default() }).unwrap();
    channel.enable_publisher_confirms().unwrap();
    let confirms = channel.listen_for_publisher_confirms().unwrap();
    for (id, body) in messages {
        let mut properties =
            AmqpProperties::default().with_content_type("application/json".into()).with_delivery_mode(2);
        if let Some(id) = id {
            properties = properties.with_message_id(id.clone());
        }
        channel.basic_publish("", Publish::with_properties(body, queue, properties)).unwrap();
    }
    let mut confirmed = 0u64;
    let total = messages.len() as u64;
    while confirmed < total {
        match confirms.recv_timeout(Duration::from_secs(30)).expect("publisher confirms") {
            Confirm::Ack(p) => confirmed = confirmed.max(p.delivery_tag),
            Confirm::Nack(p) => panic!("RabbitMQ refused message {}", p.delivery_tag),
        }
    }
    connection.close().unwrap();
}

/// Product JSON bodies with stable message ids, numbered `from..to`.
pub fn products(tag: &str, range: std::ops::Range<u32>) -> Vec<(Option<String>, Vec<u8>)> {
    range
        .map(|i| {
            let body = serde_json::json!({
                "title": format!("{tag} book {i}"),
                "price": 10.0 + f64::from(i) / 100.0,
                "currency": "GBP",
                "converted_price": 11.5 + f64::from(i) / 100.0,
                "converted_currency": "EUR",
                "availability": "In stock",
                "rating": (i % 5 + 1) as i32,
                "link": format!("http://books.local/{tag}/{i}.html"),
                "scraped_at": "2026-01-02T03:04:05Z",
            });
            (Some(format!("{tag}|{i}")), serde_json::to_vec(&body).unwrap())
        })
        .collect()
}

/// Messages waiting in `queue` (not counting those delivered and not yet acknowledged).
pub fn queue_len(url: &str, queue: &str) -> Option<u32> {
    let mut connection = Connection::insecure_open(url).ok()?;
    let channel = connection.open_channel(None).ok()?;
    let count = channel.queue_declare_passive(queue).ok()?.declared_message_count();
    let _ = connection.close();
    count
}

/// A message taken off a queue.
#[derive(Debug)]
pub struct Taken {
    pub body: Value,
    pub message_id: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl Taken {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Takes (and acknowledges) every message waiting in `queue`.
pub fn drain(url: &str, queue: &str) -> Vec<Taken> {
    let mut connection = Connection::insecure_open(url).expect("connect to RabbitMQ");
    let channel = connection.open_channel(None).unwrap();
    let mut taken = Vec::new();
    while let Some(get) = channel.basic_get(queue, true).expect("basic.get") {
        let headers = get
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    AmqpValue::LongString(s) => s,
                    AmqpValue::LongInt(n) => n.to_string(),
                    other => format!("{other:?}"),
                };
                (k, v)
            })
            .collect();
        taken.push(Taken {
            body: serde_json::from_slice(&get.delivery.body).unwrap_or(Value::Null),
            message_id: get.delivery.properties.message_id().clone(),
            headers,
        });
    }
    let _ = connection.close();
    taken
}

/// A RabbitMQ node of a test's own, on a free port with its data in a temporary directory, so
/// the test can stop and start it without disturbing the shared broker. Management plugin off.
pub struct PrivateRabbit {
    pub port: u16,
    pub dir: PathBuf,
    node_name: String,
    dist_port: u16,
    child: Option<Child>,
}

/// The server script run directly, not through the Debian wrapper that switches user.
const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

impl PrivateRabbit {
    /// Starts it and waits until it takes connections; None (SKIPPED) outside CI when RabbitMQ
    /// is not installed.
    pub fn start(test: &str) -> Option<PrivateRabbit> {
        if !Path::new(RABBITMQ_SERVER).exists() {
            if ci() {
                panic!("{RABBITMQ_SERVER} is needed by this test (CI=true)");
            }
            skipped(&format!("{RABBITMQ_SERVER} is missing; install rabbitmq-server to run this test"));
            return None;
        }
        let port = free_tcp_port();
        let dist_port = free_tcp_port();
        let dir = std::env::temp_dir().join(format!("labctl-rabbit-{test}-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let mut rabbit =
            PrivateRabbit { port, node_name: format!("labctl-test-{port}@localhost"), dist_port, dir, child: None };
        rabbit.start_again();
        Some(rabbit)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node on its existing data (after [`stop`](Self::stop)) and waits for it.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the private RabbitMQ is running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.out")).unwrap();
        let child = Command::new(RABBITMQ_SERVER)
            .env("RABBITMQ_NODENAME", &self.node_name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", self.dir.join("advanced.config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start rabbitmq-server");
        self.child = Some(child);
        let url = self.url();
        poll("the private RabbitMQ to take connections", Duration::from_secs(60), || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("the private RabbitMQ exited ({status}):\n{}", self.log_text());
                }
            }
            let connection = Connection::insecure_open(&url).ok()?;
            let _ = connection.close();
            Some(())
        });
    }

    /// Stops the node as an operator would (SIGTERM) and waits until it has exited.
    pub fn stop(&mut self) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).ok().and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            // SAFETY: kill(2) on the broker this test started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            poll("the private RabbitMQ to exit", Duration::from_secs(30), || {
                // SAFETY: signal 0 only checks that the process exists.
                (unsafe { libc::kill(pid, 0) } != 0).then_some(())
            });
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.join("pid"));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default()
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("private RabbitMQ files kept in {}", self.dir.display());
        }
    }
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
