//! The node's real log code (`Storage`) on a simulated disk, over many seeds: writes of hard
//! states and entries as a node makes them, with crashes inside any operation (a write, the
//! cut and the rewrite a node makes as it opens its log), syncs that fail, and bits flipped in
//! what was synced long ago. After every crash the log must hold exactly what every write that
//! returned wrote, with or without the one write that did not return; after a flipped bit, the
//! node must refuse to start and name the damaged record, or (a flip the checksum does not see,
//! such as the case of a hex digit) recover what was written.
//!
//! `LABCTL_DISK_SEEDS=N` runs more seeds, `LABCTL_DISK_SEED=N` replays one.

#[path = "sim/disk.rs"]
mod disk;

use disk::SimDisk;
use labctl::node::raft::{HardState, LogEntry, Rng};
use labctl::node::storage::{Recovered, Storage, StorageError};

const DEFAULT_SEEDS: u64 = 200;
const STEPS: u64 = 300;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// What the log holds after a write of `hard` and entries from `from` on.
fn after(state: &Recovered, hard: Option<HardState>, entries: Option<(u64, &[LogEntry])>) -> Recovered {
    let mut next = state.clone();
    if let Some(hard) = hard {
        next.hard_state = hard;
    }
    if let Some((from, entries)) = entries {
        next.entries.truncate(from as usize - 1);
        next.entries.extend_from_slice(entries);
    }
    next
}

/// Where each record of the log starts, and where the records end.
fn record_starts(bytes: &[u8]) -> (Vec<usize>, usize) {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let mut starts = vec![0];
    starts.extend(bytes[..end].iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i + 1));
    starts.pop();
    (starts, end)
}

#[derive(Default)]
struct Report {
    writes: u64,
    crashes: u64,
    flips_caught: u64,
    flips_unseen: u64,
    rewrites: u64,
    torn: u64,
    failed_syncs: u64,
}

/// One seeded run; panics with what went wrong.
fn run(seed: u64) -> Report {
    let mut rng = Rng::new(seed);
    let disk = SimDisk::new("node1", seed);
    if rng.chance(0.5) {
        disk.fail_syncs(0.02);
    }
    let mut report = Report::default();
    // What every write that returned wrote, and what the write that did not return would add.
    let mut synced = Recovered::default();
    let mut maybe: Option<Recovered> = None;
    let mut storage: Option<Storage> = None;
    let mut term = 1;
    let mut value = 0u64;
    for step in 0..STEPS {
        let Some(s) = storage.as_mut() else {
            // Start: open the log, maybe with a crash inside the opening.
            if rng.chance(0.3) {
                disk.crash_in(rng.range(0, 4));
            }
            let before = disk.bytes().len();
            match Storage::open_in(Box::new(disk.clone())) {
                Ok((s, recovered)) => {
                    let expected = recovered == synced || maybe.as_ref() == Some(&recovered);
                    assert!(
                        expected,
                        "seed {seed} step {step}: recovered {} entries (term {}), expected {} or {:?}",
                        recovered.entries.len(),
                        recovered.hard_state.term,
                        synced.entries.len(),
                        maybe.as_ref().map(|m| m.entries.len())
                    );
                    if disk.bytes().len() < before / 2 {
                        report.rewrites += 1;
                    }
                    synced = recovered;
                    maybe = None;
                    storage = Some(s);
                }
                Err(e) => {
                    let failed_sync =
                        matches!(&e, StorageError::Io { source, .. } if source.raw_os_error() == Some(libc::EIO));
                    assert!(
                        disk.is_down() || failed_sync,
                        "seed {seed} step {step}: opening failed without a crash or a failed sync: {e:?}"
                    );
                    // The disk crashed, or failed, while the node opened its log: start again.
                    disk.crash();
                    disk.restart();
                    report.crashes += 1;
                }
            }
            continue;
        };
        match rng.range(0, 100) {
            // A crash between writes, or inside the next operation.
            0..=3 => {
                if rng.chance(0.5) {
                    disk.crash();
                } else {
                    disk.crash_in(0);
                    let _ = s.persist(Some(HardState { term: term + 1, voted_for: None }), None);
                    maybe = Some(after(&synced, Some(HardState { term: term + 1, voted_for: None }), None));
                    term += 1;
                }
                storage = None;
                disk.restart();
                report.crashes += 1;
            }
            // A bit flipped in what was synced, seen as the node starts.
            4..=5 => {
                storage = None;
                disk.crash();
                disk.restart();
                let (starts, end) = record_starts(&disk.bytes());
                if end == 0 {
                    continue;
                }
                let offset = rng.range(0, end as u64) as usize;
                let bit = rng.range(0, 8) as u8;
                disk.flip(offset, bit);
                let flipped = disk.bytes();
                let damaged = *starts.iter().rev().find(|&&start| start <= offset).expect("a record");
                match Storage::open_in(Box::new(disk.clone())) {
                    Err(StorageError::Corrupt { offset: named, .. }) => {
                        assert_eq!(
                            named as usize, damaged,
                            "seed {seed} step {step}: bit {bit} of byte {offset} flipped, in the record at {damaged}"
                        );
                        report.flips_caught += 1;
                    }
                    Ok((_, recovered)) => {
                        assert!(
                            recovered == synced,
                            "seed {seed} step {step}: bit {bit} of byte {offset} (record at {damaged}) flipped; \
                             the log opened with {} entries (term {}) of {} (term {})",
                            recovered.entries.len(),
                            recovered.hard_state.term,
                            synced.entries.len(),
                            synced.hard_state.term
                        );
                        report.flips_unseen += 1;
                    }
                    Err(e) => panic!("seed {seed} step {step}: {e}"),
                }
                // The operator puts the disk's own bytes back.
                disk.crash();
                disk.restart();
                if disk.bytes() == flipped {
                    disk.flip(offset, bit);
                }
            }
            // A write as a node makes it: a vote, new entries, a follower's overwritten suffix.
            _ => {
                let hard = rng.chance(0.3).then(|| {
                    term += rng.range(0, 2);
                    HardState { term, voted_for: Some(rng.range(1, 6) as u32) }
                });
                let len = synced.entries.len() as u64;
                let from = if rng.chance(0.2) { rng.range(1, len + 2) } else { len + 1 };
                let entries: Vec<LogEntry> = (0..rng.range(1, 4))
                    .map(|_| {
                        value += 1;
                        let size = if rng.chance(0.1) { rng.range(500, 5000) } else { rng.range(1, 100) };
                        let text = format!("{value}:{}", "v".repeat(size as usize));
                        LogEntry { term, key: Some(format!("k{value}")), value: serde_json::json!(text).into() }
                    })
                    .collect();
                let entries = (hard.is_none() || rng.chance(0.5)).then_some((from, &entries[..]));
                let next = after(&synced, hard, entries);
                match s.persist(hard, entries) {
                    Ok(()) => {
                        synced = next;
                        report.writes += 1;
                    }
                    Err(_) => {
                        // The node stops on a failed write; what it wrote may be on the disk.
                        maybe = Some(next);
                        storage = None;
                        disk.crash();
                        disk.restart();
                    }
                }
            }
        }
    }
    let (torn, failed_syncs) = disk.faults();
    report.torn = torn;
    report.failed_syncs = failed_syncs;
    report
}

#[test]
fn the_log_keeps_what_was_synced_through_crashes_torn_writes_failed_syncs_and_flipped_bits() {
    let seeds: Vec<u64> = match env_u64("LABCTL_DISK_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("LABCTL_DISK_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let started = std::time::Instant::now();
    let mut total = Report::default();
    for seed in seeds.iter().copied() {
        let r = run(seed);
        total.writes += r.writes;
        total.crashes += r.crashes;
        total.flips_caught += r.flips_caught;
        total.flips_unseen += r.flips_unseen;
        total.rewrites += r.rewrites;
        total.torn += r.torn;
        total.failed_syncs += r.failed_syncs;
    }
    eprintln!(
        "{} seeds in {:.1?}: {} writes, {} crashes, {} writes torn, {} failed syncs, {} rewrites on open, \
         {} flipped bits caught, {} harmless",
        seeds.len(),
        started.elapsed(),
        total.writes,
        total.crashes,
        total.torn,
        total.failed_syncs,
        total.rewrites,
        total.flips_caught,
        total.flips_unseen
    );
    if seeds.len() >= 100 {
        assert!(total.torn > 0 && total.failed_syncs > 0 && total.flips_caught > 0, "every fault happened");
    }
}
