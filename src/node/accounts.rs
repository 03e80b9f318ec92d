//! The HTTP side of accounts (`--auth`, see [`super::auth`]): the middleware that
//! authenticates and authorizes every request, `/api/login`, `/api/logout`, `/api/me`,
//! `/api/accounts`, and the first admin.

use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::api::Api;
use super::auth::{
    check_password, credential, hash_password, lock, need, new_password, new_token, password_matches, sha256, Auth,
    Cached, Credential, Need, Principal, Refusal, CATCH_UP, MAX_PASSWORD,
};
use super::store::{AccountInput, Op, Role, Store, StoreError};
use crate::proto::auth::hex;

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
