//! Snapshots of the replicated database: written by one store, loaded by another, on every
//! backend of the build and across backends; damaged or foreign snapshots refused with
//! nothing changed.
//!
//! SQLite runs always; PostgreSQL and MySQL/MariaDB with the cargo features `postgres` and
//! `mysql`, on a fresh database each (see `common/server_db.rs` for the admin URLs). A server
//! that does not answer fails its tests under `CI=true` and skips them, loudly, otherwise.

#[cfg(any(feature = "postgres", feature = "mysql"))]
#[path = "common/server_db.rs"]
mod server_db;

use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use labctl::node::store::snapshot::{self, SnapshotInfo, BATCH_ROWS, PAGE_ROWS};
use labctl::node::store::{
    AccountInput, ApplyOutcome, Command, Dump, Op, Priority, ProductInput, Role, Status, Store, StoreError, TaskInput,
    UserInput,
};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    #[cfg(feature = "postgres")]
    Postgres,
    #[cfg(feature = "mysql")]
    Mysql,
}

/// A fresh database, dropped (file or server database) with this.
struct TestDb {
    url: String,
    _dir: Option<tempfile::TempDir>,
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    _server: Option<server_db::SharedDb>,
}

impl TestDb {
    /// None, loudly, when the backend's server does not answer (a failure under `CI=true`).
    fn new(backend: Backend) -> Option<TestDb> {
        #[cfg(any(feature = "postgres", feature = "mysql"))]
        let server = match backend {
            Backend::Sqlite => None,
            #[cfg(feature = "postgres")]
            Backend::Postgres => Some(server_db::Server::Postgres),
            #[cfg(feature = "mysql")]
            Backend::Mysql => Some(server_db::Server::Mysql),
        };
        #[cfg(any(feature = "postgres", feature = "mysql"))]
        if let Some(server) = server {
            let db = server_db::SharedDb::new(server)?;
            return Some(TestDb { url: db.url.clone(), _dir: None, _server: Some(db) });
        }
        assert_eq!(backend, Backend::Sqlite);
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("node.db").display());
        Some(TestDb {
            url,
            _dir: Some(dir),
            #[cfg(any(feature = "postgres", feature = "mysql"))]
            _server: None,
        })
    }

    fn open(&self) -> Store {
        Store::open(&self.url).unwrap()
    }
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + secs, 0).unwrap()
}

/// A product with every field; `price * 1.17` and `price * 1.2` are the converted prices that
/// serde_json's own float parser reads back off by one unit in the last place.
fn product(title: &str, price: f64) -> ProductInput {
    ProductInput {
        title: title.into(),
        price,
        currency: "GBP".into(),
        converted_price: Some(price * 1.17),
        converted_currency: Some("EUR".into()),
        availability: Some("In stock".into()),
        rating: Some(4),
        link: Some(format!("https://books.toscrape.com/{}", title.len())),
        scraped_at: Some(at(0)),
    }
}

fn user(name: &str, email: &str) -> Op {
    Op::CreateUser { user: UserInput { name: name.into(), email: email.into() } }
}

fn task(title: &str, assignee: Option<i64>, due: Option<&str>) -> Op {
    Op::CreateTask {
        task: TaskInput {
            title: title.into(),
            description: Some(format!("about {title}\nsecond line")),
            due_date: due.map(|d| d.parse().unwrap()),
            status: Status::InProgress,
            priority: Priority::High,
            assignee,
        },
    }
}

fn account(name: &str, role: Role) -> AccountInput {
    AccountInput { name: name.into(), role, password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1${name}$aGFzaA") }
}

fn token_hash(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// Applies `ops` as the log entries after `first - 1`, one second apart, the third of each
/// five with an idempotency key; returns the last index.
fn apply(store: &mut Store, first: u64, term: u64, ops: Vec<Op>) -> u64 {
    let mut index = first;
    for (i, op) in ops.into_iter().enumerate() {
        let mut cmd = Command::new(at(index as i64), op);
        if i % 5 == 2 {
            cmd = cmd.with_key(format!("key-{index}"));
        }
        store.apply(index, term, &cmd).unwrap();
        index += 1;
    }
    index - 1
}

/// Everything a log builds: products (one deleted, some without optional fields, awkward
/// texts and prices), users, tasks assigned, unassigned and unassigned by a deleted user,
/// accounts, sessions, idempotency keys, refused entries; with `extra` products more in one
/// upload.
fn fill(store: &mut Store, extra: usize) -> u64 {
    let awkward = "quote \" backslash \\ tab \t line\nfeed, crab 🦀, é, 中文";
    let mut ops = vec![
        user("Ann", "ann@example.org"),
        user("Bob", "bob@example.org"),
        user("Cid", "cid@example.org"),
        Op::CreateProduct { product: product(awkward, 0.1) },
        Op::CreateProduct { product: ProductInput::new("bare", 2.5, "GBP") },
        Op::ImportProducts {
            items: (1..=40).map(|cents| product(&format!("p{cents}"), f64::from(cents) / 100.0 * 1.17)).collect(),
        },
        Op::DeleteProduct { id: 3 },
        Op::DeleteProduct { id: 999 },
        task("assigned", Some(1), Some("2026-02-03")),
        task("unassigned", None, None),
        task(awkward, Some(3), None),
        Op::DeleteUser { id: 3 },
        Op::BootstrapAdmin { account: account("root", Role::Admin) },
        Op::CreateAccount { account: account("ann", Role::Member) },
        Op::Login { token_hash: token_hash(1), account: "ann".into(), expires_at: at(1_000_000) },
        Op::Login { token_hash: token_hash(2), account: "root".into(), expires_at: at(1_000_000) },
        Op::CreateUser { user: UserInput { name: "dup".into(), email: "ann@example.org".into() } },
    ];
    if extra > 0 {
        ops.push(Op::ImportProducts {
            items: (0..extra).map(|i| product(&format!("bulk {i}"), i as f64 * 0.37)).collect(),
        });
    }
    apply(store, 1, 2, ops)
}

/// The state of `store` as far as a snapshot goes: the dump, and every outcome kept.
fn state(store: &mut Store) -> (Dump, Vec<Option<ApplyOutcome>>) {
    let dump = store.dump().unwrap();
    let last = dump.meta.last_index as u64;
    let outcomes = (1..=last.max(30)).map(|i| store.outcome_of(i).unwrap()).collect();
    (dump, outcomes)
}

/// Prices compared by their bits: equal floats that are not the same value do not pass.
fn price_bits(dump: &Dump) -> Vec<(u64, Option<u64>)> {
    dump.products.iter().map(|p| (p.price.to_bits(), p.converted_price.map(f64::to_bits))).collect()
}

fn snapshot_bytes(store: &mut Store) -> Vec<u8> {
    let mut bytes = Vec::new();
    store.write_snapshot(&mut bytes).unwrap();
    bytes
}

/// The lines of a snapshot without its trailer.
fn body_lines(bytes: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(bytes).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    assert!(lines.pop().unwrap().starts_with(r#"{"end":"#));
    lines
}

/// A snapshot of `lines` (a header and rows) with a correct trailer.
fn sealed(lines: &[String]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in lines {
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    let sha256: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let trailer = serde_json::json!({"end": {"rows": lines.len() - 1, "sha256": sha256}});
    bytes.extend_from_slice(format!("{trailer}\n").as_bytes());
    bytes
}

/// The info that announces `bytes` as holding `index` of `term`.
fn info_of(bytes: &[u8], index: u64, term: u64) -> SnapshotInfo {
    let sha256 = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    SnapshotInfo { index, term, size: bytes.len() as u64, sha256 }
}

/// A snapshot written to a file and loaded from it gives the same state, prices to the bit,
/// counters included: both stores then apply the next entries alike.
fn a_snapshot_file_loads_into_the_same_state(b: Backend) {
    let (Some(from_db), Some(to_db)) = (TestDb::new(b), TestDb::new(b)) else { return };
    let (mut from, mut to) = (from_db.open(), to_db.open());
    let last = fill(&mut from, 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.jsonl");
    let info = snapshot::write_file(&mut from, &path).unwrap();
    assert_eq!((info.index, info.term), (last, 2));
    assert_eq!(info.size, std::fs::metadata(&path).unwrap().len());
    assert_eq!(info, info_of(&std::fs::read(&path).unwrap(), last, 2));
    assert!(!dir.path().join("snapshot.jsonl.tmp").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "it holds password hashes");
    }

    snapshot::load_file(&mut to, &path, &info).unwrap();
    let (dump, outcomes) = state(&mut from);
    assert_eq!(state(&mut to), (dump.clone(), outcomes.clone()));
    assert_eq!(price_bits(&to.dump().unwrap()), price_bits(&dump));
    assert_eq!((dump.products.len(), dump.users.len(), dump.tasks.len()), (41, 2, 3));
    assert!(dump.products.iter().any(|p| p.converted_price.is_none() && p.link.is_none()));
    assert_eq!((dump.accounts.len(), dump.sessions.len(), dump.idempotency.len()), (2, 2, 3));
    assert!(dump.tasks.iter().any(|t| t.assignee == Some(1)) && dump.tasks.iter().any(|t| t.assignee.is_none()));
    assert!(outcomes.iter().take(last as usize).all(Option::is_some), "every outcome is kept");
    assert_eq!(to.last_applied().unwrap(), from.last_applied().unwrap());
    assert_eq!(
        to.session(&token_hash(1)).unwrap().map(|(s, role)| (s.account, role)),
        Some(("ann".into(), "member".into()))
    );

    // The counters came along: the next entries give the same ids and answers on both.
    let next = vec![
        Op::CreateProduct { product: product("after", 7.0) },
        user("Dee", "dee@example.org"),
        task("later", Some(4), None),
    ];
    let from_last = apply(&mut from, last + 1, 3, next.clone());
    apply(&mut to, last + 1, 3, next);
    assert_eq!(state(&mut to), state(&mut from));
    assert_eq!(to.get_product(43).unwrap().map(|p| p.title), Some("after".into()));
    // A repeated idempotency key answers as on the node that first applied it.
    let retry = Command::new(at(9_999), user("Cid", "cid@example.org")).with_key("key-3");
    let first = to.apply(from_last + 1, 3, &retry).unwrap();
    assert!(matches!(&first, ApplyOutcome::Applied { status: 201, .. }), "{first:?}");
    assert_eq!(first, from.apply(from_last + 1, 3, &retry).unwrap());
}

/// Loading replaces everything a store held, whatever it was, with what the snapshot holds;
/// a snapshot of an empty store empties one.
fn a_snapshot_replaces_everything_there_was(b: Backend) {
    let (Some(from_db), Some(to_db), Some(empty_db)) = (TestDb::new(b), TestDb::new(b), TestDb::new(b)) else {
        return;
    };
    let (mut from, mut to, mut empty) = (from_db.open(), to_db.open(), empty_db.open());
    apply(
        &mut from,
        1,
        1,
        vec![
            user("Eve", "eve@example.org"),
            task("eve's", Some(1), None),
            Op::CreateProduct { product: product("one", 1.0) },
        ],
    );
    // The target is further on, with other rows under the same ids and more.
    fill(&mut to, 0);
    let mut bytes = snapshot_bytes(&mut from);
    assert_eq!(to.load_snapshot(&mut bytes.as_slice()).unwrap(), (3, 1));
    assert_eq!(state(&mut to), state(&mut from));

    let empty_state = state(&mut empty);
    bytes = snapshot_bytes(&mut empty);
    assert_eq!(body_lines(&bytes).len(), 1, "a header and a trailer only");
    assert_eq!(to.load_snapshot(&mut bytes.as_slice()).unwrap(), (0, 0));
    assert_eq!(state(&mut to), empty_state);
    assert_eq!(empty_state.0.meta.next_product_id, 1);
}

/// More rows than a page and than a batch: they are all read and inserted.
fn many_rows_go_in_pages_and_batches(b: Backend) {
    let (Some(from_db), Some(to_db)) = (TestDb::new(b), TestDb::new(b)) else { return };
    let (mut from, mut to) = (from_db.open(), to_db.open());
    let extra = 2 * PAGE_ROWS as usize + BATCH_ROWS + 7;
    fill(&mut from, extra);
    let bytes = snapshot_bytes(&mut from);
    to.load_snapshot(&mut bytes.as_slice()).unwrap();
    let dump = from.dump().unwrap();
    assert_eq!(dump.products.len(), 41 + extra);
    assert_eq!(to.dump().unwrap(), dump);
    assert_eq!(price_bits(&to.dump().unwrap()), price_bits(&dump));
    // Written in key order: the same store writes the same bytes again.
    assert_eq!(snapshot_bytes(&mut to), bytes);
}

/// Damaged, foreign or unannounced snapshots are refused, saying where and why, and the store
/// keeps everything it had.
fn bad_snapshots_are_refused_and_change_nothing(b: Backend) {
    let (Some(from_db), Some(to_db)) = (TestDb::new(b), TestDb::new(b)) else { return };
    let (mut from, mut to) = (from_db.open(), to_db.open());
    let last = fill(&mut from, 0);
    apply(&mut to, 1, 1, vec![user("Keep", "keep@example.org"), Op::CreateProduct { product: product("kept", 5.0) }]);
    let before = state(&mut to);
    let good = snapshot_bytes(&mut from);
    let lines = body_lines(&good);
    let dir = tempfile::tempdir().unwrap();

    // Through a file and its info.
    let refused_file = |to: &mut Store, name: &str, bytes: &[u8], info: &SnapshotInfo| -> StoreError {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        snapshot::load_file(to, &path, info).expect_err(name)
    };
    let info = info_of(&good, last, 2);
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x01;
    let e = refused_file(&mut to, "flipped", &flipped, &info);
    assert!(matches!(&e, StoreError::SnapshotMismatch(m) if m.contains("SHA-256")), "{e}");
    let e = refused_file(&mut to, "truncated", &good[..good.len() - 40], &info);
    assert!(matches!(&e, StoreError::SnapshotMismatch(m) if m.contains("bytes")), "{e}");
    let wrong_sha = SnapshotInfo { sha256: "0".repeat(64), ..info.clone() };
    let e = refused_file(&mut to, "wrong sha", &good, &wrong_sha);
    assert!(matches!(&e, StoreError::SnapshotMismatch(m) if m.contains("SHA-256")), "{e}");
    let other_index = SnapshotInfo { index: last + 1, ..info.clone() };
    let e = refused_file(&mut to, "other index", &good, &other_index);
    assert!(matches!(&e, StoreError::SnapshotMismatch(m) if m.contains("index")), "{e}");
    // A header edited, the file sealed again and announced with its own size and SHA-256.
    let mut edited = lines.clone();
    edited[0] = edited[0].replace(&format!("\"index\":{last},"), &format!("\"index\":{},", last + 5));
    let edited = sealed(&edited);
    let e = refused_file(&mut to, "edited header", &edited, &info_of(&edited, last, 2));
    assert!(matches!(&e, StoreError::SnapshotMismatch(m) if m.contains(&format!("index {}", last + 5))), "{e}");
    let e = snapshot::load_file(&mut to, &dir.path().join("missing"), &info).unwrap_err();
    assert!(matches!(&e, StoreError::Io { .. }), "{e}");
    assert_eq!(state(&mut to), before);

    // Through a stream alone: the snapshot checks itself.
    let refused = |to: &mut Store, bytes: &[u8]| -> (u64, String) {
        match to.load_snapshot(&mut &bytes[..]) {
            Err(StoreError::SnapshotFormat { line, reason }) => (line, reason),
            other => panic!("expected a format error, got {other:?}"),
        }
    };
    let with = |edit: &dyn Fn(&mut Vec<String>)| {
        let mut lines = lines.clone();
        edit(&mut lines);
        sealed(&lines)
    };
    let n = lines.len() as u64;
    let cases: Vec<(&str, Vec<u8>, u64, &str)> = vec![
        ("flipped", flipped.clone(), 0, ""),
        ("truncated within a line", good[..good.len() - 40].to_vec(), n + 1, "truncated"),
        (
            "truncated at a line",
            sealed(&lines)[..lines[..5].iter().map(|l| l.len() + 1).sum()].to_vec(),
            6,
            "truncated",
        ),
        ("empty", Vec::new(), 1, "empty"),
        (
            "unknown table",
            with(&|l| l.insert(3, r#"{"table":"widgets","row":{"id":1}}"#.into())),
            4,
            "unknown table \"widgets\"",
        ),
        (
            "tables out of order",
            with(&|l| {
                let user = l.iter().position(|l| l.starts_with(r#"{"table":"users""#)).unwrap();
                let row = l.remove(user);
                l.insert(1, row);
            }),
            3,
            "tables come in the order",
        ),
        ("not JSON", with(&|l| l.insert(2, "{\"table\":\"products\",".into())), 3, "not a row or a trailer"),
        (
            "not a row of its table",
            with(&|l| {
                let p = l.iter().position(|l| l.starts_with(r#"{"table":"products""#)).unwrap();
                l[p] = l[p].replace("\"price\":", "\"cost\":");
            }),
            0,
            "not a row of products",
        ),
        (
            "a price out of range",
            with(&|l| {
                let p = l.iter().position(|l| l.starts_with(r#"{"table":"products""#)).unwrap();
                l[p] = l[p].replace("\"price\":", "\"price\":1e999,\"x\":");
            }),
            0,
            "not a row of products",
        ),
        (
            "a duplicate row",
            with(&|l| {
                let p = l.iter().rposition(|l| l.starts_with(r#"{"table":"products""#)).unwrap();
                let row = l[p].clone();
                l.insert(p, row);
            }),
            0,
            "the database refuses the rows of products",
        ),
        (
            "another format",
            with(&|l| l[0] = l[0].replace("labctl-snapshot", "pg_dump")),
            1,
            "not a labctl-snapshot file (its format is \"pg_dump\")",
        ),
        (
            "another version",
            with(&|l| l[0] = l[0].replace("\"version\":1", "\"version\":2")),
            1,
            "version 2 is not supported",
        ),
        (
            "a header missing a counter",
            with(&|l| l[0] = l[0].replace(",\"next_task_id\"", ",\"x\"")),
            1,
            "not a header of version 1",
        ),
    ];
    for (what, bytes, line, reason) in cases {
        let (at_line, why) = refused(&mut to, &bytes);
        if line > 0 {
            assert_eq!(at_line, line, "{what}: {why}");
        }
        assert!(why.contains(reason), "{what}: line {at_line}: {why}");
        assert_eq!(state(&mut to), before, "{what} changed the store");
    }
    let mut bad_trailer = lines.clone();
    bad_trailer.push(r#"{"end":{"rows":1,"sha256":"00"}}"#.into());
    let bad_trailer = bad_trailer.join("\n") + "\n";
    let (line, why) = refused(&mut to, bad_trailer.as_bytes());
    assert_eq!(line, n + 1, "{why}");
    assert!(why.contains(&format!("counts 1 rows, where the snapshot has {}", n - 1)), "{why}");
    let mut followed = good.clone();
    followed.extend_from_slice(b"{}\n");
    let (line, why) = refused(&mut to, &followed);
    assert_eq!((line, why.as_str()), (n + 2, "nothing may follow the trailer"));
    assert_eq!(state(&mut to), before);
    // The good one loads after all that.
    std::fs::write(dir.path().join("good"), &good).unwrap();
    snapshot::load_file(&mut to, &dir.path().join("good"), &info).unwrap();
    assert_eq!(state(&mut to), state(&mut from));
}

/// A node's own database keeps no outcomes of entries: it loads none either, and the rest
/// alike.
fn a_private_store_loads_no_outcomes(b: Backend) {
    let (Some(from_db), Some(to_db)) = (TestDb::new(b), TestDb::new(b)) else { return };
    let (mut from, mut to) = (from_db.open(), to_db.open().private());
    let last = fill(&mut from, 0);
    let bytes = snapshot_bytes(&mut from);
    to.load_snapshot(&mut bytes.as_slice()).unwrap();
    assert_eq!(to.dump().unwrap(), from.dump().unwrap());
    assert!(from.outcome_of(last).unwrap().is_some());
    assert_eq!(to.outcome_of(last).unwrap(), None);
}

/// Passes a snapshot's lines on to `out`; before the second, `meddle` runs once.
struct Meddling<F: FnMut()> {
    out: Vec<u8>,
    meddle: Option<F>,
}

impl<F: FnMut()> std::io::Write for Meddling<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.out.is_empty() {
            if let Some(mut meddle) = self.meddle.take() {
                meddle();
            }
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A snapshot holds the state of one moment: what another connection commits while it is
/// being written, after its first rows were read, is not in it.
fn a_snapshot_is_of_one_moment(b: Backend) {
    let (Some(from_db), Some(to_db)) = (TestDb::new(b), TestDb::new(b)) else { return };
    let (mut from, mut to) = (from_db.open(), to_db.open());
    let last = fill(&mut from, 2 * PAGE_ROWS as usize);
    let before = state(&mut from);
    let mut other = Store::connect(&from_db.url).unwrap();
    let mut out = Meddling {
        out: Vec::new(),
        meddle: Some(|| {
            let ops = vec![
                Op::CreateProduct { product: product("late", 1.0) },
                Op::DeleteProduct { id: 1 },
                Op::DeleteProduct { id: 5 + PAGE_ROWS },
                user("Late", "late@example.org"),
                Op::CreateAccount { account: account("late", Role::Viewer) },
            ];
            apply(&mut other, last + 1, 3, ops);
        }),
    };
    assert_eq!(from.write_snapshot(&mut out).unwrap(), (last, 2));
    assert!(out.meddle.is_none(), "the other connection wrote meanwhile");
    assert_ne!(state(&mut from), before);
    to.load_snapshot(&mut out.out.as_slice()).unwrap();
    assert_eq!(state(&mut to), before);
}

macro_rules! per_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $test() { super::$test(super::Backend::Sqlite) })*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(#[test] fn $test() { super::$test(super::Backend::Postgres) })*
        }
        #[cfg(feature = "mysql")]
        mod mysql {
            $(#[test] fn $test() { super::$test(super::Backend::Mysql) })*
        }
    };
}

per_backend!(
    a_snapshot_file_loads_into_the_same_state,
    a_snapshot_is_of_one_moment,
    a_snapshot_replaces_everything_there_was,
    many_rows_go_in_pages_and_batches,
    bad_snapshots_are_refused_and_change_nothing,
    a_private_store_loads_no_outcomes,
);

/// One format for every backend: a snapshot written on one loads on another into the same
/// state, and written again there it is the same file.
#[cfg(any(feature = "postgres", feature = "mysql"))]
#[test]
fn a_snapshot_moves_between_backends() {
    let servers = [
        #[cfg(feature = "postgres")]
        Backend::Postgres,
        #[cfg(feature = "mysql")]
        Backend::Mysql,
    ];
    let Some(sqlite_db) = TestDb::new(Backend::Sqlite) else { return };
    let mut sqlite = sqlite_db.open();
    fill(&mut sqlite, 1_200);
    let written = snapshot_bytes(&mut sqlite);
    let (dump, outcomes) = state(&mut sqlite);
    for b in servers {
        let Some(server_db) = TestDb::new(b) else { continue };
        let mut server = server_db.open();
        fill(&mut server, 3);
        server.load_snapshot(&mut written.as_slice()).unwrap();
        assert_eq!(state(&mut server), (dump.clone(), outcomes.clone()), "SQLite to {b:?}");
        assert_eq!(price_bits(&server.dump().unwrap()), price_bits(&dump), "SQLite to {b:?}");
        let again = snapshot_bytes(&mut server);
        assert!(again == written, "{b:?} writes the snapshot it loaded again, byte for byte");
        // And back.
        let Some(back_db) = TestDb::new(Backend::Sqlite) else { return };
        let mut back = back_db.open();
        back.load_snapshot(&mut again.as_slice()).unwrap();
        assert_eq!(state(&mut back), (dump.clone(), outcomes.clone()), "{b:?} to SQLite");
    }
}

/// A snapshot written to a path replaces the file there, whole.
#[test]
fn a_snapshot_file_is_replaced_whole() {
    let Some(db) = TestDb::new(Backend::Sqlite) else { return };
    let mut store = db.open();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap");
    std::fs::write(&path, "x".repeat(1 << 20)).unwrap();
    let empty = snapshot::write_file(&mut store, &path).unwrap();
    assert_eq!(empty.size, std::fs::metadata(&path).unwrap().len());
    fill(&mut store, 0);
    let full = snapshot::write_file(&mut store, &path).unwrap();
    assert!(full.size > empty.size);
    snapshot::verify_file(&path, &full).unwrap();
    assert!(snapshot::verify_file(&path, &empty).is_err());
    let e = snapshot::write_file(&mut store, Path::new("/")).unwrap_err();
    assert!(e.to_string().contains("cannot write a snapshot to /"), "{e}");
    let e = snapshot::write_file(&mut store, &dir.path().join("no such dir").join("snap")).unwrap_err();
    assert!(matches!(e, StoreError::Io { .. }), "{e}");
}
