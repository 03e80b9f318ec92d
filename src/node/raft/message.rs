//! Messages between Raft nodes, and their mapping onto the course's wire format.

pub use crate::proto::MAX_WIRE_NUMBER;
use crate::proto::{self, LogEntry, Message, Request};

/// A node's id: `node3` is 3.
pub type NodeId = u32;

/// A message from one node to another.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// AppendEntries (§5.3): replicate `entries` after `prev_log_index`; empty is a heartbeat.
    /// `read_seq` numbers the leader's latest leadership check for linearizable reads (0:
    /// none yet); the reply echoes it. Wire: `APPEND_RPC`.
    Append {
        term: u64,
        prev_log_index: u64,
        prev_log_term: u64,
        entries: Vec<LogEntry>,
        leader_commit: u64,
        read_seq: u64,
    },
    /// Reply to `Append`. On success `match_index` is the last index known to match the
    /// leader; on a mismatch `conflict_index`/`conflict_term` let the leader skip a whole
    /// conflicting term at once. `read_seq` is the one of the `Append` answered. Wire: `APPEND_REPLY`.
    AppendReply {
        term: u64,
        success: bool,
        match_index: u64,
        conflict_index: u64,
        conflict_term: Option<u64>,
        read_seq: u64,
    },
    /// RequestVote (§5.2). `force` marks an election started by a controller TIMEOUT, which
    /// voters do not refuse for having heard from a leader recently. Wire: `VOTE_REQUEST`.
    Vote { term: u64, last_log_index: u64, last_log_term: u64, force: bool },
    /// A granted vote; refusals are not sent. Wire: `VOTE_ACK`.
    VoteAck { term: u64 },
    /// PreVote (thesis §9.6): "would you vote for me in `term`?" Changes no state at the
    /// receiver. Wire: `PRE_VOTE_REQUEST`.
    PreVote { term: u64, last_log_index: u64, last_log_term: u64 },
    /// Answer to `PreVote`: granted for the asked `term`, or refused with the voter's newer
    /// term. Wire: `PRE_VOTE_REPLY`.
    PreVoteReply { term: u64, granted: bool },
}

/// Why a datagram could not be read as a Raft message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("sender {0:?} is not a node name")]
    BadSender(Option<String>),
    #[error("{0} is not a Raft message")]
    NotRaft(Request),
    #[error("{request} lacks field {field}")]
    Missing { request: Request, field: &'static str },
    #[error("{request} field {field} is {value}, over the largest a cluster can reach (2^53)")]
    OutOfRange { request: Request, field: &'static str, value: u64 },
}

impl Msg {
    pub fn term(&self) -> u64 {
        match self {
            Msg::Append { term, .. }
            | Msg::AppendReply { term, .. }
            | Msg::Vote { term, .. }
            | Msg::VoteAck { term }
            | Msg::PreVote { term, .. }
            | Msg::PreVoteReply { term, .. } => *term,
        }
    }

    pub fn request(&self) -> Request {
        match self {
            Msg::Append { .. } => Request::AppendRpc,
            Msg::AppendReply { .. } => Request::AppendReply,
            Msg::Vote { .. } => Request::VoteRequest,
            Msg::VoteAck { .. } => Request::VoteAck,
            Msg::PreVote { .. } => Request::PreVoteRequest,
            Msg::PreVoteReply { .. } => Request::PreVoteReply,
        }
    }

    /// The datagram `from` sends for this message.
    pub fn to_wire(&self, from: NodeId) -> Message {
        let mut m = Message::new(proto::node_name(from), self.request(), Some(self.term()));
        match self {
            Msg::Append { prev_log_index, prev_log_term, entries, leader_commit, read_seq, .. } => {
                m.prev_log_index = Some(*prev_log_index);
                m.prev_log_term = Some(*prev_log_term);
                m.entries = Some(entries.clone());
                m.leader_commit = Some(*leader_commit);
                m.read_seq = (*read_seq > 0).then_some(*read_seq);
            }
            Msg::AppendReply { success, match_index, conflict_index, conflict_term, read_seq, .. } => {
                m.read_seq = (*read_seq > 0).then_some(*read_seq);
                m.success = Some(*success);
                m.match_index = Some(*match_index);
                if !success {
                    m.conflict_index = Some(*conflict_index);
                    m.conflict_term = *conflict_term;
                }
            }
            Msg::Vote { last_log_index, last_log_term, force, .. } => {
                m.last_log_index = Some(*last_log_index);
                m.last_log_term = Some(*last_log_term);
                if *force {
                    m.force = Some(true);
                }
            }
            Msg::VoteAck { .. } => {}
            Msg::PreVote { last_log_index, last_log_term, .. } => {
                m.last_log_index = Some(*last_log_index);
                m.last_log_term = Some(*last_log_term);
            }
            Msg::PreVoteReply { granted, .. } => m.success = Some(*granted),
        }
        m
    }

    /// Reads a decoded datagram as a Raft message from a node (taking its entries over).
    pub fn from_wire(mut m: Message, request: Request) -> Result<(NodeId, Msg), WireError> {
        let from = m
            .sender_name
            .as_deref()
            .and_then(proto::parse_node_name)
            .ok_or_else(|| WireError::BadSender(m.sender_name.clone()))?;
        let need = |v: Option<u64>, field: &'static str| match v {
            None => Err(WireError::Missing { request, field }),
            Some(value) => in_range(request, field, value),
        };
        let optional = |v: Option<u64>, field: &'static str| v.map_or(Ok(0), |value| in_range(request, field, value));
        let term = need(m.term, "term")?;
        let msg = match request {
            Request::AppendRpc => Msg::Append {
                term,
                prev_log_index: need(m.prev_log_index, "prev_log_index")?,
                prev_log_term: need(m.prev_log_term, "prev_log_term")?,
                entries: {
                    let entries = m.entries.take().unwrap_or_default();
                    if let Some(e) = entries.iter().find(|e| e.term > MAX_WIRE_NUMBER) {
                        return Err(WireError::OutOfRange { request, field: "entries[].Term", value: e.term });
                    }
                    entries
                },
                leader_commit: optional(m.leader_commit, "leader_commit")?,
                read_seq: optional(m.read_seq, "read_seq")?,
            },
            Request::AppendReply => Msg::AppendReply {
                term,
                success: m.success.unwrap_or(false),
                match_index: optional(m.match_index, "match_index")?,
                conflict_index: optional(m.conflict_index, "conflict_index")?,
                conflict_term: m.conflict_term.map(|t| in_range(request, "conflict_term", t)).transpose()?,
                read_seq: optional(m.read_seq, "read_seq")?,
            },
            Request::VoteRequest => Msg::Vote {
                term,
                last_log_index: need(m.last_log_index, "last_log_index")?,
                last_log_term: need(m.last_log_term, "last_log_term")?,
                force: m.force.unwrap_or(false),
            },
            Request::VoteAck => Msg::VoteAck { term },
            Request::PreVoteRequest => Msg::PreVote {
                term,
                last_log_index: need(m.last_log_index, "last_log_index")?,
                last_log_term: need(m.last_log_term, "last_log_term")?,
            },
            Request::PreVoteReply => Msg::PreVoteReply { term, granted: m.success.unwrap_or(false) },
            other => return Err(WireError::NotRaft(other)),
        };
        Ok((from, msg))
    }
}

fn in_range(request: Request, field: &'static str, value: u64) -> Result<u64, WireError> {
    if value > MAX_WIRE_NUMBER {
        return Err(WireError::OutOfRange { request, field, value });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_through_json() {
        let msgs = vec![
            Msg::Append {
                term: 3,
                prev_log_index: 4,
                prev_log_term: 2,
                entries: vec![LogEntry { term: 3, key: Some("k".into()), value: "v".into() }, LogEntry::noop(3)],
                leader_commit: 4,
                read_seq: 0,
            },
            Msg::Append {
                term: 3,
                prev_log_index: 6,
                prev_log_term: 3,
                entries: vec![],
                leader_commit: 6,
                read_seq: 9,
            },
            Msg::AppendReply {
                term: 3,
                success: true,
                match_index: 6,
                conflict_index: 0,
                conflict_term: None,
                read_seq: 9,
            },
            Msg::AppendReply {
                term: 3,
                success: false,
                match_index: 0,
                conflict_index: 2,
                conflict_term: Some(1),
                read_seq: 0,
            },
            Msg::Vote { term: 4, last_log_index: 6, last_log_term: 3, force: true },
            Msg::Vote { term: 4, last_log_index: 6, last_log_term: 3, force: false },
            Msg::VoteAck { term: 4 },
            Msg::PreVote { term: 5, last_log_index: 6, last_log_term: 3 },
            Msg::PreVoteReply { term: 5, granted: true },
        ];
        for msg in msgs {
            let bytes = msg.to_wire(2).encode();
            let (wire, req) = Message::decode(&bytes).unwrap();
            assert_eq!(Msg::from_wire(wire, req), Ok((2, msg.clone())), "{}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn vote_request_looks_like_the_course_message() {
        let bytes = Msg::Vote { term: 7, last_log_index: 0, last_log_term: 0, force: false }.to_wire(2).encode();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["sender_name"], "node2");
        assert_eq!(v["request"], "VOTE_REQUEST");
        assert_eq!(v["term"], 7);
        assert!(v["key"].is_null() && v["value"].is_null());
    }

    #[test]
    fn malformed_raft_messages_are_errors() {
        let m = Message::new("node1", Request::VoteRequest, Some(1));
        assert!(matches!(Msg::from_wire(m, Request::VoteRequest), Err(WireError::Missing { .. })));
        let m = Message::new("Controller", Request::VoteAck, Some(1));
        assert!(matches!(Msg::from_wire(m, Request::VoteAck), Err(WireError::BadSender(_))));
        let m = Message::new("node1", Request::VoteAck, None);
        assert!(Msg::from_wire(m, Request::VoteAck).is_err());
        let m = Message::new("node1", Request::Timeout, Some(1));
        assert!(matches!(Msg::from_wire(m, Request::Timeout), Err(WireError::NotRaft(_))));
    }

    #[test]
    fn numbers_beyond_two_to_the_53_are_refused() {
        let ok = Msg::Append {
            term: MAX_WIRE_NUMBER,
            prev_log_index: MAX_WIRE_NUMBER,
            prev_log_term: 1,
            entries: vec![LogEntry::noop(MAX_WIRE_NUMBER)],
            leader_commit: 2,
            read_seq: 3,
        };
        let wire = ok.to_wire(2);
        assert_eq!(Msg::from_wire(wire.clone(), Request::AppendRpc), Ok((2, ok)), "2^53 itself is fine");
        let over = MAX_WIRE_NUMBER + 1;
        type Change = Box<dyn Fn(&mut Message)>;
        let cases: Vec<(&str, Change)> = vec![
            ("term", Box::new(move |m| m.term = Some(over))),
            ("prev_log_index", Box::new(move |m| m.prev_log_index = Some(over))),
            ("prev_log_term", Box::new(move |m| m.prev_log_term = Some(u64::MAX))),
            ("leader_commit", Box::new(move |m| m.leader_commit = Some(over))),
            ("read_seq", Box::new(move |m| m.read_seq = Some(over))),
            ("entries[].Term", Box::new(move |m| m.entries = Some(vec![LogEntry::noop(over)]))),
        ];
        for (field, change) in cases {
            let mut m = wire.clone();
            change(&mut m);
            match Msg::from_wire(m, Request::AppendRpc) {
                Err(WireError::OutOfRange { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let reply = Msg::AppendReply {
            term: 1,
            success: false,
            match_index: 0,
            conflict_index: 1,
            conflict_term: Some(1),
            read_seq: 0,
        };
        for field in ["match_index", "conflict_index", "conflict_term"] {
            let mut m = reply.to_wire(3);
            match field {
                "match_index" => m.match_index = Some(u64::MAX),
                "conflict_index" => m.conflict_index = Some(u64::MAX),
                _ => m.conflict_term = Some(u64::MAX),
            }
            assert!(matches!(Msg::from_wire(m, Request::AppendReply), Err(WireError::OutOfRange { .. })), "{field}");
        }
        for request in [Request::VoteRequest, Request::PreVoteRequest] {
            let mut m = Message::new("node1", request, Some(1));
            m.last_log_index = Some(over);
            m.last_log_term = Some(1);
            assert!(matches!(Msg::from_wire(m, request), Err(WireError::OutOfRange { .. })), "{request}");
        }
        let m = Message::new("node1", Request::VoteAck, Some(u64::MAX));
        assert!(matches!(Msg::from_wire(m, Request::VoteAck), Err(WireError::OutOfRange { .. })));
    }
}
