//! `labctl smtp send`: an e-mail client (lettre over rustls).
//!
//! [`settings`] resolves the server (flags, `LABCTL_SMTP_*`, `[smtp]`, defaults), [`compose`]
//! builds the MIME message and checks every address before anything is sent, and [`mailer`]
//! talks to the server step by step so that a failure says which step failed. Nodes send their
//! notifications through the same [`Mailer`].
//!
//! Exit codes of `labctl smtp send` (see [`SendError::exit_code`]): 0 sent, 2 bad input (no
//! connection was made), 3 server unreachable, 4 TLS failed, 5 login refused, 6 message refused.

pub mod compose;
pub mod mailer;
pub mod settings;

use std::process::ExitCode;

pub use self::mailer::Mailer;
pub use self::settings::{ServerArgs, Settings, TlsMode};
use crate::config::FileConfig;

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Bad addresses, unreadable files, bad settings: found before connecting.
    #[error("{0}")]
    Input(String),
    #[error("cannot reach the SMTP server {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("TLS with {server} failed: {reason}")]
    Tls { server: String, reason: String },
    /// `user` is empty when the server wants a login and none was given.
    #[error("{server} refused the login{}: {reason}", login_of(.user))]
    Login { server: String, user: String, reason: String },
    #[error("{server} refused the message: {reason}")]
    Refused { server: String, reason: String },
}

fn login_of(user: &str) -> String {
    if user.is_empty() {
        String::new()
    } else {
        format!(" of {user:?}")
    }
}

impl SendError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            SendError::Input(_) => 2,
            SendError::Unreachable { .. } => 3,
            SendError::Tls { .. } => 4,
            SendError::Login { .. } => 5,
            SendError::Refused { .. } => 6,
        }
    }
}

/// Options of `labctl smtp`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Exit codes of send: 0 sent, 2 bad input (nothing was sent), 3 server unreachable, \
                        4 TLS failed, 5 login refused, 6 message refused by the server.")]
pub struct Args {
    #[command(subcommand)]
    pub command: SmtpCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SmtpCommand {
    /// Send one e-mail and print the server's answer
    #[command(after_help = "The password is never a flag: set LABCTL_SMTP_PASSWORD (or LABCTL_SMTP_PASSWORD_FILE, \
                            or [smtp] password in the config file).\n\n\
                            Exit codes: 0 sent, 2 bad input (nothing was sent), 3 server unreachable, \
                            4 TLS failed, 5 login refused, 6 message refused by the server.")]
    Send(SendArgs),
}

/// Options of `labctl smtp send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub message: compose::MessageArgs,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Runs `labctl smtp …`.
pub fn run(args: Args, file: &FileConfig) -> anyhow::Result<ExitCode> {
    match args.command {
        SmtpCommand::Send(send) => Ok(match send_once(&send, file) {
            Ok(answer) => {
                println!("{answer}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("labctl smtp send: {e}");
                ExitCode::from(e.exit_code())
            }
        }),
    }
}

/// Checks everything, sends, and returns the server's answer as one line.
fn send_once(args: &SendArgs, file: &FileConfig) -> Result<String, SendError> {
    let settings = Settings::resolve(&args.server, &file.smtp)?;
    let from = settings.from.clone().ok_or_else(|| {
        SendError::Input("no sender: give --from, LABCTL_SMTP_FROM or [smtp] from in the config file".into())
    })?;
    let message = args.message.build(from)?;
    let mailer = Mailer::new(settings)?;
    let recipients = message.envelope().to().len();
    let response = mailer.send(&message)?;
    let s = mailer.settings();
    log::info!(
        "sent to {recipients} recipient(s) through {} ({}{})",
        s.address(),
        s.tls,
        s.login.as_ref().map(|l| format!(", logged in as {}", l.user)).unwrap_or_default()
    );
    Ok(mailer::answer_text(&response))
}
