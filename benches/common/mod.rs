//! Shared by the `failover` and `idle` benchmarks: clusters of real processes on loopback
//! (labctl nodes and etcd members), their leader as each member sees it, one committed write,
//! and the figures.
//!
//! Every child process is killed when its cluster is dropped (also on panic), and is asked by
//! the kernel to die with the benchmark (`PR_SET_PDEATHSIG`), so nothing outlives a run.

#![allow(dead_code)] // each benchmark uses a part

pub mod etcd;
pub mod labctl;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A cluster under test, seen from outside as a client would.
pub trait System {
    /// Name in the tables, e.g. `labctl 150–300 ms`.
    fn label(&self) -> String;
    /// Number of members.
    fn size(&self) -> usize;
    /// Asks each of `members` once, concurrently or back to back within about `wait`, whom it
    /// takes for the leader. A member that does not answer in time is left out.
    fn leaders(&mut self, members: &[usize], wait: Duration) -> Vec<(usize, Option<usize>)>;
    /// Writes one key through `leader` and returns once the write is committed.
    fn commit(&mut self, leader: usize, key: &str) -> Result<(), String>;
    /// SIGKILL: the member stops at once, without any goodbye.
    fn kill(&mut self, member: usize);
    /// Starts a killed member again on its own data.
    fn restart(&mut self, member: usize) -> std::io::Result<()>;
    /// Process ids of the running members, for /proc figures.
    fn pids(&self) -> Vec<(usize, u32)>;
}

/// The leader named by at least `quorum` of `views`, if any.
pub fn agreed_leader(views: &[(usize, Option<usize>)], quorum: usize, exclude: Option<usize>) -> Option<usize> {
    let mut counts = std::collections::BTreeMap::new();
    for (_, leader) in views {
        if let Some(l) = leader {
            if Some(*l) != exclude {
                *counts.entry(*l).or_insert(0usize) += 1;
            }
        }
    }
    counts.into_iter().find(|&(_, n)| n >= quorum).map(|(l, _)| l)
}

/// Polls until every member in `members` names the same leader; returns it.
pub fn wait_for_agreement(sys: &mut dyn System, members: &[usize], deadline: Duration) -> Result<usize, String> {
    let start = Instant::now();
    let mut last = Vec::new();
    while start.elapsed() < deadline {
        last = sys.leaders(members, Duration::from_millis(50));
        if last.len() == members.len() {
            if let Some(l) = agreed_leader(&last, members.len(), None) {
                return Ok(l);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "{}: members {members:?} did not agree on a leader within {deadline:?}; last views {last:?}",
        sys.label()
    ))
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`, tied to the benchmark's life.
    pub fn spawn(mut cmd: Command, log: &Path) -> std::io::Result<Proc> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        // SAFETY: prctl is async-signal-safe and touches only the child being set up.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(Proc { child: cmd.spawn()? })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL without waiting; `reap` collects the exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    pub fn reap(&mut self) {
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        self.reap();
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> std::io::Result<TempDir> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("LABCTL_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("kept {}", self.0.display());
        }
    }
}

/// splitmix64, seeded: the random delays of a run can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// Summary of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        // Nearest rank: the smallest sample with at least p of all samples at or below it.
        let rank = |p: f64| ms[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        let median = if n % 2 == 1 { ms[n / 2] } else { (ms[n / 2 - 1] + ms[n / 2]) / 2.0 };
        Some(Summary { n, mean: ms.iter().sum::<f64>() / n as f64, median, p99: rank(0.99), max: ms[n - 1] })
    }
}

/// CPU time (user + system) of a process so far, and its resident memory.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub cpu: Duration,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// Reads `/proc/<pid>/stat` (utime, stime) and `/proc/<pid>/status` (VmRSS, VmHWM).
pub fn proc_sample(pid: u32) -> std::io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| fields.get(i - 3).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let cpu_ticks = ticks(14) + ticks(15);
    let cpu = Duration::from_nanos(cpu_ticks * 1_000_000_000 / hz);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample { cpu, rss_kib: kib("VmRSS:"), hwm_kib: kib("VmHWM:") })
}

/// Total CPU time of all threads of a process from `/proc/<pid>/task/*/schedstat`, in
/// nanoseconds: finer than the clock ticks of `/proc/<pid>/stat`. Threads that ended are
/// missing, so this is used only as a cross-check over an idle period.
pub fn sched_cpu(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// The machine, for the record: CPU model, core count, kernel.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_string(), |(_, v)| v.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, Linux {}", kernel.trim())
}

/// The 1-, 5- and 15-minute load averages: other work on the machine skews every figure.
pub fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Command-line options after `cargo bench --bench X --`; cargo's own `--bench` is skipped.
pub struct Args(Vec<String>);

impl Args {
    pub fn from_env() -> Args {
        Args(std::env::args().skip(1).filter(|a| a != "--bench").collect())
    }

    pub fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    /// `--name V` or `--name=V`.
    pub fn value(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        self.0.iter().enumerate().find_map(|(i, a)| {
            if a == name {
                self.0.get(i + 1).cloned()
            } else {
                a.strip_prefix(&prefix).map(str::to_string)
            }
        })
    }

    pub fn parse<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.value(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| panic!("{name}: cannot parse {v:?}")),
        }
    }

    /// Rejects options not in `known`; anything not starting with `--` is a value.
    pub fn check(&self, known: &[&str]) {
        for a in self.0.iter().filter(|a| a.starts_with("--")) {
            let name = a.split('=').next().unwrap_or(a);
            if !known.contains(&name) {
                panic!("unknown option {a:?}; known: {known:?}");
            }
        }
    }
}
