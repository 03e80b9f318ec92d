//! The console's files, compiled into the binary.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use crate::node::respond::method_not_allowed;

/// One file of the console.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Everything the page loads; nothing comes from elsewhere (the policy below forbids it).
const ASSETS: &[Asset] = &[
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_str!("web/index.html") },
    Asset { path: "/console/app.js", content_type: "text/javascript; charset=utf-8", body: include_str!("web/app.js") },
    Asset { path: "/console/style.css", content_type: "text/css; charset=utf-8", body: include_str!("web/style.css") },
    Asset { path: "/console/icon.svg", content_type: "image/svg+xml", body: include_str!("web/icon.svg") },
];

/// Scripts, styles, images and requests from this origin only; no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
     script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    for asset in ASSETS {
        cfg.service(web::resource(asset.path).get(move || serve(asset)).default_service(web::to(method_not_allowed)));
    }
}

async fn serve(asset: &'static Asset) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(asset.content_type)
        // The files change with the binary: revalidate rather than keep an old console.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(asset.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_files_the_node_serves() {
        let page = ASSETS[0].body;
        for attr in ["src=\"", "href=\""] {
            for (i, _) in page.match_indices(attr) {
                let value = &page[i + attr.len()..];
                let value = &value[..value.find('"').unwrap()];
                if value.starts_with('#') {
                    continue;
                }
                assert!(
                    ASSETS.iter().any(|a| a.path == value),
                    "the page loads {value}, which the node does not serve"
                );
            }
        }
        for asset in ASSETS {
            let text = asset.body.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"), "{} names an outside URL", asset.path);
        }
    }
}
