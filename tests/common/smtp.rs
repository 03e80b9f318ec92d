//! A real SMTP server for tests: `tests/smtp_server.py` (aiosmtpd) on a free loopback port,
//! saving each message with its envelope; stopped when dropped. Without aiosmtpd the tests
//! skip with a loud message, except under `CI=true`, where they fail.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use super::poll;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_server.py");

/// How the server secures connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Starttls,
    Tls,
}

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct Options<'a> {
    pub mode: Option<Mode>,
    /// Login every client must give.
    pub login: Option<(&'a str, &'a str)>,
    /// Offer AUTH on an unencrypted connection too.
    pub auth_over_plain: bool,
    pub cert: Option<&'a TestCert>,
}

/// A self-signed certificate for `localhost` (only: 127.0.0.1 is a name it does not match).
#[derive(Debug)]
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub tls: bool,
    pub authenticated: bool,
    pub login: Option<String>,
    /// The message bytes after DATA.
    pub raw: Vec<u8>,
}

impl Received {
    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default().parse(&self.raw).expect("the message parses as MIME")
    }
}

/// A running server.
pub struct SmtpServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
    _stdin: ChildStdin,
}

/// Whether the tests can run; prints SKIPPED (or panics under CI) when not.
fn available(what: &str, ok: bool, fix: &str) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what} is missing and CI=true: {fix}");
    }
    eprintln!("SKIPPED: {what} is missing ({fix})");
    false
}

fn aiosmtpd_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes a certificate with the openssl command; None (skip) without openssl.
pub fn test_cert() -> Option<TestCert> {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = TestCert { cert: dir.path().join("cert.pem"), key: dir.path().join("key.pem"), _dir: dir };
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&cert.key)
        .arg("-out")
        .arg(&cert.cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    available("the openssl command", made, "apt-get install openssl; scripts/test-env installs it").then_some(cert)
}

/// A server speaking `mode` with a fresh certificate, and that certificate; None (skip) when
/// aiosmtpd or openssl is missing.
pub fn start_tls_smtp(mode: Mode, login: Option<(&str, &str)>) -> Option<(SmtpServer, TestCert)> {
    let cert = test_cert()?;
    let server = start_smtp(&Options { mode: Some(mode), login, cert: Some(&cert), ..Options::default() })?;
    Some((server, cert))
}

/// Starts a server; None (skip) when aiosmtpd is not installed.
pub fn start_smtp(options: &Options) -> Option<SmtpServer> {
    if !available("aiosmtpd", aiosmtpd_installed(), "pip install aiosmtpd; scripts/test-env installs it") {
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new("python3");
    command.arg(SCRIPT).arg("--dir").arg(dir.path());
    let mode = match options.mode.unwrap_or(Mode::Plain) {
        Mode::Plain => "plain",
        Mode::Starttls => "starttls",
        Mode::Tls => "tls",
    };
    command.args(["--mode", mode]);
    if let Some(cert) = options.cert {
        command.arg("--cert").arg(&cert.cert).arg("--key").arg(&cert.key);
    }
    if let Some((user, password)) = options.login {
        command.args(["--user", user, "--password", password]);
    }
    if options.auth_over_plain {
        command.arg("--auth-over-plain");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tests/smtp_server.py");
    let stdin = child.stdin.take().expect("stdin of the SMTP server");
    let stdout = child.stdout.take().expect("stdout of the SMTP server");
    // The script prints READY <port> once it listens, or exits.
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read from the SMTP server");
    let port = line
        .strip_prefix("READY ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("the SMTP server did not start: {line:?}"));
    Some(SmtpServer { port, dir, child, _stdin: stdin })
}

impl SmtpServer {
    /// Messages received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        let mut envelopes: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("read the mail dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        envelopes.sort();
        envelopes
            .iter()
            .map(|path| {
                let meta: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(path).expect("envelope")).expect("envelope JSON");
                let strings = |v: &serde_json::Value| -> Vec<String> {
                    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
                };
                Received {
                    mail_from: meta["mail_from"].as_str().unwrap_or_default().to_string(),
                    rcpt_tos: strings(&meta["rcpt_tos"]),
                    tls: meta["tls"].as_bool().unwrap_or(false),
                    authenticated: meta["authenticated"].as_bool().unwrap_or(false),
                    login: meta["login"].as_str().map(str::to_string),
                    raw: std::fs::read(path.with_extension("eml")).expect("message file"),
                }
            })
            .collect()
    }

    /// Waits until at least `n` messages have arrived.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        poll(&format!("{n} message(s) at the SMTP server"), timeout, || {
            let got = self.received();
            (got.len() >= n).then_some(got)
        })
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
