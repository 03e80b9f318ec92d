//! Users and roles end to end: real `labctl node --auth` processes, every endpoint asked by
//! each role (none, viewer, member, admin), tokens that log in, out and expire, and no password
//! or token in any log line or in clear in any file a node keeps.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{http_call, poll, HttpReply, TestCluster};
use serde_json::{json, Value};

const ADMIN_PASSWORD: &str = "adm1n-secret-Zq8";
const VIEWER_PASSWORD: &str = "v1ewer-secret-Kx3";
const MEMBER_PASSWORD: &str = "m3mber-secret-Pw7";

fn basic(name: &str, password: &str) -> String {
    use base64ct::Encoding;
    format!("Basic {}", base64ct::Base64::encode_string(format!("{name}:{password}").as_bytes()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Nobody,
    Viewer,
    Member,
    Admin,
}

impl Who {
    fn authorization(self) -> Option<String> {
        match self {
            Who::Nobody => None,
            Who::Viewer => Some(basic("vera", VIEWER_PASSWORD)),
            Who::Member => Some(basic("mo", MEMBER_PASSWORD)),
            Who::Admin => Some(basic("admin", ADMIN_PASSWORD)),
        }
    }
}

/// A request with an optional `Authorization`.
fn call(addr: SocketAddr, method: &str, path: &str, authorization: Option<&str>, body: &Body) -> HttpReply {
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", body.content_type)];
    if let Some(a) = authorization {
        headers.push(("Authorization", a));
    }
    http_call(addr, method, path, &headers, &body.text).unwrap_or_else(|| panic!("{method} {path}: no answer"))
}

struct Body {
    content_type: &'static str,
    text: String,
}

fn json_body(v: Value) -> Body {
    Body { content_type: "application/json", text: v.to_string() }
}

fn no_body() -> Body {
    Body { content_type: "application/json", text: String::new() }
}

const BOUNDARY: &str = "labctl-auth-test";

fn upload_body() -> Body {
    let file = json!([{"title": "Uploaded", "price": 1.5, "currency": "GBP"}]).to_string();
    let text = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.json\"\r\nContent-Type: \
         application/json\r\n\r\n{file}\r\n--{BOUNDARY}--\r\n"
    );
    Body { content_type: "multipart/form-data; boundary=labctl-auth-test", text }
}

/// What a request needs, and what it answers when allowed.
struct Row {
    method: &'static str,
    /// The path; may create what it names first (as the admin).
    path: Box<dyn Fn(&Fixture) -> String>,
    body: Box<dyn Fn() -> Body>,
    /// None: open to anyone.
    needs: Option<Who>,
    /// The status when allowed.
    ok: u16,
    /// Ask a follower rather than the leader (requests that would disturb the leader).
    on_follower: bool,
}

struct Fixture {
    leader: SocketAddr,
    follower_name: String,
    counter: AtomicUsize,
}

impl Fixture {
    fn next(&self) -> usize {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// Creates something as the admin and returns its id (or name).
    fn create(&self, path: &str, body: Value, id_field: &str) -> String {
        let admin = Who::Admin.authorization();
        let r = call(self.leader, "POST", path, admin.as_deref(), &json_body(body));
        assert_eq!(r.status, 201, "POST {path} as admin: {}", r.body);
        match &r.json()[id_field] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    fn product(&self) -> String {
        self.create("/api/products", json!({"title": "p", "price": 1.0, "currency": "GBP"}), "id")
    }

    fn user(&self) -> String {
        let n = self.next();
        self.create("/api/users", json!({"name": "u", "email": format!("u{n}@example.org")}), "id")
    }

    fn task(&self) -> String {
        self.create("/api/tasks", json!({"title": "t"}), "id")
    }

    fn account(&self) -> String {
        let n = self.next();
        self.create(
            "/api/accounts",
            json!({"name": format!("acct{n}"), "password": "secret-pass-1", "role": "viewer"}),
            "name",
        )
    }
}

fn row(
    method: &'static str,
    path: impl Fn(&Fixture) -> String + 'static,
    body: impl Fn() -> Body + 'static,
    needs: Option<Who>,
    ok: u16,
) -> Row {
    Row { method, path: Box::new(path), body: Box::new(body), needs, ok, on_follower: false }
}

fn fixed(path: &'static str) -> impl Fn(&Fixture) -> String {
    move |_| path.to_string()
}

fn rows() -> Vec<Row> {
    use Who::*;
    let product = || json_body(json!({"title": "Dune", "price": 9.5, "currency": "GBP"}));
    let task = || json_body(json!({"title": "Read"}));
    let mut rows = vec![
        row("GET", fixed("/healthz"), no_body, None, 200),
        row("GET", fixed("/readyz"), no_body, None, 200),
        row("GET", fixed("/status"), no_body, None, 200),
        row("GET", fixed("/heartbeat"), no_body, None, 200),
        row("GET", fixed("/metrics"), no_body, None, 200),
        row("GET", fixed("/"), no_body, None, 200),
        row("GET", fixed("/api/control"), no_body, None, 200),
        row("GET", fixed("/api/me"), no_body, Some(Viewer), 200),
        // Basic credentials carry no session to end.
        row("POST", fixed("/api/logout"), no_body, Some(Viewer), 400),
        row("GET", fixed("/api/products"), no_body, Some(Viewer), 200),
        row("POST", fixed("/api/products"), product, Some(Member), 201),
        row("GET", |f| format!("/api/products/{}", f.product()), no_body, Some(Viewer), 200),
        row("PUT", |f| format!("/api/products/{}", f.product()), product, Some(Member), 200),
        row("DELETE", |f| format!("/api/products/{}", f.product()), no_body, Some(Member), 200),
        row("POST", fixed("/api/upload/file"), upload_body, Some(Admin), 201),
        row("GET", fixed("/api/users"), no_body, Some(Viewer), 200),
        row(
            "POST",
            fixed("/api/users"),
            || json_body(json!({"name": "N", "email": format!("n{}@example.org", rand_suffix())})),
            Some(Admin),
            201,
        ),
        row("GET", |f| format!("/api/users/{}", f.user()), no_body, Some(Viewer), 200),
        row(
            "PUT",
            |f| format!("/api/users/{}", f.user()),
            || json_body(json!({"name": "M", "email": format!("m{}@example.org", rand_suffix())})),
            Some(Admin),
            200,
        ),
        row("DELETE", |f| format!("/api/users/{}", f.user()), no_body, Some(Admin), 200),
        row("GET", fixed("/api/tasks"), no_body, Some(Viewer), 200),
        row("GET", fixed("/api/tasks/stats"), no_body, Some(Viewer), 200),
        row("POST", fixed("/api/tasks"), task, Some(Member), 201),
        row("GET", |f| format!("/api/tasks/{}", f.task()), no_body, Some(Viewer), 200),
        row("PUT", |f| format!("/api/tasks/{}", f.task()), task, Some(Member), 200),
        row("DELETE", |f| format!("/api/tasks/{}", f.task()), no_body, Some(Member), 200),
        row("GET", fixed("/api/accounts"), no_body, Some(Admin), 200),
        row(
            "POST",
            fixed("/api/accounts"),
            || {
                json_body(
                    json!({"name": format!("new{}", rand_suffix()), "password": "another-pass", "role": "member"}),
                )
            },
            Some(Admin),
            201,
        ),
        row("GET", |f| format!("/api/accounts/{}", f.account()), no_body, Some(Admin), 200),
        row(
            "PUT",
            |f| format!("/api/accounts/{}", f.account()),
            || json_body(json!({"role": "member"})),
            Some(Admin),
            200,
        ),
        row("DELETE", |f| format!("/api/accounts/{}", f.account()), no_body, Some(Admin), 200),
        // Through the console's relay: the relaying node and the target check alike.
        row("GET", |f| format!("/console/nodes/{}/api/tasks", f.follower_name), no_body, Some(Viewer), 200),
        row("GET", |f| format!("/console/nodes/{}/status", f.follower_name), no_body, None, 200),
    ];
    // The control buttons on a follower: CONVERT_FOLLOWER changes nothing there.
    let mut control = row("POST", fixed("/api/control/convert-follower"), no_body, Some(Admin), 202);
    control.on_follower = true;
    rows.push(control);
    rows
}

fn rand_suffix() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    nanos * 1000 + N.fetch_add(1, Ordering::Relaxed) as u64
}

fn secret_file(dir: &Path, password: &str) -> String {
    let path = dir.join("admin_password");
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path.to_string_lossy().into_owned()
}

/// Every file under `dir`, as bytes.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn every_endpoint_answers_each_role_as_its_table_says_and_no_secret_is_kept_in_clear() {
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secret_file(secrets.path(), ADMIN_PASSWORD);
    let mut cluster = TestCluster::start_with_env(
        3,
        0,
        &["--auth", "--token-ttl", "3s"],
        &[("LABCTL_ADMIN_PASSWORD_FILE", &password_file)],
    );
    let (leader_id, _) = cluster.wait_for_leader(Duration::from_secs(10));
    let leader = cluster.http_addr(leader_id);
    let follower_id = (1..=3).find(|&i| i != leader_id).unwrap();
    let follower = cluster.http_addr(follower_id);
    let admin = Who::Admin.authorization();

    // The leader creates the first admin from the file once it leads.
    poll("the first admin to exist", Duration::from_secs(10), || {
        (call(leader, "GET", "/api/me", admin.as_deref(), &no_body()).status == 200).then_some(())
    });
    for (name, password, role) in [("vera", VIEWER_PASSWORD, "viewer"), ("mo", MEMBER_PASSWORD, "member")] {
        let body = json_body(json!({"name": name, "password": password, "role": role}));
        let r = call(leader, "POST", "/api/accounts", admin.as_deref(), &body);
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.header("location"), Some(format!("/api/accounts/{name}").as_str()));
        assert_eq!(
            r.json(),
            json!({"name": name, "role": role, "created_at": r.json()["created_at"], "updated_at": r.json()["updated_at"]})
        );
    }

    let fixture = Fixture { leader, follower_name: format!("node{follower_id}"), counter: AtomicUsize::new(0) };
    let mut failures = Vec::new();
    for row in rows() {
        for who in [Who::Nobody, Who::Viewer, Who::Member, Who::Admin] {
            let path = (row.path)(&fixture);
            let addr = if row.on_follower { follower } else { leader };
            let r = call(addr, row.method, &path, who.authorization().as_deref(), &(row.body)());
            let expected = match row.needs {
                None => row.ok,
                Some(_) if who == Who::Nobody => 401,
                Some(needed) if who < needed => 403,
                Some(_) => row.ok,
            };
            let line = format!("{} {path} as {who:?}: {} {}", row.method, r.status, r.body);
            if r.status != expected {
                failures.push(format!("expected {expected}, got {line}"));
                continue;
            }
            if expected == 401 {
                let challenge = r.header("www-authenticate").unwrap_or_default();
                if !challenge.contains("Bearer") || !challenge.contains("Basic") {
                    failures.push(format!("401 without a WWW-Authenticate challenge: {line}"));
                }
            }
            if matches!(expected, 401 | 403) && !r.json()["error"].is_string() {
                failures.push(format!("no JSON error: {line}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of the table's answers are wrong:\n{}", failures.len(), failures.join("\n"));

    // Wrong or malformed credentials are 401, on open endpoints too only where they matter.
    for bad in
        [basic("admin", "wrong-password"), basic("nobody", ADMIN_PASSWORD), "Bearer 00ff".into(), "Digest x".into()]
    {
        let r = call(follower, "GET", "/api/products", Some(&bad), &no_body());
        assert_eq!(r.status, 401, "{bad}: {}", r.body);
        assert_eq!(call(follower, "GET", "/healthz", Some(&bad), &no_body()).status, 200);
    }

    // Logging in: a follower sends the client to the leader, which gives a token.
    let form = json_body(json!({"name": "mo", "password": MEMBER_PASSWORD}));
    let r = call(follower, "POST", "/api/login", None, &form);
    assert_eq!(r.status, 307, "{}", r.body);
    assert!(r.header("location").is_some_and(|l| l.ends_with("/api/login")));
    let wrong = call(leader, "POST", "/api/login", None, &json_body(json!({"name": "mo", "password": "nope-nope"})));
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let r = call(leader, "POST", "/api/login", None, &form);
    assert_eq!(r.status, 200, "{}", r.body);
    let login = r.json();
    assert_eq!(
        (login["name"].as_str(), login["role"].as_str(), login["token_type"].as_str()),
        (Some("mo"), Some("member"), Some("Bearer"))
    );
    let token = login["token"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {token}");
    // Checked on a follower, which may apply the login a moment after the leader answered.
    let me = call(follower, "GET", "/api/me", Some(&bearer), &no_body());
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!((me.json()["name"].as_str(), me.json()["via"].as_str()), (Some("mo"), Some("token")));
    let r = call(leader, "POST", "/api/tasks", Some(&bearer), &json_body(json!({"title": "with a token"})));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        call(leader, "POST", "/api/users", Some(&bearer), &json_body(json!({"name": "x", "email": "x@y.z"}))).status,
        403
    );

    // Logging out ends the token on every node.
    let r = call(leader, "POST", "/api/logout", Some(&bearer), &no_body());
    assert_eq!(r.status, 200, "{}", r.body);
    for id in 1..=3 {
        let addr = cluster.http_addr(id);
        poll(&format!("node{id} to forget the token"), Duration::from_secs(5), || {
            (call(addr, "GET", "/api/products", Some(&bearer), &no_body()).status == 401).then_some(())
        });
    }

    // A token expires after the configured lifetime (3 s here), on every node.
    let r = call(leader, "POST", "/api/login", None, &json_body(json!({"name": "vera", "password": VIEWER_PASSWORD})));
    assert_eq!(r.status, 200, "{}", r.body);
    let short = format!("Bearer {}", r.json()["token"].as_str().unwrap());
    let expiring = r.json()["token"].as_str().unwrap().to_string();
    assert_eq!(call(follower, "GET", "/api/products", Some(&short), &no_body()).status, 200);
    for id in 1..=3 {
        let addr = cluster.http_addr(id);
        let refused = poll(&format!("node{id} to refuse the expired token"), Duration::from_secs(10), || {
            let r = call(addr, "GET", "/api/products", Some(&short), &no_body());
            (r.status == 401).then_some(r)
        });
        assert!(refused.body.contains("expired"), "{}", refused.body);
    }

    // A changed password takes effect at once: the old one is refused on every node.
    let r =
        call(leader, "PUT", "/api/accounts/vera", admin.as_deref(), &json_body(json!({"password": "brand-new-pass"})));
    assert_eq!(r.status, 200, "{}", r.body);
    for id in 1..=3 {
        let addr = cluster.http_addr(id);
        poll(&format!("node{id} to refuse the old password"), Duration::from_secs(5), || {
            (call(addr, "GET", "/api/products", Who::Viewer.authorization().as_deref(), &no_body()).status == 401)
                .then_some(())
        });
    }
    // The last admin can be neither demoted nor deleted.
    assert_eq!(call(leader, "DELETE", "/api/accounts/admin", admin.as_deref(), &no_body()).status, 409);

    // No password or token in any log line, nor in clear in any file a node keeps (its Raft
    // log, its database and its WAL).
    let secrets = [
        ADMIN_PASSWORD,
        VIEWER_PASSWORD,
        MEMBER_PASSWORD,
        "brand-new-pass",
        "another-pass",
        token.as_str(),
        expiring.as_str(),
    ];
    for id in 1..=3 {
        cluster.kill(id);
    }
    let mut hashes = 0;
    for (path, bytes) in files_under(cluster.data_dir()) {
        for secret in secrets {
            assert!(!contains(&bytes, secret), "{} holds a secret in clear", path.display());
        }
        if contains(&bytes, "$argon2id$") {
            hashes += 1;
        }
    }
    assert!(hashes >= 3, "the hashes were not found where the accounts are kept: the scan would see nothing");
    // The database's tables, read back: hashes only.
    let db = cluster.data_dir().join(format!("node{leader_id}")).join("labctl.db");
    let mut store = labctl::node::store::Store::connect(&db.to_string_lossy()).unwrap();
    let dump = store.dump().unwrap();
    assert!(dump.accounts.len() >= 3);
    assert!(dump.accounts.iter().all(|a| a.password_hash.starts_with("$argon2id$")));
    assert!(dump.sessions.iter().all(|s| s.token_hash.len() == 64 && s.token_hash != token));
    let text = serde_json::to_string(&dump).unwrap();
    for secret in secrets {
        assert!(!text.contains(secret), "the database holds a secret in clear");
    }
}

#[test]
fn without_a_configured_password_the_leader_makes_one_and_prints_it_once() {
    let cluster = TestCluster::start(3, 0, &["--auth"]);
    cluster.wait_for_leader(Duration::from_secs(10));
    let (id, line) = poll("the first admin's password to be printed", Duration::from_secs(15), || {
        (1..=3).find_map(|id| {
            let text = cluster.log_text(id);
            let line = text.lines().find(|l| l.trim_start().starts_with("password:"))?.to_string();
            Some((id, line))
        })
    });
    let password = line.trim().trim_start_matches("password:").trim().to_string();
    assert_eq!(password.len(), 32, "{line}");
    let everywhere: usize = (1..=3).map(|i| cluster.log_text(i).matches(&password).count()).sum();
    assert_eq!(everywhere, 1, "printed once, by node{id}, and nowhere else");
    let admin = basic("admin", &password);
    for i in 1..=3 {
        let addr = cluster.http_addr(i);
        poll(&format!("node{i} to know the admin"), Duration::from_secs(5), || {
            let r = call(addr, "GET", "/api/accounts", Some(&admin), &no_body());
            (r.status == 200).then_some(())
        });
    }
}

#[test]
fn open_mode_is_unchanged_and_says_so() {
    let cluster = TestCluster::start(1, 0, &[]);
    cluster.wait_for_leader(Duration::from_secs(10));
    let addr = cluster.http_addr(1);
    let r = call(
        addr,
        "POST",
        "/api/products",
        None,
        &json_body(json!({"title": "Dune", "price": 9.5, "currency": "GBP"})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(call(addr, "GET", "/api/me", None, &no_body()).json()["auth"], json!(false));
    let r = call(addr, "POST", "/api/login", None, &json_body(json!({"name": "admin", "password": "whatever-1"})));
    assert_eq!(r.status, 404, "{}", r.body);
}
