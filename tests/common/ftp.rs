//! A private pure-ftpd for tests: its own loopback port, passive range, temp root and virtual user.
//!
//! [`start_ftp`] runs `/usr/sbin/pure-ftpd` directly as a child process (not the system service)
//! with a puredb file made by `pure-pw` in a temp directory. The user `testuser`/`testpass` is
//! chrooted to [`FtpServer::root`], so a file uploaded as `name` appears as `root/name`. A test
//! may [`stop`](FtpServer::stop) the server and [`start it again`](FtpServer::start_again) on the
//! same ports with the same files. The server is killed and its directory removed when the
//! [`FtpServer`] is dropped.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PURE_FTPD: &str = "/usr/sbin/pure-ftpd";
const PURE_PW: &str = "pure-pw";
/// Passive ports per server: a handful is plenty for a test's few transfers.
const PASSIVE_PORTS: u16 = 10;
/// `openssl passwd -6 -salt labctlfixture testpass`.
const PASSWORD_HASH: &str =
    "$6$labctlfixture$0UTGzfNYfuHmqQLg1H7KDlNaCD/77KU/i1EDambQgtfgrhiVksNfp4DqcnqLKn0wG5OSSqwDmIW0Te/ofhZKS.";

/// A running pure-ftpd with one virtual user.
pub struct FtpServer {
    /// Control port on 127.0.0.1.
    pub port: u16,
    pub user: String,
    pub password: String,
    /// The user's home (and chroot): what the user sees as `/`.
    pub root: PathBuf,
    /// First and last passive data port.
    pub passive: (u16, u16),
    dir: tempfile::TempDir,
    /// The puredb file of the virtual user.
    pdb: PathBuf,
    /// Certificate and key: the server then requires TLS (explicit FTPS) on every session.
    tls: Option<(PathBuf, PathBuf)>,
    /// None while stopped.
    child: Option<Child>,
}

impl FtpServer {
    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's own output (it logs little: syslog is off).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pure-ftpd.log")).unwrap_or_default()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Stops the server and its sessions at once, as a crash or a pulled plug would; its user
    /// and files stay for [`start_again`](Self::start_again).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // pure-ftpd forks processes per session; they share the server's own process group.
        let group = child.id() as libc::pid_t;
        // SAFETY: kill(2) on the process group our child leads.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = child.wait();
        // Session processes orphaned by the kill were handed to us (see `start_ftp`): reap them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            // SAFETY: waitpid(2) on our own children of that group; -1 means none is left.
            if unsafe { libc::waitpid(-group, std::ptr::null_mut(), libc::WNOHANG) } < 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts the stopped server again on the same control and passive ports, with the same
    /// user and files, and waits until it greets.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the FTP server is running");
        if let Err(why) = self.launch() {
            panic!("pure-ftpd did not start again on 127.0.0.1:{}: {why}", self.port);
        }
    }

    /// Spawns pure-ftpd on the server's ports and waits up to 10 s for its greeting; Err when
    /// it exits first (a port taken by another process).
    fn launch(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("pure-ftpd.log"))
            .expect("open pure-ftpd log");
        let child = Command::new(PURE_FTPD)
            .process_group(0)
            .arg("--bind")
            .arg(format!("127.0.0.1,{}", self.port))
            .arg("--login")
            .arg(format!("puredb:{}", self.pdb.display()))
            .arg("--passiveportrange")
            .arg(format!("{}:{}", self.passive.0, self.passive.1))
            .args(["--forcepassiveip", "127.0.0.1"])
            .args(["--chrooteveryone", "--noanonymous", "--dontresolve", "--ipv4only"])
            // Let the virtual user own files whatever uid it maps to, and log to our file only.
            .args(["--minuid", "1", "--syslogfacility", "none"])
            // --tls=3: AUTH TLS required for the login and for every data connection.
            .args(self.tls.iter().flat_map(|(cert, key)| {
                ["--tls=3".to_string(), format!("--certfile={},{}", cert.display(), key.display())]
            }))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn pure-ftpd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !self.is_running() {
                self.stop();
                return Err(format!("it exited at start (port taken?):\n{}", self.log_text()));
            }
            if greets(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("pure-ftpd did not greet on 127.0.0.1:{} within 10 s:\n{}", self.port, self.log_text());
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a private pure-ftpd and waits until it greets. None (with a loud `SKIPPED` on stderr)
/// when pure-ftpd is not installed; under `CI=true` a missing pure-ftpd is a failure.
pub fn start_ftp() -> Option<FtpServer> {
    start_ftp_with(None)
}

/// [`start_ftp`]; with `tls` (certificate and key files), a server that requires explicit FTPS.
pub fn start_ftp_with(tls: Option<(PathBuf, PathBuf)>) -> Option<FtpServer> {
    if !Path::new(PURE_FTPD).exists() || Command::new(PURE_PW).arg("--help").output().is_err() {
        let msg = format!("pure-ftpd is not installed ({PURE_FTPD}, {PURE_PW}); install it with scripts/test-env");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        // Straight to stderr, past the test harness's capture, so that it is seen.
        let message = format!("\n!!! SKIPPED FTP test: {msg}\n");
        let _ = std::io::stderr().write_all(message.as_bytes());
        return None;
    }
    // Orphans of our children come to us rather than to init, so the session processes of a
    // killed server do not linger as zombies where init does not reap them.
    // SAFETY: prctl(2) with an integer argument; it only changes who adopts our orphans.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    for _ in 0..5 {
        if let Some(server) = try_start(tls.clone()) {
            return Some(server);
        }
    }
    panic!("pure-ftpd did not start after 5 attempts");
}

/// One attempt: fails (None) when another process took the chosen ports meanwhile.
fn try_start(tls: Option<(PathBuf, PathBuf)>) -> Option<FtpServer> {
    let dir = tempfile::Builder::new().prefix("labctl-ftp-").tempdir().expect("create FTP temp dir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("create FTP root");
    // The server checks the home directory as the virtual user, who must reach and write it.
    set_mode(dir.path(), 0o755);
    let (uid, gid) = user_ids();
    chown(&root, uid, gid);

    let user = "testuser".to_string();
    let password = "testpass".to_string();
    let passwd = dir.path().join("pureftpd.passwd");
    let pdb = dir.path().join("pureftpd.pdb");
    // pure-pw's own `useradd` hashes with argon2 tuned to take seconds, per login too; a SHA-512
    // crypt(3) hash of the password, written as pure-pw writes its lines, keeps tests quick.
    let home = format!("{}/./", root.display());
    std::fs::write(&passwd, format!("{user}:{PASSWORD_HASH}:{uid}:{gid}::{home}::::::::::::\n")).expect("write passwd");
    let out = Command::new(PURE_PW)
        .arg("mkdb")
        .arg(&pdb)
        .arg("-f")
        .arg(&passwd)
        .stdin(Stdio::null())
        .output()
        .expect("run pure-pw");
    assert!(out.status.success(), "pure-pw mkdb failed: {}", String::from_utf8_lossy(&out.stderr));

    let port = free_tcp_port();
    let passive = free_port_range(PASSIVE_PORTS);
    let mut server = FtpServer { port, user, password, root, passive, dir, pdb, tls, child: None };
    match server.launch() {
        Ok(()) => Some(server),
        Err(why) => {
            eprintln!("pure-ftpd on 127.0.0.1:{port}: {why}");
            None
        }
    }
}

/// Whether an FTP server answers on the port with its `220` greeting.
fn greets(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 3];
    let ok = stream.read_exact(&mut buf).is_ok() && &buf == b"220";
    let _ = stream.write_all(b"QUIT\r\n");
    ok
}

/// The uid/gid the virtual user maps to: `nobody` when running as root (pure-ftpd refuses to
/// log in as root), else ourselves.
fn user_ids() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if uid == 0 {
        (65534, 65534)
    } else {
        (uid, gid)
    }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a TCP port").local_addr().unwrap().port()
}

/// `count` consecutive ports that are free on 127.0.0.1 right now, outside the ephemeral range
/// the kernel hands out for port 0 (so other tests' free ports rarely land in it).
fn free_port_range(count: u16) -> (u16, u16) {
    let seed = (std::process::id() as u64) << 32 ^ nanos();
    for attempt in 0..200u64 {
        let first = 20000 + ((seed.wrapping_mul(6364136223846793005).wrapping_add(attempt * 7919)) % 12000) as u16;
        let listeners: Vec<_> =
            (first..first + count).map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok()).collect();
        if listeners.len() == count as usize {
            return (first, first + count - 1);
        }
    }
    panic!("no {count} consecutive free ports on 127.0.0.1");
}

fn nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos() as u64).unwrap_or(0)
}
