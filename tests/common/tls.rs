//! A test PKI made at test time (rcgen): a CA and certificates it signs, and a second,
//! unrelated CA with a certificate of its own for the same names; and an HTTPS client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

/// PEM files in a directory of the test's own.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

/// A certificate and its key, as files.
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Identity {
    /// `--tls-cert=… --tls-key=…`.
    pub fn args(&self) -> Vec<String> {
        vec![format!("--tls-cert={}", self.cert.display()), format!("--tls-key={}", self.key.display())]
    }
}

/// A CA that can sign certificates.
pub struct Ca {
    pub pem: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        Pki { dir: tempfile::tempdir().expect("a temporary directory") }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new CA named `name`, its certificate in `<name>.pem`.
    pub fn ca(&self, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("labctl test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = self.path(&format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { pem, issuer: Issuer::new(params, key) }
    }

    /// A certificate `ca` signs for the IP addresses and DNS names of `names`, in
    /// `<file>.pem` and `<file>.key`.
    pub fn issue(&self, ca: &Ca, file: &str, names: &[&str]) -> Identity {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, file);
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().unwrap()),
            });
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        let identity = Identity { cert: self.path(&format!("{file}.pem")), key: self.path(&format!("{file}.key")) };
        std::fs::write(&identity.cert, cert.pem()).unwrap();
        std::fs::write(&identity.key, key.serialize_pem()).unwrap();
        identity
    }
}

/// The loopback addresses of nodes 1 … n, for a certificate that covers them all.
pub fn node_ips(n: u32) -> Vec<String> {
    (1..=n).map(|id| format!("127.0.0.{id}")).collect()
}

/// An HTTPS client trusting only the CA in `ca`, following no redirect.
pub fn client(ca: &Path) -> ureq::Agent {
    let pem = std::fs::read(ca).unwrap();
    let roots: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item.unwrap() {
            ureq::tls::PemItem::Certificate(cert) => Some(cert),
            _ => None,
        })
        .collect();
    ureq::Agent::config_builder()
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&roots)).build())
        .timeout_global(Some(Duration::from_secs(20)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent()
}

/// An answer: status, `Location`, body.
pub struct Reply {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `method url` with an optional JSON body; Err says why there was no answer.
pub fn call(agent: &ureq::Agent, method: &str, url: &str, json: Option<&str>) -> Result<Reply, String> {
    let request = ureq::http::Request::builder().method(method).uri(url).header("Content-Type", "application/json");
    let request = request.body(json.unwrap_or_default().as_bytes().to_vec()).map_err(|e| e.to_string())?;
    let mut response = agent.run(request).map_err(|e| e.to_string())?;
    let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = response.body_mut().read_to_string().map_err(|e| e.to_string())?;
    Ok(Reply { status: response.status().as_u16(), location, body })
}

/// The titles of the products at `base` (`https://host:port`), every page.
pub fn product_titles(agent: &ureq::Agent, base: &str) -> Option<Vec<String>> {
    let mut titles = Vec::new();
    loop {
        let reply = call(agent, "GET", &format!("{base}/api/products?offset={}&limit=100", titles.len()), None).ok()?;
        if reply.status != 200 {
            return None;
        }
        let page = reply.json();
        titles.extend(page["data"].as_array()?.iter().filter_map(|p| p["title"].as_str().map(str::to_string)));
        if !page["pagination"]["has_more"].as_bool()? {
            return Some(titles);
        }
    }
}
