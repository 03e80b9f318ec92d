//! Every shell example of README.md runs against a real local cluster, so the README cannot
//! drift from the binary.
//!
//! The convention (README authors, please keep to it):
//! - Every ```` ```sh ```` block is run, in README order, from the repository root, unless the
//!   line before it (blank lines aside) is `<!-- not run: REASON -->`: Docker commands, commands
//!   that need the internet or servers the test does not have, builds, the test suite itself
//!   and the benchmarks, commands that start a cluster or node of their own.
//! - An `sh` block holds commands only; sample output goes in a plain ```` ``` ```` block.
//! - Each command line (`\` continues it) runs in bash with `labctl` on PATH (the binary under
//!   test) and `cargo run [--release] -- ARGS` meaning `labctl ARGS`. `curl` fails on an HTTP
//!   error status (`--fail-with-body`), so an example meant to show an error answer ends in
//!   `|| true`. A command must exit 0; while it does not, it is run again, for up to 20 s (the
//!   cluster may be electing after a `timeout` or `shutdown` example).
//! - A command ending in `&` runs in the background, as the reader's shell would run it, until
//!   its block ends; then it gets SIGINT (Ctrl-C). It must not fail before that.
//! - The cluster is `labctl cluster --restart` on the default addresses (node N on
//!   127.0.0.N:5555/udp and 127.0.0.N:8000), started and stopped by this test; a node shut down
//!   by an example comes back a second later. 127.0.0.1:2525 is left free for the walk-through's
//!   mail server.

mod common;
#[path = "common/tools.rs"]
mod tools;

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{poll, BIN};

const RETRY_FOR: Duration = Duration::from_secs(20);

/// One command of the README: the line of its block's opening fence, the line it starts on,
/// and its text.
#[derive(Debug, Clone, PartialEq)]
struct Example {
    block: usize,
    line: usize,
    command: String,
}

impl Example {
    /// The command without its final `&`, when it is one to run in the background.
    fn background(&self) -> Option<&str> {
        let command = self.command.trim_end();
        command.strip_suffix('&').filter(|c| !c.ends_with('&'))
    }
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
                let example = current.get_or_insert_with(|| Example {
                    block: i + 1,
                    line: start + n + 1,
                    command: String::new(),
                });
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

/// A process in a group of its own, its output in a log file, stopped like Ctrl-C would stop
/// it: SIGINT to the group, SIGKILL if it is still there 10 s later.
struct ProcessGroup {
    child: Child,
    log: PathBuf,
}

impl ProcessGroup {
    fn spawn(command: &mut Command, log: PathBuf) -> ProcessGroup {
        use std::os::unix::process::CommandExt;
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        ProcessGroup { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How it ended by itself, if it has.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let group = -(self.child.id() as libc::pid_t);
        // SAFETY: kill(2) on the process group of our own child.
        unsafe { libc::kill(group, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `labctl cluster --restart` on the default addresses, with its data in a temp directory.
struct LocalCluster {
    process: ProcessGroup,
    _dir: tempfile::TempDir,
}

impl LocalCluster {
    fn start() -> LocalCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(BIN);
        command
            .args(["cluster", "--restart", "--data-dir"])
            .arg(dir.path().join("data"))
            .env_remove("LABCTL_CONFIG")
            .current_dir(dir.path());
        LocalCluster { process: ProcessGroup::spawn(&mut command, dir.path().join("cluster.log")), _dir: dir }
    }

    fn log(&self) -> String {
        self.process.log()
    }
}

/// A README command run in the background until its block ends.
struct Background {
    line: usize,
    command: String,
    process: ProcessGroup,
}

impl Background {
    fn start(example: &Example, command: &str, bin_dir: &Path, logs: &Path) -> Background {
        let log = logs.join(format!("line-{}.log", example.line));
        let process = ProcessGroup::spawn(&mut shell(command, bin_dir), log);
        Background { line: example.line, command: command.trim().to_string(), process }
    }

    /// Stops it at the end of its block; panics if it had failed by itself before.
    fn finish(mut self) {
        if let Some(status) = self.process.exited().filter(|s| !s.success()) {
            panic!(
                "README.md:{}: `{}` (in the background) failed by itself ({status}):\n{}",
                self.line,
                self.command,
                self.process.log()
            );
        }
        self.process.stop();
        eprintln!("README.md:{} stopped (background): {}\n{}", self.line, self.command, self.process.log());
    }
}

/// The default addresses a local cluster uses, and the walk-through's mail server's, if all
/// are free.
fn default_addresses_free() -> bool {
    (1..=5).all(|id| {
        UdpSocket::bind(format!("127.0.0.{id}:5555")).is_ok() && TcpListener::bind(format!("127.0.0.{id}:8000")).is_ok()
    }) && TcpListener::bind("127.0.0.1:2525").is_ok()
}

/// bash running `command` as the README reader would: from the repository root, `labctl` (from
/// `bin_dir`) on PATH, `cargo run … --` meaning `labctl`, `curl` failing on an error status.
fn shell(command: &str, bin_dir: &Path) -> Command {
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
    let mut bash = Command::new("bash");
    bash.args(["-o", "pipefail", "-c", &format!("{PRELUDE}\n{command}")])
        .current_dir(tools::repo_root())
        .env("PATH", path)
        .env_remove("LABCTL_CONFIG");
    bash
}

/// Runs one command to its end; (success, output).
fn run(example: &Example, bin_dir: &Path) -> (bool, String) {
    let out = shell(&example.command, bin_dir).stdin(Stdio::null()).output().expect("run bash");
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
            Example { block: 2, line: 3, command: "labctl a   # one".into() },
            Example { block: 2, line: 6, command: "curl -X POST x \\\n   -d y".into() },
        ]
    );
    assert_eq!(skipped, vec!["README.md:12: needs Docker".to_string()]);
    assert!(run.iter().all(|e| e.background().is_none()));

    let (run, _) = examples("```sh\nserver --port 1 &\nlabctl a && labctl b\n```\n");
    let background: Vec<Option<&str>> = run.iter().map(Example::background).collect();
    assert_eq!(background, [Some("server --port 1 "), None]);
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
    let python_has_aiosmtpd = || {
        let import = Command::new("python3").args(["-c", "import aiosmtpd"]).output();
        import.is_ok_and(|out| out.status.success())
    };
    if commands.iter().any(|c| c.command.contains("aiosmtpd")) && !python_has_aiosmtpd() {
        tools::missing::<()>(test, "no aiosmtpd for the e-mail example (pip install aiosmtpd)");
        return;
    }
    if !default_addresses_free() {
        tools::missing::<()>(
            test,
            "127.0.0.1-5:5555/udp or :8000, or 127.0.0.1:2525, is taken (is a labctl cluster or a mail server running?)",
        );
        return;
    }
    let bin_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(BIN, bin_dir.path().join("labctl")).unwrap();

    let cluster = LocalCluster::start();
    poll("the README's cluster to elect a leader", Duration::from_secs(20), || {
        let status = Command::new(BIN).args(["controller", "status"]).env_remove("LABCTL_CONFIG").output().ok()?;
        status.status.success().then_some(())
    });

    let logs = tempfile::tempdir().unwrap();
    let mut background: Vec<Background> = Vec::new();
    for (n, example) in commands.iter().enumerate() {
        match example.background() {
            Some(command) => background.push(Background::start(example, command, bin_dir.path(), logs.path())),
            None => run_until_ok(example, bin_dir.path(), &cluster, &background),
        }
        if commands.get(n + 1).is_none_or(|next| next.block != example.block) {
            background.drain(..).for_each(Background::finish);
        }
    }
}

/// Runs `example` until it succeeds; panics with its output (and the cluster's and the
/// block's background commands') when it still fails after [`RETRY_FOR`].
fn run_until_ok(example: &Example, bin_dir: &Path, cluster: &LocalCluster, background: &[Background]) {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (ok, output) = run(example, bin_dir);
        if ok {
            eprintln!("README.md:{} ok (attempt {attempts}): {}", example.line, example.command.trim());
            return;
        }
        if started.elapsed() > RETRY_FOR {
            let background: String = background
                .iter()
                .map(|b| format!("README.md:{} (background) `{}`:\n{}\n", b.line, b.command, b.process.log()))
                .collect();
            panic!(
                "README.md:{}: `{}` failed for {RETRY_FOR:?} ({attempts} attempts). Fix the example, or put \
                 `<!-- not run: REASON -->` above its block if it cannot run against a local cluster \
                 (see tests/readme_e2e.rs). Last output:\n{output}\n{background}cluster log:\n{}",
                example.line,
                example.command.trim(),
                cluster.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
