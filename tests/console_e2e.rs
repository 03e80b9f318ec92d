//! The web console against real nodes: its endpoints over HTTP, and the page itself in real
//! headless Chromium (Debian's `chromium`, driven by playwright-core from tests/console/).

mod common;
#[path = "common/tools.rs"]
mod tools;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_call, http_get, poll, TestCluster};
use serde_json::{json, Value};

const TOKEN: &str = "console-test-token";
/// Raft timing for tests that count elections. A busy machine (Chromium shares two cores with
/// the nodes) can starve a node past the default 150 ms timeout; with these a node starts no
/// election of its own, so the ones the test sees are those it asked for (TIMEOUT is a forced
/// election, which no timeout delays).
const STEADY: [&str; 3] = ["--heartbeat-ms=100", "--election-timeout-min-ms=1000", "--election-timeout-max-ms=2000"];

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Node `id`'s `/status`.
fn status(cluster: &TestCluster, id: u32) -> Option<Value> {
    let (code, body) = http_get(cluster.http_addr(id), "/status")?;
    (code == 200).then(|| json_of(&body))
}

#[test]
fn the_page_and_its_files_come_from_the_node() {
    let cluster = TestCluster::start(1, 0, &[]);
    let addr = cluster.http_addr(1);
    let page = http_call(addr, "GET", "/", &[], "").expect("GET /");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let policy = page.header("content-security-policy").expect("a content security policy");
    assert!(policy.contains("default-src 'self'") && policy.contains("connect-src 'self'"), "{policy}");
    assert!(page.body.contains("<title>labctl console</title>"), "{}", page.body);
    for (path, kind) in [
        ("/console/app.js", "text/javascript"),
        ("/console/style.css", "text/css"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        assert!(page.body.contains(path), "the page does not load {path}");
        let file = http_call(addr, "GET", path, &[], "").expect(path);
        assert_eq!(file.status, 200, "{path}");
        assert!(file.header("content-type").is_some_and(|t| t.starts_with(kind)), "{path}: {:?}", file.headers);
        assert!(!file.body.is_empty(), "{path}");
    }
    let wrong = http_call(addr, "POST", "/", &[], "").expect("POST /");
    assert_eq!(wrong.status, 405);
    assert!(wrong.json()["error"].is_string());
    // Without a console_token the control endpoints say so.
    let control = http_call(addr, "GET", "/api/control", &[], "").expect("GET /api/control");
    assert_eq!(control.json()["token_required"], false);
}

#[test]
fn control_requests_need_the_token_and_start_an_election() {
    let cluster = TestCluster::start_with_env(3, 0, &STEADY, &[("LABCTL_CONSOLE_TOKEN", TOKEN)]);
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(10));
    let target = (1..=3).find(|&id| id != leader).unwrap();
    let addr = cluster.http_addr(target);
    assert_eq!(http_call(addr, "GET", "/api/control", &[], "").unwrap().json()["token_required"], true);

    let bearer = format!("Bearer {TOKEN}");
    for (headers, expected) in [
        (vec![], "this node requires the console token (Authorization: Bearer <token>)"),
        (vec![("Authorization", "Bearer wrong-token")], "the console token is wrong"),
        (vec![("Authorization", TOKEN)], "this node requires the console token (Authorization: Bearer <token>)"),
    ] {
        let refused = http_call(addr, "POST", "/api/control/timeout", &headers, "").expect("POST");
        assert_eq!(refused.status, 401, "{headers:?}: {}", refused.body);
        assert_eq!(refused.json()["error"], expected);
        assert_eq!(refused.header("www-authenticate"), Some("Bearer realm=\"labctl console\""));
    }
    assert_eq!(cluster.wait_for_leader(Duration::from_secs(5)), (leader, term), "a refused TIMEOUT changed nothing");
    let unknown = http_call(addr, "POST", "/api/control/shutdown", &[("Authorization", &bearer)], "").unwrap();
    assert_eq!(unknown.status, 404, "only TIMEOUT and CONVERT_FOLLOWER are offered: {}", unknown.body);
    assert_eq!(http_call(addr, "GET", "/api/control/timeout", &[], "").unwrap().status, 405);

    let sent = http_call(addr, "POST", "/api/control/timeout", &[("Authorization", &bearer)], "").expect("POST");
    assert_eq!(sent.status, 202, "{}", sent.body);
    assert_eq!(sent.json(), json!({ "node": format!("node{target}"), "request": "TIMEOUT" }));
    // TIMEOUT is the controller's forced election: the node stands at once, with a newer term.
    let (new_leader, new_term) = poll("the timed-out node to lead", Duration::from_secs(10), || {
        cluster.agreed_leader(&[1, 2, 3]).filter(|&(id, t)| id == target && t > term)
    });
    assert_eq!(new_leader, target);
    assert!(cluster.log_text(target).contains("TIMEOUT from"), "the node logs the request like a controller's");

    // CONVERT_FOLLOWER through another node's relay: the leader steps down.
    let relay = cluster.http_addr(leader);
    let path = format!("/console/nodes/node{target}/api/control/convert-follower");
    let sent = http_call(relay, "POST", &path, &[("Authorization", &bearer)], "").expect("POST");
    assert_eq!(sent.status, 202, "{}", sent.body);
    assert_eq!(sent.header("x-labctl-node"), Some(format!("node{target}").as_str()));
    poll("a newer term after the leader stepped down", Duration::from_secs(10), || {
        cluster.agreed_leader(&[1, 2, 3]).filter(|&(_, t)| t > new_term)
    });
    assert!(cluster.log_text(target).contains("CONVERT_FOLLOWER from"));
}

#[test]
fn the_relay_reaches_members_only_and_turns_redirects_into_relay_paths() {
    let cluster = TestCluster::start(3, 0, &[]);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let addr = cluster.http_addr(follower);

    let other = (1..=3).find(|&id| id != follower && id != leader).unwrap();
    let relayed = http_call(addr, "GET", &format!("/console/nodes/node{other}/status"), &[], "").expect("relay");
    assert_eq!(relayed.status, 200, "{}", relayed.body);
    assert_eq!(relayed.json()["name"], format!("node{other}"));
    assert_eq!(relayed.header("x-labctl-node"), Some(format!("node{other}").as_str()));

    // A write sent to the follower comes back as a redirect to the leader's relay path.
    let body = r#"{"name":"Ada","email":"ada@example.org"}"#;
    let headers = [("Content-Type", "application/json"), ("Idempotency-Key", "relay-test-1")];
    let path = format!("/console/nodes/node{follower}/api/users");
    let redirect = http_call(addr, "POST", &path, &headers, body).expect("relay");
    assert_eq!(redirect.status, 307, "{}", redirect.body);
    assert_eq!(redirect.header("location"), Some(format!("/console/nodes/node{leader}/api/users").as_str()));
    assert_eq!(redirect.header("x-raft-leader"), Some(format!("node{leader}").as_str()));
    let created = http_call(addr, "POST", &format!("/console/nodes/node{leader}/api/users"), &headers, body).unwrap();
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.header("x-labctl-node"), Some(format!("node{leader}").as_str()));
    assert_eq!(created.json()["email"], "ada@example.org");
    // The query string travels too.
    let listed = http_call(addr, "GET", &format!("/console/nodes/node{leader}/api/users?limit=1"), &[], "").unwrap();
    assert_eq!(listed.json()["pagination"]["limit"], 1);

    for (path, code) in [
        ("/console/nodes/node9/status", 404),
        ("/console/nodes/router/status", 404),
        ("/console/nodes/node1/metrics", 404),
        ("/console/nodes/node1/api/../metrics", 404),
        ("/console/nodes/node1/console/nodes/node2/status", 404),
    ] {
        let refused = http_call(addr, "GET", path, &[], "").expect(path);
        assert_eq!(refused.status, code, "{path}: {}", refused.body);
        assert!(refused.json()["error"].is_string(), "{path}");
    }

    // A member that does not answer: a JSON error naming it, in bounded time.
    let mut cluster = cluster;
    cluster.kill(other);
    let started = Instant::now();
    let down = http_call(addr, "GET", &format!("/console/nodes/node{other}/status"), &[], "").expect("relay");
    assert_eq!(down.status, 502, "{}", down.body);
    assert!(down.json()["error"].as_str().unwrap().starts_with(&format!("node{other} (")), "{}", down.body);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// What the browser test needs, or None (and a loud skip, or a failure under CI).
fn browser_tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    let chromium = PathBuf::from(std::env::var("LABCTL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if !chromium.is_file() {
        return tools::missing(test, &format!("no Chromium at {} (apt-get install chromium)", chromium.display()));
    }
    let node_ok = Command::new("node").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !node_ok {
        return tools::missing(test, "no Node.js (apt-get install nodejs npm)");
    }
    let dir = tools::repo_root().join("tests/console");
    if !dir.join("node_modules/playwright-core/package.json").is_file() {
        return tools::missing(test, "tests/console/node_modules is not installed (npm ci --prefix tests/console)");
    }
    Some((chromium, dir))
}

/// Runs the browser script `script` of `dir` with Node.js and `env`, for at most 240 s; fails
/// the test unless it exits 0. Its output is shown either way.
fn run_browser_script(dir: &Path, script: &str, chromium: &Path, shots: &Path, env: &[(&str, String)]) {
    let mut child = Command::new("node")
        .arg(script)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("LABCTL_CONSOLE_SCREENSHOTS", shots)
        .env("LABCTL_CHROMIUM", chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    // Read the output on threads, so a chatty browser cannot fill a pipe and stall.
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        pipe.map(|mut s| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = s.read_to_string(&mut text);
                text
            })
        })
    };
    let out = read(child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>));
    let err = read(child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>));
    let deadline = Instant::now() + Duration::from_secs(240);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait for node") {
            break Some(exit);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.and_then(|t| t.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|t| t.join().ok()).unwrap_or_default();
    eprintln!("{stdout}{stderr}");
    let exit = exit.unwrap_or_else(|| panic!("the browser test {script} did not finish in 240 s"));
    assert!(exit.success(), "the browser test {script} failed ({exit})");
}

#[test]
fn the_console_in_chromium_manages_tasks_and_shows_an_election() {
    // Screenshots of an earlier run must not pass for this run's, nor stay when it is skipped.
    let shots = tools::repo_root().join("target/console-screenshots");
    if let Err(e) = std::fs::remove_dir_all(&shots) {
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "cannot clear {}: {e}", shots.display());
    }
    let Some((chromium, dir)) = browser_tools("the_console_in_chromium_manages_tasks_and_shows_an_election") else {
        return;
    };
    // From a file, as Docker secrets give it.
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("console_token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_file = token_file.to_string_lossy().into_owned();
    let cluster = TestCluster::start_with_env(3, 0, &STEADY, &[("LABCTL_CONSOLE_TOKEN_FILE", &token_file)]);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10));
    poll("every node to know the leader", Duration::from_secs(10), || {
        (1..=3).all(|id| status(&cluster, id).is_some_and(|s| s["leader"] == format!("node{leader}"))).then_some(())
    });
    const PRODUCTS: u32 = 45;
    for i in 1..=PRODUCTS {
        let product = json!({
            "title": format!("Book {i:02}"),
            "price": f64::from(i),
            "currency": "GBP",
            "converted_price": f64::from(i) * 1.17,
            "converted_currency": "EUR",
            "availability": if i % 7 == 0 { "Out of stock" } else { "In stock" },
            "rating": (i % 5 + 1) as i32,
            "link": format!("https://books.example/book-{i}"),
            "scraped_at": "2026-11-01T09:30:00Z",
        });
        let reply = http_call(
            cluster.http_addr(leader),
            "POST",
            "/api/products",
            &[("Content-Type", "application/json")],
            &product.to_string(),
        )
        .expect("POST /api/products");
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    poll("the products on every node", Duration::from_secs(10), || {
        (1..=3)
            .all(|id| {
                http_get(cluster.http_addr(id), "/api/products?limit=1")
                    .is_some_and(|(_, b)| json_of(&b)["pagination"]["total"] == PRODUCTS)
            })
            .then_some(())
    });

    let nodes: Vec<Value> = (1..=3)
        .map(|id| json!({ "name": format!("node{id}"), "url": format!("http://{}", cluster.http_addr(id)) }))
        .collect();
    let env = [
        ("LABCTL_CONSOLE_NODES", Value::Array(nodes).to_string()),
        ("LABCTL_CONSOLE_LEADER", format!("node{leader}")),
        ("LABCTL_CONSOLE_TOKEN", TOKEN.to_string()),
        ("LABCTL_CONSOLE_PRODUCTS", PRODUCTS.to_string()),
    ];
    run_browser_script(&dir, "console.test.mjs", &chromium, &shots, &env);

    // What the browser did, as the nodes themselves report it.
    let (new_leader, _) = cluster.wait_for_leader(Duration::from_secs(10));
    assert_ne!(new_leader, leader, "the TIMEOUT sent from the console changed the leader");
    for id in 1..=3 {
        let tasks = poll(&format!("the task applied on node{id}"), Duration::from_secs(10), || {
            let (_, body) = http_get(cluster.http_addr(id), "/api/tasks")?;
            let tasks = json_of(&body)["data"].clone();
            (tasks[0]["status"] == "done").then_some(tasks)
        });
        assert_eq!(tasks.as_array().map(Vec::len), Some(1), "node{id}: {tasks}");
        assert_eq!(tasks[0]["title"], "Write the release notes");
        assert_eq!(tasks[0]["priority"], "high");
        assert_eq!(tasks[0]["due_date"], "2031-05-04");
    }
    for name in [
        "cluster-desktop",
        "cluster-after-timeout-desktop",
        "tasks-desktop",
        "products-desktop",
        "cluster-phone",
        "tasks-phone",
        "products-phone",
    ] {
        let path = shots.join(format!("{name}.png"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(bytes.starts_with(b"\x89PNG"), "{} is not a PNG", path.display());
    }
}

/// With `--auth`, the console asks for an account, shows who is logged in and hides what the
/// role may not do (in Chromium, on a follower, through the relay to the leader).
#[test]
fn the_console_in_chromium_logs_in_and_shows_what_the_role_may_do() {
    // A directory of its own: the other browser test clears its own as it starts.
    let shots = tools::repo_root().join("target/console-login-screenshots");
    let Some((chromium, dir)) = browser_tools("the_console_in_chromium_logs_in_and_shows_what_the_role_may_do") else {
        return;
    };
    let admin_password = "console-admin-password";
    let mut extra = vec!["--auth"];
    extra.extend(STEADY);
    let cluster = TestCluster::start_with_env(3, 0, &extra, &[("LABCTL_ADMIN_PASSWORD", admin_password)]);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10));
    let admin = format!("Basic {}", {
        use base64ct::Encoding;
        base64ct::Base64::encode_string(format!("admin:{admin_password}").as_bytes())
    });
    let headers = [("Content-Type", "application/json"), ("Authorization", admin.as_str())];
    let viewer = json!({"name": "reader", "password": "reader-password", "role": "viewer"}).to_string();
    poll("the admin to make a viewer", Duration::from_secs(10), || {
        (http_call(cluster.http_addr(leader), "POST", "/api/accounts", &headers, &viewer)?.status == 201).then_some(())
    });
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    // The viewer's account on the follower too, before the browser logs in there.
    poll("the follower to know the viewer", Duration::from_secs(10), || {
        let reply = http_call(cluster.http_addr(follower), "GET", "/api/accounts/reader", &headers, "")?;
        (reply.status == 200).then_some(())
    });
    let env = [
        ("LABCTL_CONSOLE_URL", format!("http://{}", cluster.http_addr(follower))),
        ("LABCTL_CONSOLE_VIEWER", "reader:reader-password".to_string()),
        ("LABCTL_CONSOLE_ADMIN", format!("admin:{admin_password}")),
    ];
    run_browser_script(&dir, "console_auth.test.mjs", &chromium, &shots, &env);
}
