//! A labctl cluster: `labctl node --id N` processes on 127.0.0.N, spoken to over UDP exactly
//! as a controller does (SPEC §3).

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use labctl::proto::client::Signing;
use labctl::proto::{Message, Request, CONTROLLER};

use super::{Proc, System, TempDir};

/// How long a STORE may take before it is sent again.
const STORE_WAIT: Duration = Duration::from_secs(2);

/// Raft timing passed to every node, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: u64,
    pub election_min: u64,
    pub election_max: u64,
}

impl Timing {
    /// The product's defaults: the same 150–300 ms range as etcd's `--election-timeout 150`.
    pub const DEFAULT: Timing = Timing { heartbeat: 50, election_min: 150, election_max: 300 };
    /// The Raft paper's fastest profile (§9.3): 12–24 ms.
    pub const FAST: Timing = Timing { heartbeat: 6, election_min: 12, election_max: 24 };
}

/// Secure mode and accounts: every datagram signed with a cluster secret, and the HTTP API
/// requiring accounts, with this first admin's password.
#[derive(Debug, Clone)]
pub struct Security {
    pub secret: String,
    pub admin_password: String,
}

pub struct LabctlCluster {
    binary: PathBuf,
    security: Option<Security>,
    /// Secure mode: the probes' control requests are signed.
    signing: Option<Signing>,
    timing: Timing,
    port: u16,
    http_port: u16,
    nodes: Vec<Option<Proc>>,
    dir: TempDir,
}

impl LabctlCluster {
    /// Starts `n` nodes on 127.0.0.1..n, Raft on UDP `port`.
    pub fn start(binary: PathBuf, n: usize, port: u16, timing: Timing) -> std::io::Result<LabctlCluster> {
        LabctlCluster::start_with(binary, n, port, timing, None)
    }

    /// [`LabctlCluster::start`], in secure mode with accounts when `security` is given.
    pub fn start_with(
        binary: PathBuf,
        n: usize,
        port: u16,
        timing: Timing,
        security: Option<Security>,
    ) -> std::io::Result<LabctlCluster> {
        let dir = TempDir::new("labctl-bench")?;
        let signing = match &security {
            Some(s) => {
                std::fs::write(dir.path().join("cluster.secret"), &s.secret)?;
                let key = labctl::proto::auth::Key::derive(s.secret.as_bytes())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
                Some(Signing::new(key))
            }
            None => None,
        };
        let mut cluster = LabctlCluster {
            binary,
            security,
            signing,
            timing,
            port,
            http_port: port.wrapping_add(1000),
            nodes: (0..n).map(|_| None).collect(),
            dir,
        };
        for member in 0..n {
            cluster.restart(member)?;
        }
        Ok(cluster)
    }

    fn addr(&self, member: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, member as u8 + 1], self.port))
    }

    fn member_of(&self, name: &str) -> Option<usize> {
        labctl::proto::parse_node_name(name).map(|id| id as usize - 1).filter(|&m| m < self.nodes.len())
    }

    /// The HTTP port of every member (on its own 127.0.0.N).
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The data directory, for the record.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The HTTP API of `member`.
    pub fn http_addr(&self, member: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, member as u8 + 1], self.http_port))
    }
}

impl LabctlCluster {
    /// A control request for `member`, signed in secure mode.
    fn request(&self, member: usize, request: Request, key: Option<&str>, value: Option<&str>) -> Vec<u8> {
        let mut msg = Message::new(CONTROLLER, request, None);
        msg.key = key.map(str::to_string);
        msg.value = value.map_or(serde_json::Value::Null, |v| v.into());
        match &self.signing {
            Some(signing) => signing.seal(&msg, member as u32 + 1),
            None => msg.encode(),
        }
    }
}

/// A socket of its own for one probe, so a late reply to an earlier probe cannot be mistaken
/// for an answer to this one.
fn probe_socket() -> std::io::Result<UdpSocket> {
    UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl System for LabctlCluster {
    fn label(&self) -> String {
        let t = self.timing;
        format!("labctl {}–{} ms (heartbeat {} ms)", t.election_min, t.election_max, t.heartbeat)
    }

    fn size(&self) -> usize {
        self.nodes.len()
    }

    fn leaders(&mut self, members: &[usize], wait: Duration) -> Vec<(usize, Option<usize>)> {
        let mut views = Vec::new();
        let Ok(socket) = probe_socket() else { return views };
        for &m in members {
            let _ = socket.send_to(&self.request(m, Request::LeaderInfo, None, None), self.addr(m));
        }
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 64 * 1024];
        while views.len() < members.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
                break;
            }
            let Ok((n, from)) = socket.recv_from(&mut buf) else { break };
            let Some(&m) = members.iter().find(|&&m| self.addr(m) == from) else { continue };
            let Ok((reply, Request::LeaderInfo)) = Message::decode(&buf[..n]) else { continue };
            if views.iter().any(|&(seen, _)| seen == m) {
                continue;
            }
            views.push((m, reply.leader_name().and_then(|l| self.member_of(l))));
        }
        views
    }

    /// STORE to the leader; its acknowledgement (a STORE reply with `success: true`) is sent
    /// only once the entry is committed (SPEC §3).
    fn commit(&mut self, leader: usize, key: &str) -> Result<(), String> {
        let socket = probe_socket().map_err(|e| e.to_string())?;
        let datagram = self.request(leader, Request::Store, Some(key), Some("v"));
        socket.send_to(&datagram, self.addr(leader)).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + STORE_WAIT;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no STORE acknowledgement from node{} within {STORE_WAIT:?}", leader + 1));
            }
            socket.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
            let (n, from) = socket.recv_from(&mut buf).map_err(|e| format!("node{}: {e}", leader + 1))?;
            if from != self.addr(leader) {
                continue;
            }
            match Message::decode(&buf[..n]) {
                Ok((reply, Request::Store)) if reply.success == Some(true) => return Ok(()),
                Ok((reply, Request::Store)) => return Err(format!("STORE refused: {}", reply.value)),
                Ok((reply, Request::LeaderInfo)) => {
                    return Err(format!("node{} is not the leader; it names {}", leader + 1, reply.value))
                }
                _ => continue,
            }
        }
    }

    fn kill(&mut self, member: usize) {
        if let Some(p) = self.nodes[member].as_mut() {
            p.kill();
        }
    }

    fn restart(&mut self, member: usize) -> std::io::Result<()> {
        if let Some(mut old) = self.nodes[member].take() {
            old.kill();
            old.reap();
        }
        let t = self.timing;
        let mut cmd = Command::new(&self.binary);
        cmd.current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .arg("node")
            .arg(format!("--id={}", member + 1))
            .arg(format!("--nodes={}", self.nodes.len()))
            .arg(format!("--raft-port={}", self.port))
            .arg(format!("--http-port={}", self.http_port))
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--heartbeat-ms={}", t.heartbeat))
            .arg(format!("--election-timeout-min-ms={}", t.election_min))
            .arg(format!("--election-timeout-max-ms={}", t.election_max));
        if let Some(s) = &self.security {
            cmd.arg(format!("--cluster-secret-file={}", self.dir.path().join("cluster.secret").display()))
                .arg("--auth")
                .env("LABCTL_ADMIN_PASSWORD", &s.admin_password);
        }
        let log = self.dir.path().join(format!("node{}.log", member + 1));
        self.nodes[member] = Some(Proc::spawn(cmd, &log)?);
        Ok(())
    }

    fn pids(&self) -> Vec<(usize, u32)> {
        self.nodes.iter().enumerate().filter_map(|(m, p)| p.as_ref().map(|p| (m, p.pid()))).collect()
    }
}
