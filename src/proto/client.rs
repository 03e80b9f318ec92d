//! The client side of the control requests: send one request to a node over UDP and wait for
//! its reply. Used by `labctl controller`, by `labctl cluster` to learn who leads, and by tests.
//!
//! Every exchange binds its own ephemeral socket, so a reply is known to answer that request;
//! it is matched on `request` and `key` (SPEC §3), anything else arriving there is ignored.
//! Replies are read leniently: both spellings of `COMMITED_LOGS`, a missing `success`.
//!
//! With a cluster key ([`Signing`]), requests are signed for the node they go to and only
//! replies signed for `Controller` are taken (see [`super::auth`]).

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::auth::{self, Key, Sequence};
use super::{
    node_name, parse_node_name, LogEntry, Message, Request, CONTROLLER, KEY_COMMITED_LOGS, KEY_COMMITTED_LOGS,
    KEY_LEADER,
};

/// Receive buffer: the largest UDP payload, so an oversized reply is still read whole.
const RECV_BUFFER: usize = 65_536;

/// Errors of the socket itself; a node that does not answer is not an error but `None`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot open a UDP socket: {0}")]
    Bind(io::Error),
    #[error("cannot send to {addr}")]
    Send { addr: SocketAddr, source: io::Error },
    #[error("cannot receive from {addr}")]
    Receive { addr: SocketAddr, source: io::Error },
}

/// What a node told the controller about its view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The replying node's `sender_name`, as sent.
    pub sender: Option<String>,
    /// The replying node's current term.
    pub term: Option<u64>,
    /// The leader it knows, if any, as sent (`node2`).
    pub leader: Option<String>,
}

impl LeaderInfo {
    /// The id of the named leader, if it is a node name.
    pub fn leader_id(&self) -> Option<u32> {
        self.leader.as_deref().and_then(parse_node_name)
    }
}

/// A reply that answers the request it was matched against.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A LEADER_INFO reply: the answer to LEADER_INFO, and a non-leader's answer to STORE
    /// and RETRIEVE.
    LeaderInfo(LeaderInfo),
    /// The leader's acknowledgement of a STORE; `false` when it says it did not store it.
    Stored { success: bool },
    /// The leader's committed log, in answer to RETRIEVE.
    Logs(Vec<LogEntry>),
}

/// One matched reply with the JSON exactly as received.
#[derive(Debug, Clone)]
pub struct Answer {
    pub reply: Reply,
    pub raw: Value,
    pub from: SocketAddr,
}

/// The control request `request` from the controller, five fields present.
pub fn control_message(request: Request) -> Message {
    Message::new(CONTROLLER, request, None)
}

/// Whether `msg` answers `sent`, and how. `None` for anything else, which the caller ignores.
pub fn match_reply(sent: &Message, msg: &Message) -> Option<Reply> {
    let sent_request = sent.request_kind()?;
    let request = msg.request_kind()?;
    let key = msg.key.as_deref();
    if request == Request::LeaderInfo
        && matches!(sent_request, Request::LeaderInfo | Request::Store | Request::Retrieve)
        && (key.is_none() || key == Some(KEY_LEADER))
    {
        return Some(Reply::LeaderInfo(LeaderInfo {
            sender: msg.sender_name.clone(),
            term: msg.term,
            leader: msg.leader_name().map(str::to_string),
        }));
    }
    match (sent_request, request) {
        (Request::Store, Request::Store) if key == sent.key.as_deref() => {
            Some(Reply::Stored { success: msg.success.unwrap_or(true) })
        }
        (Request::Retrieve, Request::Retrieve) if matches!(key, Some(KEY_COMMITED_LOGS | KEY_COMMITTED_LOGS)) => {
            if msg.value.is_null() {
                Some(Reply::Logs(Vec::new()))
            } else {
                msg.committed_logs().map(Reply::Logs)
            }
        }
        _ => None,
    }
}

/// How a client signs its requests in secure mode: the cluster key, and sequence numbers
/// that only grow (shared by every request of the process).
#[derive(Debug)]
pub struct Signing {
    key: Key,
    seq: std::sync::Mutex<Sequence>,
}

impl Signing {
    pub fn new(key: Key) -> Signing {
        Signing { key, seq: std::sync::Mutex::new(Sequence::new()) }
    }

    /// `msg` signed for node `to`.
    pub fn seal(&self, msg: &Message, to: u32) -> Vec<u8> {
        let seq = self.seq.lock().map_or_else(|poisoned| poisoned.into_inner().take(), |mut s| s.take());
        auth::seal(&self.key, &msg.encode(), &node_name(to), seq)
    }

    /// Whether a reply is signed for a controller.
    fn admits(&self, datagram: &[u8]) -> Result<(), auth::AuthError> {
        let sealed = auth::open(&self.key, datagram)?;
        if !sealed.to.eq_ignore_ascii_case(CONTROLLER) {
            return Err(auth::AuthError::NotForMe(sealed.to.to_string()));
        }
        Ok(())
    }
}

/// Sends `msg` to node `to` at `addr`, signed when `signing` is given; with `wait`, waits that
/// long for a matching reply. `Ok(None)`: no reply was asked for, or none came in time.
pub fn exchange_with(
    signing: Option<&Signing>,
    to: u32,
    addr: SocketAddr,
    msg: &Message,
    wait: Option<Duration>,
) -> Result<Option<Answer>, ClientError> {
    let bytes = match signing {
        Some(signing) => signing.seal(msg, to),
        None => msg.encode(),
    };
    exchange_bytes(signing, addr, &bytes, msg, wait)
}

/// Sends `msg` unsigned to `addr` (open mode, or a controller on an allowed address); with
/// `wait`, waits that long for a matching reply. `Ok(None)`: no reply was asked for, or none
/// came in time.
pub fn exchange(addr: SocketAddr, msg: &Message, wait: Option<Duration>) -> Result<Option<Answer>, ClientError> {
    exchange_bytes(None, addr, &msg.encode(), msg, wait)
}

fn exchange_bytes(
    signing: Option<&Signing>,
    addr: SocketAddr,
    bytes: &[u8],
    msg: &Message,
    wait: Option<Duration>,
) -> Result<Option<Answer>, ClientError> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).map_err(ClientError::Bind)?;
    socket.send_to(bytes, addr).map_err(|source| ClientError::Send { addr, source })?;
    let Some(wait) = wait else { return Ok(None) };
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        socket.set_read_timeout(Some(left)).map_err(|source| ClientError::Receive { addr, source })?;
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(None),
            // An ICMP "port unreachable": nobody listens there.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(ClientError::Receive { addr, source }),
        };
        if let Some(Err(e)) = signing.map(|s| s.admits(&buf[..len])) {
            log::debug!("ignoring a datagram from {from} with {e}");
            continue;
        }
        let Ok(raw) = serde_json::from_slice::<Value>(&buf[..len]) else {
            log::debug!("ignoring a datagram from {from} that is not JSON");
            continue;
        };
        let Ok(reply) = serde_json::from_value::<Message>(raw.clone()) else {
            log::debug!("ignoring a datagram from {from} that is not a message: {raw}");
            continue;
        };
        match match_reply(msg, &reply) {
            Some(reply) => return Ok(Some(Answer { reply, raw, from })),
            None => log::debug!("ignoring an unrelated datagram from {from}: {raw}"),
        }
    }
}

/// [`exchange_with`] with every node of `targets` (id, address) at once; the results come back
/// in the order of `targets`.
pub fn exchange_all(
    signing: Option<&Signing>,
    targets: &[(u32, SocketAddr)],
    msg: &Message,
    wait: Option<Duration>,
) -> Vec<(u32, Result<Option<Answer>, ClientError>)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|&(id, addr)| (id, scope.spawn(move || exchange_with(signing, id, addr, msg, wait))))
            .collect();
        handles
            .into_iter()
            .map(|(tag, handle)| {
                let result = handle.join().unwrap_or_else(|_| {
                    Err(ClientError::Receive { addr: targets[0].1, source: io::Error::other("receiver thread failed") })
                });
                (tag, result)
            })
            .collect()
    })
}

/// What the LEADER_INFO replies of a cluster say together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderSummary {
    /// Members asked.
    pub nodes: usize,
    /// Members that answered.
    pub answered: usize,
    /// The leader named for the highest term any reply names a leader in (ties: the most
    /// named), with that term and how many replies name it so.
    pub leader: Option<(String, u64, usize)>,
    /// The distinct terms reported, with how many nodes report each, ascending.
    pub terms: Vec<(u64, usize)>,
}

impl LeaderSummary {
    /// Sums up the replies; `None` stands for a node that did not answer.
    pub fn from_replies<'a>(replies: impl IntoIterator<Item = Option<&'a LeaderInfo>>) -> LeaderSummary {
        let mut nodes = 0;
        let mut answered = 0;
        let mut named: BTreeMap<(u64, String), usize> = BTreeMap::new();
        let mut terms: BTreeMap<u64, usize> = BTreeMap::new();
        for reply in replies {
            nodes += 1;
            let Some(info) = reply else { continue };
            answered += 1;
            let term = info.term.unwrap_or(0);
            *terms.entry(term).or_default() += 1;
            if let Some(id) = info.leader_id() {
                *named.entry((term, super::node_name(id))).or_default() += 1;
            }
        }
        let top_term = named.keys().map(|(term, _)| *term).max();
        let leader = named
            .into_iter()
            .filter(|((term, _), _)| Some(*term) == top_term)
            .max_by_key(|(_, count)| *count)
            .map(|((term, name), count)| (name, term, count));
        LeaderSummary { nodes, answered, leader, terms: terms.into_iter().collect() }
    }

    /// The leader and term named by a majority of all members, if there is one.
    pub fn agreed_leader(&self) -> Option<(&str, u64)> {
        match &self.leader {
            Some((name, term, count)) if *count > self.nodes / 2 => Some((name.as_str(), *term)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(v: Value) -> Message {
        serde_json::from_value(v).unwrap()
    }

    fn store(key: &str) -> Message {
        let mut m = control_message(Request::Store);
        m.key = Some(key.into());
        m.value = "v".into();
        m
    }

    #[test]
    fn leader_info_reply_matches_leader_info_store_and_retrieve() {
        let reply = msg(json!({"sender_name":"node3","request":"LEADER_INFO","term":4,"key":"LEADER","value":"node2"}));
        let expected =
            Reply::LeaderInfo(LeaderInfo { sender: Some("node3".into()), term: Some(4), leader: Some("node2".into()) });
        for sent in [control_message(Request::LeaderInfo), store("k"), control_message(Request::Retrieve)] {
            assert_eq!(match_reply(&sent, &reply), Some(expected.clone()));
        }
        assert_eq!(match_reply(&control_message(Request::Timeout), &reply), None);
    }

    #[test]
    fn leader_info_with_unknown_leader_or_other_key() {
        let sent = control_message(Request::LeaderInfo);
        let none = msg(json!({"sender_name":"node1","request":"LEADER_INFO","term":0,"key":"LEADER","value":null}));
        match match_reply(&sent, &none) {
            Some(Reply::LeaderInfo(info)) => assert_eq!(info.leader, None),
            other => panic!("unexpected {other:?}"),
        }
        let other_key = msg(json!({"request":"LEADER_INFO","key":"SOMETHING","value":"node2"}));
        assert_eq!(match_reply(&sent, &other_key), None);
    }

    #[test]
    fn store_ack_matches_on_key_and_reads_success_leniently() {
        let sent = store("k");
        let ack = msg(json!({"sender_name":"node2","request":"STORE","term":2,"key":"k","value":"v","success":true}));
        assert_eq!(match_reply(&sent, &ack), Some(Reply::Stored { success: true }));
        let bare = msg(json!({"request":"STORE","key":"k"}));
        assert_eq!(match_reply(&sent, &bare), Some(Reply::Stored { success: true }));
        let refused = msg(json!({"request":"STORE","key":"k","success":false}));
        assert_eq!(match_reply(&sent, &refused), Some(Reply::Stored { success: false }));
        let other = msg(json!({"request":"STORE","key":"other","success":true}));
        assert_eq!(match_reply(&sent, &other), None);
    }

    #[test]
    fn retrieve_reply_accepts_both_spellings() {
        let sent = control_message(Request::Retrieve);
        for key in ["COMMITED_LOGS", "COMMITTED_LOGS"] {
            let reply = msg(json!({"request":"RETRIEVE","key":key,"value":[{"Term":1,"Key":"k","Value":"v"}]}));
            let Some(Reply::Logs(entries)) = match_reply(&sent, &reply) else { panic!("no match for {key}") };
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].key.as_deref(), Some("k"));
        }
        let empty = msg(json!({"request":"RETRIEVE","key":"COMMITED_LOGS","value":null}));
        assert_eq!(match_reply(&sent, &empty), Some(Reply::Logs(vec![])));
        let garbage = msg(json!({"request":"RETRIEVE","key":"COMMITED_LOGS","value":"nope"}));
        assert_eq!(match_reply(&sent, &garbage), None);
        let unrelated = msg(json!({"request":"APPEND_RPC","term":3}));
        assert_eq!(match_reply(&sent, &unrelated), None);
    }

    fn info(term: u64, leader: Option<&str>) -> LeaderInfo {
        LeaderInfo { sender: None, term: Some(term), leader: leader.map(str::to_string) }
    }

    #[test]
    fn summary_finds_the_majority_leader() {
        let replies = [info(2, Some("node3")), info(2, Some("Node3")), info(2, Some("node3")), info(1, Some("node1"))];
        let mut all: Vec<Option<&LeaderInfo>> = replies.iter().map(Some).collect();
        all.push(None);
        let s = LeaderSummary::from_replies(all);
        assert_eq!(s.nodes, 5);
        assert_eq!(s.answered, 4);
        assert_eq!(s.leader, Some(("node3".into(), 2, 3)));
        assert_eq!(s.agreed_leader(), Some(("node3", 2)));
        assert_eq!(s.terms, vec![(1, 1), (2, 3)]);
    }

    #[test]
    fn summary_without_majority_has_no_agreed_leader() {
        let replies = [info(3, Some("node2")), info(2, Some("node3")), info(2, Some("node3")), info(3, None)];
        let s = LeaderSummary::from_replies(replies.iter().map(Some).chain([None]));
        assert_eq!(s.leader, Some(("node2".into(), 3, 1)));
        assert_eq!(s.agreed_leader(), None);
        let none = LeaderSummary::from_replies([None, None, None]);
        assert_eq!(none.leader, None);
        assert_eq!(none.answered, 0);
    }

    #[test]
    fn exchange_with_a_silent_address_times_out() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let got = exchange(addr, &control_message(Request::LeaderInfo), Some(Duration::from_millis(50))).unwrap();
        assert!(got.is_none());
    }

    #[test]
    fn exchange_ignores_unrelated_datagrams_and_returns_the_reply() {
        let node = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = node.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let (len, from) = node.recv_from(&mut buf).unwrap();
            let (got, request) = Message::decode(&buf[..len]).unwrap();
            assert_eq!(request, Request::LeaderInfo);
            assert_eq!(got.sender_name.as_deref(), Some(CONTROLLER));
            node.send_to(b"garbage", from).unwrap();
            node.send_to(br#"{"request":"APPEND_RPC","term":1}"#, from).unwrap();
            let reply = json!({"sender_name":"node1","request":"LEADER_INFO","term":1,"key":"LEADER","value":"node1"});
            node.send_to(reply.to_string().as_bytes(), from).unwrap();
        });
        let got = exchange(addr, &control_message(Request::LeaderInfo), Some(Duration::from_secs(5))).unwrap().unwrap();
        server.join().unwrap();
        assert_eq!(got.raw["value"], "node1");
        assert!(matches!(got.reply, Reply::LeaderInfo(LeaderInfo { term: Some(1), .. })));
    }
}
