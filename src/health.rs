//! `labctl health`: GET one URL and exit 0 on a 2xx answer, 1 otherwise.
//!
//! The container health probe: the Debian slim image has no curl or wget, so the image's
//! `HEALTHCHECK` asks labctl itself for the node's `/healthz`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::FileConfig;

/// How long to wait for the answer unless told otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;

/// Longest part of the answer's body that is printed.
const BODY_SHOWN: usize = 200;

/// Options of `labctl health`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Exit status: 0 when the answer is 2xx; 1 for any other status, a refused or \
timed-out connection, or a bad URL. Redirects are followed.")]
pub struct Args {
    /// URL to GET [default: http://127.0.0.1:<HTTP port>/healthz, this machine's node]
    #[arg(value_name = "URL", env = "LABCTL_HEALTH_URL")]
    pub url: Option<String>,
    /// HTTP port of the node probed when no URL is given [default: 8000; config: [cluster] http_port]
    #[arg(long, env = "LABCTL_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// How long to wait for the answer, in milliseconds
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_MS)]
    pub timeout_ms: u64,
    /// PEM file of the CA certificates an https:// URL's server must chain to [default: Mozilla's roots built into labctl (webpki-roots)]
    #[arg(long, env = "LABCTL_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
}

/// Errors of a probe; each makes `labctl health` exit 1.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("{url} answered {status}: {body}")]
    Unhealthy { url: String, status: u16, body: String },
    #[error("cannot GET {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

/// Runs `labctl health`: prints the status and body of a healthy answer.
pub fn run(args: Args, file: &FileConfig) -> anyhow::Result<ExitCode> {
    // This machine's node: https when the node has a certificate (`LABCTL_TLS_CERT` or `[tls]
    // cert`, as the node itself reads them) or the cluster is said to serve https.
    let https = std::env::var_os("LABCTL_TLS_CERT").is_some_and(|v| !v.is_empty())
        || file.tls.cert.is_some()
        || std::env::var("LABCTL_HTTPS").ok().map_or(file.cluster.https, |v| v.parse().ok()) == Some(true);
    let url = args.url.clone().unwrap_or_else(|| {
        let port = args.http_port.or(file.cluster.http_port).unwrap_or(crate::config::Cluster::default().http_port);
        let scheme = if https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{port}/healthz")
    });
    let tls = crate::tls::TlsSettings { identity: None, ca: args.tls_ca.clone().or_else(|| file.tls.ca.clone()) };
    let (status, body) = probe(&url, Duration::from_millis(args.timeout_ms), &tls.client()?)?;
    println!("{status} {body}");
    Ok(ExitCode::SUCCESS)
}

/// GETs `url`: the status and (shortened) body of a 2xx answer, or why there was none.
pub fn probe(url: &str, timeout: Duration, tls: &crate::tls::ClientTls) -> Result<(u16, String), HealthError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .tls_config(tls.config())
        .build()
        .new_agent();
    let unreachable = |e: ureq::Error| HealthError::Unreachable { url: url.to_string(), reason: e.to_string() };
    let mut response = agent.get(url).call().map_err(unreachable)?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    let body = shorten(body.trim());
    if (200..300).contains(&status) {
        Ok((status, body))
    } else {
        Err(HealthError::Unhealthy { url: url.to_string(), status, body })
    }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(BODY_SHOWN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_bodies_are_cut_on_a_character_boundary() {
        assert_eq!(shorten("ok"), "ok");
        let long = "é".repeat(BODY_SHOWN + 5);
        let cut = shorten(&long);
        assert_eq!(cut.chars().count(), BODY_SHOWN + 1);
        assert!(cut.ends_with('…'));
    }
}
