//! What a node publishes about itself after every turn of its Raft loop: the snapshot that
//! `/status`, `/metrics`, the console, the leader's announcements and the notifications read.
//! The driver writes it; the HTTP face only reads it, so this module depends on neither.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

/// One peer as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    pub name: Arc<str>,
    /// `host:port` of the peer's HTTP API.
    pub http: Arc<str>,
    /// Leader only: the highest log index the peer is known to store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_index: Option<u64>,
}

/// How concurrent writes share the work of the Raft log: counters since the node started.
/// Entries per log write and per AppendEntries message are the batches' average sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Batching {
    /// Writes of the Raft log that carried entries, each made durable with one flush.
    pub log_writes: u64,
    /// Entries in those writes.
    pub log_entries: u64,
    /// AppendEntries messages sent that carried entries (one to each follower).
    pub append_messages: u64,
    /// Entries in those messages.
    pub append_entries: u64,
}

/// What became of a leader's lone writes run ahead of their commit (see the README, "A lone
/// write runs ahead of its commit"): counters since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RunAhead {
    /// Writes answered with what their transaction, run ahead, returned.
    pub answered: u64,
    /// Transactions run ahead and rolled back: the node stopped leading, or another leader's
    /// entry took the index.
    pub rolled_back: u64,
    /// Times a client waited too long for the thread that runs them (the cores busy), after
    /// which writes were applied the usual way for a second.
    pub pauses: u64,
}

/// What `/status` shows; published by the driver after every turn of its loop that changed
/// it. Its text and maps are shared between snapshots (`Arc`), so that a new snapshot, made
/// several times per write, costs about one allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub name: Arc<str>,
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<Arc<str>>,
    /// `host:port` of the leader's HTTP API.
    pub leader_http: Option<Arc<str>>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub peers: Vec<PeerStatus>,
    /// Elections this node has started since it started.
    pub elections: u64,
    /// Times this node has seen a new leader since it started.
    pub leader_changes: u64,
    /// How many entries shared each log flush and each AppendEntries message.
    pub batching: Batching,
    /// What became of the writes run ahead of their commit.
    pub run_ahead: RunAhead,
    /// Leader: followers that completed the election handshake this term, with their HTTP
    /// addresses.
    pub accepted_by: Arc<BTreeMap<String, String>>,
    /// Follower: the credentials its leader sent in the handshake.
    pub leader_credentials: Option<Arc<super::handshake::LeaderCredentials>>,
}
