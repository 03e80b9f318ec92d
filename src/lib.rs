//! labctl: one binary that runs a replicated web service and its data pipeline.
//!
//! # Layout
//! - [`proto`]: the UDP wire message (the course's `Message.json`), shared by every role.
//! - [`config`]: configuration file, environment and flags, merged in that order.
//! - [`node`]: a cluster member. [`node::raft`] is the pure consensus core (no sockets, no
//!   clock, no disk); the rest of `node` drives it with UDP, timers and a durable log.
//! - [`controller`]: sends one control request to nodes and prints the replies.
//! - [`cluster`]: runs N nodes on loopback as child processes.
//! - [`manager`]: RabbitMQ and FTP to the leader: the pipeline's last step.
//! - [`health`]: GETs a URL and exits 0 on 2xx: the container health probe.
//! - [`scrape`]: scrapes a shop's listings into the processed file, the queue and FTP.
//! - [`smtp`]: `labctl smtp send`, the e-mail client nodes also use for notifications.
//! - [`tls`]: HTTPS for nodes and manager, and how their HTTP clients verify servers.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod health;
pub mod manager;
pub mod node;
pub mod proto;
pub mod scrape;
pub mod smtp;
pub mod tls;
