//! The manager's HTTP service: the leader announces itself here, and people look.
//!
//! - `POST /leader` `{"name","term","http"}`: the leader after each election it wins. An
//!   announcement of a lower term than the known one is ignored, yet answered `200` with what is
//!   known (`"accepted": false`), so the old leader stops retrying.
//! - `GET /leader`: the known leader, or `null`.
//! - `GET /healthz`: the process is up.
//! - `GET /status`: the leader, RabbitMQ and FTP settings, and the counters of [`Stats`].

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;

use super::leader::{Leader, LeaderBook};
use super::{redact_url, Settings, Stats};

/// What the handlers read.
#[derive(Clone)]
pub struct Status {
    pub book: Arc<LeaderBook>,
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

async fn announce(data: web::Data<Status>, body: web::Json<Leader>) -> HttpResponse {
    let leader = body.into_inner();
    if leader.name.is_empty() || !leader.http.contains(':') {
        return HttpResponse::BadRequest().json(json!({ "error": "name and http (host:port) are required" }));
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
