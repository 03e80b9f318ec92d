//! `/console/nodes/{node}/{path}`: a console request relayed to another member (or this one).
//!
//! Only the state endpoints and the data API are relayed, and only to members of the cluster
//! at the HTTP addresses of the configuration: the relay cannot be pointed anywhere else.

use std::time::Duration;

use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::{Console, NODE_HEADER};
use crate::node::api::{IDEMPOTENCY_KEY, LEADER_HEADER, MAX_BODY};
use crate::proto;

/// The path prefix of relayed requests.
const PREFIX: &str = "/console/nodes/";
/// How long a relayed state request may take: the console polls every node twice a second,
/// and a node that does not answer in this time is shown as unreachable.
const STATE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long any other relayed request may take: a write waits up to 15 s for its entry.
const API_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest answer relayed.
const MAX_ANSWER: u64 = 16 * 1024 * 1024;
/// Request headers passed on.
const REQUEST_HEADERS: [&str; 4] = ["content-type", "accept", "authorization", IDEMPOTENCY_KEY];
/// Answer headers passed back (Location is rewritten, see [`relay`]).
const ANSWER_HEADERS: [&str; 5] = ["content-type", "retry-after", "allow", "www-authenticate", LEADER_HEADER];

/// How often a refused certificate is logged at most (the console polls every node twice a second).
const TLS_WARN_EVERY: Duration = Duration::from_secs(10);

/// HTTP clients for relayed requests, one per timeout.
pub(super) struct Relay {
    state: ureq::Agent,
    api: ureq::Agent,
    /// `http` or `https`: how the members are reached.
    scheme: &'static str,
    /// When a TLS failure was last logged.
    tls_warned: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Relay {
    pub(super) fn new(scheme: &'static str, tls: &crate::tls::ClientTls) -> Relay {
        let agent = |timeout| {
            ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .http_status_as_error(false)
                .max_redirects(0)
                .tls_config(tls.config())
                .build()
                .new_agent()
        };
        Relay { state: agent(STATE_TIMEOUT), api: agent(API_TIMEOUT), scheme, tls_warned: Default::default() }
    }

    /// Logs a TLS failure (a refused certificate) at most once per [`TLS_WARN_EVERY`].
    fn warn_tls(&self, console: &str, url: &str, e: &ureq::Error) {
        let mut last = self.tls_warned.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_none_or(|at| at.elapsed() >= TLS_WARN_EVERY) {
            log::warn!("{console}: console relay refused {url}: {e}");
            *last = Some(std::time::Instant::now());
        }
    }
}

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/console/nodes/{node}/{path:.*}")
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .route(web::route().to(relay)),
    );
}

/// Which relayed paths are state requests (short timeout); None: not relayed at all.
fn classify(path: &str) -> Option<bool> {
    if path.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return None;
    }
    match path {
        "status" | "healthz" | "readyz" | "heartbeat" => Some(true),
        _ if path.starts_with("api/") => Some(false),
        _ => None,
    }
}

/// The member `name` names, if it is one.
fn member(console: &Console, name: &str) -> Option<u32> {
    proto::parse_node_name(name).filter(|id| (1..=console.cluster.nodes).contains(id))
}

fn error(status: StatusCode, message: String) -> HttpResponse {
    HttpResponse::build(status).insert_header((header::CACHE_CONTROL, "no-store")).json(json!({ "error": message }))
}

async fn relay(console: web::Data<Console>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    // The raw (still percent-encoded) path, so the target sees exactly what the browser sent.
    let rest = req.uri().path().strip_prefix(PREFIX).unwrap_or_default();
    let (node, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(id) = member(&console, node) else {
        return error(StatusCode::NOT_FOUND, format!("{node:?} is not a member of this cluster"));
    };
    let Some(state) = classify(path) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("/{path} is not relayed: only /status, /healthz, /readyz, /heartbeat and /api/…"),
        );
    };
    let method = req.method().clone();
    if ![Method::GET, Method::POST, Method::PUT, Method::DELETE].contains(&method) {
        return error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not relayed"));
    }
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let target = console.cluster.http_addr(id);
    let url = format!("{}://{target}/{path}{query}", console.relay.scheme);
    let mut request = ureq::http::Request::builder().method(method.as_str()).uri(&url);
    for name in REQUEST_HEADERS {
        if let Some(value) = req.headers().get(name) {
            request = request.header(name, value.as_bytes());
        }
    }
    let request = match request.body(body.to_vec()) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot relay this request: {e}")),
    };
    let agent = if state { console.relay.state.clone() } else { console.relay.api.clone() };
    let answer = web::block(move || {
        let mut response = agent.run(request)?;
        let body = response.body_mut().with_config().limit(MAX_ANSWER).read_to_vec()?;
        Ok::<_, ureq::Error>((response, body))
    })
    .await;
    let (response, answer_body) = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(ureq::Error::Timeout(_))) => {
            return error(StatusCode::GATEWAY_TIMEOUT, format!("{node} ({target}) did not answer in time"))
        }
        Ok(Err(e)) => {
            if crate::tls::is_tls_error(&e) {
                console.relay.warn_tls(&console.name, &url, &e);
            }
            return error(StatusCode::BAD_GATEWAY, format!("{node} ({target}) did not answer: {e}"));
        }
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the relay was cancelled".into()),
    };
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HttpResponse::build(status);
    out.insert_header((NODE_HEADER, node.to_string())).insert_header((header::CACHE_CONTROL, "no-store"));
    for name in ANSWER_HEADERS {
        if let Some(value) = response.headers().get(name) {
            out.insert_header((name, value.as_bytes()));
        }
    }
    // A redirect to the leader becomes one to the leader's relay path: the browser follows it
    // on this origin. Any other Location would lead the browser off it, so it is dropped.
    if status.is_redirection() {
        let leader = response.headers().get(LEADER_HEADER).and_then(|v| v.to_str().ok());
        if let Some(leader) = leader.filter(|l| member(&console, l).is_some()) {
            out.insert_header((header::LOCATION, format!("{PREFIX}{leader}/{path}{query}")));
        }
    }
    out.body(answer_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_state_and_api_paths_are_relayed() {
        assert_eq!(classify("status"), Some(true));
        assert_eq!(classify("healthz"), Some(true));
        assert_eq!(classify("api/tasks"), Some(false));
        assert_eq!(classify("api/tasks/3"), Some(false));
        assert_eq!(classify("api/control/timeout"), Some(false));
        for refused in
            ["", "metrics", "console/nodes/node2/status", "api/../metrics", "api//tasks", "api/./x", "/status"]
        {
            assert_eq!(classify(refused), None, "{refused:?}");
        }
    }
}
