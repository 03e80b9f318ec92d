//! The durable Raft state of one node: term, vote and log, in one append-only file.
//!
//! Each line of `<node dir>/raft.log` is one record: the CRC-32C of its JSON text in 8 hex
//! digits, a space, and the JSON text, which holds either or both of
//! - `"hs":{"term":7,"voted_for":3}`: the hard state from here on;
//! - `"from":12,"entries":[…]`: the log from index 12 on is replaced by these entries;
//!
//! and, in the first record only, `"base":{"index":11,"term":2,"retained":[…]}`: the log was
//! compacted, and starts after entry 11 of term 2 (see [`Base`]). A compaction rewrites the
//! file as one record: base, hard state and every entry after the base.
//!
//! A write adds one record after the last one and calls `fdatasync` before the node sends
//! anything that depends on it. After a crash, an unfinished last write is cut off: it was never
//! synced, so nothing was promised on it. A record that fails its checksum (or has no newline,
//! a NUL byte, or is not a record) is such a write only when it is the last and bears the
//! marks a crash leaves (see [`unfinished_write`]): some of its 512-byte sectors missing
//! (zeros), the rest whole. Anything else is damage to state that was synced — a good record
//! after the bad one, a whole record with a changed byte — and the node does not start: it
//! names the byte where the damage is. On open the file is rewritten compactly when it has
//! grown to several times its content.
//!
//! The file is reached through [`LogDir`] and [`LogFile`]: the node's file system
//! ([`FsLogDir`]), or in tests a simulated disk that crashes inside writes, tears them sector by
//! sector, fails syncs and flips bits, under this same code.
//!
//! Files written before records carried checksums hold bare JSON lines: they are read as they
//! were then (a NUL byte ends the records, a line that does not parse is cut off when only zeros
//! follow it) and rewritten with checksums at once.
//!
//! The file is kept zero-filled ahead of the records, [`PREALLOCATE`] bytes at a time. A write
//! into blocks that already exist leaves the file's size alone, so `fdatasync` writes the data
//! and nothing else, where an append must also write the inode with its new size and wait for
//! that second write: on a follower, that wait was a large part of every acknowledgement. The
//! records end where the zeros start: no record holds a NUL byte (JSON writes control characters
//! escaped, and the checksum is written in hex).
//!
//! Where the file system allows it, records reach the disk through a second descriptor opened
//! with `O_DIRECT | O_DSYNC`: each write covers whole 4 KiB blocks (the records already in the
//! last block, the new ones, zeros up to the block's end) and returns once the disk has them,
//! without the page cache's bookkeeping and in one system call instead of `pwrite` and
//! `fdatasync`. The bytes on disk are the same either way. A file system that refuses such
//! writes gets the page cache and `fdatasync` (logged).
//!
//! The file is locked (`flock`) while a node runs, so two processes cannot share a data dir.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::raft::{HardState, LogEntry, NodeId};

/// Errors of the durable log.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot use {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is used by another running node")]
    Locked { path: PathBuf },
    #[error(
        "{path}: damaged record at byte {offset} (line {line}): {reason}. Records the node synced follow it, so \
         this is not an unfinished last write: the node has lost state it may have promised to the other \
         members, and does not start. Keep it stopped (the cluster goes on while a majority of members \
         runs) and see the README, \"When a node's disk fails\""
    )]
    Corrupt { path: PathBuf, offset: u64, line: usize, reason: String },
    #[error("the thread writing the Raft log stopped")]
    WriterStopped,
}

#[derive(Serialize, Deserialize)]
struct HardStateRecord {
    term: u64,
    voted_for: Option<NodeId>,
}

/// Where the log starts after a compaction: the last entry compacted away (the log's base, see
/// [`super::raft::Log::base`]), and the newest of the entries up to it that a controller's
/// RETRIEVE still shows (the node keeps them, since RETRIEVE shows what fits one datagram).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Base {
    pub index: u64,
    pub term: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retained: Vec<LogEntry>,
}

/// One record as written: the hard state, new entries, or both (one write, one record, so that
/// a write torn by a crash damages that record alone); a rewrite's record has the base too.
#[derive(Serialize)]
struct RecordOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<&'a Base>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hs: Option<HardStateRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<&'a [LogEntry]>,
}

/// A record as read.
#[derive(Deserialize)]
struct RecordLine {
    base: Option<Base>,
    hs: Option<HardStateRecord>,
    from: Option<u64>,
    entries: Option<Vec<LogEntry>>,
}

/// What one record changes.
struct Record {
    base: Option<Base>,
    hs: Option<HardStateRecord>,
    entries: Option<(u64, Vec<LogEntry>)>,
}

impl TryFrom<RecordLine> for Record {
    type Error = &'static str;

    fn try_from(line: RecordLine) -> Result<Record, &'static str> {
        let entries = match (line.from, line.entries) {
            (Some(from), Some(entries)) => Some((from, entries)),
            (None, None) => None,
            _ => return Err("`from` and `entries` must come together"),
        };
        if line.hs.is_none() && entries.is_none() && line.base.is_none() {
            return Err("neither a hard state nor entries");
        }
        Ok(Record { base: line.base, hs: line.hs, entries })
    }
}

/// What a node recovers on start.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovered {
    pub hard_state: HardState,
    /// Where the log starts (index 0 when it was never compacted).
    pub base: Base,
    /// The entries after the base.
    pub entries: Vec<LogEntry>,
}

impl Recovered {
    /// The index of the last entry.
    pub fn last_index(&self) -> u64 {
        self.base.index + self.entries.len() as u64
    }
}

/// Where a node's log lives: a directory of its file system ([`FsLogDir`]), or a simulated
/// disk that a test crashes, tears and damages at will.
pub trait LogDir: Send {
    /// The log file's path, as messages name it.
    fn path(&self) -> &Path;
    /// Opens the log file, made empty if there is none, for this process alone.
    fn open(&mut self) -> Result<Box<dyn LogFile>, StorageError>;
    /// Replaces the log file by one holding `bytes`, atomically: after a crash the disk holds
    /// the old file or the new one, each whole. Returns the new file, open.
    fn replace(&mut self, bytes: &[u8]) -> Result<Box<dyn LogFile>, StorageError>;
}

/// The open log file. A crash keeps what a call that returned `Ok` wrote; of a write that did
/// not return, any part may be on the disk, in whole sectors, or none.
pub trait LogFile: Send {
    /// The file's length.
    fn length(&self) -> std::io::Result<u64>;
    /// Reads from `offset` into `buf`; how many bytes it read (0 at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
    /// Writes `records` at `end` and zeros after them up to `zeros_to` where that is further;
    /// returns once the disk holds it all.
    fn write_synced(&mut self, end: u64, records: &[u8], zeros_to: u64) -> std::io::Result<()>;
    /// Cuts the file to `len` bytes; returns once the disk holds that.
    fn cut(&mut self, len: u64) -> std::io::Result<()>;
    /// Whether writes bypass the page cache.
    fn direct(&self) -> bool {
        false
    }
}

/// The log in a directory of the node's file system.
pub struct FsLogDir {
    dir: PathBuf,
    path: PathBuf,
    /// Whether to try writes that bypass the page cache.
    direct: bool,
}

impl FsLogDir {
    pub fn new(dir: &Path) -> FsLogDir {
        FsLogDir { dir: dir.to_path_buf(), path: dir.join(FILE_NAME), direct: true }
    }
}

/// Takes the lock that keeps a second process off the log, on a valid open descriptor.
fn lock(file: &File, path: &Path) -> Result<(), StorageError> {
    // SAFETY: flock on a valid open descriptor; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(StorageError::Locked { path: path.to_path_buf() });
    }
    Ok(())
}

impl LogDir for FsLogDir {
    fn path(&self) -> &Path {
        &self.path
    }

    fn open(&mut self) -> Result<Box<dyn LogFile>, StorageError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| StorageError::Io { path: self.dir.clone(), source })?;
        let io = |source| StorageError::Io { path: self.path.clone(), source };
        let file =
            OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&self.path).map_err(io)?;
        lock(&file, &self.path)?;
        Ok(Box::new(FsLogFile::new(&self.path, file, self.direct)))
    }

    fn replace(&mut self, bytes: &[u8]) -> Result<Box<dyn LogFile>, StorageError> {
        let tmp = self.path.with_extension("log.tmp");
        let io_tmp = |source| StorageError::Io { path: tmp.clone(), source };
        // Read as well as written: the renamed file is the log from then on.
        let mut f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&tmp).map_err(io_tmp)?;
        f.write_all(bytes).map_err(io_tmp)?;
        f.sync_all().map_err(io_tmp)?;
        lock(&f, &tmp)?;
        std::fs::rename(&tmp, &self.path).map_err(|source| StorageError::Io { path: self.path.clone(), source })?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(Box::new(FsLogFile::new(&self.path, f, self.direct)))
    }
}

/// The log file on the node's file system.
struct FsLogFile {
    path: PathBuf,
    file: File,
    writes: DirectWrites,
}

/// Whether records go through the page cache or around it.
enum DirectWrites {
    /// Not tried yet: the first write opens the descriptor (it needs to know where records end).
    Untried,
    On(Direct),
    Off,
}

impl FsLogFile {
    fn new(path: &Path, file: File, direct: bool) -> FsLogFile {
        let writes = if direct { DirectWrites::Untried } else { DirectWrites::Off };
        FsLogFile { path: path.to_path_buf(), file, writes }
    }
}

impl LogFile for FsLogFile {
    fn length(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(&self.file, buf, offset)
    }

    fn write_synced(&mut self, end: u64, records: &[u8], zeros_to: u64) -> std::io::Result<()> {
        if matches!(self.writes, DirectWrites::Untried) {
            self.writes = Direct::open(&self.path, &self.file, end).map_or(DirectWrites::Off, DirectWrites::On);
        }
        if let DirectWrites::On(direct) = &mut self.writes {
            match direct.write(end, records, zeros_to) {
                Ok(()) => return Ok(()),
                // Refused before anything was written (an alignment the device does not take).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    log::warn!("{}: direct writes refused ({e}); writing through the page cache", self.path.display());
                    self.writes = DirectWrites::Off;
                }
                Err(e) => return Err(e),
            }
        }
        let new_end = end + records.len() as u64;
        if zeros_to > new_end {
            self.file.write_all_at(&vec![0u8; (zeros_to - new_end) as usize], new_end)?;
        }
        self.file.write_all_at(records, end)?;
        self.file.sync_data()
    }

    fn cut(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_data()
    }

    fn direct(&self) -> bool {
        matches!(self.writes, DirectWrites::On(_))
    }
}

/// The open durable log.
pub struct Storage {
    dir: Box<dyn LogDir>,
    file: Box<dyn LogFile>,
    /// Where the next record goes: the end of the records.
    end: u64,
    /// The file's length, at least: zeros from `end` to here.
    allocated: u64,
    /// The hard state on disk.
    hard: HardState,
}

/// The unit of a direct write: offsets, lengths and memory are aligned to it.
const BLOCK: usize = 4096;

/// One block of memory aligned as direct writes need.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; BLOCK]);

/// The descriptor for direct writes, and what the next one must write again.
struct Direct {
    file: File,
    /// The records in the block where `end` falls, before `end`: written again, unchanged,
    /// with the next records.
    tail: Vec<u8>,
    /// The aligned memory a write is put together in, kept between writes.
    blocks: Vec<Block>,
}

/// Direct write memory kept between writes at most (256 KiB); a larger write's is given back.
const KEEP_BLOCKS: usize = 64;

impl Direct {
    /// Opens `path` for direct, synchronous writes after the records that end at `end`;
    /// None where the file system does not support them.
    fn open(path: &Path, file: &File, end: u64) -> Option<Direct> {
        let opened = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT | libc::O_DSYNC).open(path);
        let direct = match opened {
            Ok(f) => f,
            Err(e) => {
                log::info!("{}: writing through the page cache and fdatasync ({e})", path.display());
                return None;
            }
        };
        let start = end - end % BLOCK as u64;
        let mut tail = vec![0u8; (end - start) as usize];
        if let Err(e) = file.read_exact_at(&mut tail, start) {
            log::info!("{}: writing through the page cache and fdatasync ({e})", path.display());
            return None;
        }
        Some(Direct { file: direct, tail, blocks: Vec::new() })
    }

    /// Writes `records` at `end` and zeros after them, to the end of their last block or to
    /// `zeros_to` if that is further; returns once the disk has it all.
    fn write(&mut self, end: u64, records: &[u8], zeros_to: u64) -> std::io::Result<()> {
        let start = end - self.tail.len() as u64;
        debug_assert_eq!(start % BLOCK as u64, 0);
        let new_end = end + records.len() as u64;
        let len = (round_up(zeros_to.max(new_end)) - start) as usize;
        self.blocks.clear();
        self.blocks.resize(len / BLOCK, Block([0; BLOCK]));
        // SAFETY: `blocks` is `len` bytes of initialized memory, borrowed only here.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), len) };
        bytes[..self.tail.len()].copy_from_slice(&self.tail);
        bytes[self.tail.len()..self.tail.len() + records.len()].copy_from_slice(records);
        self.file.write_all_at(bytes, start)?;
        let last_block = new_end - new_end % BLOCK as u64;
        self.tail.clear();
        self.tail.extend_from_slice(&bytes[(last_block - start) as usize..(new_end - start) as usize]);
        if self.blocks.len() > KEEP_BLOCKS {
            self.blocks = Vec::new();
        }
        Ok(())
    }
}

/// `n` rounded up to a whole number of blocks.
fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64) * BLOCK as u64
}

const FILE_NAME: &str = "raft.log";
/// The file is zero-filled this far ahead of the records, and extended by this much.
pub const PREALLOCATE: u64 = 1024 * 1024;

impl Storage {
    /// Opens (creating if needed) the durable state in `dir`, recovering what it holds.
    pub fn open(dir: &Path) -> Result<(Storage, Recovered), StorageError> {
        Storage::open_in(Box::new(FsLogDir::new(dir)))
    }

    /// Opens the log in `dir` (of the file system, or simulated), recovering what it holds.
    pub fn open_in(mut dir: Box<dyn LogDir>) -> Result<(Storage, Recovered), StorageError> {
        let mut file = dir.open()?;
        let path = dir.path().to_path_buf();
        let io = |source| StorageError::Io { path: path.clone(), source };
        let Replay { state: recovered, good: good_len, total: total_len, clean_end, legacy } =
            read_records(&path, &*file)?;
        let mut allocated = total_len;
        if !clean_end {
            log::warn!("{}: cutting off an unfinished last write after byte {good_len}", path.display());
            file.cut(good_len).map_err(io)?;
            allocated = good_len;
        }
        let mut storage = Storage { dir, file, end: good_len, allocated, hard: recovered.hard_state };
        let content = compact_size(&recovered);
        if legacy {
            log::info!("{}: adding checksums to the records", path.display());
            storage.rewrite(&recovered)?;
        } else if good_len > 4 * content + 64 * 1024 {
            storage.rewrite(&recovered)?;
        }
        Ok((storage, recovered))
    }

    /// Appends the changes of one Ready and syncs them to disk.
    pub fn persist(
        &mut self,
        hard_state: Option<HardState>,
        entries: Option<(u64, &[LogEntry])>,
    ) -> Result<(), StorageError> {
        if hard_state.is_none() && entries.is_none() {
            return Ok(());
        }
        let buf = record(hard_state, entries);
        if let Some(hs) = hard_state {
            self.hard = hs;
        }
        let end = self.end + buf.len() as u64;
        // Past what is zero-filled, PREALLOCATE more zeros go with the records.
        let zeros_to = if end > self.allocated { end + PREALLOCATE } else { end };
        self.file
            .write_synced(self.end, &buf, zeros_to)
            .map_err(|source| StorageError::Io { path: self.dir.path().to_path_buf(), source })?;
        self.end = end;
        self.allocated = self.allocated.max(zeros_to);
        Ok(())
    }

    /// Does one write of the log writer: a rewrite when it brings a base (its entries are then
    /// all those after the base), else an append.
    pub fn store(
        &mut self,
        hard_state: Option<HardState>,
        base: Option<&Base>,
        entries: Option<(u64, &[LogEntry])>,
    ) -> Result<(), StorageError> {
        match base {
            Some(base) => {
                let entries = entries.map_or(&[][..], |(from, entries)| {
                    debug_assert_eq!(from, base.index + 1);
                    entries
                });
                self.rewrite_all(hard_state.unwrap_or(self.hard), base, entries)
            }
            None => self.persist(hard_state, entries),
        }
    }

    /// Whether records reach the disk around the page cache.
    #[cfg(test)]
    fn writes_directly(&self) -> bool {
        self.file.direct()
    }

    /// Replaces the file by one holding just this state, atomically: after a compaction, or
    /// when a snapshot replaced the log. `entries` follow the base.
    pub fn rewrite_all(
        &mut self,
        hard_state: HardState,
        base: &Base,
        entries: &[LogEntry],
    ) -> Result<(), StorageError> {
        self.hard = hard_state;
        let from = base.index + 1;
        let entries = (!entries.is_empty()).then_some((from, entries));
        let base = (base.index > 0 || !base.retained.is_empty()).then_some(base);
        let buf = record_with_base(base, Some(hard_state), entries);
        self.file = self.dir.replace(&buf)?;
        self.end = buf.len() as u64;
        self.allocated = self.end;
        Ok(())
    }

    /// Replaces the file by one holding just `state`, atomically.
    fn rewrite(&mut self, state: &Recovered) -> Result<(), StorageError> {
        let from = state.base.index + 1;
        let entries = (!state.entries.is_empty()).then_some((from, &state.entries[..]));
        let base = (state.base.index > 0 || !state.base.retained.is_empty()).then_some(&state.base);
        let buf = record_with_base(base, Some(state.hard_state), entries);
        self.file = self.dir.replace(&buf)?;
        self.end = buf.len() as u64;
        self.allocated = self.end;
        log::info!("{}: compacted to {} bytes", self.dir.path().display(), buf.len());
        Ok(())
    }
}

/// One record, as written: the checksum, a space, the JSON, a newline.
fn record(hard_state: Option<HardState>, entries: Option<(u64, &[LogEntry])>) -> Vec<u8> {
    record_with_base(None, hard_state, entries)
}

/// A record that may start the file with a base.
fn record_with_base(
    base: Option<&Base>,
    hard_state: Option<HardState>,
    entries: Option<(u64, &[LogEntry])>,
) -> Vec<u8> {
    let record = RecordOut {
        base,
        hs: hard_state.map(|hs| HardStateRecord { term: hs.term, voted_for: hs.voted_for }),
        from: entries.map(|(from, _)| from),
        entries: entries.map(|(_, entries)| entries),
    };
    // The JSON goes straight after room for its checksum, which is filled in once it is known.
    let mut buf = b"00000000 ".to_vec();
    // Records are plain data with string keys: serialization cannot fail.
    serde_json::to_writer(&mut buf, &record).expect("serialize record");
    let sum = crc32c(&buf[9..]);
    for (i, digit) in buf[..8].iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[(sum >> (28 - 4 * i)) as usize & 0xf];
    }
    buf.push(b'\n');
    buf
}

/// CRC-32C (Castagnoli), the checksum of ext4's metadata, iSCSI and etcd's write-ahead log.
fn crc32c(bytes: &[u8]) -> u32 {
    !crc32c_update(!0, bytes)
}

/// Runs the CRC-32C register over `bytes` (the checksum is the register's complement).
fn crc32c_update(crc: u32, bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    bytes.iter().fold(crc, |crc, &b| TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8))
}

/// A line (with its newline) read as a record: checksummed, or bare JSON where `legacy`.
fn parse_line(line: &[u8], legacy: bool) -> Result<Record, String> {
    let json = if legacy {
        line
    } else {
        let (Some(sum), Some(b' ')) = (line.get(..8), line.get(8)) else {
            return Err("no checksum".into());
        };
        let sum = std::str::from_utf8(sum).ok().and_then(|h| u32::from_str_radix(h, 16).ok());
        let json = &line[9..];
        match sum {
            None => return Err("no checksum".into()),
            Some(sum) if sum != crc32c(&json[..json.len().saturating_sub(1)]) => {
                return Err("checksum mismatch".into());
            }
            Some(_) => json,
        }
    };
    if json.contains(&0) {
        return Err("a NUL byte".into());
    }
    serde_json::from_slice::<RecordLine>(json)
        .map_err(|e| e.to_string())
        .and_then(|l| Record::try_from(l).map_err(str::to_string))
}

fn compact_size(state: &Recovered) -> u64 {
    state.entries.iter().chain(&state.base.retained).map(|e| super::raft::encoded_size(e) as u64 + 1).sum::<u64>() + 64
}

/// What [`read_records`] found.
struct Replay {
    state: Recovered,
    /// The length of the good records.
    good: u64,
    /// The file's length.
    total: u64,
    /// Whether only zeros follow the good records (nothing to cut off).
    clean_end: bool,
    /// Whether the file holds records without checksums, of files written before them.
    legacy: bool,
}

/// Reads a [`LogFile`] from a position on.
struct ReadFrom<'a> {
    file: &'a dyn LogFile,
    pos: u64,
}

impl Read for ReadFrom<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Replays the records, up to an unfinished last write.
fn read_records(path: &Path, file: &dyn LogFile) -> Result<Replay, StorageError> {
    let io = |source| StorageError::Io { path: path.to_path_buf(), source };
    let total = file.length().map_err(io)?;
    let mut reader = BufReader::new(ReadFrom { file, pos: 0 });
    let mut replay = Replay { state: Recovered::default(), good: 0, total, clean_end: true, legacy: false };
    let mut line = Vec::new();
    let mut number = 0usize;
    // Bare JSON lines are taken until the first checksummed one.
    let mut legacy_allowed = true;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io)?;
        if n == 0 {
            return Ok(replay);
        }
        number += 1;
        let corrupt = |reason: String| StorageError::Corrupt {
            path: path.to_path_buf(),
            offset: replay.good,
            line: number,
            reason,
        };
        if line.last() != Some(&b'\n') {
            // Every record is written together with its newline: a line without one runs to
            // the end of the file, and is the zeros ahead of the records, a write that never
            // finished (and was never synced), or damage.
            if all_zeros(&line) {
                return Ok(replay);
            }
            // Files of before the checksums were appended to without zeros ahead, so a write
            // cut short there may stop anywhere: it is cut off, as it was then.
            if !(legacy_allowed && line.first() == Some(&b'{')) {
                unfinished_write(file, replay.good).map_err(io)?.map_err(corrupt)?;
            }
            replay.clean_end = false;
            return Ok(replay);
        }
        let legacy = legacy_allowed && line.first() == Some(&b'{');
        if legacy && line.contains(&0) {
            // Files of before the checksums: no record holds a NUL, a write that never finished.
            replay.clean_end = false;
            return Ok(replay);
        }
        match parse_line(&line, legacy) {
            Ok(record) => {
                apply(&mut replay.state, record, number == 1).map_err(corrupt)?;
                replay.good += n as u64;
                replay.legacy |= legacy;
                legacy_allowed = legacy;
            }
            // Of before the checksums: a torn write whose end reached the disk before its start.
            Err(_) if legacy && zeros_from(file, replay.good + n as u64).map_err(io)? => {
                replay.clean_end = false;
                return Ok(replay);
            }
            Err(reason) if legacy => return Err(corrupt(reason)),
            // A bad record with a good one after it is damage, not a write that never finished.
            Err(reason) => match good_record_after(&mut reader, legacy_allowed).map_err(io)? {
                Some(after) => {
                    return Err(corrupt(format!("{reason}; a good record follows at line {}", number + after)));
                }
                None => {
                    unfinished_write(file, replay.good)
                        .map_err(io)?
                        .map_err(|why| corrupt(format!("{reason}, and {why}")))?;
                    replay.clean_end = false;
                    return Ok(replay);
                }
            },
        }
    }
}

/// The unit a disk writes whole or not at all: a write cut short by a crash left some of its
/// sectors on the disk and not others.
const SECTOR: u64 = 512;

/// Whether what follows the good records, from `start` to the end of the file, is a write that
/// never finished (`Ok`), or damage to records that were synced (`Err`, with what gives it away).
///
/// One write is on its way at a time, one record, into zeros; a crash leaves each of its
/// sectors on the disk or not, so its bytes up to the last that reached the disk are
/// whole sectors of the record (no zero byte in them) and sectors of zeros, and only zeros follow.
/// A record with a missing sector has a sector of zeros in it; one whose end is missing stops at
/// a sector's end. A byte damaged later leaves none of those marks: a record that is whole but
/// for a changed byte fails its checksum yet has no zero sector in it, and a record whose newline
/// changed still has its checksum match the bytes up to it. In the manner of etcd's write-ahead
/// log, which tells a torn record from damage by its zeroed sectors.
fn unfinished_write(file: &dyn LogFile, start: u64) -> std::io::Result<Result<(), String>> {
    let mut tail = Vec::new();
    ReadFrom { file, pos: start }.read_to_end(&mut tail)?;
    let Some(last) = last_nonzero(&tail) else { return Ok(Ok(())) };
    let written = &tail[..=last];
    let newline = written.iter().position(|&b| b == b'\n');
    if let Some(at) = newline.filter(|&at| at < last) {
        return Ok(Err(format!("a second line follows at byte {}", start + at as u64 + 1)));
    }
    // The bytes in each sector, from `start` on: all zeros (not written) or none (written).
    let mut mixed = None;
    let mut zero_sector = false;
    for range in sectors(start, written.len()) {
        let chunk = &written[range.clone()];
        let zeros = chunk.iter().filter(|&&b| b == 0).count();
        if zeros == chunk.len() {
            zero_sector = true;
        } else if zeros > 0 && mixed.is_none() {
            mixed = Some(start + range.start as u64);
        }
    }
    if let Some(sector) = mixed {
        return Ok(Err(format!("the sector at byte {sector} holds zero bytes among others")));
    }
    if zero_sector {
        return Ok(Ok(()));
    }
    if newline.is_some() {
        return Ok(Err("the record is whole (no sector of it is missing)".into()));
    }
    if let Some(len) = whole_but_its_newline(written) {
        return Ok(Err(format!("the record is whole up to byte {} but for its newline", start + len as u64)));
    }
    if !(start + written.len() as u64).is_multiple_of(SECTOR) {
        return Ok(Err(format!("the record stops at byte {}, inside a sector", start + written.len() as u64)));
    }
    Ok(Ok(()))
}

/// The parts of `len` bytes written at file offset `start` that fall in each sector, as ranges
/// of those bytes.
fn sectors(start: u64, len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= len {
            return None;
        }
        let end = (((start + at as u64) / SECTOR + 1) * SECTOR - start) as usize;
        let range = at..end.min(len);
        at = range.end;
        Some(range)
    })
}

/// A block of zeros that runs of bytes are compared with (a `memcmp` at a time).
static ZEROS: [u8; 4096] = [0; 4096];

fn all_zeros(bytes: &[u8]) -> bool {
    bytes.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// Where the last byte that is not zero is.
fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    let zeros_at_end = bytes.rchunks(ZEROS.len()).take_while(|c| all_zeros(c)).map(<[u8]>::len).sum::<usize>();
    bytes[..bytes.len() - zeros_at_end].iter().rposition(|&b| b != 0)
}

/// The length of the record at the start of `bytes` whose checksum matches the bytes before
/// some byte that is not its newline: a whole record whose newline was damaged.
fn whole_but_its_newline(bytes: &[u8]) -> Option<usize> {
    let sum = std::str::from_utf8(bytes.get(..8)?).ok().and_then(|h| u32::from_str_radix(h, 16).ok())?;
    if bytes.get(8) != Some(&b' ') {
        return None;
    }
    let mut crc = !0u32;
    for (i, &b) in bytes.iter().enumerate().skip(9) {
        if !crc == sum && i > 9 {
            let mut line = bytes[..i].to_vec();
            line.push(b'\n');
            if parse_line(&line, false).is_ok() {
                return Some(i);
            }
        }
        crc = crc32c_update(crc, &[b]);
    }
    None
}

/// The first line from the reader's position on that is a good record (checksummed, or bare
/// JSON where `legacy`), counted from 1.
fn good_record_after(reader: &mut impl BufRead, legacy: bool) -> std::io::Result<Option<usize>> {
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        number += 1;
        let bare = legacy && line.first() == Some(&b'{');
        if line.last() == Some(&b'\n') && parse_line(&line, bare).is_ok() {
            return Ok(Some(number));
        }
    }
}

/// Whether the file holds nothing but zeros from `offset` on.
fn zeros_from(file: &dyn LogFile, offset: u64) -> std::io::Result<bool> {
    let mut reader = ReadFrom { file, pos: offset };
    let mut chunk = [0u8; 8192];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            return Ok(true);
        }
        if !all_zeros(&chunk[..n]) {
            return Ok(false);
        }
    }
}

fn apply(state: &mut Recovered, record: Record, first: bool) -> Result<(), String> {
    if let Some(base) = record.base {
        if !first {
            return Err("a base after the first record".into());
        }
        state.base = base;
    }
    if let Some((from, entries)) = record.entries {
        let last = state.last_index();
        if from <= state.base.index || from > last + 1 {
            return Err(format!("entries from index {from} leave a gap after {last} (base {})", state.base.index));
        }
        state.entries.truncate((from - state.base.index - 1) as usize);
        state.entries.extend(entries);
    }
    if let Some(hs) = record.hs {
        state.hard_state = HardState { term: hs.term, voted_for: hs.voted_for };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::EntryValue;

    fn entry(term: u64, key: &str) -> LogEntry {
        LogEntry { term, key: Some(key.into()), value: key.into() }
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("labctl-storage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn state_survives_reopen_with_truncation() {
        let dir = tempdir("reopen");
        {
            let (mut s, rec) = Storage::open(&dir).unwrap();
            assert_eq!(rec, Recovered::default());
            s.persist(Some(HardState { term: 2, voted_for: Some(3) }), Some((1, &[entry(1, "a"), entry(2, "b")])))
                .unwrap();
            s.persist(None, Some((2, &[entry(2, "c"), entry(2, "d")]))).unwrap();
            s.persist(Some(HardState { term: 3, voted_for: None }), None).unwrap();
        }
        let (_s, rec) = Storage::open(&dir).unwrap();
        assert_eq!(rec.hard_state, HardState { term: 3, voted_for: None });
        assert_eq!(rec.entries, vec![entry(1, "a"), entry(2, "c"), entry(2, "d")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_write_is_cut_off() {
        let dir = tempdir("torn");
        {
            let (mut s, _) = Storage::open(&dir).unwrap();
            s.persist(Some(HardState { term: 1, voted_for: Some(1) }), Some((1, &[entry(1, "a")]))).unwrap();
        }
        let path = dir.join(FILE_NAME);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"from":2,"entries":[{"Term":1,"Key":"b""#).unwrap();
        drop(f);
        let (mut s, rec) = Storage::open(&dir).unwrap();
        assert_eq!(rec.entries, vec![entry(1, "a")]);
        s.persist(None, Some((2, &[entry(1, "b")]))).unwrap();
        drop(s);
        let (_s, rec) = Storage::open(&dir).unwrap();
        assert_eq!(rec.entries, vec![entry(1, "a"), entry(1, "b")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Where the records end: the first NUL byte of the file, or its end.
    fn records_end(path: &Path) -> usize {
        let bytes = std::fs::read(path).unwrap();
        bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())
    }

    #[test]
    fn records_are_written_into_zeros_ahead_of_them_and_end_where_the_zeros_start() {
        let dir = tempdir("prealloc");
        let path = dir.join(FILE_NAME);
        let large = "y".repeat(3 * PREALLOCATE as usize);
        {
            let (mut s, _) = Storage::open(&dir).unwrap();
            s.persist(Some(HardState { term: 1, voted_for: Some(2) }), Some((1, &[entry(1, "a")]))).unwrap();
            let len = std::fs::metadata(&path).unwrap().len();
            assert!(len >= PREALLOCATE, "zero-filled ahead: {len} bytes");
            let end = records_end(&path);
            assert!(end > 0 && (end as u64) < len);
            // A second write goes where the first ended and leaves the length alone.
            s.persist(None, Some((2, &[entry(1, "b")]))).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
            assert!(records_end(&path) > end);
        }
        let len = std::fs::metadata(&path).unwrap().len();
        {
            let (mut s, rec) = Storage::open(&dir).unwrap();
            assert_eq!(rec.hard_state, HardState { term: 1, voted_for: Some(2) });
            assert_eq!(rec.entries, vec![entry(1, "a"), entry(1, "b")]);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "the zeros are not cut off on open");
            // An entry larger than what is zero-filled extends the file past it.
            s.persist(None, Some((3, &[entry(1, &large)]))).unwrap();
            assert!(std::fs::metadata(&path).unwrap().len() > records_end(&path) as u64);
        }
        let (_s, rec) = Storage::open(&dir).unwrap();
        assert_eq!(rec.entries, vec![entry(1, "a"), entry(1, "b"), entry(1, &large)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Opens `dir` after writing `torn(start)` where the records end (at `start`), as an
    /// unsynced write that reached the disk in part: the state must be what was synced, and
    /// the node must go on.
    fn reopen_after_torn_write(name: &str, torn: impl Fn(u64) -> Vec<u8>) {
        let dir = tempdir(name);
        let path = dir.join(FILE_NAME);
        {
            let (mut s, _) = Storage::open(&dir).unwrap();
            s.persist(Some(HardState { term: 1, voted_for: Some(1) }), Some((1, &[entry(1, "a")]))).unwrap();
        }
        let start = records_end(&path) as u64;
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&torn(start), start).unwrap();
        drop(f);
        let (mut s, rec) = Storage::open(&dir).unwrap();
        assert_eq!(rec.entries, vec![entry(1, "a")], "{name}");
        s.persist(None, Some((2, &[entry(1, "b")]))).unwrap();
        drop(s);
        let (_s, rec) = Storage::open(&dir).unwrap();
        assert_eq!(rec.entries, vec![entry(1, "a"), entry(1, "b")], "{name}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A record of several sectors, as the next write would write it.
    fn long_record() -> Vec<u8> {
        record(Some(HardState { term: 2, voted_for: None }), Some((2, &[entry(2, &"b".repeat(3000))])))
    }

    /// The bytes of `whole` written at `start`, with the sectors `lost` says missing (zeros).
    fn without_sectors(whole: &[u8], start: u64, lost: impl Fn(usize) -> bool) -> Vec<u8> {
        let mut bytes = whole.to_vec();
        for (sector, range) in sectors(start, bytes.len()).enumerate() {
            if lost(sector) {
                bytes[range].fill(0);
            }
        }
        bytes
    }

    #[test]
    fn a_write_torn_into_the_zeros_is_cut_off() {
        let whole = long_record();
        // Its start reached the disk, its end did not.
        reopen_after_torn_write("torn-start", |start| without_sectors(&whole, start, |s| s >= 2));
        // Its end reached the disk, its start did not.
        reopen_after_torn_write("torn-end", |start| without_sectors(&whole, start, |s| s == 0));
        // A sector in the middle is missing.
        reopen_after_torn_write("torn-middle", |start| without_sectors(&whole, start, |s| s == 2));
        // Every other one.
        reopen_after_torn_write("torn-every-other", |start| without_sectors(&whole, start, |s| s % 2 == 1));
        // Its first sector alone reached the disk.
        reopen_after_torn_write("torn-first-only", |start| without_sectors(&whole, start, |s| s > 0));
    }

    /// Two synced records, the last damaged by `damage(bytes, start)` (the whole file, and where
    /// the last record starts), which says where the damaged record starts: the node must not
    /// start, naming that byte.
    fn damaged_at_the_end(name: &str, damage: impl Fn(&mut Vec<u8>, usize) -> usize) {
        let dir = tempdir(name);
        let path = dir.join(FILE_NAME);
        {
            let (mut s, _) = Storage::open(&dir).unwrap();
            s.persist(Some(HardState { term: 1, voted_for: Some(1) }), Some((1, &[entry(1, "a")]))).unwrap();
            s.persist(Some(HardState { term: 2, voted_for: Some(3) }), Some((2, &[entry(2, &"b".repeat(3000))])))
                .unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
        let damaged = damage(&mut bytes, last);
        std::fs::write(&path, &bytes).unwrap();
        match Storage::open(&dir) {
            Err(StorageError::Corrupt { offset, .. }) => assert_eq!(offset, damaged as u64, "{name}"),
            other => panic!("{name}: {:?}", other.map(|(_, rec)| rec)),
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name}: the file is left as it was");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_last_record_stops_the_node_as_damage_anywhere_does() {
        // Whole but for one byte: a write cut short leaves no such record.
        damaged_at_the_end("end-flipped-bit", |bytes, last| {
            bytes[last + 40] ^= 0x04;
            last
        });
        // A zero byte inside a sector that holds other bytes of the record.
        damaged_at_the_end("end-zero-byte", |bytes, last| {
            bytes[last + 8] = 0;
            last
        });
        // Its newline changed.
        damaged_at_the_end("end-newline", |bytes, last| {
            let end = bytes.iter().rposition(|&b| b == b'\n').unwrap();
            bytes[end] = b'x';
            last
        });
        // Its newline gone.
        damaged_at_the_end("end-no-newline", |bytes, last| {
            let end = bytes.iter().rposition(|&b| b == b'\n').unwrap();
            bytes[end] = 0;
            last
        });
        // The newline of the record before it changed: the two run together.
        damaged_at_the_end("end-merged", |bytes, last| {
            bytes[last - 1] = b'~';
            0
        });
        // A line that is not a record after the last one.
        damaged_at_the_end("end-garbage", |bytes, last| {
            bytes.truncate(last);
            bytes.extend_from_slice(b"{\"from\":3,\"entr\n");
            last
        });
    }

    /// Three synced records, the second damaged by `damage`: the node must not start, and the
    /// file must be left as it was.
    fn damaged_in_the_middle(name: &str, damage: impl Fn(&mut [u8])) {
        let dir = tempdir(name);
        let path = dir.join(FILE_NAME);
        {
            let (mut s, _) = Storage::open(&dir).unwrap();
            s.persist(Some(HardState { term: 1, voted_for: Some(1) }), Some((1, &[entry(1, "a")]))).unwrap();
            s.persist(None, Some((2, &[entry(1, "b")]))).unwrap();
            s.persist(Some(HardState { term: 2, voted_for: Some(3) }), None).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let second = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
        let third = second + bytes[second..].iter().position(|&b| b == b'\n').unwrap() + 1;
        damage(&mut bytes[second..third - 1]);
        std::fs::write(&path, &bytes).unwrap();
        match Storage::open(&dir) {
            Err(e @ StorageError::Corrupt { offset, line: 2, .. }) => {
                assert_eq!(offset, second as u64, "{name}");
                let message = e.to_string();
                assert!(message.contains(&format!("byte {second}")), "{name}: {message}");
                assert!(message.contains("does not start"), "{name}: {message}");
            }
            other => panic!("{name}: {:?}", other.map(|(_, rec)| rec)),
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name}: the file is left as it was");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_record_with_synced_ones_after_it_stops_the_node() {
        // A zero byte was once taken for the end of the records: everything after it was cut.
        damaged_in_the_middle("zero-byte", |record| record[record.len() / 2] = 0);
        damaged_in_the_middle("flipped-bit", |record| record[record.len() - 3] ^= 0x20);
        damaged_in_the_middle("flipped-checksum", |record| record[0] = if record[0] == b'0' { b'1' } else { b'0' });
        damaged_in_the_middle("zeroed-block", |record| record.fill(0));
    }

    #[test]
    fn a_file_of_before_the_checksums_is_read_and_given_them() {
        let dir = tempdir("legacy");
        let path = dir.join(FILE_NAME);
        std::fs::create_dir_all(&dir).unwrap();
        let mut old = b"{\"hs\":{\"term\":3,\"voted_for\":2}}\n".to_vec();
        old.extend_from_slice(b"{\"from\":1,\"entries\":[{\"Term\":1,\"Key\":\"a\",\"Value\":\"a\"}]}\n");
        old.extend_from_slice(&[0u8; 100]);
        std::fs::write(&path, &old).unwrap();
        let expected = Recovered {
            hard_state: HardState { term: 3, voted_for: Some(2) },
            entries: vec![entry(1, "a")],
            ..Default::default()
        };
        {
            let (mut s, rec) = Storage::open(&dir).unwrap();
            assert_eq!(rec, expected);
            let bytes = std::fs::read(&path).unwrap();
            assert!(bytes[..8].iter().all(u8::is_ascii_hexdigit), "rewritten with checksums");
            s.persist(None, Some((2, &[entry(3, "b")]))).unwrap();
        }
        let (_s, rec) = Storage::open(&dir).unwrap();
        assert_eq!(rec.entries, vec![entry(1, "a"), entry(3, "b")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_of_before_the_checksums_loses_only_a_last_line_cut_short() {
        let dir = tempdir("legacy-torn");
        let path = dir.join(FILE_NAME);
        std::fs::create_dir_all(&dir).unwrap();
        let mut old = b"{\"hs\":{\"term\":3,\"voted_for\":2}}\n".to_vec();
        old.extend_from_slice(b"{\"from\":1,\"entries\":[{\"Term\":1,\"Key\":\"a\",\"Val");
        std::fs::write(&path, &old).unwrap();
        let (_s, rec) = Storage::open(&dir).unwrap();
        assert_eq!(
            rec,
            Recovered { hard_state: HardState { term: 3, voted_for: Some(2) }, entries: vec![], ..Default::default() }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn crc32c_is_castagnolis() {
        // The check value of CRC-32C, and one from RFC 3720's examples (32 zero bytes).
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn direct_writes_leave_the_same_records_as_the_page_cache_across_reopens_and_blocks() {
        let (direct_dir, cached_dir) = (tempdir("direct"), tempdir("cached"));
        // Sizes that end records inside a block, on a block's edge, across several blocks and
        // past what is zero-filled.
        let sizes = [10, 4000, 4096 - 57, 3 * BLOCK, 5, PREALLOCATE as usize + 100, 1, 9000];
        let mut expected = Recovered::default();
        for round in 0..2 {
            let (mut direct, rec_d) = Storage::open(&direct_dir).unwrap();
            let (mut cached, rec_c) =
                Storage::open_in(Box::new(FsLogDir { direct: false, ..FsLogDir::new(&cached_dir) })).unwrap();
            assert_eq!((&rec_d, &rec_c), (&expected, &expected), "round {round}: reopened");
            for (i, n) in sizes.iter().enumerate() {
                let hs = HardState { term: round * 10 + i as u64 + 1, voted_for: Some(2) };
                let e = entry(hs.term, &"x".repeat(*n));
                // Every third write replaces the last entry (a follower's conflicting suffix).
                let from = if i % 3 == 2 { expected.entries.len() as u64 } else { expected.entries.len() as u64 + 1 };
                for s in [&mut direct, &mut cached] {
                    s.persist(Some(hs), Some((from, std::slice::from_ref(&e)))).unwrap();
                }
                expected.hard_state = hs;
                expected.entries.truncate(from as usize - 1);
                expected.entries.push(e);
            }
            assert!(direct.writes_directly(), "the file system here takes direct writes");
            assert!(!cached.writes_directly());
            let (d, c) = (
                std::fs::read(direct_dir.join(FILE_NAME)).unwrap(),
                std::fs::read(cached_dir.join(FILE_NAME)).unwrap(),
            );
            let end = records_end(&cached_dir.join(FILE_NAME));
            assert_eq!(records_end(&direct_dir.join(FILE_NAME)), end, "round {round}");
            assert_eq!(d[..end], c[..end], "round {round}: the same records, byte for byte");
            assert!(d[end..].iter().all(|&b| b == 0), "round {round}: zeros after the records");
            assert_eq!(d.len() % BLOCK, 0, "whole blocks");
        }
        let (_s, rec) = Storage::open(&direct_dir).unwrap();
        assert_eq!(rec, expected);
        std::fs::remove_dir_all(&direct_dir).unwrap();
        std::fs::remove_dir_all(&cached_dir).unwrap();
    }

    #[test]
    fn damage_before_the_end_is_an_error() {
        let dir = tempdir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let mut content = b"garbage\n".to_vec();
        content.extend(record(Some(HardState { term: 1, voted_for: None }), None));
        std::fs::write(dir.join(FILE_NAME), content).unwrap();
        assert!(matches!(Storage::open(&dir), Err(StorageError::Corrupt { line: 1, offset: 0, .. })));
        // The same in a file of before the checksums.
        std::fs::write(dir.join(FILE_NAME), b"garbage\n{\"hs\":{\"term\":1,\"voted_for\":null}}\n").unwrap();
        assert!(matches!(Storage::open(&dir), Err(StorageError::Corrupt { line: 1, .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_of_neither_shape_is_an_error() {
        for json in [&b"{\"from\":1}"[..], b"{\"entries\":[]}", b"{}"] {
            let dir = tempdir("shape");
            std::fs::create_dir_all(&dir).unwrap();
            let mut content = record(Some(HardState { term: 1, voted_for: None }), None);
            content.extend_from_slice(format!("{:08x} ", crc32c(json)).as_bytes());
            content.extend_from_slice(json);
            content.push(b'\n');
            content.extend(record(Some(HardState { term: 2, voted_for: None }), None));
            std::fs::write(dir.join(FILE_NAME), content).unwrap();
            assert!(matches!(Storage::open(&dir), Err(StorageError::Corrupt { line: 2, .. })));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn entry_values_come_back_as_they_were_written() {
        let dir = tempdir("values");
        let value: EntryValue = serde_json::json!({"op": "create", "n": [1, 2.5, null], "s": "é\"\\"}).into();
        let written = LogEntry { term: 1, key: Some("k".into()), value: value.clone() };
        {
            let (mut s, _) = Storage::open(&dir).unwrap();
            s.persist(None, Some((1, std::slice::from_ref(&written)))).unwrap();
        }
        let (_s, recovered) = Storage::open(&dir).unwrap();
        assert_eq!(recovered.entries, vec![written]);
        assert_eq!(recovered.entries[0].value.get(), value.get());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_process_cannot_open_the_same_dir() {
        let dir = tempdir("lock");
        let (_s, _) = Storage::open(&dir).unwrap();
        // flock locks are per open file description, so a second open in-process conflicts too.
        assert!(matches!(Storage::open(&dir), Err(StorageError::Locked { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_grown_file_is_compacted_on_open() {
        let dir = tempdir("compact");
        {
            let (mut s, _) = Storage::open(&dir).unwrap();
            // Each write replaces index 1 with a 2 KB entry: the file grows, the state does not.
            let big = "x".repeat(2048);
            for term in 1..200 {
                s.persist(Some(HardState { term, voted_for: Some(1) }), Some((1, &[entry(term, &big)]))).unwrap();
            }
            s.persist(None, Some((1, &[entry(199, "x")]))).unwrap();
        }
        let before = std::fs::metadata(dir.join(FILE_NAME)).unwrap().len();
        let (_s, rec) = Storage::open(&dir).unwrap();
        let after = std::fs::metadata(dir.join(FILE_NAME)).unwrap().len();
        assert!(after < before / 10, "{after} vs {before}");
        assert_eq!(rec.hard_state.term, 199);
        assert_eq!(rec.entries, vec![entry(199, "x")]);
        drop(_s);
        let (_s, rec2) = Storage::open(&dir).unwrap();
        assert_eq!(rec2, rec);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_compacted_log_starts_after_its_base_and_keeps_it_through_reopens() {
        let dir = tempdir("base");
        let hs = HardState { term: 4, voted_for: Some(2) };
        let base = Base { index: 40, term: 3, retained: vec![entry(3, "stored")] };
        {
            let (mut s, _) = Storage::open(&dir).unwrap();
            s.persist(Some(hs), Some((1, &[entry(1, "old")]))).unwrap();
            s.rewrite_all(hs, &base, &[entry(3, "a"), entry(4, "b")]).unwrap();
            s.persist(None, Some((42, &[entry(4, "c"), entry(4, "d")]))).unwrap();
        }
        let (mut s, rec) = Storage::open(&dir).unwrap();
        assert_eq!(rec.base, base);
        assert_eq!(rec.entries, vec![entry(3, "a"), entry(4, "c"), entry(4, "d")]);
        assert_eq!(rec.last_index(), 43);
        // Every entry replaced: the log is its base alone.
        s.persist(None, Some((41, &[]))).unwrap();
        drop(s);
        let (s, rec) = Storage::open(&dir).unwrap();
        assert_eq!((rec.base.index, rec.entries.len(), rec.hard_state), (40, 0, hs));
        drop(s);

        // A record that would replace entries before the base is damage, not a write.
        let path = dir.join(FILE_NAME);
        let bad = record(None, Some((40, &[entry(4, "x")])));
        let good = record(Some(hs), None);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let end = std::fs::read(&path).unwrap().iter().position(|&b| b == 0).unwrap() as u64;
        f.write_all_at(&[bad, good].concat(), end).unwrap();
        drop(f);
        let err = Storage::open(&dir).err().expect("damage");
        assert!(err.to_string().contains("gap"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_grown_compacted_file_is_rewritten_on_open_with_its_base() {
        let dir = tempdir("base-grown");
        let base = Base { index: 7, term: 2, retained: vec![] };
        {
            let (mut s, _) = Storage::open(&dir).unwrap();
            s.rewrite_all(HardState { term: 2, voted_for: None }, &base, &[]).unwrap();
            let big = "x".repeat(2048);
            for term in 2..200 {
                s.persist(Some(HardState { term, voted_for: Some(1) }), Some((8, &[entry(term, &big)]))).unwrap();
            }
        }
        let before = std::fs::metadata(dir.join(FILE_NAME)).unwrap().len();
        let (s, rec) = Storage::open(&dir).unwrap();
        assert!(std::fs::metadata(dir.join(FILE_NAME)).unwrap().len() < before / 10);
        assert_eq!((rec.base.clone(), rec.last_index()), (base, 8));
        drop(s);
        assert_eq!(Storage::open(&dir).unwrap().1, rec);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
