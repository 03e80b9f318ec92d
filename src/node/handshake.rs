//! The election handshake of the course (seed `001`), over the Raft transport.
//!
//! Once a node follows a leader it sends `ACCEPT`; the leader answers `CREDENTIALS` with key
//! `LEADER` and value `{"http": "host:port", "token": "…"}` (its HTTP address and its write
//! token for this term); the follower stores them and answers `CREDENTIALS` with key
//! `FOLLOWER` and value `{"http": "host:port"}`, which the leader keeps. A follower without
//! credentials for its leader's term sends `ACCEPT` again with each heartbeat, so a lost
//! datagram only delays the exchange. `/status` shows what each side learned (the token only
//! by its first characters).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};

use serde::Serialize;
use serde_json::{json, Value};

use crate::proto::{self, Message, Request};

/// What a follower learned from its leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderCredentials {
    pub leader: String,
    pub term: u64,
    pub http: String,
    /// The first characters of the leader's write token for the term.
    pub token_prefix: String,
    #[serde(skip)]
    pub token: String,
}

/// One node's side of the handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    name: String,
    http: String,
    /// Leader: the term and write token it leads with.
    token: Option<(u64, String)>,
    /// Leader: followers that accepted it this term, and their HTTP addresses.
    followers: BTreeMap<String, String>,
    /// Follower: the credentials of its leader.
    leader: Option<LeaderCredentials>,
}

impl Handshake {
    pub fn new(name: String, http: String) -> Handshake {
        Handshake { name, http, token: None, followers: BTreeMap::new(), leader: None }
    }

    /// This node won `term`: a fresh write token, and no follower has accepted it yet.
    pub fn became_leader(&mut self, term: u64) {
        self.token = Some((term, new_token()));
        self.followers.clear();
        self.leader = None;
    }

    /// This node no longer leads.
    pub fn stepped_down(&mut self) {
        self.token = None;
        self.followers.clear();
    }

    /// Follower: true while it has no credentials from `leader` for `term`.
    pub fn needs_accept(&self, leader: &str, term: u64) -> bool {
        !self.leader.as_ref().is_some_and(|c| c.leader == leader && c.term == term)
    }

    /// The ACCEPT a follower sends its leader.
    pub fn accept(&self, term: u64) -> Message {
        Message::new(self.name.clone(), Request::Accept, Some(term))
    }

    /// Leader: the answer to an ACCEPT of `term`, if it leads that term.
    pub fn on_accept(&self, term: Option<u64>) -> Option<Message> {
        let (my_term, token) = self.token.as_ref()?;
        if term != Some(*my_term) {
            return None;
        }
        let mut reply = Message::new(self.name.clone(), Request::Credentials, Some(*my_term));
        reply.key = Some(proto::KEY_LEADER.into());
        reply.value = json!({ "http": self.http, "token": token });
        Some(reply)
    }

    /// Either side receiving CREDENTIALS: the follower stores the leader's and answers with its
    /// own; the leader stores the follower's address. `current` is (this node's term, the
    /// leader it follows).
    pub fn on_credentials(&mut self, msg: &Message, current: (u64, Option<&str>)) -> Option<Message> {
        let sender = msg.sender_name.as_deref()?;
        let http = msg.value.get("http").and_then(Value::as_str)?;
        let (term, leader) = current;
        match msg.key.as_deref() {
            Some(proto::KEY_LEADER) if msg.term == Some(term) && leader == Some(sender) => {
                let token = msg.value.get("token").and_then(Value::as_str)?.to_string();
                self.leader = Some(LeaderCredentials {
                    leader: sender.to_string(),
                    term,
                    http: http.to_string(),
                    token_prefix: token.chars().take(6).collect(),
                    token,
                });
                let mut reply = Message::new(self.name.clone(), Request::Credentials, Some(term));
                reply.key = Some(KEY_FOLLOWER.into());
                reply.value = json!({ "http": self.http });
                Some(reply)
            }
            Some(KEY_FOLLOWER) if self.token.as_ref().is_some_and(|(t, _)| Some(*t) == msg.term) => {
                self.followers.insert(sender.to_string(), http.to_string());
                None
            }
            _ => None,
        }
    }

    /// Leader: followers that completed the handshake this term.
    pub fn followers(&self) -> &BTreeMap<String, String> {
        &self.followers
    }

    /// Follower: its leader's credentials, once received.
    pub fn leader_credentials(&self) -> Option<&LeaderCredentials> {
        self.leader.as_ref()
    }
}

/// Key of the follower's CREDENTIALS message.
pub const KEY_FOLLOWER: &str = "FOLLOWER";

/// 128 random bits as hex, from the process's randomly seeded hasher and the clock.
fn new_token() -> String {
    let mut out = String::new();
    for round in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(round);
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_and_its_leader_exchange_credentials() {
        let mut leader = Handshake::new("node1".into(), "127.0.0.1:8000".into());
        let mut follower = Handshake::new("node2".into(), "127.0.0.2:8000".into());
        leader.became_leader(4);
        assert!(follower.needs_accept("node1", 4));
        let accept = follower.accept(4);
        assert_eq!(accept.request.as_deref(), Some("ACCEPT"));
        assert!(leader.on_accept(Some(3)).is_none(), "an ACCEPT of another term is ignored");
        let creds = leader.on_accept(accept.term).unwrap();
        assert_eq!(creds.key.as_deref(), Some("LEADER"));
        assert_eq!(creds.value["http"], "127.0.0.1:8000");
        let token = creds.value["token"].as_str().unwrap().to_string();
        assert_eq!(token.len(), 32);
        // Credentials from a node it does not follow are ignored.
        assert!(follower.on_credentials(&creds, (4, Some("node3"))).is_none());
        let answer = follower.on_credentials(&creds, (4, Some("node1"))).unwrap();
        assert!(!follower.needs_accept("node1", 4));
        assert_eq!(follower.leader_credentials().unwrap().token, token);
        assert_eq!(answer.key.as_deref(), Some("FOLLOWER"));
        assert!(leader.on_credentials(&answer, (4, Some("node1"))).is_none());
        assert_eq!(leader.followers().get("node2").map(String::as_str), Some("127.0.0.2:8000"));
        // A new term brings a new token.
        leader.became_leader(5);
        assert_ne!(leader.on_accept(Some(5)).unwrap().value["token"], token);
        assert!(leader.followers().is_empty());
    }
}
