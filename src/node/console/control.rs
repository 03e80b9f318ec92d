//! `POST /api/control/{timeout|convert-follower}`: the controller's requests, from a browser.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::Console;
use crate::proto::client::{control_message, exchange_with};
use crate::proto::Request;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/control").get(describe).default_service(web::to(get_only)))
        .service(web::resource("/api/control/{request}").post(control).default_service(web::to(post_only)));
}

/// Where a socket bound to `bound` receives datagrams sent from this host.
pub(super) fn reachable(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, bound.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, bound.port()).into(),
        _ => bound,
    }
}

/// The control request an endpoint name stands for.
fn request_named(name: &str) -> Option<Request> {
    match name {
        "timeout" => Some(Request::Timeout),
        "convert-follower" => Some(Request::ConvertFollower),
        _ => None,
    }
}

/// What the console needs to know before it offers the buttons.
async fn describe(console: web::Data<Console>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "node": console.name,
        "requests": ["timeout", "convert-follower"],
        "token_required": console.token_required(),
        "auth": console.auth,
    }))
}

async fn control(console: web::Data<Console>, req: HttpRequest, name: web::Path<String>) -> HttpResponse {
    let Some(request) = request_named(&name) else {
        return HttpResponse::NotFound()
            .json(json!({ "error": format!("no control request {name:?}: timeout or convert-follower") }));
    };
    if let Some(refusal) = refusal(&console, &req) {
        return HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"labctl console\""))
            .json(json!({ "error": refusal }));
    }
    let from = req.peer_addr().map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
    log::info!("{}: {request} from the console at {from}", console.name);
    let me = crate::proto::parse_node_name(&console.name).unwrap_or(0);
    match exchange_with(console.signing.as_ref(), me, console.control_addr, &control_message(request), None) {
        Ok(_) => HttpResponse::Accepted().json(json!({ "node": console.name, "request": request.as_str() })),
        Err(e) => {
            log::warn!("{}: cannot send {request} to its own socket {}: {e}", console.name, console.control_addr);
            HttpResponse::InternalServerError().json(json!({ "error": format!("cannot send {request}: {e}") }))
        }
    }
}

/// Why the request may not send control requests: None when no token is configured or the
/// request carries it as `Authorization: Bearer …`.
fn refusal(console: &Console, req: &HttpRequest) -> Option<&'static str> {
    let token = console.token.as_ref()?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if same(given.as_bytes(), token.as_bytes()) => None,
        Some(_) => Some("the console token is wrong"),
        None => Some("this node requires the console token (Authorization: Bearer <token>)"),
    }
}

/// Compares in time that depends only on the lengths, not on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn get_only() -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, "GET, HEAD"))
        .json(json!({ "error": "this endpoint answers GET, HEAD only" }))
}

async fn post_only() -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, "POST"))
        .json(json!({ "error": "control requests are sent with POST" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_binds_are_reached_over_loopback() {
        assert_eq!(reachable("0.0.0.0:5555".parse().unwrap()), "127.0.0.1:5555".parse().unwrap());
        assert_eq!(reachable("[::]:5555".parse().unwrap()), "[::1]:5555".parse().unwrap());
        assert_eq!(reachable("127.0.0.3:5555".parse().unwrap()), "127.0.0.3:5555".parse().unwrap());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
