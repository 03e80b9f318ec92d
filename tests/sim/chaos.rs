//! One seeded run under a random fault schedule.
//!
//! A run alternates *chaos* phases with *healed* phases. During chaos, faults come at random
//! times: disks whose writes take time and now and then stall (in half the runs; the core
//! goes on meanwhile and its messages wait for the writes, as on the real node), partitions (random splits, the leader cut off alone or with one follower, a
//! minority against a majority, one-way links), message loss, duplication and widely
//! varying delay (so datagrams are reordered and arrive long after they were sent), crashes
//! of random nodes and of the leader (also between sending new entries and persisting them),
//! restarts, and a controller's TIMEOUT and CONVERT_FOLLOWER; meanwhile a client proposes
//! entries, now and then in bursts of large ones and rarely one larger than a datagram (as an
//! uploaded file is), to whoever leads, and asks whoever believes it leads (a deposed leader
//! cut off included) for linearizable reads. Safety is checked after every step by the
//! cluster. When the network heals and every node is back, a leader followed by a majority
//! must appear, an entry proposed then must commit on every node, and a read on the leader
//! must be confirmed, each within ten election timeouts.

use labctl::node::apply::COMMAND_KEY;
use labctl::node::engine::Compaction;
use labctl::node::raft::{encoded_size, LogEntry, Micros, NodeId, Rng};
use labctl::proto::MAX_DATAGRAM;

use super::network::NetStats;
use super::{register_write_value, upload_value, Cluster, Disk, MS, SEC};

/// Batches smaller than this (in bytes) hold one of the client's register writes at most (169
/// bytes each on the wire): every entry travels in an AppendEntries of its own.
fn one_entry_batch() -> usize {
    let entry =
        LogEntry { term: 1, key: Some(COMMAND_KEY.into()), value: register_write_value(1, 1_000_000, 0).into() };
    2 * encoded_size(&entry)
}

/// Chaos phases per run, each followed by a healed phase.
const ROUNDS: usize = 2;

/// What one run did, for the summary of a batch of seeds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Report {
    pub nodes: u32,
    /// Every datagram signed and checked (secure mode).
    pub secure: bool,
    pub virtual_time: Micros,
    pub leaders: usize,
    pub committed: u64,
    pub reads: u64,
    pub net: NetStats,
    /// Writes that took time, and those that stalled.
    pub slow_writes: u64,
    pub stalled_writes: u64,
    /// The client's register operations checked for linearizability: writes, answered reads.
    pub register_writes: usize,
    pub register_reads: usize,
    /// Writes that reached the disk in part, and syncs that failed.
    pub torn_writes: u64,
    pub failed_syncs: u64,
    /// The nodes compacted their logs, and the snapshots followers installed.
    pub compacting: bool,
    pub snapshots: u64,
}

/// Runs seed `seed` to the end; panics, naming the seed, if Raft misbehaves.
pub fn run(seed: u64) -> Report {
    let mut rng = Rng::new(seed);
    let nodes = [3, 5, 7][rng.range(0, 3) as usize];
    // Mostly the product's configuration; sometimes without PreVote or CheckQuorum (safety
    // must not depend on them), and sometimes with small batches, so that catching a
    // follower up takes many AppendEntries without needing huge entries.
    let pre_vote = rng.chance(0.85);
    let check_quorum = rng.chance(0.85);
    let small_batches = rng.chance(0.3).then(|| rng.range(40, 4096) as usize);
    let mut c = Cluster::with_config(nodes, seed, |cfg| {
        cfg.pre_vote = pre_vote;
        cfg.check_quorum = check_quorum;
        if let Some(bytes) = small_batches {
            cfg.max_batch_bytes = bytes;
        }
    });
    // Drawn apart from the fault schedule, which stays what it was for each seed.
    let mut disk_rng = Rng::new(seed ^ 0xD15C_0F5E_ED00_0001);
    let mut disk = if disk_rng.chance(0.5) {
        let fast = disk_rng.range(0, 500);
        Disk {
            delay: Some((fast, fast + disk_rng.range(100, 5 * MS))),
            stall: ([0.0, 0.002, 0.02][disk_rng.range(0, 3) as usize], disk_rng.range(20 * MS, 400 * MS)),
            sync_failure: 0.0,
        }
    } else {
        Disk::default()
    };
    disk.sync_failure = [0.0, 0.0, 0.0005, 0.002][disk_rng.range(0, 4) as usize];
    // Drawn apart from the fault schedule too: half the runs sign every datagram.
    let secure = Rng::new(seed ^ 0x5EC0_4E00_0000_0001).chance(0.5);
    if secure {
        c.secure();
    }
    // And half the runs compact their logs every few dozen entries, so that followers that
    // were down or cut off need snapshots of a leader's database.
    let mut compaction_rng = Rng::new(seed ^ 0xC0_4AC7_0000_0001);
    let compacting = compaction_rng.chance(0.5);
    if compacting {
        c.compact(Compaction {
            every_entries: compaction_rng.range(5, 60),
            every_bytes: compaction_rng.range(64 * 1024, 4 * 1024 * 1024),
            keep_entries: compaction_rng.range(0, 20),
        });
    }
    let profile = if rng.chance(0.25) { Profile::LeaderCrashes } else { Profile::Mixed };
    let mut client = Client { proposed: 0 };
    // The registers, before any fault.
    let bound = 10 * c.election_max();
    if !c.create_registers(REGISTERS, bound) {
        c.fail(&format!("the {REGISTERS} registers were not created within {}ms", bound / MS));
    }
    for _ in 0..ROUNDS {
        let until = c.now() + rng.range(SEC, 6 * SEC);
        c.disk = disk;
        chaos(&mut c, &mut rng, &mut client, profile, until);
        // Writes still take time, but none stalls or fails while liveness is timed.
        c.disk.stall.0 = 0.0;
        c.disk.sync_failure = 0.0;
        heal_and_check_liveness(&mut c, &mut client, small_batches.is_some_and(|b| b < one_entry_batch()));
    }
    c.check_logs_match();
    c.check_databases_converge(10 * c.election_max());
    let (register_writes, register_reads) = c.check_linearizable();
    Report {
        secure,
        register_writes,
        register_reads,
        nodes,
        virtual_time: c.now(),
        leaders: c.leaders_elected(),
        committed: c.committed_len(),
        reads: c.reads_confirmed,
        net: c.net.stats,
        slow_writes: c.slow_writes,
        stalled_writes: c.stalled_writes,
        torn_writes: c.disk_faults().0,
        failed_syncs: c.disk_faults().1,
        compacting,
        snapshots: c.snapshots_installed,
    }
}

struct Client {
    proposed: u64,
}

impl Client {
    /// The next write: of one of the [`REGISTERS`] registers with `pad` bytes more, or, with
    /// a `pad` larger than a datagram, an uploaded file of products.
    fn next_value(&mut self, pad: usize) -> serde_json::Value {
        self.proposed += 1;
        if pad >= MAX_DATAGRAM {
            return upload_value(self.proposed, pad);
        }
        register_write_value(1 + (self.proposed % REGISTERS) as i64, self.proposed, pad)
    }
}

/// The registers the client writes and reads: products 1 to 3.
const REGISTERS: u64 = 3;

/// The kind of faults a run sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    /// Every kind of fault, every 10-500 ms.
    Mixed,
    /// As in MIT 6.824's Figure 8 test: leaders crash within milliseconds of taking
    /// proposals, and crashed nodes restart so that about a majority stays up. This is
    /// where a leader that counted replicas of an earlier term's entry to commit it
    /// (Figure 8 of the paper) would lose a committed entry.
    LeaderCrashes,
}

fn chaos(c: &mut Cluster, rng: &mut Rng, client: &mut Client, profile: Profile, until: Micros) {
    c.crash_before_persist = match profile {
        Profile::Mixed => 0.005,
        Profile::LeaderCrashes => 0.05,
    };
    let mut next_fault = c.now() + rng.range(0, 300 * MS);
    let mut next_proposal = c.now() + rng.range(0, 100 * MS);
    loop {
        let t = next_fault.min(next_proposal).min(until);
        c.run_until(t);
        if t == until {
            return;
        }
        if t == next_fault {
            next_fault = match profile {
                Profile::Mixed => {
                    fault(c, rng);
                    t + rng.range(10 * MS, 500 * MS)
                }
                Profile::LeaderCrashes => {
                    crash_or_restart(c, rng);
                    t + rng.range(MS, 60 * MS)
                }
            };
        }
        if t == next_proposal {
            propose(c, rng, client);
            next_proposal = t + match profile {
                Profile::Mixed => rng.range(MS, 100 * MS),
                Profile::LeaderCrashes => rng.range(MS, 20 * MS),
            };
        }
    }
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> Option<T> {
    (!items.is_empty()).then(|| items[rng.range(0, items.len() as u64) as usize])
}

fn shuffle<T>(rng: &mut Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = rng.range(0, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

fn fault(c: &mut Cluster, rng: &mut Rng) {
    let ids = c.ids();
    let up: Vec<NodeId> = ids.iter().copied().filter(|&id| c.is_up(id)).collect();
    let down: Vec<NodeId> = ids.iter().copied().filter(|&id| !c.is_up(id)).collect();
    let leaders = c.leaders();
    match rng.range(0, 100) {
        // A random split into two sides.
        0..=14 => {
            let (a, b): (Vec<NodeId>, Vec<NodeId>) = ids.iter().partition(|_| rng.chance(0.5));
            c.net.partition(&[&a, &b]);
        }
        // The leader cut off, alone or with one follower.
        15..=24 => {
            if let Some(leader) = pick(rng, &leaders) {
                let others: Vec<NodeId> = ids.iter().copied().filter(|&id| id != leader).collect();
                if rng.chance(0.5) {
                    c.net.isolate(leader);
                } else {
                    let mut others = others;
                    shuffle(rng, &mut others);
                    let with = others.pop().expect("another node");
                    c.net.partition(&[&[leader, with], &others]);
                }
            }
        }
        // A minority against a majority.
        25..=34 => {
            let mut all = ids.clone();
            shuffle(rng, &mut all);
            let (minority, majority) = all.split_at(ids.len() / 2);
            c.net.partition(&[minority, majority]);
        }
        35..=49 => c.net.heal(),
        // A one-way link failure.
        50..=54 => {
            let from = pick(rng, &ids).expect("nodes");
            let to = pick(rng, &ids).expect("nodes");
            if from != to {
                c.net.block(from, to);
            }
        }
        55..=61 => c.net.loss = pick(rng, &[0.0, 0.01, 0.05, 0.2, 0.5]).expect("choices"),
        62..=67 => {
            c.net.delay = pick(rng, &[(MS, 5 * MS), (MS, 20 * MS), (0, 80 * MS), (0, 300 * MS)]).expect("choices");
            c.net.duplicate = pick(rng, &[0.0, 0.05, 0.3]).expect("choices");
        }
        68..=75 => {
            if let Some(id) = pick(rng, &up) {
                c.crash(id);
            }
        }
        76..=80 => {
            if let Some(id) = pick(rng, &leaders) {
                c.crash(id);
            }
        }
        81..=89 => {
            if let Some(id) = pick(rng, &down) {
                c.restart(id);
            }
        }
        90..=94 => {
            if let Some(id) = pick(rng, &up) {
                c.timeout_now(id);
            }
        }
        // A node (the leader, mostly) whose state machine cannot apply, or can again.
        95..=96 => {
            let target = if rng.chance(0.7) { pick(rng, &leaders) } else { pick(rng, &up) };
            if let Some(id) = target {
                let eligible = !c.node(id).is_eligible();
                c.set_eligible(id, eligible);
            }
        }
        _ => {
            let target = if rng.chance(0.7) { pick(rng, &leaders) } else { pick(rng, &up) };
            if let Some(id) = target {
                c.convert_follower(id);
            }
        }
    }
}

fn crash_or_restart(c: &mut Cluster, rng: &mut Rng) {
    let ids = c.ids();
    let down: Vec<NodeId> = ids.iter().copied().filter(|&id| !c.is_up(id)).collect();
    let up = ids.len() - down.len();
    if up <= c.quorum() && !down.is_empty() && rng.chance(0.7) {
        let id = pick(rng, &down).expect("a down node");
        c.restart(id);
    } else if let Some(leader) = pick(rng, &c.leaders()) {
        if rng.chance(0.5) {
            c.crash(leader);
        }
    } else if rng.chance(0.1) {
        fault(c, rng);
    }
}

fn propose(c: &mut Cluster, rng: &mut Rng, client: &mut Client) {
    let up: Vec<NodeId> = c.ids().into_iter().filter(|&id| c.is_up(id)).collect();
    let leaders = c.leaders();
    // Linearizable reads, on whoever believes it leads (a deposed leader cut off included).
    if rng.chance(0.3) {
        for _ in 0..rng.range(1, 4) {
            if let Some(id) = pick(rng, &leaders) {
                c.read_register(id, Some(1 + rng.range(0, REGISTERS) as i64));
            }
        }
    }
    let target = if rng.chance(0.9) { pick(rng, &leaders).or_else(|| pick(rng, &up)) } else { pick(rng, &up) };
    let Some(target) = target else { return };
    let burst = if rng.chance(0.03) { rng.range(10, 120) } else { 1 };
    for _ in 0..burst {
        let pad = if rng.chance(0.005) {
            // An uploaded file: larger than a datagram, sent alone and in fragments.
            rng.range(MAX_DATAGRAM as u64, 10 * MAX_DATAGRAM as u64) as usize
        } else if rng.chance(0.1) {
            rng.range(0, 600) as usize
        } else {
            0
        };
        let value = client.next_value(pad);
        if c.propose(target, value).is_err() {
            return;
        }
    }
}

/// Heals the network, restarts every node, and checks that the cluster recovers.
///
/// Each step must happen within ten election timeouts, or thirty where `one_entry_batches`:
/// with every entry in an AppendEntries of its own, a follower far behind is caught up about
/// one entry per round trip when nearly every datagram overtakes or is overtaken (after a
/// refusal the leader probes one append at a time, then pipelines again until the next
/// overtaking). Some such runs need more than ten (3 of 20,000 seeds, all in secure mode, where
/// the guard drops the duplicates that otherwise fill gaps now and then).
fn heal_and_check_liveness(c: &mut Cluster, client: &mut Client, one_entry_batches: bool) {
    c.crash_before_persist = 0.0;
    c.net.heal();
    c.net.loss = 0.0;
    c.net.delay = (MS, 10 * MS);
    for id in c.ids() {
        if c.is_up(id) && !c.node(id).is_eligible() {
            c.set_eligible(id, true);
        }
        c.restart(id);
    }
    let bound = if one_entry_batches { 30 } else { 10 } * c.election_max();
    if !c.run_until_cond(bound, |c| c.stable_leader().is_some()) {
        c.fail(&format!("liveness: no leader followed by a majority within {}ms after the network healed", bound / MS));
    }
    let value = client.next_value(0);
    if !c.commit_values(std::slice::from_ref(&value), bound) {
        c.fail(&format!("liveness: entry {value} did not commit on every node within {}ms", bound / MS));
    }
    let confirmed = c.reads_confirmed;
    let leader = c.stable_leader().expect("a leader");
    if !c.read(leader) || !c.run_until_cond(bound, |c| c.reads_confirmed > confirmed) {
        c.fail(&format!("liveness: a read on the leader was not confirmed within {}ms", bound / MS));
    }
}
