//! Failover benchmark: how long a 5-member cluster on loopback is without a leader, and without
//! a committed write, after its leader is killed.
//!
//! For each system (labctl with its default 150–300 ms election timeout, labctl with the Raft
//! paper's 12–24 ms profile, and etcd with `--election-timeout 150 --heartbeat-interval 30
//! --pre-vote`), in one run:
//!
//! 1. start 5 members and wait until all name the same leader;
//! 2. wait a random 0.3–1.0 s, find the leader, SIGKILL it, and measure
//!    - **elected**: until 3 of the 4 survivors name the same new leader (each survivor is
//!      asked every ~1 ms: LEADER_INFO over UDP for labctl, `/v3/maintenance/status` for etcd);
//!    - **committed**: until that leader acknowledges a write sent to it right then (STORE,
//!      acknowledged once committed; etcd `put`). A write that fails (leadership moved on) is
//!      retried against the leader the survivors name then;
//! 3. restart the killed member on its data and wait until all 5 name the same leader again;
//! 4. repeat `--kills` times.
//!
//! ```text
//! cargo bench --bench failover -- [--kills 200] [--etcd-kills N] [--no-etcd] [--no-fast]
//!                                 [--only labctl|fast|etcd] [--seed N] [--raft-port 17555]
//! ```
//! Raw samples go to `target/failover-<system>.csv`. A markdown table goes to stdout.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::etcd::{self, EtcdCluster};
use common::labctl::{LabctlCluster, Timing};
use common::{agreed_leader, wait_for_agreement, Args, Rng, Summary, System};

const MEMBERS: usize = 5;
/// A member that does not elect within this is a failure, not a slow sample.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(10);
const STABLE_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between two polls of the survivors.
const POLL_GAP: Duration = Duration::from_millis(1);

struct Sample {
    elected: Duration,
    committed: Duration,
    old_leader: usize,
    new_leader: usize,
    store_retries: u32,
}

struct Outcome {
    label: String,
    samples: Vec<Sample>,
    failures: Vec<String>,
    wall: Duration,
}

fn main() {
    let args = Args::from_env();
    args.check(&["--kills", "--etcd-kills", "--no-etcd", "--no-fast", "--only", "--seed", "--raft-port"]);
    let kills: usize = args.parse("--kills", 200);
    let etcd_kills: usize = args.parse("--etcd-kills", kills);
    let seed: u64 = args.parse("--seed", 586);
    let port: u16 = args.parse("--raft-port", 17555);
    let only = args.value("--only");
    let wants = |name: &str| only.as_deref().is_none_or(|o| o == name);

    let binary = PathBuf::from(env!("CARGO_BIN_EXE_labctl"));
    println!("# Failover: 5 members on loopback, leader SIGKILLed at a random moment\n");
    println!("machine: {}  ", common::machine());
    println!("labctl: {}  ", binary.display());

    let mut rng = Rng(seed);
    let mut outcomes = Vec::new();
    if wants("labctl") {
        let sys = LabctlCluster::start(binary.clone(), MEMBERS, port, Timing::DEFAULT).expect("start labctl nodes");
        outcomes.push(run(Box::new(sys), kills, &mut rng));
    }
    if wants("fast") && !args.flag("--no-fast") {
        let sys = LabctlCluster::start(binary.clone(), MEMBERS, port, Timing::FAST).expect("start labctl nodes");
        outcomes.push(run(Box::new(sys), kills, &mut rng));
    }
    if wants("etcd") && !args.flag("--no-etcd") {
        match etcd::find_binary() {
            Some(bin) => {
                println!("etcd: {}  ", etcd::version(&bin));
                let sys = EtcdCluster::start(bin, MEMBERS, 150, 30).expect("start etcd members");
                outcomes.push(run(Box::new(sys), etcd_kills, &mut rng));
            }
            None => {
                let banner = "!".repeat(78);
                eprintln!("\n{banner}\n!!! etcd is NOT installed: no comparison in this run.");
                eprintln!("!!! apt-get install -y etcd-server etcd-client   (Debian), then run again.\n{banner}\n");
                println!("\n**etcd not installed: labctl only, no ratio.**");
            }
        }
    }
    report(&outcomes);
}

/// The kill/measure/restart loop for one system.
fn run(mut sys: Box<dyn System>, kills: usize, rng: &mut Rng) -> Outcome {
    let label = sys.label();
    eprintln!("== {label}: {kills} kills (load average {})", common::loadavg());
    let all: Vec<usize> = (0..sys.size()).collect();
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut failures = Vec::new();
    if let Err(e) = wait_for_agreement(sys.as_mut(), &all, STABLE_DEADLINE) {
        failures.push(e);
        return Outcome { label, samples, failures, wall: start.elapsed() };
    }
    for round in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.range(300, 1000)));
        match kill_once(sys.as_mut(), round) {
            Ok(sample) => samples.push(sample),
            Err(e) => {
                eprintln!("   kill {round}: {e}");
                failures.push(e);
            }
        }
        if let Err(e) = wait_for_agreement(sys.as_mut(), &all, STABLE_DEADLINE) {
            eprintln!("   {e}");
            failures.push(e);
            break;
        }
        if (round + 1) % 20 == 0 {
            let s = Summary::of(&samples.iter().map(|s| s.elected).collect::<Vec<_>>());
            eprintln!("   {} kills, elected median {:.1} ms", round + 1, s.map_or(f64::NAN, |s| s.median));
        }
    }
    let outcome = Outcome { label, samples, failures, wall: start.elapsed() };
    eprintln!("   done (load average {})", common::loadavg());
    write_csv(&outcome);
    outcome
}

fn kill_once(sys: &mut dyn System, round: usize) -> Result<Sample, String> {
    let all: Vec<usize> = (0..sys.size()).collect();
    let quorum = sys.size() / 2 + 1;
    let old = agreed_leader(&sys.leaders(&all, Duration::from_millis(50)), quorum, None)
        .ok_or("no leader agreed on before the kill")?;
    let survivors: Vec<usize> = all.iter().copied().filter(|&m| m != old).collect();

    let t0 = Instant::now();
    sys.kill(old);

    // (a) a majority of the survivors (3 of 4) name the same new leader.
    let (mut leader, elected) = loop {
        let views = sys.leaders(&survivors, Duration::from_millis(2));
        if let Some(l) = agreed_leader(&views, quorum, Some(old)) {
            break (l, t0.elapsed());
        }
        if t0.elapsed() > FAILOVER_DEADLINE {
            let _ = sys.restart(old);
            return Err(format!("no new leader within {FAILOVER_DEADLINE:?}; last views {views:?}"));
        }
        std::thread::sleep(POLL_GAP);
    };
    let new_leader = leader;

    // (b) that leader has committed an entry: a write through it is acknowledged.
    let key = format!("failover/{round}");
    let mut store_retries = 0;
    let committed = loop {
        match sys.commit(leader, &key) {
            Ok(()) => break t0.elapsed(),
            Err(e) => {
                store_retries += 1;
                if t0.elapsed() > FAILOVER_DEADLINE {
                    let _ = sys.restart(old);
                    return Err(format!("no committed write within {FAILOVER_DEADLINE:?}: {e}"));
                }
                std::thread::sleep(POLL_GAP);
                if let Some(l) = agreed_leader(&sys.leaders(&survivors, Duration::from_millis(5)), quorum, Some(old)) {
                    leader = l;
                }
            }
        }
    };

    sys.restart(old).map_err(|e| format!("cannot restart member {old}: {e}"))?;
    Ok(Sample { elected, committed, old_leader: old, new_leader, store_retries })
}

fn write_csv(outcome: &Outcome) {
    let slug: String = outcome
        .label
        .split(" (")
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '-' })
        .collect();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let path = dir.join(format!("failover-{slug}.csv"));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let mut f = std::fs::File::create(&path)?;
        writeln!(f, "elected_ms,committed_ms,old_leader,new_leader,store_retries")?;
        for s in &outcome.samples {
            writeln!(
                f,
                "{:.3},{:.3},{},{},{}",
                s.elected.as_secs_f64() * 1e3,
                s.committed.as_secs_f64() * 1e3,
                s.old_leader + 1,
                s.new_leader + 1,
                s.store_retries
            )?;
        }
        Ok(())
    };
    match write() {
        Ok(()) => eprintln!("   samples: {}", path.display()),
        Err(e) => eprintln!("   cannot write {}: {e}", path.display()),
    }
}

fn report(outcomes: &[Outcome]) {
    println!();
    println!("| system | kills | elected median | p99 | max | mean | committed median | p99 | max | mean | failures |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut summaries = Vec::new();
    for o in outcomes {
        let elected = Summary::of(&o.samples.iter().map(|s| s.elected).collect::<Vec<_>>());
        let committed = Summary::of(&o.samples.iter().map(|s| s.committed).collect::<Vec<_>>());
        let cells = |s: Option<Summary>| match s {
            Some(s) => format!("{:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms", s.median, s.p99, s.max, s.mean),
            None => "– | – | – | –".into(),
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            o.label,
            o.samples.len(),
            cells(elected),
            cells(committed),
            o.failures.len()
        );
        summaries.push((o.label.clone(), elected, committed, o.wall));
    }
    let etcd = summaries.iter().find(|(l, ..)| l.starts_with("etcd"));
    let labctl = summaries.iter().find(|(l, ..)| l.starts_with("labctl 150"));
    if let (Some((_, Some(ee), Some(ec), _)), Some((_, Some(le), Some(lc), _))) = (etcd, labctl) {
        println!();
        println!("| labctl 150–300 ms / etcd | median | p99 | max |");
        println!("|---|---:|---:|---:|");
        println!("| elected | {:.2} | {:.2} | {:.2} |", le.median / ee.median, le.p99 / ee.p99, le.max / ee.max);
        println!("| committed | {:.2} | {:.2} | {:.2} |", lc.median / ec.median, lc.p99 / ec.p99, lc.max / ec.max);
        let meets = le.median <= ee.median && le.max <= ee.max;
        println!(
            "\ngoal (labctl elected median and max at or below etcd's): {}",
            if meets { "met" } else { "NOT met" }
        );
    }
    for (label, _, _, wall) in &summaries {
        eprintln!("{label}: {:.0} s", wall.as_secs_f64());
    }
    println!("\nload average at the end: {}", common::loadavg());
    for o in outcomes {
        for f in o.failures.iter().take(5) {
            println!("\nfailure ({}): {f}", o.label);
        }
    }
}
