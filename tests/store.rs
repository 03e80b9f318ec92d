//! The replicated database on real databases: commands in, rows and outcomes out.
//!
//! The suite runs once per backend of the build: SQLite files always, PostgreSQL and
//! MySQL/MariaDB with the cargo features `postgres` and `mysql`. Each test gets a fresh
//! database of its own (`labctl_t_<pid>_<n>`, created through an admin connection and dropped
//! afterwards), so tests run in parallel. The admin URLs are `LABCTL_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`) and `LABCTL_TEST_MYSQL_URL`
//! (default `mysql://root@127.0.0.1:3306/test`). When a server does not answer, its tests fail
//! under `CI=true` and are skipped, loudly, otherwise.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use labctl::node::store::pool::ReadPool;
use labctl::node::store::{
    AccountInput, Applied, ApplyOutcome, Command, Op, PageRequest, Priority, ProductInput, ProductQuery, Reply, Role,
    Status, Store, StoreError, TaskInput, TaskQuery, UserInput,
};

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + secs, 0).unwrap()
}

fn product(title: &str, price: f64) -> ProductInput {
    ProductInput {
        title: title.into(),
        price,
        currency: "GBP".into(),
        converted_price: Some(price * 1.2),
        converted_currency: Some("EUR".into()),
        availability: Some("In stock".into()),
        rating: Some(3),
        link: Some(format!("https://books.toscrape.com/{title}")),
        scraped_at: Some(at(0)),
    }
}

fn user(name: &str, email: &str) -> UserInput {
    UserInput { name: name.into(), email: email.into() }
}

fn task(title: &str, status: Status, priority: Priority, assignee: Option<i64>, due: Option<&str>) -> TaskInput {
    TaskInput {
        title: title.into(),
        description: Some(format!("about {title}")),
        due_date: due.map(|d| d.parse().unwrap()),
        status,
        priority,
        assignee,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    #[cfg(feature = "postgres")]
    Postgres,
    #[cfg(feature = "mysql")]
    Mysql,
}

impl Backend {
    /// The admin URL of a server backend, from the environment or the default.
    fn admin_url(self) -> Option<String> {
        match self {
            Backend::Sqlite => None,
            #[cfg(feature = "postgres")]
            Backend::Postgres => env_or("LABCTL_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
            #[cfg(feature = "mysql")]
            Backend::Mysql => env_or("LABCTL_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
        }
    }

    /// Runs SQL through an admin connection of a server backend.
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(unused_variables))]
    fn admin(self, sql: &str) -> Result<(), String> {
        let Some(url) = self.admin_url() else { return Ok(()) };
        let result: Result<(), String> = match self {
            #[cfg(feature = "postgres")]
            Backend::Postgres => admin_exec::<diesel::PgConnection>(&url, sql),
            #[cfg(feature = "mysql")]
            Backend::Mysql => admin_exec::<diesel::MysqlConnection>(&url, sql),
            _ => Ok(()),
        };
        result.map_err(|e| format!("{url}: {e}"))
    }

    /// Whether the backend's server answers. Under `CI=true` a missing server fails the test.
    #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
    fn available(self) -> bool {
        match self.admin("SELECT 1") {
            Ok(()) => true,
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("{self:?} is needed by this test (CI=true) but does not answer: {e}")
            }
            Err(e) => {
                // Straight to stderr, past the test harness's capture, so that it is seen.
                let message = format!("\n!!! SKIPPED: {self:?} does not answer ({e}); start it to run this test\n");
                let _ = std::io::Write::write_all(&mut std::io::stderr(), message.as_bytes());
                false
            }
        }
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
fn env_or(var: &str, default: &str) -> Option<String> {
    Some(std::env::var(var).unwrap_or_else(|_| default.to_string()))
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
fn admin_exec<C: diesel::Connection>(url: &str, sql: &str) -> Result<(), String> {
    let mut conn = C::establish(url).map_err(|e| e.to_string())?;
    conn.batch_execute(sql).map_err(|e| e.to_string())
}

/// A fresh, empty database; dropped (file or server database) when this is dropped.
struct TestDb {
    backend: Backend,
    url: String,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    fn new(backend: Backend) -> TestDb {
        // MySQL's with the oldest defaults a server may still have (latin1, compared without
        // case): the migrations must make every table hold and compare text as the others do.
        // PostgreSQL's in UTF8 whatever the server's default, as a node requires.
        let options = match backend.admin_url() {
            Some(admin) if admin.starts_with("mysql") => " CHARACTER SET latin1 COLLATE latin1_swedish_ci",
            Some(_) => " ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
            None => "",
        };
        TestDb::with_options(backend, options)
    }

    /// A fresh database of a server backend created with `options` after its name.
    fn with_options(backend: Backend, options: &str) -> TestDb {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("labctl_t_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let Some(admin) = backend.admin_url() else {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("node.db").to_str().unwrap());
            return TestDb { backend, url, name, _dir: Some(dir) };
        };
        backend.admin(&format!("CREATE DATABASE {name}{options}")).unwrap();
        let base = admin.rsplit_once('/').expect("an admin URL ends in /DATABASE").0;
        TestDb { backend, url: format!("{base}/{name}"), name, _dir: None }
    }

    fn open(&self) -> Store {
        let store = Store::open(&self.url).unwrap();
        assert_eq!(store.backend(), format!("{:?}", self.backend).to_lowercase());
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.backend == Backend::Sqlite {
            return;
        }
        // FORCE: PostgreSQL refuses to drop a database a connection still uses.
        let force = if self.url.starts_with("postgres") { " WITH (FORCE)" } else { "" };
        let sql = format!("DROP DATABASE IF EXISTS {}{force}", self.name);
        if let Err(e) = self.backend.admin(&sql) {
            eprintln!("cannot drop the test database {}: {e}", self.name);
        }
    }
}

/// A store on a fresh database: the guard, its URL, the store.
fn open_temp(b: Backend) -> (TestDb, String, Store) {
    let db = TestDb::new(b);
    let store = db.open();
    let url = db.url.clone();
    (db, url, store)
}

fn applied_reply(outcome: ApplyOutcome) -> Reply {
    match outcome {
        ApplyOutcome::Applied { reply, .. } => reply,
        other => panic!("expected Applied, got {other:?}"),
    }
}

fn rejected_status(outcome: &ApplyOutcome) -> u16 {
    match outcome {
        ApplyOutcome::Rejected { status, .. } => *status,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// Applies `ops` as log entries 1, 2, … in term 1, one second apart.
fn apply_all(store: &mut Store, ops: &[Op]) -> Vec<ApplyOutcome> {
    ops.iter()
        .enumerate()
        .map(|(i, op)| store.apply(i as u64 + 1, 1, &Command::new(at(i as i64), op.clone())).unwrap())
        .collect()
}

fn products_crud_through_commands(b: Backend) {
    let (_dir, _path, mut s) = open_temp(b);
    let created = s.apply(1, 1, &Command::new(at(1), Op::CreateProduct { product: product("a", 10.5) })).unwrap();
    let ApplyOutcome::Applied { status: 201, reply: Reply::Product(p) } = created else { panic!("{created:?}") };
    assert_eq!(p.id, 1);
    assert_eq!(p.created_at, "2026-09-21T14:13:21.000000Z");
    assert_eq!(s.get_product(1).unwrap(), Some(*p.clone()));

    let mut changed = product("a2", 12.0);
    changed.rating = None;
    changed.converted_price = None;
    changed.converted_currency = None;
    let updated = s.apply(2, 1, &Command::new(at(2), Op::UpdateProduct { id: 1, product: changed })).unwrap();
    let Reply::Product(u) = applied_reply(updated) else { panic!() };
    assert_eq!((u.title.as_str(), u.price, u.rating, u.converted_price), ("a2", 12.0, None, None));
    assert_eq!(u.created_at, p.created_at);
    assert_ne!(u.updated_at, p.updated_at);
    assert_eq!(s.get_product(1).unwrap(), Some(*u));

    let missing = s.apply(3, 1, &Command::new(at(3), Op::UpdateProduct { id: 9, product: product("x", 1.0) })).unwrap();
    assert_eq!(rejected_status(&missing), 404);
    assert_eq!(s.last_applied().unwrap(), Applied { index: 3, term: 1 }, "a rejected entry is still applied");

    assert_eq!(
        applied_reply(s.apply(4, 2, &Command::new(at(4), Op::DeleteProduct { id: 1 })).unwrap()),
        Reply::Deleted { id: 1 }
    );
    assert_eq!(s.get_product(1).unwrap(), None);
    let again = s.apply(5, 2, &Command::new(at(5), Op::DeleteProduct { id: 1 })).unwrap();
    assert_eq!(rejected_status(&again), 404);
    assert_eq!(s.last_applied().unwrap(), Applied { index: 5, term: 2 });
}

fn invalid_products_are_rejected_with_422(b: Backend) {
    let (_dir, _path, mut s) = open_temp(b);
    let mut bad = vec![product("", 1.0), product("neg", -1.0), product("nan", f64::NAN), product("inf", f64::INFINITY)];
    let mut cur = product("cur", 1.0);
    cur.currency = "pounds".into();
    let mut rating = product("rating", 1.0);
    rating.rating = Some(6);
    let mut half = product("half", 1.0);
    half.converted_currency = None;
    bad.extend([cur, rating, half]);
    for (i, p) in bad.into_iter().enumerate() {
        let out = s.apply(i as u64 + 1, 1, &Command::new(at(0), Op::CreateProduct { product: p.clone() })).unwrap();
        assert_eq!(rejected_status(&out), 422, "{p:?}");
    }
    // An import with one bad item imports nothing and uses no ids.
    let items = vec![product("ok", 1.0), product("bad", -3.0)];
    let out = s.apply(100, 1, &Command::new(at(0), Op::ImportProducts { items })).unwrap();
    assert_eq!(rejected_status(&out), 422);
    let ok = s.apply(101, 1, &Command::new(at(0), Op::CreateProduct { product: product("ok", 1.0) })).unwrap();
    let Reply::Product(p) = applied_reply(ok) else { panic!() };
    assert_eq!(p.id, 1, "rejected writes must not consume ids");
    assert_eq!(s.list_products(&ProductQuery::default()).unwrap().pagination.total, 1);
}

fn product_listing_paginates_and_filters_by_price(b: Backend) {
    let (_dir, _path, mut s) = open_temp(b);
    let items: Vec<ProductInput> = (1..=25).map(|i| product(&format!("p{i}"), i as f64)).collect();
    let out = s.apply(1, 1, &Command::new(at(0), Op::ImportProducts { items })).unwrap();
    assert_eq!(applied_reply(out), Reply::Imported { imported: 25, ids: [1, 25] });

    let q = ProductQuery { page: PageRequest::new(5, 10), min_price: Some(3.0), max_price: Some(20.0) };
    let page = s.list_products(&q).unwrap();
    let prices: Vec<f64> = page.data.iter().map(|p| p.price).collect();
    assert_eq!(prices, (8..=17).map(|i| i as f64).collect::<Vec<_>>());
    assert_eq!((page.pagination.total, page.pagination.offset, page.pagination.limit), (18, 5, 10));
    assert!(page.pagination.has_more);

    let last = s.list_products(&ProductQuery { page: PageRequest::new(15, 10), ..q }).unwrap();
    assert_eq!(last.data.iter().map(|p| p.id).collect::<Vec<_>>(), vec![18, 19, 20]);
    assert!(!last.pagination.has_more);

    let all = s.list_products(&ProductQuery { page: PageRequest::new(0, 10_000), ..Default::default() }).unwrap();
    assert_eq!((all.data.len(), all.pagination.limit), (25, 100), "limit is bounded");
    let default = s.list_products(&ProductQuery::default()).unwrap();
    assert_eq!((default.data.len(), default.pagination.limit, default.pagination.has_more), (20, 20, true));
    let zero = s.list_products(&ProductQuery { page: PageRequest::new(0, 0), ..Default::default() }).unwrap();
    assert_eq!(zero.data.len(), 1);
    let beyond = s.list_products(&ProductQuery { page: PageRequest::new(u64::MAX, 5), ..Default::default() }).unwrap();
    assert!(beyond.data.is_empty() && !beyond.pagination.has_more);

    let nan = s.list_products(&ProductQuery { min_price: Some(f64::NAN), ..Default::default() });
    assert!(matches!(nan, Err(StoreError::InvalidQuery(_))), "{nan:?}");
}

fn users_and_tasks_keep_referential_integrity(b: Backend) {
    let (_dir, _path, mut s) = open_temp(b);
    let outcomes = apply_all(
        &mut s,
        &[
            Op::CreateUser { user: user("Ann", "Ann@Example.org") }, // 1 → user 1
            Op::CreateUser { user: user("Bob", "bob@example.org") }, // 2 → user 2
            Op::CreateUser { user: user("Ann again", "ann@example.org") }, // 3: 409
            Op::CreateUser { user: user("Nobody", "not-an-email") }, // 4: 422
            Op::CreateTask { task: task("t1", Status::Todo, Priority::High, Some(1), Some("2026-01-01")) }, // task 1
            Op::CreateTask { task: task("t2", Status::Done, Priority::High, Some(1), Some("2026-01-01")) }, // task 2
            Op::CreateTask { task: task("t3", Status::InProgress, Priority::Low, Some(2), None) }, // task 3
            Op::CreateTask { task: task("t4", Status::Todo, Priority::Medium, Some(42), None) }, // 8: 422
            Op::UpdateTask { id: 3, task: task("t3", Status::Todo, Priority::Low, Some(42), None) }, // 9: 422
            Op::UpdateUser { id: 2, user: user("Bob", "ANN@example.org") }, // 10: 409
            Op::CreateTask { task: task("t5", Status::Todo, Priority::Low, None, Some("2030-01-01")) }, // task 4
        ],
    );
    assert_eq!(
        outcomes.iter().map(|o| matches!(o, ApplyOutcome::Applied { .. })).collect::<Vec<_>>(),
        [true, true, false, false, true, true, true, false, false, false, true]
    );
    assert_eq!(
        [&outcomes[2], &outcomes[3], &outcomes[7], &outcomes[8], &outcomes[9]].map(rejected_status),
        [409, 422, 422, 422, 409]
    );
    assert_eq!(s.get_user(1).unwrap().unwrap().email, "ann@example.org");
    assert_eq!(s.get_task(3).unwrap().unwrap().assignee, Some(2), "a rejected update changes nothing");
    assert_eq!(s.get_task(5).unwrap(), None);

    let by = |s: &mut Store, q: TaskQuery| s.list_tasks(&q).unwrap().data.iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(by(&mut s, TaskQuery { status: Some(Status::Todo), ..Default::default() }), [1, 4]);
    assert_eq!(by(&mut s, TaskQuery { priority: Some(Priority::High), ..Default::default() }), [1, 2]);
    assert_eq!(by(&mut s, TaskQuery { assignee: Some(1), ..Default::default() }), [1, 2]);
    assert_eq!(by(&mut s, TaskQuery { assignee: Some(1), status: Some(Status::Done), ..Default::default() }), [2]);
    let paged = s.list_tasks(&TaskQuery { page: PageRequest::new(1, 2), ..Default::default() }).unwrap();
    assert_eq!(paged.data.iter().map(|t| t.id).collect::<Vec<_>>(), [2, 3]);
    assert_eq!((paged.pagination.total, paged.pagination.has_more), (4, true));

    let stats = s.task_stats(NaiveDate::from_ymd_opt(2026, 6, 1).unwrap()).unwrap();
    assert_eq!(stats.total, 4);
    assert_eq!(stats.by_status["todo"], 2);
    assert_eq!(stats.by_status["in_progress"], 1);
    assert_eq!(stats.by_status["done"], 1);
    assert_eq!((stats.by_priority["low"], stats.by_priority["medium"], stats.by_priority["high"]), (2, 0, 2));
    assert_eq!(stats.overdue, 1, "t1 is overdue; t2 is done; t5 is due later");

    // Deleting a user unassigns their tasks.
    let del = s.apply(12, 1, &Command::new(at(12), Op::DeleteUser { id: 1 })).unwrap();
    assert_eq!(applied_reply(del), Reply::Deleted { id: 1 });
    assert_eq!(s.get_user(1).unwrap(), None);
    let t1 = s.get_task(1).unwrap().unwrap();
    assert_eq!((t1.assignee, t1.updated_at.as_str()), (None, "2026-09-21T14:13:32.000000Z"));
    assert_eq!(by(&mut s, TaskQuery { assignee: Some(1), ..Default::default() }), Vec::<i64>::new());
    let users = s.list_users(PageRequest::default()).unwrap();
    assert_eq!(users.data.iter().map(|u| u.id).collect::<Vec<_>>(), [2]);
}

fn an_index_is_applied_once_and_survives_reopening(b: Backend) {
    let (_dir, path, mut s) = open_temp(b);
    let cmd = Command::new(at(0), Op::CreateProduct { product: product("a", 1.0) });
    assert!(matches!(s.apply(1, 1, &cmd).unwrap(), ApplyOutcome::Applied { .. }));
    assert_eq!(s.apply(1, 1, &cmd).unwrap(), ApplyOutcome::AlreadyApplied);
    s.apply(3, 2, &cmd).unwrap();
    assert_eq!(s.apply(2, 1, &cmd).unwrap(), ApplyOutcome::AlreadyApplied, "an older index is skipped");
    assert!(!s.skip(3, 2).unwrap());
    assert!(s.skip(4, 2).unwrap());
    let before = s.dump().unwrap();
    assert_eq!(before.products.len(), 2);
    drop(s);

    let mut reopened = Store::open(&path).unwrap();
    assert_eq!(reopened.last_applied().unwrap(), Applied { index: 4, term: 2 });
    assert_eq!(reopened.dump().unwrap(), before);
    assert_eq!(reopened.apply(3, 2, &cmd).unwrap(), ApplyOutcome::AlreadyApplied);
    assert_eq!(reopened.dump().unwrap(), before);
}

fn nodes_sharing_one_database_apply_each_entry_once(backend: Backend) {
    let (_dir, path, mut a) = open_temp(backend);
    let mut b = Store::open(&path).unwrap();
    let threads: Vec<_> = [path.clone(), path.clone()]
        .into_iter()
        .map(|p| {
            std::thread::spawn(move || {
                let mut s = Store::open(&p).unwrap();
                for i in 1..=50u64 {
                    s.apply(i, 1, &Command::new(at(i as i64), Op::CreateProduct { product: product("x", i as f64) }))
                        .unwrap();
                }
            })
        })
        .collect();
    for i in 1..=50u64 {
        let (first, second) = if i % 2 == 0 { (&mut a, &mut b) } else { (&mut b, &mut a) };
        let cmd = Command::new(at(i as i64), Op::CreateProduct { product: product("x", i as f64) });
        first.apply(i, 1, &cmd).unwrap();
        assert_eq!(second.apply(i, 1, &cmd).unwrap(), ApplyOutcome::AlreadyApplied);
    }
    for t in threads {
        t.join().unwrap();
    }
    let dump = a.dump().unwrap();
    assert_eq!(dump.products.len(), 50);
    assert_eq!(dump.products.iter().map(|p| p.price).collect::<Vec<_>>(), (1..=50).map(f64::from).collect::<Vec<_>>());
    assert_eq!(dump.meta.last_index, 50);
}

fn mixed_log() -> Vec<(u64, u64, Command)> {
    let ops = vec![
        Op::CreateUser { user: user("Ann", "ann@example.org") },
        Op::CreateUser { user: user("Dup", "ann@example.org") },
        Op::CreateProduct { product: product("a", 3.0) },
        Op::CreateProduct { product: product("bad", -1.0) },
        Op::ImportProducts { items: vec![product("b", 4.0), product("c", 5.0)] },
        Op::CreateTask { task: task("t", Status::Todo, Priority::High, Some(1), Some("2026-02-03")) },
        Op::CreateTask { task: task("orphan", Status::Todo, Priority::High, Some(7), None) },
        Op::UpdateProduct { id: 2, product: product("b2", 4.5) },
        Op::DeleteProduct { id: 99 },
        Op::DeleteUser { id: 1 },
        Op::CreateUser { user: user("Cid", "cid@example.org") },
        Op::UpdateTask { id: 1, task: task("t", Status::Done, Priority::Low, Some(2), None) },
        Op::DeleteTask { id: 1 },
    ];
    let mut log: Vec<(u64, u64, Command)> = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| (i as u64 + 1, 1 + i as u64 / 5, Command::new(at(i as i64), op)))
        .collect();
    log[2].2.idempotency_key = Some("k-a".into());
    let mut repeat = log[2].2.clone();
    repeat.at = at(100);
    log.push((log.len() as u64 + 1, 3, repeat));
    log
}

fn the_same_log_gives_the_same_state(b: Backend) {
    let log = mixed_log();
    assert!(
        matches!(&log[11].2.op, Op::UpdateTask { task, .. } if task.assignee == Some(2)),
        "the log reassigns the task to Cid, user 2: the refused Dup used no id"
    );
    let (_d1, _p1, mut one) = open_temp(b);
    let (_d2, _p2, mut two) = open_temp(b);
    let (_d3, _p3, mut batched) = open_temp(b);
    let outcomes_one: Vec<_> = log.iter().map(|(i, t, c)| one.apply(*i, *t, c).unwrap()).collect();
    let outcomes_two: Vec<_> = log.iter().map(|(i, t, c)| two.apply(*i, *t, c).unwrap()).collect();
    let outcomes_batched = [batched.apply_batch(&log[..6]).unwrap(), batched.apply_batch(&log[4..]).unwrap()].concat();
    assert_eq!(outcomes_one, outcomes_two);
    assert_eq!(outcomes_batched[6..8], [ApplyOutcome::AlreadyApplied, ApplyOutcome::AlreadyApplied]);
    assert_eq!([&outcomes_batched[..6], &outcomes_batched[8..]].concat(), outcomes_one);

    assert!(matches!(&outcomes_one[11], ApplyOutcome::Applied { status: 200, .. }), "{:?}", outcomes_one[11]);
    let dump = one.dump().unwrap();
    assert_eq!(dump, two.dump().unwrap());
    assert_eq!(dump, batched.dump().unwrap());
    assert_eq!(
        dump.products.iter().map(|p| (p.id, p.title.as_str())).collect::<Vec<_>>(),
        [(1, "a"), (2, "b2"), (3, "c")]
    );
    assert_eq!(dump.users.iter().map(|u| u.id).collect::<Vec<_>>(), [2]);
    assert!(dump.tasks.is_empty());
    assert_eq!((dump.meta.last_index, dump.meta.last_term), (14, 3));
    assert_eq!((dump.meta.next_product_id, dump.meta.next_user_id, dump.meta.next_task_id), (4, 3, 2));
}

fn a_repeated_idempotency_key_returns_the_first_outcome(b: Backend) {
    let (_dir, _path, mut s) = open_temp(b);
    let first = Command::new(at(1), Op::CreateProduct { product: product("a", 1.0) }).with_key("req-1");
    let out1 = s.apply(1, 1, &first).unwrap();
    let mut retry = first.clone();
    retry.at = at(50);
    let out2 = s.apply(2, 2, &retry).unwrap();
    assert_eq!(out1, out2);
    assert_eq!(s.list_products(&ProductQuery::default()).unwrap().pagination.total, 1);
    assert_eq!(s.last_applied().unwrap(), Applied { index: 2, term: 2 });

    // The key also remembers a refusal.
    let bad = Command::new(at(3), Op::DeleteProduct { id: 77 }).with_key("req-2");
    let refused = s.apply(3, 2, &bad).unwrap();
    assert_eq!(rejected_status(&refused), 404);
    let mut bad_again = bad.clone();
    bad_again.at = at(4);
    assert_eq!(s.apply(4, 2, &bad_again).unwrap(), refused);

    // A used key given with another request is refused, and that request changes nothing.
    let other_op = Command::new(at(5), Op::CreateProduct { product: product("b", 2.0) }).with_key("req-2");
    let reused = s.apply(5, 2, &other_op).unwrap();
    assert_eq!(rejected_status(&reused), 422);
    assert!(format!("{reused:?}").contains("was used for another request"), "{reused:?}");
    let other_body = Command::new(at(6), Op::CreateProduct { product: product("a", 1.5) }).with_key("req-1");
    assert_eq!(rejected_status(&s.apply(6, 2, &other_body).unwrap()), 422, "same operation, other body");
    assert_eq!(s.list_products(&ProductQuery::default()).unwrap().pagination.total, 1);
    assert_eq!(s.apply(7, 2, &first).unwrap(), out1, "the first request still gets its answer");

    let long = Command::new(at(8), Op::DeleteProduct { id: 1 }).with_key("k".repeat(300));
    assert_eq!(rejected_status(&s.apply(8, 2, &long).unwrap()), 422);
    assert!(s.get_product(1).unwrap().is_some());
    assert_eq!(s.dump().unwrap().idempotency.len(), 2);
}

fn apply_batch_is_one_transaction_with_one_outcome_per_entry(b: Backend) {
    let (_dir, _path, mut s) = open_temp(b);
    let log: Vec<(u64, u64, Command)> = (1..=200u64)
        .map(|i| (i, 1, Command::new(at(i as i64), Op::CreateProduct { product: product(&format!("p{i}"), i as f64) })))
        .collect();
    let outcomes = s.apply_batch(&log).unwrap();
    assert_eq!(outcomes.len(), 200);
    assert!(outcomes.iter().all(|o| matches!(o, ApplyOutcome::Applied { status: 201, .. })));
    assert_eq!(s.last_applied().unwrap(), Applied { index: 200, term: 1 });
    assert_eq!(s.list_products(&ProductQuery::default()).unwrap().pagination.total, 200);
    assert!(s.apply_batch(&log).unwrap().iter().all(|o| *o == ApplyOutcome::AlreadyApplied));
    assert!(s.apply_batch(&[]).unwrap().is_empty());
}

#[test]
fn commands_travel_as_json_log_values() {
    for (_, _, cmd) in mixed_log() {
        let value = serde_json::to_value(&cmd).unwrap();
        let back: Command = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(back, cmd, "{value}");
    }
    let json =
        r#"{"at":"2026-11-22T10:00:00Z","op":{"type":"create_task","task":{"title":"x","status":"in_progress"}}}"#;
    let cmd: Command = serde_json::from_str(json).unwrap();
    let Op::CreateTask { task } = cmd.op else { panic!() };
    assert_eq!((task.status, task.priority, task.assignee), (Status::InProgress, Priority::Medium, None));
    let unknown =
        r#"{"at":"2026-11-22T10:00:00Z","op":{"type":"create_user","user":{"name":"a","email":"a@b","x":1}}}"#;
    assert!(serde_json::from_str::<Command>(unknown).is_err());
    let bad_status =
        r#"{"at":"2026-11-22T10:00:00Z","op":{"type":"create_task","task":{"title":"x","status":"later"}}}"#;
    assert!(serde_json::from_str::<Command>(bad_status).is_err());
}

/// Three nodes on one database apply the same log at the same time, each from its own thread
/// and connection, some entry by entry and one in batches: every entry takes effect exactly
/// once, with the outcome a lone node gets, and the rows are those of a lone node.
fn three_nodes_on_one_database_apply_every_entry_once(b: Backend) {
    let mut log = mixed_log();
    let first_free = log.len() as u64 + 1;
    log.extend((first_free..first_free + 60).map(|i| {
        let op = Op::CreateProduct { product: product(&format!("p{i}"), i as f64) };
        (i, 4, Command::new(at(i as i64), op))
    }));
    let (_alone_db, _, mut alone) = open_temp(b);
    let expected: Vec<ApplyOutcome> = log.iter().map(|(i, t, c)| alone.apply(*i, *t, c).unwrap()).collect();

    let shared = TestDb::new(b);
    let (log, start) = (Arc::new(log), Arc::new(Barrier::new(3)));
    let nodes: Vec<_> = (0..3)
        .map(|node| {
            let (log, start, url) = (log.clone(), start.clone(), shared.url.clone());
            std::thread::spawn(move || {
                start.wait();
                // Opening together also races the migrations.
                let mut s = Store::open(&url).unwrap();
                if node == 2 {
                    log.chunks(7).flat_map(|batch| s.apply_batch(batch).unwrap()).collect::<Vec<_>>()
                } else {
                    log.iter().map(|(i, t, c)| s.apply(*i, *t, c).unwrap()).collect()
                }
            })
        })
        .collect();
    let outcomes: Vec<Vec<ApplyOutcome>> = nodes.into_iter().map(|n| n.join().unwrap()).collect();

    for (i, want) in expected.iter().enumerate() {
        let effective: Vec<&ApplyOutcome> =
            outcomes.iter().map(|o| &o[i]).filter(|o| **o != ApplyOutcome::AlreadyApplied).collect();
        assert_eq!(effective, [want], "entry {} must take effect exactly once", i + 1);
    }
    let mut s = shared.open();
    assert_eq!(s.dump().unwrap(), alone.dump().unwrap());
    assert_eq!(s.last_applied().unwrap(), Applied { index: log.len() as u64, term: 4 });
}

/// An uploaded file of thousands of products is one entry: all rows in one transaction, or
/// none when one item is bad.
fn an_upload_of_thousands_of_products_is_one_entry(b: Backend) {
    let (_dir, _path, mut s) = open_temp(b);
    let items: Vec<ProductInput> = (0..2500).map(|i| product(&format!("file{i}"), 1.0 + i as f64)).collect();
    let mut bad = items.clone();
    bad[1500].price = -1.0;
    let refused = s.apply(1, 1, &Command::new(at(1), Op::ImportProducts { items: bad })).unwrap();
    let ApplyOutcome::Rejected { status: 422, error } = &refused else { panic!("{refused:?}") };
    assert!(error.starts_with("item 1500:"), "{error}");
    let empty = s.apply(2, 1, &Command::new(at(2), Op::ImportProducts { items: vec![] })).unwrap();
    assert_eq!(rejected_status(&empty), 422);
    assert_eq!(s.list_products(&ProductQuery::default()).unwrap().pagination.total, 0);

    let out = s.apply(3, 1, &Command::new(at(3), Op::ImportProducts { items: items.clone() })).unwrap();
    assert_eq!(applied_reply(out), Reply::Imported { imported: 2500, ids: [1, 2500] }, "no ids used by refusals");
    let dump = s.dump().unwrap();
    assert_eq!(dump.products.len(), 2500);
    assert_eq!(dump.meta.next_product_id, 2501);
    let last = s.get_product(2500).unwrap().unwrap();
    assert_eq!((last.title.as_str(), last.price), ("file2499", 2500.0));
    assert_eq!(last.created_at, "2026-09-21T14:13:23.000000Z");
}

/// Each entry's outcome is kept by its index, so that a node sharing the database answers
/// its client with what another node's applying produced.
fn the_outcome_of_each_entry_is_kept_for_the_other_nodes(b: Backend) {
    let (_dir, path, mut first) = open_temp(b);
    let mut second = Store::open(&path).unwrap();
    let log = mixed_log();
    let outcomes: Vec<ApplyOutcome> = log.iter().map(|(i, t, c)| first.apply(*i, *t, c).unwrap()).collect();
    for ((index, term, cmd), outcome) in log.iter().zip(&outcomes) {
        assert_eq!(second.apply(*index, *term, cmd).unwrap(), ApplyOutcome::AlreadyApplied);
        assert_eq!(second.outcome_of(*index).unwrap().as_ref(), Some(outcome), "entry {index}");
    }
    assert!(outcomes.iter().any(|o| matches!(o, ApplyOutcome::Rejected { .. })));
    assert_eq!(second.outcome_of(log.len() as u64 + 1).unwrap(), None);
    // An entry without a command leaves no outcome.
    assert!(first.skip(log.len() as u64 + 1, 3).unwrap());
    assert_eq!(second.outcome_of(log.len() as u64 + 1).unwrap(), None);
}

/// HTTP reads go through a pool of connections while the applier writes: no read fails or
/// waits for the writer, and each sees a prefix of the applied entries, growing.
fn pooled_reads_run_beside_the_applier(b: Backend) {
    let (_db, url, mut writer) = open_temp(b);
    let pool = ReadPool::open(&url, 4).unwrap();
    assert_eq!(pool.is_embedded(), b == Backend::Sqlite);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (pool, done) = (pool.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut last, mut reads) = (0, 0);
                while !done.load(Ordering::Acquire) || reads == 0 {
                    let mut store = pool.get().unwrap();
                    let total = store.list_products(&ProductQuery::default()).unwrap().pagination.total;
                    assert!(total >= last, "a read went back from {last} to {total} products");
                    if total > 0 {
                        assert_eq!(store.get_product(total as i64).unwrap().map(|p| p.id), Some(total as i64));
                    }
                    (last, reads) = (total, reads + 1);
                }
                reads
            })
        })
        .collect();
    for batch in 0..20u64 {
        let entries: Vec<(u64, u64, Command)> = (1..=10)
            .map(|i| {
                let index = batch * 10 + i;
                (index, 1, Command::new(at(index as i64), Op::CreateProduct { product: product("p", index as f64) }))
            })
            .collect();
        writer.apply_batch(&entries).unwrap();
    }
    done.store(true, Ordering::Release);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(pool.get().unwrap().list_products(&ProductQuery::default()).unwrap().pagination.total, 200);
}

fn users_and_tasks_are_updated_in_place(b: Backend) {
    let (_dir, _path, mut s) = open_temp(b);
    let outcomes = apply_all(
        &mut s,
        &[
            Op::CreateUser { user: user("Ann", "ann@example.org") },
            Op::CreateUser { user: user("Bob", "bob@example.org") },
            Op::CreateTask { task: task("write", Status::Todo, Priority::Low, Some(1), Some("2026-03-01")) },
            Op::UpdateUser { id: 1, user: user("Ann Lee", " Ann.Lee@Example.org ") },
            Op::UpdateTask { id: 1, task: task("write more", Status::InProgress, Priority::High, Some(2), None) },
            // Keeping one's own e-mail is no conflict.
            Op::UpdateUser { id: 2, user: user("Bob B.", "bob@example.org") },
        ],
    );
    let created_ann = match &outcomes[0] {
        ApplyOutcome::Applied { status: 201, reply: Reply::User(u) } => u.clone(),
        other => panic!("{other:?}"),
    };
    let created_task = match &outcomes[2] {
        ApplyOutcome::Applied { status: 201, reply: Reply::Task(t) } => t.clone(),
        other => panic!("{other:?}"),
    };
    let ApplyOutcome::Applied { status: 200, reply: Reply::User(ann) } = &outcomes[3] else { panic!("{outcomes:?}") };
    assert_eq!((ann.id, ann.name.as_str(), ann.email.as_str()), (1, "Ann Lee", "ann.lee@example.org"));
    assert_eq!(ann.created_at, created_ann.created_at, "an update keeps the creation time");
    assert_eq!(s.get_user(1).unwrap().as_ref(), Some(&**ann));
    let ApplyOutcome::Applied { status: 200, reply: Reply::Task(t) } = &outcomes[4] else { panic!("{outcomes:?}") };
    assert_eq!(
        (t.id, t.title.as_str(), t.status.as_str(), t.priority.as_str(), t.assignee, t.due_date.as_deref()),
        (1, "write more", "in_progress", "high", Some(2), None)
    );
    assert_eq!(t.created_at, created_task.created_at);
    assert!(t.updated_at > created_task.updated_at, "{} after {}", t.updated_at, created_task.updated_at);
    assert_eq!(s.get_task(1).unwrap().as_ref(), Some(&**t));
    assert!(matches!(&outcomes[5], ApplyOutcome::Applied { status: 200, .. }), "{:?}", outcomes[5]);
    // The old address is free again; the new one is taken.
    let more = [
        Op::CreateUser { user: user("Another Ann", "ann@example.org") },
        Op::CreateUser { user: user("Copy", "ANN.LEE@example.org") },
    ];
    let more: Vec<_> = more
        .into_iter()
        .enumerate()
        .map(|(i, op)| s.apply(7 + i as u64, 1, &Command::new(at(7 + i as i64), op)).unwrap())
        .collect();
    assert!(matches!(&more[0], ApplyOutcome::Applied { status: 201, .. }), "{:?}", more[0]);
    assert_eq!(rejected_status(&more[1]), 409);
    let by_assignee = s.list_tasks(&TaskQuery { assignee: Some(2), ..Default::default() }).unwrap();
    assert_eq!(by_assignee.data.iter().map(|t| t.id).collect::<Vec<_>>(), [1]);
}

/// What a client may send that one of the databases could not store is refused on every
/// backend alike, and the log goes on; what they can all store comes back as it was sent.
fn writes_no_backend_could_store_are_refused_and_the_log_goes_on(b: Backend) {
    let (_dir, _path, mut s) = open_temp(b);
    let date = |y: i32| Some(NaiveDate::from_ymd_opt(y, 1, 1).unwrap());
    let with = |f: &dyn Fn(&mut ProductInput)| {
        let mut p = product("p", 1.0);
        f(&mut p);
        Op::CreateProduct { product: p }
    };
    let task_with = |f: &dyn Fn(&mut TaskInput)| {
        let mut t = task("t", Status::Todo, Priority::Low, None, None);
        f(&mut t);
        Op::CreateTask { task: t }
    };
    let refused = [
        with(&|p| p.title = "nul\0byte".into()),
        with(&|p| p.availability = Some("in\0stock".into())),
        with(&|p| p.link = Some("https://x/\u{1b}[31m".into())),
        with(&|p| p.title = "bell\u{7}".into()),
        with(&|p| p.title = "c1 \u{85} control".into()),
        with(&|p| p.scraped_at = Some(Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap())),
        with(&|p| p.scraped_at = Some(Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap())),
        Op::ImportProducts { items: vec![product("fine", 1.0), product("bad\0", 2.0)] },
        Op::CreateUser { user: user("nul\0", "n@example.org") },
        Op::CreateUser { user: user("Nul", "n\0@example.org") },
        Op::CreateUser { user: user("Long", &format!("{}@example.org", "a".repeat(243))) },
        task_with(&|t| t.title = "\0".into()),
        task_with(&|t| t.description = Some("tab\tis fine but \0 is not".into())),
        task_with(&|t| t.due_date = date(10_000)),
        task_with(&|t| t.due_date = date(-1)),
    ];
    let n = refused.len() as u64;
    for (i, op) in refused.iter().enumerate() {
        let out = s.apply(i as u64 + 1, 1, &Command::new(at(0), op.clone())).unwrap();
        assert_eq!(rejected_status(&out), 422, "{op:?}: {out:?}");
    }
    let key = Command::new(at(0), Op::DeleteProduct { id: 1 }).with_key("k\0");
    assert_eq!(rejected_status(&s.apply(n + 1, 1, &key).unwrap()), 422);
    assert_eq!(s.last_applied().unwrap(), Applied { index: n + 1, term: 1 }, "every refusal is applied");
    let dump = s.dump().unwrap();
    assert!(dump.products.is_empty() && dump.users.is_empty() && dump.tasks.is_empty(), "{dump:?}");

    // Beyond ASCII and at the edges of what is allowed: stored, and read back unchanged.
    let title = "Ünïcödé 書名 — 📚 \u{10FFFF}";
    let accepted = [
        with(&|p| {
            p.title = title.into();
            p.scraped_at = Some(Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap());
        }),
        Op::CreateUser { user: user("José 🙂", "josé@example.org") },
        // A different address from josé's, though some collations would call them equal.
        Op::CreateUser { user: user("Jose", "jose@example.org") },
        Op::CreateUser { user: user("Max", &format!("{}@example.org", "a".repeat(242))) },
        task_with(&|t| {
            t.description = Some("line one\r\n\tline two 🙂".into());
            t.due_date = date(9999);
        }),
        task_with(&|t| t.due_date = date(0)),
        // The extremes of a double: the largest, the smallest (subnormal) and negative zero.
        with(&|p| {
            p.price = f64::MAX;
            p.converted_price = Some(f64::from_bits(1));
        }),
        with(&|p| {
            p.price = -0.0;
            p.converted_price = Some(-0.0);
        }),
    ];
    let outs: Vec<_> = accepted
        .iter()
        .enumerate()
        .map(|(i, op)| s.apply(n + 2 + i as u64, 1, &Command::new(at(1), op.clone())).unwrap())
        .collect();
    for (op, out) in accepted.iter().zip(&outs) {
        assert!(matches!(out, ApplyOutcome::Applied { status: 201, .. }), "{op:?}: {out:?}");
    }
    let p = s.get_product(1).unwrap().unwrap();
    assert_eq!((p.title.as_str(), p.scraped_at.as_deref()), (title, Some("9999-12-31T23:59:59.000000Z")));
    assert_eq!(s.get_user(1).unwrap().unwrap().name, "José 🙂");
    assert_eq!(
        s.list_users(PageRequest::default()).unwrap().data.iter().map(|u| u.email.as_str()).collect::<Vec<_>>(),
        ["josé@example.org", "jose@example.org", &format!("{}@example.org", "a".repeat(242))]
    );
    let t = s.get_task(1).unwrap().unwrap();
    assert_eq!(
        (t.description.as_deref(), t.due_date.as_deref()),
        (Some("line one\r\n\tline two 🙂"), Some("9999-01-01"))
    );
    assert_eq!(s.get_task(2).unwrap().unwrap().due_date.as_deref(), Some("0000-01-01"));
    let p = s.get_product(2).unwrap().unwrap();
    assert_eq!((p.price, p.converted_price.map(f64::to_bits)), (f64::MAX, Some(1)));
    // Negative zero is stored as zero, which every backend reads back alike (SQLite would
    // turn it into zero, PostgreSQL would keep it), and answered as stored.
    let stored = s.get_product(3).unwrap().unwrap();
    let ApplyOutcome::Applied { reply: Reply::Product(answered), .. } = &outs[outs.len() - 1] else { unreachable!() };
    for p in [&stored, &**answered] {
        assert_eq!((p.price.to_bits(), p.converted_price.map(f64::to_bits)), (0, Some(0)), "{p:?}");
    }
}

/// Runs each listed test once per backend of the build, each in a module named after it.
/// A password hash as the leader proposes it (the store checks its form, not its content).
fn hash_of(salt: &str) -> String {
    format!("$argon2id$v=19$m=19456,t=2,p=1${salt}$aGFzaGhhc2hoYXNo")
}

fn account(name: &str, role: Role, salt: &str) -> AccountInput {
    AccountInput { name: name.into(), role, password_hash: hash_of(salt) }
}

fn token_hash(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn accounts_and_sessions_through_commands(b: Backend) {
    let (_dir, _path, mut s) = open_temp(b);
    let epoch = s.access_epoch();
    let before = epoch.current();
    let ops = [
        Op::BootstrapAdmin { account: account("root", Role::Admin, "c2FsdDE") },
        Op::BootstrapAdmin { account: account("other", Role::Admin, "c2FsdDI") },
        Op::CreateAccount { account: account("ann", Role::Member, "c2FsdDM") },
        Op::CreateAccount { account: account("ann", Role::Viewer, "c2FsdDQ") },
        Op::CreateAccount { account: account("bad name", Role::Viewer, "c2FsdDQ") },
        Op::CreateAccount {
            account: AccountInput { name: "eve".into(), role: Role::Viewer, password_hash: "hunter22".into() },
        },
        Op::Login { token_hash: token_hash(1), account: "ann".into(), expires_at: at(100) },
        Op::Login { token_hash: token_hash(2), account: "nobody".into(), expires_at: at(100) },
        Op::UpdateAccount { name: "root".into(), role: Some(Role::Member), password_hash: None },
        Op::DeleteAccount { name: "root".into() },
    ];
    let outcomes = apply_all(&mut s, &ops);
    assert!(epoch.current() > before, "applying account entries moves the access epoch");
    assert!(
        matches!(&outcomes[0], ApplyOutcome::Applied { status: 201, reply: Reply::Account(a) } if a.role == "admin")
    );
    assert_eq!(rejected_status(&outcomes[1]), 409, "an admin exists: the bootstrap does nothing");
    assert!(matches!(&outcomes[2], ApplyOutcome::Applied { status: 201, .. }));
    assert_eq!(rejected_status(&outcomes[3]), 409, "the name is taken");
    assert_eq!(rejected_status(&outcomes[4]), 422);
    assert_eq!(rejected_status(&outcomes[5]), 422, "a password in clear is never stored");
    assert!(
        matches!(&outcomes[6], ApplyOutcome::Applied { status: 201, reply: Reply::Session { account, role, .. } } if account == "ann" && role == "member")
    );
    assert_eq!(rejected_status(&outcomes[7]), 401);
    assert_eq!(rejected_status(&outcomes[8]), 409, "the last admin keeps the role");
    assert_eq!(rejected_status(&outcomes[9]), 409, "the last admin stays");

    let (session, role) = s.session(&token_hash(1)).unwrap().expect("ann's session");
    assert_eq!((session.account.as_str(), role.as_str()), ("ann", "member"));
    assert_eq!(session.expires_at, "2026-09-21T14:15:00.000000Z");
    assert!(s.session(&token_hash(2)).unwrap().is_none());
    assert!(s.has_admin().unwrap());

    let mut next = 11;
    let mut apply = |s: &mut Store, secs: i64, op: Op| {
        next += 1;
        s.apply(next - 1, 1, &Command::new(at(secs), op)).unwrap()
    };
    // A new role shows in the session at once; a new password replaces the hash.
    let changed = apply(
        &mut s,
        20,
        Op::UpdateAccount { name: "ann".into(), role: Some(Role::Viewer), password_hash: Some(hash_of("c2FsdDU")) },
    );
    assert!(matches!(changed, ApplyOutcome::Applied { status: 200, .. }), "{changed:?}");
    assert_eq!(s.session(&token_hash(1)).unwrap().unwrap().1, "viewer");
    assert_eq!(s.account("ann").unwrap().unwrap().password_hash, hash_of("c2FsdDU"));
    // A login after ann's session expired deletes it.
    apply(&mut s, 200, Op::Login { token_hash: token_hash(3), account: "root".into(), expires_at: at(300) });
    assert!(s.session(&token_hash(1)).unwrap().is_none(), "expired sessions are pruned");
    apply(&mut s, 201, Op::Login { token_hash: token_hash(4), account: "ann".into(), expires_at: at(300) });
    assert_eq!(
        apply(&mut s, 202, Op::Logout { token_hash: token_hash(3) }),
        ApplyOutcome::Applied { status: 200, reply: Reply::LoggedOut }
    );
    assert!(s.session(&token_hash(3)).unwrap().is_none());
    // Deleting an account ends its sessions.
    assert!(matches!(
        apply(&mut s, 203, Op::DeleteAccount { name: "ann".into() }),
        ApplyOutcome::Applied { status: 200, .. }
    ));
    assert!(s.session(&token_hash(4)).unwrap().is_none());
    assert!(s.account("ann").unwrap().is_none());
    // A second admin may be demoted, then the first is no longer the last.
    apply(&mut s, 204, Op::CreateAccount { account: account("bob", Role::Admin, "c2FsdDY") });
    assert!(matches!(apply(&mut s, 205, Op::DeleteAccount { name: "root".into() }), ApplyOutcome::Applied { .. }));
    assert_eq!(rejected_status(&apply(&mut s, 206, Op::DeleteAccount { name: "bob".into() })), 409);

    // A retried account write with the same key, hashed again with a new salt, is the same request.
    let create = |salt: &str| {
        Command::new(at(207), Op::CreateAccount { account: account("cy", Role::Viewer, salt) }).with_key("acct-cy")
    };
    let first = s.apply(next, 1, &create("c2FsdDc")).unwrap();
    assert_eq!(s.apply(next + 1, 1, &create("c2FsdDg")).unwrap(), first);

    let listed = s.list_accounts(PageRequest::default()).unwrap();
    assert_eq!(listed.data.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["bob", "cy"]);
    let text = serde_json::to_string(&listed).unwrap();
    assert!(!text.contains("argon2"), "a listing shows no hash: {text}");
    let dump = s.dump().unwrap();
    assert_eq!(dump.accounts.len(), 2);
    assert!(dump.sessions.iter().all(|s| s.token_hash.len() == 64));
}

macro_rules! per_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $test() { super::$test(super::Backend::Sqlite) })*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(#[test] fn $test() { if super::Backend::Postgres.available() { super::$test(super::Backend::Postgres) } })*
        }
        #[cfg(feature = "mysql")]
        mod mysql {
            $(#[test] fn $test() { if super::Backend::Mysql.available() { super::$test(super::Backend::Mysql) } })*
        }
    };
}

per_backend!(
    accounts_and_sessions_through_commands,
    products_crud_through_commands,
    invalid_products_are_rejected_with_422,
    product_listing_paginates_and_filters_by_price,
    users_and_tasks_keep_referential_integrity,
    an_index_is_applied_once_and_survives_reopening,
    nodes_sharing_one_database_apply_each_entry_once,
    three_nodes_on_one_database_apply_every_entry_once,
    the_same_log_gives_the_same_state,
    a_repeated_idempotency_key_returns_the_first_outcome,
    apply_batch_is_one_transaction_with_one_outcome_per_entry,
    an_upload_of_thousands_of_products_is_one_entry,
    the_outcome_of_each_entry_is_kept_for_the_other_nodes,
    pooled_reads_run_beside_the_applier,
    users_and_tasks_are_updated_in_place,
    writes_no_backend_could_store_are_refused_and_the_log_goes_on,
);

#[test]
fn outcomes_of_old_entries_are_pruned() {
    use labctl::node::store::OUTCOMES_KEPT;
    let (_dir, _path, mut s) = open_temp(Backend::Sqlite);
    let n = OUTCOMES_KEPT + 2_000;
    let log: Vec<(u64, u64, Command)> =
        (1..=n).map(|i| (i, 1, Command::new(at(0), Op::DeleteProduct { id: i as i64 }))).collect();
    for chunk in log.chunks(1000) {
        s.apply_batch(chunk).unwrap();
    }
    assert_eq!(s.outcome_of(n - OUTCOMES_KEPT + 1).unwrap().map(|o| rejected_status(&o)), Some(404));
    assert_eq!(s.outcome_of(n).unwrap().map(|o| rejected_status(&o)), Some(404));
    assert_eq!(s.outcome_of(n - OUTCOMES_KEPT).unwrap(), None, "pruned");
    assert_eq!(s.outcome_of(1).unwrap(), None, "pruned");
}

/// A node's own database keeps no outcomes for other nodes, and ends in the same state with
/// the same answers as one that does.
#[test]
fn a_private_database_keeps_no_outcomes_and_the_same_state() {
    let (_shared_dir, _, mut shared) = open_temp(Backend::Sqlite);
    let (_private_dir, _, private) = open_temp(Backend::Sqlite);
    let mut private = private.private();
    let log = mixed_log();
    for (index, term, cmd) in &log {
        assert_eq!(private.apply(*index, *term, cmd).unwrap(), shared.apply(*index, *term, cmd).unwrap(), "{index}");
    }
    assert_eq!(private.dump().unwrap(), shared.dump().unwrap());
    assert_eq!(private.last_applied().unwrap(), shared.last_applied().unwrap());
    for (index, _, _) in &log {
        assert!(shared.outcome_of(*index).unwrap().is_some());
        assert_eq!(private.outcome_of(*index).unwrap(), None, "entry {index}");
    }
}

/// A PostgreSQL database in another encoding than UTF8 could not store every text a client
/// may send: a node refuses it at start, saying why, and creates nothing in it.
#[cfg(feature = "postgres")]
#[test]
fn a_postgresql_database_not_in_utf8_is_refused() {
    use diesel::{Connection, RunQueryDsl};
    if !Backend::Postgres.available() {
        return;
    }
    let db =
        TestDb::with_options(Backend::Postgres, " ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0");
    let error = Store::open(&db.url).unwrap_err();
    assert!(matches!(&error, StoreError::Encoding { found } if found == "LATIN1"), "{error:?}");
    assert!(error.to_string().contains("needs a UTF8 database"), "{error}");
    let mut conn = diesel::PgConnection::establish(&db.url).unwrap();
    let tables: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public')",
    ))
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(tables, 0, "nothing is created in a refused database");
}

#[test]
fn unsupported_urls_are_errors() {
    let mut unsupported = vec!["redis://127.0.0.1/0", "", "sqlite://"];
    if !cfg!(feature = "postgres") {
        unsupported.push("postgres://u@127.0.0.1/db");
    }
    if !cfg!(feature = "mysql") {
        unsupported.push("mysql://u@127.0.0.1/db");
    }
    for url in unsupported {
        assert!(matches!(Store::open(url), Err(StoreError::UnsupportedUrl { .. })), "{url}");
    }
    let mut mem = Store::open(":memory:").unwrap();
    assert_eq!(mem.last_applied().unwrap(), Applied::default());
    assert!(Store::open("/nonexistent-dir/x/y.db").is_err());
    let dir = tempfile::tempdir().unwrap();
    let plain_path = dir.path().join("plain.db");
    let store = Store::open(plain_path.to_str().unwrap()).unwrap();
    assert_eq!((store.backend(), format!("{store:?}").as_str()), ("sqlite", r#"Store { backend: "sqlite" }"#));
}

/// A node's own file written checkpointed (when it compacts its Raft log): commits stay in
/// the WAL, and a flushed checkpoint moves them into the file and starts the WAL again; with
/// a transaction open it says it is not done.
#[test]
fn a_checkpointed_file_keeps_commits_in_its_wal_until_a_flushed_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("own.db");
    let url = path.to_string_lossy().into_owned();
    let mut store = Store::open(&url).unwrap().private();
    store.checkpointed().unwrap();
    let wal = dir.path().join("own.db-wal");
    let file_before = std::fs::metadata(&path).unwrap().len();
    for i in 1..=600 {
        let cmd = Command::new(at(i), Op::CreateProduct { product: product(&format!("p{i}"), 1.0) });
        store.apply(i as u64, 1, &cmd).unwrap();
    }
    let wal_len = std::fs::metadata(&wal).unwrap().len();
    assert!(wal_len > 1000 * 4096, "600 commits: a WAL of {wal_len} bytes, past SQLite's own checkpoint");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), file_before, "SQLite checkpointed on its own");
    // An entry run ahead of its commit leaves its transaction open: the checkpoint waits.
    let next = Command::new(at(601), Op::CreateProduct { product: product("p601", 1.0) });
    store.apply_open(&[(601, 1, next)]).unwrap();
    assert!(!store.checkpoint_flushed().unwrap(), "checkpointed inside an open transaction");
    store.commit_open().unwrap();
    assert!(store.checkpoint_flushed().unwrap());
    assert!(std::fs::metadata(&path).unwrap().len() > file_before);
    let wal_len = std::fs::metadata(&wal).unwrap().len();
    // The file alone, without its WAL, holds them.
    let copy = dir.path().join("copy.db");
    std::fs::copy(&path, &copy).unwrap();
    let mut other = Store::open(copy.to_str().unwrap()).unwrap();
    assert_eq!(other.last_applied().unwrap().index, 601, "the file holds them");
    assert!(other.get_product(601).unwrap().is_some());
    // Later commits start the WAL again from its beginning, in the blocks it has.
    let next = Command::new(at(602), Op::CreateProduct { product: product("p602", 1.0) });
    store.apply(602, 1, &next).unwrap();
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), wal_len, "the WAL was truncated or grew");
}
