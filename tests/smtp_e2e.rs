//! `labctl smtp send` against a real SMTP server (aiosmtpd, `tests/smtp_server.py`): what
//! arrives is parsed back as MIME and checked field by field; each kind of failure gives its
//! exit code and says what went wrong.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::smtp::{start_smtp, start_tls_smtp, Mode, Options, Received, SmtpServer};
use common::BIN;
use mail_parser::MimeHeaders;

const WAIT: Duration = Duration::from_secs(10);

/// One run of `labctl smtp send`, in a directory with no config file and with no LABCTL_*
/// variable but those given.
struct Send {
    command: Command,
    stdin: Option<String>,
}

fn labctl(dir: &Path) -> Send {
    let mut command = Command::new(BIN);
    command.args(["smtp", "send"]).current_dir(dir).env("RUST_LOG", "info");
    for (key, _) in std::env::vars() {
        if key.starts_with("LABCTL_") {
            command.env_remove(key);
        }
    }
    Send { command, stdin: None }
}

/// The usual message: from, to, body.
const MESSAGE: [&str; 6] = ["--from", "b@example.com", "--to", "a@example.com", "--body", "x"];

impl Send {
    fn args(mut self, args: &[&str]) -> Send {
        self.command.args(args);
        self
    }

    /// `--server host --port port`.
    fn server(self, host: &str, port: impl ToString) -> Send {
        self.args(&["--server", host, "--port", &port.to_string()])
    }

    fn env(mut self, key: &str, value: &str) -> Send {
        self.command.env(key, value);
        self
    }

    fn stdin(mut self, text: &str) -> Send {
        self.stdin = Some(text.to_string());
        self
    }

    fn run(mut self) -> Output {
        self.command.stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        self.command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = self.command.spawn().expect("run labctl smtp send");
        if let Some(text) = self.stdin {
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        child.wait_with_output().expect("labctl smtp send finishes")
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts success and that the server's answer was printed.
fn assert_sent(out: &Output) {
    assert!(out.status.success(), "send failed ({:?}): {}", out.status.code(), stderr(out));
    assert_eq!(stdout(out).trim(), "250 2.0.0 Message accepted for delivery");
}

/// Asserts exit code `code` and that stderr names `what`.
fn assert_fails(out: &Output, code: i32, what: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    for w in what {
        assert!(err.contains(w), "stderr lacks {w:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(stdout(out).is_empty(), "nothing printed as an answer: {}", stdout(out));
}

/// A text body as a reader sees it: lines ending in LF, no trailing blank lines (the SMTP
/// terminator adds one).
fn text(body: Option<std::borrow::Cow<'_, str>>) -> Option<String> {
    body.map(|b| b.replace("\r\n", "\n").trim_end().to_string())
}

fn only_message(server: &SmtpServer) -> Received {
    let got = server.wait_for(1, WAIT);
    assert_eq!(got.len(), 1, "exactly one message");
    got.into_iter().next().unwrap()
}

#[test]
fn a_message_with_every_part_arrives_as_sent() {
    let Some(server) = start_smtp(&Options::default()) else { return };
    let dir = tempfile::tempdir().unwrap();
    let png: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    std::fs::write(dir.path().join("chart.png"), &png).unwrap();
    std::fs::write(dir.path().join("prices.csv"), "title,price\nA,1.5\n").unwrap();
    std::fs::write(dir.path().join("report.dat"), b"%PDF-1.4 not really").unwrap();
    let out = labctl(dir.path())
        .server("127.0.0.1", server.port)
        .args(&["--tls", "none", "--from", "Lab Control <labctl@example.com>"])
        .args(&["--to", "ann@example.com", "--to", "Bob Builder <bob@example.org>"])
        .args(&["--cc", "carol@example.net", "--bcc", "dave@example.com"])
        .args(&["--subject", "Prix du jour — 3 fichiers", "--body", "Bonjour,\nles prix sont joints.\n"])
        .args(&["--html", "<p>Bonjour, <b>les prix</b> sont joints.</p>"])
        .args(&["--attach", "chart.png", "--attach", "prices.csv", "--attach", "report.dat:application/pdf"])
        .run();
    assert_sent(&out);
    let got = only_message(&server);
    assert_eq!(got.mail_from, "labctl@example.com");
    assert_eq!(
        got.rcpt_tos,
        ["ann@example.com", "bob@example.org", "carol@example.net", "dave@example.com"],
        "the envelope holds To, Cc and Bcc"
    );
    assert!(!got.tls && !got.authenticated);

    let m = got.parsed();
    let from = m.from().and_then(|a| a.first()).unwrap();
    assert_eq!((from.name(), from.address()), (Some("Lab Control"), Some("labctl@example.com")));
    let to: Vec<(Option<&str>, Option<&str>)> = m.to().unwrap().iter().map(|a| (a.name(), a.address())).collect();
    assert_eq!(to, [(None, Some("ann@example.com")), (Some("Bob Builder"), Some("bob@example.org"))]);
    let cc: Vec<Option<&str>> = m.cc().unwrap().iter().map(|a| a.address()).collect();
    assert_eq!(cc, [Some("carol@example.net")]);
    assert!(m.bcc().is_none(), "Bcc is in the envelope only, never in a header");
    assert_eq!(m.subject(), Some("Prix du jour — 3 fichiers"));
    assert!(m.message_id().is_some_and(|id| id.contains('@')), "a Message-ID");
    assert!(m.date().is_some(), "a Date");

    let root = m.content_type().unwrap();
    assert_eq!((root.ctype(), root.subtype()), ("multipart", Some("mixed")));
    assert_eq!(text(m.body_text(0)).as_deref(), Some("Bonjour,\nles prix sont joints."));
    assert_eq!(text(m.body_html(0)).as_deref(), Some("<p>Bonjour, <b>les prix</b> sont joints.</p>"));
    let alternative = m.part(1).unwrap().content_type().unwrap();
    assert_eq!((alternative.ctype(), alternative.subtype()), ("multipart", Some("alternative")));

    let attachments: Vec<(String, String, Vec<u8>)> = m
        .attachments()
        .map(|a| {
            let ct = a.content_type().unwrap();
            (
                a.attachment_name().unwrap().to_string(),
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()),
                a.contents().to_vec(),
            )
        })
        .collect();
    assert_eq!(
        attachments,
        [
            ("chart.png".to_string(), "image/png".to_string(), png),
            ("prices.csv".to_string(), "text/csv".to_string(), b"title,price\nA,1.5\n".to_vec()),
            ("report.dat".to_string(), "application/pdf".to_string(), b"%PDF-1.4 not really".to_vec()),
        ]
    );
}

#[test]
fn bodies_come_from_stdin_or_files_and_html_alone_is_html() {
    let Some(server) = start_smtp(&Options::default()) else { return };
    let dir = tempfile::tempdir().unwrap();
    let local =
        || labctl(dir.path()).server("127.0.0.1", server.port).args(&["--tls", "none", "--from", "l@example.com"]);

    assert_sent(&local().args(&["--to", "a@example.com", "-s", "piped"]).stdin("from stdin\n").run());
    std::fs::write(dir.path().join("body.txt"), "from a file\n").unwrap();
    assert_sent(&local().args(&["--to", "b@example.com", "--body-file", "body.txt"]).run());
    std::fs::write(dir.path().join("page.html"), "<h1>Only HTML</h1>").unwrap();
    assert_sent(&local().args(&["--to", "c@example.com", "--html-file", "page.html"]).run());

    let got = server.wait_for(3, WAIT);
    let piped = got[0].parsed();
    assert_eq!((piped.subject(), text(piped.body_text(0)).as_deref()), (Some("piped"), Some("from stdin")));
    let ct = piped.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("text", Some("plain")));
    assert_eq!(text(got[1].parsed().body_text(0)).as_deref(), Some("from a file"));
    let html = got[2].parsed();
    let ct = html.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("text", Some("html")));
    assert_eq!(text(html.body_html(0)).as_deref(), Some("<h1>Only HTML</h1>"));
    assert_eq!(html.attachment_count(), 0);
}

#[test]
fn starttls_with_a_trusted_self_signed_certificate_and_a_login_from_the_environment() {
    let Some((server, cert)) = start_tls_smtp(Mode::Starttls, Some(("bob", "s3cret pass"))) else { return };
    let dir = tempfile::tempdir().unwrap();
    // STARTTLS is the default mode; the login comes from the environment only.
    let out = labctl(dir.path())
        .server("localhost", server.port)
        .args(&["--ca-cert", cert.cert.to_str().unwrap(), "--to", "ann@example.com", "--body", "secure"])
        .env("LABCTL_SMTP_USER", "bob")
        .env("LABCTL_SMTP_PASSWORD", "s3cret pass")
        .env("LABCTL_SMTP_FROM", "ops@example.com")
        .run();
    assert_sent(&out);
    let got = only_message(&server);
    assert!(got.tls, "the message went over TLS");
    assert!(got.authenticated);
    assert_eq!(got.login.as_deref(), Some("bob"));
    assert_eq!(got.mail_from, "ops@example.com");
    assert_eq!(text(got.parsed().body_text(0)).as_deref(), Some("secure"));
}

#[test]
fn implicit_tls_with_the_certificate_named_in_the_config_file() {
    let Some((server, cert)) = start_tls_smtp(Mode::Tls, None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mail.toml");
    let toml = format!(
        "[smtp]\nserver = \"localhost\"\nport = {}\ntls = \"tls\"\nfrom = \"Lab <lab@example.com>\"\nca_cert = {:?}\n",
        server.port, cert.cert
    );
    std::fs::write(&config, toml).unwrap();
    let out =
        labctl(dir.path()).args(&["--config", config.to_str().unwrap(), "--to", "a@example.com", "--body", "x"]).run();
    assert_sent(&out);
    let got = only_message(&server);
    assert!(got.tls);
    assert_eq!(got.mail_from, "lab@example.com");
}

#[test]
fn login_on_an_unencrypted_server_with_the_password_in_the_config_file() {
    let options = Options { login: Some(("alice", "pw")), auth_over_plain: true, ..Options::default() };
    let Some(server) = start_smtp(&options) else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mail.toml");
    let toml = format!(
        "[smtp]\nserver = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nuser = \"alice\"\npassword = \"pw\"\n",
        server.port
    );
    std::fs::write(&config, toml).unwrap();
    let out = labctl(dir.path()).args(&["--config", config.to_str().unwrap()]).args(&MESSAGE).run();
    assert_sent(&out);
    let got = only_message(&server);
    assert_eq!((got.authenticated, got.login.as_deref(), got.tls), (true, Some("alice"), false));
}

#[test]
fn a_bad_address_is_refused_before_any_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let me = ["--from", "me@example.com"];
    let to = ["--to", "a@example.com"];
    for (args, what) in [
        (vec![&me[..], &["--to", "bob@"]], "invalid recipient (--to) address \"bob@\""),
        (vec![&me[..], &to, &["--cc", "no at sign"]], "invalid copy (--cc)"),
        (vec![&me[..], &to, &["--bcc", "x@@y"]], "invalid blind copy (--bcc)"),
        (vec![&["--from", "me at example.com"][..], &to], "invalid sender (--from)"),
        (vec![&to[..]], "no sender"),
        (vec![&me[..], &to, &["--attach", "missing.pdf"]], "cannot read attachment missing.pdf"),
    ] {
        let out = labctl(dir.path())
            .server("127.0.0.1", port)
            .args(&["--tls", "none", "--body", "x"])
            .args(&args.concat())
            .run();
        assert_fails(&out, 2, &[what]);
    }
    let err = listener.accept().expect_err("no connection was attempted");
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn a_wrong_password_or_no_login_is_refused() {
    let Some((server, cert)) = start_tls_smtp(Mode::Starttls, Some(("bob", "right"))) else { return };
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)]| {
        let mut send =
            labctl(dir.path()).server("localhost", server.port).args(&["--ca-cert", cert.cert.to_str().unwrap()]);
        for (key, value) in env {
            send = send.env(key, value);
        }
        send.args(&MESSAGE).run()
    };
    let out = run(&[("LABCTL_SMTP_USER", "bob"), ("LABCTL_SMTP_PASSWORD", "wrong")]);
    assert_fails(&out, 5, &["refused the login of \"bob\"", "535"]);
    assert_fails(&run(&[]), 5, &["530", "wants a login"]);
    assert_fails(&run(&[("LABCTL_SMTP_USER", "bob")]), 2, &["no password", "LABCTL_SMTP_PASSWORD"]);
    assert!(server.received().is_empty());
}

#[test]
fn a_refused_recipient_is_reported_with_the_servers_answer() {
    let Some(server) = start_smtp(&Options::default()) else { return };
    let dir = tempfile::tempdir().unwrap();
    let local =
        || labctl(dir.path()).server("127.0.0.1", server.port).args(&["--tls", "none", "--from", "b@example.com"]);
    let out = local().args(&["--body", "x"]).run();
    assert_eq!(out.status.code(), Some(2), "--to is required: {}", stderr(&out));
    let out = local().args(&["--to", "refused@example.com", "--body", "x"]).run();
    assert_fails(&out, 6, &["refused the message", "550 5.1.1 <refused@example.com>: Recipient address rejected"]);
    assert!(server.received().is_empty());
}

#[test]
fn a_closed_port_or_a_silent_server_is_unreachable() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = labctl(dir.path()).server("127.0.0.1", closed).args(&["--tls", "none"]).args(&MESSAGE).run();
    assert_fails(&out, 3, &["cannot reach the SMTP server 127.0.0.1:", "Connection refused"]);

    // Accepts connections and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let out =
        labctl(dir.path()).server("127.0.0.1", port).args(&["--tls", "none", "--timeout", "1"]).args(&MESSAGE).run();
    assert_fails(&out, 3, &["no answer within 1 s"]);
    assert!(started.elapsed() < Duration::from_secs(10), "the timeout holds");
    drop(silent);
}

#[test]
fn tls_failures_say_so() {
    let Some(plain) = start_smtp(&Options::default()) else { return };
    let Some((starttls, cert)) = start_tls_smtp(Mode::Starttls, None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = cert.cert.to_str().unwrap();
    let send =
        |host: &str, port: u16, args: &[&str]| labctl(dir.path()).server(host, port).args(args).args(&MESSAGE).run();

    // Implicit TLS to a server that speaks plain SMTP.
    let out = send("127.0.0.1", plain.port, &["--tls", "tls"]);
    assert_fails(&out, 4, &["TLS with 127.0.0.1:", "does not speak TLS on this port"]);
    // STARTTLS (the default) to a server that does not offer it.
    assert_fails(&send("127.0.0.1", plain.port, &[]), 4, &["does not offer STARTTLS"]);
    // A self-signed certificate nobody said to trust.
    assert_fails(&send("localhost", starttls.port, &[]), 4, &["invalid peer certificate", "--ca-cert"]);
    // Trusted, but issued for another name (localhost, not 127.0.0.1).
    assert_fails(&send("127.0.0.1", starttls.port, &["--ca-cert", ca]), 4, &["certificate"]);
    // A --ca-cert that is no certificate.
    std::fs::write(dir.path().join("junk.pem"), "hello").unwrap();
    let out = send("localhost", starttls.port, &["--ca-cert", "junk.pem"]);
    assert_fails(&out, 2, &["junk.pem holds no PEM certificate"]);
    assert!(plain.received().is_empty() && starttls.received().is_empty());
}
