//! The node's HTTP server (actix-web): health, readiness, state and metrics.
//!
//! The driver publishes a [`NodeStatus`](super::status::NodeStatus) snapshot on a `watch` channel after every turn; the
//! handlers only read the latest snapshot, so HTTP never waits on, or slows, the Raft loop.
//! The server runs on a thread of its own with actix's runtime and stops gracefully when the
//! node stops.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when a leader is known and the database answers, else 503 with the failed checks |
//! | `GET /status` | name, role, term, leader and its HTTP address, indexes, peers |
//! | `GET /heartbeat` | name, role, term, leader, uptime |
//! | `GET /metrics` | Prometheus text format |
//!
//! The data API (products, users, tasks) is in [`super::api`]; the web console at `/` in
//! [`super::console`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{self, Next};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::json;
use tokio::sync::watch;

use super::respond::{method_not_allowed, BODY_IDLE};
use super::status::NodeStatus;

/// Shared by the handlers.
struct State {
    status: watch::Receiver<Arc<NodeStatus>>,
    /// The addresses `/status` hands out to each client, with the scheme.
    advertised: super::advertise::Advertised,
    started: Instant,
    /// Responses by HTTP status code.
    responses: ResponseCounts,
}

/// The running server.
pub struct Server {
    handle: ServerHandle,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
    addr: SocketAddr,
}

impl Server {
    /// Binds `bind` and serves on a thread of its own, HTTPS when given a TLS configuration.
    /// Fails at once if `bind` is taken.
    pub fn start(
        bind: SocketAddr,
        tls: Option<rustls::ServerConfig>,
        status: watch::Receiver<Arc<NodeStatus>>,
        api: web::Data<super::api::Api>,
        console: web::Data<super::console::Console>,
    ) -> std::io::Result<Server> {
        let advertised = api.advertised.clone();
        let state =
            web::Data::new(State { status, advertised, started: Instant::now(), responses: ResponseCounts::default() });
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("http".into()).spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || app(state.clone(), api.clone(), console.clone()))
                    .workers(2)
                    .disable_signals()
                    .shutdown_timeout(2);
                let server = match tls {
                    Some(tls) => server.bind_rustls_0_23(bind, tls),
                    None => server.bind(bind),
                };
                let server = match server {
                    Ok(server) => server,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return Ok(());
                    }
                };
                let addr = server.addrs().first().copied().unwrap_or(bind);
                let running = server.run();
                let _ = tx.send(Ok((running.handle(), addr)));
                running.await
            })
        })?;
        match rx.recv() {
            Ok(Ok((handle, addr))) => Ok(Server { handle, thread, addr }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(std::io::Error::other("the HTTP server thread ended before it started")),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in progress finish, and waits for the thread.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        match self.thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("HTTP server ended with an error: {e}"),
            Err(_) => log::warn!("HTTP server thread panicked"),
        }
    }
}

fn app(
    state: web::Data<State>,
    api: web::Data<super::api::Api>,
    console: web::Data<super::console::Console>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .app_data(api)
        .app_data(console)
        // The innermost first: authorization runs after HEAD became GET, and its 401 and 403
        // are counted.
        .wrap(middleware::from_fn(super::accounts::authorize))
        .wrap(middleware::from_fn(count_responses))
        .wrap(middleware::from_fn(head_as_get))
        .wrap(middleware::from_fn(body_deadline))
        .configure(super::accounts::configure)
        .configure(super::api::configure)
        .configure(super::console::configure)
        .service(web::resource("/healthz").get(healthz).default_service(web::to(method_not_allowed)))
        .service(web::resource("/readyz").get(readyz).default_service(web::to(method_not_allowed)))
        .service(web::resource("/status").get(status).default_service(web::to(method_not_allowed)))
        .service(web::resource("/heartbeat").get(heartbeat).default_service(web::to(method_not_allowed)))
        .service(web::resource("/metrics").get(metrics).default_service(web::to(method_not_allowed)))
        .default_service(web::to(not_found))
}

/// `HEAD` is answered as `GET` is, without the body (RFC 9110 §9.3.2): the request is routed
/// as a `GET`, and the HTTP layer, which read a `HEAD`, sends the response's head only.
async fn head_as_get(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if req.method() == actix_web::http::Method::HEAD {
        req.head_mut().method = actix_web::http::Method::GET;
    }
    next.call(req).await
}

/// Gives a request with a body [`BODY_IDLE`] between its pieces: its reader then gets a
/// timed-out error, answered `408` (the head of a request has actix's own deadline).
async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    use actix_web::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    let headers = req.headers();
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || headers.get(CONTENT_LENGTH).is_some_and(|length| length.as_bytes() != b"0");
    if has_body {
        let inner = actix_web::HttpMessage::take_payload(&mut req);
        let timed = IdleDeadline { inner, sleep: Box::pin(tokio::time::sleep(BODY_IDLE)), done: false };
        req.set_payload(actix_web::dev::Payload::Stream { payload: Box::pin(timed) });
    }
    next.call(req).await
}

/// A request body that ends with an error once no piece of it has come for [`BODY_IDLE`].
struct IdleDeadline<S> {
    inner: S,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl<S> futures_util::Stream for IdleDeadline<S>
where
    S: futures_util::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>> + Unpin,
{
    type Item = Result<web::Bytes, actix_web::error::PayloadError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match std::pin::Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(piece) => {
                this.done = piece.is_none();
                this.sleep.as_mut().reset(tokio::time::Instant::now() + BODY_IDLE);
                Poll::Ready(piece)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.done = true;
                    let stalled =
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "the request body stopped arriving");
                    Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(stalled))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// HTTP responses by status code, counted without a lock shared by the workers.
struct ResponseCounts {
    /// Codes 100 to 599; others (which actix does not send) are counted as 599.
    by_code: Vec<std::sync::atomic::AtomicU64>,
}

impl Default for ResponseCounts {
    fn default() -> ResponseCounts {
        ResponseCounts { by_code: (100..600).map(|_| Default::default()).collect() }
    }
}

impl ResponseCounts {
    fn count(&self, code: u16) {
        let slot = usize::from(code.clamp(100, 599) - 100);
        self.by_code[slot].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn snapshot(&self) -> BTreeMap<u16, u64> {
        (100u16..)
            .zip(&self.by_code)
            .map(|(code, n)| (code, n.load(std::sync::atomic::Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

async fn count_responses(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<State>>().cloned();
    let res = next.call(req).await?;
    if let Some(state) = state {
        let code = res.status().as_u16();
        state.responses.count(code);
    }
    Ok(res)
}

async fn healthz(state: web::Data<State>) -> HttpResponse {
    let name = state.status.borrow().name.clone();
    HttpResponse::Ok().json(json!({ "status": "ok", "name": name }))
}

async fn readyz(state: web::Data<State>, api: web::Data<super::api::Api>) -> HttpResponse {
    let status = state.status.borrow().clone();
    let leader = status.leader.is_some();
    let stall = api.applied.stall();
    let database = super::api::check_database(api).await;
    let ready = leader && database.is_ok() && stall.is_none();
    let mut body = json!({
        "ready": ready,
        "name": status.name,
        "checks": { "node": true, "leader": leader, "database": database.is_ok(), "applying": stall.is_none() },
    });
    if let Err(e) = database {
        body["database_error"] = json!(e);
    }
    if let Some(stall) = stall {
        body["apply_error"] = json!(format!(
            "entry {} has failed {} time(s) over {} s: {}",
            stall.index,
            stall.attempts,
            stall.since.elapsed().as_secs(),
            stall.error
        ));
    }
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().insert_header(("Retry-After", "1")).json(body)
    }
}

async fn status(state: web::Data<State>, req: HttpRequest) -> HttpResponse {
    let status = state.status.borrow().clone();
    HttpResponse::Ok().json(with_urls(&status, state.advertised.for_request(&req)))
}

/// The snapshot as `/status` shows it to a client: each `host:port` (`leader_http`, a peer's
/// `http`) as that client reaches it (see [`super::advertise`]), and also as a URL with the
/// cluster's scheme (`leader_url`, `url`), so that a client sees whether the nodes speak https.
fn with_urls(status: &NodeStatus, view: super::advertise::View<'_>) -> serde_json::Value {
    // A struct of strings, numbers and maps of strings: it always serializes.
    let mut body = serde_json::to_value(status).unwrap_or_default();
    body["scheme"] = json!(view.scheme());
    body["leader_http"] = json!(status.leader_http.as_deref().map(|http| view.http(http)));
    body["leader_url"] = json!(status.leader_http.as_deref().map(|http| view.url(http)));
    if let Some(peers) = body["peers"].as_array_mut() {
        for peer in peers {
            if let Some(http) = peer["http"].as_str().map(str::to_string) {
                peer["http"] = json!(view.http(&http));
                peer["url"] = json!(view.url(&http));
            } else {
                peer["url"] = serde_json::Value::Null;
            }
        }
    }
    body
}

async fn heartbeat(state: web::Data<State>) -> HttpResponse {
    let s = state.status.borrow().clone();
    HttpResponse::Ok().json(json!({
        "name": s.name,
        "role": s.role,
        "term": s.term,
        "leader": s.leader,
        "uptime_ms": state.started.elapsed().as_millis() as u64,
    }))
}

async fn metrics(state: web::Data<State>) -> HttpResponse {
    let s = state.status.borrow().clone();
    let responses = state.responses.snapshot();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(render_metrics(&s, &responses))
}

async fn not_found() -> HttpResponse {
    HttpResponse::build(StatusCode::NOT_FOUND).json(json!({ "error": "no such endpoint" }))
}

/// The Prometheus text exposition of a node's state.
pub fn render_metrics(s: &NodeStatus, responses: &BTreeMap<u16, u64>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, lines: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let role_lines: Vec<(String, u64)> = ["FOLLOWER", "CANDIDATE", "LEADER"]
        .iter()
        .map(|r| (format!("{{node=\"{}\",role=\"{r}\"}}", s.name), u64::from(s.role == *r)))
        .collect();
    gauge("labctl_role", "1 for the node's current Raft role", "gauge", &role_lines);
    let b = &s.batching;
    // One line each, labelled with the node's name.
    let r = &s.run_ahead;
    let single: [(&str, &str, &str, u64); 14] = [
        ("labctl_term", "Current Raft term", "gauge", s.term),
        ("labctl_leader_known", "1 while a leader is known", "gauge", u64::from(s.leader.is_some())),
        ("labctl_commit_index", "Highest log index known committed", "gauge", s.commit_index),
        ("labctl_applied_index", "Highest log index applied", "gauge", s.applied_index),
        ("labctl_last_log_index", "Index of the last log entry", "gauge", s.last_log_index),
        ("labctl_elections_total", "Elections started by this node", "counter", s.elections),
        ("labctl_leader_changes_total", "New leaders seen by this node", "counter", s.leader_changes),
        (
            "labctl_log_writes_total",
            "Writes of the Raft log that carried entries, one flush each",
            "counter",
            b.log_writes,
        ),
        ("labctl_log_entries_total", "Entries written to the Raft log", "counter", b.log_entries),
        (
            "labctl_append_messages_total",
            "AppendEntries messages sent that carried entries",
            "counter",
            b.append_messages,
        ),
        ("labctl_append_entries_total", "Entries sent in AppendEntries messages", "counter", b.append_entries),
        (
            "labctl_run_ahead_answered_total",
            "Lone writes answered from a transaction run ahead of their commit",
            "counter",
            r.answered,
        ),
        (
            "labctl_run_ahead_rolled_back_total",
            "Transactions run ahead of their commit and rolled back",
            "counter",
            r.rolled_back,
        ),
        (
            "labctl_run_ahead_pauses_total",
            "Pauses of running writes ahead, after a client waited for the busy cores",
            "counter",
            r.pauses,
        ),
    ];
    let node = format!("{{node=\"{}\"}}", s.name);
    for (name, help, kind, value) in single {
        gauge(name, help, kind, &[(node.clone(), value)]);
    }
    let http: Vec<(String, u64)> =
        responses.iter().map(|(code, n)| (format!("{{node=\"{}\",status=\"{code}\"}}", s.name), *n)).collect();
    gauge("labctl_http_requests_total", "HTTP responses by status code", "counter", &http);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::status::{Batching, PeerStatus};

    #[test]
    fn responses_are_counted_by_code() {
        let counts = ResponseCounts::default();
        for code in [200, 200, 404, 307, 1000] {
            counts.count(code);
        }
        let expected: BTreeMap<u16, u64> = [(200, 2), (307, 1), (404, 1), (599, 1)].into();
        assert_eq!(counts.snapshot(), expected);
    }

    #[test]
    fn status_urls_carry_the_scheme() {
        let s = NodeStatus {
            name: "node1".into(),
            role: "FOLLOWER",
            term: 2,
            leader: Some("node2".into()),
            leader_http: Some("127.0.0.2:8000".into()),
            commit_index: 0,
            applied_index: 0,
            last_log_index: 0,
            peers: vec![PeerStatus { name: "node2".into(), http: "127.0.0.2:8000".into(), match_index: None }],
            elections: 0,
            leader_changes: 1,
            batching: Batching::default(),
            run_ahead: Default::default(),
            accepted_by: Default::default(),
            leader_credentials: None,
        };
        let cluster = crate::config::Cluster::default();
        let https = super::super::advertise::Advertised::cluster_only("https", &cluster, 1);
        let body = with_urls(&s, https.outside());
        assert_eq!(body["scheme"], "https");
        assert_eq!(body["leader_http"], "127.0.0.2:8000");
        assert_eq!(body["leader_url"], "https://127.0.0.2:8000");
        assert_eq!(body["peers"][0]["url"], "https://127.0.0.2:8000");
        let http = super::super::advertise::Advertised::cluster_only("http", &cluster, 1);
        let plain = with_urls(&NodeStatus { leader: None, leader_http: None, ..s.clone() }, http.outside());
        assert_eq!(plain["leader_url"], serde_json::Value::Null);
        assert_eq!(plain["peers"][0]["url"], "http://127.0.0.2:8000");
        // With public addresses, a client outside the network is given those.
        let public = super::super::advertise::Advertised::new("http", &cluster, 1, Some("192.0.2.{id}"), Some(9000));
        let body = with_urls(&s, public.outside());
        assert_eq!(body["leader_http"], "192.0.2.2:9000");
        assert_eq!(body["leader_url"], "http://192.0.2.2:9000");
        assert_eq!(body["peers"][0]["http"], "192.0.2.2:9000");
        assert_eq!(body["peers"][0]["url"], "http://192.0.2.2:9000");
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let s = NodeStatus {
            name: "node2".into(),
            role: "LEADER",
            term: 7,
            leader: Some("node2".into()),
            leader_http: Some("127.0.0.2:8000".into()),
            commit_index: 12,
            applied_index: 11,
            last_log_index: 13,
            peers: vec![],
            elections: 3,
            leader_changes: 2,
            batching: Batching { log_writes: 4, log_entries: 10, append_messages: 8, append_entries: 20 },
            run_ahead: Default::default(),
            accepted_by: Default::default(),
            leader_credentials: None,
        };
        let text = render_metrics(&s, &BTreeMap::from([(200, 5), (404, 1)]));
        for line in [
            "labctl_role{node=\"node2\",role=\"LEADER\"} 1",
            "labctl_role{node=\"node2\",role=\"FOLLOWER\"} 0",
            "labctl_term{node=\"node2\"} 7",
            "labctl_commit_index{node=\"node2\"} 12",
            "labctl_applied_index{node=\"node2\"} 11",
            "labctl_elections_total{node=\"node2\"} 3",
            "labctl_log_writes_total{node=\"node2\"} 4",
            "labctl_log_entries_total{node=\"node2\"} 10",
            "labctl_append_messages_total{node=\"node2\"} 8",
            "labctl_append_entries_total{node=\"node2\"} 20",
            "labctl_http_requests_total{node=\"node2\",status=\"404\"} 1",
            "# TYPE labctl_http_requests_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Every sample line is `name{labels} value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = l.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap_or_else(|_| panic!("bad sample {l:?}"));
        }
    }
}
