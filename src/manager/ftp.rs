//! The FTP sync: the processed file from the FTP server to the leader's upload endpoint.
//!
//! At every interval the thread downloads the file (passive mode, binary). When its SHA-256
//! differs from the last file the leader took, it is sent as the multipart field `file` to
//! `POST /api/upload/file` with the hash as `Idempotency-Key`, through leader changes like every
//! write. An unchanged file is not sent again. A missing file, a refused login or an unreachable
//! server is logged and tried again at the next interval.

use std::fmt;
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::Receiver;
use suppaftp::types::FileType;
use suppaftp::{FtpError, FtpStream, ImplFtpStream, RustlsConnector, RustlsFtpStream, TlsStream};

use super::leader::{Delivered, LeaderClient};
use super::{pause, sha256_hex, Stats};

/// The path files are uploaded to.
pub const UPLOAD_PATH: &str = "/api/upload/file";
/// Bounds every connect and every read or write on the FTP server.
const FTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the processed file is.
#[derive(Clone, PartialEq, Eq)]
pub struct FtpSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// Path of the file on the server, relative to the user's home or absolute.
    pub path: String,
    pub interval: Duration,
    /// Explicit FTPS (AUTH TLS).
    pub tls: bool,
}

impl fmt::Debug for FtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"***")
            .field("path", &self.path)
            .field("interval", &self.interval)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Starts the sync thread; it runs until `stop` closes.
pub fn start(
    settings: FtpSettings,
    tls: Option<Arc<rustls::ClientConfig>>,
    client: Arc<LeaderClient>,
    stats: Arc<Stats>,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("ftp-sync".into()).spawn(move || {
        let FtpSettings { host, port, user, path, interval, .. } = &settings;
        let scheme = if tls.is_some() { "ftps (explicit, AUTH TLS)" } else { "ftp" };
        log::info!("manager: FTP sync of {user}@{host}:{port}/{path} over {scheme} every {interval:?}");
        // The hash of the last file the leader answered for.
        let mut last: Option<String> = None;
        loop {
            match download(&settings, tls.as_ref()) {
                Ok(bytes) => {
                    let hash = sha256_hex(&bytes);
                    if last.as_deref() == Some(hash.as_str()) {
                        log::debug!("manager: {path} on FTP is unchanged");
                        Stats::add(&stats.ftp_unchanged, 1);
                    } else {
                        match upload(&client, &settings.path, &bytes, &hash) {
                            Delivered::Accepted { status, body } => {
                                log::info!(
                                    "manager: uploaded {path} ({} bytes, sha256 {}) to the leader: {status} {}",
                                    bytes.len(),
                                    &hash[..12],
                                    body.trim()
                                );
                                Stats::add(&stats.uploads, 1);
                                last = Some(hash);
                            }
                            Delivered::Rejected { status, body } => {
                                log::error!(
                                    "manager: the leader refused {path} ({status}: {}); it is sent again once it changes",
                                    body.trim()
                                );
                                Stats::add(&stats.ftp_errors, 1);
                                last = Some(hash);
                            }
                            Delivered::Stopped => break,
                        }
                    }
                }
                Err(e) => {
                    log::error!("manager: FTP {host}:{port}: {e:#}");
                    Stats::add(&stats.ftp_errors, 1);
                }
            }
            if pause(&stop, *interval) {
                break;
            }
        }
        log::info!("manager: FTP sync stopped");
    })
}

/// Logs in, downloads the file in binary passive mode, and logs out. With `tls` (explicit
/// FTPS) the session is secured with AUTH TLS before the login, and the server's certificate
/// verified with it.
pub fn download(settings: &FtpSettings, tls: Option<&Arc<rustls::ClientConfig>>) -> anyhow::Result<Vec<u8>> {
    let addr = crate::config::resolve(&settings.host, settings.port)?;
    let control =
        TcpStream::connect_timeout(&addr, FTP_TIMEOUT).with_context(|| format!("cannot connect to {addr}"))?;
    control.set_read_timeout(Some(FTP_TIMEOUT))?;
    control.set_write_timeout(Some(FTP_TIMEOUT))?;
    match tls {
        None => fetch(FtpStream::connect_with_stream(control).map_err(said).context("no FTP greeting")?, settings),
        Some(config) => {
            let ftp = RustlsFtpStream::connect_with_stream(control).map_err(said).context("no FTP greeting")?;
            let ftp = ftp
                .into_secure(RustlsConnector::from(config.clone()), &settings.host)
                .map_err(said)
                .with_context(|| format!("cannot secure the session with {} (AUTH TLS)", settings.host))?;
            fetch(ftp, settings)
        }
    }
}

/// The login and download of [`download`], on a plain or a secured session.
fn fetch<T: TlsStream>(ftp: ImplFtpStream<T>, settings: &FtpSettings) -> anyhow::Result<Vec<u8>> {
    let mut ftp = ftp.passive_stream_builder(|data_addr| {
        let stream = TcpStream::connect_timeout(&data_addr, FTP_TIMEOUT).map_err(FtpError::ConnectionError)?;
        stream.set_read_timeout(Some(FTP_TIMEOUT)).map_err(FtpError::ConnectionError)?;
        stream.set_write_timeout(Some(FTP_TIMEOUT)).map_err(FtpError::ConnectionError)?;
        Ok(stream)
    });
    ftp.login(settings.user.as_str(), settings.password.as_str())
        .map_err(said)
        .with_context(|| format!("login as {} refused", settings.user))?;
    ftp.transfer_type(FileType::Binary).map_err(said).context("binary mode refused")?;
    let bytes = ftp
        .retr_as_buffer(&settings.path)
        .map_err(said)
        .with_context(|| format!("cannot retrieve {}", settings.path))?;
    let _ = ftp.quit();
    Ok(bytes.into_inner())
}

/// An FTP error as the server said it (`550 Can't open …`), or the I/O error.
fn said(e: FtpError) -> anyhow::Error {
    match e {
        FtpError::UnexpectedResponse(response) => {
            anyhow::anyhow!("{}", response.as_string().unwrap_or_else(|_| response.to_string()).trim())
        }
        other => anyhow::Error::new(other),
    }
}

/// Sends `bytes` as the multipart field `file` to the leader.
fn upload(client: &LeaderClient, path: &str, bytes: &[u8], hash: &str) -> Delivered {
    let file_name: String = path
        .rsplit('/')
        .next()
        .unwrap_or(path)
        .chars()
        .map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' { c } else { '_' })
        .collect();
    let (content_type, body) = multipart("file", &file_name, "application/json", bytes);
    client.post(UPLOAD_PATH, &content_type, &body, hash, &format!("upload of {path}"))
}

/// A `multipart/form-data` body with one file field: (content type, body).
pub fn multipart(field: &str, file_name: &str, file_type: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = boundary_absent_from(bytes, format!("labctl-{}", &sha256_hex(bytes)[..24]));
    let mut body = Vec::with_capacity(bytes.len() + 256);
    let _ = write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file_name}\"\r\n\
         Content-Type: {file_type}\r\n\r\n"
    );
    body.extend_from_slice(bytes);
    let _ = write!(body, "\r\n--{boundary}--\r\n");
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// `candidate`, lengthened until it does not occur in `bytes`.
fn boundary_absent_from(bytes: &[u8], mut candidate: String) -> String {
    while bytes.windows(candidate.len()).any(|w| w == candidate.as_bytes()) {
        candidate.push('x');
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_body_has_one_file_part() {
        let (content_type, body) = multipart("file", "p.json", "application/json", b"[1,2]");
        let boundary = content_type.strip_prefix("multipart/form-data; boundary=").unwrap();
        let text = String::from_utf8(body).unwrap();
        assert_eq!(
            text,
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.json\"\r\n\
                 Content-Type: application/json\r\n\r\n[1,2]\r\n--{boundary}--\r\n"
            )
        );
    }

    #[test]
    fn the_boundary_never_occurs_in_the_file() {
        assert_eq!(boundary_absent_from(b"--labctl-ab and --labctl-abx", "labctl-ab".into()), "labctl-abxx");
        assert_eq!(boundary_absent_from(b"{}", "labctl-ab".into()), "labctl-ab");
    }

    #[test]
    fn the_password_is_not_in_debug_output() {
        let s = FtpSettings {
            host: "ftp".into(),
            port: 21,
            user: "u".into(),
            password: "secret".into(),
            path: "p".into(),
            interval: Duration::from_secs(30),
            tls: false,
        };
        assert!(!format!("{s:?}").contains("secret"));
    }
}
