//! Test harness: real `labctl node` processes on 127.0.0.N, driven over real UDP.
//!
//! Every test cluster gets its own Raft port so test binaries and tests running in parallel
//! never share sockets. Children are killed when the [`TestCluster`] is dropped. Waiting is
//! always polling with a deadline.

#![allow(dead_code)]

pub mod ftp;
pub mod manager;
pub mod rabbit;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod server_db;
pub mod site;
pub mod smtp;
pub mod tls;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use labctl::proto::{Message, Request, CONTROLLER};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_labctl");

/// Polls `f` every few milliseconds until it returns Some, or panics after `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends one datagram to `addr` from a fresh socket and waits up to `timeout` for a reply.
pub fn udp_request(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket.set_read_timeout(Some(timeout)).ok()?;
    socket.send_to(bytes, addr).ok()?;
    let mut buf = vec![0u8; 65536];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    Message::decode(&buf[..n]).ok().map(|(m, _)| m)
}

/// A port free for UDP and TCP on 127.0.0.1 … 127.0.0.N right now: test clusters use it for
/// both Raft (UDP) and HTTP (TCP). Test runs on one machine may overlap, so fixed ports could
/// put one run's requests on another run's cluster.
pub fn free_port(nodes: u32) -> u16 {
    for _ in 0..100 {
        let first = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
        let port = first.local_addr().unwrap().port();
        let udp_ok = (2..=nodes).all(|id| UdpSocket::bind(format!("127.0.0.{id}:{port}")).is_ok());
        let tcp_ok = (1..=nodes).all(|id| std::net::TcpListener::bind(format!("127.0.0.{id}:{port}")).is_ok());
        if udp_ok && tcp_ok {
            return port;
        }
    }
    panic!("no port is free on 127.0.0.1 … 127.0.0.{nodes}");
}

/// `GET path` on node `id`'s HTTP port: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path)
}

/// A minimal HTTP/1.1 request with `Connection: close`: (status code, body).
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    http_call(addr, method, path, &[], "").map(|r| (r.status, r.body))
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == &name.to_ascii_lowercase()).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request with `Connection: close`; None when the node does not answer.
pub fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<HttpReply> {
    http_exchange(addr, method, path, headers, body).ok()
}

/// Why an HTTP request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    /// No connection: the server never saw the request.
    NotConnected,
    /// Connected and sent, but no whole answer came back: the server may have acted on it.
    Lost,
}

/// [`http_call`], telling a request that never reached the server from one that was lost.
pub fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<HttpReply, NoAnswer> {
    http_exchange_within(addr, method, path, headers, body, Duration::from_secs(20))
}

/// [`http_exchange`], waiting at most `patience` for each read of the answer.
pub fn http_exchange_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    patience: Duration,
) -> Result<HttpReply, NoAnswer> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|_| NoAnswer::NotConnected)?;
    stream.set_read_timeout(Some(patience)).map_err(|_| NoAnswer::NotConnected)?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).map_err(|_| NoAnswer::Lost)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|_| NoAnswer::Lost)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or(NoAnswer::Lost)?;
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).ok_or(NoAnswer::Lost)?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpReply { status, headers, body: body.to_string() })
}

/// A control message as a controller sends it.
pub fn control(request: Request, key: Option<&str>, value: Value) -> Message {
    let mut m = Message::new(CONTROLLER, request, None);
    m.key = key.map(str::to_string);
    m.value = value;
    m
}

/// N real node processes.
pub struct TestCluster {
    pub nodes: u32,
    pub raft_port: u16,
    pub dir: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    children: Vec<Option<Child>>,
    /// Secure mode: the harness signs its control requests with this cluster key.
    signing: Option<labctl::proto::client::Signing>,
}

impl TestCluster {
    /// Starts `nodes` nodes on 127.0.0.1..=N with the given Raft port (0: a free one), and
    /// waits until each answers.
    pub fn start(nodes: u32, raft_port: u16, extra: &[&str]) -> TestCluster {
        TestCluster::start_signing(nodes, raft_port, extra, &[], None)
    }

    /// [`TestCluster::start`], with environment variables for every node.
    #[allow(dead_code)]
    pub fn start_with_env(nodes: u32, raft_port: u16, extra: &[&str], env: &[(&str, &str)]) -> TestCluster {
        TestCluster::start_signing(nodes, raft_port, extra, env, None)
    }

    /// [`TestCluster::start_with_env`] in secure mode: `extra` gives the nodes the secret, and
    /// the harness signs its control requests with `key`.
    #[allow(dead_code)]
    pub fn start_signing(
        nodes: u32,
        raft_port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
        key: Option<labctl::proto::auth::Key>,
    ) -> TestCluster {
        let raft_port = if raft_port == 0 { free_port(nodes) } else { raft_port };
        let dir = std::env::temp_dir().join(format!("labctl-test-{raft_port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        let mut cluster = TestCluster {
            nodes,
            raft_port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            children: (0..nodes).map(|_| None).collect(),
            signing: key.map(labctl::proto::client::Signing::new),
        };
        for id in 1..=nodes {
            cluster.spawn(id);
        }
        for id in 1..=nodes {
            poll(&format!("node{id} to answer"), Duration::from_secs(10), || {
                assert!(cluster.is_running(id), "node{id} exited at start:\n{}", cluster.log_text(id));
                cluster.leader_info(id)
            });
        }
        cluster
    }

    pub fn addr(&self, id: u32) -> SocketAddr {
        format!("127.0.0.{id}:{}", self.raft_port).parse().unwrap()
    }

    /// Node `id`'s HTTP address (the same port number as Raft, over TCP).
    pub fn http_addr(&self, id: u32) -> SocketAddr {
        self.addr(id)
    }

    pub fn log_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("node{id}.log"))
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Starts (or restarts) node `id`, appending its log output to `node{id}.log`.
    pub fn spawn(&mut self, id: u32) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(id)).expect("log file");
        let child = Command::new(BIN)
            .args(["node", "--id", &id.to_string(), "--nodes", &self.nodes.to_string()])
            .arg(format!("--raft-port={}", self.raft_port))
            .arg(format!("--http-port={}", self.raft_port))
            .arg("--data-dir")
            .arg(&self.dir)
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .env_remove("LABCTL_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn labctl node");
        self.children[id as usize - 1] = Some(child);
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: u32) {
        if let Some(mut child) = self.children[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops node `id` as a service manager does (SIGTERM) and waits for it to exit.
    #[allow(dead_code)]
    pub fn terminate(&mut self, id: u32, timeout: Duration) -> ExitStatus {
        let child = self.children[id as usize - 1].as_ref().expect("node is running");
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "cannot signal node{id}");
        self.wait_exit(id, timeout)
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) node `id`: a frozen node neither sends nor
    /// answers, as if the network had cut it off, and keeps its state.
    pub fn freeze(&mut self, id: u32, frozen: bool) {
        let child = self.children[id as usize - 1].as_ref().expect("node is running");
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "cannot signal node{id}");
    }

    /// Waits for node `id` to exit by itself.
    pub fn wait_exit(&mut self, id: u32, timeout: Duration) -> ExitStatus {
        let child = self.children[id as usize - 1].as_mut().expect("node is running");
        let status = poll(&format!("node{id} to exit"), timeout, || child.try_wait().ok().flatten());
        self.children[id as usize - 1] = None;
        status
    }

    pub fn is_running(&mut self, id: u32) -> bool {
        match self.children[id as usize - 1].as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Node `id`'s process id, while it runs.
    #[allow(dead_code)]
    pub fn pid(&self, id: u32) -> Option<u32> {
        self.children[id as usize - 1].as_ref().map(Child::id)
    }

    pub fn running(&self) -> Vec<u32> {
        (1..=self.nodes).filter(|&id| self.children[id as usize - 1].is_some()).collect()
    }

    /// Sends a control request to node `id` and waits briefly for the reply.
    pub fn request(&self, id: u32, msg: &Message) -> Option<Message> {
        udp_request(self.addr(id), &self.encode(id, msg), Duration::from_millis(500))
    }

    /// `msg` as sent to node `id`: signed in secure mode.
    fn encode(&self, id: u32, msg: &Message) -> Vec<u8> {
        match &self.signing {
            Some(signing) => signing.seal(msg, id),
            None => msg.encode(),
        }
    }

    /// Sends a control request that has no reply.
    pub fn send(&self, id: u32, msg: &Message) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.send_to(&self.encode(id, msg), self.addr(id)).unwrap();
    }

    /// (term, leader) as node `id` reports them.
    pub fn leader_info(&self, id: u32) -> Option<(u64, Option<String>)> {
        let reply = self.request(id, &control(Request::LeaderInfo, None, Value::Null))?;
        assert_eq!(reply.request.as_deref(), Some("LEADER_INFO"));
        assert_eq!(reply.key.as_deref(), Some("LEADER"));
        Some((reply.term?, reply.value.as_str().map(str::to_string)))
    }

    /// A leader that it and a majority of the cluster name, with its term.
    pub fn agreed_leader(&self, among: &[u32]) -> Option<(u32, u64)> {
        let infos: Vec<(u64, Option<String>)> = among.iter().filter_map(|&id| self.leader_info(id)).collect();
        let majority = self.nodes as usize / 2 + 1;
        for (term, leader) in &infos {
            let Some(name) = leader else { continue };
            let agree = infos.iter().filter(|(t, l)| t == term && l.as_ref() == Some(name)).count();
            let id = labctl::proto::parse_node_name(name)?;
            if agree >= majority && among.contains(&id) {
                let (lt, ll) = self.leader_info(id)?;
                if lt == *term && ll.as_deref() == Some(name.as_str()) {
                    return Some((id, *term));
                }
            }
        }
        None
    }

    /// Waits until the running nodes agree on a leader.
    pub fn wait_for_leader(&self, timeout: Duration) -> (u32, u64) {
        let running = self.running();
        poll("a leader a majority agrees on", timeout, || self.agreed_leader(&running))
    }

    /// STORE on node `id`; the leader's acknowledgement or the follower's LEADER_INFO.
    pub fn store(&self, id: u32, key: &str, value: Value) -> Option<Message> {
        udp_request(self.addr(id), &self.encode(id, &control(Request::Store, Some(key), value)), Duration::from_secs(3))
    }

    /// The committed log as node `id` returns it from RETRIEVE (None from a non-leader).
    pub fn retrieve(&self, id: u32) -> Option<Vec<labctl::proto::LogEntry>> {
        self.request(id, &control(Request::Retrieve, None, Value::Null))?.committed_logs()
    }

    pub fn log_text(&self, id: u32) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            // SAFETY: kill(2) on our own child's pid; a frozen child must be thawed to die.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            // A node that panicked fails the test even when the cluster carried on without it.
            for id in 1..=self.nodes {
                let text = self.log_text(id);
                if text.contains("panicked at") {
                    panic!("node{id} panicked; logs kept in {}:\n{text}", self.dir.display());
                }
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("node logs kept in {}", self.dir.display());
        }
    }
}
