//! Idle cost: CPU and memory of a 5-node labctl cluster that has a leader and nothing to do.
//!
//! Starts 5 nodes with the default timing (heartbeat 50 ms), waits until all agree on a leader,
//! lets them settle, then samples each process's CPU time (`/proc/<pid>/stat` utime + stime)
//! over `--seconds` and its resident memory (`/proc/<pid>/status` VmRSS, and the peak VmHWM).
//! The same for etcd with `--election-timeout 150 --heartbeat-interval 30` for comparison,
//! unless `--no-etcd` or etcd is not installed.
//!
//! ```text
//! cargo bench --bench idle -- [--seconds 20] [--no-etcd] [--raft-port 17555] [--binary PATH]
//! ```
//!
//! `--binary` measures another labctl executable (e.g. a copy built from an earlier commit or
//! with another allocator) instead of this build's.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::etcd::{self, EtcdCluster};
use common::labctl::{LabctlCluster, Timing};
use common::{proc_sample, sched_cpu, wait_for_agreement, Args, System};

const MEMBERS: usize = 5;
const SETTLE: Duration = Duration::from_secs(3);

struct Row {
    label: String,
    member: usize,
    cpu_percent: f64,
    sched_percent: Option<f64>,
    rss_kib: u64,
    hwm_kib: u64,
}

fn main() {
    let args = Args::from_env();
    args.check(&["--seconds", "--no-etcd", "--raft-port", "--binary"]);
    let seconds: u64 = args.parse("--seconds", 20);
    let port: u16 = args.parse("--raft-port", 17555);
    let binary = args.value("--binary").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_labctl")), PathBuf::from);

    println!("# Idle cost: 5 members on loopback, a leader, no client traffic, {seconds} s\n");
    println!("machine: {}  ", common::machine());

    let mut rows = Vec::new();
    let mut labctl = LabctlCluster::start(binary, MEMBERS, port, Timing::DEFAULT).expect("start labctl nodes");
    rows.extend(measure(&mut labctl, seconds));
    drop(labctl);

    if !args.flag("--no-etcd") {
        match etcd::find_binary() {
            Some(bin) => {
                println!("etcd: {}  ", etcd::version(&bin));
                let mut cluster = EtcdCluster::start(bin, MEMBERS, 150, 30).expect("start etcd members");
                rows.extend(measure(&mut cluster, seconds));
            }
            None => eprintln!("\n!!! etcd is NOT installed: labctl only (apt-get install -y etcd-server)\n"),
        }
    }

    println!();
    println!("| system | member | CPU (% of a core, /proc stat) | CPU (schedstat) | RSS | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} % | {} | {:.1} MiB | {:.1} MiB |",
            r.label,
            r.member + 1,
            r.cpu_percent,
            r.sched_percent.map_or("–".into(), |p| format!("{p:.2} %")),
            r.rss_kib as f64 / 1024.0,
            r.hwm_kib as f64 / 1024.0
        );
    }
    let labels: Vec<String> = rows.iter().fold(Vec::new(), |mut v, r| {
        if !v.contains(&r.label) {
            v.push(r.label.clone());
        }
        v
    });
    println!();
    println!("| system | mean CPU per member | max CPU | mean RSS | max RSS | goal (< 1 % and < 20 MiB) |");
    println!("|---|---:|---:|---:|---:|---|");
    for label in labels {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.label == label).collect();
        let n = mine.len() as f64;
        let cpu_mean = mine.iter().map(|r| r.cpu_percent).sum::<f64>() / n;
        let cpu_max = mine.iter().map(|r| r.cpu_percent).fold(0.0, f64::max);
        let rss_mean = mine.iter().map(|r| r.rss_kib as f64).sum::<f64>() / n / 1024.0;
        let rss_max = mine.iter().map(|r| r.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        let met = cpu_max < 1.0 && rss_max < 20.0;
        println!(
            "| {label} | {cpu_mean:.2} % | {cpu_max:.2} % | {rss_mean:.1} MiB | {rss_max:.1} MiB | {} |",
            if met { "met" } else { "NOT met" }
        );
    }
}

fn measure(sys: &mut dyn System, seconds: u64) -> Vec<Row> {
    let label = sys.label();
    let all: Vec<usize> = (0..sys.size()).collect();
    eprintln!("== {label}: idle for {seconds} s (load average {})", common::loadavg());
    if let Err(e) = wait_for_agreement(sys, &all, Duration::from_secs(30)) {
        eprintln!("   {e}");
        return Vec::new();
    }
    std::thread::sleep(SETTLE);
    let pids = sys.pids();
    let before: Vec<_> = pids.iter().map(|&(_, pid)| (proc_sample(pid).ok(), sched_cpu(pid))).collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let elapsed = start.elapsed().as_secs_f64();
    println!("{label}: load average after the idle period {}  ", common::loadavg());
    let mut rows = Vec::new();
    for (&(member, pid), (b, bs)) in pids.iter().zip(before) {
        let (Some(b), Ok(a)) = (b, proc_sample(pid)) else {
            eprintln!("   member {} (pid {pid}) has gone", member + 1);
            continue;
        };
        let sched_percent = match (bs, sched_cpu(pid)) {
            (Some(bs), Some(a)) => Some(a.saturating_sub(bs).as_secs_f64() / elapsed * 100.0),
            _ => None,
        };
        rows.push(Row {
            label: label.clone(),
            member,
            cpu_percent: a.cpu.saturating_sub(b.cpu).as_secs_f64() / elapsed * 100.0,
            sched_percent,
            rss_kib: a.rss_kib,
            hwm_kib: a.hwm_kib,
        });
    }
    // The cluster must still be whole: an idle cluster that lost its leader is not idle.
    if let Err(e) = wait_for_agreement(sys, &all, Duration::from_secs(5)) {
        eprintln!("   after the idle period: {e}");
    }
    rows
}
