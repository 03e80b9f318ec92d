//! An etcd cluster for comparison: members on 127.0.0.11..15 (clients :2379, peers :2380),
//! spoken to through etcd's JSON gateway of the v3 API with a minimal HTTP/1.1 client
//! (keep-alive, one connection per member).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{Proc, System, TempDir};

/// First address: member m lives on 127.0.0.(FIRST_HOST + m).
const FIRST_HOST: u8 = 11;
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// How long one HTTP request may take before the connection is given up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The `etcd` binary on PATH, if installed.
pub fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("etcd")).find(|p| p.is_file())
}

/// etcd's version line, e.g. `etcd Version: 3.4.23`.
pub fn version(binary: &std::path::Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "etcd (unknown version)".into())
}

pub struct EtcdCluster {
    binary: PathBuf,
    election_ms: u64,
    heartbeat_ms: u64,
    members: Vec<Option<Proc>>,
    conns: Vec<Option<Conn>>,
    /// Raft member id of each member, learnt from its status reply.
    ids: Vec<Option<u64>>,
    dir: TempDir,
}

impl EtcdCluster {
    /// Starts `n` members with `--election-timeout election_ms --heartbeat-interval heartbeat_ms --pre-vote`.
    pub fn start(binary: PathBuf, n: usize, election_ms: u64, heartbeat_ms: u64) -> std::io::Result<EtcdCluster> {
        let mut cluster = EtcdCluster {
            binary,
            election_ms,
            heartbeat_ms,
            members: (0..n).map(|_| None).collect(),
            conns: (0..n).map(|_| None).collect(),
            ids: vec![None; n],
            dir: TempDir::new("etcd-bench")?,
        };
        for m in 0..n {
            cluster.restart(m)?;
        }
        Ok(cluster)
    }

    fn host(member: usize) -> String {
        format!("127.0.0.{}", FIRST_HOST as usize + member)
    }

    pub fn client_addr(member: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, FIRST_HOST + member as u8], CLIENT_PORT))
    }

    /// POSTs `body` to `path` on `member`, reusing its connection; a failed connection is
    /// dropped and opened again on the next call.
    fn post(&mut self, member: usize, path: &str, body: &str, timeout: Duration) -> Result<(u16, Value), String> {
        if self.conns[member].is_none() {
            self.conns[member] = Some(Conn::open(Self::client_addr(member), timeout).map_err(|e| e.to_string())?);
        }
        let conn = self.conns[member].as_mut().expect("just opened");
        match conn.post(path, body, timeout) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.conns[member] = None;
                Err(format!("{}: {e}", Self::host(member)))
            }
        }
    }

    fn member_of_id(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|&i| i == Some(id))
    }
}

fn u64_field(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl System for EtcdCluster {
    fn label(&self) -> String {
        format!("etcd {}–{} ms (heartbeat {} ms)", self.election_ms, 2 * self.election_ms, self.heartbeat_ms)
    }

    fn size(&self) -> usize {
        self.members.len()
    }

    fn leaders(&mut self, members: &[usize], wait: Duration) -> Vec<(usize, Option<usize>)> {
        let mut views = Vec::new();
        let per_request = wait.max(Duration::from_millis(20));
        for &m in members {
            let Ok((200, status)) = self.post(m, "/v3/maintenance/status", "{}", per_request) else { continue };
            if let Some(id) = u64_field(&status["header"]["member_id"]) {
                self.ids[m] = Some(id);
            }
            // `leader` is 0 or absent while the member knows no leader.
            let leader = u64_field(&status["leader"]).filter(|&id| id != 0);
            match leader {
                None => views.push((m, None)),
                // A leader id not yet matched to a member counts as unknown until it is.
                Some(id) => views.push((m, self.member_of_id(id))),
            }
        }
        views
    }

    /// `put` through the leader: etcd answers once the write is committed and applied.
    fn commit(&mut self, leader: usize, key: &str) -> Result<(), String> {
        let body = format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", base64(key.as_bytes()), base64(b"v"));
        match self.post(leader, "/v3/kv/put", &body, REQUEST_TIMEOUT)? {
            (200, reply) if reply.get("header").is_some() => Ok(()),
            (code, reply) => Err(format!("put answered {code}: {reply}")),
        }
    }

    fn kill(&mut self, member: usize) {
        if let Some(p) = self.members[member].as_mut() {
            p.kill();
        }
        self.conns[member] = None;
    }

    fn restart(&mut self, member: usize) -> std::io::Result<()> {
        if let Some(mut old) = self.members[member].take() {
            old.kill();
            old.reap();
        }
        self.conns[member] = None;
        let n = self.members.len();
        let peer_url = |m: usize| format!("http://{}:{PEER_PORT}", Self::host(m));
        let client_url = format!("http://{}:{CLIENT_PORT}", Self::host(member));
        let initial: Vec<String> = (0..n).map(|m| format!("m{}={}", m + 1, peer_url(m))).collect();
        let mut cmd = Command::new(&self.binary);
        cmd.current_dir(self.dir.path())
            .arg(format!("--name=m{}", member + 1))
            .arg(format!("--data-dir={}", self.dir.path().join(format!("m{}", member + 1)).display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={}", peer_url(member)))
            .arg(format!("--initial-advertise-peer-urls={}", peer_url(member)))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=labctl-bench")
            .arg(format!("--election-timeout={}", self.election_ms))
            .arg(format!("--heartbeat-interval={}", self.heartbeat_ms))
            .arg("--pre-vote=true")
            .arg("--logger=zap")
            .arg("--log-level=warn");
        let log = self.dir.path().join(format!("m{}.log", member + 1));
        self.members[member] = Some(Proc::spawn(cmd, &log)?);
        Ok(())
    }

    fn pids(&self) -> Vec<(usize, u32)> {
        self.members.iter().enumerate().filter_map(|(m, p)| p.as_ref().map(|p| (m, p.pid()))).collect()
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    host: String,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        Ok(Conn { host: addr.to_string(), reader: BufReader::new(stream) })
    }

    fn post(&mut self, path: &str, body: &str, timeout: Duration) -> std::io::Result<(u16, Value)> {
        let stream = self.reader.get_mut();
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        stream.write_all(format!("{head}{body}").as_bytes())?;

        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(bad("connection closed"));
        }
        let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| bad(&line))?;
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(bad("connection closed in headers"));
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad("bad chunk size"))?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            let length = length.ok_or_else(|| bad("no Content-Length"))?;
            body.resize(length, 0);
            self.reader.read_exact(&mut body)?;
        }
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((code, value))
    }
}
