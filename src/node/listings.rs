//! Listing pages kept until the database changes.
//!
//! A page of a listing depends only on its query and on the replicated state, and that state
//! changes only when an entry is applied. So a page is kept with the node's applied index read
//! just before it was built (the applier publishes an index once the transaction that applied
//! it has committed, so the page holds at least everything up to it); a request for the same
//! page at the same applied index gets the same bytes without asking the database at all.
//!
//! The page may include entries applied between reading the index and building it: it is never
//! older than the index it is kept under, so whoever reads that index gets data at least that
//! new, as a fresh read would. With several nodes sharing one database, the entries another
//! node applied reach this node's pages once this node's applier has passed them: a local read
//! follows its node's applied index, and a strong read waits for that index to reach its read
//! index first.

use std::collections::HashMap;
use std::sync::Mutex;

use actix_web::web::Bytes;

/// Pages kept at most; when full, all are dropped (the next requests build them again).
const MAX_PAGES: usize = 64;

/// Serialized listing pages by query, with the applied index each was built at.
#[derive(Default)]
pub struct ListingCache {
    pages: Mutex<HashMap<String, (u64, Bytes)>>,
}

impl ListingCache {
    /// The page for `query` if it was built at applied index `applied`.
    pub fn get(&self, query: &str, applied: u64) -> Option<Bytes> {
        let pages = self.pages.lock().ok()?;
        pages.get(query).filter(|(at, _)| *at == applied).map(|(_, body)| body.clone())
    }

    /// Keeps `body`, the page for `query` built after reading applied index `applied`.
    pub fn put(&self, query: String, applied: u64, body: Bytes) {
        let Ok(mut pages) = self.pages.lock() else { return };
        if pages.len() >= MAX_PAGES && !pages.contains_key(&query) {
            pages.clear();
        }
        match pages.get(&query) {
            // A slower request may come back with an older page: keep the newer one.
            Some((at, _)) if *at > applied => {}
            _ => {
                pages.insert(query, (applied, body));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_served_only_at_the_applied_index_it_was_built_at() {
        let cache = ListingCache::default();
        cache.put("q".into(), 5, Bytes::from_static(b"at 5"));
        assert_eq!(cache.get("q", 5), Some(Bytes::from_static(b"at 5")));
        assert_eq!(cache.get("q", 6), None, "the database changed since");
        assert_eq!(cache.get("other", 5), None);
        cache.put("q".into(), 7, Bytes::from_static(b"at 7"));
        cache.put("q".into(), 6, Bytes::from_static(b"at 6"));
        assert_eq!(cache.get("q", 7), Some(Bytes::from_static(b"at 7")), "an older page replaced a newer one");
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = ListingCache::default();
        for i in 0..(3 * MAX_PAGES as u64) {
            cache.put(format!("q{i}"), 1, Bytes::from_static(b"page"));
            assert!(cache.pages.lock().unwrap().len() <= MAX_PAGES);
        }
    }
}
