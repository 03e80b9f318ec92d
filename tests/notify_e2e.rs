//! Nodes with e-mail notifications configured mail each election they win and each task
//! assignment they answer, to a real SMTP server (aiosmtpd).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::smtp::{start_smtp, Options, Received, SmtpServer};
use common::{control, http_call, poll, HttpReply, TestCluster};
use labctl::proto::Request;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);
const JSON: (&str, &str) = ("Content-Type", "application/json");

fn call(addr: SocketAddr, method: &str, path: &str, body: &Value, headers: &[(&str, &str)]) -> HttpReply {
    let mut all = vec![JSON];
    all.extend_from_slice(headers);
    http_call(addr, method, path, &all, &body.to_string()).expect("the node answers")
}

/// Messages whose envelope names `rcpt`.
fn to(server: &SmtpServer, rcpt: &str) -> Vec<Received> {
    server.received().into_iter().filter(|m| m.rcpt_tos.iter().any(|r| r == rcpt)).collect()
}

fn subjects(mails: &[Received]) -> Vec<String> {
    mails.iter().map(|m| m.parsed().subject().unwrap_or_default().to_string()).collect()
}

/// The lines of a message's text body.
fn lines(mail: &Received) -> Vec<String> {
    let m = mail.parsed();
    m.body_text(0).unwrap_or_default().lines().map(|l| l.trim_end().to_string()).collect()
}

#[test]
fn leaders_mail_their_elections_and_task_assignments() {
    let Some(server) = start_smtp(&Options::default()) else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("labctl.toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nserver = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"labctl <labctl@example.com>\"\n\n\
             [notify]\nto = [\"ops@example.com\"]\n",
            server.port
        ),
    )
    .unwrap();
    let cluster = TestCluster::start(3, 0, &["--config", config.to_str().unwrap()]);
    let (leader, term) = cluster.wait_for_leader(WAIT);

    // The election mail.
    let subject = format!("labctl: node{leader} is the leader (term {term})");
    let mail = poll("the election mail", WAIT, || {
        to(&server, "ops@example.com").into_iter().find(|m| m.parsed().subject() == Some(subject.as_str()))
    });
    assert_eq!(mail.mail_from, "labctl@example.com");
    assert_eq!(mail.rcpt_tos, ["ops@example.com"]);
    let body = lines(&mail);
    assert!(body[0].starts_with(&format!("node{leader} won the election for term {term} at ")), "{body:?}");
    assert!(body.contains(&format!("HTTP API: http://{}/", cluster.http_addr(leader))), "{body:?}");

    // A task created with an assignee: the assignee hears of it.
    let http = cluster.http_addr(leader);
    let alice = call(http, "POST", "/api/users", &json!({"name": "Alice Example", "email": "alice@example.com"}), &[]);
    let bob = call(http, "POST", "/api/users", &json!({"name": "Bob", "email": "bob@example.com"}), &[]);
    assert_eq!((alice.status, bob.status), (201, 201), "{} {}", alice.body, bob.body);
    let (alice, bob) = (alice.json()["id"].as_i64().unwrap(), bob.json()["id"].as_i64().unwrap());
    let unassigned = call(http, "POST", "/api/tasks", &json!({"title": "Nobody's"}), &[]);
    assert_eq!(unassigned.status, 201, "{}", unassigned.body);
    let task = json!({
        "title": "Restock shelves", "description": "Aisle 4 first.", "priority": "high",
        "due_date": "2030-01-31", "assignee": alice,
    });
    let created = call(http, "POST", "/api/tasks", &task, &[("Idempotency-Key", "restock-1")]);
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_i64().unwrap();
    let mail = poll("the task mail to Alice", WAIT, || to(&server, "alice@example.com").into_iter().next());
    let parsed = mail.parsed();
    assert_eq!(parsed.subject(), Some(format!("labctl: task #{id} assigned to you: Restock shelves").as_str()));
    let rcpt = parsed.to().and_then(|a| a.first()).unwrap();
    assert_eq!((rcpt.name(), rcpt.address()), (Some("Alice Example"), Some("alice@example.com")));
    let body = lines(&mail);
    for line in ["Hello Alice Example,", "Status: todo", "Priority: high", "Due: 2030-01-31", "Aisle 4 first."] {
        assert!(body.iter().any(|l| l == line), "{line:?} not in {body:?}");
    }
    assert!(body.contains(&format!("http://{http}/api/tasks/{id}")), "{body:?}");

    // A retried create and a status change keep the assignee: no mail. Reassigning to Bob: his mail.
    let retried = call(http, "POST", "/api/tasks", &task, &[("Idempotency-Key", "restock-1")]);
    assert_eq!((retried.status, retried.json()["id"].as_i64()), (201, Some(id)), "{}", retried.body);
    let path = format!("/api/tasks/{id}");
    let started =
        call(http, "PUT", &path, &json!({"title": "Restock shelves", "status": "in_progress", "assignee": alice}), &[]);
    assert_eq!(started.status, 200, "{}", started.body);
    let moved =
        call(http, "PUT", &path, &json!({"title": "Restock shelves", "status": "in_progress", "assignee": bob}), &[]);
    assert_eq!(moved.status, 200, "{}", moved.body);
    let mail = poll("the task mail to Bob", WAIT, || to(&server, "bob@example.com").into_iter().next());
    assert_eq!(mail.parsed().subject(), Some(format!("labctl: task #{id} assigned to you: Restock shelves").as_str()));
    assert!(lines(&mail).iter().any(|l| l == "Status: in_progress"));
    // One mail thread sends in order, so a mail for the writes before Bob's would be here by now.
    assert_eq!(to(&server, "alice@example.com").len(), 1, "Alice was mailed once");

    // The next leader mails its own election.
    let next = (1..=3).find(|&n| n != leader).unwrap();
    cluster.send(next, &control(Request::Timeout, None, Value::Null));
    let (new_leader, new_term) =
        poll("a new leader", WAIT, || cluster.agreed_leader(&[1, 2, 3]).filter(|&(_, t)| t > term));
    let subject = format!("labctl: node{new_leader} is the leader (term {new_term})");
    poll("the second election mail", WAIT, || {
        subjects(&to(&server, "ops@example.com")).contains(&subject).then_some(())
    });
}
