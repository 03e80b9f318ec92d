//! Snapshots: the whole replicated state at its last applied index, as one file.
//!
//! The Raft log cannot grow for ever: once a node has compacted the entries it applied, a
//! follower that fell behind the leader's first entry can no longer be sent the entries it
//! lacks. The leader sends it a snapshot instead: everything those entries built, at the
//! index and term of the last of them. [`Store::write_snapshot`] writes one;
//! [`Store::load_snapshot`] replaces a node's whole replicated state by one. [`write_file`],
//! [`verify_file`] and [`load_file`] do the same with files, checked against a [`SnapshotInfo`]
//! (index, term, size and SHA-256) that travels with the file.
//!
//! # Format (version 1)
//! UTF-8 text, one JSON object a line, every line ending in `\n`:
//!
//! ```text
//! {"format":"labctl-snapshot","version":1,"index":14,"term":3,"next_product_id":4,"next_user_id":3,"next_task_id":2}
//! {"table":"products","row":{"id":1,"title":"a","price":3.0,"currency":"GBP",…}}
//! {"table":"users","row":{"id":2,"name":"Cid","email":"cid@example.org","created_at":"…"}}
//! {"end":{"rows":2,"sha256":"9f86d0…"}}
//! ```
//!
//! - The **header** names the format and its version, the index and term of the last entry
//!   the state holds, and the id counters of the `meta` row.
//! - Then one line per **row**, naming its table, the row as the API shows it (every column,
//!   password hashes included: a snapshot is as secret as the database). Tables come in the
//!   order of [`TABLES`], which puts users before the tasks that refer to them; the rows of a
//!   table in the order of its primary key as the database sorts it (numbers ascending, texts
//!   in the column's collation: byte order on SQLite, on MySQL's `utf8mb4_bin` and on
//!   PostgreSQL's `C`). Loading does not depend on the order of rows within a table.
//! - The **trailer** counts the rows and gives the SHA-256 (lowercase hex) of every byte
//!   before it, so that a file checks itself even without its [`SnapshotInfo`]. Nothing
//!   follows it.
//!
//! Why JSON lines: a node on SQLite must be able to bring up to date one on PostgreSQL or
//! MySQL, so the format is no backend's dump; a line is a row, so a snapshot is written and
//! read one row at a time; and it is text a person can read with `head` or `jq` when a node
//! refuses one. Numbers are written in the shortest form that reads back as the same value;
//! prices are read back exactly (see [`ProductLine`]), as serde_json's own float parser does
//! not (it is off by one unit in the last place for about one value in six).
//!
//! # Bounded memory
//! A database may hold millions of rows; neither side holds more than a page of them. The
//! writer reads each table in pages of [`PAGE_ROWS`] rows by primary key (`WHERE key > last
//! ORDER BY key LIMIT n`: as fast on the last page as on the first, unlike `OFFSET`), inside
//! one read transaction that sees one state throughout: a SQLite read transaction, and
//! `REPEATABLE READ` on PostgreSQL and MySQL, whose sessions otherwise read each statement's
//! own latest commits. The loader inserts rows in batches of at most [`BATCH_ROWS`] rows and
//! [`BATCH_BYTES`] of text, and reads lines of at most [`MAX_LINE`] bytes.
//!
//! # What loading checks
//! Everything is loaded in one transaction, which first takes the `meta` row's lock as every
//! apply does, deletes every row of the replicated tables, inserts the snapshot's rows and
//! writes the `meta` row last. Any error rolls it all back: the store is left as it was. A
//! snapshot is refused, naming the line where it shows, when it is of another format or
//! version, a line is not JSON of the expected shape or not UTF-8, a row is of an unknown
//! table or out of the order of tables, the database refuses a row (a duplicate key, say),
//! the trailer is missing (a truncated file), counts other rows or has another checksum, or
//! anything follows it. [`load_file`] first checks the file's size and SHA-256 against its
//! [`SnapshotInfo`], and the header's index and term too.
//!
//! Outcomes of applied entries (`apply_outcomes`) are written as the table holds them, and
//! loaded only into a store that keeps them (a database that nodes may share): a node's own
//! database ([`Store::private`]) keeps none, never reads them, and would never prune them.

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::proto::auth::hex;
#[cfg(any(feature = "postgres", feature = "mysql"))]
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::schema::{accounts, apply_outcomes, idempotency_keys, products, sessions, tasks, users};
use super::{
    lock_meta, read_meta, to_i64, write_meta, Account, DbConnection, IdempotencyRecord, Meta, OutcomeRecord, Product,
    Session, Store, StoreError, Task, User,
};

/// The `format` of a snapshot's header.
pub const FORMAT: &str = "labctl-snapshot";
/// The version of the format this build writes and reads.
pub const VERSION: u32 = 1;
/// The replicated tables in the order a snapshot holds them; deleted in the reverse order.
pub const TABLES: [&str; 7] =
    ["idempotency_keys", "products", "users", "tasks", "apply_outcomes", "accounts", "sessions"];
/// Rows read by one query when writing.
pub const PAGE_ROWS: i64 = 1_000;
/// Most rows inserted by one statement when loading: 500 products are 6,000 bound values, well
/// within every backend's limit (SQLite's is 32,766).
pub const BATCH_ROWS: usize = 500;
/// Most bytes of row text gathered into one insert when loading, whatever the rows' count.
pub const BATCH_BYTES: usize = 4 << 20;
/// The longest line a snapshot may have. The longest row is far shorter: a text is at most
/// 10,000 bytes, and a row holds a few of them, escaped once or twice.
pub const MAX_LINE: u64 = 16 << 20;

/// What a snapshot holds and how to check it: what travels beside the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The last log index applied in the state the snapshot holds (`meta.last_index`).
    pub index: u64,
    /// The term of that entry (`meta.last_term`).
    pub term: u64,
    /// The file's length in bytes.
    pub size: u64,
    /// The SHA-256 of all of the file's bytes, lowercase hex.
    pub sha256: String,
}

impl Store {
    /// Writes a consistent snapshot of everything applied (every replicated table, the meta
    /// row with its counters, and the recorded apply outcomes) to `out`, from one read
    /// transaction; returns the index and term it holds. `out` is written a line at a time:
    /// give it a buffer ([`write_file`] does).
    pub fn write_snapshot(&mut self, out: &mut dyn Write) -> Result<(u64, u64), StoreError> {
        // MySQL takes the isolation level of a transaction before it begins, PostgreSQL as
        // its first statement.
        #[cfg(feature = "mysql")]
        if let DbConnection::Mysql(c) = &mut self.conn {
            c.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
        }
        self.conn.transaction(|c| {
            #[cfg(feature = "postgres")]
            if let DbConnection::Postgres(c) = &mut *c {
                c.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
            }
            let m = read_meta(c)?;
            let (index, term) = (m.last_index as u64, m.last_term as u64);
            let mut lines = LineWriter::new(out);
            lines.line(&Header {
                format: FORMAT.into(),
                version: VERSION,
                index,
                term,
                next_product_id: m.next_product_id,
                next_user_id: m.next_user_id,
                next_task_id: m.next_task_id,
            })?;
            for table in tables(true).iter_mut() {
                table.write_rows(c, &mut lines)?;
            }
            lines.finish()?;
            Ok((index, term))
        })
    }

    /// Replaces the whole replicated state by the snapshot read from `input`, in one
    /// transaction: on any error (bad format, failed check, database error) nothing changes.
    /// Returns the index and term it now holds.
    pub fn load_snapshot(&mut self, input: &mut dyn BufRead) -> Result<(u64, u64), StoreError> {
        self.load(input, None)
    }

    /// [`Store::load_snapshot`], checking also that the snapshot is the one `expected`
    /// announces: its header's index and term before anything is deleted, and the size and
    /// SHA-256 of everything read before the transaction commits.
    fn load(&mut self, input: &mut dyn BufRead, expected: Option<&SnapshotInfo>) -> Result<(u64, u64), StoreError> {
        let mut reader = LineReader::new(input);
        let header = reader.header()?;
        if let Some(info) = expected {
            if (header.index, header.term) != (info.index, info.term) {
                return Err(StoreError::SnapshotMismatch(format!(
                    "it holds index {} of term {}, where index {} of term {} was announced",
                    header.index, header.term, info.index, info.term
                )));
            }
        }
        let meta = Meta {
            last_index: to_i64(header.index)?,
            last_term: to_i64(header.term)?,
            next_product_id: header.next_product_id,
            next_user_id: header.next_user_id,
            next_task_id: header.next_task_id,
        };
        let keep_outcomes = self.keep_outcomes;
        // Accounts and sessions are replaced: the authentication caches must read them again.
        self.access.bump();
        let loaded = self.conn.transaction(|c| {
            lock_meta(c)?;
            let mut tables = tables(keep_outcomes);
            for table in tables.iter_mut().rev() {
                table.delete_all(c)?;
            }
            let mut current = 0;
            let trailer = loop {
                match reader.next()? {
                    Record::Row { line, offset, table, row } => {
                        let Some(i) = TABLES.iter().position(|t| *t == table) else {
                            return Err(format_error(line, format!("unknown table {table:?}")));
                        };
                        if i < current {
                            return Err(format_error(
                                line,
                                format!(
                                    "a row of {table} after those of {}: tables come in the order {TABLES:?}",
                                    TABLES[current]
                                ),
                            ));
                        }
                        if i > current {
                            tables[current].flush(c)?;
                            current = i;
                        }
                        tables[i].push(c, line, offset, row)?;
                    }
                    Record::End { line, trailer } => {
                        tables[current].flush(c)?;
                        break (line, trailer);
                    }
                }
            };
            reader.check_end(trailer)?;
            if let Some(info) = expected {
                reader.check_announced(info)?;
            }
            write_meta(c, &meta)?;
            Ok(())
        });
        self.access.bump();
        loaded?;
        Ok((header.index, header.term))
    }
}

/// Writes a snapshot of `store` to `path` atomically (a temporary file beside it, flushed with
/// fsync, renamed into place, the directory flushed), computing its SHA-256 as it writes.
/// The file is readable by its owner only: it holds password hashes. A file at `path` is
/// replaced; two snapshots must not be written to one path at once.
pub fn write_file(store: &mut Store, path: &Path) -> Result<SnapshotInfo, StoreError> {
    let temp = temporary_path(path)?;
    let written = write_temporary(store, &temp).and_then(|info| {
        fs::rename(&temp, path)
            .map_err(|e| io_error(format!("cannot rename {} to {}", temp.display(), path.display()), e))?;
        Ok(info)
    });
    let info = match written {
        Ok(info) => info,
        Err(e) => {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
    };
    // The rename is durable once the directory is flushed.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(format!("cannot flush the directory {}", dir.display()), e))?;
    Ok(info)
}

/// Checks that the file at `path` has `info`'s size and SHA-256 (before anything is loaded
/// from it).
pub fn verify_file(path: &Path, info: &SnapshotInfo) -> Result<(), StoreError> {
    let reading = |e| io_error(format!("cannot read the snapshot {}", path.display()), e);
    let mut file = File::open(path).map_err(reading)?;
    let size = file.metadata().map_err(reading)?.len();
    if size != info.size {
        return Err(StoreError::SnapshotMismatch(format!(
            "{} has {size} bytes, where {} were announced",
            path.display(),
            info.size
        )));
    }
    let mut hashed = HashingWriter::new(std::io::sink());
    let read = std::io::copy(&mut file, &mut hashed).map_err(reading)?;
    let sha256 = hex(&hashed.hasher.finalize());
    if read != info.size || !sha256.eq_ignore_ascii_case(&info.sha256) {
        return Err(StoreError::SnapshotMismatch(format!(
            "{} has the SHA-256 {sha256}, where {} was announced",
            path.display(),
            info.sha256
        )));
    }
    Ok(())
}

/// Loads the snapshot file at `path` into `store`, after checking it against `info` (size,
/// SHA-256, index and term in its header must match `info`). Nothing changes when a check
/// fails.
pub fn load_file(store: &mut Store, path: &Path, info: &SnapshotInfo) -> Result<(), StoreError> {
    verify_file(path, info)?;
    let file = File::open(path).map_err(|e| io_error(format!("cannot read the snapshot {}", path.display()), e))?;
    // The file is checked again as it is read, should it have changed since.
    store.load(&mut BufReader::with_capacity(1 << 16, file), Some(info))?;
    Ok(())
}

/// `path` with `.tmp` added to its file name: where [`write_file`] writes before renaming.
fn temporary_path(path: &Path) -> Result<PathBuf, StoreError> {
    let Some(name) = path.file_name() else {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name");
        return Err(io_error(format!("cannot write a snapshot to {}", path.display()), e));
    };
    let mut name = name.to_os_string();
    name.push(".tmp");
    Ok(path.with_file_name(name))
}

fn write_temporary(store: &mut Store, temp: &Path) -> Result<SnapshotInfo, StoreError> {
    let writing = |e| io_error(format!("cannot write the snapshot {}", temp.display()), e);
    // A file left by a write that failed goes first: one made anew has the mode below.
    let _ = fs::remove_file(temp);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(temp).map_err(writing)?;
    let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 16, file));
    let (index, term) = store.write_snapshot(&mut out)?;
    let HashingWriter { inner, hasher, size } = out;
    let file = inner.into_inner().map_err(|e| writing(e.into_error()))?;
    file.sync_all().map_err(writing)?;
    Ok(SnapshotInfo { index, term, size, sha256: hex(&hasher.finalize()) })
}

/// The first line of a snapshot.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    index: u64,
    term: u64,
    next_product_id: i64,
    next_user_id: i64,
    next_task_id: i64,
}

/// What any header says, whatever its version: read first, so that another format or version
/// is refused as such rather than as a line that does not parse.
#[derive(Deserialize)]
struct Format {
    format: Option<serde_json::Value>,
    version: Option<serde_json::Value>,
}

/// A row line as it is written.
#[derive(Serialize)]
struct RowLine<'a, T> {
    table: &'static str,
    row: &'a T,
}

/// The last line: the number of row lines and the SHA-256 of every byte before it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trailer {
    rows: u64,
    sha256: String,
}

/// A line after the header as it is read: a row (`table` and `row`) or the trailer (`end`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    #[serde(borrow, default)]
    table: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    row: Option<&'a RawValue>,
    #[serde(default)]
    end: Option<Trailer>,
}

/// A line after the header, read.
enum Record<'a> {
    /// `offset`: where the row starts in its line.
    Row {
        line: u64,
        offset: usize,
        table: Cow<'a, str>,
        row: &'a RawValue,
    },
    End {
        line: u64,
        trailer: Trailer,
    },
}

/// Writes a snapshot's lines, hashing every byte before the trailer and counting rows.
struct LineWriter<'w> {
    out: &'w mut dyn Write,
    hasher: Sha256,
    rows: u64,
    /// The line being written, kept for the next one.
    buf: Vec<u8>,
}

impl<'w> LineWriter<'w> {
    fn new(out: &'w mut dyn Write) -> LineWriter<'w> {
        LineWriter { out, hasher: Sha256::new(), rows: 0, buf: Vec::with_capacity(1024) }
    }

    fn line(&mut self, value: &impl Serialize) -> Result<(), StoreError> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, value)
            .map_err(|e| io_error("cannot encode a line of the snapshot".into(), e.into()))?;
        self.buf.push(b'\n');
        self.hasher.update(&self.buf);
        self.out.write_all(&self.buf).map_err(|e| io_error("cannot write the snapshot".into(), e))
    }

    fn row<T: Row>(&mut self, row: &T) -> Result<(), StoreError> {
        self.rows += 1;
        self.line(&RowLine { table: T::TABLE, row })
    }

    /// Writes the trailer and flushes.
    fn finish(mut self) -> Result<(), StoreError> {
        let sha256 = hex(&std::mem::take(&mut self.hasher).finalize());
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, &serde_json::json!({ "end": Trailer { rows: self.rows, sha256 } }))
            .map_err(|e| io_error("cannot encode the trailer of the snapshot".into(), e.into()))?;
        self.buf.push(b'\n');
        self.out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush())
            .map_err(|e| io_error("cannot write the snapshot".into(), e))
    }
}

/// Reads a snapshot's lines, counting them and the rows, and hashing what it reads.
struct LineReader<'r> {
    input: &'r mut dyn BufRead,
    /// The last line read, with its `\n`.
    buf: Vec<u8>,
    /// Its number, from 1.
    line: u64,
    rows: u64,
    /// Every byte before the trailer, and every byte.
    body: Sha256,
    whole: Sha256,
    size: u64,
}

impl<'r> LineReader<'r> {
    fn new(input: &'r mut dyn BufRead) -> LineReader<'r> {
        LineReader {
            input,
            buf: Vec::with_capacity(1024),
            line: 0,
            rows: 0,
            body: Sha256::new(),
            whole: Sha256::new(),
            size: 0,
        }
    }

    /// Reads the next line into `buf`; false at the end of the input.
    fn read_line(&mut self) -> Result<bool, StoreError> {
        self.buf.clear();
        let n = Read::take(&mut *self.input, MAX_LINE + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| io_error(format!("cannot read line {} of the snapshot", self.line + 1), e))?;
        if n == 0 {
            return Ok(false);
        }
        self.line += 1;
        self.size += n as u64;
        self.whole.update(&self.buf);
        if self.buf.last() != Some(&b'\n') {
            let reason = if n as u64 > MAX_LINE {
                format!("longer than {MAX_LINE} bytes")
            } else {
                "the snapshot ends within this line: it is truncated".into()
            };
            return Err(format_error(self.line, reason));
        }
        Ok(true)
    }

    /// Reads and checks the header.
    fn header(&mut self) -> Result<Header, StoreError> {
        if !self.read_line()? {
            return Err(format_error(1, "the snapshot is empty".into()));
        }
        let text = line_text(&self.buf, 1)?;
        let format: Format = serde_json::from_str(text)
            .map_err(|e| format_error(1, format!("not the header of a {FORMAT} file: {}", json_reason(&e, 0))))?;
        match format.format {
            Some(f) if f == FORMAT => {}
            Some(f) => return Err(format_error(1, format!("not a {FORMAT} file (its format is {f})"))),
            None => return Err(format_error(1, format!("not a {FORMAT} file (it names no format)"))),
        }
        match format.version {
            Some(v) if v == VERSION => {}
            Some(v) => {
                let reason = format!("format version {v} is not supported: this build reads version {VERSION}");
                return Err(format_error(1, reason));
            }
            None => return Err(format_error(1, "the header names no format version".into())),
        }
        let header: Header = serde_json::from_str(text)
            .map_err(|e| format_error(1, format!("not a header of version {VERSION}: {}", json_reason(&e, 0))))?;
        self.body.update(&self.buf);
        Ok(header)
    }

    /// Reads the next row or the trailer.
    fn next(&mut self) -> Result<Record<'_>, StoreError> {
        if !self.read_line()? {
            return Err(format_error(self.line + 1, "the snapshot ends without its trailer: it is truncated".into()));
        }
        let line = self.line;
        let text = line_text(&self.buf, line)?;
        let parsed: Line = serde_json::from_str(text)
            .map_err(|e| format_error(line, format!("not a row or a trailer: {}", json_reason(&e, 0))))?;
        match parsed {
            Line { table: Some(table), row: Some(row), end: None } => {
                self.body.update(&self.buf);
                self.rows += 1;
                // Where the row starts in the line, for the columns of errors found in it.
                let offset = row.get().as_ptr() as usize - text.as_ptr() as usize;
                Ok(Record::Row { line, offset, table, row })
            }
            Line { table: None, row: None, end: Some(trailer) } => Ok(Record::End { line, trailer }),
            _ => Err(format_error(line, "a line holds either a table and a row, or the trailer's end".into())),
        }
    }

    /// Checks the trailer read at `line` against what was read before it, and that nothing
    /// follows it.
    fn check_end(&mut self, (line, trailer): (u64, Trailer)) -> Result<(), StoreError> {
        if trailer.rows != self.rows {
            return Err(format_error(
                line,
                format!("the trailer counts {} rows, where the snapshot has {}", trailer.rows, self.rows),
            ));
        }
        let sha256 = hex(&std::mem::take(&mut self.body).finalize());
        if !trailer.sha256.eq_ignore_ascii_case(&sha256) {
            let reason = format!(
                "the snapshot is damaged: the lines before the trailer have the SHA-256 {sha256}, not {}",
                trailer.sha256
            );
            return Err(format_error(line, reason));
        }
        if self.read_line().or_else(|e| match e {
            // Anything, even a line cut short, is too much.
            StoreError::SnapshotFormat { .. } => Ok(true),
            e => Err(e),
        })? {
            return Err(format_error(line + 1, "nothing may follow the trailer".into()));
        }
        Ok(())
    }

    /// Checks the size and SHA-256 of everything read against `info`.
    fn check_announced(&mut self, info: &SnapshotInfo) -> Result<(), StoreError> {
        let sha256 = hex(&std::mem::take(&mut self.whole).finalize());
        if self.size != info.size || !sha256.eq_ignore_ascii_case(&info.sha256) {
            return Err(StoreError::SnapshotMismatch(format!(
                "it has {} bytes and the SHA-256 {sha256}, where {} bytes and {} were announced",
                self.size, info.size, info.sha256
            )));
        }
        Ok(())
    }
}

/// A row of one of the replicated tables, with the queries a snapshot needs of its table.
trait Row: Serialize + DeserializeOwned + Sized + 'static {
    /// The table's name, as in [`TABLES`].
    const TABLE: &'static str;
    /// The primary key.
    type Key;

    fn key(&self) -> Self::Key;
    /// Up to `limit` rows after `after` (from the first when none), in key order.
    fn page(c: &mut DbConnection, after: Option<Self::Key>, limit: i64) -> QueryResult<Vec<Self>>;
    /// Inserts `rows` with one statement.
    fn insert(c: &mut DbConnection, rows: &[Self]) -> QueryResult<usize>;
    fn delete_all(c: &mut DbConnection) -> QueryResult<usize>;

    /// A row from its JSON text.
    fn parse(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }
}

macro_rules! row {
    ($row:ty, $table:ident, $key:ident: $key_type:ty $(, parse $parse:path)?) => {
        impl Row for $row {
            const TABLE: &'static str = stringify!($table);
            type Key = $key_type;

            fn key(&self) -> $key_type {
                self.$key.clone()
            }

            fn page(c: &mut DbConnection, after: Option<$key_type>, limit: i64) -> QueryResult<Vec<Self>> {
                match after {
                    None => $table::table.select(<$row>::as_select()).order($table::$key).limit(limit).load(c),
                    Some(after) => $table::table
                        .filter($table::$key.gt(after))
                        .select(<$row>::as_select())
                        .order($table::$key)
                        .limit(limit)
                        .load(c),
                }
            }

            fn insert(c: &mut DbConnection, rows: &[Self]) -> QueryResult<usize> {
                // On the backend's own connection, which inserts a slice of rows as one statement.
                on_backend!(c, |c| diesel::insert_into($table::table).values(rows).execute(c))
            }

            fn delete_all(c: &mut DbConnection) -> QueryResult<usize> {
                diesel::delete($table::table).execute(c)
            }

            $(
                fn parse(text: &str) -> serde_json::Result<Self> {
                    $parse(text)
                }
            )?
        }
    };
}

row!(IdempotencyRecord, idempotency_keys, idem_key: String);
row!(Product, products, id: i64, parse parse_product);
row!(User, users, id: i64);
row!(Task, tasks, id: i64);
row!(OutcomeRecord, apply_outcomes, log_index: i64);
row!(Account, accounts, name: String);
row!(Session, sessions, token_hash: String);

/// What a snapshot does with one table: write its rows, delete them, gather rows read into
/// batches and insert them.
trait Table {
    fn write_rows(&mut self, c: &mut DbConnection, lines: &mut LineWriter<'_>) -> Result<(), StoreError>;
    fn delete_all(&mut self, c: &mut DbConnection) -> Result<(), StoreError>;
    /// Adds the row read on `line` from `offset` on, inserting the batch when it is full.
    fn push(&mut self, c: &mut DbConnection, line: u64, offset: usize, row: &RawValue) -> Result<(), StoreError>;
    /// Inserts the rows gathered.
    fn flush(&mut self, c: &mut DbConnection) -> Result<(), StoreError>;
}

/// A batch of rows of one table being loaded.
struct Rows<T> {
    pending: Vec<T>,
    /// The length of their text.
    bytes: usize,
    /// The lines they came from.
    lines: (u64, u64),
    /// Rows are checked but not inserted (apply outcomes in a store that keeps none).
    discard: bool,
}

impl<T: Row> Rows<T> {
    /// The table's part in a snapshot.
    fn table(discard: bool) -> Box<dyn Table> {
        Box::new(Rows::<T> { pending: Vec::new(), bytes: 0, lines: (0, 0), discard })
    }
}

impl<T: Row> Table for Rows<T> {
    fn write_rows(&mut self, c: &mut DbConnection, lines: &mut LineWriter<'_>) -> Result<(), StoreError> {
        let mut after = None;
        loop {
            let page = T::page(c, after, PAGE_ROWS)?;
            for row in &page {
                lines.row(row)?;
            }
            match page.last() {
                Some(last) if page.len() as i64 == PAGE_ROWS => after = Some(last.key()),
                _ => return Ok(()),
            }
        }
    }

    fn delete_all(&mut self, c: &mut DbConnection) -> Result<(), StoreError> {
        T::delete_all(c)?;
        Ok(())
    }

    fn push(&mut self, c: &mut DbConnection, line: u64, offset: usize, row: &RawValue) -> Result<(), StoreError> {
        let parsed = T::parse(row.get())
            .map_err(|e| format_error(line, format!("not a row of {}: {}", T::TABLE, json_reason(&e, offset))))?;
        if self.discard {
            return Ok(());
        }
        if self.pending.is_empty() {
            self.lines.0 = line;
        }
        self.lines.1 = line;
        self.bytes += row.get().len();
        self.pending.push(parsed);
        if self.pending.len() >= BATCH_ROWS || self.bytes >= BATCH_BYTES {
            self.flush(c)?;
        }
        Ok(())
    }

    fn flush(&mut self, c: &mut DbConnection) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        match T::insert(c, &self.pending) {
            Ok(_) => {}
            // What the rows break, rather than a failing database.
            Err(DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation
                | DatabaseErrorKind::ForeignKeyViolation
                | DatabaseErrorKind::NotNullViolation
                | DatabaseErrorKind::CheckViolation,
                info,
            )) => {
                let (first, last) = self.lines;
                return Err(format_error(
                    first,
                    format!(
                        "the database refuses the rows of {} on lines {first} to {last}: {}",
                        T::TABLE,
                        info.message()
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        self.pending.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// One [`Table`] for each of [`TABLES`], in that order.
fn tables(keep_outcomes: bool) -> [Box<dyn Table>; 7] {
    [
        Rows::<IdempotencyRecord>::table(false),
        Rows::<Product>::table(false),
        Rows::<User>::table(false),
        Rows::<Task>::table(false),
        Rows::<OutcomeRecord>::table(!keep_outcomes),
        Rows::<Account>::table(false),
        Rows::<Session>::table(false),
    ]
}

/// A [`Product`] as a snapshot line holds it, read with its prices exact.
///
/// serde_json reads a number into a float with a fast method that is off by one unit in the
/// last place for some values: about one in six of `price * 1.2` with two decimals, of the
/// kind `converted_price` holds. A node loading a snapshot would then hold other prices than
/// the node that wrote it. Prices are read here as their text and converted by Rust's own
/// parser, which is exact.
#[derive(Deserialize)]
#[serde(remote = "Product", deny_unknown_fields)]
struct ProductLine {
    id: i64,
    title: String,
    #[serde(deserialize_with = "exact_f64")]
    price: f64,
    currency: String,
    #[serde(deserialize_with = "exact_optional_f64")]
    converted_price: Option<f64>,
    converted_currency: Option<String>,
    availability: Option<String>,
    rating: Option<i32>,
    link: Option<String>,
    scraped_at: Option<String>,
    created_at: String,
    updated_at: String,
}

fn exact_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let text = <&RawValue>::deserialize(d)?;
    float(text.get()).map_err(D::Error::custom)
}

fn exact_optional_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Option::<&RawValue>::deserialize(d)?.map(|text| float(text.get())).transpose().map_err(D::Error::custom)
}

/// The finite number written as `text`, exactly.
fn float(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(format!("{text} is not a finite number")),
    }
}

/// Products are parsed by [`ProductLine`]; every other row by its own `Deserialize`.
fn parse_product(text: &str) -> serde_json::Result<Product> {
    ProductLine::deserialize(&mut serde_json::Deserializer::from_str(text))
}

/// `buf`, read as line `line`, without its `\n`.
fn line_text(buf: &[u8], line: u64) -> Result<&str, StoreError> {
    std::str::from_utf8(&buf[..buf.len() - 1]).map_err(|_| format_error(line, "not UTF-8 text".into()))
}

/// A serde_json error with its column in the snapshot's line: the error counts from `offset`
/// in the line (where the text it read starts), and its own line number is always 1.
fn json_reason(e: &serde_json::Error, offset: usize) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => format!("{} (column {})", &text[..at], offset + e.column()),
        None => text,
    }
}

fn format_error(line: u64, reason: String) -> StoreError {
    StoreError::SnapshotFormat { line, reason }
}

fn io_error(context: String, source: std::io::Error) -> StoreError {
    StoreError::Io { context, source }
}

/// A writer that hashes and counts what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> HashingWriter<W> {
        HashingWriter { inner, hasher: Sha256::new(), size: 0 }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(price: f64, converted: Option<f64>) -> Product {
        Product {
            id: 1,
            title: "t".into(),
            price,
            currency: "GBP".into(),
            converted_price: converted,
            converted_currency: converted.map(|_| "EUR".into()),
            availability: None,
            rating: None,
            link: None,
            scraped_at: None,
            created_at: "2026-12-06T10:00:00.000000Z".into(),
            updated_at: "2026-12-06T10:00:00.000000Z".into(),
        }
    }

    /// The reason for [`ProductLine`]: serde_json's own reading of what it wrote is not always
    /// the value it wrote; this one is.
    #[test]
    fn prices_read_back_to_the_bit() {
        let mut serde_json_differs = 0;
        for cents in 1..=2_000 {
            let price = f64::from(cents) / 100.0;
            let row = product(price, Some(price * 1.17));
            let text = serde_json::to_string(&row).unwrap();
            let read = parse_product(&text).unwrap();
            assert_eq!(read.price.to_bits(), row.price.to_bits(), "{text}");
            assert_eq!(read.converted_price.map(f64::to_bits), row.converted_price.map(f64::to_bits), "{text}");
            let by_serde_json: Product = serde_json::from_str(&text).unwrap();
            if by_serde_json.converted_price.map(f64::to_bits) != row.converted_price.map(f64::to_bits) {
                serde_json_differs += 1;
            }
        }
        assert!(serde_json_differs > 100, "serde_json reads {serde_json_differs} of 2,000 prices back otherwise");
        assert_eq!(parse_product(&serde_json::to_string(&product(0.0, None)).unwrap()).unwrap(), product(0.0, None));
        let huge = serde_json::to_string(&product(1.0, None)).unwrap().replace("\"price\":1.0", "\"price\":1e999");
        assert!(parse_product(&huge).unwrap_err().to_string().contains("1e999 is not a finite number"));
    }

    /// Rows with empty optional columns are inserted as one statement on SQLite too, not row by
    /// row (which diesel does for rows whose missing values it leaves to the column's default).
    #[test]
    fn a_batch_is_one_statement_on_sqlite() {
        use diesel::sqlite::Sqlite;
        let products = [product(1.0, None), product(2.0, Some(2.4))];
        let sql =
            diesel::debug_query::<Sqlite, _>(&diesel::insert_into(products::table).values(&products[..])).to_string();
        assert_eq!(sql.matches("INSERT").count(), 1, "{sql}");
        let keys = [IdempotencyRecord { idem_key: "k".into(), log_index: 1, outcome: "{}".into(), fingerprint: None }];
        let sql = diesel::debug_query::<Sqlite, _>(&diesel::insert_into(idempotency_keys::table).values(&keys[..]))
            .to_string();
        assert_eq!(sql.matches("INSERT").count(), 1, "{sql}");
    }

    /// The lines as the module's documentation shows them; the trailer's checksum is that of
    /// the bytes before it.
    #[test]
    fn a_snapshot_reads_as_documented() {
        let mut store = Store::open(":memory:").unwrap();
        let mut bytes = Vec::new();
        assert_eq!(store.write_snapshot(&mut bytes).unwrap(), (0, 0));
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        assert_eq!(
            lines[0],
            "{\"format\":\"labctl-snapshot\",\"version\":1,\"index\":0,\"term\":0,\"next_product_id\":1,\
             \"next_user_id\":1,\"next_task_id\":1}\n"
        );
        let sha256 = hex(&Sha256::digest(lines[0].as_bytes()));
        assert_eq!(lines[1], format!("{{\"end\":{{\"rows\":0,\"sha256\":\"{sha256}\"}}}}\n"));
        assert_eq!(lines.len(), 2);
    }

    /// A line without end is refused once it is longer than any row may be, before it fills
    /// the memory.
    #[test]
    fn an_endless_line_is_refused() {
        let mut store = Store::open(":memory:").unwrap();
        let mut header = Vec::new();
        store.write_snapshot(&mut header).unwrap();
        header.truncate(header.iter().position(|&b| b == b'\n').unwrap() + 1);
        let mut input = std::io::BufReader::new(header.chain(std::io::repeat(b' ').take(MAX_LINE + 100)));
        match store.load_snapshot(&mut input) {
            Err(StoreError::SnapshotFormat { line: 2, reason }) => assert!(reason.contains("longer than"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
