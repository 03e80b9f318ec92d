//! The HTTP addresses a node hands out: the leader's in a `307` redirect, the leader's and the
//! peers' in `/status`, the leader's in e-mails.
//!
//! Inside the cluster's network a member is reached at its cluster address (`node1:8000` in
//! Docker, from `[cluster] host`). A client outside it, e.g. on the host of a compose lab, reaches
//! the same member at another address, where its port is published (`127.0.0.1:8000`): the
//! public address, `--public-host` (a pattern with `{id}`, like `--host`) and
//! `--public-http-port`. A redirect to `http://node1:8000/…` is useless to that client: it
//! cannot resolve the name.
//!
//! So a node answers each request in the addresses of the network it came from: a request that
//! names the node by its cluster address (its `Host` header) comes from inside and gets cluster
//! addresses; any other, when public addresses are configured, gets the public ones. Without
//! them every client gets the cluster addresses, as before.
//!
//! Followers could forward writes to the leader instead (as rqlite does), which would hide the
//! leader's address altogether; a redirect keeps one path for every write (no second hop that
//! carries the client's credentials, no second place where a write can time out), and tells
//! the client where the leader is, so its next writes go there directly.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::header;
use actix_web::HttpRequest;

use crate::config::Cluster;

/// A node's cluster and public HTTP addresses, and the cluster's scheme.
#[derive(Debug, Clone)]
pub struct Advertised {
    scheme: &'static str,
    /// `host:port` by which members and clients inside the cluster's network name this node.
    own: Arc<str>,
    /// Each member's cluster `host:port` to its public one; empty without public addresses.
    public: Arc<HashMap<Arc<str>, Arc<str>>>,
}

/// Which addresses one answer uses.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    advertised: &'a Advertised,
    public: bool,
}

impl Advertised {
    /// For node `id`; `public_host` is a pattern with `{id}` (checked by the caller), and
    /// `public_http_port` defaults to the cluster's HTTP port.
    pub fn new(
        scheme: &'static str,
        cluster: &Cluster,
        id: u32,
        public_host: Option<&str>,
        public_http_port: Option<u16>,
    ) -> Advertised {
        let public = match public_host {
            Some(pattern) => {
                let port = public_http_port.unwrap_or(cluster.http_port);
                cluster
                    .ids()
                    .map(|member| {
                        let public = format!("{}:{port}", pattern.replace("{id}", &member.to_string()));
                        (Arc::from(cluster.http_addr(member)), Arc::from(public))
                    })
                    .collect()
            }
            None => HashMap::new(),
        };
        Advertised { scheme, own: cluster.http_addr(id).into(), public: Arc::new(public) }
    }

    /// Cluster addresses only (no public ones).
    pub fn cluster_only(scheme: &'static str, cluster: &Cluster, id: u32) -> Advertised {
        Advertised::new(scheme, cluster, id, None, None)
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// The addresses for the client of `req`: public ones unless it named this node by its
    /// cluster address (or none are configured).
    pub fn for_request(&self, req: &HttpRequest) -> View<'_> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        let inside = host.is_some_and(|h| h.eq_ignore_ascii_case(&self.own));
        View { advertised: self, public: !self.public.is_empty() && !inside }
    }

    /// The public addresses when configured, else the cluster's: for readers outside the
    /// network, such as an e-mail's.
    pub fn outside(&self) -> View<'_> {
        View { advertised: self, public: !self.public.is_empty() }
    }
}

impl<'a> View<'a> {
    /// The `host:port` to hand out for a member's cluster `host:port`.
    pub fn http<'b>(&self, cluster_http: &'b str) -> &'b str
    where
        'a: 'b,
    {
        if self.public {
            if let Some(public) = self.advertised.public.get(cluster_http) {
                return public;
            }
        }
        cluster_http
    }

    /// [`View::http`] as a URL with the cluster's scheme, without a trailing slash.
    pub fn url(&self, cluster_http: &str) -> String {
        format!("{}://{}", self.advertised.scheme, self.http(cluster_http))
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        self.advertised.scheme
    }

    /// Whether this view hands out public addresses.
    pub fn is_public(&self) -> bool {
        self.public
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn lab() -> Cluster {
        Cluster { nodes: 3, host: "node{id}".into(), ..Cluster::default() }
    }

    #[test]
    fn the_client_gets_the_addresses_of_its_network() {
        let a = Advertised::new("http", &lab(), 2, Some("127.0.0.{id}"), Some(18000));
        // From the host, through node2's published port.
        let req = TestRequest::default().insert_header(("Host", "127.0.0.2:18000")).to_http_request();
        let view = a.for_request(&req);
        assert!(view.is_public());
        assert_eq!(view.http("node1:8000"), "127.0.0.1:18000");
        assert_eq!(view.url("node3:8000"), "http://127.0.0.3:18000");
        // Any other name for the node from outside: localhost, a LAN address.
        let req = TestRequest::default().insert_header(("Host", "localhost:18000")).to_http_request();
        assert_eq!(a.for_request(&req).http("node1:8000"), "127.0.0.1:18000");
        // From inside the network, by the node's cluster name (any case).
        let req = TestRequest::default().insert_header(("Host", "Node2:8000")).to_http_request();
        let view = a.for_request(&req);
        assert!(!view.is_public());
        assert_eq!(view.http("node1:8000"), "node1:8000");
        // An address that is not a member's is handed out as it is.
        let req = TestRequest::default().insert_header(("Host", "127.0.0.2:18000")).to_http_request();
        assert_eq!(a.for_request(&req).http("elsewhere:8000"), "elsewhere:8000");
        assert_eq!(a.outside().http("node1:8000"), "127.0.0.1:18000");
    }

    #[test]
    fn without_public_addresses_everyone_gets_the_cluster_ones() {
        let a = Advertised::cluster_only("https", &lab(), 1);
        let req = TestRequest::default().insert_header(("Host", "127.0.0.1:8000")).to_http_request();
        let view = a.for_request(&req);
        assert!(!view.is_public());
        assert_eq!(view.url("node2:8000"), "https://node2:8000");
        assert_eq!(a.outside().http("node2:8000"), "node2:8000");
        // The public port defaults to the cluster's HTTP port.
        let a = Advertised::new("http", &lab(), 1, Some("10.0.0.{id}"), None);
        assert_eq!(a.outside().http("node3:8000"), "10.0.0.3:8000");
    }
}
