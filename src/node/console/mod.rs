//! The web console every node serves at `/`: a page to watch the cluster and manage tasks,
//! users and products in a browser.
//!
//! The page is static (HTML, CSS and plain JavaScript compiled into the binary; nothing is
//! fetched from anywhere but the serving node). Besides the files it needs two things from the
//! node:
//!
//! | endpoint | what it does |
//! |---|---|
//! | `POST /api/control/timeout` | sends this node the controller's `TIMEOUT` (it starts an election) |
//! | `POST /api/control/convert-follower` | sends this node the controller's `CONVERT_FOLLOWER` |
//! | `GET/POST/PUT/DELETE /console/nodes/{node}/{path}` | the same request on member `node`, relayed by this node |
//!
//! The control endpoints inject the very datagram `labctl controller` sends, over UDP to the
//! node's own Raft port, so the console's TIMEOUT takes the path a controller's does. When a
//! `console_token` is configured they require `Authorization: Bearer <token>` and answer 401
//! without it.
//!
//! **Why a relay and not CORS.** The console on node1 shows node3 and writes through the
//! leader, which may be any node. The addresses a node knows for its peers are the cluster's
//! own (`node3:8000` in Docker), which a browser outside that network may not reach; the
//! serving node always can. Relaying also keeps the API closed to scripts of other origins
//! (no `Access-Control-Allow-Origin` anywhere) and sends the token to no one but the cluster.
//! A follower's `307` to the leader is rewritten to the leader's relay path, so the browser
//! follows it on the same origin, method and body intact; every relayed answer names the node
//! that gave it in `X-Labctl-Node`.

mod assets;
mod control;
mod relay;

use std::net::SocketAddr;

use actix_web::web;

use crate::config::Cluster;

/// The header naming the node that answered a relayed request.
pub const NODE_HEADER: &str = "X-Labctl-Node";

/// What the console's handlers share.
pub struct Console {
    /// This node's name, `nodeN`.
    name: String,
    /// The bearer token the control endpoints require; None: they are open.
    token: Option<String>,
    /// Whether accounts are required (`--auth`): then the control endpoints need an admin,
    /// checked by [`crate::node::auth`], and the token is not asked for.
    auth: bool,
    /// Where the node's own Raft/control socket receives datagrams.
    control_addr: SocketAddr,
    cluster: Cluster,
    relay: relay::Relay,
    /// Secure mode: the control requests the buttons send are signed.
    signing: Option<crate::proto::client::Signing>,
}

impl Console {
    /// The console of node `name`, whose Raft/control socket is bound to `raft_bound` (an
    /// unspecified address, as in a container, is reached over loopback). The relay reaches the
    /// other members with `scheme`, verifying https ones with `tls`. With `auth` on, the
    /// control buttons need an admin and `token` is not used.
    pub fn new(
        name: String,
        token: Option<String>,
        raft_bound: SocketAddr,
        cluster: Cluster,
        scheme: &'static str,
        tls: &crate::tls::ClientTls,
        auth: bool,
    ) -> Console {
        let token = token.filter(|t| !t.is_empty() && !auth);
        Console {
            name,
            token,
            auth,
            control_addr: control::reachable(raft_bound),
            cluster,
            relay: relay::Relay::new(scheme, tls),
            signing: None,
        }
    }

    /// Signs the control requests with the cluster key (secure mode).
    pub fn sign_with(mut self, key: crate::proto::auth::Key) -> Console {
        self.signing = Some(crate::proto::client::Signing::new(key));
        self
    }

    /// True when the control endpoints need a token.
    pub fn token_required(&self) -> bool {
        self.token.is_some()
    }
}

/// Registers the page, the control endpoints and the relay.
pub fn configure(cfg: &mut web::ServiceConfig) {
    assets::configure(cfg);
    control::configure(cfg);
    relay::configure(cfg);
}
