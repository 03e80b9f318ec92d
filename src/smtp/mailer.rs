//! Handing a message to the server, one step at a time (connect, STARTTLS, login, send), so
//! that a failure names the step that failed: the server cannot be reached, TLS failed, the
//! login was refused, or the message was refused.

use std::error::Error as _;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, SmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use lettre::Message;

use super::settings::{Settings, TlsMode};
use super::SendError;

/// Login methods tried, in this order, among those the server offers.
const MECHANISMS: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

/// Sends messages through one server with fixed settings.
#[derive(Clone)]
pub struct Mailer {
    settings: Settings,
    tls: Option<TlsParameters>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// The step a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Connect,
    Starttls,
    Login,
    Send,
}

impl Mailer {
    /// Prepares TLS (reading `ca_cert`); makes no connection.
    pub fn new(settings: Settings) -> Result<Mailer, SendError> {
        let tls = match settings.tls {
            TlsMode::None => None,
            TlsMode::Starttls | TlsMode::Tls => Some(tls_parameters(&settings)?),
        };
        Ok(Mailer { settings, tls })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Sends `message` to the recipients of its envelope; the server's final answer.
    pub fn send(&self, message: &Message) -> Result<Response, SendError> {
        let s = &self.settings;
        let hello = ClientId::default();
        let wrapper = if s.tls == TlsMode::Tls { self.tls.as_ref() } else { None };
        let mut conn = SmtpConnection::connect((s.server.as_str(), s.port), Some(s.timeout), &hello, wrapper, None)
            .map_err(|e| self.failure(Step::Connect, e))?;
        if s.tls == TlsMode::Starttls {
            if !conn.can_starttls() {
                conn.abort();
                return Err(SendError::Tls {
                    server: s.address(),
                    reason: "the server does not offer STARTTLS; use --tls tls if it speaks TLS from the start, \
                             or --tls none to send unencrypted"
                        .into(),
                });
            }
            let params = self.tls.as_ref().expect("TLS parameters exist in STARTTLS mode");
            conn.starttls(params, &hello).map_err(|e| self.failure(Step::Starttls, e))?;
        }
        if let Some(login) = &s.login {
            if conn.server_info().get_auth_mechanism(&MECHANISMS).is_none() {
                conn.abort();
                let hint = if conn.is_encrypted() {
                    ""
                } else {
                    " (many servers offer a login only over TLS: try --tls starttls or --tls tls)"
                };
                return Err(SendError::Login {
                    server: s.address(),
                    user: login.user.clone(),
                    reason: format!("the server offers no login (AUTH PLAIN or LOGIN){hint}"),
                });
            }
            if !conn.is_encrypted() {
                log::warn!("sending the SMTP password to {} unencrypted (--tls none)", s.address());
            }
            let credentials = Credentials::new(login.user.clone(), login.password.clone());
            conn.auth(&MECHANISMS, &credentials).map_err(|e| self.failure(Step::Login, e))?;
        }
        let response = conn.send(message.envelope(), &message.formatted()).map_err(|e| self.failure(Step::Send, e))?;
        let _ = conn.quit();
        Ok(response)
    }

    /// Turns a lettre error into the failure a user can act on.
    fn failure(&self, step: Step, e: lettre::transport::smtp::Error) -> SendError {
        let s = &self.settings;
        let server = s.address();
        if let Some(tls) = tls_cause(&e) {
            let hint = match tls {
                rustls::Error::InvalidCertificate(_) => {
                    " (to trust a private CA or a self-signed certificate, give it with --ca-cert FILE)"
                }
                rustls::Error::InvalidMessage(_) if s.tls == TlsMode::Tls => {
                    " (the server does not speak TLS on this port: try --tls starttls or --tls none)"
                }
                _ => "",
            };
            return SendError::Tls { server, reason: format!("{tls}{hint}") };
        }
        if let Some(code) = e.status() {
            let reason = format!("{code} {}", server_text(&e));
            if step == Step::Send && code.to_string() == "530" && s.login.is_none() {
                return SendError::Login {
                    server,
                    user: String::new(),
                    reason: format!(
                        "{reason} (the server wants a login: set --user or LABCTL_SMTP_USER, and LABCTL_SMTP_PASSWORD)"
                    ),
                };
            }
            return match step {
                Step::Login => SendError::Login {
                    server,
                    user: s.login.as_ref().map(|l| l.user.clone()).unwrap_or_default(),
                    reason,
                },
                Step::Starttls => SendError::Tls { server, reason: format!("STARTTLS refused: {reason}") },
                Step::Connect | Step::Send => SendError::Refused { server, reason },
            };
        }
        let reason = cause_text(&e);
        if timed_out(&e) {
            let hint = if step == Step::Connect && s.tls != TlsMode::Tls {
                " (if the port speaks TLS from the start, try --tls tls)"
            } else {
                ""
            };
            return SendError::Unreachable {
                server,
                reason: format!("no answer within {} s{hint}", s.timeout.as_secs()),
            };
        }
        match step {
            Step::Connect => {
                let hint = if s.tls != TlsMode::Tls && s.port == 465 {
                    " (port 465 usually speaks TLS from the start: try --tls tls)"
                } else {
                    ""
                };
                SendError::Unreachable { server, reason: format!("{reason}{hint}") }
            }
            Step::Starttls => SendError::Tls { server, reason },
            Step::Login => {
                SendError::Login { server, user: s.login.as_ref().map(|l| l.user.clone()).unwrap_or_default(), reason }
            }
            Step::Send if e.is_client() => SendError::Refused { server, reason },
            Step::Send => SendError::Unreachable { server, reason: format!("connection lost while sending: {reason}") },
        }
    }
}

/// TLS settings: the public roots plus `ca_cert`, checked for the server's name.
fn tls_parameters(settings: &Settings) -> Result<TlsParameters, SendError> {
    let mut builder = TlsParameters::builder(settings.server.clone());
    if let Some(path) = &settings.ca_cert {
        let pem = std::fs::read(path)
            .map_err(|e| SendError::Input(format!("cannot read the CA certificate {}: {e}", path.display())))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(SendError::Input(format!("{} holds no PEM certificate", path.display())));
        }
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| SendError::Input(format!("cannot read the certificates in {}: {e}", path.display())))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| SendError::Input(format!("cannot set up TLS for {}: {}", settings.server, cause_text(&e))))
}

/// The rustls error somewhere in the chain of `e`, if TLS is what failed.
fn tls_cause(e: &lettre::transport::smtp::Error) -> Option<&rustls::Error> {
    let mut source = e.source();
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        source = err.source();
    }
    None
}

/// Whether a socket timeout ended the exchange (a read timeout is `WouldBlock` on Unix).
fn timed_out(e: &lettre::transport::smtp::Error) -> bool {
    let mut source = e.source();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// What the server said after its reply code.
fn server_text(e: &lettre::transport::smtp::Error) -> String {
    e.source().map(|s| s.to_string()).unwrap_or_default()
}

/// The innermost description of `e` (lettre's own outer text says only "Connection error").
fn cause_text(e: &lettre::transport::smtp::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        text = err.to_string();
        source = err.source();
    }
    text
}

/// The server's answer on one line: `250 2.0.0 Ok: queued as …`.
pub fn answer_text(response: &Response) -> String {
    let lines: Vec<&str> = response.message().collect();
    format!("{} {}", response.code(), lines.join(" "))
}
