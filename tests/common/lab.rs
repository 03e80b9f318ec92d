//! The compose lab run for real: a Compose project of docker-compose.yml (and overrides) with
//! real containers, under a project name and on host addresses of its own, so that it never
//! meets a lab a user runs. [`Lab::up`] starts it; dropping the [`Lab`] removes its containers,
//! networks and volumes (`down -v`), also when the test fails, after printing the containers'
//! last log lines, and the untagged images its builds left.
//!
//! Needs a Docker engine, Compose v2 and the images of `scripts/docker-env`; [`Lab::engine`]
//! says when they are missing (the test then skips, or fails under `CI=true`).

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::tools;

/// The stand-ins tests/docker/compose.stand-ins.yml names (scripts/docker-env builds them).
pub const STAND_INS: [&str; 4] = [
    "labctl-test/rabbitmq:stand-in",
    "labctl-test/pure-ftpd:stand-in",
    "labctl-test/postgres:stand-in",
    COURSE_CONTROLLER,
];
/// A course controller in Python (tests/docker/stand-ins/course-controller).
pub const COURSE_CONTROLLER: &str = "labctl-test/course-controller:stand-in";
/// The override that swaps the lab's third-party images for the stand-ins.
pub const STAND_IN_FILE: &str = "tests/docker/compose.stand-ins.yml";

/// Variables of the caller's environment a compose command keeps: where the engine and the
/// CLI's configuration are. Everything else comes from .env and [`Lab`]'s own settings, so a
/// COMPOSE_FILE or NODE_HTTP_PORT in the caller's shell cannot change the lab.
const KEEP_ENV: [&str; 8] = [
    "PATH",
    "HOME",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CONTEXT",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "TMPDIR",
];

/// How to run Compose here: `docker compose`, else the Compose v2 binary tools::compose finds.
#[derive(Clone, Debug)]
pub struct Engine {
    compose: Vec<String>,
}

impl Engine {
    /// The engine and tools the lab needs, or None after [`tools::missing`] said what is missing.
    pub fn find(test: &str) -> Option<Engine> {
        let answers = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
        if !answers.is_ok_and(|o| o.status.success()) {
            return tools::missing(test, "no Docker engine answers `docker info` (scripts/docker-env starts one)");
        }
        let plugin = Command::new("docker").args(["compose", "version"]).output();
        let compose = if plugin.is_ok_and(|o| o.status.success()) {
            vec!["docker".to_string(), "compose".to_string()]
        } else if let Some(compose) = tools::compose() {
            compose
        } else {
            return tools::missing(test, "no Compose v2 (scripts/docker-env links it in)");
        };
        for image in STAND_INS {
            if !docker(&["image", "inspect", image]).status.success() {
                return tools::missing(test, &format!("no image {image} (scripts/docker-env builds it)"));
            }
        }
        Some(Engine { compose })
    }
}

/// Runs `docker ARGS`, its output captured.
pub fn docker(args: &[&str]) -> Output {
    try_docker(args).unwrap_or_else(|| panic!("cannot run docker {}", args.join(" ")))
}

/// [`docker`], or None when it cannot run at all (for Drop, which must not panic).
fn try_docker(args: &[&str]) -> Option<Output> {
    Command::new("docker").args(args).stdin(Stdio::null()).output().ok()
}

/// Host addresses and ports of a lab, none of them a default of .env: node N on
/// `<prefix>N:<http_port>` (TCP) and `<prefix>N:<raft_port>` (UDP); the other services on
/// `publish_ip`, each on a port free when the lab was planned.
#[derive(Clone, Debug)]
pub struct Addresses {
    pub node_ip_prefix: String,
    pub http_port: u16,
    pub raft_port: u16,
    pub publish_ip: String,
    /// .env variable → port, for the services on `publish_ip`.
    pub ports: BTreeMap<&'static str, u16>,
}

impl Addresses {
    /// Ports free right now on `<prefix>1 … <prefix>5` and on `publish_ip` (loopback addresses).
    pub fn free(node_ip_prefix: &str, publish_ip: &str) -> Addresses {
        let nodes: Vec<String> = (1..=5).map(|id| format!("{node_ip_prefix}{id}")).collect();
        let http_port = free_port(&nodes, false);
        let raft_port = free_port(&nodes, true);
        let publish = [publish_ip.to_string()];
        let mut ports = BTreeMap::new();
        for var in ["MANAGER_PORT", "RABBITMQ_PORT", "RABBITMQ_MANAGEMENT_PORT", "FTP_PORT", "POSTGRES_PORT"] {
            let mut port = free_port(&publish, false);
            while ports.values().any(|p| *p == port) {
                port = free_port(&publish, false);
            }
            ports.insert(var, port);
        }
        Addresses {
            node_ip_prefix: node_ip_prefix.to_string(),
            http_port,
            raft_port,
            publish_ip: publish_ip.to_string(),
            ports,
        }
    }

    /// Node `id`'s published HTTP address.
    pub fn http(&self, id: u32) -> SocketAddr {
        format!("{}{id}:{}", self.node_ip_prefix, self.http_port).parse().expect("a node's HTTP address")
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("NODE_IP_PREFIX".to_string(), self.node_ip_prefix.clone()),
            ("NODE_HTTP_PORT".to_string(), self.http_port.to_string()),
            ("NODE_RAFT_PORT".to_string(), self.raft_port.to_string()),
            ("PUBLISH_IP".to_string(), self.publish_ip.clone()),
        ];
        env.extend(self.ports.iter().map(|(var, port)| (var.to_string(), port.to_string())));
        env
    }
}

/// A port that TCP (or UDP) can bind on every one of `ips` now. The lab's engine binds it a
/// moment later; another program taking it meanwhile makes `up` fail, loudly.
fn free_port(ips: &[String], udp: bool) -> u16 {
    for _ in 0..200 {
        let port = if udp {
            UdpSocket::bind(format!("{}:0", ips[0])).and_then(|s| s.local_addr()).map(|a| a.port())
        } else {
            TcpListener::bind(format!("{}:0", ips[0])).and_then(|s| s.local_addr()).map(|a| a.port())
        };
        let Ok(port) = port else { continue };
        let free = ips.iter().all(|ip| {
            if udp {
                UdpSocket::bind(format!("{ip}:{port}")).is_ok()
            } else {
                TcpListener::bind(format!("{ip}:{port}")).is_ok()
            }
        });
        if free {
            return port;
        }
    }
    panic!("no port is free on all of {ips:?}");
}

/// One Compose project of the lab. Dropping it takes the project down with its volumes.
pub struct Lab {
    engine: Engine,
    pub project: String,
    /// Compose files, relative to the repository root, the first one docker-compose.yml.
    files: Vec<String>,
    pub addresses: Addresses,
    /// Extra variables for compose (e.g. LABCTL_IMAGE).
    extra_env: Vec<(String, String)>,
    /// Set once `up` ran: then Drop takes the project down.
    started: bool,
    /// Anonymous volumes the project's containers had (the image's `VOLUME /data` where a
    /// service mounts nothing there): `down` without -v leaves them behind, unnamed; Drop
    /// removes them.
    anonymous_volumes: RefCell<BTreeSet<String>>,
}

impl Lab {
    /// A lab not started yet; what a failed earlier run of the same project left is removed.
    pub fn new(
        engine: &Engine,
        project: &str,
        files: &[&str],
        addresses: Addresses,
        extra_env: &[(&str, &str)],
    ) -> Lab {
        let lab = Lab {
            engine: engine.clone(),
            project: project.to_string(),
            files: files.iter().map(|f| f.to_string()).collect(),
            addresses,
            extra_env: extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            started: false,
            anonymous_volumes: RefCell::new(BTreeSet::new()),
        };
        lab.compose_ok(&["down", "-v", "--remove-orphans", "--timeout", "5"]);
        lab
    }

    /// The compose command of this project, its environment from .env and the lab's settings.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.engine.compose[0]);
        cmd.args(&self.engine.compose[1..]).args(["--project-name", &self.project]);
        for file in &self.files {
            cmd.args(["-f", file]);
        }
        cmd.args(args).current_dir(tools::repo_root()).stdin(Stdio::null()).env_clear();
        for keep in KEEP_ENV {
            if let Ok(value) = std::env::var(keep) {
                cmd.env(keep, value);
            }
        }
        for (key, value) in self.addresses.env().into_iter().chain(self.extra_env.iter().cloned()) {
            cmd.env(key, value);
        }
        cmd
    }

    /// Runs compose with `args`: its output, whatever the exit status.
    pub fn compose(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap_or_else(|e| panic!("compose {}: {e}", args.join(" ")))
    }

    /// Runs compose with `args` and panics, with its output, unless it exits 0; its stdout.
    pub fn compose_ok(&self, args: &[&str]) -> String {
        let out = self.compose(args);
        assert!(
            out.status.success(),
            "compose {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `up -d` with `args` (e.g. `--build`); from now on Drop takes the project down.
    pub fn up(&mut self, args: &[&str]) {
        self.started = true;
        let mut all = vec!["up", "-d"];
        all.extend_from_slice(args);
        self.compose_ok(&all);
        self.note_anonymous_volumes();
    }

    /// `down` without -v: containers and network go, the volumes stay.
    pub fn down(&self) {
        self.note_anonymous_volumes();
        self.compose_ok(&["down", "--timeout", "10"]);
    }

    /// The anonymous volumes the project's containers have had (none, from the lab's image).
    pub fn anonymous_volumes(&self) -> Vec<String> {
        self.note_anonymous_volumes();
        self.anonymous_volumes.borrow().iter().cloned().collect()
    }

    /// Remembers the anonymous volumes of the project's containers, for Drop to remove.
    fn note_anonymous_volumes(&self) {
        let Ok(out) = self.command(&["ps", "--all", "--quiet"]).output() else { return };
        let ids = String::from_utf8_lossy(&out.stdout);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return;
        }
        let mut args =
            vec!["inspect", "--format", "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}} {{end}}{{end}}"];
        args.extend(ids);
        let Some(out) = try_docker(&args) else { return };
        let names = String::from_utf8_lossy(&out.stdout);
        // Compose names the volumes it declares <project>_<name>; Docker names the others by
        // 64 hex digits.
        let anonymous = names.split_whitespace().filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()));
        self.anonymous_volumes.borrow_mut().extend(anonymous.map(str::to_string));
    }

    /// `docker compose run --rm controller ARGS`: (exit code, stdout, stderr).
    pub fn controller(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let mut all = vec!["run", "--rm", "controller"];
        all.extend_from_slice(args);
        let out = self.compose(&all);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The lab's admin password, from the volume lab-secrets, as the README reads it.
    pub fn admin_password(&self) -> String {
        let out = self.compose_ok(&["run", "--rm", "--entrypoint", "cat", "controller", "/run/labctl/admin.password"]);
        let password = out.trim().to_string();
        assert!(password.len() >= 32, "an admin password of {} characters: {out:?}", password.len());
        password
    }

    /// The id of `service`'s container (running or not).
    pub fn container(&self, service: &str) -> String {
        let id = self.compose_ok(&["ps", "--all", "--quiet", service]).trim().to_string();
        assert!(!id.is_empty() && !id.contains('\n'), "{service}: container ids {id:?}");
        id
    }

    /// `docker inspect` of `service`'s container.
    pub fn inspect(&self, service: &str) -> Value {
        let out = docker(&["inspect", &self.container(service)]);
        assert!(out.status.success(), "docker inspect {service}: {}", String::from_utf8_lossy(&out.stderr));
        let list: Value = serde_json::from_slice(&out.stdout).expect("docker inspect prints JSON");
        list[0].clone()
    }

    /// The health status of `service`'s container: starting, healthy, unhealthy, or none.
    pub fn health(&self, service: &str) -> String {
        let state = &self.inspect(service)["State"];
        state["Health"]["Status"].as_str().unwrap_or("none").to_string()
    }

    /// The project's network, as compose names it.
    pub fn network(&self) -> String {
        format!("{}_default", self.project)
    }

    /// The last lines of every container's log, for a failed test.
    fn print_logs(&self) {
        if let Ok(out) = self.command(&["ps", "--all"]).output() {
            eprintln!("--- compose ps:\n{}", String::from_utf8_lossy(&out.stdout));
        }
        if let Ok(out) = self.command(&["logs", "--no-color", "--timestamps", "--tail", "40"]).output() {
            eprintln!(
                "--- compose logs (last 40 lines per container):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.started {
            return;
        }
        if std::thread::panicking() {
            self.print_logs();
        }
        self.note_anonymous_volumes();
        let out = self.command(&["down", "-v", "--remove-orphans", "--timeout", "5"]).output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                eprintln!("compose down -v of {} failed:\n{}", self.project, String::from_utf8_lossy(&out.stderr))
            }
            Err(e) => eprintln!("compose down -v of {}: {e}", self.project),
        }
        // Those `down -v` removed are gone already; the rest were left by a `down` without -v.
        for volume in self.anonymous_volumes.borrow().iter() {
            let _ = try_docker(&["volume", "rm", volume]);
        }
        // `up --build` exports the one build once per service, each with the service's label;
        // the image tag keeps the last, the others are left untagged.
        let label = format!("label=com.docker.compose.project={}", self.project);
        let _ = try_docker(&["image", "prune", "--force", "--filter", &label]);
    }
}

/// Polls `f` every quarter second until it returns Some, or panics after `timeout` with what was
/// awaited and the last thing `f` saw.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut(&mut String) -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        if let Some(v) = f(&mut last) {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
