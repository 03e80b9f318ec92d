//! TLS for labctl's HTTP, with rustls and its `ring` provider (no OpenSSL).
//!
//! - **Servers** (a node's API and console, the manager's service) serve HTTPS when given a
//!   certificate chain and its private key, both PEM files: [`TlsSettings::server_config`].
//! - **Clients** (the manager's writes and status polls, a leader's announcement, the console
//!   relay, `labctl health`) verify an `https://` server against the CA certificates of one PEM
//!   file when it is given, else against Mozilla's roots compiled into the binary (the
//!   `webpki-roots` crate, ureq's default): [`TlsSettings::client`]. A certificate of another CA,
//!   or one that does not name the host asked for, is refused; nothing turns verification off.
//!
//! Files are named by path (flag, `LABCTL_TLS_*` or `[tls]` in the config file); their contents
//! are read once at start, and a file that cannot be used stops the process with its name and
//! what is wrong with it. A private key's contents never appear in a message.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::config::ConfigError;

/// `--tls-cert`, `--tls-key`, `--tls-ca`: flatten into a role's options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM file with this server's certificate chain, its own certificate first; with --tls-key it serves HTTPS [default: none, plain HTTP]
    #[arg(long, env = "LABCTL_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the private key of --tls-cert (PKCS#8, PKCS#1 or SEC1); give its path, never its contents
    #[arg(long, env = "LABCTL_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// PEM file of the CA certificates an https:// server must chain to [default: Mozilla's roots built into labctl (webpki-roots)]
    #[arg(long, env = "LABCTL_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
}

/// `[tls]` in the config file: the same three paths.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM certificate chain this process serves HTTPS with.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA certificates that servers this process calls over https:// must chain to.
    pub ca: Option<PathBuf>,
}

/// Why a TLS file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} is not usable: {reason}")]
    Bad { what: &'static str, path: PathBuf, reason: String },
}

/// The resolved paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Certificate chain and key: this process serves HTTPS. None: plain HTTP.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// CA file clients verify servers against; None: the built-in roots.
    pub ca: Option<PathBuf>,
}

impl TlsSettings {
    /// Flag/environment over the file; a certificate needs its key and a key its certificate.
    pub fn resolve(args: &TlsArgs, file: &TlsFile) -> Result<TlsSettings, ConfigError> {
        let cert = args.tls_cert.clone().or_else(|| file.cert.clone());
        let key = args.tls_key.clone().or_else(|| file.key.clone());
        let ca = args.tls_ca.clone().or_else(|| file.ca.clone());
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(ConfigError::Invalid(format!(
                    "tls_cert {} needs its private key: give tls_key (--tls-key, LABCTL_TLS_KEY or [tls] key)",
                    cert.display()
                )))
            }
            (None, Some(key)) => {
                return Err(ConfigError::Invalid(format!(
                    "tls_key {} needs its certificate: give tls_cert (--tls-cert, LABCTL_TLS_CERT or [tls] cert)",
                    key.display()
                )))
            }
        };
        Ok(TlsSettings { identity, ca })
    }

    /// True when this process serves HTTPS.
    pub fn serves_https(&self) -> bool {
        self.identity.is_some()
    }

    /// The server side: None without a certificate; an error naming the file that cannot be used.
    pub fn server_config(&self) -> Result<Option<rustls::ServerConfig>, TlsError> {
        let Some((cert_path, key_path)) = &self.identity else { return Ok(None) };
        let chain = read_certificates(cert_path, "TLS certificate")?;
        let key = read_private_key(key_path)?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Bad { what: "TLS certificate", path: cert_path.clone(), reason: e.to_string() })?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Bad {
                what: "TLS key",
                path: key_path.clone(),
                reason: format!("it does not go with the certificate {}: {e}", cert_path.display()),
            })?;
        Ok(Some(config))
    }

    /// The client side, for ureq agents.
    pub fn client(&self) -> Result<ClientTls, TlsError> {
        let roots = match &self.ca {
            Some(path) => {
                let certs = read_certificates(path, "CA file")?;
                ureq::tls::RootCerts::new_with_certs(
                    &certs.iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()).collect::<Vec<_>>(),
                )
            }
            None => ureq::tls::RootCerts::WebPki,
        };
        let trusted = match &self.ca {
            Some(path) => format!("the CA file {}", path.display()),
            None => "Mozilla's roots built into labctl (webpki-roots)".to_string(),
        };
        Ok(ClientTls { config: ureq::tls::TlsConfig::builder().root_certs(roots).build(), trusted })
    }
}

impl TlsSettings {
    /// The rustls client for explicit FTPS (suppaftp), verifying the server against the CA
    /// file, or Mozilla's roots built into labctl.
    pub fn ftp_client(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(path) => {
                for cert in read_certificates(path, "CA file")? {
                    roots.add(cert).map_err(|e| TlsError::Bad {
                        what: "CA file",
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Bad {
                what: "CA file",
                path: self.ca.clone().unwrap_or_default(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// How ureq agents verify https:// servers.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: ureq::tls::TlsConfig,
    /// What servers are verified against, for log lines.
    trusted: String,
}

impl Default for ClientTls {
    /// The built-in roots.
    fn default() -> ClientTls {
        ClientTls {
            config: ureq::tls::TlsConfig::default(),
            trusted: "Mozilla's roots built into labctl (webpki-roots)".into(),
        }
    }
}

impl ClientTls {
    /// The TLS settings for `ureq::Agent::config_builder().tls_config(…)`.
    pub fn config(&self) -> ureq::tls::TlsConfig {
        self.config.clone()
    }

    /// What https:// servers are verified against.
    pub fn trusted(&self) -> &str {
        &self.trusted
    }
}

/// Whether a failed request failed in TLS, a refused certificate above all: worth a log line
/// of its own, since retrying cannot fix it. ureq hands rustls's error back inside an I/O error.
pub fn is_tls_error(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Rustls(_) | ureq::Error::Tls(_) => true,
        ureq::Error::Io(io) => io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()),
        _ => false,
    }
}

/// rustls with ring, the provider lettre, ureq and suppaftp already use.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

/// Every certificate of a PEM file; at least one.
fn read_certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, what)?;
    let bad = |reason: String| TlsError::Bad { what, path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("its PEM cannot be read: {e}")))?;
    if certs.is_empty() {
        return Err(bad("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    for (i, cert) in certs.iter().enumerate() {
        // A certificate that does not parse would fail every handshake; say so at start.
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| bad(format!("certificate {} of {} cannot be parsed: {e}", i + 1, certs.len())))?;
    }
    Ok(certs)
}

/// The one private key of a PEM file.
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "TLS key";
    let bytes = read(path, what)?;
    let bad = |reason: &str| TlsError::Bad { what, path: path.to_path_buf(), reason: reason.to_string() };
    // The parser's own message is not shown: it could quote a piece of the key.
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            bad("it holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC PRIVATE KEY)")
        }
        _ => bad("its PEM private key cannot be read"),
    })?;
    provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|_| bad("its private key is of a kind rustls cannot use (RSA, ECDSA P-256/P-384 or Ed25519)"))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cert: Option<&str>, key: Option<&str>) -> TlsArgs {
        TlsArgs { tls_cert: cert.map(PathBuf::from), tls_key: key.map(PathBuf::from), tls_ca: None }
    }

    #[test]
    fn a_certificate_needs_its_key_and_flags_beat_the_file() {
        assert!(TlsSettings::resolve(&args(Some("c.pem"), None), &TlsFile::default()).is_err());
        assert!(TlsSettings::resolve(&args(None, Some("k.pem")), &TlsFile::default()).is_err());
        let file: crate::config::FileConfig =
            toml::from_str("[tls]\ncert = \"file.pem\"\nkey = \"file.key\"\nca = \"ca.pem\"\n").unwrap();
        let s = TlsSettings::resolve(&args(Some("flag.pem"), None), &file.tls).unwrap();
        assert_eq!(s.identity, Some((PathBuf::from("flag.pem"), PathBuf::from("file.key"))));
        assert_eq!(s.ca, Some(PathBuf::from("ca.pem")));
        assert!(!TlsSettings::default().serves_https());
    }

    #[test]
    fn unusable_files_are_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let missing = dir.path().join("missing.pem");
        let settings = |cert: &Path, key: &Path| TlsSettings {
            identity: Some((cert.to_path_buf(), key.to_path_buf())),
            ca: Some(cert.to_path_buf()),
        };
        let e = settings(&missing, &junk).server_config().unwrap_err().to_string();
        assert!(e.contains("cannot read TLS certificate") && e.contains("missing.pem"), "{e}");
        let e = settings(&junk, &junk).server_config().unwrap_err().to_string();
        assert!(e.contains("junk.pem") && e.contains("no PEM certificate"), "{e}");
        let e = settings(&junk, &junk).client().unwrap_err().to_string();
        assert!(e.contains("CA file") && e.contains("no PEM certificate"), "{e}");
        let garbled = dir.path().join("garbled.pem");
        std::fs::write(&garbled, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let e = settings(&garbled, &junk).server_config().unwrap_err().to_string();
        assert!(e.contains("garbled.pem") && e.contains("cannot be parsed"), "{e}");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBieXRlcw==\n-----END PRIVATE KEY-----\n")
            .unwrap();
        let e = read_private_key(&key).unwrap_err().to_string();
        assert!(e.contains("key.pem") && e.contains("cannot use"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "the key's contents are not shown: {e}");
        let e = read_private_key(&junk).unwrap_err().to_string();
        assert!(e.contains("no PEM private key"), "{e}");
    }
}
