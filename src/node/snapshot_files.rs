//! A node's snapshot files, in `<node dir>/snapshots/`: the snapshots its database made for
//! followers (`made.snap`, written by the applier thread, atomically), and the one it receives
//! from a leader (`received.part`, with `received.json`: which snapshot, and how many of its
//! bytes from the start are held without a gap), kept across restarts so that a transfer cut
//! short resumes where it stopped.
//!
//! Pieces are read and written here on the node's Raft thread: a `pread` or `pwrite` of 32
//! KiB into the page cache, no flush. The received file is flushed by the applier before it is
//! checked and loaded.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::transfer::SnapshotInfo;

/// How far a received snapshot is recorded in `received.json`: at most this many bytes behind
/// what is held (the rest is received again after a restart).
const RECORD_EVERY: u64 = 1024 * 1024;

pub struct SnapshotFiles {
    dir: PathBuf,
    /// The snapshots made, newest last: a transfer of the one before may still be reading it.
    made: Vec<(SnapshotInfo, File)>,
    /// The snapshot being received, what is held of it without a gap, and what is recorded.
    received: Option<Received>,
}

struct Received {
    info: SnapshotInfo,
    file: File,
    held: u64,
    recorded: u64,
}

/// What `received.json` holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    info: SnapshotInfo,
    held: u64,
}

impl SnapshotFiles {
    /// The files in `dir`, which is made once a snapshot is (a node that never makes or
    /// receives one has no such directory).
    pub fn open(dir: &Path) -> SnapshotFiles {
        SnapshotFiles { dir: dir.to_path_buf(), made: Vec::new(), received: None }
    }

    /// Where the applier writes a snapshot for followers (the directory made if needed).
    pub fn made_path(&self) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        Ok(self.dir.join("made.snap"))
    }

    /// Where the snapshot received is, for the applier to check and load.
    pub fn received_path(&self) -> PathBuf {
        self.dir.join("received.part")
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join("received.json")
    }

    /// The applier made the snapshot `info` at [`SnapshotFiles::made_path`].
    pub fn made(&mut self, info: &SnapshotInfo) -> Result<(), String> {
        let path = self.dir.join("made.snap");
        let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.made.push((info.clone(), file));
        if self.made.len() > 2 {
            self.made.remove(0);
        }
        Ok(())
    }

    /// `len` bytes from `offset` of a snapshot made here.
    pub fn read(&self, info: &SnapshotInfo, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let (_, file) =
            self.made.iter().rev().find(|(made, _)| made == info).ok_or("that snapshot is gone from here")?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).map_err(|e| format!("{}/made.snap: {e}", self.dir.display()))?;
        Ok(buf)
    }

    /// A transfer of `info` starts: the bytes held of it already (also from before a
    /// restart), or 0 after the files of any other snapshot are replaced by empty ones.
    pub fn begin(&mut self, info: &SnapshotInfo) -> u64 {
        if let Some(r) = self.received.as_ref().filter(|r| r.info == *info) {
            return r.held;
        }
        let recorded = std::fs::read(self.record_path()).ok().and_then(|b| serde_json::from_slice::<Record>(&b).ok());
        if let Some(record) = recorded.filter(|r| r.info == *info) {
            if let Ok(file) = OpenOptions::new().read(true).write(true).open(self.received_path()) {
                if file.metadata().is_ok_and(|m| m.len() >= record.held) {
                    let held = record.held;
                    self.received = Some(Received { info: info.clone(), file, held, recorded: held });
                    return held;
                }
            }
        }
        self.received = None;
        let _ = std::fs::remove_file(self.record_path());
        let created = std::fs::create_dir_all(&self.dir).and_then(|()| {
            OpenOptions::new().create(true).truncate(true).read(true).write(true).open(self.received_path())
        });
        match created {
            Ok(file) => {
                self.received = Some(Received { info: info.clone(), file, held: 0, recorded: 0 });
                let _ = self.record();
            }
            Err(e) => log::error!("{}: {e}", self.received_path().display()),
        }
        0
    }

    /// Writes a piece of the snapshot being received; `held` bytes from the start are then
    /// held without a gap.
    pub fn write(&mut self, info: &SnapshotInfo, offset: u64, bytes: &[u8], held: u64) -> Result<(), String> {
        let path = self.received_path();
        let r = self.received.as_mut().filter(|r| r.info == *info).ok_or("no such snapshot being received")?;
        r.file.write_all_at(bytes, offset).map_err(|e| format!("{}: {e}", path.display()))?;
        r.held = held;
        if held >= r.recorded + RECORD_EVERY || held == info.size {
            self.record()?;
        }
        Ok(())
    }

    /// Records how far the snapshot being received is held.
    fn record(&mut self) -> Result<(), String> {
        let path = self.record_path();
        let Some(r) = self.received.as_mut() else { return Ok(()) };
        let text = serde_json::to_vec(&Record { info: r.info.clone(), held: r.held }).unwrap_or_default();
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        r.recorded = r.held;
        Ok(())
    }

    /// The snapshot received was loaded (`loaded`), or refused: its bytes go. The record of a
    /// loaded one stays until the next transfer: a node that stops before its log is rewritten
    /// finds its database ahead of its log, and the record says why (see
    /// [`SnapshotFiles::loaded_at`]).
    pub fn received_done(&mut self, loaded: bool) {
        self.received = None;
        if !loaded {
            let _ = std::fs::remove_file(self.record_path());
        }
        let _ = std::fs::remove_file(self.received_path());
    }

    /// The index of the last snapshot received whole, if its record is still here.
    pub fn loaded_at(dir: &Path) -> Option<u64> {
        let bytes = std::fs::read(dir.join("received.json")).ok()?;
        let record: Record = serde_json::from_slice(&bytes).ok()?;
        (record.held == record.info.size).then_some(record.info.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(size: u64) -> SnapshotInfo {
        SnapshotInfo { index: 7, term: 2, size, sha256: "ab".repeat(32) }
    }

    #[test]
    fn a_received_snapshot_resumes_after_a_restart_from_what_was_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * RECORD_EVERY;
        let mut files = SnapshotFiles::open(dir.path());
        assert_eq!(files.begin(&info(size)), 0);
        let piece = vec![5u8; RECORD_EVERY as usize];
        files.write(&info(size), 0, &piece, RECORD_EVERY).unwrap();
        files.write(&info(size), RECORD_EVERY, &piece[..100], RECORD_EVERY + 100).unwrap();
        assert_eq!(files.begin(&info(size)), RECORD_EVERY + 100, "the same transfer goes on");
        drop(files);
        // After a restart: what was recorded.
        let mut files = SnapshotFiles::open(dir.path());
        assert_eq!(files.begin(&info(size)), RECORD_EVERY);
        // Another snapshot starts from nothing, and the old one's bytes are gone.
        let other = SnapshotInfo { index: 9, ..info(size) };
        assert_eq!(files.begin(&other), 0);
        assert_eq!(std::fs::metadata(files.received_path()).unwrap().len(), 0);
        assert!(files.write(&info(size), 0, b"x", 1).is_err(), "not the one being received");
        files.received_done(false);
        assert!(!files.received_path().exists());
        assert_eq!(SnapshotFiles::loaded_at(dir.path()), None);
        // One received whole and loaded leaves its record.
        assert_eq!(files.begin(&info(4)), 0);
        files.write(&info(4), 0, b"abcd", 4).unwrap();
        files.received_done(true);
        assert_eq!(SnapshotFiles::loaded_at(dir.path()), Some(7));
    }

    #[test]
    fn a_made_snapshot_is_read_back_by_its_info_and_the_one_before_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = SnapshotFiles::open(dir.path());
        std::fs::write(files.made_path().unwrap(), b"first snapshot").unwrap();
        files.made(&info(14)).unwrap();
        // The next one replaces the file, as the applier's atomic write does.
        let tmp = dir.path().join("next");
        std::fs::write(&tmp, b"second").unwrap();
        std::fs::rename(&tmp, files.made_path().unwrap()).unwrap();
        files.made(&info(6)).unwrap();
        assert_eq!(files.read(&info(14), 6, 8).unwrap(), b"snapshot");
        assert_eq!(files.read(&info(6), 0, 6).unwrap(), b"second");
        assert!(files.read(&info(6), 4, 6).is_err(), "beyond its end");
        assert!(files.read(&SnapshotInfo { index: 1, ..info(6) }, 0, 1).is_err());
    }
}
