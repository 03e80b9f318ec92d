//! A node's own SQLite file (the default `<node dir>/labctl.db`), written without flushes.
//!
//! Everything in that file is derived from the Raft log, which is flushed before anything is
//! acknowledged and is kept whole. So the file need not survive a power loss, only be known
//! not to have: it is written with `synchronous = OFF` (no `fsync` at commits or checkpoints),
//! which is safe whenever the operating system itself keeps running, as it does when only
//! the node crashes or is killed. What the OS does not survive is a reboot; after one, a file
//! that was open may hold pages of different moments. So a marker beside the file,
//! `labctl.db-state`, says how the file was left:
//!
//! - `open <boot id>`: a node had the file open during that boot of the machine
//!   (`/proc/sys/kernel/random/boot_id`). If the machine has not restarted since, the OS
//!   still holds every write and the file is used. If it has, the file is deleted and the
//!   node applies the whole Raft log to a new one.
//! - `clean`: the node stopped normally and flushed the file first; it is used after a reboot too.
//! - `checkpointed`: a node that compacts its Raft log wrote it (see below); it is used after a
//!   reboot too.
//! - no marker, beside an existing file: a file written with flushes on every checkpoint
//!   (`synchronous = NORMAL`), which a power loss leaves consistent; it is used.
//!
//! The marker is written, flushed and renamed into place before the file is opened for writing.
//! Where the boot id cannot be read, the file is written with flushes, as a file given by
//! `--database-url` always is (such a file may be shared with other nodes, whose writes this
//! node could not replay).
//!
//! Why: with `synchronous = NORMAL`, each checkpoint flushed megabytes of WAL and pages while
//! the nodes flushed their Raft logs on the same disk, and those flushes, on the write path of
//! every acknowledgement, waited 3–12 ms behind them.
//!
//! **A node that compacts its log** cannot rebuild the file from it, so the file must survive
//! a reboot. It is written *checkpointed*: commits still go to the WAL without flushes, but
//! SQLite never checkpoints on its own (`wal_autocheckpoint = 0`); the applier does, once per
//! compaction interval (`--compact-every` entries), flushing the WAL before it copies pages
//! into the file and the file after ([`crate::node::store::Store::checkpoint_flushed`]). The
//! file itself is then written only by flushed checkpoints, and a reboot leaves it as the last one did, with a WAL whose frames
//! SQLite checks by their checksums and takes up to the first torn one: a state no older than
//! the last checkpoint, which is as far as the log was compacted.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where the machine's boot id is read.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// What is done with the file found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No file yet: one is created.
    New,
    /// The file is used; why it can be trusted.
    Kept(&'static str),
    /// The file is deleted and rebuilt from the log; why.
    Rebuilt(String),
}

/// Decides about an existing-or-not file from its marker (`None`: no marker) and this boot's
/// id (`None`: unknown).
pub fn verdict(file_exists: bool, marker: Option<&str>, boot: Option<&str>) -> Verdict {
    if !file_exists {
        return Verdict::New;
    }
    let Some(marker) = marker.map(str::trim) else {
        return Verdict::Kept("written with flushes (no state marker)");
    };
    if marker == "clean" {
        return Verdict::Kept("left flushed by a normal stop");
    }
    if marker == "checkpointed" {
        return Verdict::Kept("written with flushed checkpoints only");
    }
    match (marker.strip_prefix("open "), boot) {
        (Some(then), Some(now)) if then.trim() == now => Verdict::Kept("the machine has not restarted since"),
        (Some(then), Some(_)) => Verdict::Rebuilt(format!(
            "the machine restarted (boot {}) while a node had it open without flushes",
            then.trim()
        )),
        (Some(_), None) => Verdict::Rebuilt("it was open without flushes and this boot's id is unknown".into()),
        (None, _) => Verdict::Rebuilt(format!("its state marker is unreadable ({marker:?})")),
    }
}

/// A node's own SQLite file, checked and marked open (see the module documentation).
#[derive(Debug)]
pub struct OwnFile {
    db: PathBuf,
    marker: PathBuf,
    /// The file, once it exists, for [`OwnFile::write_back`].
    file: std::sync::OnceLock<File>,
}

/// The files SQLite keeps beside a database, and the marker.
fn companions(db: &Path) -> [PathBuf; 4] {
    ["-wal", "-shm", "-journal", "-state"].map(|suffix| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    })
}

impl OwnFile {
    /// Checks the file at `db` before it is opened: deletes it when it cannot be trusted, and
    /// marks it open in this boot, or `checkpointed` (see the module documentation). `None`
    /// when this boot's id is unknown: the file must then be written with flushes (its marker
    /// is removed, so a later start trusts it).
    pub fn prepare(db: &Path, checkpointed: bool) -> std::io::Result<(Option<OwnFile>, Verdict)> {
        let [wal, shm, journal, marker] = companions(db);
        let boot = std::fs::read_to_string(BOOT_ID).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let marker_text = match std::fs::read_to_string(&marker) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Some(String::from("(not text)")),
            Err(e) => return Err(e),
        };
        let verdict = verdict(db.exists(), marker_text.as_deref(), boot.as_deref());
        if matches!(verdict, Verdict::Rebuilt(_)) {
            for path in [db, &wal, &shm, &journal] {
                remove_if_present(path)?;
            }
        }
        let Some(boot) = boot else {
            remove_if_present(&marker)?;
            return Ok((None, verdict));
        };
        let own = OwnFile { db: db.to_path_buf(), marker, file: std::sync::OnceLock::new() };
        if checkpointed {
            own.mark("checkpointed\n")?;
        } else {
            own.mark(&format!("open {boot}\n"))?;
        }
        Ok((Some(own), verdict))
    }

    /// Starts writing the file's changed pages to disk, without waiting for them and without
    /// a flush of the disk's cache (`sync_file_range`). Left to the kernel, pages changed since
    /// the last 30 s go to disk in one burst, tens of megabytes per node under a steady write
    /// load, and every node's log flush on the same disk waits behind it (a 70 s load at 64
    /// connections: p99.9 of the write latency 396 ms). Called every half second, the same
    /// writes leave in small pieces. The WAL is left alone: it is rewritten in place.
    pub fn write_back(&self) {
        let file = match self.file.get() {
            Some(file) => file,
            None => match File::open(&self.db) {
                Ok(file) => self.file.get_or_init(|| file),
                Err(_) => return,
            },
        };
        // SAFETY: sync_file_range(2) on a descriptor this struct owns; no memory is passed.
        let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if rc != 0 {
            log::debug!("{}: sync_file_range: {}", self.db.display(), std::io::Error::last_os_error());
        }
    }

    /// After a normal stop, once SQLite has checkpointed: flushes the file (and what is left
    /// of its WAL) and marks it clean, so that it is used after a reboot too.
    pub fn close(&self) -> std::io::Result<()> {
        let [wal, ..] = companions(&self.db);
        for path in [&self.db, &wal] {
            match File::open(path) {
                Ok(f) => f.sync_all()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.mark("clean\n")
    }

    /// Replaces the marker with `text`, durably: written and flushed beside it, renamed, and the
    /// directory flushed.
    fn mark(&self, text: &str) -> std::io::Result<()> {
        let mut tmp_name = self.marker.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.marker)?;
        let dir = self.marker.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_kept_unless_a_reboot_may_have_torn_it() {
        let boot = Some("b2");
        assert_eq!(verdict(false, Some("open b1"), boot), Verdict::New);
        assert!(matches!(verdict(true, None, boot), Verdict::Kept(_)), "older files were written with flushes");
        assert!(matches!(verdict(true, Some("clean\n"), boot), Verdict::Kept(_)));
        assert!(matches!(verdict(true, Some("clean"), None), Verdict::Kept(_)));
        assert!(matches!(verdict(true, Some("checkpointed\n"), boot), Verdict::Kept(_)), "survives a reboot");
        assert!(matches!(verdict(true, Some("open b2\n"), boot), Verdict::Kept(_)), "only the process stopped");
        assert!(matches!(verdict(true, Some("open b1\n"), boot), Verdict::Rebuilt(_)), "the machine restarted");
        assert!(matches!(verdict(true, Some("open b1"), None), Verdict::Rebuilt(_)), "cannot tell");
        assert!(matches!(verdict(true, Some("garbage"), boot), Verdict::Rebuilt(_)));
        assert!(matches!(verdict(true, Some(""), boot), Verdict::Rebuilt(_)));
    }

    fn boot_id() -> String {
        std::fs::read_to_string(BOOT_ID).expect("Linux names its boot").trim().to_string()
    }

    #[test]
    fn a_file_left_open_before_a_reboot_is_deleted_with_its_wal_and_one_left_in_this_boot_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("labctl.db");
        let [wal, shm, _, marker] = companions(&db);
        let (own, verdict) = OwnFile::prepare(&db, false).unwrap();
        assert_eq!(verdict, Verdict::New);
        assert!(own.is_some());
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), format!("open {}\n", boot_id()));

        for path in [&db, &wal, &shm] {
            std::fs::write(path, b"pages").unwrap();
        }
        let (_, verdict) = OwnFile::prepare(&db, false).unwrap();
        assert!(matches!(verdict, Verdict::Kept(_)), "{verdict:?}");
        assert!(db.exists() && wal.exists());

        std::fs::write(&marker, "open 00000000-0000-0000-0000-000000000000\n").unwrap();
        let (_, verdict) = OwnFile::prepare(&db, false).unwrap();
        assert!(matches!(verdict, Verdict::Rebuilt(_)), "{verdict:?}");
        assert!(!db.exists() && !wal.exists() && !shm.exists(), "the torn file and its WAL are gone");
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), format!("open {}\n", boot_id()));
    }

    #[test]
    fn a_file_closed_normally_is_kept_after_a_reboot() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("labctl.db");
        let (own, _) = OwnFile::prepare(&db, false).unwrap();
        std::fs::write(&db, b"pages").unwrap();
        own.unwrap().close().unwrap();
        let [.., marker] = companions(&db);
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "clean\n");
        let (_, verdict) = OwnFile::prepare(&db, false).unwrap();
        assert!(matches!(verdict, Verdict::Kept(_)), "{verdict:?}");
        assert_eq!(std::fs::read(&db).unwrap(), b"pages");
    }

    #[test]
    fn a_checkpointed_file_is_marked_so_and_kept_after_a_reboot() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("labctl.db");
        let (own, _) = OwnFile::prepare(&db, true).unwrap();
        assert!(own.is_some());
        let [.., marker] = companions(&db);
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "checkpointed\n");
        std::fs::write(&db, b"pages").unwrap();
        let (_, verdict) = OwnFile::prepare(&db, false).unwrap();
        assert!(matches!(verdict, Verdict::Kept(_)), "{verdict:?}");
        assert_eq!(std::fs::read(&db).unwrap(), b"pages");
    }
}
