//! A snapshot is written and loaded a page of rows at a time: the memory it takes does not
//! grow with the database. Measured with a counting allocator, which sees Rust's allocations
//! (rows, lines, batches), not SQLite's own page cache, which is bounded by its settings.
//! Alone in its test binary, so that no other test's allocations count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{TimeZone, Utc};
use labctl::node::store::{Command, Op, ProductInput, Store};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most memory `f` held at once beyond what was held before it.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = f();
    (result, PEAK.load(Ordering::Relaxed).saturating_sub(before))
}

#[test]
fn memory_does_not_grow_with_the_rows() {
    const ROWS: usize = 50_000;
    const BOUND: usize = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let url = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let mut from = Store::open(&url("from.db")).unwrap();
    let at = Utc.timestamp_opt(1_790_000_000, 0).unwrap();
    for (i, chunk) in (0..ROWS).collect::<Vec<_>>().chunks(10_000).enumerate() {
        let items = chunk
            .iter()
            .map(|n| {
                let mut p = ProductInput::new(format!("product number {n} of the bounded-memory test"), 1.5, "GBP");
                p.link = Some(format!("https://books.toscrape.com/catalogue/{n}/index.html"));
                p
            })
            .collect();
        from.apply(i as u64 + 1, 1, &Command::new(at, Op::ImportProducts { items })).unwrap();
    }
    let path = dir.path().join("snapshot.jsonl");

    let (info, write_peak) = peak_of(|| labctl::node::store::snapshot::write_file(&mut from, &path).unwrap());
    assert!(info.size > 15 << 20, "a snapshot of {} bytes", info.size);
    assert!(write_peak < BOUND, "writing {} bytes held {write_peak} bytes at once", info.size);

    let mut to = Store::open(&url("to.db")).unwrap();
    let ((), load_peak) = peak_of(|| labctl::node::store::snapshot::load_file(&mut to, &path, &info).unwrap());
    assert!(load_peak < BOUND, "loading {} bytes held {load_peak} bytes at once", info.size);
    assert_eq!(to.last_applied().unwrap(), from.last_applied().unwrap());
    assert_eq!(to.list_products(&Default::default()).unwrap().pagination.total, ROWS as u64);
    eprintln!("snapshot of {ROWS} products: {} bytes; peak {write_peak} bytes writing, {load_peak} loading", info.size);
}
