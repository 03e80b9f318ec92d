//! Node messages larger than one datagram: cut into `FRAGMENT` datagrams by the sender, put
//! together again by the receiver.
//!
//! An AppendEntries that carries one large entry (an uploaded file of thousands of products)
//! is encoded as usual and then cut into pieces. Each piece is a datagram of the protocol's
//! shape, so a tool that does not know `FRAGMENT` ignores it:
//!
//! ```json
//! {"sender_name":"node1","request":"FRAGMENT","term":7,"key":"5e1f0c2a9b3d4e01/3/120","value":"…"}
//! ```
//!
//! - `key` is `<message id>/<index>/<count>`: the id (hexadecimal) is unique per sender, the
//!   index counts from 0.
//! - `value` is the piece of the encoded message as a JSON string, cut at UTF-8 character
//!   boundaries, so the pieces joined in index order are the original bytes.
//!
//! Only Raft messages between nodes are fragmented; control requests and their replies are
//! always one datagram. A message whose pieces do not all arrive is lost whole, as a dropped
//! datagram is, and Raft resends it. [`Reassembler`] holds pieces with bounded memory: a
//! largest message, a number of messages and a byte budget in progress per sender, a byte
//! budget for all of them, a number of senders, and a time after which a message missing
//! pieces is given up. A node hands it only fragments that come from the address of the
//! member they name, so one sender cannot pose as many.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{parse_node_name, Message, Request, MAX_DATAGRAM};

/// Room left in each fragment datagram for everything but the piece itself.
const HEADER_ROOM: usize = 512;
/// Pieces are at least this large (all but the last), which bounds the count a receiver
/// accepts for a message of its largest size.
const MIN_PIECE: usize = 1024;
/// Completed message ids remembered per sender, so that late copies of their pieces are
/// recognised as duplicates instead of starting a new message.
const DONE_REMEMBERED: usize = 64;

/// Cuts encoded messages of one sender into fragment datagrams.
#[derive(Debug)]
pub struct Fragmenter {
    sender: String,
    next_id: u64,
}

/// A fragment datagram as it is written: the five fields of every message.
#[derive(Serialize)]
struct Wire<'a> {
    sender_name: &'a str,
    request: &'static str,
    term: Option<u64>,
    key: String,
    value: &'a str,
}

impl Fragmenter {
    /// `first_id` should differ between runs of a node (e.g. drawn at random), so that a
    /// receiver never mixes pieces of a message sent before a restart with a new one's.
    pub fn new(sender: impl Into<String>, first_id: u64) -> Fragmenter {
        Fragmenter { sender: sender.into(), next_id: first_id }
    }

    /// Cuts an encoded message into datagrams of at most [`MAX_DATAGRAM`] bytes.
    pub fn split(&mut self, term: Option<u64>, message: &[u8]) -> Vec<Vec<u8>> {
        let text = String::from_utf8_lossy(message);
        let budget = MAX_DATAGRAM - HEADER_ROOM - self.sender.len();
        let pieces = pieces(&text, budget);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let count = pieces.len();
        pieces
            .into_iter()
            .enumerate()
            .map(|(index, value)| {
                let wire = Wire {
                    sender_name: &self.sender,
                    request: Request::Fragment.as_str(),
                    term,
                    key: format!("{id:016x}/{index}/{count}"),
                    value,
                };
                // Serializing strings and numbers cannot fail.
                serde_json::to_vec(&wire).unwrap_or_default()
            })
            .collect()
    }
}

/// Bytes `c` takes inside a JSON string.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// `text` cut at character boundaries into pieces that each take at most `budget` bytes as a
/// JSON string.
fn pieces(text: &str, budget: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (at, c) in text.char_indices() {
        let len = escaped_len(c);
        if used + len > budget && at > start {
            out.push(&text[start..at]);
            (start, used) = (at, 0);
        }
        used += len;
    }
    if start < text.len() || out.is_empty() {
        out.push(&text[start..]);
    }
    out
}

/// What a receiver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest message put together.
    pub max_message_bytes: usize,
    /// Messages in progress from one sender; one more gives up the oldest.
    pub max_partial_per_sender: usize,
    /// Bytes held in messages in progress from one sender; past it that sender's oldest are
    /// given up, so one sender cannot take the room the others need.
    pub max_sender_bytes: usize,
    /// Senders remembered; past it, those with nothing in progress are forgotten.
    pub max_senders: usize,
    /// Bytes held in messages in progress, all senders together; past it the oldest are
    /// given up.
    pub max_buffered_bytes: usize,
    /// A message in progress that got no piece for this long is given up.
    pub stale_after: Duration,
}

impl Limits {
    /// Limits for messages of up to `max_message_bytes`: four in progress per sender and
    /// room for one of the largest, room for two of the largest in all, and two seconds of
    /// silence before giving one up.
    pub fn for_messages_of(max_message_bytes: usize) -> Limits {
        Limits {
            max_message_bytes,
            max_partial_per_sender: 4,
            max_sender_bytes: max_message_bytes,
            max_senders: 64,
            max_buffered_bytes: max_message_bytes.saturating_mul(2),
            stale_after: Duration::from_secs(2),
        }
    }

    fn max_count(&self) -> usize {
        self.max_message_bytes / MIN_PIECE + 1
    }
}

/// Why a fragment was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    #[error("fragment sender {0:?} is not a node name")]
    BadSender(Option<String>),
    #[error("fragment key {0:?} is not <id>/<index>/<count> within the limits")]
    BadKey(Option<String>),
    #[error("fragment value is not a string")]
    BadValue,
    #[error("duplicate piece {index} of message {id:x}")]
    Duplicate { id: u64, index: usize },
    #[error("piece of message {id:x}, which is already complete or dropped")]
    Finished { id: u64 },
    #[error("message {id:x} was announced with {had} pieces, now with {got}; dropped")]
    Inconsistent { id: u64, had: usize, got: usize },
    #[error("message {id:x} is larger than {max} bytes; dropped")]
    TooLarge { id: u64, max: usize },
}

/// A complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassembled {
    /// The node that sent it.
    pub sender: u32,
    /// The encoded message: decode it as a datagram of up to [`Limits::max_message_bytes`].
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
struct Partial {
    count: usize,
    pieces: BTreeMap<usize, String>,
    bytes: usize,
    started: Instant,
    last_piece: Instant,
}

#[derive(Debug, Default)]
struct SenderState {
    partial: HashMap<u64, Partial>,
    /// Bytes held in `partial`.
    bytes: usize,
    done: VecDeque<u64>,
}

/// Puts fragments together, with bounded memory.
#[derive(Debug)]
pub struct Reassembler {
    limits: Limits,
    senders: HashMap<u32, SenderState>,
    buffered: usize,
    given_up: u64,
}

impl Reassembler {
    pub fn new(limits: Limits) -> Reassembler {
        Reassembler { limits, senders: HashMap::new(), buffered: 0, given_up: 0 }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes one decoded `FRAGMENT` datagram; returns the message it completes, if any.
    pub fn accept(&mut self, msg: &Message, now: Instant) -> Result<Option<Reassembled>, FragmentError> {
        let sender = msg
            .sender_name
            .as_deref()
            .and_then(parse_node_name)
            .ok_or_else(|| FragmentError::BadSender(msg.sender_name.clone()))?;
        let (id, index, count) = parse_key(msg.key.as_deref(), self.limits.max_count())
            .ok_or_else(|| FragmentError::BadKey(msg.key.clone()))?;
        let piece = msg.value.as_str().ok_or(FragmentError::BadValue)?;
        let limits = self.limits;
        if !self.senders.contains_key(&sender) && self.senders.len() >= limits.max_senders {
            self.senders.retain(|_, st| !st.partial.is_empty());
        }
        let state = self.senders.entry(sender).or_default();
        if state.done.contains(&id) {
            return Err(FragmentError::Finished { id });
        }
        if !state.partial.contains_key(&id) && state.partial.len() >= limits.max_partial_per_sender {
            if let Some(oldest) = state.partial.iter().min_by_key(|(_, p)| p.started).map(|(&id, _)| id) {
                self.give_up(sender, oldest);
            }
        }
        let state = self.senders.entry(sender).or_default();
        let partial = state.partial.entry(id).or_insert_with(|| Partial {
            count,
            pieces: BTreeMap::new(),
            bytes: 0,
            started: now,
            last_piece: now,
        });
        if partial.count != count {
            let had = partial.count;
            self.finish(sender, id);
            return Err(FragmentError::Inconsistent { id, had, got: count });
        }
        if partial.pieces.contains_key(&index) {
            return Err(FragmentError::Duplicate { id, index });
        }
        if partial.bytes + piece.len() > limits.max_message_bytes {
            self.finish(sender, id);
            return Err(FragmentError::TooLarge { id, max: limits.max_message_bytes });
        }
        // Make room among this sender's other messages in progress, then among everyone's,
        // oldest first.
        while self.senders.get(&sender).map_or(0, |st| st.bytes) + piece.len() > limits.max_sender_bytes {
            let oldest = self.senders.get(&sender).and_then(|st| {
                st.partial.iter().filter(|(&i, _)| i != id).min_by_key(|(_, p)| p.started).map(|(&i, _)| i)
            });
            match oldest {
                Some(i) => self.give_up(sender, i),
                None => {
                    self.finish(sender, id);
                    return Err(FragmentError::TooLarge { id, max: limits.max_sender_bytes });
                }
            }
        }
        while self.buffered + piece.len() > limits.max_buffered_bytes {
            let oldest = self
                .senders
                .iter()
                .flat_map(|(&s, st)| st.partial.iter().map(move |(&i, p)| (s, i, p.started)))
                .filter(|&(s, i, _)| (s, i) != (sender, id))
                .min_by_key(|&(_, _, started)| started);
            match oldest {
                Some((s, i, _)) => self.give_up(s, i),
                None => {
                    self.finish(sender, id);
                    return Err(FragmentError::TooLarge { id, max: limits.max_buffered_bytes });
                }
            }
        }
        let state = self.senders.entry(sender).or_default();
        let Some(partial) = state.partial.get_mut(&id) else { return Ok(None) };
        partial.pieces.insert(index, piece.to_string());
        partial.bytes += piece.len();
        partial.last_piece = now;
        state.bytes += piece.len();
        self.buffered += piece.len();
        if partial.pieces.len() < partial.count {
            return Ok(None);
        }
        let Some(done) = state.partial.remove(&id) else { return Ok(None) };
        state.bytes -= done.bytes;
        self.buffered -= done.bytes;
        self.finish(sender, id);
        let mut bytes = Vec::with_capacity(done.bytes);
        for piece in done.pieces.values() {
            bytes.extend_from_slice(piece.as_bytes());
        }
        Ok(Some(Reassembled { sender, bytes }))
    }

    /// Gives up messages that got no piece for [`Limits::stale_after`]; returns how many.
    pub fn evict_stale(&mut self, now: Instant) -> usize {
        let stale_after = self.limits.stale_after;
        let stale: Vec<(u32, u64)> = self
            .senders
            .iter()
            .flat_map(|(&s, st)| st.partial.iter().map(move |(&i, p)| (s, i, p.last_piece)))
            .filter(|&(_, _, last)| now.saturating_duration_since(last) >= stale_after)
            .map(|(s, i, _)| (s, i))
            .collect();
        for &(s, i) in &stale {
            self.give_up(s, i);
        }
        stale.len()
    }

    /// Messages given up (stale, or evicted by the limits) since the last call.
    pub fn take_given_up(&mut self) -> u64 {
        std::mem::take(&mut self.given_up)
    }

    /// Messages in progress.
    pub fn in_progress(&self) -> usize {
        self.senders.values().map(|s| s.partial.len()).sum()
    }

    /// Bytes held in messages in progress.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Senders remembered (with messages in progress or recently completed).
    pub fn senders(&self) -> usize {
        self.senders.len()
    }

    fn give_up(&mut self, sender: u32, id: u64) {
        if self.drop_partial(sender, id) {
            self.given_up += 1;
        }
    }

    /// Drops message `id` and refuses its later pieces.
    fn finish(&mut self, sender: u32, id: u64) {
        self.drop_partial(sender, id);
        let state = self.senders.entry(sender).or_default();
        state.done.push_back(id);
        if state.done.len() > DONE_REMEMBERED {
            state.done.pop_front();
        }
    }

    fn drop_partial(&mut self, sender: u32, id: u64) -> bool {
        let Some(state) = self.senders.get_mut(&sender) else { return false };
        let Some(partial) = state.partial.remove(&id) else { return false };
        state.bytes -= partial.bytes;
        self.buffered -= partial.bytes;
        true
    }
}

fn parse_key(key: Option<&str>, max_count: usize) -> Option<(u64, usize, usize)> {
    let mut parts = key?.split('/');
    let id = u64::from_str_radix(parts.next()?, 16).ok()?;
    let index: usize = parts.next()?.parse().ok()?;
    let count: usize = parts.next()?.parse().ok()?;
    if parts.next().is_some() || count == 0 || count > max_count || index >= count {
        return None;
    }
    Some((id, index, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{LogEntry, Request};

    fn big_message(bytes: usize) -> Vec<u8> {
        // Quotes, backslashes, control characters and multi-byte characters all cross pieces.
        let value = "ab\"c\\d\ne\u{1}é€𝄞".repeat(bytes / 20 + 1);
        let mut m = Message::new("node1", Request::AppendRpc, Some(3));
        m.prev_log_index = Some(4);
        m.prev_log_term = Some(2);
        m.entries = Some(vec![LogEntry { term: 3, key: Some("k".into()), value: value.into() }]);
        m.encode()
    }

    fn limits() -> Limits {
        Limits::for_messages_of(4 * 1024 * 1024)
    }

    fn decode(datagram: &[u8]) -> Message {
        let (msg, request) = Message::decode(datagram).expect("a fragment is a valid datagram");
        assert_eq!(request, Request::Fragment);
        msg
    }

    fn split(id: u64, message: &[u8]) -> Vec<Message> {
        Fragmenter::new("node1", id).split(Some(3), message).iter().map(|d| decode(d)).collect()
    }

    fn feed(r: &mut Reassembler, pieces: &[Message], now: Instant) -> Vec<Reassembled> {
        pieces.iter().filter_map(|p| r.accept(p, now).ok().flatten()).collect()
    }

    #[test]
    fn a_large_message_travels_in_datagrams_and_comes_back_whole() {
        let message = big_message(500_000);
        let datagrams = Fragmenter::new("node1", 7).split(Some(3), &message);
        assert!(datagrams.len() >= 9, "{} pieces", datagrams.len());
        for d in &datagrams {
            assert!(d.len() <= MAX_DATAGRAM, "{} bytes", d.len());
            let v: serde_json::Value = serde_json::from_slice(d).unwrap();
            for field in ["sender_name", "request", "term", "key", "value"] {
                assert!(v.get(field).is_some(), "{field} missing");
            }
            assert_eq!(v["request"], "FRAGMENT");
        }
        let mut r = Reassembler::new(limits());
        let done = feed(&mut r, &datagrams.iter().map(|d| decode(d)).collect::<Vec<_>>(), Instant::now());
        assert_eq!(done, vec![Reassembled { sender: 1, bytes: message }]);
        assert_eq!((r.in_progress(), r.buffered_bytes()), (0, 0));
    }

    #[test]
    fn pieces_in_any_order_and_twice_give_the_message_once() {
        let message = big_message(300_000);
        let mut pieces = split(1, &message);
        pieces.reverse();
        pieces.swap(1, 3);
        let mut twice: Vec<Message> = pieces.iter().flat_map(|p| [p.clone(), p.clone()]).collect();
        twice.extend(pieces.iter().cloned());
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        let mut errors = Vec::new();
        let mut done = Vec::new();
        for p in &twice {
            match r.accept(p, now) {
                Ok(Some(m)) => done.push(m),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].bytes, message);
        assert!(errors.iter().any(|e| matches!(e, FragmentError::Duplicate { .. })));
        assert!(errors.iter().any(|e| matches!(e, FragmentError::Finished { .. })));
        assert_eq!((r.in_progress(), r.buffered_bytes()), (0, 0), "late copies leave nothing behind");
    }

    #[test]
    fn interleaved_messages_are_kept_apart() {
        let (a, b) = (big_message(200_000), big_message(260_000));
        let mut fragmenter = Fragmenter::new("node2", u64::MAX);
        let pa: Vec<Message> = fragmenter.split(Some(1), &a).iter().map(|d| decode(d)).collect();
        let pb: Vec<Message> = fragmenter.split(Some(1), &b).iter().map(|d| decode(d)).collect();
        assert_ne!(pa[0].key.as_deref().unwrap().split('/').next(), pb[0].key.as_deref().unwrap().split('/').next());
        let mut mixed = Vec::new();
        for i in 0..pa.len().max(pb.len()) {
            mixed.extend(pb.get(i).cloned());
            mixed.extend(pa.get(i).cloned());
        }
        let mut r = Reassembler::new(limits());
        let done = feed(&mut r, &mixed, Instant::now());
        let bytes: Vec<&Vec<u8>> = done.iter().map(|m| &m.bytes).collect();
        assert_eq!(bytes.len(), 2);
        assert!(bytes.contains(&&a) && bytes.contains(&&b));
        assert!(done.iter().all(|m| m.sender == 2));
    }

    #[test]
    fn a_lost_piece_loses_the_message_and_its_memory_is_freed() {
        let message = big_message(300_000);
        let mut pieces = split(5, &message);
        pieces.remove(2);
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        assert!(feed(&mut r, &pieces, t0).is_empty());
        assert_eq!(r.in_progress(), 1);
        assert!(r.buffered_bytes() > 200_000);
        assert_eq!(r.evict_stale(t0 + Duration::from_millis(1900)), 0, "not stale yet");
        assert_eq!(r.evict_stale(t0 + Duration::from_secs(2)), 1);
        assert_eq!((r.in_progress(), r.buffered_bytes(), r.take_given_up()), (0, 0, 1));
        // Resent under a new id, it arrives.
        assert_eq!(feed(&mut r, &split(6, &message), t0).len(), 1);
    }

    /// A hand-made piece of `len` bytes.
    fn piece(sender: &str, id: u64, index: usize, count: usize, len: usize) -> Message {
        let mut m = Message::new(sender, Request::Fragment, Some(1));
        m.key = Some(format!("{id:x}/{index}/{count}"));
        m.value = "x".repeat(len).into();
        m
    }

    #[test]
    fn limits_bound_memory() {
        let limits = Limits {
            max_message_bytes: 4096,
            max_partial_per_sender: 2,
            max_sender_bytes: 4096,
            max_senders: 64,
            max_buffered_bytes: 5000,
            stale_after: Duration::from_secs(2),
        };
        let now = Instant::now();
        let later = |ms| now + Duration::from_millis(ms);
        // Larger than the largest message: dropped as soon as it is known to be, later
        // pieces refused.
        let mut r = Reassembler::new(limits);
        r.accept(&piece("node1", 1, 0, 3, 2000), now).unwrap();
        r.accept(&piece("node1", 1, 1, 3, 2000), now).unwrap();
        let e = r.accept(&piece("node1", 1, 2, 3, 2000), now).unwrap_err();
        assert!(matches!(e, FragmentError::TooLarge { .. }), "{e}");
        assert_eq!((r.in_progress(), r.buffered_bytes()), (0, 0));
        assert!(matches!(r.accept(&piece("node1", 1, 0, 3, 10), now), Err(FragmentError::Finished { .. })));
        // More pieces than a message of the largest size needs: refused.
        assert!(matches!(r.accept(&piece("node1", 2, 0, 6, 10), now), Err(FragmentError::BadKey(_))));
        // A third message in progress from one sender gives up the oldest.
        for (i, id) in [10, 11, 12].into_iter().enumerate() {
            r.accept(&piece("node1", id, 0, 2, 1000), later(i as u64)).unwrap();
        }
        assert_eq!((r.in_progress(), r.buffered_bytes(), r.take_given_up()), (2, 2000, 1));
        assert!(r.accept(&piece("node1", 11, 1, 2, 1000), now).unwrap().is_some());
        assert!(r.accept(&piece("node1", 10, 1, 2, 1000), now).unwrap().is_none(), "10 was given up");
        // The byte budget holds across senders: the oldest messages make room.
        let mut r = Reassembler::new(limits);
        r.accept(&piece("node1", 20, 0, 3, 1500), now).unwrap();
        r.accept(&piece("node1", 20, 1, 3, 1500), now).unwrap();
        r.accept(&piece("node3", 21, 0, 2, 1500), later(1)).unwrap();
        assert_eq!((r.buffered_bytes(), r.take_given_up()), (4500, 0));
        r.accept(&piece("node4", 22, 0, 2, 1000), later(2)).unwrap();
        assert_eq!((r.buffered_bytes(), r.take_given_up()), (2500, 1), "node1's older message made room");
        assert!(r.accept(&piece("node3", 21, 1, 2, 1500), later(3)).unwrap().is_some());
        assert_eq!((r.in_progress(), r.buffered_bytes()), (1, 1000));
        // One message alone over the budget is dropped.
        let mut r = Reassembler::new(Limits { max_buffered_bytes: 3000, ..limits });
        r.accept(&piece("node1", 30, 0, 2, 2000), now).unwrap();
        assert!(matches!(r.accept(&piece("node1", 30, 1, 2, 2000), now), Err(FragmentError::TooLarge { .. })));
        assert_eq!((r.in_progress(), r.buffered_bytes()), (0, 0));
        // One sender's messages together stay within its own budget: its oldest make room,
        // and another sender's message in progress is kept.
        let mut r = Reassembler::new(Limits { max_sender_bytes: 2500, max_buffered_bytes: 10_000, ..limits });
        r.accept(&piece("node2", 40, 0, 2, 1000), now).unwrap();
        r.accept(&piece("node1", 41, 0, 2, 1500), later(1)).unwrap();
        r.accept(&piece("node1", 42, 0, 2, 1500), later(2)).unwrap();
        assert_eq!((r.in_progress(), r.buffered_bytes(), r.take_given_up()), (2, 2500, 1));
        assert!(r.accept(&piece("node2", 40, 1, 2, 1000), later(3)).unwrap().is_some());
        assert!(r.accept(&piece("node1", 42, 1, 2, 1000), later(3)).unwrap().is_some());
        assert_eq!((r.in_progress(), r.buffered_bytes()), (0, 0));
    }

    #[test]
    fn senders_with_nothing_in_progress_are_forgotten_past_the_limit() {
        let limits = Limits { max_senders: 3, ..limits() };
        let mut r = Reassembler::new(limits);
        let now = Instant::now();
        r.accept(&piece("node1", 1, 0, 2, 10), now).unwrap();
        for sender in 2..=40 {
            let done = r.accept(&piece(&format!("node{sender}"), 1, 0, 1, 10), now).unwrap();
            assert!(done.is_some());
            assert!(r.senders() <= 3, "{} senders remembered", r.senders());
        }
        assert!(r.accept(&piece("node1", 1, 1, 2, 10), now).unwrap().is_some(), "node1's message was kept");
    }

    #[test]
    fn garbage_fragments_are_refused() {
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        let base = split(9, &big_message(100_000)).remove(0);
        let with = |f: &dyn Fn(&mut Message)| {
            let mut m = base.clone();
            f(&mut m);
            m
        };
        let cases = [
            with(&|m| m.sender_name = Some("Controller".into())),
            with(&|m| m.sender_name = None),
            with(&|m| m.key = None),
            with(&|m| m.key = Some("zz/0/2".into())),
            with(&|m| m.key = Some("1/2/2".into())),
            with(&|m| m.key = Some("1/0/0".into())),
            with(&|m| m.key = Some("1/0/2/4".into())),
            with(&|m| m.key = Some("1/-1/2".into())),
            with(&|m| m.key = Some(format!("1/0/{}", usize::MAX))),
            with(&|m| m.value = serde_json::json!(["not", "a", "string"])),
            with(&|m| m.value = serde_json::Value::Null),
        ];
        for m in &cases {
            assert!(r.accept(m, now).is_err(), "{m:?}");
        }
        assert_eq!(r.in_progress(), 0);
        // The same id announced with two counts: the message is dropped.
        r.accept(&with(&|m| m.key = Some("2/0/3".into())), now).unwrap();
        let e = r.accept(&with(&|m| m.key = Some("2/1/4".into())), now).unwrap_err();
        assert!(matches!(e, FragmentError::Inconsistent { .. }), "{e}");
        assert_eq!((r.in_progress(), r.buffered_bytes()), (0, 0));
        // A single-piece message is complete at once, whatever it holds: the caller decodes it.
        let one = with(&|m| {
            m.key = Some("3/0/1".into());
            m.value = "not json".into();
        });
        assert_eq!(r.accept(&one, now).unwrap().unwrap().bytes, b"not json");
    }

    #[test]
    fn pieces_fit_their_budget_as_json_strings() {
        for text in ["", "x", "\"\"\"\"", "\u{1}\u{1}\u{1}", "é€𝄞é€𝄞", &"a\"b".repeat(1000)] {
            for budget in [6, 7, 13, 100] {
                let ps = pieces(text, budget);
                assert_eq!(ps.concat(), text);
                for p in &ps {
                    assert!(serde_json::to_string(p).unwrap().len() - 2 <= budget, "{p:?} over {budget}");
                }
            }
        }
    }
}
