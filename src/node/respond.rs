//! Answers shared by every part of the HTTP face: the `405` of a method a resource does not
//! take.

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

pub async fn method_not_allowed() -> HttpResponse {
    HttpResponse::build(StatusCode::METHOD_NOT_ALLOWED)
        .insert_header(("Allow", "GET, HEAD"))
        .json(json!({ "error": "this endpoint answers GET, HEAD only" }))
}
