//! Accounts, roles and sessions on the HTTP API and the console (`--auth`).
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

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::api::Api;
use super::store::{AccessEpoch, AccountInput, Op, Role, Store, StoreError};
use crate::proto::auth::{hex, random_hex};

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
    enabled: bool,
    token_ttl: Duration,
    epoch: AccessEpoch,
    /// Verified Basic credentials, by SHA-256 of `name \0 password`.
    basic: Mutex<HashMap<[u8; 32], Cached>>,
    /// Sessions, by SHA-256 of the token.
    tokens: Mutex<HashMap<[u8; 32], Cached>>,
}

#[derive(Clone)]
struct Cached {
    who: Principal,
    /// The access epoch before the database was read.
    epoch: u64,
    at: Instant,
    /// Sessions only.
    expires: Option<DateTime<Utc>>,
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
enum Credential {
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

    fn cached(&self, map: &Mutex<HashMap<[u8; 32], Cached>>, key: &[u8; 32]) -> Option<Cached> {
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

    fn remember(map: &Mutex<HashMap<[u8; 32], Cached>>, key: [u8; 32], entry: Cached) {
        let mut map = lock(map);
        if map.len() >= CACHED {
            map.clear();
        }
        map.insert(key, entry);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The credential of a request: None without an `Authorization` header.
fn credential(req: &actix_web::dev::RequestHead) -> Result<Option<Credential>, Refusal> {
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

/// The middleware: authenticates and authorizes every request before it is routed on, when
/// authentication is on. The [`Principal`] is left in the request's extensions.
pub async fn authorize(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(api) = req.app_data::<web::Data<Api>>().cloned() else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    if !api.auth.enabled {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let needs = need(req.method(), req.path());
    let refusal = match authenticate(&api, req.head()).await {
        Ok(Some(who)) => {
            let refusal = match needs {
                Need::Role(role) if who.role < role => Some(Refusal::Forbidden(format!(
                    "{} is a{} {}: this needs the role {} or above",
                    who.name,
                    if who.role == Role::Admin { "n" } else { "" },
                    who.role.as_str(),
                    role.as_str()
                ))),
                _ => None,
            };
            req.extensions_mut().insert(who);
            refusal
        }
        Ok(None) if needs == Need::Open => None,
        Ok(None) => Some(Refusal::Unauthenticated(
            "authentication required: log in with POST /api/login and send Authorization: Bearer <token>, or use \
             HTTP Basic"
                .into(),
        )),
        // Open endpoints answer even with a bad credential (a health check with a stale token).
        Err(_) if needs == Need::Open => None,
        Err(refusal) => Some(refusal),
    };
    match refusal {
        None => Ok(next.call(req).await?.map_into_left_body()),
        Some(refusal) => Ok(req.into_response(refusal.response()).map_into_right_body()),
    }
}

/// Who sent `head`: None without credentials.
async fn authenticate(api: &web::Data<Api>, head: &actix_web::dev::RequestHead) -> Result<Option<Principal>, Refusal> {
    let auth = &api.auth;
    match credential(head)? {
        None => Ok(None),
        Some(Credential::Bearer(token)) => {
            let key = sha256(&[token.as_bytes()]);
            if let Some(c) = auth.cached(&auth.tokens, &key) {
                return check_expiry(c.expires).map(|()| Some(c.who));
            }
            let epoch = auth.epoch.current();
            let token_hash = hex(&key);
            let found = until_applied(api, move |store| store.session(&token_hash)).await?;
            let Some((session, role)) = found else {
                return Err(Refusal::Unauthenticated("the token is unknown or its session ended: log in again".into()));
            };
            let expires = DateTime::parse_from_rfc3339(&session.expires_at)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| Refusal::Unauthenticated("the session has no valid expiry: log in again".into()))?;
            let role = role.parse::<Role>().map_err(Refusal::Unavailable)?;
            let who = Principal { name: session.account.into(), role, token_hash: Some(key) };
            Auth::remember(
                &auth.tokens,
                key,
                Cached { who: who.clone(), epoch, at: Instant::now(), expires: Some(expires) },
            );
            check_expiry(Some(expires)).map(|()| Some(who))
        }
        Some(Credential::Basic { name, password }) => {
            let key = sha256(&[name.as_bytes(), b"\0", password.as_bytes()]);
            if let Some(c) = auth.cached(&auth.basic, &key) {
                return Ok(Some(c.who));
            }
            let epoch = auth.epoch.current();
            let who = verify_password(api, name, password).await?;
            Auth::remember(&auth.basic, key, Cached { who: who.clone(), epoch, at: Instant::now(), expires: None });
            Ok(Some(who))
        }
    }
}

fn check_expiry(expires: Option<DateTime<Utc>>) -> Result<(), Refusal> {
    match expires {
        Some(at) if at <= Utc::now() => Err(Refusal::Unauthenticated("the token has expired: log in again".into())),
        _ => Ok(()),
    }
}

/// The account `name` if `password` is its password (argon2id, on a blocking thread).
async fn verify_password(api: &web::Data<Api>, name: String, password: String) -> Result<Principal, Refusal> {
    let wrong = || Refusal::Unauthenticated("wrong account name or password".into());
    if password.len() > MAX_PASSWORD || super::store::check_account_name(&name).is_err() {
        return Err(wrong());
    }
    let lookup = name.clone();
    let Some(account) = until_applied(api, move |store| store.account(&lookup)).await? else {
        return Err(wrong());
    };
    let role = account.role.parse::<Role>().map_err(Refusal::Unavailable)?;
    let hash = account.password_hash;
    match web::block(move || password_matches(&password, &hash)).await {
        Ok(true) => Ok(Principal { name: name.into(), role, token_hash: None }),
        Ok(false) => Err(wrong()),
        Err(_) => Err(Refusal::Unavailable("the password check was cancelled".into())),
    }
}

/// Runs a lookup on a read connection; when it finds nothing on a node that does not lead,
/// runs it again each time the node applies more, for up to [`CATCH_UP`]: what the leader
/// wrote a moment ago may not be applied here yet.
async fn until_applied<T: Send + 'static>(
    api: &web::Data<Api>,
    f: impl Fn(&mut Store) -> Result<Option<T>, StoreError> + Send + Clone + 'static,
) -> Result<Option<T>, Refusal> {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        // A session or account this node answered for but could not make readable in time is
        // simply not found: the credential is refused, never taken on faith.
        let applied = api.applied.settled().unwrap_or_else(|e| e.applied);
        let found = lookup(api, f.clone()).await?;
        if found.is_some() || api.status.borrow().role == "LEADER" {
            return Ok(found);
        }
        loop {
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            if api.applied.settled().unwrap_or_else(|e| e.applied) > applied {
                break;
            }
        }
    }
}

async fn lookup<T: Send + 'static>(
    api: &web::Data<Api>,
    f: impl FnOnce(&mut Store) -> Result<Option<T>, StoreError> + Send + 'static,
) -> Result<Option<T>, Refusal> {
    let shared = api.clone();
    let query = move || {
        let mut store = shared.reads.get()?;
        f(&mut store)
    };
    // As for reads: SQLite on the worker, a database server from a blocking thread.
    let result = if api.reads.is_embedded() { Ok(query()) } else { web::block(query).await };
    match result {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => {
            log::warn!("cannot check credentials: {}", e.with_causes());
            Err(Refusal::Unavailable("the database could not check the credentials; retry".into()))
        }
        Err(_) => Err(Refusal::Unavailable("the credential check was cancelled".into())),
    }
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

// ---- endpoints ----

/// Registers `/api/login`, `/api/logout`, `/api/me` and `/api/accounts`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use super::respond::allow_only;
    cfg.service(web::resource("/api/login").post(login).default_service(allow_only("POST")))
        .service(web::resource("/api/logout").post(logout).default_service(allow_only("POST")))
        .service(web::resource("/api/me").get(me).default_service(allow_only("GET, HEAD")))
        .service(
            web::resource("/api/accounts")
                .get(list_accounts)
                .post(create_account)
                .default_service(allow_only("GET, HEAD, POST")),
        )
        .service(
            web::resource("/api/accounts/{name}")
                .get(get_account)
                .put(update_account)
                .delete(delete_account)
                .default_service(allow_only("GET, HEAD, PUT, DELETE")),
        );
}

fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message.into() }))
}

/// The login form: a name and a password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginForm {
    name: String,
    password: String,
}

/// `POST /api/login`: a token for a name and password, valid for the configured lifetime.
async fn login(api: web::Data<Api>, req: HttpRequest, form: web::Json<LoginForm>) -> HttpResponse {
    if !api.auth.enabled {
        return error(StatusCode::NOT_FOUND, "authentication is off on this cluster: every request is allowed");
    }
    if let Some(redirect) = super::api::unless_leader(&api, &req) {
        return redirect;
    }
    let LoginForm { name, password } = form.into_inner();
    let who = match verify_password(&api, name, password).await {
        Ok(who) => who,
        Err(refusal) => return refusal.response(),
    };
    let token = match new_token() {
        Ok(token) => token,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let ttl = chrono::Duration::from_std(api.auth.token_ttl).unwrap_or(chrono::Duration::hours(12));
    let expires_at = Utc::now() + ttl;
    let op = Op::Login { token_hash: hex(&sha256(&[token.as_bytes()])), account: who.name.to_string(), expires_at };
    let answer = super::api::write_unkeyed(&api, &req, op).await;
    if answer.status() != StatusCode::CREATED {
        return answer;
    }
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({
        "token": token,
        "token_type": "Bearer",
        "expires_at": super::store::timestamp_text(&expires_at),
        "name": who.name,
        "role": who.role.as_str(),
    }))
}

/// `POST /api/logout`: ends the session of the bearer token the request carries.
async fn logout(api: web::Data<Api>, req: HttpRequest) -> HttpResponse {
    let who = req.extensions().get::<Principal>().cloned();
    let Some(token_hash) = who.and_then(|w| w.token_hash) else {
        return error(StatusCode::BAD_REQUEST, "log out with the token to end: Authorization: Bearer <token>");
    };
    let answer = super::api::write_unkeyed(&api, &req, Op::Logout { token_hash: hex(&token_hash) }).await;
    if answer.status() == StatusCode::OK {
        // This node forgets it at once; the others when they apply the entry.
        lock(&api.auth.tokens).remove(&token_hash);
    }
    answer
}

/// `GET /api/me`: who the request comes from, and whether authentication is on.
async fn me(api: web::Data<Api>, req: HttpRequest) -> HttpResponse {
    if !api.auth.enabled {
        return HttpResponse::Ok().json(json!({ "auth": false, "name": null, "role": "admin" }));
    }
    match req.extensions().get::<Principal>() {
        Some(who) => HttpResponse::Ok().json(json!({
            "auth": true,
            "name": who.name,
            "role": who.role.as_str(),
            "via": if who.token_hash.is_some() { "token" } else { "basic" },
        })),
        None => Refusal::Unauthenticated("not logged in".into()).response(),
    }
}

/// A new account.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    name: String,
    password: String,
    role: Role,
}

/// A change of an account: a new password, a new role, or both.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountChange {
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    role: Option<Role>,
}

/// A password hashed on a blocking thread, or the answer to give.
async fn hashed(password: String) -> Result<String, HttpResponse> {
    check_password(&password).map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    match web::block(move || hash_password(&password)).await {
        Ok(Ok(hash)) => Ok(hash),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Err(_) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "the password could not be hashed")),
    }
}

async fn create_account(api: web::Data<Api>, req: HttpRequest, body: web::Json<NewAccount>) -> HttpResponse {
    if let Some(redirect) = super::api::unless_leader(&api, &req) {
        return redirect;
    }
    let NewAccount { name, password, role } = body.into_inner();
    if let Err(e) = super::store::check_account_name(&name) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, e);
    }
    let password_hash = match hashed(password).await {
        Ok(hash) => hash,
        Err(response) => return response,
    };
    super::api::write_keyed(&api, &req, Op::CreateAccount { account: AccountInput { name, role, password_hash } }).await
}

async fn update_account(
    api: web::Data<Api>,
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Json<AccountChange>,
) -> HttpResponse {
    if let Some(redirect) = super::api::unless_leader(&api, &req) {
        return redirect;
    }
    let AccountChange { password, role } = body.into_inner();
    if password.is_none() && role.is_none() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "give a new password, a new role, or both");
    }
    let password_hash = match password {
        Some(password) => match hashed(password).await {
            Ok(hash) => Some(hash),
            Err(response) => return response,
        },
        None => None,
    };
    super::api::write_keyed(&api, &req, Op::UpdateAccount { name: name.into_inner(), role, password_hash }).await
}

async fn delete_account(api: web::Data<Api>, req: HttpRequest, name: web::Path<String>) -> HttpResponse {
    super::api::write_keyed(&api, &req, Op::DeleteAccount { name: name.into_inner() }).await
}

/// Query parameters of the account listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountParams {
    offset: Option<u64>,
    limit: Option<u64>,
}

async fn list_accounts(api: web::Data<Api>, q: web::Query<AccountParams>) -> HttpResponse {
    let page = super::store::PageRequest { offset: q.offset, limit: q.limit };
    match lookup(&api, move |store| store.list_accounts(page).map(Some)).await {
        Ok(page) => HttpResponse::Ok().json(page),
        Err(refusal) => refusal.response(),
    }
}

async fn get_account(api: web::Data<Api>, name: web::Path<String>) -> HttpResponse {
    let name = name.into_inner();
    let lookup_name = name.clone();
    match lookup(&api, move |store| store.account(&lookup_name)).await {
        Ok(Some(account)) => HttpResponse::Ok().json(account.view()),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no account {name:?}")),
        Err(refusal) => refusal.response(),
    }
}

// ---- the first admin ----

/// Where the first admin's password comes from.
pub enum AdminPassword {
    /// `LABCTL_ADMIN_PASSWORD` or the file named by `LABCTL_ADMIN_PASSWORD_FILE`.
    Given(String),
    /// Neither: a new one, printed once to stderr by the leader that creates the account.
    Generated(String),
}

/// The environment variable holding the first admin's password.
pub const ADMIN_PASSWORD_ENV: &str = "LABCTL_ADMIN_PASSWORD";
/// The environment variable naming a file that holds it (Docker secrets).
pub const ADMIN_PASSWORD_FILE_ENV: &str = "LABCTL_ADMIN_PASSWORD_FILE";

impl AdminPassword {
    /// From the environment: the variable, else the file (its content without the final line
    /// break), else a new password.
    pub fn from_env() -> anyhow::Result<AdminPassword> {
        if let Some(password) = std::env::var_os(ADMIN_PASSWORD_ENV).filter(|p| !p.is_empty()) {
            let password = password.into_string().map_err(|_| anyhow::anyhow!("{ADMIN_PASSWORD_ENV} is not UTF-8"))?;
            check_password(&password).map_err(|e| anyhow::anyhow!("{ADMIN_PASSWORD_ENV}: {e}"))?;
            return Ok(AdminPassword::Given(password));
        }
        if let Some(path) = std::env::var_os(ADMIN_PASSWORD_FILE_ENV).filter(|p| !p.is_empty()) {
            let path = std::path::PathBuf::from(path);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("{ADMIN_PASSWORD_FILE_ENV}: cannot read {}: {e}", path.display()))?;
            let password = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
            check_password(password)
                .map_err(|e| anyhow::anyhow!("{ADMIN_PASSWORD_FILE_ENV}: the password in {}: {e}", path.display()))?;
            return Ok(AdminPassword::Given(password.to_string()));
        }
        Ok(AdminPassword::Generated(new_password().map_err(anyhow::Error::msg)?))
    }
}

/// Makes sure an admin exists: whenever this node leads, once its log is applied, it creates
/// the account `name` through the log if no admin exists ([`Op::BootstrapAdmin`], which does
/// nothing when one does by the time it is applied). Ends once an admin exists.
pub async fn ensure_admin(api: web::Data<Api>, name: String, password: AdminPassword) {
    let mut status = api.status.clone();
    let mut hash: Option<String> = None;
    loop {
        // Leading, with everything committed before this term applied.
        let leading = {
            let s = status.borrow_and_update().clone();
            s.role == "LEADER" && s.leader.as_deref() == Some(&*s.name) && s.applied_index >= s.commit_index
        };
        if !leading {
            if status.changed().await.is_err() {
                return;
            }
            continue;
        }
        match lookup(&api, |store| store.has_admin().map(Some)).await {
            Ok(Some(true)) => return,
            Ok(_) => {}
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        if hash.is_none() {
            let (AdminPassword::Given(clear) | AdminPassword::Generated(clear)) = &password;
            let clear = clear.clone();
            match tokio::task::spawn_blocking(move || hash_password(&clear)).await {
                Ok(Ok(h)) => hash = Some(h),
                Ok(Err(e)) => {
                    log::error!("cannot create the first admin: {e}");
                    return;
                }
                Err(_) => return,
            }
        }
        let Some(password_hash) = hash.clone() else { return };
        let op = Op::BootstrapAdmin { account: AccountInput { name: name.clone(), role: Role::Admin, password_hash } };
        match super::api::propose(&api, op).await {
            Some(super::store::ApplyOutcome::Applied { .. }) => {
                log::info!("created the first admin account {name:?}");
                if let AdminPassword::Generated(p) = &password {
                    eprintln!(
                        "\n=== labctl: the first admin account ===\n  name:     {name}\n  password: {p}\nIt is shown \
                         this once and stored only hashed: keep it now, or set {ADMIN_PASSWORD_ENV} / \
                         {ADMIN_PASSWORD_FILE_ENV} next time.\n=======================================\n"
                    );
                }
                return;
            }
            Some(super::store::ApplyOutcome::Rejected { status: 409, .. }) => return,
            Some(super::store::ApplyOutcome::Rejected { error, .. }) => {
                log::error!("cannot create the first admin {name:?}: {error}");
                return;
            }
            // Not committed (no longer leading, say): tried again when leading.
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
