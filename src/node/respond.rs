//! Answers shared by every part of the HTTP face: the `405` of a method a resource does not
//! take, the `408` of a body that stopped arriving.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

/// The handler of every other method on a resource that answers `methods` (`"GET, POST"`):
/// `405` naming them in `Allow`.
pub fn allow_only(methods: &'static str) -> actix_web::Route {
    web::to(move || async move {
        HttpResponse::build(StatusCode::METHOD_NOT_ALLOWED)
            .insert_header(("Allow", methods))
            .json(json!({ "error": format!("this endpoint answers {methods} only") }))
    })
}

/// How long a request's body may stop arriving before the request is answered `408`: a client
/// that announces more than it sends does not hold its connection and its handler forever.
pub const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `e` is a body that stopped arriving for [`BODY_IDLE`].
pub fn body_timed_out(e: &actix_web::error::PayloadError) -> bool {
    matches!(e, actix_web::error::PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// The `408` of a request whose body stopped arriving.
pub fn body_timeout_response() -> HttpResponse {
    HttpResponse::build(StatusCode::REQUEST_TIMEOUT)
        .force_close()
        .json(json!({ "error": format!("the request body stopped arriving for {} s", BODY_IDLE.as_secs()) }))
}

pub async fn method_not_allowed() -> HttpResponse {
    HttpResponse::build(StatusCode::METHOD_NOT_ALLOWED)
        .insert_header(("Allow", "GET, HEAD"))
        .json(json!({ "error": "this endpoint answers GET, HEAD only" }))
}
