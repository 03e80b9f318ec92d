//! The replicated database of a node: committed Raft log entries carrying a [`Command`] are
//! applied here, in index order, and HTTP reads are answered from here.
//!
//! # Guarantees
//! - **Exactly once.** [`Store::apply`] runs in one transaction that first locks the `meta`
//!   row, skips the entry if its index is not above the last applied index, applies it and
//!   records the index. A crash between two entries, or several nodes sharing one database,
//!   never applies an entry twice.
//! - **Deterministic.** Ids come from counters in `meta` advanced inside that transaction,
//!   timestamps from the leader's clock in the command, and business errors (unknown id,
//!   duplicate email, unknown assignee, invalid field) are an [`ApplyOutcome::Rejected`] that
//!   changes nothing but the applied index. Every node applying the same log ends with the
//!   same rows, ids included.
//! - **Idempotency keys** are part of the replicated state: a repeated key returns the first
//!   outcome and changes nothing.
//! - **Referential integrity.** A task's assignee must exist (else 422); deleting a user
//!   unassigns their tasks (the foreign key is also `ON DELETE SET NULL`).
//!
//! # Backends
//! [`DbConnection`] is a `diesel::MultiConnection` enum; a backend is one variant, one
//! migrations directory (`migrations/<backend>/`) and one arm in [`Store::open`]. The URL picks
//! the backend: a path or `sqlite://PATH` is SQLite (bundled, always built);
//! `postgres://…` (or `postgresql://…`) is PostgreSQL with the cargo feature `postgres`, and
//! `mysql://…` is MySQL/MariaDB with the feature `mysql`. [`BACKENDS`] lists those of this build.
//!
//! # Shared-database mode
//! Several nodes may be given one PostgreSQL or MySQL database. Each applies the whole log;
//! the `meta` row lock taken first in every apply transaction makes them take turns, and the
//! index check under that lock makes the first one apply an entry and the others see
//! [`ApplyOutcome::AlreadyApplied`]. The outcome of each entry is kept by its log index, in
//! the same transaction, for the last [`OUTCOMES_KEPT`] entries: the node whose client waits
//! for an entry that another node applied reads the real answer with [`Store::outcome_of`].
//! Migrations at start are serialised by a database lock, so nodes may start together.
//!
//! # Snapshots
//! [`snapshot`] writes the whole replicated state at its last applied index to a file, and
//! replaces it by such a file, in one format whatever the backend: what lets the Raft log be
//! compacted, and a follower that fell behind the leader's compacted log catch up.

pub mod command;
mod fixed;
pub mod models;
pub mod own_file;
pub mod pool;
mod schema;

use chrono::{Datelike, NaiveDate};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use self::command::Rejection;
pub use self::command::{
    check_account_name, timestamp_text, AccountInput, ApplyOutcome, Command, Op, Priority, ProductInput, Reply, Role,
    Status, TaskInput, UserInput, MAX_IDEMPOTENCY_KEY,
};
pub use self::models::{
    Account, AccountView, Applied, Dump, IdempotencyRecord, Meta, OutcomeRecord, Page, PageRequest, Pagination,
    Product, ProductQuery, Session, Task, TaskQuery, TaskStats, User, DEFAULT_LIMIT, MAX_LIMIT,
};
use self::schema::{accounts, apply_outcomes, idempotency_keys, meta, products, sessions, tasks, users};
pub use self::snapshot::SnapshotInfo;

/// Outcomes of this many most recent log entries are kept (see [`Store::outcome_of`]).
pub const OUTCOMES_KEPT: u64 = 10_000;
/// Older outcomes are deleted when an entry whose index is a multiple of this is applied.
const OUTCOMES_PRUNED_EVERY: u64 = 1_000;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
#[cfg(feature = "postgres")]
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
#[cfg(feature = "mysql")]
const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");

/// The database backends of this build, by URL scheme.
pub const BACKENDS: &[&str] = &[
    "sqlite",
    #[cfg(feature = "postgres")]
    "postgres",
    #[cfg(feature = "mysql")]
    "mysql",
];

/// A connection to one of the supported databases.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Sqlite(diesel::SqliteConnection),
    #[cfg(feature = "postgres")]
    Postgres(diesel::PgConnection),
    #[cfg(feature = "mysql")]
    Mysql(diesel::MysqlConnection),
}

/// Runs `$body` with `$c` bound to the backend's own connection inside `$conn` (a
/// `&mut DbConnection`). A query through the `MultiConnection` enum is wrapped in a type that
/// has no static query id, so diesel writes its SQL text again on every run to look up the
/// prepared statement and once more to bind its values; on the backend's connection the
/// statement is found by its type. For the statements that every read and every applied entry
/// run.
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            DbConnection::Sqlite($c) => $body,
            #[cfg(feature = "postgres")]
            DbConnection::Postgres($c) => $body,
            #[cfg(feature = "mysql")]
            DbConnection::Mysql($c) => $body,
        }
    };
}

// Declared after `on_backend!`, which it uses.
pub mod snapshot;

/// Errors of the database itself and of snapshots; business errors of a write are an
/// [`ApplyOutcome`] instead.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {url:?}: this build knows {}", known_urls())]
    UnsupportedUrl { url: String },
    #[error("cannot connect to the database")]
    Connect(#[from] diesel::ConnectionError),
    #[error("cannot migrate the database: {0}")]
    Migration(String),
    #[error("database error")]
    Database(#[from] DieselError),
    #[error("cannot encode or decode a stored outcome")]
    Json(#[from] serde_json::Error),
    #[error("log index or term {0} is beyond what the database stores")]
    OutOfRange(u64),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("the database has no meta row: it was not created by this program")]
    NoMeta,
    #[error("no database connection became free: {0}")]
    Pool(String),
    /// Reading or writing a file (a snapshot); `context` says which and what.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A snapshot that is not one, or is damaged: `line` is its line (from 1) where that shows.
    #[error("snapshot line {line}: {reason}")]
    SnapshotFormat { line: u64, reason: String },
    /// A snapshot other than the one announced (its size, SHA-256, index or term).
    #[error("the snapshot is not the one announced: {0}")]
    SnapshotMismatch(String),
    #[error(
        "the database's encoding is {found}, which cannot hold every character a client may send; \
         labctl needs a UTF8 database (CREATE DATABASE … ENCODING 'UTF8' TEMPLATE template0)"
    )]
    Encoding { found: String },
}

/// The URL that opens the SQLite file at `path` for this process alone: through SQLite's
/// `unix-excl` VFS, which takes one exclusive lock on the file for the process when it is first
/// used and keeps the WAL index in the process's memory instead of a shared `-shm` file. The
/// connections of the process then lock each other in memory only: a read transaction takes no
/// `fcntl` lock and no process-wide mutex around one, which with two HTTP workers reading made
/// a third of the CPU time of a read by id. Another process cannot open the file meanwhile
/// (`database is locked`). For a node's own file, which no other process is to touch.
pub fn exclusive_sqlite_url(path: &str) -> String {
    let mut url = String::from("file:");
    for c in path.chars() {
        match c {
            '%' => url.push_str("%25"),
            '?' => url.push_str("%3f"),
            '#' => url.push_str("%23"),
            c => url.push(c),
        }
    }
    url.push_str("?vfs=unix-excl");
    url
}

/// Whether `url` names a SQLite database in memory (`:memory:`, `sqlite://:memory:`,
/// `file::memory:`, `…?mode=memory`): one that lives only as long as its connection, for that
/// connection alone.
pub fn is_sqlite_in_memory(url: &str) -> bool {
    let url = url.trim();
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    path == ":memory:"
        || path.starts_with("file::memory:")
        || (path.starts_with("file:") && path.contains("mode=memory"))
}

impl StoreError {
    /// The error with its causes, `: `-separated (`database error: relation "products" does
    /// not exist`), for logs and `/readyz`.
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }
}

/// The replicated database of one node.
pub struct Store {
    conn: DbConnection,
    /// Whether the outcome of each applied entry is kept for other nodes (see
    /// [`Store::private`]).
    keep_outcomes: bool,
    /// Moved around every transaction that changes accounts or sessions.
    access: AccessEpoch,
}

/// A counter that moves before and after every transaction applying an entry that changes
/// accounts or sessions ([`Op::changes_access`]): the authentication caches of the HTTP
/// handlers keep an answer only while it has not moved since they read the database. Moving
/// it on both sides covers a read that runs while such a transaction is open (it reads the old
/// rows, and the counter moves again at the commit or rollback).
#[derive(Debug, Clone, Default)]
pub struct AccessEpoch {
    counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Set while a transaction left open ([`Store::apply_open`]) changes access.
    open: bool,
}

impl AccessEpoch {
    /// The counter's value now.
    pub fn current(&self) -> u64 {
        self.counter.load(std::sync::atomic::Ordering::Acquire)
    }

    fn bump(&self) {
        self.counter.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend()).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database named by `url` and runs pending migrations.
    /// `url` is a file path, `:memory:`, `sqlite://PATH`, or — when built with the feature —
    /// `postgres://…` / `mysql://…` (the database must exist; its tables are created here).
    pub fn open(url: &str) -> Result<Store, StoreError> {
        let mut store = Store::connect(url)?;
        store.check_encoding()?;
        store.migrate()?;
        Ok(store)
    }

    /// Connects to the database named by `url` as [`Store::open`] does, without migrating:
    /// for further connections to a database opened before.
    ///
    /// A SQLite file is put in WAL mode, so that readers run while the applier writes, with
    /// `synchronous = NORMAL`: a commit is not flushed to disk on its own. That is safe here
    /// because the database only ever holds committed log entries, and the Raft log is fsync'd
    /// before any of them is acknowledged: if a power loss takes the last transactions, SQLite
    /// comes back consistent at an earlier applied index, and the node applies the rest of the
    /// log again on start. (A process crash loses nothing: the WAL is in the OS's hands.) A
    /// node's own file goes further, without flushes at all (see [`own_file`]).
    pub fn connect(url: &str) -> Result<Store, StoreError> {
        let url = url.trim();
        #[cfg(feature = "postgres")]
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Store {
                conn: DbConnection::Postgres(diesel::PgConnection::establish(url)?),
                keep_outcomes: true,
                access: AccessEpoch::default(),
            });
        }
        #[cfg(feature = "mysql")]
        if url.starts_with("mysql://") {
            let mut conn = diesel::MysqlConnection::establish(url)?;
            // READ COMMITTED: after waiting for the meta row lock, an applier reads what the node
            // before it committed, whatever it read earlier in the transaction.
            conn.batch_execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")?;
            return Ok(Store { conn: DbConnection::Mysql(conn), keep_outcomes: true, access: AccessEpoch::default() });
        }
        let sqlite_path = if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            path
        } else if url.contains("://") || url.is_empty() {
            return Err(StoreError::UnsupportedUrl { url: url.to_string() });
        } else {
            url
        };
        if sqlite_path.is_empty() {
            return Err(StoreError::UnsupportedUrl { url: url.to_string() });
        }
        sqlite_plan_once();
        let mut conn = diesel::SqliteConnection::establish(sqlite_path)?;
        // The busy timeout makes writers sharing one file wait for each other instead of failing.
        conn.batch_execute("PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;")?;
        if sqlite_path != ":memory:" {
            use_wal(&mut conn)?;
            conn.batch_execute("PRAGMA synchronous = NORMAL; PRAGMA mmap_size = 268435456;")?;
        }
        Ok(Store { conn: DbConnection::Sqlite(conn), keep_outcomes: true, access: AccessEpoch::default() })
    }

    /// Marks the database as this node's alone: no other node applies entries to it, so no
    /// other node's client waits for an outcome recorded here, and the outcome of each entry
    /// (a JSON text and a row per entry in `apply_outcomes`) is not kept. A node's own default
    /// SQLite file is private; a database named by URL may be shared, and keeps outcomes.
    pub fn private(mut self) -> Store {
        self.keep_outcomes = false;
        self
    }

    /// The counter this store moves around changes of accounts and sessions, to share with
    /// the caches that read them elsewhere.
    pub fn access_epoch(&self) -> AccessEpoch {
        AccessEpoch { counter: self.access.counter.clone(), open: false }
    }

    /// Stops flushing a SQLite file at commits and checkpoints (`synchronous = OFF`): for a
    /// node's own file only, which is rebuilt from the Raft log if the machine restarts under it
    /// (see [`own_file`]). No effect on a database server.
    pub fn without_flushes(&mut self) -> Result<(), StoreError> {
        match &mut self.conn {
            DbConnection::Sqlite(conn) => Ok(conn.batch_execute("PRAGMA synchronous = OFF;")?),
            // A database server flushes as it is configured to.
            #[allow(unreachable_patterns)]
            _ => Ok(()),
        }
    }

    /// Flushes again from here on (`synchronous = NORMAL`) and checkpoints the WAL into the
    /// file, flushing both: after this, the file on disk holds everything applied, whichever
    /// connection closes last. For a normal stop after [`Store::without_flushes`].
    pub fn flush_to_disk(&mut self) -> Result<(), StoreError> {
        match &mut self.conn {
            DbConnection::Sqlite(conn) => {
                Ok(conn.batch_execute("PRAGMA synchronous = NORMAL; PRAGMA wal_checkpoint(TRUNCATE);")?)
            }
            // A database server flushes as it is configured to.
            #[allow(unreachable_patterns)]
            _ => Ok(()),
        }
    }

    /// A node's own file that must survive a reboot without being rebuilt from the log (see
    /// [`own_file`]): commits go to the WAL without flushes, and SQLite never checkpoints on
    /// its own (`wal_autocheckpoint = 0`): only [`Store::checkpoint_flushed`] writes the file.
    /// No effect on a database server.
    pub fn checkpointed(&mut self) -> Result<(), StoreError> {
        match &mut self.conn {
            DbConnection::Sqlite(conn) => {
                Ok(conn.batch_execute("PRAGMA synchronous = OFF; PRAGMA wal_autocheckpoint = 0;")?)
            }
            #[allow(unreachable_patterns)]
            _ => Ok(()),
        }
    }

    /// Checkpoints the WAL into the file, flushing the WAL before and the file after, and
    /// starts the WAL again from its beginning: true when the checkpoint was complete (a
    /// reader in the way, or a transaction left open on this store by [`Store::apply_open`],
    /// leaves it for the next time), and then everything applied is on the disk. Then commits
    /// go on without flushes. A database server's commits are on its disk already: true.
    ///
    /// The WAL keeps its length (`RESTART`, not `TRUNCATE`): later commits overwrite its blocks
    /// in place. A truncated WAL allocates its blocks again as it grows, and on ext4
    /// (`data=ordered`) every flush of the Raft log then waits for those new blocks to be
    /// written too: measured, a fifth to a quarter of the write rate under load.
    pub fn checkpoint_flushed(&mut self) -> Result<bool, StoreError> {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        #[derive(QueryableByName)]
        struct Checkpoint {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            busy: i32,
        }
        match &mut self.conn {
            DbConnection::Sqlite(conn) => {
                // SQLite changes neither setting inside a transaction.
                if AnsiTransactionManager::transaction_manager_status_mut(conn).transaction_depth()?.is_some() {
                    return Ok(false);
                }
                conn.batch_execute("PRAGMA synchronous = NORMAL;")?;
                let done = diesel::sql_query("PRAGMA wal_checkpoint(RESTART)").get_result::<Checkpoint>(conn);
                conn.batch_execute("PRAGMA synchronous = OFF;")?;
                Ok(done?.busy == 0)
            }
            #[allow(unreachable_patterns)]
            _ => Ok(true),
        }
    }

    /// Whether this is a node's own SQLite file ([`Store::private`]): no other process writes
    /// it, so a write never waits for a lock another node holds.
    pub fn is_own_file(&self) -> bool {
        !self.keep_outcomes && self.backend() == "sqlite"
    }

    /// Refuses a PostgreSQL database whose encoding is not UTF8 (LATIN1, say): a character
    /// outside it would fail its write in the database with an error that no check before
    /// could foresee, and the entry would stop the log. (MySQL's tables are made utf8mb4 by a
    /// migration; SQLite always stores UTF-8.)
    fn check_encoding(&mut self) -> Result<(), StoreError> {
        #[cfg(feature = "postgres")]
        if let DbConnection::Postgres(conn) = &mut self.conn {
            let found: String =
                diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>("current_setting('server_encoding')"))
                    .get_result(conn)?;
            if found != "UTF8" {
                return Err(StoreError::Encoding { found });
            }
        }
        Ok(())
    }

    /// Runs pending migrations, one node at a time when several share the database.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let migration = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Migration(e.to_string());
        match &mut self.conn {
            // Under the write lock: nodes sharing the file may start together; one migrates at a time.
            DbConnection::Sqlite(conn) => {
                conn.immediate_transaction(|c| c.run_pending_migrations(SQLITE_MIGRATIONS).map(drop).map_err(migration))
            }
            // The lock is the session's until unlocked (or the connection closes, should migrating fail).
            #[cfg(feature = "postgres")]
            DbConnection::Postgres(conn) => {
                conn.batch_execute("SELECT pg_advisory_lock(5586586)")?;
                let migrated = conn.run_pending_migrations(POSTGRES_MIGRATIONS).map(drop);
                conn.batch_execute("SELECT pg_advisory_unlock(5586586)")?;
                migrated.map_err(migration)
            }
            #[cfg(feature = "mysql")]
            DbConnection::Mysql(conn) => {
                conn.batch_execute("DO GET_LOCK('labctl_migrations', 600)")?;
                let migrated = conn.run_pending_migrations(MYSQL_MIGRATIONS).map(drop);
                conn.batch_execute("DO RELEASE_LOCK('labctl_migrations')")?;
                migrated.map_err(migration)
            }
        }
    }

    /// Checks that the connection still answers.
    pub fn ping(&mut self) -> Result<(), StoreError> {
        use diesel::r2d2::R2D2Connection;
        Ok(self.conn.ping()?)
    }

    /// True once the connection is known to be unusable (e.g. the server closed it).
    pub fn is_broken(&mut self) -> bool {
        use diesel::r2d2::R2D2Connection;
        self.conn.is_broken()
    }

    /// The backend this store runs on: one of [`BACKENDS`].
    pub fn backend(&self) -> &'static str {
        match self.conn {
            DbConnection::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            DbConnection::Postgres(_) => "postgres",
            #[cfg(feature = "mysql")]
            DbConnection::Mysql(_) => "mysql",
        }
    }

    /// Applies the log entry `index` of `term`, exactly once.
    pub fn apply(&mut self, index: u64, term: u64, cmd: &Command) -> Result<ApplyOutcome, StoreError> {
        let mut outcomes = self.apply_batch(std::slice::from_ref(&(index, term, cmd.clone())))?;
        Ok(outcomes.pop().expect("one outcome per entry"))
    }

    /// Applies consecutive log entries in one transaction; one outcome per entry. The meta
    /// row is locked and read once, and written once at the end.
    pub fn apply_batch(&mut self, entries: &[(u64, u64, Command)]) -> Result<Vec<ApplyOutcome>, StoreError> {
        let keep = self.keep_outcomes;
        let access = entries.iter().any(|(_, _, cmd)| cmd.op.changes_access());
        if access {
            self.access.bump();
        }
        let applied = self.conn.transaction(|c| apply_in_transaction(c, entries, keep));
        if access {
            self.access.bump();
        }
        applied
    }

    /// Applies entries as [`Store::apply_batch`] does but leaves the transaction open: what
    /// they answer is known, and nothing is visible to other connections until
    /// [`Store::commit_open`]; [`Store::rollback_open`] undoes it. Nothing else may run on
    /// this store in between.
    pub fn apply_open(&mut self, entries: &[(u64, u64, Command)]) -> Result<Vec<ApplyOutcome>, StoreError> {
        use diesel::connection::{Connection, TransactionManager};
        <DbConnection as Connection>::TransactionManager::begin_transaction(&mut self.conn)?;
        if entries.iter().any(|(_, _, cmd)| cmd.op.changes_access()) {
            self.access.bump();
            self.access.open = true;
        }
        let keep = self.keep_outcomes;
        let applied = apply_in_transaction(&mut self.conn, entries, keep);
        if applied.is_err() {
            let _ = self.rollback_open();
        }
        applied
    }

    /// Commits the transaction left open by [`Store::apply_open`].
    pub fn commit_open(&mut self) -> Result<(), StoreError> {
        use diesel::connection::{Connection, TransactionManager};
        let committed = <DbConnection as Connection>::TransactionManager::commit_transaction(&mut self.conn);
        if committed.is_ok() && std::mem::take(&mut self.access.open) {
            self.access.bump();
        }
        Ok(committed?)
    }

    /// Undoes the transaction left open by [`Store::apply_open`].
    pub fn rollback_open(&mut self) -> Result<(), StoreError> {
        use diesel::connection::{Connection, TransactionManager};
        let rolled_back = <DbConnection as Connection>::TransactionManager::rollback_transaction(&mut self.conn);
        if std::mem::take(&mut self.access.open) {
            self.access.bump();
        }
        Ok(rolled_back?)
    }

    /// Records a log entry that carries no command (e.g. a leader's no-op) as applied.
    pub fn skip(&mut self, index: u64, term: u64) -> Result<bool, StoreError> {
        self.conn.transaction(|c| {
            let mut m = lock_meta(c)?;
            if to_i64(index)? <= m.last_index {
                return Ok(false);
            }
            m.last_index = to_i64(index)?;
            m.last_term = to_i64(term)?;
            write_meta(c, &m)?;
            Ok(true)
        })
    }

    /// What applying entry `index` answered, if it is among the last [`OUTCOMES_KEPT`]
    /// applied. With a shared database, the answer for a client whose write another node
    /// applied first.
    pub fn outcome_of(&mut self, index: u64) -> Result<Option<ApplyOutcome>, StoreError> {
        let stored: Option<String> = apply_outcomes::table
            .find(to_i64(index)?)
            .select(apply_outcomes::outcome)
            .first(&mut self.conn)
            .optional()?;
        Ok(stored.map(|s| serde_json::from_str(&s)).transpose()?)
    }

    /// A cheap query that needs the database and its tables: for readiness checks.
    pub fn check_tables(&mut self) -> Result<(), StoreError> {
        read_meta(&mut self.conn).map(drop)
    }

    /// The last log entry applied to this database.
    pub fn last_applied(&mut self) -> Result<Applied, StoreError> {
        let m = read_meta(&mut self.conn)?;
        Ok(Applied { index: m.last_index as u64, term: m.last_term as u64 })
    }

    pub fn get_product(&mut self, id: i64) -> Result<Option<Product>, StoreError> {
        Ok(on_backend!(&mut self.conn, |c| products::table.find(id).select(Product::as_select()).first(c).optional())?)
    }

    /// Products in id order, filtered by price (inclusive bounds).
    pub fn list_products(&mut self, q: &ProductQuery) -> Result<Page<Product>, StoreError> {
        for (name, bound) in [("min_price", q.min_price), ("max_price", q.max_price)] {
            if bound.is_some_and(|b| !b.is_finite()) {
                return Err(StoreError::InvalidQuery(format!("{name} must be a finite number")));
            }
        }
        let (offset, limit) = q.page.bounded();
        let (total, data) = on_backend!(&mut self.conn, |c| {
            let filtered = || {
                let mut query = products::table.into_boxed();
                if let Some(min) = q.min_price {
                    query = query.filter(products::price.ge(min));
                }
                if let Some(max) = q.max_price {
                    query = query.filter(products::price.le(max));
                }
                query
            };
            let total: i64 = filtered().count().get_result(c)?;
            let data =
                filtered().select(Product::as_select()).order(products::id).offset(offset).limit(limit).load(c)?;
            (total, data)
        });
        Ok(Page::new(data, total, offset, limit))
    }

    pub fn get_user(&mut self, id: i64) -> Result<Option<User>, StoreError> {
        Ok(on_backend!(&mut self.conn, |c| users::table.find(id).select(User::as_select()).first(c).optional())?)
    }

    /// Users in id order.
    pub fn list_users(&mut self, page: PageRequest) -> Result<Page<User>, StoreError> {
        let (offset, limit) = page.bounded();
        let (total, data) = on_backend!(&mut self.conn, |c| {
            let total: i64 = users::table.count().get_result(c)?;
            (total, users::table.select(User::as_select()).order(users::id).offset(offset).limit(limit).load(c)?)
        });
        Ok(Page::new(data, total, offset, limit))
    }

    pub fn get_task(&mut self, id: i64) -> Result<Option<Task>, StoreError> {
        Ok(on_backend!(&mut self.conn, |c| tasks::table.find(id).select(Task::as_select()).first(c).optional())?)
    }

    /// Tasks in id order, filtered by status, priority and assignee.
    pub fn list_tasks(&mut self, q: &TaskQuery) -> Result<Page<Task>, StoreError> {
        let (offset, limit) = q.page.bounded();
        let (total, data) = on_backend!(&mut self.conn, |c| {
            let filtered = || {
                let mut query = tasks::table.into_boxed();
                if let Some(s) = q.status {
                    query = query.filter(tasks::status.eq(s.as_str()));
                }
                if let Some(p) = q.priority {
                    query = query.filter(tasks::priority.eq(p.as_str()));
                }
                if let Some(a) = q.assignee {
                    query = query.filter(tasks::assignee.eq(a));
                }
                query
            };
            let total: i64 = filtered().count().get_result(c)?;
            (total, filtered().select(Task::as_select()).order(tasks::id).offset(offset).limit(limit).load(c)?)
        });
        Ok(Page::new(data, total, offset, limit))
    }

    /// Task counts by status and priority; overdue: not done and due before `today`.
    pub fn task_stats(&mut self, today: NaiveDate) -> Result<TaskStats, StoreError> {
        let by_status: Vec<(String, i64)> = tasks::table
            .group_by(tasks::status)
            .select((tasks::status, diesel::dsl::count_star()))
            .load(&mut self.conn)?;
        let by_priority: Vec<(String, i64)> = tasks::table
            .group_by(tasks::priority)
            .select((tasks::priority, diesel::dsl::count_star()))
            .load(&mut self.conn)?;
        let overdue: i64 = tasks::table
            .filter(tasks::status.ne(Status::Done.as_str()))
            .filter(tasks::due_date.lt(today.format("%Y-%m-%d").to_string()))
            .count()
            .get_result(&mut self.conn)?;
        let mut stats = TaskStats {
            total: by_status.iter().map(|(_, n)| *n as u64).sum(),
            by_status: Status::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect(),
            by_priority: Priority::ALL.iter().map(|p| (p.as_str().to_string(), 0)).collect(),
            overdue: overdue as u64,
        };
        for (s, n) in by_status {
            stats.by_status.insert(s, n as u64);
        }
        for (p, n) in by_priority {
            stats.by_priority.insert(p, n as u64);
        }
        Ok(stats)
    }

    /// The whole replicated state, for comparing nodes and for tests.
    pub fn dump(&mut self) -> Result<Dump, StoreError> {
        let c = &mut self.conn;
        Ok(Dump {
            meta: read_meta(c)?,
            products: products::table.select(Product::as_select()).order(products::id).load(c)?,
            users: users::table.select(User::as_select()).order(users::id).load(c)?,
            tasks: tasks::table.select(Task::as_select()).order(tasks::id).load(c)?,
            idempotency: idempotency_keys::table
                .select(IdempotencyRecord::as_select())
                .order(idempotency_keys::idem_key)
                .load(c)?,
            accounts: accounts::table.select(Account::as_select()).order(accounts::name).load(c)?,
            sessions: sessions::table.select(Session::as_select()).order(sessions::token_hash).load(c)?,
        })
    }

    /// The account called `name`.
    pub fn account(&mut self, name: &str) -> Result<Option<Account>, StoreError> {
        Ok(on_backend!(&mut self.conn, |c| accounts::table
            .find(name)
            .select(Account::as_select())
            .first(c)
            .optional())?)
    }

    /// Accounts by name, without their password hashes.
    pub fn list_accounts(&mut self, page: PageRequest) -> Result<Page<AccountView>, StoreError> {
        let (offset, limit) = page.bounded();
        let c = &mut self.conn;
        let total: i64 = accounts::table.count().get_result(c)?;
        let rows: Vec<Account> =
            accounts::table.select(Account::as_select()).order(accounts::name).offset(offset).limit(limit).load(c)?;
        Ok(Page::new(rows.iter().map(Account::view).collect(), total, offset, limit))
    }

    /// Whether any account is an admin.
    pub fn has_admin(&mut self) -> Result<bool, StoreError> {
        Ok(admins(&mut self.conn)? > 0)
    }

    /// The session of the token whose SHA-256 (hex) is `token_hash`, with its account's role
    /// now; expired sessions are returned too (their expiry is the caller's to check).
    pub fn session(&mut self, token_hash: &str) -> Result<Option<(Session, String)>, StoreError> {
        Ok(on_backend!(&mut self.conn, |c| sessions::table
            .inner_join(accounts::table.on(accounts::name.eq(sessions::account)))
            .filter(sessions::token_hash.eq(token_hash))
            .select((Session::as_select(), accounts::role))
            .first(c)
            .optional())?)
    }
}

/// Makes every SQLite connection of this process plan each statement once.
///
/// SQLite compiles a statement again before it runs when a parameter that its plan may depend
/// on has been bound anew; SQLite 3.53 counts `LIMIT ?` among them, and diesel binds every
/// value on every run, so each `first()` and each page of a listing was compiled again from its
/// SQL text: a third of the CPU time of a read. The query planner stability guarantee (QPSG)
/// makes plans independent of bound values, so the prepared statements diesel caches are
/// reused. Set through an auto-extension, which SQLite calls for each new connection.
fn sqlite_plan_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: process-wide settings, taken only before SQLite initializes (otherwise it
        // answers SQLITE_MISUSE and changes nothing). Every connection is used by one thread
        // at a time (diesel's connections are not `Sync`), so SQLite's per-connection mutexes
        // are not needed; without memory statistics its allocator takes no global mutex.
        unsafe {
            libsqlite3_sys::sqlite3_config(libsqlite3_sys::SQLITE_CONFIG_MULTITHREAD);
            libsqlite3_sys::sqlite3_config(libsqlite3_sys::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int);
        }
        // SAFETY: registers a function with the signature SQLite expects; it only sets a flag
        // on the connection SQLite hands it.
        let rc = unsafe { libsqlite3_sys::sqlite3_auto_extension(Some(plan_once)) };
        if rc != libsqlite3_sys::SQLITE_OK {
            log::warn!("SQLite did not take the plan-once setting (code {rc}); reads will be slower");
        }
    });
}

unsafe extern "C" fn plan_once(
    db: *mut libsqlite3_sys::sqlite3,
    _error: *mut *mut std::ffi::c_char,
    _api: *const libsqlite3_sys::sqlite3_api_routines,
) -> std::ffi::c_int {
    // SAFETY: `db` is the connection being opened; the option takes an int and an out pointer
    // that may be null.
    unsafe {
        libsqlite3_sys::sqlite3_db_config(
            db,
            libsqlite3_sys::SQLITE_DBCONFIG_ENABLE_QPSG,
            1 as std::ffi::c_int,
            std::ptr::null_mut::<std::ffi::c_int>(),
        );
    }
    libsqlite3_sys::SQLITE_OK
}

/// Switching a file to WAL needs it to itself, and SQLite answers "locked" at once instead of
/// waiting; nodes sharing a file may start together, so wait here, as long as the busy timeout.
fn use_wal(conn: &mut diesel::SqliteConnection) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match conn.batch_execute("PRAGMA journal_mode = WAL;") {
            Err(DieselError::DatabaseError(_, info))
                if info.message().contains("locked") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            result => return Ok(result?),
        }
    }
}

fn known_urls() -> String {
    let mut known = vec!["SQLite (a file path or sqlite://PATH)"];
    if cfg!(feature = "postgres") {
        known.push("PostgreSQL (postgres://…)");
    }
    if cfg!(feature = "mysql") {
        known.push("MySQL/MariaDB (mysql://…)");
    }
    known.join(", ")
}

fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::OutOfRange(n))
}

/// The body of an apply transaction: the meta row locked and read once, each entry applied,
/// the meta row written once at the end.
fn apply_in_transaction(
    c: &mut DbConnection,
    entries: &[(u64, u64, Command)],
    keep: bool,
) -> Result<Vec<ApplyOutcome>, StoreError> {
    let mut m = lock_meta(c)?;
    let before = m.clone();
    let outcomes = entries
        .iter()
        .map(|(index, term, cmd)| apply_one(c, &mut m, *index, *term, cmd, keep))
        .collect::<Result<Vec<_>, _>>()?;
    if m != before {
        write_meta(c, &m)?;
    }
    Ok(outcomes)
}

fn read_meta(c: &mut DbConnection) -> Result<Meta, StoreError> {
    on_backend!(c, |c| meta::table.find(1).select(Meta::as_select()).first(c).optional())?.ok_or(StoreError::NoMeta)
}

/// Reads the meta row after writing it, so that the transaction holds the write lock (SQLite)
/// or the row lock (PostgreSQL, MySQL) from here on: appliers sharing a database take turns.
fn lock_meta(c: &mut DbConnection) -> Result<Meta, StoreError> {
    on_backend!(&mut *c, |c| fixed::LockMeta::new().execute(c))?;
    read_meta(c)
}

fn write_meta(c: &mut DbConnection, m: &Meta) -> Result<(), StoreError> {
    on_backend!(c, |c| fixed::WriteMeta::new(m).execute(c))?;
    Ok(())
}

/// Why an operation stopped: a deterministic refusal, or the database failing.
enum OpError {
    Rejected(Rejection),
    Database(DieselError),
}

impl From<DieselError> for OpError {
    fn from(e: DieselError) -> OpError {
        OpError::Database(e)
    }
}

impl From<Rejection> for OpError {
    fn from(r: Rejection) -> OpError {
        OpError::Rejected(r)
    }
}

/// Applies one entry inside the batch's transaction; `m` is the meta row, locked, which the
/// caller writes back. `keep_outcome`: record what it answered for the other nodes.
fn apply_one(
    c: &mut DbConnection,
    m: &mut Meta,
    index: u64,
    term: u64,
    cmd: &Command,
    keep_outcome: bool,
) -> Result<ApplyOutcome, StoreError> {
    let (index, term) = (to_i64(index)?, to_i64(term)?);
    if index <= m.last_index {
        return Ok(ApplyOutcome::AlreadyApplied);
    }
    m.last_index = index;
    m.last_term = term;
    let outcome = decide(c, index, cmd, m)?;
    if !keep_outcome {
        return Ok(outcome);
    }
    let text = serde_json::to_string(&outcome)?;
    on_backend!(&mut *c, |c| fixed::InsertOutcome::new(index, &text).execute(c))?;
    if (index as u64).is_multiple_of(OUTCOMES_PRUNED_EVERY) {
        let oldest_kept = index - OUTCOMES_KEPT as i64;
        diesel::delete(apply_outcomes::table.filter(apply_outcomes::log_index.le(oldest_kept))).execute(c)?;
    }
    Ok(outcome)
}

/// The outcome of applying `cmd` as entry `index`, inside its transaction; `m` is the meta
/// row to advance.
fn decide(c: &mut DbConnection, index: i64, cmd: &Command, m: &mut Meta) -> Result<ApplyOutcome, StoreError> {
    let key = cmd.idempotency_key.as_deref();
    let mut fingerprint = None;
    if let Some(key) = key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || key.contains(char::is_control) {
            return Ok(ApplyOutcome::Rejected {
                status: 422,
                error: format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes, without control characters"),
            });
        }
        let first_use: Option<(String, Option<String>)> = idempotency_keys::table
            .find(key)
            .select((idempotency_keys::outcome, idempotency_keys::fingerprint))
            .first(c)
            .optional()?;
        // What the key stands for: the operation, without the leader's clock, so that a retry
        // of the same request matches however much later it comes.
        let this = fingerprint_of(&cmd.op)?;
        match first_use {
            Some((_, Some(first))) if first != this => {
                return Ok(ApplyOutcome::Rejected {
                    status: 422,
                    error: format!("Idempotency-Key {key:?} was used for another request; use a new key for this one"),
                });
            }
            Some((outcome, _)) => return Ok(serde_json::from_str(&outcome)?),
            None => fingerprint = Some(this),
        }
    }

    // A refused operation leaves no used ids behind (`next` is dropped) and no partial rows:
    // it runs in a savepoint unless it writes with a single statement, which SQLite and MySQL
    // undo by themselves when it fails. (PostgreSQL aborts the whole transaction on any
    // failed statement, so there every operation gets its savepoint.)
    let mut next = m.clone();
    let result = if needs_savepoint(c, &cmd.op) {
        c.transaction(|c| run_op(c, cmd, &mut next))
    } else {
        run_op(c, cmd, &mut next)
    };
    let outcome = match result {
        Ok((status, reply)) => {
            *m = next;
            ApplyOutcome::Applied { status, reply }
        }
        Err(OpError::Rejected(r)) => ApplyOutcome::Rejected { status: r.status, error: r.error },
        // A constraint the checks in run_op missed: still a deterministic refusal.
        Err(OpError::Database(DieselError::DatabaseError(kind, info))) => match kind {
            DatabaseErrorKind::UniqueViolation => ApplyOutcome::Rejected { status: 409, error: info.message().into() },
            DatabaseErrorKind::ForeignKeyViolation | DatabaseErrorKind::CheckViolation => {
                ApplyOutcome::Rejected { status: 422, error: info.message().into() }
            }
            _ => return Err(DieselError::DatabaseError(kind, info).into()),
        },
        Err(OpError::Database(e)) => return Err(e.into()),
    };
    if let Some(key) = key {
        let record = IdempotencyRecord {
            idem_key: key.to_string(),
            log_index: index,
            outcome: serde_json::to_string(&outcome)?,
            fingerprint,
        };
        diesel::insert_into(idempotency_keys::table).values(&record).execute(c)?;
    }
    Ok(outcome)
}

/// SHA-256 (hex) of `op` as it is written in log entries: the same on every node and for
/// every retry of one request (an upload's multipart framing is not in it, only its rows).
///
/// A password hash is left out: its salt is new for every request, so that a retried
/// account write would never match its first. Such a key stands for the account and role.
fn fingerprint_of(op: &Op) -> Result<String, StoreError> {
    let mut op = op.clone();
    match &mut op {
        Op::CreateAccount { account } | Op::BootstrapAdmin { account } => account.password_hash.clear(),
        Op::UpdateAccount { password_hash: Some(hash), .. } => hash.clear(),
        _ => {}
    }
    Ok(crate::manager::sha256_hex(&serde_json::to_vec(&op)?))
}

/// Whether `op` must run in a savepoint to leave nothing behind when it is refused: all but
/// the operations that check everything first and then write one statement, and all of them
/// on a database that cannot go on after a failed statement.
fn needs_savepoint(c: &DbConnection, op: &Op) -> bool {
    #[cfg(feature = "postgres")]
    if matches!(c, DbConnection::Postgres(_)) {
        return true;
    }
    #[cfg(not(feature = "postgres"))]
    let _ = c;
    let one_statement = matches!(
        op,
        Op::CreateProduct { .. }
            | Op::UpdateProduct { .. }
            | Op::DeleteProduct { .. }
            | Op::CreateUser { .. }
            | Op::UpdateUser { .. }
            | Op::CreateTask { .. }
            | Op::UpdateTask { .. }
            | Op::DeleteTask { .. }
    );
    !one_statement
}

/// Inserts one product row, with a statement prepared once per connection.
fn insert_product(c: &mut DbConnection, row: &Product) -> Result<usize, DieselError> {
    on_backend!(c, |c| fixed::InsertProduct::new(row).execute(c))
}

fn take_id(counter: &mut i64) -> i64 {
    let id = *counter;
    *counter += 1;
    id
}

/// `x`, with negative zero made zero: SQLite stores -0.0 as 0.0 and PostgreSQL keeps it, so
/// every node stores 0.0, whatever its backend, and answers what it stores.
fn without_negative_zero(x: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else {
        x
    }
}

fn product_row(id: i64, p: &ProductInput, created_at: String, updated_at: String) -> Product {
    Product {
        id,
        title: p.title.trim().to_string(),
        price: without_negative_zero(p.price),
        currency: p.currency.clone(),
        converted_price: p.converted_price.map(without_negative_zero),
        converted_currency: p.converted_currency.clone(),
        availability: p.availability.clone(),
        rating: p.rating,
        link: p.link.clone(),
        scraped_at: p.scraped_at.as_ref().map(timestamp_text),
        created_at,
        updated_at,
    }
}

fn task_row(id: i64, t: &TaskInput, created_at: String, updated_at: String) -> Task {
    Task {
        id,
        title: t.title.trim().to_string(),
        description: t.description.clone(),
        due_date: t.due_date.map(|d| d.format("%Y-%m-%d").to_string()),
        status: t.status.as_str().to_string(),
        priority: t.priority.as_str().to_string(),
        assignee: t.assignee,
        created_at,
        updated_at,
    }
}

fn user_exists(c: &mut DbConnection, id: i64) -> Result<bool, DieselError> {
    Ok(users::table.find(id).select(users::id).first::<i64>(c).optional()?.is_some())
}

fn check_assignee(c: &mut DbConnection, assignee: Option<i64>) -> Result<(), OpError> {
    match assignee {
        Some(a) if !user_exists(c, a)? => Err(Rejection::invalid(format!("assignee: user {a} does not exist")).into()),
        _ => Ok(()),
    }
}

fn check_email_free(c: &mut DbConnection, email: &str, except: Option<i64>) -> Result<(), OpError> {
    let holder: Option<i64> = users::table.filter(users::email.eq(email)).select(users::id).first(c).optional()?;
    match holder {
        Some(h) if Some(h) != except => Err(Rejection::conflict(format!("email {email} is taken by user {h}")).into()),
        _ => Ok(()),
    }
}

/// Applies one operation; `m` holds the id counters to advance.
fn run_op(c: &mut DbConnection, cmd: &Command, m: &mut Meta) -> Result<(u16, Reply), OpError> {
    let now = timestamp_text(&cmd.at);
    match &cmd.op {
        Op::CreateProduct { product } => {
            product.validate()?;
            let row = product_row(take_id(&mut m.next_product_id), product, now.clone(), now);
            insert_product(c, &row)?;
            Ok((201, Reply::Product(Box::new(row))))
        }
        Op::UpdateProduct { id, product } => {
            product.validate()?;
            let old: Product = products::table
                .find(id)
                .select(Product::as_select())
                .first(c)
                .optional()?
                .ok_or_else(|| Rejection::not_found("product", *id))?;
            let row = product_row(*id, product, old.created_at, now);
            diesel::update(products::table.find(id)).set(&row).execute(c)?;
            Ok((200, Reply::Product(Box::new(row))))
        }
        Op::DeleteProduct { id } => match diesel::delete(products::table.find(id)).execute(c)? {
            0 => Err(Rejection::not_found("product", *id).into()),
            _ => Ok((200, Reply::Deleted { id: *id })),
        },
        Op::ImportProducts { items } => {
            if items.is_empty() {
                return Err(Rejection::invalid("an upload needs at least one product").into());
            }
            for (i, item) in items.iter().enumerate() {
                item.validate().map_err(|r| Rejection { status: r.status, error: format!("item {i}: {}", r.error) })?;
            }
            let rows: Vec<Product> = items
                .iter()
                .map(|p| product_row(take_id(&mut m.next_product_id), p, now.clone(), now.clone()))
                .collect();
            // One statement a row: multi-row INSERT is not portable across diesel's backends
            // (MultiConnection), and inside one transaction the difference is small.
            for row in &rows {
                insert_product(c, row)?;
            }
            let ids = [rows.first().map_or(0, |r| r.id), rows.last().map_or(0, |r| r.id)];
            Ok((201, Reply::Imported { imported: rows.len(), ids }))
        }
        Op::CreateUser { user } => {
            user.validate()?;
            let email = user.normalized_email();
            check_email_free(c, &email, None)?;
            let row =
                User { id: take_id(&mut m.next_user_id), name: user.name.trim().to_string(), email, created_at: now };
            diesel::insert_into(users::table).values(&row).execute(c)?;
            Ok((201, Reply::User(Box::new(row))))
        }
        Op::UpdateUser { id, user } => {
            user.validate()?;
            let old: User = users::table
                .find(id)
                .select(User::as_select())
                .first(c)
                .optional()?
                .ok_or_else(|| Rejection::not_found("user", *id))?;
            let email = user.normalized_email();
            check_email_free(c, &email, Some(*id))?;
            let row = User { id: *id, name: user.name.trim().to_string(), email, created_at: old.created_at };
            diesel::update(users::table.find(id)).set(&row).execute(c)?;
            Ok((200, Reply::User(Box::new(row))))
        }
        Op::DeleteUser { id } => {
            if !user_exists(c, *id)? {
                return Err(Rejection::not_found("user", *id).into());
            }
            diesel::update(tasks::table.filter(tasks::assignee.eq(id)))
                .set((tasks::assignee.eq(None::<i64>), tasks::updated_at.eq(&now)))
                .execute(c)?;
            diesel::delete(users::table.find(id)).execute(c)?;
            Ok((200, Reply::Deleted { id: *id }))
        }
        Op::CreateTask { task } => {
            task.validate()?;
            check_assignee(c, task.assignee)?;
            let row = task_row(take_id(&mut m.next_task_id), task, now.clone(), now);
            diesel::insert_into(tasks::table).values(&row).execute(c)?;
            Ok((201, Reply::Task(Box::new(row))))
        }
        Op::UpdateTask { id, task } => {
            task.validate()?;
            let old: Task = tasks::table
                .find(id)
                .select(Task::as_select())
                .first(c)
                .optional()?
                .ok_or_else(|| Rejection::not_found("task", *id))?;
            check_assignee(c, task.assignee)?;
            let row = task_row(*id, task, old.created_at, now);
            diesel::update(tasks::table.find(id)).set(&row).execute(c)?;
            Ok((200, Reply::Task(Box::new(row))))
        }
        Op::DeleteTask { id } => match diesel::delete(tasks::table.find(id)).execute(c)? {
            0 => Err(Rejection::not_found("task", *id).into()),
            _ => Ok((200, Reply::Deleted { id: *id })),
        },
        Op::CreateAccount { account } => {
            account.validate()?;
            if find_account(c, &account.name)?.is_some() {
                return Err(Rejection::conflict(format!("account {:?} exists", account.name)).into());
            }
            Ok((201, Reply::Account(Box::new(insert_account(c, account, now)?))))
        }
        Op::BootstrapAdmin { account } => {
            account.validate()?;
            if account.role != Role::Admin {
                return Err(Rejection::invalid("the first account is an admin").into());
            }
            if admins(c)? > 0 {
                return Err(Rejection::conflict("an admin exists already").into());
            }
            // An account of that name with another role becomes the admin.
            diesel::delete(accounts::table.find(&account.name)).execute(c)?;
            Ok((201, Reply::Account(Box::new(insert_account(c, account, now)?))))
        }
        Op::UpdateAccount { name, role, password_hash } => {
            let mut row = find_account(c, name)?.ok_or_else(|| Rejection::not_found_named("account", name))?;
            if let Some(hash) = password_hash {
                command::check_password_hash(hash)?;
                row.password_hash = hash.clone();
            }
            if let Some(role) = role {
                if row.role == Role::Admin.as_str() && *role != Role::Admin && admins(c)? <= 1 {
                    return Err(Rejection::conflict(format!("{name} is the last admin")).into());
                }
                row.role = role.as_str().to_string();
            }
            row.updated_at = now;
            diesel::update(accounts::table.find(name)).set(&row).execute(c)?;
            Ok((200, Reply::Account(Box::new(row.view()))))
        }
        Op::DeleteAccount { name } => {
            let row = find_account(c, name)?.ok_or_else(|| Rejection::not_found_named("account", name))?;
            if row.role == Role::Admin.as_str() && admins(c)? <= 1 {
                return Err(Rejection::conflict(format!("{name} is the last admin")).into());
            }
            diesel::delete(sessions::table.filter(sessions::account.eq(name))).execute(c)?;
            diesel::delete(accounts::table.find(name)).execute(c)?;
            Ok((200, Reply::Account(Box::new(row.view()))))
        }
        Op::Login { token_hash, account, expires_at } => {
            command::check_token_hash(token_hash)?;
            command::check_year("expires_at", expires_at.year())?;
            // Expired sessions go, by the leader's clock in the entry: the same rows everywhere.
            diesel::delete(sessions::table.filter(sessions::expires_at.lt(&now))).execute(c)?;
            // The account may have gone between the password check and this entry.
            let row = find_account(c, account)?
                .ok_or_else(|| Rejection::unauthorized(format!("account {account:?} does not exist")))?;
            let session = Session {
                token_hash: token_hash.clone(),
                account: account.clone(),
                expires_at: timestamp_text(expires_at),
                created_at: now,
            };
            diesel::insert_into(sessions::table).values(&session).execute(c)?;
            Ok((201, Reply::Session { account: row.name, role: row.role, expires_at: session.expires_at }))
        }
        Op::Logout { token_hash } => {
            diesel::delete(sessions::table.find(token_hash)).execute(c)?;
            Ok((200, Reply::LoggedOut))
        }
    }
}

fn find_account(c: &mut DbConnection, name: &str) -> Result<Option<Account>, DieselError> {
    accounts::table.find(name).select(Account::as_select()).first(c).optional()
}

fn admins(c: &mut DbConnection) -> Result<i64, DieselError> {
    accounts::table.filter(accounts::role.eq(Role::Admin.as_str())).count().get_result(c)
}

fn insert_account(c: &mut DbConnection, account: &AccountInput, now: String) -> Result<AccountView, DieselError> {
    let row = Account {
        name: account.name.clone(),
        role: account.role.as_str().to_string(),
        password_hash: account.password_hash.clone(),
        created_at: now.clone(),
        updated_at: now,
    };
    diesel::insert_into(accounts::table).values(&row).execute(c)?;
    Ok(row.view())
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::migration::MigrationSource;
    use diesel::sqlite::Sqlite;

    /// The names of the SQLite indexes on `table` that SQLite made itself (for a PRIMARY KEY
    /// that is not the rowid, or a UNIQUE column).
    fn automatic_indexes(c: &mut diesel::SqliteConnection, table: &str) -> Vec<String> {
        #[derive(QueryableByName)]
        struct Name {
            #[diesel(sql_type = diesel::sql_types::Text)]
            name: String,
        }
        diesel::sql_query(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND name LIKE 'sqlite_autoindex_%' \
             ORDER BY name",
        )
        .bind::<diesel::sql_types::Text, _>(table)
        .load::<Name>(c)
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect()
    }

    #[test]
    fn databases_in_memory_are_told_from_files() {
        for url in [
            ":memory:",
            " :memory: ",
            "sqlite://:memory:",
            "sqlite::memory:",
            "file::memory:?cache=shared",
            "file:x?mode=memory",
        ] {
            assert!(is_sqlite_in_memory(url), "{url}");
        }
        for url in ["data/node1.db", "sqlite:///tmp/memory.db", "file:data/x.db", "postgres://u@h/memory", "memory"] {
            assert!(!is_sqlite_in_memory(url), "{url}");
        }
    }

    #[test]
    fn an_exclusive_url_escapes_what_a_uri_would_read_otherwise() {
        assert_eq!(exclusive_sqlite_url("/data/node1/labctl.db"), "file:/data/node1/labctl.db?vfs=unix-excl");
        assert_eq!(exclusive_sqlite_url("data/node1/labctl.db"), "file:data/node1/labctl.db?vfs=unix-excl");
        assert_eq!(exclusive_sqlite_url("/a b/100%?#x.db"), "file:/a b/100%25%3f%23x.db?vfs=unix-excl");
    }

    /// A key recorded before fingerprints were kept answers with its first outcome whatever
    /// request comes with it, as it did then; a key recorded now refuses another request.
    #[test]
    fn keys_recorded_without_a_fingerprint_keep_answering_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("node.db").to_string_lossy()).unwrap();
        let first = ApplyOutcome::Rejected { status: 404, error: "no product with id 9".into() };
        let old = IdempotencyRecord {
            idem_key: "old".into(),
            log_index: 1,
            outcome: serde_json::to_string(&first).unwrap(),
            fingerprint: None,
        };
        diesel::insert_into(idempotency_keys::table).values(&old).execute(&mut store.conn).unwrap();
        let create = |key: &str| {
            let product = command::ProductInput::new("x", 1.0, "GBP");
            Command::new(chrono::Utc::now(), Op::CreateProduct { product }).with_key(key)
        };
        assert_eq!(store.apply(2, 1, &create("old")).unwrap(), first);
        assert!(matches!(store.apply(3, 1, &create("new")).unwrap(), ApplyOutcome::Applied { .. }));
        let delete = Command::new(chrono::Utc::now(), Op::DeleteProduct { id: 1 }).with_key("new");
        assert!(matches!(store.apply(4, 1, &delete).unwrap(), ApplyOutcome::Rejected { status: 422, .. }));
        assert_eq!(store.dump().unwrap().products.len(), 1);
    }

    /// The connections of one process on the exclusive URL share the file as usual: a write of
    /// one is read by the others, and pooled readers run beside the writer.
    #[test]
    fn connections_of_one_process_share_an_exclusive_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd ?#%.db").to_string_lossy().into_owned();
        let url = exclusive_sqlite_url(&path);
        let mut writer = Store::open(&url).unwrap().private();
        let mut reader = Store::connect(&url).unwrap();
        let product = |title: &str| ProductInput::new(title, 1.0, "GBP");
        let at = chrono::Utc::now();
        writer.apply(1, 1, &Command::new(at, Op::CreateProduct { product: product("one") })).unwrap();
        assert_eq!(reader.get_product(1).unwrap().map(|p| p.title), Some("one".into()));
        writer.apply(2, 1, &Command::new(at, Op::CreateProduct { product: product("two") })).unwrap();
        assert_eq!(reader.list_products(&ProductQuery::default()).unwrap().pagination.total, 2);
        drop((writer, reader));
        assert!(std::path::Path::new(&path).exists(), "the file is named by the path, escapes undone");
        assert!(!std::path::Path::new(&format!("{path}-shm")).exists(), "the WAL index stays in memory");
        let mut plain = Store::connect(&path).unwrap();
        assert_eq!(plain.list_products(&ProductQuery::default()).unwrap().pagination.total, 2);
    }

    #[test]
    fn a_database_made_before_ids_became_rowids_keeps_its_rows_ids_and_references() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db").to_string_lossy().into_owned();
        {
            // The schema as the migrations before 2026-11-30 left it, with rows in it.
            let mut c = diesel::SqliteConnection::establish(&path).unwrap();
            c.batch_execute("PRAGMA foreign_keys = ON;").unwrap();
            diesel::migration::MigrationConnection::setup(&mut c).unwrap();
            let migrations = MigrationSource::<Sqlite>::migrations(&SQLITE_MIGRATIONS).unwrap();
            for m in migrations.iter().filter(|m| m.name().to_string().as_str() < "2026-11-30") {
                c.run_migration(m).unwrap();
            }
            c.batch_execute(
                "INSERT INTO products (id, title, price, currency, rating, created_at, updated_at)
                     VALUES (7, 'Dune', 9.5, 'GBP', 4, '2026-11-30T10:00:00Z', '2026-11-30T10:00:00Z');
                 INSERT INTO users (id, name, email, created_at) VALUES (3, 'Ann', 'ann@example.com', '2026-11-30');
                 INSERT INTO tasks (id, title, status, priority, assignee, created_at, updated_at)
                     VALUES (12, 'read', 'todo', 'high', 3, '2026-11-30', '2026-11-30');
                 UPDATE meta SET last_index = 5, next_product_id = 8, next_user_id = 4, next_task_id = 13;",
            )
            .unwrap();
            diesel::sql_query("INSERT INTO apply_outcomes (log_index, outcome) VALUES (5, ?)")
                .bind::<diesel::sql_types::Text, _>(serde_json::to_string(&ApplyOutcome::AlreadyApplied).unwrap())
                .execute(&mut c)
                .unwrap();
            assert_eq!(automatic_indexes(&mut c, "products"), ["sqlite_autoindex_products_1"]);
        }
        let mut store = Store::open(&path).unwrap();
        let dump = store.dump().unwrap();
        let p = &dump.products[0];
        assert_eq!((dump.products.len(), p.id, p.title.as_str(), p.rating), (1, 7, "Dune", Some(4)));
        let t = &dump.tasks[0];
        assert_eq!((dump.tasks.len(), t.id, t.assignee), (1, 12, Some(3)), "the task still refers to its user");
        assert_eq!(store.outcome_of(5).unwrap(), Some(ApplyOutcome::AlreadyApplied));

        let c = match &mut store.conn {
            DbConnection::Sqlite(c) => c,
            #[allow(unreachable_patterns)]
            _ => unreachable!("a SQLite file"),
        };
        for table in ["products", "tasks", "apply_outcomes"] {
            assert!(automatic_indexes(c, table).is_empty(), "{table} keeps a second index on its id");
        }
        // The reference is enforced as before: deleting the user clears the task's assignee.
        c.batch_execute("DELETE FROM users WHERE id = 3;").unwrap();
        assert_eq!(store.dump().unwrap().tasks[0].assignee, None);
        // New rows take the next ids.
        let product: ProductInput =
            serde_json::from_value(serde_json::json!({"title": "Emma", "price": 3.0, "currency": "GBP"})).unwrap();
        let cmd = Command::new(chrono::Utc::now(), Op::CreateProduct { product });
        match store.apply(6, 1, &cmd).unwrap() {
            ApplyOutcome::Applied { reply: Reply::Product(p), .. } => assert_eq!(p.id, 8),
            other => panic!("{other:?}"),
        }
    }
}
