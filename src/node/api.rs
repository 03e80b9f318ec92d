//! The data API of SPEC §4: products, users and tasks.
//!
//! Reads are served from this node's database. Writes become log entries: the leader proposes
//! them and answers once they are committed and applied. A follower answers a write with
//! `307 Temporary Redirect` to the same URL on the leader (naming it in `X-Raft-Leader`); with
//! no leader known, `503` with `Retry-After`. A write may carry `Idempotency-Key`: a repeated
//! key returns the first result and changes nothing. Bad input gets a 4xx with
//! `{"error": "…"}`.
//!
//! `POST /api/upload/file` takes a multipart form whose field `file` holds a JSON array of
//! products, or the scraper's processed file (an object whose `items` are the products). Every
//! product is checked as `POST /api/products` checks one, and all of them become one log
//! entry, applied in one transaction on every node.

use std::sync::Arc;
use std::time::Duration;

use actix_multipart::{Multipart, MultipartError};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::advertise::Advertised;
use super::apply::{AppliedIndex, WriteResult};
use super::driver::Proposal;
use super::listings::ListingCache;
use super::raft::EntryValue;
use super::respond::allow_only;
use super::status::NodeStatus;
use super::store::pool::ReadPool;
use super::store::{
    ApplyOutcome, Command, Op, Page, PageRequest, Priority, ProductInput, ProductQuery, Reply, Status, Store,
    StoreError, TaskInput, TaskQuery, UserInput, MAX_IDEMPOTENCY_KEY,
};

/// The header that makes a write idempotent.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// The header naming the leader on a redirect.
pub const LEADER_HEADER: &str = "X-Raft-Leader";
/// The largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;
/// The largest uploaded file by default: 8 MiB.
pub const DEFAULT_MAX_UPLOAD: usize = 8 * 1024 * 1024;
/// Room for the multipart framing (boundaries, part headers, small other fields) around the file.
const MULTIPART_OVERHEAD: usize = 64 * 1024;
/// How long a write waits for its entry to be applied.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `/readyz` waits for the database to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// What the API handlers share.
pub struct Api {
    pub proposals: mpsc::Sender<Proposal>,
    pub status: watch::Receiver<Arc<NodeStatus>>,
    /// Read connections to this node's database.
    pub reads: ReadPool,
    /// This node's applied index: listing pages are kept under it.
    pub applied: AppliedIndex,
    /// Listing pages, kept while the database is unchanged.
    pub listings: ListingCache,
    /// E-mail notifications, when configured.
    pub notify: Option<super::notify::Notifier>,
    /// The largest file `POST /api/upload/file` accepts, in bytes.
    pub max_upload: usize,
    /// The addresses handed out to each client (redirects to the leader), with the scheme.
    pub advertised: super::advertise::Advertised,
    /// Accounts and sessions, when authentication is on.
    pub auth: super::auth::Auth,
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().limit(MAX_BODY).error_handler(|err, _| {
        if let actix_web::error::JsonPayloadError::Payload(e) = &err {
            if super::respond::body_timed_out(e) {
                return actix_web::error::InternalError::from_response(err, super::respond::body_timeout_response())
                    .into();
            }
        }
        let status = match &err {
            actix_web::error::JsonPayloadError::Overflow { .. }
            | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => {
                actix_web::http::StatusCode::PAYLOAD_TOO_LARGE
            }
            actix_web::error::JsonPayloadError::ContentType => actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => actix_web::http::StatusCode::BAD_REQUEST,
        };
        let body = HttpResponse::build(status).json(json!({ "error": err.to_string() }));
        actix_web::error::InternalError::from_response(err, body).into()
    }))
    .app_data(web::QueryConfig::default().error_handler(|err, _| {
        let message = match &err {
            actix_web::error::QueryPayloadError::Deserialize(e) => format!("bad query: {e}"),
            other => other.to_string(),
        };
        let body = HttpResponse::BadRequest().json(json!({ "error": message }));
        actix_web::error::InternalError::from_response(err, body).into()
    }))
    .app_data(web::PathConfig::default().error_handler(|err, req| {
        let given = req.match_info().get("id").unwrap_or_default();
        let message = format!("no such id: {given:?} is not a whole number");
        let body = HttpResponse::NotFound().json(json!({ "error": message }));
        actix_web::error::InternalError::from_response(err, body).into()
    }))
    .service(
        web::resource("/api/products")
            .get(list_products)
            .post(create_product)
            .default_service(allow_only("GET, HEAD, POST")),
    )
    .service(
        web::resource("/api/products/{id}")
            .get(get_product)
            .put(update_product)
            .delete(delete_product)
            .default_service(allow_only("GET, HEAD, PUT, DELETE")),
    )
    .service(web::resource("/api/upload/file").post(upload_file).default_service(allow_only("POST")))
    .service(
        web::resource("/api/users").get(list_users).post(create_user).default_service(allow_only("GET, HEAD, POST")),
    )
    .service(
        web::resource("/api/users/{id}")
            .get(get_user)
            .put(update_user)
            .delete(delete_user)
            .default_service(allow_only("GET, HEAD, PUT, DELETE")),
    )
    .service(web::resource("/api/tasks/stats").get(task_stats).default_service(allow_only("GET, HEAD")))
    .service(
        web::resource("/api/tasks").get(list_tasks).post(create_task).default_service(allow_only("GET, HEAD, POST")),
    )
    .service(
        web::resource("/api/tasks/{id}")
            .get(get_task)
            .put(update_task)
            .delete(delete_task)
            .default_service(allow_only("GET, HEAD, PUT, DELETE")),
    );
}

fn error(status: u16, message: impl Into<String>) -> HttpResponse {
    let code = actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
    HttpResponse::build(code).json(json!({ "error": message.into() }))
}

// ---- writes ----

/// The `307` to the leader (or `503`) when this node does not lead; None when it does.
pub(super) fn unless_leader(api: &Api, req: &HttpRequest) -> Option<HttpResponse> {
    let status = api.status.borrow().clone();
    (status.role != "LEADER").then(|| not_leader(&status, req, &api.advertised))
}

/// [`write`], for the writes of [`super::auth`] that may carry an `Idempotency-Key`.
pub(super) async fn write_keyed(api: &Api, req: &HttpRequest, op: Op) -> HttpResponse {
    write(api, req, op).await
}

/// [`write`] without the request's `Idempotency-Key`: for a login or logout, whose answer (a
/// new token) a repeated key could not give again.
pub(super) async fn write_unkeyed(api: &Api, req: &HttpRequest, op: Op) -> HttpResponse {
    write_with(api, req, op, false).await
}

/// Proposes `op` for the node itself (no client): its outcome, or None when it was not applied
/// (no longer leading, timed out).
pub(super) async fn propose(api: &Api, op: Op) -> Option<ApplyOutcome> {
    let value = EntryValue::to_json(&Command::new(Utc::now(), op)).ok()?;
    match replicate(api, Some(value)).await {
        Ok(WriteResult::Done(outcome)) => Some(outcome),
        _ => None,
    }
}

/// Sends `op` through Raft and answers with its outcome.
async fn write(api: &Api, req: &HttpRequest, op: Op) -> HttpResponse {
    write_with(api, req, op, true).await
}

/// [`write`]; `keyed`: whether the request's `Idempotency-Key` goes with it.
async fn write_with(api: &Api, req: &HttpRequest, op: Op, keyed: bool) -> HttpResponse {
    let status = api.status.borrow().clone();
    if status.role != "LEADER" {
        return not_leader(&status, req, &api.advertised);
    }
    let assignment = super::notify::Assignment::before(api.notify.as_ref(), &op).await;
    let mut command = Command::new(Utc::now(), op);
    if let Some(key) = req.headers().get(IDEMPOTENCY_KEY).filter(|_| keyed) {
        let Ok(key) = key.to_str() else {
            return error(400, "Idempotency-Key must be visible ASCII");
        };
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
            return error(400, format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"));
        }
        command = command.with_key(key);
    }
    let value = match EntryValue::to_json(&command) {
        Ok(v) => v,
        Err(e) => return error(400, format!("cannot encode the write: {e}")),
    };
    match replicate(api, Some(value)).await {
        Ok(result) => {
            assignment.after(&result, &status);
            write_result(result, &status, req, &api.advertised)
        }
        Err(response) => response,
    }
}

/// Proposes a command and waits until it is applied; with None, waits until a linearizable
/// read may run.
async fn replicate(api: &Api, command: Option<EntryValue>) -> Result<WriteResult, HttpResponse> {
    let (tx, rx) = oneshot::channel();
    if api.proposals.send(Proposal { command, reply: tx }).await.is_err() {
        return Err(unavailable("the node is stopping"));
    }
    match tokio::time::timeout(WRITE_TIMEOUT, rx).await {
        Ok(Ok(result)) => Ok(result),
        Ok(Err(_)) => Err(unavailable("the node stopped before the entry was applied")),
        Err(_) => Err(unavailable("the entry was not applied in time")),
    }
}

/// Checks `consistency` and, for `strong`, waits for a linearizable read first.
async fn consistency_gate(api: &Api, req: &HttpRequest, consistency: Option<&str>) -> Result<(), HttpResponse> {
    match consistency {
        None | Some("local") => Ok(()),
        Some("strong") => strong_read(api, req).await,
        Some(other) => Err(error(400, format!("consistency must be local or strong, not {other:?}"))),
    }
}

/// Makes the next local read linearizable: on the leader, once a majority has confirmed it
/// still leads and the commit index of that moment is applied (ReadIndex); anywhere else the
/// request goes to the leader.
async fn strong_read(api: &Api, req: &HttpRequest) -> Result<(), HttpResponse> {
    let status = api.status.borrow().clone();
    if status.role != "LEADER" {
        return Err(not_leader(&status, req, &api.advertised));
    }
    match replicate(api, None).await? {
        WriteResult::Readable => Ok(()),
        other => Err(write_result(other, &status, req, &api.advertised)),
    }
}

fn write_result(result: WriteResult, status: &NodeStatus, req: &HttpRequest, advertised: &Advertised) -> HttpResponse {
    match result {
        WriteResult::Done(ApplyOutcome::Applied { status, reply }) => {
            let code = actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::OK);
            let mut response = HttpResponse::build(code);
            // A new object is named where it can be read.
            let created = match &reply {
                Reply::Product(p) => Some(format!("/api/products/{}", p.id)),
                Reply::User(u) => Some(format!("/api/users/{}", u.id)),
                Reply::Task(t) => Some(format!("/api/tasks/{}", t.id)),
                Reply::Account(a) => Some(format!("/api/accounts/{}", a.name)),
                Reply::Deleted { .. } | Reply::Imported { .. } | Reply::Session { .. } | Reply::LoggedOut => None,
            };
            if let (201, Some(location)) = (status, created) {
                response.insert_header((header::LOCATION, location));
            }
            response.content_type("application/json").body(reply_body(&reply))
        }
        WriteResult::Done(ApplyOutcome::Rejected { status, error: message }) => error(status, message),
        WriteResult::Done(ApplyOutcome::AlreadyApplied) | WriteResult::Readable => {
            HttpResponse::Ok().json(json!({ "applied": true }))
        }
        WriteResult::NotLeader { .. } => not_leader(status, req, advertised),
        WriteResult::LostLeadership => unavailable("leadership changed before the request completed; retry"),
        WriteResult::TooLarge(message) => error(413, message),
        WriteResult::Timeout => unavailable("the write was not committed in time; retry"),
        WriteResult::SteppedDown => unavailable(
            "this node stopped leading before the write committed, which may still happen; retry with the same \
             Idempotency-Key",
        ),
    }
}

fn unavailable(message: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable().insert_header((header::RETRY_AFTER, "1")).json(json!({ "error": message }))
}

/// The body a client gets for a write: the reply without its `kind` tag.
fn reply_body(reply: &Reply) -> Vec<u8> {
    let body = match reply {
        Reply::Product(p) => serde_json::to_vec(p),
        Reply::User(u) => serde_json::to_vec(u),
        Reply::Task(t) => serde_json::to_vec(t),
        Reply::Deleted { id } => serde_json::to_vec(&json!({ "id": id })),
        Reply::Imported { imported, ids } => serde_json::to_vec(&json!({ "imported": imported, "ids": ids })),
        Reply::Account(a) => serde_json::to_vec(a),
        Reply::Session { account, role, expires_at } => {
            serde_json::to_vec(&json!({ "name": account, "role": role, "expires_at": expires_at }))
        }
        Reply::LoggedOut => serde_json::to_vec(&json!({ "logged_out": true })),
    };
    // Plain structs of strings and numbers: serializing them cannot fail.
    body.unwrap_or_else(|_| b"{}".to_vec())
}

/// 307 to the same URL on the leader, or 503 while no leader is known. The leader's address is
/// the one the client can reach (see [`super::advertise`]).
fn not_leader(status: &NodeStatus, req: &HttpRequest, advertised: &Advertised) -> HttpResponse {
    match (&status.leader, &status.leader_http) {
        (Some(leader), Some(http)) if leader != &status.name => {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let view = advertised.for_request(req);
            let leader_url = view.url(http);
            let http = view.http(http);
            HttpResponse::TemporaryRedirect()
                .insert_header((header::LOCATION, format!("{leader_url}{path}")))
                .insert_header((LEADER_HEADER, &**leader))
                .json(json!({ "error": "not the leader", "leader": leader, "leader_http": http, "leader_url": leader_url }))
        }
        _ => unavailable("no leader is known; retry"),
    }
}

async fn create_product(api: web::Data<Api>, req: HttpRequest, body: web::Json<Object<ProductInput>>) -> HttpResponse {
    write(&api, &req, Op::CreateProduct { product: body.into_inner().0 }).await
}

async fn update_product(
    api: web::Data<Api>,
    req: HttpRequest,
    id: web::Path<i64>,
    body: web::Json<Object<ProductInput>>,
) -> HttpResponse {
    write(&api, &req, Op::UpdateProduct { id: id.into_inner(), product: body.into_inner().0 }).await
}

async fn delete_product(api: web::Data<Api>, req: HttpRequest, id: web::Path<i64>) -> HttpResponse {
    write(&api, &req, Op::DeleteProduct { id: id.into_inner() }).await
}

async fn create_user(api: web::Data<Api>, req: HttpRequest, body: web::Json<Object<UserInput>>) -> HttpResponse {
    write(&api, &req, Op::CreateUser { user: body.into_inner().0 }).await
}

async fn update_user(
    api: web::Data<Api>,
    req: HttpRequest,
    id: web::Path<i64>,
    body: web::Json<Object<UserInput>>,
) -> HttpResponse {
    write(&api, &req, Op::UpdateUser { id: id.into_inner(), user: body.into_inner().0 }).await
}

async fn delete_user(api: web::Data<Api>, req: HttpRequest, id: web::Path<i64>) -> HttpResponse {
    write(&api, &req, Op::DeleteUser { id: id.into_inner() }).await
}

async fn create_task(api: web::Data<Api>, req: HttpRequest, body: web::Json<Object<TaskInput>>) -> HttpResponse {
    write(&api, &req, Op::CreateTask { task: body.into_inner().0 }).await
}

async fn update_task(
    api: web::Data<Api>,
    req: HttpRequest,
    id: web::Path<i64>,
    body: web::Json<Object<TaskInput>>,
) -> HttpResponse {
    write(&api, &req, Op::UpdateTask { id: id.into_inner(), task: body.into_inner().0 }).await
}

async fn delete_task(api: web::Data<Api>, req: HttpRequest, id: web::Path<i64>) -> HttpResponse {
    write(&api, &req, Op::DeleteTask { id: id.into_inner() }).await
}

// ---- upload ----

/// `POST /api/upload/file`: the products of the uploaded file, imported as one write.
async fn upload_file(api: web::Data<Api>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    // The body is read before a follower redirects, so that a client still sending it is not
    // cut off; it is bounded by the upload limit.
    let file = match read_file_field(&req, payload, api.max_upload).await {
        Ok(file) => file,
        Err(response) => return response,
    };
    let status = api.status.borrow().clone();
    if status.role != "LEADER" {
        return not_leader(&status, &req, &api.advertised);
    }
    let items = match web::block(move || parse_upload(&file)).await {
        Ok(Ok(items)) => items,
        Ok(Err((code, message))) => return error(code, message),
        Err(_) => return error(500, "the upload could not be read"),
    };
    write(&api, &req, Op::ImportProducts { items }).await
}

/// The content of the multipart field `file`, at most `limit` bytes.
async fn read_file_field(req: &HttpRequest, payload: web::Payload, limit: usize) -> Result<Vec<u8>, HttpResponse> {
    let too_large = || error(413, format!("the upload is larger than {limit} bytes"));
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit + MULTIPART_OVERHEAD) {
        return Err(too_large());
    }
    let mut form = Multipart::new(req.headers(), payload);
    let (mut file, mut read) = (None, 0usize);
    while let Some(field) = form.next().await {
        let mut field = field.map_err(multipart_error)?;
        let is_file = field.name() == Some("file");
        if is_file && file.is_some() {
            return Err(error(400, "the form has more than one field `file`"));
        }
        let mut content = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(multipart_error)?;
            read += chunk.len();
            if read > limit + MULTIPART_OVERHEAD || (is_file && content.len() + chunk.len() > limit) {
                return Err(too_large());
            }
            if is_file {
                content.extend_from_slice(&chunk);
            }
        }
        if is_file {
            file = Some(content);
        }
    }
    file.ok_or_else(|| error(400, "the form has no field `file`: send the JSON file as multipart field `file`"))
}

fn multipart_error(e: MultipartError) -> HttpResponse {
    if let MultipartError::Payload(payload) = &e {
        if super::respond::body_timed_out(payload) {
            return super::respond::body_timeout_response();
        }
    }
    let code = match e {
        MultipartError::ContentTypeMissing
        | MultipartError::ContentTypeParse
        | MultipartError::ContentTypeIncompatible => 415,
        _ => 400,
    };
    error(code, format!("expected a multipart/form-data upload with a field `file`: {e}"))
}

/// A request body that must be a JSON object: serde would also take a struct's fields from an
/// array, in order (`["Dune", 9.5, "GBP"]`), which no client means.
struct Object<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_map(Fields(std::marker::PhantomData)).map(Object)
    }
}

/// The products of an uploaded file: a JSON array of products, or the processed file (an
/// object whose `items` are the products). The first bad item is named by its index.
fn parse_upload(content: &[u8]) -> Result<Vec<ProductInput>, (u16, String)> {
    let value: Value = serde_json::from_slice(content).map_err(|e| (415, format!("the file is not JSON: {e}")))?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(mut file) => match file.remove("items") {
            Some(Value::Array(items)) => items,
            _ => return Err((422, "the file is an object without an `items` array of products".into())),
        },
        _ => return Err((422, "the file must hold a JSON array of products, or an object with `items`".into())),
    };
    if items.is_empty() {
        return Err((422, "the file holds no products".into()));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let Object(product) =
                serde_json::from_value::<Object<ProductInput>>(item).map_err(|e| (422, format!("item {i}: {e}")))?;
            product.check().map_err(|e| (422, format!("item {i}: {e}")))?;
            Ok(product)
        })
        .collect()
}

// ---- readiness ----

/// Whether this node's database answers a cheap query within [`READY_TIMEOUT`], for `/readyz`.
pub(super) async fn check_database(api: web::Data<Api>) -> Result<(), String> {
    let query = web::block(move || {
        let mut store = api.reads.get().map_err(|e| e.to_string())?;
        store
            .check_tables()
            .map_err(|e| format!("{e}: {}", std::error::Error::source(&e).map_or(String::new(), |s| s.to_string())))
    });
    match tokio::time::timeout(READY_TIMEOUT, query).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err("the database check was cancelled".into()),
        Err(_) => Err(format!("the database did not answer within {} ms", READY_TIMEOUT.as_millis())),
    }
}

// ---- reads ----

/// Query parameters of the product listing (flat, as they come in the URL). Each listing
/// takes its own filters only: another resource's filter is refused, not ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductParams {
    offset: Option<u64>,
    limit: Option<u64>,
    min_price: Option<f64>,
    max_price: Option<f64>,
    consistency: Option<String>,
}

/// Query parameters of the user listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserParams {
    offset: Option<u64>,
    limit: Option<u64>,
    consistency: Option<String>,
}

/// Query parameters of the task listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskParams {
    offset: Option<u64>,
    limit: Option<u64>,
    status: Option<Status>,
    priority: Option<Priority>,
    assignee: Option<i64>,
    consistency: Option<String>,
}

/// The only query parameter of single-object reads and the stats.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Consistency {
    consistency: Option<String>,
}

/// Runs a read on the database after the consistency check (`consistency=strong` first
/// confirms through the leader). A SQLite read is a few microseconds of work on a file in
/// the page cache, cheaper than handing it to another thread and back, so it runs right on the
/// HTTP worker; a database server is asked from a blocking thread, off the workers.
async fn run_read<T: Send + 'static>(
    api: web::Data<Api>,
    req: &HttpRequest,
    consistency: Option<&str>,
    f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, HttpResponse> {
    consistency_gate(&api, req, consistency).await?;
    query_store(api, f).await
}

/// Runs `f` on a read connection (see [`run_read`]), with no consistency check.
async fn query_store<T: Send + 'static>(
    api: web::Data<Api>,
    f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, HttpResponse> {
    let embedded = api.reads.is_embedded();
    // Writes this node has answered are visible to the read.
    if let Err(e) = api.applied.settled() {
        log::warn!("read refused: {e}");
        return Err(unavailable("a write this node answered is not readable yet; retry"));
    }
    let query = move || {
        let mut store = api.reads.get()?;
        f(&mut store)
    };
    let result = if embedded { Ok(query()) } else { web::block(query).await };
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(StoreError::InvalidQuery(message))) => Err(error(400, message)),
        Ok(Err(e @ StoreError::Pool(_))) => {
            log::warn!("read refused: {e}");
            Err(unavailable("the database is busy; retry"))
        }
        Ok(Err(e)) => {
            log::error!("read failed: {e}");
            Err(error(500, "the database did not answer"))
        }
        Err(_) => Err(error(500, "the read was cancelled")),
    }
}

/// A listing or other read that always has an answer.
async fn read<T: serde::Serialize + Send + 'static>(
    api: web::Data<Api>,
    req: &HttpRequest,
    consistency: Option<&str>,
    f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
) -> HttpResponse {
    match run_read(api, req, consistency, f).await {
        Ok(value) => HttpResponse::Ok().json(value),
        Err(response) => response,
    }
}

/// A page of a listing, kept in [`Api::listings`] and sent again while the database's
/// applied index has not moved (see [`super::listings`]).
async fn listing<T: serde::Serialize>(
    api: web::Data<Api>,
    req: &HttpRequest,
    consistency: Option<&str>,
    query: String,
    f: impl FnOnce(&mut Store) -> Result<Page<T>, StoreError> + Send + 'static,
) -> HttpResponse {
    if let Err(response) = consistency_gate(&api, req, consistency).await {
        return response;
    }
    // Read after the check: a strong read's page is kept under an index at least its read index.
    let applied = match api.applied.settled() {
        Ok(applied) => applied,
        Err(e) => {
            log::warn!("read refused: {e}");
            return unavailable("a write this node answered is not readable yet; retry");
        }
    };
    let json = |body| HttpResponse::Ok().content_type(header::ContentType::json()).body(body);
    if let Some(body) = api.listings.get(&query, applied) {
        return json(body);
    }
    let shared = api.clone();
    let page = move |store: &mut Store| {
        let body = web::Bytes::from(serde_json::to_vec(&f(store)?)?);
        shared.listings.put(query, applied, body.clone());
        Ok(body)
    };
    match query_store(api, page).await {
        Ok(body) => json(body),
        Err(response) => response,
    }
}

/// One object by id: 404 when there is none.
async fn found<T: serde::Serialize + Send + 'static>(
    api: web::Data<Api>,
    req: &HttpRequest,
    consistency: Option<&str>,
    what: &'static str,
    id: i64,
    f: impl FnOnce(&mut Store, i64) -> Result<Option<T>, StoreError> + Send + 'static,
) -> HttpResponse {
    match run_read(api, req, consistency, move |s| f(s, id)).await {
        Ok(Some(value)) => HttpResponse::Ok().json(value),
        Ok(None) => error(404, format!("no {what} with id {id}")),
        Err(response) => response,
    }
}

async fn list_products(api: web::Data<Api>, req: HttpRequest, q: web::Query<ProductParams>) -> HttpResponse {
    let q = q.into_inner();
    let page = PageRequest { offset: q.offset, limit: q.limit };
    let query = ProductQuery { page, min_price: q.min_price, max_price: q.max_price };
    listing(api, &req, q.consistency.as_deref(), format!("{query:?}"), move |s| s.list_products(&query)).await
}

async fn get_product(
    api: web::Data<Api>,
    req: HttpRequest,
    id: web::Path<i64>,
    q: web::Query<Consistency>,
) -> HttpResponse {
    found(api, &req, q.consistency.as_deref(), "product", id.into_inner(), |s, id| s.get_product(id)).await
}

async fn list_users(api: web::Data<Api>, req: HttpRequest, q: web::Query<UserParams>) -> HttpResponse {
    let q = q.into_inner();
    let page = PageRequest { offset: q.offset, limit: q.limit };
    listing(api, &req, q.consistency.as_deref(), format!("users {page:?}"), move |s| s.list_users(page)).await
}

async fn get_user(
    api: web::Data<Api>,
    req: HttpRequest,
    id: web::Path<i64>,
    q: web::Query<Consistency>,
) -> HttpResponse {
    found(api, &req, q.consistency.as_deref(), "user", id.into_inner(), |s, id| s.get_user(id)).await
}

async fn list_tasks(api: web::Data<Api>, req: HttpRequest, q: web::Query<TaskParams>) -> HttpResponse {
    let q = q.into_inner();
    let page = PageRequest { offset: q.offset, limit: q.limit };
    let query = TaskQuery { page, status: q.status, priority: q.priority, assignee: q.assignee };
    listing(api, &req, q.consistency.as_deref(), format!("{query:?}"), move |s| s.list_tasks(&query)).await
}

async fn get_task(
    api: web::Data<Api>,
    req: HttpRequest,
    id: web::Path<i64>,
    q: web::Query<Consistency>,
) -> HttpResponse {
    found(api, &req, q.consistency.as_deref(), "task", id.into_inner(), |s, id| s.get_task(id)).await
}

async fn task_stats(api: web::Data<Api>, req: HttpRequest, q: web::Query<Consistency>) -> HttpResponse {
    let today = Utc::now().date_naive();
    read(api, &req, q.consistency.as_deref(), move |s| s.task_stats(today)).await
}
