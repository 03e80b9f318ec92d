//! `--upload-ftp`: the processed file to an FTP server, atomically.
//!
//! The bytes go to `<path>.part` first (passive mode, binary) and are then renamed to
//! `<path>`: a reader polling `<path>` sees the previous file or the new one, never half of
//! one. The password comes from the config file or `LABCTL_FTP_PASSWORD`.

use std::io::Cursor;
use std::net::TcpStream;
use std::time::Duration;

use suppaftp::types::FileType;
use suppaftp::{FtpError, FtpStream, ImplFtpStream, Mode, RustlsConnector, RustlsFtpStream, TlsStream};

/// Where to upload.
#[derive(Clone)]
pub struct FtpTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// Remote path, relative to the user's home.
    pub path: String,
    pub timeout: Duration,
    /// Explicit FTPS (AUTH TLS) with this client, which verifies the server.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for FtpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FtpTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"***")
            .field("path", &self.path)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why an upload failed: the step and the server's answer.
#[derive(Debug, thiserror::Error)]
#[error("FTP upload to {user}@{host}:{port}/{path} failed while {step}: {error}")]
pub struct UploadError {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub path: String,
    pub step: &'static str,
    pub error: String,
}

/// Uploads `bytes` to the target's path; the number of bytes sent.
pub fn upload(bytes: &[u8], target: &FtpTarget) -> Result<u64, UploadError> {
    let fail = |step: &'static str| {
        move |error: String| UploadError {
            host: target.host.clone(),
            port: target.port,
            user: target.user.clone(),
            path: target.path.clone(),
            step,
            error,
        }
    };
    let addr =
        crate::config::resolve(&target.host, target.port).map_err(|e| fail("resolving the host")(e.to_string()))?;
    match &target.tls {
        None => {
            let ftp =
                FtpStream::connect_timeout(addr, target.timeout).map_err(|e| fail("connecting")(e.to_string()))?;
            send(ftp, bytes, target, &fail)
        }
        Some(config) => {
            let ftp = RustlsFtpStream::connect_timeout(addr, target.timeout)
                .map_err(|e| fail("connecting")(e.to_string()))?;
            // The handshake reads too: it may not wait forever.
            ftp.get_ref().set_read_timeout(Some(target.timeout)).map_err(|e| fail("connecting")(e.to_string()))?;
            let ftp = ftp
                .into_secure(RustlsConnector::from(config.clone()), &target.host)
                .map_err(|e| fail("securing the session (AUTH TLS)")(e.to_string()))?;
            send(ftp, bytes, target, &fail)
        }
    }
}

/// The login and upload of [`upload`], on a plain or a secured session.
fn send<T: TlsStream, F: Fn(String) -> UploadError>(
    ftp: ImplFtpStream<T>,
    bytes: &[u8],
    target: &FtpTarget,
    fail: &impl Fn(&'static str) -> F,
) -> Result<u64, UploadError> {
    let timeout = target.timeout;
    let mut ftp = ftp.passive_stream_builder(move |data_addr| {
        let stream = TcpStream::connect_timeout(&data_addr, timeout).map_err(FtpError::ConnectionError)?;
        stream.set_read_timeout(Some(timeout)).map_err(FtpError::ConnectionError)?;
        stream.set_write_timeout(Some(timeout)).map_err(FtpError::ConnectionError)?;
        Ok(stream)
    });
    ftp.get_ref().set_read_timeout(Some(timeout)).map_err(|e| fail("connecting")(e.to_string()))?;
    ftp.set_mode(Mode::Passive);
    ftp.login(target.user.as_str(), target.password.as_str()).map_err(|e| fail("logging in")(e.to_string()))?;
    ftp.transfer_type(FileType::Binary).map_err(|e| fail("switching to binary mode")(e.to_string()))?;
    let partial = format!("{}.part", target.path);
    let sent = ftp
        .put_file(partial.as_str(), &mut Cursor::new(bytes))
        .map_err(|e| fail("uploading the temporary file")(e.to_string()))?;
    if let Err(e) = ftp.rename(partial.as_str(), target.path.as_str()) {
        let _ = ftp.rm(partial.as_str());
        return Err(fail("renaming the temporary file into place")(e.to_string()));
    }
    let _ = ftp.quit();
    Ok(sent)
}
