//! What a Raft log entry carries for the database, and what applying it answered.
//!
//! A [`Command`] is serialized into the `value` of a log entry. Everything a node needs to apply
//! it is inside: the operation, the leader's clock when it accepted the write ([`Command::at`],
//! used for every timestamp so that nodes agree), and the client's idempotency key.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::models::{AccountView, Product, Task, User};

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// One replicated write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// A repeated key returns the first outcome and changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The leader's clock when it accepted the write; stamps `created_at`/`updated_at`.
    pub at: DateTime<Utc>,
    pub op: Op,
}

impl Command {
    pub fn new(at: DateTime<Utc>, op: Op) -> Command {
        Command { idempotency_key: None, at, op }
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Command {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// The operations on the replicated database. Updates replace every field (HTTP `PUT`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    CreateProduct {
        product: ProductInput,
    },
    UpdateProduct {
        id: i64,
        product: ProductInput,
    },
    DeleteProduct {
        id: i64,
    },
    /// An uploaded file: all rows or none.
    ImportProducts {
        items: Vec<ProductInput>,
    },
    CreateUser {
        user: UserInput,
    },
    UpdateUser {
        id: i64,
        user: UserInput,
    },
    /// Tasks assigned to the user become unassigned.
    DeleteUser {
        id: i64,
    },
    CreateTask {
        task: TaskInput,
    },
    UpdateTask {
        id: i64,
        task: TaskInput,
    },
    DeleteTask {
        id: i64,
    },
    /// A new account; the leader hashed its password before proposing, so that the log and
    /// the database hold only the hash.
    CreateAccount {
        account: AccountInput,
    },
    /// A new role or password (hashed) for an account; what is absent is kept. The last admin
    /// is never demoted.
    UpdateAccount {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_hash: Option<String>,
    },
    /// The account and its sessions; never the last admin.
    DeleteAccount {
        name: String,
    },
    /// The first admin, from the configuration: created only while no admin exists, so that
    /// every leader may propose it and only the first one counts.
    BootstrapAdmin {
        account: AccountInput,
    },
    /// A session of `account` until `expires_at`, known by the SHA-256 of its token; expired
    /// sessions are deleted with it.
    Login {
        token_hash: String,
        account: String,
        expires_at: DateTime<Utc>,
    },
    /// Ends the session of a token (by its hash).
    Logout {
        token_hash: String,
    },
}

impl Op {
    /// Whether applying the operation changes who may do what (accounts, sessions): the
    /// authentication caches are invalidated around it.
    pub fn changes_access(&self) -> bool {
        matches!(
            self,
            Op::CreateAccount { .. }
                | Op::UpdateAccount { .. }
                | Op::DeleteAccount { .. }
                | Op::BootstrapAdmin { .. }
                | Op::Login { .. }
                | Op::Logout { .. }
        )
    }
}

/// What a role may do; each may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads, and writes of tasks and products.
    Member,
    /// Everything: accounts, task users, uploads, the console's control buttons.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Member, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: viewer, member or admin"))
    }
}

/// An account as a log entry carries it: the password only as its argon2id hash.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountInput {
    pub name: String,
    pub role: Role,
    pub password_hash: String,
}

impl std::fmt::Debug for AccountInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountInput").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

/// Longest account name.
pub const MAX_ACCOUNT_NAME: usize = 64;

/// Checks an account name: 1 to 64 letters, digits, `.`, `_`, `-` or `@`. Names are
/// compared as given (the clients send them back as they were created).
pub fn check_account_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_ACCOUNT_NAME {
        return Err(format!("an account name is 1 to {MAX_ACCOUNT_NAME} characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@')) {
        return Err("an account name holds only letters, digits, '.', '_', '-' and '@'".into());
    }
    Ok(())
}

/// A password hash as the log carries it: an argon2id PHC string, never anything else (a
/// password in clear, say).
pub(super) fn check_password_hash(hash: &str) -> Result<(), Rejection> {
    if !hash.starts_with("$argon2id$") || hash.len() > 255 || hash.contains(char::is_control) {
        return Err(Rejection::invalid("a password is stored only as an argon2id hash"));
    }
    Ok(())
}

/// A token hash: SHA-256 in hex.
pub(super) fn check_token_hash(hash: &str) -> Result<(), Rejection> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Rejection::invalid("a session is known by the SHA-256 of its token"));
    }
    Ok(())
}

impl AccountInput {
    pub(super) fn validate(&self) -> Result<(), Rejection> {
        check_account_name(&self.name).map_err(Rejection::invalid)?;
        check_password_hash(&self.password_hash)
    }
}

/// A product as the scraper produces it or a client sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    pub title: String,
    pub price: f64,
    /// ISO 4217 code, e.g. `GBP`.
    pub currency: String,
    // Absent fields stay absent in log entries: an uploaded file of thousands of products is
    // one entry, and nulls would make it several times larger than the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted_price: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted_currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<String>,
    /// Stars, 0 to 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scraped_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserInput {
    pub name: String,
    /// Unique, compared case-insensitively (stored lower-case).
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskInput {
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub due_date: Option<NaiveDate>,
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub priority: Priority,
    /// A user id; must exist.
    #[serde(default)]
    pub assignee: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Todo,
    InProgress,
    Done,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Todo, Status::InProgress, Status::Done];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Todo => "todo",
            Status::InProgress => "in_progress",
            Status::Done => "done",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Status, String> {
        Status::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| format!("unknown status {s:?}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    #[default]
    Medium,
    High,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Low, Priority::Medium, Priority::High];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Priority, String> {
        Priority::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| format!("unknown priority {s:?}"))
    }
}

/// What applying one log entry did. Deterministic: every node applying the same entry to the
/// same state gets the same outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ApplyOutcome {
    /// The write took effect; `status` is the HTTP status to answer (201 or 200).
    Applied { status: u16, reply: Reply },
    /// The write was refused (404 unknown id, 409 conflict, 422 invalid) and changed nothing
    /// but the applied index.
    Rejected { status: u16, error: String },
    /// The index was applied before (by this node earlier, or by another node sharing the
    /// database); nothing was done.
    AlreadyApplied,
}

/// The body of a successful write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    Product(Box<Product>),
    User(Box<User>),
    Task(Box<Task>),
    Deleted {
        id: i64,
    },
    /// An uploaded file: how many products, and the first and last of their ids (the ids in
    /// between are theirs too).
    Imported {
        imported: usize,
        ids: [i64; 2],
    },
    Account(Box<AccountView>),
    /// A login: whose, and until when (the token itself is never in the log).
    Session {
        account: String,
        role: String,
        expires_at: String,
    },
    LoggedOut,
}

/// A refused write, before it becomes [`ApplyOutcome::Rejected`].
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Rejection {
    pub status: u16,
    pub error: String,
}

impl Rejection {
    pub fn not_found(what: &str, id: i64) -> Rejection {
        Rejection { status: 404, error: format!("{what} {id} does not exist") }
    }
    pub fn not_found_named(what: &str, name: &str) -> Rejection {
        Rejection { status: 404, error: format!("{what} {name:?} does not exist") }
    }
    pub fn conflict(error: impl Into<String>) -> Rejection {
        Rejection { status: 409, error: error.into() }
    }
    pub fn invalid(error: impl Into<String>) -> Rejection {
        Rejection { status: 422, error: error.into() }
    }
    pub fn unauthorized(error: impl Into<String>) -> Rejection {
        Rejection { status: 401, error: error.into() }
    }
}

const MAX_TEXT: usize = 10_000;

/// Longest e-mail address, in characters, as stored (lower-cased).
const MAX_EMAIL: usize = 254;

// Every check here runs when an entry is applied, in the same code on every node, so it
// decides alone whether a write is refused: a value that passes must be storable on every
// backend. A value one database would refuse with an error that is not a constraint (a NUL
// byte in PostgreSQL text, a date too long for its column) would otherwise fail the entry on
// that database again and again, and stop every node applying the log behind it.

fn check_text(field: &str, value: &str, required: bool) -> Result<(), Rejection> {
    if required && value.trim().is_empty() {
        return Err(Rejection::invalid(format!("{field} must not be empty")));
    }
    if value.len() > MAX_TEXT {
        return Err(Rejection::invalid(format!("{field} is longer than {MAX_TEXT} bytes")));
    }
    check_characters(field, value)
}

/// Refuses NUL and the other control characters but tab, line feed and carriage return.
fn check_characters(field: &str, value: &str) -> Result<(), Rejection> {
    if let Some(c) = value.chars().find(|&c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
        return Err(Rejection::invalid(format!("{field} must not hold the control character {:?}", c)));
    }
    Ok(())
}

/// Dates and times are stored as text of fixed width, so their years have four digits.
pub(super) fn check_year(field: &str, year: i32) -> Result<(), Rejection> {
    if !(0..=9999).contains(&year) {
        return Err(Rejection::invalid(format!("{field} must be in the years 0000 to 9999")));
    }
    Ok(())
}

fn check_amount(field: &str, value: f64) -> Result<(), Rejection> {
    if !value.is_finite() || value < 0.0 {
        return Err(Rejection::invalid(format!("{field} must be a finite number ≥ 0")));
    }
    Ok(())
}

fn check_currency(field: &str, value: &str) -> Result<(), Rejection> {
    if value.len() != 3 || !value.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Rejection::invalid(format!("{field} must be a 3-letter ISO 4217 code such as GBP")));
    }
    Ok(())
}

impl ProductInput {
    /// A product with the required fields only.
    pub fn new(title: impl Into<String>, price: f64, currency: impl Into<String>) -> ProductInput {
        ProductInput {
            title: title.into(),
            price,
            currency: currency.into(),
            converted_price: None,
            converted_currency: None,
            availability: None,
            rating: None,
            link: None,
            scraped_at: None,
        }
    }

    /// The checks a write of this product passes when it is applied, for checking an upload
    /// before it is replicated.
    pub fn check(&self) -> Result<(), String> {
        self.validate().map_err(|r| r.error)
    }

    pub(super) fn validate(&self) -> Result<(), Rejection> {
        check_text("title", &self.title, true)?;
        check_amount("price", self.price)?;
        check_currency("currency", &self.currency)?;
        match (self.converted_price, &self.converted_currency) {
            (Some(p), Some(c)) => {
                check_amount("converted_price", p)?;
                check_currency("converted_currency", c)?;
            }
            (None, None) => {}
            _ => return Err(Rejection::invalid("converted_price and converted_currency go together")),
        }
        if let Some(a) = &self.availability {
            check_text("availability", a, false)?;
        }
        if let Some(r) = self.rating {
            if !(0..=5).contains(&r) {
                return Err(Rejection::invalid("rating must be between 0 and 5"));
            }
        }
        if let Some(l) = &self.link {
            check_text("link", l, false)?;
        }
        if let Some(at) = &self.scraped_at {
            check_year("scraped_at", at.year())?;
        }
        Ok(())
    }
}

impl UserInput {
    pub(super) fn validate(&self) -> Result<(), Rejection> {
        check_text("name", &self.name, true)?;
        let email = self.email.trim();
        let valid = email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        });
        if !valid {
            return Err(Rejection::invalid(format!("{:?} is not an email address", self.email)));
        }
        // Counted as stored: lower-casing can lengthen a few letters (İ becomes i̇).
        if self.normalized_email().chars().count() > MAX_EMAIL {
            return Err(Rejection::invalid(format!("an email address is at most {MAX_EMAIL} characters")));
        }
        Ok(())
    }

    pub(super) fn normalized_email(&self) -> String {
        self.email.trim().to_lowercase()
    }
}

impl TaskInput {
    pub(super) fn validate(&self) -> Result<(), Rejection> {
        check_text("title", &self.title, true)?;
        if let Some(d) = &self.description {
            check_text("description", d, false)?;
        }
        if let Some(due) = &self.due_date {
            check_year("due_date", due.year())?;
        }
        Ok(())
    }
}

/// The text form of a timestamp in the database (`2026-11-30T08:15:00.250000Z`): fixed width,
/// so text order is time order. RFC 3339 with microseconds is that form, written without
/// interpreting a format string on every row.
pub fn timestamp_text(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::timestamp_text;
    use chrono::{TimeZone, Utc};

    #[test]
    fn timestamps_are_written_fixed_width_with_microseconds() {
        let cases = [
            (Utc.with_ymd_and_hms(2026, 11, 30, 8, 15, 0).unwrap(), "2026-11-30T08:15:00.000000Z"),
            (Utc.timestamp_micros(1_764_490_500_250_001).unwrap(), "2025-11-30T08:15:00.250001Z"),
            (Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(), "0001-01-01T00:00:00.000000Z"),
            (Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(), "9999-12-31T23:59:59.000000Z"),
        ];
        for (at, text) in cases {
            assert_eq!(timestamp_text(&at), text);
            assert_eq!(timestamp_text(&at), at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(), "the earlier form");
        }
        // Nanoseconds are cut to microseconds, as before.
        let at = Utc.timestamp_nanos(1_764_490_500_123_456_789);
        assert_eq!(timestamp_text(&at), "2025-11-30T08:15:00.123456Z");
    }
}
