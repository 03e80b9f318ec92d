//! Rows of the replicated tables and the shapes of read queries and their answers.

use std::collections::BTreeMap;

use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use super::command::{Priority, Status};
use super::schema::{accounts, apply_outcomes, idempotency_keys, meta, products, sessions, tasks, users};

/// Default page size of a listing.
pub const DEFAULT_LIMIT: u64 = 20;
/// Largest page size of a listing; larger requests are cut to this.
pub const MAX_LIMIT: u64 = 100;

// In the rows with optional columns here, None inserts NULL (`treat_none_as_default_value =
// false`), which is what the columns' default gives too: then every row has the same columns, and
// a batch of rows is one statement on SQLite as well (see `snapshot`), where diesel otherwise
// inserts row by row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = products, treat_none_as_null = true, treat_none_as_default_value = false)]
pub struct Product {
    pub id: i64,
    pub title: String,
    pub price: f64,
    pub currency: String,
    pub converted_price: Option<f64>,
    pub converted_currency: Option<String>,
    pub availability: Option<String>,
    pub rating: Option<i32>,
    pub link: Option<String>,
    pub scraped_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = users, treat_none_as_null = true)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = tasks, treat_none_as_null = true, treat_none_as_default_value = false)]
pub struct Task {
    pub id: i64,
    pub title: String,
    pub description: Option<String>,
    /// `YYYY-MM-DD`.
    pub due_date: Option<String>,
    /// `todo`, `in_progress` or `done`.
    pub status: String,
    /// `low`, `medium` or `high`.
    pub priority: String,
    pub assignee: Option<i64>,
    pub created_at: String,
    pub updated_at: String,
}

/// Someone who may log in (see [`crate::node::auth`]). The password is kept only as its
/// argon2id hash (a PHC string); [`AccountView`] is what is shown of it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = accounts)]
pub struct Account {
    pub name: String,
    /// `viewer`, `member` or `admin`.
    pub role: String,
    pub password_hash: String,
    pub created_at: String,
    pub updated_at: String,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

impl Account {
    pub fn view(&self) -> AccountView {
        AccountView {
            name: self.name.clone(),
            role: self.role.clone(),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
        }
    }
}

/// An account as the API shows it: without its password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub name: String,
    pub role: String,
    pub created_at: String,
    pub updated_at: String,
}

/// A login: the SHA-256 (hex) of its bearer token, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Queryable, Selectable, Insertable)]
#[diesel(table_name = sessions)]
pub struct Session {
    pub token_hash: String,
    pub account: String,
    /// UTC, the fixed-width text of every timestamp here.
    pub expires_at: String,
    pub created_at: String,
}

/// The bookkeeping row: what was applied last and the next id of each table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Queryable, Selectable, AsChangeset)]
#[diesel(table_name = meta)]
pub struct Meta {
    pub last_index: i64,
    pub last_term: i64,
    pub next_product_id: i64,
    pub next_user_id: i64,
    pub next_task_id: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Queryable, Selectable, Insertable)]
#[diesel(table_name = idempotency_keys, treat_none_as_default_value = false)]
pub struct IdempotencyRecord {
    pub idem_key: String,
    pub log_index: i64,
    /// The JSON of the first [`ApplyOutcome`](super::ApplyOutcome).
    pub outcome: String,
    /// SHA-256 (hex) of the operation the key was first used for; none for keys recorded
    /// before fingerprints were kept.
    pub fingerprint: Option<String>,
}

/// What applying one log entry answered, kept for the other nodes sharing the database (see
/// [`Store::outcome_of`](super::Store::outcome_of)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Queryable, Selectable, Insertable)]
#[diesel(table_name = apply_outcomes)]
pub struct OutcomeRecord {
    pub log_index: i64,
    /// The JSON of the [`ApplyOutcome`](super::ApplyOutcome).
    pub outcome: String,
}

/// The last log entry the database reflects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Applied {
    pub index: u64,
    pub term: u64,
}

/// Which slice of a listing to return. `limit` is bounded by [`MAX_LIMIT`] and at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PageRequest {
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(default)]
    pub limit: Option<u64>,
}

impl PageRequest {
    pub fn new(offset: u64, limit: u64) -> PageRequest {
        PageRequest { offset: Some(offset), limit: Some(limit) }
    }

    /// `(offset, limit)` as the database takes them.
    pub(super) fn bounded(self) -> (i64, i64) {
        let offset = self.offset.unwrap_or(0).min(i64::MAX as u64) as i64;
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT) as i64;
        (offset, limit)
    }
}

/// One page of a listing: serializes as `{"data":[…],"pagination":{…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub pagination: Pagination,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pagination {
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
    pub has_more: bool,
}

impl<T> Page<T> {
    pub(super) fn new(data: Vec<T>, total: i64, offset: i64, limit: i64) -> Page<T> {
        let total = total.max(0) as u64;
        let offset = offset as u64;
        let has_more = offset.saturating_add(data.len() as u64) < total;
        Page { data, pagination: Pagination { total, offset, limit: limit as u64, has_more } }
    }
}

/// Filters of the product listing; bounds are inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ProductQuery {
    #[serde(flatten)]
    pub page: PageRequest,
    #[serde(default)]
    pub min_price: Option<f64>,
    #[serde(default)]
    pub max_price: Option<f64>,
}

/// Filters of the task listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaskQuery {
    #[serde(flatten)]
    pub page: PageRequest,
    #[serde(default)]
    pub status: Option<Status>,
    #[serde(default)]
    pub priority: Option<Priority>,
    #[serde(default)]
    pub assignee: Option<i64>,
}

/// Counts of tasks; every status and priority is present, zero if none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStats {
    pub total: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_priority: BTreeMap<String, u64>,
    /// Tasks not done whose due date is before the given day.
    pub overdue: u64,
}

/// Everything in the replicated state, in id order: two nodes that applied the same log have
/// equal dumps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dump {
    pub meta: Meta,
    pub products: Vec<Product>,
    pub users: Vec<User>,
    pub tasks: Vec<Task>,
    pub idempotency: Vec<IdempotencyRecord>,
    pub accounts: Vec<Account>,
    pub sessions: Vec<Session>,
}
