//! A real `labctl manager` process on a free loopback port, killed on drop; and what the
//! cluster stored.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::rabbit::{free_tcp_port, queue_len};
use super::{http_call, poll, TestCluster, BIN};

pub struct ManagerProcess {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl ManagerProcess {
    /// Starts `labctl manager --listen 127.0.0.1:<free port> <args>` with `env`, logging to
    /// `<dir>/manager.log`, and waits until `/healthz` answers.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> ManagerProcess {
        ManagerProcess::start_at(name, free_tcp_port(), args, env, None)
    }

    /// [`ManagerProcess::start`] on `port`; with `https_ca`, the manager serves HTTPS with a
    /// certificate of that CA, and `/healthz` is asked over https.
    pub fn start_at(
        name: &str,
        port: u16,
        args: &[&str],
        env: &[(&str, &str)],
        https_ca: Option<&std::path::Path>,
    ) -> ManagerProcess {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let https = https_ca.map(super::tls::client);
        let dir = std::env::temp_dir().join(format!("labctl-manager-{name}-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("manager.log")).unwrap();
        let mut command = Command::new(BIN);
        command
            .arg("manager")
            .arg(format!("--listen={addr}"))
            .args(args)
            .env("RUST_LOG", "info")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // Only the settings the test gives: none from the developer's environment.
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("LABCTL_")) {
            command.env_remove(name);
        }
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn labctl manager");
        let mut manager = ManagerProcess { addr, dir, child: Some(child) };
        poll("the manager to answer /healthz", Duration::from_secs(10), || {
            if let Some(Ok(Some(status))) = manager.child.as_mut().map(|c| c.try_wait()) {
                panic!("the manager exited at start ({status}):\n{}", manager.log_text());
            }
            match &https {
                Some(agent) => super::tls::call(agent, "GET", &format!("https://{addr}/healthz"), None)
                    .ok()
                    .filter(|r| r.status == 200)
                    .map(drop),
                None => http_call(addr, "GET", "/healthz", &[], "").filter(|r| r.status == 200).map(drop),
            }
        });
        manager
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /status` as JSON.
    pub fn status(&self) -> Value {
        let reply = http_call(self.addr, "GET", "/status", &[], "").expect("the manager answers /status");
        assert_eq!(reply.status, 200);
        reply.json()
    }

    /// A counter of `/status`.
    pub fn counter(&self, name: &str) -> u64 {
        self.status()[name].as_u64().unwrap_or_else(|| panic!("no counter {name} in /status"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("manager.log")).unwrap_or_default()
    }

    /// Waits until the log has a line containing `text`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        poll(&format!("the manager to log {text:?}"), timeout, || self.log_text().contains(text).then_some(()));
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the manager is running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        poll("the manager to exit", Duration::from_secs(15), || child.try_wait().ok().flatten())
    }
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let text = self.log_text();
            if text.contains("panicked at") {
                panic!("the manager panicked; log kept in {}:\n{text}", self.dir.display());
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("manager log kept in {}", self.dir.display());
        }
    }
}

/// Every product node `addr` holds, page by page.
pub fn products_on(addr: SocketAddr) -> Option<Vec<Value>> {
    let mut all = Vec::new();
    loop {
        let reply = http_call(addr, "GET", &format!("/api/products?offset={}&limit=100", all.len()), &[], "")?;
        if reply.status != 200 {
            return None;
        }
        let page = reply.json();
        let data = page["data"].as_array()?.clone();
        let more = page["pagination"]["has_more"].as_bool()?;
        all.extend(data);
        if !more {
            return Some(all);
        }
    }
}

/// The number of products on node `addr`, from one small page.
pub fn product_count(addr: SocketAddr) -> Option<u64> {
    let reply = http_call(addr, "GET", "/api/products?limit=1", &[], "")?;
    (reply.status == 200).then(|| reply.json()["pagination"]["total"].as_u64()).flatten()
}

/// Waits until every node in `nodes` holds `expected` products, then checks that each holds
/// exactly the expected titles, each once, and no other product.
pub fn assert_stored_once_everywhere(cluster: &TestCluster, nodes: &[u32], expected: &BTreeSet<String>) {
    for &id in nodes {
        let addr = cluster.http_addr(id);
        poll(&format!("node{id} to hold {} products", expected.len()), Duration::from_secs(60), || {
            product_count(addr).filter(|&n| n >= expected.len() as u64)
        });
        let products = products_on(addr).expect("node lists its products");
        let mut copies: BTreeMap<String, usize> = BTreeMap::new();
        for product in &products {
            *copies.entry(product["title"].as_str().unwrap().to_string()).or_default() += 1;
        }
        let repeated: Vec<(&String, &usize)> = copies.iter().filter(|(_, &n)| n != 1).collect();
        assert!(repeated.is_empty(), "node{id} stored items more than once: {repeated:?}");
        let held: BTreeSet<String> = copies.into_keys().collect();
        assert_eq!(&held, expected, "node{id} holds other items than those published");
        assert_eq!(products.len(), expected.len(), "node{id} holds as many products as were published");
    }
}

/// Waits until nothing waits in `queue` and the manager has acknowledged `total` items and has
/// none in flight. Then stops the manager, so that nothing more reaches the cluster, and checks
/// that no message comes back to the queue: a message it held unacknowledged would. Returns
/// the manager's last `/status`.
pub fn drain_and_stop(manager: &mut ManagerProcess, amqp_url: &str, queue: &str, total: u64) -> Value {
    let status = poll("the queue to drain and every item to be acknowledged", Duration::from_secs(60), || {
        let status = manager.status();
        let settled = status["stored"].as_u64()? >= total && status["in_flight"] == 0;
        (settled && queue_len(amqp_url, queue) == Some(0)).then_some(status)
    });
    assert!(manager.terminate().success(), "SIGTERM stops the manager cleanly");
    assert_eq!(queue_len(amqp_url, queue), Some(0), "the manager held no message unacknowledged");
    status
}
