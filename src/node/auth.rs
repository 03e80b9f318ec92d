//! Accounts, roles and sessions on the HTTP API and the console (`--auth`): who a request
//! comes from and what it may do, verified credentials kept in memory, passwords and tokens.
//! The middleware and the endpoints that use them are in [`super::accounts`].
//!
//! # What it promises
//! - **Off by default.** Without `--auth` every request is served as before (the course's open
//!   mode); the middleware costs one flag test.
//! - **Who is asking**: `Authorization: Bearer <token>` (a token from `POST /api/login`) or
//!   `Authorization: Basic …` (name and password, for scripts). None, a malformed one, a wrong
//!   password, an unknown, ended or expired token: `401` with `WWW-Authenticate`. A role that may
//!   not do it: `403`. Both with `{"error": "…"}`.
//! - **What each role may do** is [`need`]: one table of paths and methods, checked before
//!   any handler runs (a body is never read for a refused request).
//! - **Replicated**: accounts and sessions are rows of the replicated database, written only
//!   through the Raft log ([`Op::CreateAccount`], [`Op::Login`], …), so every node, followers
//!   too, checks a token or a password on its own. A password is hashed (argon2id) on the leader
//!   before it is proposed, and a token is stored as its SHA-256: neither is ever in the log, the
//!   database or a log line in clear.
//! - **Fast**: a verified Basic credential (keyed by a SHA-256 of name and password) and a
//!   token's session are kept in memory, at most [`CACHED`] of each for [`CACHE_LIFETIME`], and
//!   dropped as soon as any account or session changes ([`AccessEpoch`]); a request with a
//!   known credential costs a hash and a map lookup, never argon2.
//! - **Followers lag**: a token issued by the leader a moment ago, or an account just created,
//!   may not be applied on a follower yet. A credential not found there is looked up again each
//!   time the follower applies more, for up to [`CATCH_UP`], before it is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::{header, Method};
use actix_web::HttpResponse;
use chrono::{DateTime, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::store::{AccessEpoch, Role};
use crate::proto::auth::random_hex;

/// How long a verified credential or a session is kept in memory before the database is asked
/// again (an account's change drops it at once; this bounds what a missed change could cost).
pub const CACHE_LIFETIME: Duration = Duration::from_secs(60);
/// Credentials kept in memory at most, of each kind; a full cache is emptied.
pub const CACHED: usize = 1024;
/// How long a follower waits to apply a credential it does not know yet.
pub const CATCH_UP: Duration = Duration::from_millis(300);
/// Tokens live this long unless configured otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
/// The shortest password an account may have.
pub const MIN_PASSWORD: usize = 8;
/// The longest password taken (argon2 would take more; no one types it).
pub const MAX_PASSWORD: usize = 1024;
/// The realm named in `WWW-Authenticate`.
const REALM: &str = "labctl";

/// Authentication of one node: whether it is on, and what it has verified.
pub struct Auth {
    pub(super) enabled: bool,
    pub(super) token_ttl: Duration,
    pub(super) epoch: AccessEpoch,
    /// Verified Basic credentials, by SHA-256 of `name \0 password`.
    pub(super) basic: Mutex<HashMap<[u8; 32], Cached>>,
    /// Sessions, by SHA-256 of the token.
    pub(super) tokens: Mutex<HashMap<[u8; 32], Cached>>,
}

#[derive(Clone)]
pub(super) struct Cached {
    pub(super) who: Principal,
    /// The access epoch before the database was read.
    pub(super) epoch: u64,
    pub(super) at: Instant,
    /// Sessions only.
    pub(super) expires: Option<DateTime<Utc>>,
}

/// Who a request comes from, once authenticated; in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: Arc<str>,
    pub role: Role,
    /// The SHA-256 of the bearer token, when the request came with one.
    pub token_hash: Option<[u8; 32]>,
}

/// What a request needs (see [`need`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone: health, state, the console's page, logging in.
    Open,
    /// Any account.
    Account,
    /// An account of this role or above.
    Role(Role),
}

/// What `method` on `path` needs when authentication is on. Paths not listed (the console's
/// files, unknown paths, which answer 404) are open.
///
/// `/status`, `/heartbeat` and `/metrics` stay open with `/healthz` and `/readyz`: they hold no
/// rows and no secret, and container health checks, Prometheus and the manager's leader
/// discovery read them without credentials.
pub fn need(method: &Method, path: &str) -> Need {
    let read = method == Method::GET || method == Method::HEAD;
    if let Some(rest) = path.strip_prefix("/console/nodes/") {
        // A relayed request needs what it needs on the node it goes to, which checks it again.
        let relayed = rest.split_once('/').map_or("", |(_, p)| p);
        return need(method, &format!("/{relayed}"));
    }
    let under = |prefix: &str| path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    match path {
        "/healthz" | "/readyz" | "/status" | "/heartbeat" | "/metrics" | "/api/login" | "/api/control" => Need::Open,
        "/api/logout" | "/api/me" => Need::Account,
        "/api/upload/file" => Need::Role(Role::Admin),
        _ if under("/api/accounts") || under("/api/control") => Need::Role(Role::Admin),
        _ if under("/api/users") => Need::Role(if read { Role::Viewer } else { Role::Admin }),
        _ if under("/api") => Need::Role(if read { Role::Viewer } else { Role::Member }),
        _ => Need::Open,
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `401`: no credentials, or wrong ones.
    Unauthenticated(String),
    /// `403`: the role may not.
    Forbidden(String),
    /// `503`: the database could not say.
    Unavailable(String),
}

impl Refusal {
    pub fn response(&self) -> HttpResponse {
        match self {
            Refusal::Unauthenticated(why) => HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, format!("Bearer realm=\"{REALM}\", Basic realm=\"{REALM}\"")))
                .json(json!({ "error": why })),
            Refusal::Forbidden(why) => HttpResponse::Forbidden().json(json!({ "error": why })),
            Refusal::Unavailable(why) => HttpResponse::ServiceUnavailable()
                .insert_header((header::RETRY_AFTER, "1"))
                .json(json!({ "error": why })),
        }
    }
}

/// A credential as a request gives it.
pub(super) enum Credential {
    Bearer(String),
    Basic { name: String, password: String },
}

impl Auth {
    pub fn new(enabled: bool, token_ttl: Duration, epoch: AccessEpoch) -> Auth {
        Auth { enabled, token_ttl, epoch, basic: Mutex::default(), tokens: Mutex::default() }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn token_ttl(&self) -> Duration {
        self.token_ttl
    }

    pub(super) fn cached(&self, map: &Mutex<HashMap<[u8; 32], Cached>>, key: &[u8; 32]) -> Option<Cached> {
        let epoch = self.epoch.current();
        let mut map = lock(map);
        match map.get(key) {
            Some(c) if c.epoch == epoch && c.at.elapsed() < CACHE_LIFETIME => Some(c.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    pub(super) fn remember(map: &Mutex<HashMap<[u8; 32], Cached>>, key: [u8; 32], entry: Cached) {
        let mut map = lock(map);
        if map.len() >= CACHED {
            map.clear();
        }
        map.insert(key, entry);
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The credential of a request: None without an `Authorization` header.
pub(super) fn credential(req: &actix_web::dev::RequestHead) -> Result<Option<Credential>, Refusal> {
    let Some(value) = req.headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let malformed = |what: &str| Refusal::Unauthenticated(format!("the Authorization header is malformed: {what}"));
    let value = value.to_str().map_err(|_| malformed("not visible ASCII"))?.trim();
    let (scheme, rest) = value.split_once(' ').ok_or_else(|| malformed("expected Bearer <token> or Basic <…>"))?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(malformed("an empty token"));
        }
        return Ok(Some(Credential::Bearer(rest.to_string())));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64ct::Encoding;
        let decoded = base64ct::Base64::decode_vec(rest).map_err(|_| malformed("Basic credentials are not base64"))?;
        let text = String::from_utf8(decoded).map_err(|_| malformed("Basic credentials are not UTF-8"))?;
        let (name, password) =
            text.split_once(':').ok_or_else(|| malformed("Basic credentials are not name:password"))?;
        return Ok(Some(Credential::Basic { name: name.to_string(), password: password.to_string() }));
    }
    Err(malformed("expected Bearer <token> or Basic <…>"))
}

/// An argon2id hash (PHC string) of `password` with a new random salt, with the crate's
/// default cost (19 MiB, 2 passes: OWASP's recommendation).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness for a salt: {e}"))?;
    let salt = SaltString::encode_b64(&bytes).map_err(|e| format!("cannot encode a salt: {e}"))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches the PHC string `hash`.
pub fn password_matches(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A new bearer token: 256 random bits, in hex.
pub fn new_token() -> Result<String, String> {
    random_hex(32).map_err(|e| format!("no randomness for a token: {e}"))
}

/// A new password for the first admin: 128 random bits, in hex.
pub fn new_password() -> Result<String, String> {
    random_hex(16).map_err(|e| format!("no randomness for a password: {e}"))
}

/// Checks a password before it is hashed.
pub fn check_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD || password.len() > MAX_PASSWORD {
        return Err(format!("a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters"));
    }
    if password.contains(char::is_control) {
        return Err("a password holds no control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;

    #[test]
    fn every_endpoint_needs_what_its_table_says() {
        let get = Method::GET;
        let post = Method::POST;
        let cases: &[(&Method, &str, Need)] = &[
            (&get, "/healthz", Need::Open),
            (&get, "/readyz", Need::Open),
            (&get, "/status", Need::Open),
            (&get, "/metrics", Need::Open),
            (&get, "/heartbeat", Need::Open),
            (&get, "/", Need::Open),
            (&get, "/app.js", Need::Open),
            (&post, "/api/login", Need::Open),
            (&post, "/api/logout", Need::Account),
            (&get, "/api/me", Need::Account),
            (&get, "/api/products", Need::Role(Role::Viewer)),
            (&Method::HEAD, "/api/products/3", Need::Role(Role::Viewer)),
            (&post, "/api/products", Need::Role(Role::Member)),
            (&Method::DELETE, "/api/tasks/3", Need::Role(Role::Member)),
            (&get, "/api/tasks/stats", Need::Role(Role::Viewer)),
            (&get, "/api/users", Need::Role(Role::Viewer)),
            (&post, "/api/users", Need::Role(Role::Admin)),
            (&Method::PUT, "/api/users/1", Need::Role(Role::Admin)),
            (&post, "/api/upload/file", Need::Role(Role::Admin)),
            (&get, "/api/accounts", Need::Role(Role::Admin)),
            (&Method::DELETE, "/api/accounts/ann", Need::Role(Role::Admin)),
            (&get, "/api/control", Need::Open),
            (&post, "/api/control/timeout", Need::Role(Role::Admin)),
            (&get, "/console/nodes/node2/status", Need::Open),
            (&get, "/console/nodes/node2/api/tasks", Need::Role(Role::Viewer)),
            (&post, "/console/nodes/node2/api/tasks", Need::Role(Role::Member)),
            (&post, "/console/nodes/node2/api/accounts", Need::Role(Role::Admin)),
            (&get, "/api/productsx", Need::Role(Role::Viewer)),
        ];
        for (method, path, expected) in cases {
            assert_eq!(need(method, path), *expected, "{method} {path}");
        }
    }

    #[test]
    fn roles_order_by_what_they_may() {
        assert!(Role::Viewer < Role::Member && Role::Member < Role::Admin);
        assert_eq!("member".parse::<Role>(), Ok(Role::Member));
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        assert!(password_matches("correct horse", &hash));
        assert!(!password_matches("correct horsE", &hash));
        assert!(!password_matches("correct horse", "not a hash"));
        assert_ne!(hash, hash_password("correct horse").unwrap(), "a new salt each time");
    }

    #[test]
    fn tokens_are_256_random_bits() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    fn head(authorization: &str) -> actix_web::dev::RequestHead {
        let mut head = actix_web::dev::RequestHead::default();
        head.headers.insert(header::AUTHORIZATION, header::HeaderValue::from_str(authorization).unwrap());
        head
    }

    #[test]
    fn credentials_are_read_from_the_authorization_header() {
        assert!(matches!(credential(&head("Bearer abc")), Ok(Some(Credential::Bearer(t))) if t == "abc"));
        // "ann:pa:ss" in base64: the password may hold colons.
        match credential(&head("Basic YW5uOnBhOnNz")) {
            Ok(Some(Credential::Basic { name, password })) => {
                assert_eq!((name.as_str(), password.as_str()), ("ann", "pa:ss"))
            }
            _ => panic!("Basic not read"),
        }
        for bad in ["Bearer ", "Basic !!!", "Basic YW5u", "Digest x", "token"] {
            assert!(matches!(credential(&head(bad)), Err(Refusal::Unauthenticated(_))), "{bad}");
        }
        assert!(matches!(credential(&actix_web::dev::RequestHead::default()), Ok(None)));
    }

    #[test]
    fn refusals_answer_401_with_a_challenge_and_403_without() {
        let r = Refusal::Unauthenticated("x".into()).response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_some());
        let r = Refusal::Forbidden("x".into()).response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn a_full_cache_is_emptied_and_a_moved_epoch_drops_entries() {
        let auth = Auth::new(true, DEFAULT_TOKEN_TTL, AccessEpoch::default());
        let who = Principal { name: "ann".into(), role: Role::Member, token_hash: None };
        let entry = |epoch| Cached { who: who.clone(), epoch, at: Instant::now(), expires: None };
        for i in 0..CACHED {
            Auth::remember(&auth.basic, sha256(&[&i.to_le_bytes()]), entry(0));
        }
        assert_eq!(lock(&auth.basic).len(), CACHED);
        Auth::remember(&auth.basic, [7; 32], entry(0));
        assert_eq!(lock(&auth.basic).len(), 1);
        assert!(auth.cached(&auth.basic, &[7; 32]).is_some());
        Auth::remember(&auth.basic, [8; 32], entry(1));
        assert!(auth.cached(&auth.basic, &[8; 32]).is_none(), "read at another epoch");
    }
}
