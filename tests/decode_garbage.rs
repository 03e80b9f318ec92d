//! The datagram decode path never panics, whatever arrives.
//!
//! This is the stable-toolchain companion of the `decode_datagram` fuzz target (`fuzz/`): it
//! feeds seeded random byte strings, random JSON objects of the message shape, and mutations
//! of valid messages through `Message::decode` and then `Msg::from_wire`, as a node does with
//! every datagram. A decoded Raft message must also survive encoding and decoding again
//! unchanged. A `FRAGMENT` datagram goes through a reassembler, and a message it completes
//! through the same decode path. `LABCTL_GARBAGE_CASES` raises the number of cases (default 4000 per kind);
//! `LABCTL_GARBAGE_SEED` replays one seed.

use std::sync::atomic::{AtomicUsize, Ordering};

use labctl::node::raft::Msg;
use labctl::proto::fragment::{Fragmenter, Limits, Reassembler};
use labctl::proto::{LogEntry, Message, Request, MAX_DATAGRAM};

/// The largest reassembled message these tests accept.
const MAX_MESSAGE: usize = 1 << 20;

/// splitmix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// How far a datagram got through the decode path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reached {
    Dropped,
    Message,
    RaftMessage,
}

/// Runs one datagram through the node's decode path, checking what must hold on success.
fn feed(bytes: &[u8]) -> Reached {
    let Ok((msg, request)) = Message::decode(bytes) else { return Reached::Dropped };
    assert!(bytes.len() <= MAX_DATAGRAM);
    if request == Request::Fragment {
        let mut reassembler = Reassembler::new(Limits::for_messages_of(MAX_MESSAGE));
        return match reassembler.accept(&msg, std::time::Instant::now()) {
            Ok(Some(done)) => decode_whole(&done.bytes).max(Reached::Message),
            _ => Reached::Message,
        };
    }
    decode_whole(bytes)
}

/// The decode path of a whole message (a datagram, or a reassembled message).
fn decode_whole(bytes: &[u8]) -> Reached {
    let Ok((msg, request)) = Message::decode_with_limit(bytes, MAX_MESSAGE) else { return Reached::Dropped };
    assert_eq!(msg.request_kind(), Some(request));
    let _ = msg.leader_name();
    let _ = msg.committed_logs();
    if let Ok((from, raft)) = Msg::from_wire(msg, request) {
        assert_eq!(raft.request(), request);
        let again = raft.to_wire(from).encode();
        // Missing fields come back explicit (`"Key":null`), so a datagram near the size limit
        // may re-encode above it; only those are exempt.
        if again.len() > MAX_DATAGRAM {
            return Reached::RaftMessage;
        }
        let (wire, req) =
            Message::decode(&again).unwrap_or_else(|e| panic!("re-encoded {request} does not decode: {e}"));
        let (from2, raft2) = Msg::from_wire(wire, req).expect("re-encoded Raft message is valid");
        assert_eq!((from2, &raft2), (from, &raft), "round trip changed the message");
        return Reached::RaftMessage;
    }
    Reached::Message
}

fn cases() -> usize {
    std::env::var("LABCTL_GARBAGE_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(4000)
}

/// Runs `f` over `cases()` seeds (or the one in `LABCTL_GARBAGE_SEED`), naming the seed of a failure.
fn for_seeds(salt: u64, f: impl Fn(&mut Rng) + std::panic::RefUnwindSafe) {
    let seeds: Vec<u64> = match std::env::var("LABCTL_GARBAGE_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => (0..cases() as u64).collect(),
    };
    for seed in seeds {
        let result = std::panic::catch_unwind(|| f(&mut Rng(seed ^ salt)));
        if let Err(e) = result {
            eprintln!("failing seed: LABCTL_GARBAGE_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}

/// Valid datagrams of every kind: what nodes and controllers really send.
fn valid_messages() -> Vec<Vec<u8>> {
    let entries = vec![
        LogEntry { term: 3, key: Some("k".into()), value: "v".into() },
        LogEntry::noop(3),
        LogEntry { term: 4, key: Some("ключ".into()), value: serde_json::json!({"n": [1, 2.5, null]}).into() },
    ];
    let raft = [
        Msg::Append { term: 4, prev_log_index: 2, prev_log_term: 3, entries, leader_commit: 2, read_seq: 0 },
        Msg::Append { term: 4, prev_log_index: 0, prev_log_term: 0, entries: vec![], leader_commit: 0, read_seq: 3 },
        Msg::AppendReply {
            term: 4,
            success: true,
            match_index: 5,
            conflict_index: 0,
            conflict_term: None,
            read_seq: 3,
        },
        Msg::AppendReply {
            term: 4,
            success: false,
            match_index: 0,
            conflict_index: 2,
            conflict_term: Some(1),
            read_seq: 0,
        },
        Msg::Vote { term: 5, last_log_index: 5, last_log_term: 4, force: false },
        Msg::Vote { term: 5, last_log_index: 5, last_log_term: 4, force: true },
        Msg::VoteAck { term: 5 },
        Msg::PreVote { term: 6, last_log_index: 5, last_log_term: 4 },
        Msg::PreVoteReply { term: 6, granted: true },
    ];
    let mut out: Vec<Vec<u8>> = raft.iter().map(|m| m.to_wire(2).encode()).collect();
    for request in Request::ALL.into_iter().filter(|r| r.is_control()) {
        out.push(Message::new("Controller", request, None).encode());
    }
    out.push(br#"{"sender_name": "Controller", "request": "STORE", "term": null, "key": "k", "value": "v"}"#.to_vec());
    out.push(br#"{"sender_name":"node3","request":"LEADER_INFO","term":7,"key":"LEADER","value":"node2"}"#.to_vec());
    out.push(
        br#"{"request":"RETRIEVE","key":"COMMITED_LOGS","value":[{"Term":1,"Key":"k","Value":"v"}],"term":1,"sender_name":"node1"}"#
            .to_vec(),
    );
    // Fragments: a whole Append in one piece, and the first piece of a large one.
    let append = raft[0].to_wire(2).encode();
    let one = Message {
        key: Some("00000000000000ff/0/1".into()),
        value: String::from_utf8(append).unwrap().into(),
        ..Message::new("node2", Request::Fragment, Some(4))
    };
    out.push(one.encode());
    let large = Msg::Append {
        term: 4,
        prev_log_index: 2,
        prev_log_term: 3,
        entries: vec![LogEntry { term: 4, key: Some("big".into()), value: "\"x\"".repeat(MAX_DATAGRAM).into() }],
        leader_commit: 2,
        read_seq: 0,
    };
    let pieces = Fragmenter::new("node2", 7).split(Some(4), &large.to_wire(2).encode());
    assert!(pieces.len() > 2);
    out.push(pieces[0].clone());
    out
}

/// JSON fragments that sit at type and range edges.
const TOKENS: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1.5",
    "1e309",
    "-0",
    "18446744073709551615",
    "18446744073709551616",
    "9007199254740993",
    "3.0",
    "\"3\"",
    "\" NULL \"",
    "\"\"",
    "\"node0\"",
    "\"node4294967296\"",
    "\"NODE2\"",
    "\"Controller\"",
    "\"\\ud800\"",
    "\"\\u0000\"",
    "[]",
    "{}",
    "[[[[[[[[]]]]]]]]",
    "[{\"Term\":1}]",
    "[{\"Term\":-1,\"Key\":1}]",
    "{\"Term\":1,\"Key\":\"k\",\"Value\":null}",
];

const FIELDS: &[&str] = &[
    "sender_name",
    "request",
    "term",
    "key",
    "value",
    "last_log_index",
    "last_log_term",
    "force",
    "prev_log_index",
    "prev_log_term",
    "entries",
    "leader_commit",
    "success",
    "match_index",
    "conflict_index",
    "conflict_term",
    "unknown",
];

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    let at = |rng: &mut Rng, len: usize| rng.below(len + 1);
    match rng.below(8) {
        0 if !bytes.is_empty() => {
            let i = rng.below(bytes.len());
            bytes[i] ^= 1 << rng.below(8);
        }
        1 if !bytes.is_empty() => {
            let i = rng.below(bytes.len());
            bytes.remove(i);
        }
        2 => {
            let i = at(rng, bytes.len());
            bytes.insert(i, rng.next() as u8);
        }
        3 => {
            let i = at(rng, bytes.len());
            let token = rng.pick(TOKENS).as_bytes().to_vec();
            bytes.splice(i..i, token);
        }
        4 if !bytes.is_empty() => {
            // Replace a JSON value after some ':' with an edge token.
            let colons: Vec<usize> = bytes.iter().enumerate().filter(|(_, b)| **b == b':').map(|(i, _)| i).collect();
            if let Some(&c) = colons.get(rng.below(colons.len().max(1))) {
                let end =
                    bytes[c + 1..].iter().position(|b| *b == b',' || *b == b'}').map_or(bytes.len(), |p| c + 1 + p);
                let token = rng.pick(TOKENS).as_bytes().to_vec();
                bytes.splice(c + 1..end, token);
            }
        }
        5 => {
            let i = at(rng, bytes.len());
            bytes.truncate(i);
        }
        6 if bytes.len() > 1 => {
            // Duplicate a slice (repeated keys, doubled brackets).
            let a = rng.below(bytes.len());
            let b = a + rng.below(bytes.len() - a).min(64);
            let chunk = bytes[a..b].to_vec();
            let i = at(rng, bytes.len());
            bytes.splice(i..i, chunk);
        }
        _ => {
            let i = at(rng, bytes.len());
            let field = format!("\"{}\":{},", rng.pick(FIELDS), rng.pick(TOKENS));
            bytes.splice(i..i, field.into_bytes());
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    for_seeds(0x0b17e5, |rng| {
        let len = match rng.below(4) {
            0 => rng.below(8),
            1 => rng.below(256),
            2 => rng.below(4096),
            _ => MAX_DATAGRAM - 2 + rng.below(4),
        };
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        feed(&bytes);
    });
}

#[test]
fn random_objects_of_the_message_shape_never_panic() {
    let requests: Vec<String> =
        Request::ALL.iter().map(|r| format!("\"{r}\"")).chain(["\"HELLO\"".into(), "\"append_rpc\"".into()]).collect();
    for_seeds(0x5aa9e, |rng| {
        let mut fields = Vec::new();
        fields.push(format!("\"request\":{}", rng.pick(&requests)));
        fields
            .push(format!("\"sender_name\":{}", rng.pick(&["\"node1\"", "\"Node5\"", "\"Controller\"", "null", "7"])));
        for _ in 0..rng.below(10) {
            let value = if rng.below(2) == 0 { rng.pick(TOKENS).to_string() } else { rng.next().to_string() };
            fields.push(format!("\"{}\":{}", rng.pick(FIELDS), value));
        }
        // Field order matters to neither side; shuffle so later duplicates vary.
        for i in (1..fields.len()).rev() {
            let j = rng.below(i + 1);
            fields.swap(i, j);
        }
        feed(format!("{{{}}}", fields.join(",")).as_bytes());
    });
}

#[test]
fn mutated_valid_messages_never_panic() {
    let valid = valid_messages();
    for bytes in &valid {
        Message::decode(bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)));
    }
    let reached: [AtomicUsize; 3] = Default::default();
    for_seeds(0x3e7a7e, |rng| {
        let mut bytes = rng.pick(&valid).clone();
        for _ in 0..1 + rng.below(3) {
            mutate(rng, &mut bytes);
        }
        reached[feed(&bytes) as usize].fetch_add(1, Ordering::Relaxed);
    });
    // The mutations must exercise every stage, not only the JSON parser's error path.
    let [dropped, message, raft] = reached.map(|n| n.into_inner());
    eprintln!("mutated datagrams: {dropped} dropped, {message} decoded, {raft} decoded as Raft messages");
    if cases() >= 1000 {
        assert!(dropped > 0 && message > 0 && raft > 0, "dropped {dropped}, decoded {message}, Raft {raft}");
    }
}

#[test]
fn deep_and_large_inputs_are_refused_without_panic() {
    let deep = format!("{{\"request\":\"STORE\",\"value\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(Message::decode(deep.as_bytes()).is_err());
    let nested = format!("{{\"request\":\"STORE\",\"value\":{}1{}}}", "[".repeat(5000), "]".repeat(5000));
    assert!(Message::decode(nested.as_bytes()).is_err(), "recursion limit");
    let big_value = format!("{{\"request\":\"STORE\",\"key\":\"k\",\"value\":\"{}\"}}", "x".repeat(MAX_DATAGRAM));
    assert!(Message::decode(big_value.as_bytes()).is_err());
    let many_entries = format!(
        "{{\"sender_name\":\"node1\",\"request\":\"APPEND_RPC\",\"term\":1,\"prev_log_index\":0,\"prev_log_term\":0,\"entries\":[{}]}}",
        vec!["{\"Term\":1}"; 4000].join(",")
    );
    assert_eq!(feed(many_entries.as_bytes()), Reached::RaftMessage);
}
