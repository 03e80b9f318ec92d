//! The manager's HTTP service: the leader announces itself here, and people look.
//!
//! - `POST /leader` `{"name","term","http"}`: the leader after each election it wins. An
//!   announcement of a lower term than the known one is ignored, yet answered `200` with what is
//!   known (`"accepted": false`), so the old leader stops retrying. Only a configured member at
//!   its configured address is taken (`403` otherwise). With a cluster secret the announcement
//!   must be signed ([`auth::SIGNATURE_HEADER`], `401` otherwise); without one, the member itself
//!   must confirm it on its `/status` (`409` otherwise), so that nobody else can make the manager
//!   believe in a leader, or in a term so high that the real leader's would be ignored.
//! - `GET /leader`: the known leader, or `null`.
//! - `GET /healthz`: the process is up.
//! - `GET /status`: the leader, RabbitMQ and FTP settings, and the counters of [`Stats`].

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;

use super::leader::{Leader, LeaderBook, LeaderClient};
use super::{redact_url, Settings, Stats};
use crate::proto::auth::{self, Key};

/// What the handlers read.
#[derive(Clone)]
pub struct Status {
    pub book: Arc<LeaderBook>,
    /// Asks a member's `/status` to confirm an unsigned announcement.
    pub client: Arc<LeaderClient>,
    /// Secure mode: announcements must be signed with the cluster key.
    pub key: Option<Key>,
    pub stats: Arc<Stats>,
    pub settings: Settings,
}

/// Binds `listen`: the server and the address it got. The server runs when awaited and stops on
/// SIGINT or SIGTERM.
pub fn bind(
    listen: SocketAddr,
    tls: Option<rustls::ServerConfig>,
    status: Status,
) -> std::io::Result<(actix_web::dev::Server, SocketAddr)> {
    let data = web::Data::new(status);
    let server = HttpServer::new(move || app(data.clone())).workers(1).shutdown_timeout(2);
    let server = match tls {
        Some(tls) => server.bind_rustls_0_23(listen, tls)?,
        None => server.bind(listen)?,
    };
    let addr = server.addrs().first().copied().unwrap_or(listen);
    Ok((server.run(), addr))
}

fn app(
    data: web::Data<Status>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let json_errors = web::JsonConfig::default().limit(64 * 1024).error_handler(|err, _| {
        let body = HttpResponse::BadRequest().json(json!({ "error": err.to_string() }));
        actix_web::error::InternalError::from_response(err, body).into()
    });
    App::new()
        .app_data(data)
        .app_data(json_errors)
        .service(
            web::resource("/leader")
                .post(announce)
                .get(leader)
                .default_service(web::to(|| async { not_allowed("GET, POST") })),
        )
        .service(web::resource("/healthz").get(healthz).default_service(web::to(|| async { not_allowed("GET") })))
        .service(web::resource("/status").get(status).default_service(web::to(|| async { not_allowed("GET") })))
        .default_service(web::to(|| async { HttpResponse::NotFound().json(json!({ "error": "no such endpoint" })) }))
}

fn not_allowed(allow: &str) -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header(("Allow", allow))
        .json(json!({ "error": format!("this endpoint answers {allow} only") }))
}

async fn announce(data: web::Data<Status>, req: actix_web::HttpRequest, body: web::Bytes) -> HttpResponse {
    let error = |status: actix_web::http::StatusCode, message: String| {
        HttpResponse::build(status).json(json!({ "error": message }))
    };
    use actix_web::http::StatusCode;
    if let Some(key) = &data.key {
        let header = req.headers().get(auth::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
        if let Err(e) = auth::verify_request(key, "POST /leader", header, &body, auth::clock_micros()) {
            let from = req.peer_addr().map_or_else(|| "?".into(), |a| a.to_string());
            log::warn!("manager: refused a leader announcement from {from}: {e}");
            return error(
                StatusCode::UNAUTHORIZED,
                format!("announcements must be signed with the cluster secret: {e}"),
            );
        }
    }
    let leader: Leader = match serde_json::from_slice(&body) {
        Ok(leader) => leader,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not an announcement {{name, term, http}}: {e}")),
    };
    if leader.name.is_empty() || !leader.http.contains(':') {
        return error(StatusCode::BAD_REQUEST, "name and http (host:port) are required".into());
    }
    if let Some(why) = data.book.refusal(&leader) {
        log::warn!("manager: refused a leader announcement: {why}");
        return error(StatusCode::FORBIDDEN, why);
    }
    let news = leader.term >= data.book.term() && data.book.current().0.as_ref() != Some(&leader);
    if data.key.is_none() && news {
        // Unsigned: believed only when the member itself says so.
        let (client, http) = (data.client.clone(), leader.http.clone());
        let named = web::block(move || client.leader_named_by(&http)).await.ok().flatten();
        let confirmed = named.as_ref().is_some_and(|n| n.name == leader.name && n.term == leader.term);
        if !confirmed {
            let said =
                named.map_or_else(|| "does not answer".into(), |n| format!("names {} in term {}", n.name, n.term));
            log::warn!(
                "manager: {} at {} {said}: not taking its announcement of term {}",
                leader.name,
                leader.http,
                leader.term
            );
            return error(
                StatusCode::CONFLICT,
                format!("{} at {} {said}, not itself in term {}", leader.name, leader.http, leader.term),
            );
        }
    }
    let (accepted, known) = data.book.announce(leader, "its announcement");
    HttpResponse::Ok().json(json!({ "accepted": accepted, "leader": known, "term": data.book.term() }))
}

async fn leader(data: web::Data<Status>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "leader": data.book.current().0, "term": data.book.term() }))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn status(data: web::Data<Status>) -> HttpResponse {
    let s = &data.settings;
    let mut body = json!({
        "leader": data.book.current().0,
        "term": data.book.term(),
        "nodes": s.nodes,
        "rabbitmq": {
            "url": redact_url(&s.consumer.amqp_url),
            "queue": s.consumer.queue,
            "dead_letter_queue": s.consumer.dead_letter_queue,
            "prefetch": s.consumer.prefetch,
            "concurrency": s.consumer.concurrency,
        },
        "ftp": s.ftp.as_ref().map(|f| json!({
            "host": f.host,
            "port": f.port,
            "user": f.user,
            "path": f.path,
            "interval_ms": f.interval.as_millis() as u64,
        })),
    });
    if let (Some(out), serde_json::Value::Object(counters)) = (body.as_object_mut(), data.stats.to_json()) {
        out.extend(counters);
    }
    HttpResponse::Ok().json(body)
}
