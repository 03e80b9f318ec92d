//! Every shell example of README.md runs against a real local cluster, so the README cannot
//! drift from the binary.
//!
//! The convention (README authors, please keep to it):
//! - Every ```` ```sh ```` block is run, in README order, from the repository root, unless the
//!   line before it (blank lines aside) is `<!-- not run: REASON -->`: Docker commands, builds,
//!   the test suite itself, commands that start a cluster or node of their own.
//! - An `sh` block holds commands only; sample output goes in a plain ```` ``` ```` block.
//! - Each command line (`\` continues it) runs in bash with `labctl` on PATH (the binary under
//!   test) and `cargo run [--release] -- ARGS` meaning `labctl ARGS`. `curl` fails on an HTTP
//!   error status (`--fail-with-body`), so an example meant to show an error answer ends in
//!   `|| true`. A command must exit 0; while it does not, it is run again, for up to 20 s (the
//!   cluster may be electing after a `timeout` or `shutdown` example).
//! - The cluster is `labctl cluster --restart` on the default addresses (node N on
//!   127.0.0.N:5555/udp and 127.0.0.N:8000), started and stopped by this test; a node shut down
//!   by an example comes back a second later.

mod common;
#[path = "common/tools.rs"]
mod tools;

use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{poll, BIN};

const RETRY_FOR: Duration = Duration::from_secs(20);

/// One command of the README: the line it starts on and its text.
#[derive(Debug, Clone, PartialEq)]
struct Example {
    line: usize,
    command: String,
}

/// The commands of every `sh` block not marked `<!-- not run: … -->`, and the skipped blocks'
/// reasons.
fn examples(readme: &str) -> (Vec<Example>, Vec<String>) {
    let lines: Vec<&str> = readme.lines().collect();
    let (mut run, mut skipped) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_end() != "```sh" {
            i += 1;
            continue;
        }
        let before = lines[..i].iter().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim());
        let reason = before.and_then(|l| l.strip_prefix("<!-- not run:")).map(|r| r.trim_end_matches("-->").trim());
        let start = i + 1;
        let end = start + lines[start..].iter().position(|l| l.trim_end() == "```").expect("an unclosed ```sh block");
        if let Some(reason) = reason {
            assert!(!reason.is_empty(), "README.md:{}: `not run` needs a reason", i + 1);
            skipped.push(format!("README.md:{}: {reason}", i + 1));
        } else {
            let mut current: Option<Example> = None;
            for (n, text) in lines[start..end].iter().enumerate() {
                let example = current.get_or_insert_with(|| Example { line: start + n + 1, command: String::new() });
                match text.trim_end().strip_suffix('\\') {
                    Some(part) => example.command.push_str(&format!("{part}\\\n")),
                    None => {
                        example.command.push_str(text);
                        let done = current.take().unwrap();
                        if !done.command.trim().is_empty() && !done.command.trim_start().starts_with('#') {
                            run.push(done);
                        }
                    }
                }
            }
            assert!(current.is_none(), "README.md:{start}: a block ends in a `\\` continuation");
        }
        i = end + 1;
    }
    (run, skipped)
}

/// `labctl cluster --restart` in its own process group, stopped on drop like Ctrl-C would.
struct LocalCluster {
    child: Child,
    dir: tempfile::TempDir,
}

impl LocalCluster {
    fn start() -> LocalCluster {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("cluster.log")).expect("log file");
        let child = Command::new(BIN)
            .args(["cluster", "--restart", "--data-dir"])
            .arg(dir.path().join("data"))
            .env_remove("LABCTL_CONFIG")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn labctl cluster");
        LocalCluster { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cluster.log")).unwrap_or_default()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let group = -(self.child.id() as libc::pid_t);
        // SAFETY: kill(2) on the process group of our own child.
        unsafe { libc::kill(group, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// The default addresses a local cluster uses, if all are free.
fn default_addresses_free() -> bool {
    (1..=5).all(|id| {
        UdpSocket::bind(format!("127.0.0.{id}:5555")).is_ok() && TcpListener::bind(format!("127.0.0.{id}:8000")).is_ok()
    })
}

/// Runs one command as the README reader would; (success, output).
fn run(example: &Example, bin_dir: &std::path::Path) -> (bool, String) {
    const PRELUDE: &str = r#"
cargo() {
    if [[ "${1:-}" != run ]]; then
        echo "README test: only 'cargo run … -- ARGS' is run (as labctl ARGS), not: cargo $*" >&2
        return 127
    fi
    while [[ $# -gt 0 && "$1" != -- ]]; do shift; done
    shift
    labctl "$@"
}
curl() { command curl --fail-with-body "$@"; }
"#;
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-c", &format!("{PRELUDE}\n{}", example.command)])
        .current_dir(tools::repo_root())
        .env("PATH", path)
        .env_remove("LABCTL_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn the_convention_is_read_as_documented() {
    let readme = "intro\n```sh\nlabctl a   # one\n\n# a comment\ncurl -X POST x \\\n   -d y\n```\n\n\
        <!-- not run: needs Docker -->\n\n```sh\ndocker compose up\n```\n```\nnot sh\n```\n";
    let (run, skipped) = examples(readme);
    assert_eq!(
        run,
        vec![
            Example { line: 3, command: "labctl a   # one".into() },
            Example { line: 6, command: "curl -X POST x \\\n   -d y".into() },
        ]
    );
    assert_eq!(skipped, vec!["README.md:12: needs Docker".to_string()]);
}

#[test]
fn every_readme_example_runs_against_a_local_cluster() {
    let test = "every_readme_example_runs_against_a_local_cluster";
    let readme = std::fs::read_to_string(tools::repo_root().join("README.md")).expect("README.md");
    let (commands, skipped) = examples(&readme);
    assert!(commands.iter().any(|c| c.command.contains("labctl controller")), "no controller example found");
    for s in &skipped {
        eprintln!("not run: {s}");
    }
    if Command::new("curl").arg("--version").output().is_err() {
        tools::missing::<()>(test, "no curl (apt-get install curl)");
        return;
    }
    if !default_addresses_free() {
        tools::missing::<()>(test, "127.0.0.1-5:5555/udp or :8000 is taken (is a labctl cluster running?)");
        return;
    }
    let bin_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(BIN, bin_dir.path().join("labctl")).unwrap();

    let cluster = LocalCluster::start();
    poll("the README's cluster to elect a leader", Duration::from_secs(20), || {
        let status = Command::new(BIN).args(["controller", "status"]).env_remove("LABCTL_CONFIG").output().ok()?;
        status.status.success().then_some(())
    });

    for example in &commands {
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (ok, output) = run(example, bin_dir.path());
            if ok {
                eprintln!("README.md:{} ok (attempt {attempts}): {}", example.line, example.command.trim());
                break;
            }
            if started.elapsed() > RETRY_FOR {
                panic!(
                    "README.md:{}: `{}` failed for {RETRY_FOR:?} ({attempts} attempts). Fix the example, or put \
                     `<!-- not run: REASON -->` above its block if it cannot run against a local cluster \
                     (see tests/readme_e2e.rs). Last output:\n{output}\ncluster log:\n{}",
                    example.line,
                    example.command.trim(),
                    cluster.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
