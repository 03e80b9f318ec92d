//! The compose lab for real: docker-compose.yml as `docker compose up --build` runs it, with real
//! containers of the image the Dockerfile builds, and the lab's third-party services replaced by
//! the stand-ins of tests/docker/compose.stand-ins.yml (no image registry is needed).
//!
//! One test, in steps, so that the image is built once (the costly part); every wait polls with
//! a deadline. The project has a name of its own and publishes on 127.0.1.N and 127.0.1.100, on
//! ports free at the start, so it never meets a lab a user runs; it is taken down with its
//! volumes at the end, also when a step fails (after the containers' last log lines).
//!
//! 1. `up --build`: five node containers elect exactly one leader; the image runs as uid 10001;
//!    the nodes, the manager, RabbitMQ and the FTP server become healthy.
//! 2. The `controller` service drives them: `status`, `timeout nodeN` (nodeN leads), `store`,
//!    `retrieve`.
//!    Then a course controller in Python, in a container of the lab's network, from its port
//!    5555 (unsigned, allowed by CONTROL_ALLOW): every node answers it, and its STORE commits.
//! 3. Writes through the leader's published HTTP port, as the lab's admin (its password read
//!    from the volume lab-secrets), land on every node. A write to a follower's published port
//!    with `curl -L`, as the README shows it, follows the 307 to the leader's published address.
//!    The pipeline: `labctl scrape --publish` on the host into the lab's RabbitMQ, then a
//!    processed file on the FTP server: the manager carries both to the leader, every item once.
//! 4. `docker compose kill` of the leader: another leads, no acknowledged write is lost, and
//!    `controller status` shows the four and names the one it cannot reach; started again, the
//!    node follows and has every write.
//! 5. `docker network disconnect` of the leader: the rest elect a leader and take writes;
//!    connected again (with its alias nodeN), the cluster has one leader and the node catches up.
//! 6. `down` without -v, then `up`: the volumes keep the data and the secrets.
//! 7. The shared-database mode (docker-compose.shared-db.yml, PostgreSQL): a second project
//!    elects a leader, and a write is read back from every node.
//!
//! Needs a Docker engine, Compose v2 and the images of scripts/docker-env: without them the test
//! is skipped with a message, and fails under `CI=true`.

mod common;
#[path = "common/lab.rs"]
mod lab;
#[path = "common/tools.rs"]
mod tools;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::site::BOOKS;
use lab::{poll, Addresses, Engine, Lab, COURSE_CONTROLLER, STAND_IN_FILE};
use serde_json::{json, Value};

const PROJECT: &str = "labctl-compose-lab";
const SHARED_DB_PROJECT: &str = "labctl-compose-lab-shared-db";
/// The image the test builds: not the lab's labctl:local, which a user's lab may run.
const IMAGE: &str = "labctl-test/labctl:compose-lab";
const NODES: [u32; 5] = [1, 2, 3, 4, 5];
const NODE_IP_PREFIX: &str = "127.0.1.";
const PUBLISH_IP: &str = "127.0.1.100";
/// The lab's settings besides the addresses: the test's image; unsigned control requests from
/// Docker's private networks (the course controller's container is in the lab's); the FTP file
/// fetched every 2 s.
const LAB_ENV: [(&str, &str); 3] = [
    ("LABCTL_IMAGE", IMAGE),
    ("CONTROL_ALLOW", "172.16.0.0/12,192.168.0.0/16,10.0.0.0/8"),
    ("MANAGER_FTP_INTERVAL", "2s"),
];
/// The titles of the processed file put on the FTP server.
const FTP_TITLES: [&str; 2] = ["Fetched by FTP one", "Fetched by FTP two"];

/// Containers start, elect and become healthy within this (health checks every 5 s; RabbitMQ's
/// start period is 30 s).
const START: Duration = Duration::from_secs(180);
/// A new leader after a failure, a node catching up, a write reaching every node.
const SETTLE: Duration = Duration::from_secs(60);

fn name(id: u32) -> String {
    format!("node{id}")
}

fn id_of(name: &str) -> Option<u32> {
    name.strip_prefix("node")?.parse().ok().filter(|id| NODES.contains(id))
}

/// A node's own `/status` on its published port (no account needed).
fn status(addr: SocketAddr) -> Option<Value> {
    let reply = common::http_call(addr, "GET", "/status", &[], "")?;
    (reply.status == 200).then(|| serde_json::from_str(&reply.body).ok()).flatten()
}

/// The leader all of `among` agree on, by their `/status`: every one answers, all are in one
/// term and name one leader, which is among them and the only one whose role is LEADER.
fn agreed_leader(lab: &Lab, among: &[u32], seen: &mut String) -> Option<(u32, u64)> {
    let mut views = BTreeMap::new();
    for &id in among {
        let Some(s) = status(lab.addresses.http(id)) else {
            *seen = format!("{} does not answer /status", name(id));
            return None;
        };
        views.insert(id, (s["role"].as_str().unwrap_or("").to_string(), s["term"].as_u64(), s["leader"].clone()));
    }
    *seen = format!("{views:?}");
    let (_, term, leader) = views.values().next()?.clone();
    let leader = id_of(leader.as_str()?)?;
    let agree = views.values().all(|(_, t, l)| *t == term && l.as_str() == Some(name(leader).as_str()));
    let leaders: Vec<u32> = views.iter().filter(|(_, (role, _, _))| role == "LEADER").map(|(id, _)| *id).collect();
    (agree && leaders == [leader]).then_some((leader, term?))
}

fn wait_for_leader(lab: &Lab, among: &[u32], what: &str) -> (u32, u64) {
    poll(what, SETTLE, |seen| agreed_leader(lab, among, seen))
}

fn wait_healthy(lab: &Lab, services: &[&str], timeout: Duration) {
    poll(&format!("{services:?} to be healthy"), timeout, |seen| {
        let states: Vec<(String, String)> = services.iter().map(|s| (s.to_string(), lab.health(s))).collect();
        *seen = format!("{states:?}");
        states.iter().all(|(_, h)| h == "healthy").then_some(())
    })
}

/// `controller status --json`, once it names a leader all five nodes agree on.
fn controller_status(lab: &Lab) -> Value {
    poll("`controller status` to name a leader of all five nodes", SETTLE, |seen| {
        let (code, stdout, stderr) = lab.controller(&["status", "--json"]);
        *seen = format!("exit {code:?}: {stdout}{stderr}");
        let summary: Value = serde_json::from_str(stdout.trim()).ok()?;
        (code == Some(0) && summary["named_by"] == 5 && summary["no_reply"] == json!([])).then_some(summary)
    })
}

/// HTTP as the lab's admin, with HTTP Basic, on the nodes' published ports.
struct Admin {
    authorization: String,
    /// Every product a node acknowledged (201): id → title.
    acknowledged: BTreeMap<i64, String>,
}

impl Admin {
    fn new(password: &str) -> Admin {
        use base64ct::Encoding;
        let credentials = base64ct::Base64::encode_string(format!("admin:{password}").as_bytes());
        Admin { authorization: format!("Basic {credentials}"), acknowledged: BTreeMap::new() }
    }

    /// Creates a product through the leader among `among`, as often as it takes within the
    /// deadline: a leader just elected may not have made the admin account yet, and a leader
    /// may change meanwhile. The Idempotency-Key makes a repeat change nothing.
    fn create_product(&mut self, lab: &Lab, among: &[u32], title: &str) -> i64 {
        let body = json!({"title": title, "price": 12.5, "currency": "GBP"}).to_string();
        let id = poll(&format!("the leader to acknowledge the product {title:?}"), SETTLE, |seen| {
            let (leader, _) = agreed_leader(lab, among, seen)?;
            let headers = [
                ("Authorization", self.authorization.as_str()),
                ("Content-Type", "application/json"),
                ("Idempotency-Key", title),
            ];
            let reply = common::http_call(lab.addresses.http(leader), "POST", "/api/products", &headers, &body);
            *seen = format!("{}: {reply:?}", name(leader));
            let reply = reply?;
            (reply.status == 201).then(|| reply.json()["id"].as_i64()).flatten()
        });
        self.acknowledged.insert(id, title.to_string());
        id
    }

    /// Node `id`'s own copy of product `product`: its title, or None while it has none.
    fn product_on(&self, lab: &Lab, id: u32, product: i64) -> Option<String> {
        let headers = [("Authorization", self.authorization.as_str())];
        let reply =
            common::http_call(lab.addresses.http(id), "GET", &format!("/api/products/{product}"), &headers, "")?;
        (reply.status == 200).then(|| reply.json()["title"].as_str().map(str::to_string)).flatten()
    }

    /// Waits until each of `nodes` has every acknowledged product, read from its own database.
    fn everywhere(&self, lab: &Lab, nodes: &[u32], what: &str) {
        poll(what, SETTLE, |seen| {
            for &node in nodes {
                for (product, title) in &self.acknowledged {
                    let found = self.product_on(lab, node, *product);
                    if found.as_ref() != Some(title) {
                        *seen = format!("{} has product {product} as {found:?}, not {title:?}", name(node));
                        return None;
                    }
                }
            }
            Some(())
        })
    }
}

impl Admin {
    /// How many products node `id` holds with each title (the first page of 100).
    fn titles_on(&self, lab: &Lab, id: u32) -> Option<BTreeMap<String, usize>> {
        let headers = [("Authorization", self.authorization.as_str())];
        let reply = common::http_call(lab.addresses.http(id), "GET", "/api/products?limit=100", &headers, "")?;
        if reply.status != 200 {
            return None;
        }
        let body = reply.json();
        let items = body["data"].as_array()?.clone();
        let mut titles = BTreeMap::new();
        for item in items {
            *titles.entry(item["title"].as_str()?.to_string()).or_default() += 1;
        }
        Some(titles)
    }

    /// Waits until every node holds each of `titles` exactly once.
    fn once_everywhere(&self, lab: &Lab, titles: &[&str], what: &str) {
        poll(what, SETTLE, |seen| {
            for id in NODES {
                let held = self.titles_on(lab, id)?;
                let wrong: Vec<_> = titles.iter().filter(|t| held.get(**t) != Some(&1)).collect();
                if !wrong.is_empty() {
                    *seen = format!("{} holds {wrong:?} not exactly once", name(id));
                    return None;
                }
            }
            Some(())
        })
    }
}

/// The README's way of writing to a follower from the host: `curl -L` (with
/// `--location-trusted`, so that the credentials follow the redirect). (HTTP status, body.)
fn curl_write(addr: SocketAddr, password: &str, body: &str) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--location-trusted", "-X", "POST", "-u", &format!("admin:{password}")])
        .args(["-H", "Content-Type: application/json", "-d", body, "-w", "\n%{http_code}"])
        .arg(format!("http://{addr}/api/products"))
        .output()
        .expect("curl is installed (scripts/test-env)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    assert!(out.status.success(), "curl failed: {}{text}", String::from_utf8_lossy(&out.stderr));
    (code.to_string(), body.to_string())
}

/// The processed file as the scraper writes it, with `titles`.
fn processed_file(titles: &[&str]) -> String {
    let items: Vec<Value> = titles.iter().map(|t| json!({"title": t, "price": 10.0, "currency": "GBP"})).collect();
    json!({
        "source": "http://books.local/",
        "scraped_at": "2026-01-02T03:04:05Z",
        "currency": "GBP",
        "converted_currency": "EUR",
        "rate": 1.0,
        "count": titles.len(),
        "total": 10.0 * titles.len() as f64,
        "total_converted": 10.0 * titles.len() as f64,
        "items": items,
    })
    .to_string()
}

fn others(than: u32) -> Vec<u32> {
    NODES.iter().copied().filter(|id| *id != than).collect()
}

#[test]
fn the_compose_lab_runs_for_real() {
    let Some(engine) = Engine::find("the_compose_lab_runs_for_real") else { return };
    let addresses = Addresses::free(NODE_IP_PREFIX, PUBLISH_IP);
    let files = ["docker-compose.yml", STAND_IN_FILE];
    let mut lab = Lab::new(&engine, PROJECT, &files, addresses, &LAB_ENV);

    // 1. Built once, started; five nodes and one leader.
    let began = Instant::now();
    lab.up(&["--build"]);
    let returned = began.elapsed();
    let (leader, term) = wait_for_leader(&lab, &NODES, "five nodes to elect one leader");
    eprintln!(
        "compose lab: `up --build -d` returned after {:.1} s (the image build included); {} led in term {term} \
         {:.1} s after `up` began",
        returned.as_secs_f64(),
        name(leader),
        began.elapsed().as_secs_f64()
    );
    let image = &lab.inspect("node1")["Config"]["Image"];
    assert_eq!(image, IMAGE);
    // Only the named volumes of docker-compose.yml: nothing a `down` would leave behind.
    assert_eq!(lab.anonymous_volumes(), Vec::<String>::new(), "anonymous volumes");
    for id in NODES {
        let uid = lab.compose_ok(&["exec", "-T", &name(id), "id", "-u"]);
        assert_eq!(uid.trim(), "10001", "{} runs as uid {uid}", name(id));
    }
    let mut services: Vec<String> = NODES.iter().map(|id| name(*id)).collect();
    services.extend(["manager", "rabbitmq", "ftp_server"].map(String::from));
    let services: Vec<&str> = services.iter().map(String::as_str).collect();
    wait_healthy(&lab, &services, START);
    eprintln!("compose lab: every service healthy {:.1} s after `up` began", began.elapsed().as_secs_f64());

    // 2. The controller service, in the network, with the lab's cluster secret.
    let summary = controller_status(&lab);
    assert_eq!(summary["leader"], name(leader), "{summary}");
    let (code, stdout, stderr) = lab.controller(&["status"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("leader: {} in term", name(leader))), "{stdout}");
    let next = others(leader)[0];
    let (code, stdout, stderr) = lab.controller(&["timeout", &name(next)]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("sent"), "{stdout}");
    let (leader, _) = poll(&format!("{} to lead after its timeout", name(next)), SETTLE, |seen| {
        agreed_leader(&lab, &NODES, seen).filter(|(l, _)| *l == next)
    });
    let (code, stdout, stderr) = lab.controller(&["store", "colour", "blue"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("stored \"colour\" = \"blue\" (committed by leader {}", name(leader))),
        "{stdout}"
    );
    let (code, stdout, stderr) = lab.controller(&["retrieve"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.lines().any(|l| l.split_whitespace().skip(1).eq(["colour", "blue"])),
        "retrieve lacks colour = blue:\n{stdout}"
    );

    // 2b. A course controller in Python, in a container of the lab's network: unsigned
    // requests from its port 5555 (allowed by CONTROL_ALLOW), the replies back on that port.
    let out = lab::docker(&["run", "--rm", "--network", &lab.network(), COURSE_CONTROLLER, "course", "python"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "course controller: {text}{}", String::from_utf8_lossy(&out.stderr));
    let replies: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    for id in NODES {
        let info = &replies["leader_info"][name(id)];
        assert_eq!((&info["key"], &info["value"]), (&json!("LEADER"), &json!(name(leader))), "{replies}");
        assert!(info.get("mac").is_none(), "an unsigned request gets an unsigned reply: {info}");
    }
    assert_eq!(replies["store"]["success"], json!(true), "{replies}");
    let (_, stdout, _) = lab.controller(&["retrieve"]);
    assert!(stdout.lines().any(|l| l.split_whitespace().skip(1).eq(["course", "python"])), "{stdout}");

    // 3. Writes through the leader's published port reach every node.
    let password = lab.admin_password();
    let mut admin = Admin::new(&password);
    for i in 0..3 {
        admin.create_product(&lab, &NODES, &format!("before any failure {i}"));
    }
    admin.everywhere(&lab, &NODES, "the first writes on every node");

    // 3b. A write to a follower's published port from the host, as the README shows it: the
    // follower's 307 names the leader's published address, where curl follows it.
    let (leader, _) = wait_for_leader(&lab, &NODES, "one leader before the write through a follower");
    let follower = others(leader)[0];
    let follower_status = status(lab.addresses.http(follower)).expect("the follower's /status");
    assert_eq!(follower_status["leader_http"], json!(lab.addresses.http(leader).to_string()), "{follower_status}");
    let body = json!({"title": "through a follower", "price": 3.5, "currency": "GBP"}).to_string();
    let (code, reply) = curl_write(lab.addresses.http(follower), &password, &body);
    assert_eq!(code, "201", "{reply}");
    let created: Value = serde_json::from_str(&reply).expect("the created product");
    admin.acknowledged.insert(created["id"].as_i64().expect("its id"), "through a follower".into());
    admin.everywhere(&lab, &NODES, "the write through a follower on every node");

    // 3c. The pipeline: `labctl scrape --publish` on the host, against a local copy of the shop,
    // into the lab's RabbitMQ; the manager carries each item to the leader. Then a processed
    // file on the FTP server, which the manager fetches every 2 s and uploads to the leader.
    let site = common::site::Site::books();
    let amqp = format!("amqp://labctl:labctl@{PUBLISH_IP}:{}/%2f", lab.addresses.ports["RABBITMQ_PORT"]);
    let scratch = tempfile_dir();
    let out = std::process::Command::new(common::BIN)
        .args(["scrape", "--delay-ms", "0", "--publish", "--out", "out.json"])
        .args(["--url", &site.url("/catalogue/page-1.html")])
        .env("LABCTL_AMQP_URL", &amqp)
        .env("LABCTL_QUEUE", "scraped_products")
        .current_dir(&scratch)
        .output()
        .expect("run labctl scrape");
    assert!(out.status.success(), "labctl scrape: {}", String::from_utf8_lossy(&out.stderr));
    admin.once_everywhere(&lab, &BOOKS, "the scraped books on every node, once");
    let file = scratch.join("processed_products.json");
    std::fs::write(&file, processed_file(&FTP_TITLES)).expect("write the processed file");
    let home = "/home/ftpusers/testuser";
    lab.compose_ok(&["exec", "-T", "ftp_server", "mkdir", "-p", home]);
    lab.compose_ok(&["cp", &file.to_string_lossy(), &format!("ftp_server:{home}/processed_products.json")]);
    lab.compose_ok(&["exec", "-T", "ftp_server", "chown", "-R", "ftpuser:ftpgroup", home]);
    admin.once_everywhere(&lab, &FTP_TITLES, "the FTP file's products on every node, once");
    let _ = std::fs::remove_dir_all(&scratch);

    // 4. The leader's container killed: another leads; started again, it follows with every write.
    let killed = leader;
    lab.compose_ok(&["kill", &name(killed)]);
    let (leader, _) = wait_for_leader(&lab, &others(killed), "a new leader without the killed one");
    assert_ne!(leader, killed);
    // The controller shows the four that answer and names the one it cannot reach.
    let (code, stdout, stderr) = lab.controller(&["status"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("leader: {} in term", name(leader))), "{stdout}{stderr}");
    let row = stdout.lines().find(|l| l.starts_with(&format!("{} ", name(killed)))).unwrap_or_default();
    assert_eq!(row.split_whitespace().nth(1), Some("unreachable"), "{stdout}");
    assert!(format!("{stdout}{stderr}").contains(&format!("cannot reach {}", name(killed))), "{stdout}{stderr}");
    for i in 0..3 {
        admin.create_product(&lab, &others(killed), &format!("while {} is down {i}", name(killed)));
    }
    admin.everywhere(&lab, &others(killed), "every acknowledged write on the remaining nodes");
    lab.compose_ok(&["start", &name(killed)]);
    let (again, _) = wait_for_leader(&lab, &NODES, "five nodes with one leader after the restart");
    assert_ne!(again, killed, "{} came back as leader", name(killed));
    admin.everywhere(&lab, &NODES, "every write on the restarted node");

    // 5. The leader cut off the network: the rest go on; connected again, it catches up.
    let cut = again;
    let container = lab.container(&name(cut));
    let network = lab.network();
    let out = lab::docker(&["network", "disconnect", &network, &container]);
    assert!(out.status.success(), "disconnect: {}", String::from_utf8_lossy(&out.stderr));
    let (leader, _) = wait_for_leader(&lab, &others(cut), "a leader of the four still connected");
    assert_ne!(leader, cut);
    for i in 0..3 {
        admin.create_product(&lab, &others(cut), &format!("while {} is cut off {i}", name(cut)));
    }
    admin.everywhere(&lab, &others(cut), "the writes on the connected nodes");
    let out = lab::docker(&["network", "connect", "--alias", &name(cut), &network, &container]);
    assert!(out.status.success(), "connect: {}", String::from_utf8_lossy(&out.stderr));
    wait_for_leader(&lab, &NODES, "one leader of all five after the reconnect");
    admin.everywhere(&lab, &NODES, "every write on the reconnected node");

    // 6. down without -v, up again: the volumes keep the data and the secrets.
    lab.down();
    let began = Instant::now();
    lab.up(&[]);
    let returned = began.elapsed();
    let (leader, _) = wait_for_leader(&lab, &NODES, "a leader after down and up");
    eprintln!(
        "compose lab: after down, `up -d` returned after {:.1} s; {} led {:.1} s after `up` began",
        returned.as_secs_f64(),
        name(leader),
        began.elapsed().as_secs_f64()
    );
    assert_eq!(lab.admin_password(), password, "the secrets volume was kept");
    admin.everywhere(&lab, &NODES, "every write after down and up");
    drop(lab);

    // 7. Shared-database mode: one PostgreSQL for all five nodes.
    let addresses = Addresses::free(NODE_IP_PREFIX, PUBLISH_IP);
    let files = ["docker-compose.yml", "docker-compose.shared-db.yml", STAND_IN_FILE];
    let mut shared = Lab::new(&engine, SHARED_DB_PROJECT, &files, addresses, &LAB_ENV);
    shared.up(&[]);
    wait_healthy(&shared, &["postgres"], START);
    wait_for_leader(&shared, &NODES, "a leader of the nodes on PostgreSQL");
    let url = &shared.inspect("node1")["Config"]["Env"];
    assert!(
        url.as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.starts_with("LABCTL_DATABASE_URL=postgres://"))),
        "node1 is not on PostgreSQL: {url}"
    );
    let mut admin = Admin::new(&shared.admin_password());
    admin.create_product(&shared, &NODES, "in the shared database");
    admin.everywhere(&shared, &NODES, "the write read from every node of the shared database");
}

/// A fresh directory under the system's temporary one.
fn tempfile_dir() -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("labctl-compose-lab-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}
