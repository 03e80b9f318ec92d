//! Where and how to reach the mail server: flags, `LABCTL_SMTP_*` environment, `[smtp]` in the
//! config file, defaults — in that order. The password never comes from a flag.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::Mailbox;

use super::SendError;
use crate::config::SmtpFile;

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// Plain connection upgraded with STARTTLS before anything else is sent; refused if the
    /// server does not offer it (the submission port 587)
    Starttls,
    /// TLS from the first byte (implicit TLS, the submissions port 465)
    Tls,
    /// No encryption: only for a relay on a trusted network
    None,
}

impl TlsMode {
    /// The usual port of this mode.
    pub fn default_port(self) -> u16 {
        match self {
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
            TlsMode::None => 25,
        }
    }

    fn parse(text: &str) -> Result<TlsMode, String> {
        <TlsMode as clap::ValueEnum>::from_str(text.trim(), true)
            .map_err(|_| format!("tls must be starttls, tls or none, not {text:?}"))
    }
}

impl std::fmt::Display for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsMode::Starttls => "STARTTLS",
            TlsMode::Tls => "implicit TLS",
            TlsMode::None => "unencrypted",
        })
    }
}

/// The password's environment variable; there is no flag, so it never shows in `ps`.
pub const PASSWORD_ENV: &str = "LABCTL_SMTP_PASSWORD";
/// A file holding the password, for secrets mounted as files.
pub const PASSWORD_FILE_ENV: &str = "LABCTL_SMTP_PASSWORD_FILE";
/// Seconds to wait for the server by default.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;

/// Flags choosing the server (`#[command(flatten)]` them).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// SMTP server host name or address [default: localhost]
    #[arg(long, env = "LABCTL_SMTP_SERVER", value_name = "HOST")]
    pub server: Option<String>,
    /// SMTP server port [default: 587 with starttls, 465 with tls, 25 with none]
    #[arg(long, env = "LABCTL_SMTP_PORT")]
    pub port: Option<u16>,
    /// Connection security [default: starttls; tls when the port is 465]
    #[arg(long, env = "LABCTL_SMTP_TLS", value_enum, value_name = "MODE")]
    pub tls: Option<TlsMode>,
    /// Login name, if the server needs one; the password comes from LABCTL_SMTP_PASSWORD,
    /// LABCTL_SMTP_PASSWORD_FILE or the config file, never from a flag [default: no login]
    #[arg(long, env = "LABCTL_SMTP_USER")]
    pub user: Option<String>,
    /// Sender address, `user@host` or `"Name <user@host>"` (config: [smtp] from)
    #[arg(long, env = "LABCTL_SMTP_FROM", value_name = "ADDRESS")]
    pub from: Option<String>,
    /// Seconds to wait for the server to connect and to answer each command [default: 30]
    #[arg(long, env = "LABCTL_SMTP_TIMEOUT", value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// PEM file of extra certificates to trust: a private CA or a server's self-signed
    /// certificate (the public roots stay trusted)
    #[arg(long, env = "LABCTL_SMTP_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

/// [`ServerArgs`] read from the environment only, for a node (which has no SMTP flags).
#[derive(Debug, clap::Parser)]
struct EnvOnly {
    #[command(flatten)]
    server: ServerArgs,
}

impl ServerArgs {
    /// The `LABCTL_SMTP_*` variables that are set.
    pub fn from_env() -> Result<ServerArgs, SendError> {
        <EnvOnly as clap::Parser>::try_parse_from(["labctl"])
            .map(|e| e.server)
            .map_err(|e| SendError::Input(format!("bad LABCTL_SMTP_* environment: {}", e.render().to_string().trim())))
    }
}

/// A login.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("user", &self.user).finish_non_exhaustive()
    }
}

/// Everything needed to hand a message to the server.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: String,
    pub port: u16,
    pub tls: TlsMode,
    pub timeout: Duration,
    pub login: Option<Login>,
    pub from: Option<Mailbox>,
    pub ca_cert: Option<PathBuf>,
}

impl Settings {
    /// Merges flags/environment over the file over the defaults, and validates.
    pub fn resolve(args: &ServerArgs, file: &SmtpFile) -> Result<Settings, SendError> {
        let server = args.server.clone().or_else(|| file.server.clone()).unwrap_or_else(|| "localhost".into());
        let server = server.trim().to_string();
        if server.is_empty() {
            return Err(SendError::Input("the SMTP server name is empty".into()));
        }
        let file_tls = file.tls.as_deref().map(TlsMode::parse).transpose().map_err(SendError::Input)?;
        let port = args.port.or(file.port);
        let tls = args.tls.or(file_tls).unwrap_or(if port == Some(465) { TlsMode::Tls } else { TlsMode::Starttls });
        let port = port.unwrap_or(tls.default_port());
        if port == 0 {
            return Err(SendError::Input("the SMTP port must not be 0".into()));
        }
        let timeout_secs = args.timeout.or(file.timeout_secs).unwrap_or(DEFAULT_TIMEOUT_SECS);
        if timeout_secs == 0 {
            return Err(SendError::Input("the SMTP timeout must be at least 1 second".into()));
        }
        let from = args
            .from
            .as_deref()
            .or(file.from.as_deref())
            .map(|text| super::compose::mailbox("sender (--from)", text))
            .transpose()?;
        let login = resolve_login(args.user.clone().or_else(|| file.user.clone()), file)?;
        Ok(Settings {
            server,
            port,
            tls,
            timeout: Duration::from_secs(timeout_secs),
            login,
            from,
            ca_cert: args.ca_cert.clone().or_else(|| file.ca_cert.clone()),
        })
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        if self.server.contains(':') {
            format!("[{}]:{}", self.server, self.port)
        } else {
            format!("{}:{}", self.server, self.port)
        }
    }
}

/// The password: `LABCTL_SMTP_PASSWORD`, then `LABCTL_SMTP_PASSWORD_FILE`, then the file's
/// `password`, then its `password_file`.
fn resolve_login(user: Option<String>, file: &SmtpFile) -> Result<Option<Login>, SendError> {
    let from_env = std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty());
    let file_env = std::env::var_os(PASSWORD_FILE_ENV).filter(|p| !p.is_empty()).map(PathBuf::from);
    let password = match (from_env, file_env) {
        (Some(p), _) => Some(p),
        (None, Some(path)) => Some(read_password(&path)?),
        (None, None) => match (&file.password, &file.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => Some(read_password(path)?),
            (None, None) => None,
        },
    };
    match (user, password) {
        (Some(user), Some(password)) if !user.trim().is_empty() => Ok(Some(Login { user, password })),
        (None, None) => Ok(None),
        (Some(user), None) if !user.trim().is_empty() => Err(SendError::Input(format!(
            "a login name ({user}) is set but no password: set {PASSWORD_ENV}, {PASSWORD_FILE_ENV} or [smtp] password"
        ))),
        _ => Err(SendError::Input(
            "a password is set but no login name: set LABCTL_SMTP_USER, --user or [smtp] user".into(),
        )),
    }
}

fn read_password(path: &std::path::Path) -> Result<String, SendError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SendError::Input(format!("cannot read the SMTP password file {}: {e}", path.display())))?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> SmtpFile {
        toml::from_str::<crate::config::FileConfig>(text).unwrap().smtp
    }

    #[test]
    fn port_and_tls_defaults_follow_each_other() {
        let none = ServerArgs::default();
        let s = Settings::resolve(&none, &SmtpFile::default()).unwrap();
        assert_eq!((s.server.as_str(), s.port, s.tls), ("localhost", 587, TlsMode::Starttls));
        let s =
            Settings::resolve(&ServerArgs { port: Some(465), ..ServerArgs::default() }, &SmtpFile::default()).unwrap();
        assert_eq!((s.port, s.tls), (465, TlsMode::Tls));
        let s =
            Settings::resolve(&ServerArgs { tls: Some(TlsMode::Tls), ..ServerArgs::default() }, &SmtpFile::default())
                .unwrap();
        assert_eq!((s.port, s.tls), (465, TlsMode::Tls));
        let s = Settings::resolve(&none, &file("[smtp]\ntls = \"none\"\n")).unwrap();
        assert_eq!((s.port, s.tls), (25, TlsMode::None));
        assert_eq!(s.timeout, Duration::from_secs(DEFAULT_TIMEOUT_SECS));
    }

    #[test]
    fn flags_beat_the_file() {
        let f = file("[smtp]\nserver = \"mail.example.org\"\nport = 2525\ntls = \"tls\"\ntimeout_secs = 5\nfrom = \"a@example.org\"\n");
        let s = Settings::resolve(&ServerArgs::default(), &f).unwrap();
        assert_eq!(
            (s.server.as_str(), s.port, s.tls, s.timeout.as_secs()),
            ("mail.example.org", 2525, TlsMode::Tls, 5)
        );
        assert_eq!(s.from.unwrap().email.to_string(), "a@example.org");
        let args = ServerArgs {
            server: Some("127.0.0.1".into()),
            port: Some(1025),
            tls: Some(TlsMode::None),
            from: Some("Ops <ops@example.com>".into()),
            ..ServerArgs::default()
        };
        let s = Settings::resolve(&args, &f).unwrap();
        assert_eq!((s.server.as_str(), s.port, s.tls), ("127.0.0.1", 1025, TlsMode::None));
        assert_eq!(s.from.unwrap().to_string(), "Ops <ops@example.com>");
    }

    #[test]
    fn the_example_config_file_is_valid() {
        let example: crate::config::FileConfig = toml::from_str(include_str!("../../config/smtp.toml")).unwrap();
        let s = Settings::resolve(&ServerArgs::default(), &example.smtp).unwrap();
        assert_eq!((s.server.as_str(), s.port, s.tls), ("smtp.example.com", 587, TlsMode::Starttls));
        assert_eq!(s.from.unwrap().to_string(), "labctl <labctl@example.com>");
        assert_eq!(example.notify.tasks, Some(true));
    }

    #[test]
    fn bad_settings_are_refused_before_connecting() {
        assert!(Settings::resolve(&ServerArgs::default(), &file("[smtp]\ntls = \"ssl\"\n")).is_err());
        assert!(Settings::resolve(&ServerArgs::default(), &file("[smtp]\nfrom = \"not an address\"\n")).is_err());
        assert!(
            Settings::resolve(&ServerArgs { port: Some(0), ..ServerArgs::default() }, &SmtpFile::default()).is_err()
        );
        assert!(
            Settings::resolve(&ServerArgs { timeout: Some(0), ..ServerArgs::default() }, &SmtpFile::default()).is_err()
        );
    }

    #[test]
    fn login_needs_both_halves() {
        // The environment is left alone here; the file carries the password.
        if std::env::var_os(PASSWORD_ENV).is_some() || std::env::var_os(PASSWORD_FILE_ENV).is_some() {
            return;
        }
        let f = file("[smtp]\nuser = \"bob\"\npassword = \"secret\"\n");
        let login = Settings::resolve(&ServerArgs::default(), &f).unwrap().login.unwrap();
        assert_eq!((login.user.as_str(), login.password.as_str()), ("bob", "secret"));
        assert!(!format!("{login:?}").contains("secret"), "the password never shows in debug output");
        let err = Settings::resolve(&ServerArgs::default(), &file("[smtp]\nuser = \"bob\"\n")).unwrap_err();
        assert!(err.to_string().contains(PASSWORD_ENV), "{err}");
        assert!(Settings::resolve(&ServerArgs::default(), &file("[smtp]\npassword = \"x\"\n")).is_err());
    }
}
