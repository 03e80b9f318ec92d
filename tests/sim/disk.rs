//! A simulated disk under the node's real log code ([`Storage`](labctl::node::storage::Storage)).
//!
//! What a call that returned `Ok` wrote is on the disk and survives a crash. Of a write the
//! disk crashed in, or whose sync failed, each 512-byte sector reached the disk or not, at
//! random; a cut or an atomic replacement happened whole or not at all. A crash can be set to
//! strike inside the `n`th operation from now (so inside a write, or inside the cut and the
//! rewrite a node makes as it opens its log), and a bit of what is on the disk can be flipped,
//! as a failing disk does to data it wrote long ago.

// Each test crate that includes this module uses part of it.
#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use labctl::node::raft::Rng;
use labctl::node::storage::{LogDir, LogFile, StorageError};

/// The unit the disk writes whole or not at all.
pub const SECTOR: u64 = 512;

/// A disk holding one node's log; clones share it.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

struct State {
    /// The log file as it is on the disk, up to where only zeros follow...
    bytes: Vec<u8>,
    /// ...and its length.
    len: u64,
    rng: Rng,
    /// The chance that a write's or a cut's sync fails.
    sync_failure: f64,
    /// The next sync fails.
    fail_next: bool,
    /// The disk crashes inside the operation this many operations from now (0: the next).
    crash_in: Option<u64>,
    /// Raised by each crash and restart: files opened before it fail every operation.
    generation: u64,
    /// Down after a crash until [`SimDisk::restart`].
    down: bool,
    /// Writes that reached the disk in part, and syncs that failed.
    torn: u64,
    failed_syncs: u64,
}

impl SimDisk {
    pub fn new(name: &str, seed: u64) -> SimDisk {
        SimDisk {
            path: PathBuf::from(format!("sim/{name}/raft.log")),
            state: Arc::new(Mutex::new(State {
                bytes: Vec::new(),
                len: 0,
                rng: Rng::new(seed ^ 0xD15C_0000_5EC7_0125),
                sync_failure: 0.0,
                fail_next: false,
                crash_in: None,
                generation: 0,
                down: false,
                torn: 0,
                failed_syncs: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock is held fails the run anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Each sync fails with probability `p` from now on.
    pub fn fail_syncs(&self, p: f64) {
        self.lock().sync_failure = p;
    }

    /// The next sync fails.
    pub fn fail_next_sync(&self) {
        self.lock().fail_next = true;
    }

    /// The disk crashes inside the operation `n` operations from now.
    pub fn crash_in(&self, n: u64) {
        self.lock().crash_in = Some(n);
    }

    /// The disk crashes now, between operations: everything written so far was synced.
    pub fn crash(&self) {
        let mut s = self.lock();
        s.generation += 1;
        s.down = true;
        s.crash_in = None;
    }

    /// Whether a crash has struck (by [`SimDisk::crash_in`] or [`SimDisk::crash`]).
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// The disk works again after a crash; files opened before it stay dead.
    pub fn restart(&self) {
        let mut s = self.lock();
        s.generation += 1;
        s.down = false;
        s.crash_in = None;
    }

    /// What the disk holds, but for the zeros at its end.
    pub fn bytes(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    /// Flips bit `bit` of byte `offset`.
    pub fn flip(&self, offset: usize, bit: u8) {
        self.lock().bytes[offset] ^= 1 << bit;
    }

    /// Writes that reached the disk in part, and syncs that failed, so far.
    pub fn faults(&self) -> (u64, u64) {
        let s = self.lock();
        (s.torn, s.failed_syncs)
    }

    /// A file of the log, for the generation now running.
    fn file(&self) -> Box<dyn LogFile> {
        let generation = self.lock().generation;
        Box::new(SimFile { disk: self.clone(), generation })
    }
}

impl State {
    /// Whether this sync fails.
    fn sync_fails(&mut self) -> bool {
        let p = self.sync_failure;
        let fails = std::mem::take(&mut self.fail_next) || self.rng.chance(p);
        self.failed_syncs += u64::from(fails);
        fails
    }

    /// Counts an operation down towards a crash; true when this one crashes.
    fn crashes_now(&mut self) -> bool {
        match self.crash_in {
            Some(0) => {
                self.crash_in = None;
                self.generation += 1;
                self.down = true;
                true
            }
            Some(n) => {
                self.crash_in = Some(n - 1);
                false
            }
            None => false,
        }
    }

    /// Puts `new` at `offset` on the disk a sector at a time, each sector at random, and
    /// zeros up to `zeros_to` or not: what a write leaves when it does not finish.
    fn tear(&mut self, offset: u64, new: &[u8], zeros_to: u64) {
        self.torn += 1;
        let mut at = 0usize;
        while at < new.len() {
            let end = (((offset + at as u64) / SECTOR + 1) * SECTOR - offset) as usize;
            let end = end.min(new.len());
            if self.rng.chance(0.5) {
                self.put(offset + at as u64, &new[at..end], 0);
            }
            at = end;
        }
        if self.rng.chance(0.5) {
            self.len = self.len.max(zeros_to);
        }
    }

    /// Puts `new` at `offset`, and makes the file `len` bytes long if it was shorter.
    fn put(&mut self, offset: u64, new: &[u8], len: u64) {
        self.len = self.len.max(len).max(offset + new.len() as u64);
        // Zeros past the bytes kept are there already.
        let new = &new[..new.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)];
        let offset = offset as usize;
        if new.is_empty() {
            return;
        }
        if self.bytes.len() < offset + new.len() {
            self.bytes.resize(offset + new.len(), 0);
        }
        self.bytes[offset..offset + new.len()].copy_from_slice(new);
    }

    /// Cuts the file to `len` bytes.
    fn cut(&mut self, len: u64) {
        self.len = len;
        self.bytes.truncate(len as usize);
    }

    /// Makes the file hold `bytes`.
    fn replace(&mut self, bytes: &[u8]) {
        self.cut(0);
        self.put(0, bytes, 0);
    }
}

fn gone() -> io::Error {
    io::Error::other("the disk crashed")
}

fn sync_failed() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl LogDir for SimDisk {
    fn path(&self) -> &Path {
        &self.path
    }

    fn open(&mut self) -> Result<Box<dyn LogFile>, StorageError> {
        let mut s = self.lock();
        if s.down || s.crashes_now() {
            return Err(StorageError::Io { path: self.path.clone(), source: gone() });
        }
        drop(s);
        Ok(self.file())
    }

    fn replace(&mut self, bytes: &[u8]) -> Result<Box<dyn LogFile>, StorageError> {
        let mut s = self.lock();
        if s.down {
            return Err(StorageError::Io { path: self.path.clone(), source: gone() });
        }
        if s.crashes_now() {
            // The rename reached the disk, or it did not.
            if s.rng.chance(0.5) {
                s.replace(bytes);
            }
            return Err(StorageError::Io { path: self.path.clone(), source: gone() });
        }
        s.replace(bytes);
        drop(s);
        Ok(self.file())
    }
}

/// The open log file of one generation of the disk.
struct SimFile {
    disk: SimDisk,
    generation: u64,
}

impl SimFile {
    /// The disk's state, when this file still belongs to it.
    fn state(&self) -> io::Result<MutexGuard<'_, State>> {
        let s = self.disk.lock();
        if s.down || s.generation != self.generation {
            return Err(gone());
        }
        Ok(s)
    }
}

impl LogFile for SimFile {
    fn length(&self) -> io::Result<u64> {
        Ok(self.state()?.len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let s = self.state()?;
        let n = buf.len().min(s.len.saturating_sub(offset) as usize);
        let offset = offset as usize;
        let kept = s.bytes.len().saturating_sub(offset).min(n);
        if kept > 0 {
            buf[..kept].copy_from_slice(&s.bytes[offset..offset + kept]);
        }
        buf[kept..n].fill(0);
        Ok(n)
    }

    fn write_synced(&mut self, end: u64, records: &[u8], zeros_to: u64) -> io::Result<()> {
        let mut s = self.state()?;
        if s.crashes_now() {
            s.tear(end, records, zeros_to);
            return Err(gone());
        }
        if s.sync_fails() {
            s.tear(end, records, zeros_to);
            return Err(sync_failed());
        }
        s.put(end, records, zeros_to);
        Ok(())
    }

    fn cut(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.state()?;
        let crashed = s.crashes_now();
        let failed = !crashed && s.sync_fails();
        if (!crashed && !failed) || s.rng.chance(0.5) {
            s.cut(len);
        }
        match (crashed, failed) {
            (true, _) => Err(gone()),
            (_, true) => Err(sync_failed()),
            _ => Ok(()),
        }
    }
}
