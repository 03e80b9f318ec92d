//! Shipping a snapshot of the leader's state machine to a follower over the cluster's UDP
//! transport, for a follower that needs entries the leader's log no longer holds.
//!
//! The leader's state machine writes a snapshot of everything it has applied (a file, see
//! `store::snapshot`), known by its [`SnapshotInfo`]: the index and term it holds, its size
//! and its SHA-256. The leader sends it in `SNAPSHOT` datagrams of [`CHUNK`] bytes each
//! (base64 in the JSON `value`, with the info, so every piece says what it belongs to), at
//! most [`WINDOW`] bytes beyond what the follower has acknowledged: the transfer keeps the
//! socket from filling, and heartbeats and other followers' entries go out between its
//! pieces. The follower writes each piece where it belongs, also one that overtook another on
//! the way (within two windows of what it holds), and answers each with `SNAPSHOT_ACK`: how
//! many bytes from the start it holds without a gap. When that answer has not moved for
//! [`RESEND_AFTER`], the leader sends again from there (a piece was lost), waiting twice as
//! long each time it brings no progress (up to [`RESEND_AFTER_MAX`]); without any answer
//! for [`GIVE_UP_AFTER`], it gives up, and the core asks for a snapshot again at a heartbeat.
//!
//! **Resumed after loss.** A follower keeps the bytes it received of a snapshot (its state
//! machine keeps the partial file); a new transfer of the same snapshot, after the leader gave
//! up or the follower restarted, carries on from there: the first answer says how much is held.
//!
//! **Verified before it replaces anything.** Once every byte is there, the follower's state
//! machine checks the size and SHA-256 against the info, and the file's own checks, before it
//! loads the snapshot in one transaction; a snapshot that fails is thrown away and never
//! loaded. Only then is the core told ([`crate::node::raft::Raft::snapshot_installed`]), which
//! tells the leader, which sends the entries after the snapshot.
//!
//! The first piece also carries the newest entries up to the snapshot's index that a
//! controller's RETRIEVE shows (see [`crate::node::storage::Base::retained`]), so that a
//! follower that installed a snapshot answers RETRIEVE as the leader does.

use base64ct::{Base64, Encoding};
use serde::{Deserialize, Serialize};

use super::raft::{LogEntry, Micros};
use crate::proto::{self, Message, Request};

/// Bytes of a snapshot per `SNAPSHOT` datagram (its base64 and the rest fit one datagram).
pub const CHUNK: usize = 32 * 1024;
/// Bytes sent beyond what the follower has acknowledged, at most.
pub const WINDOW: u64 = 8 * CHUNK as u64;
/// Without an answer for this long, the leader sends again from what the follower holds.
pub const RESEND_AFTER: Micros = 100_000;
/// The wait before resending doubles with each resend that brought no progress, up to this: a
/// follower slow to take the pieces (busy, or reading a backlog of datagrams after a pause) is
/// not sent the same window again every [`RESEND_AFTER`], which would keep both nodes busy
/// encoding and decoding it, the leader's heartbeats late, and the follower further behind.
pub const RESEND_AFTER_MAX: Micros = 1_600_000;
/// Without an answer for this long, the leader gives the transfer up.
pub const GIVE_UP_AFTER: Micros = 10_000_000;
/// Once the follower holds every byte, the first piece goes again this often until it has
/// installed the snapshot: a follower that restarted meanwhile then loads what it holds.
pub const LOADING_CHECK: Micros = 1_000_000;

/// A snapshot of a state machine, as it is known across the cluster.
pub use super::store::SnapshotInfo;

/// The `value` of a `SNAPSHOT` datagram.
#[derive(Debug, Serialize, Deserialize)]
struct PieceValue {
    #[serde(flatten)]
    info: SnapshotInfo,
    offset: u64,
    /// The bytes from `offset`, in base64.
    data: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retained: Vec<LogEntry>,
}

/// The `value` of a `SNAPSHOT_ACK` datagram.
#[derive(Debug, Serialize, Deserialize)]
struct AckValue {
    #[serde(flatten)]
    info: SnapshotInfo,
    received: u64,
}

/// A piece of a snapshot, as a follower takes it.
#[derive(Debug, PartialEq)]
pub struct Piece {
    pub term: u64,
    pub info: SnapshotInfo,
    pub offset: u64,
    pub data: Vec<u8>,
    pub retained: Vec<LogEntry>,
}

/// A follower's answer, as the leader takes it.
#[derive(Debug, PartialEq)]
pub struct Ack {
    pub term: u64,
    pub info: SnapshotInfo,
    pub received: u64,
}

/// The `SNAPSHOT` datagram's message for `data` at `offset` of `info`.
pub fn piece(sender: &str, term: u64, info: &SnapshotInfo, offset: u64, data: &[u8], retained: &[LogEntry]) -> Message {
    let value = PieceValue {
        info: info.clone(),
        offset,
        data: Base64::encode_string(data),
        retained: if offset == 0 { retained.to_vec() } else { Vec::new() },
    };
    let mut msg = Message::new(sender.to_string(), Request::Snapshot, Some(term));
    msg.value = serde_json::to_value(value).unwrap_or_default();
    msg
}

/// The `SNAPSHOT_ACK` datagram's message.
pub fn ack(sender: &str, term: u64, info: &SnapshotInfo, received: u64) -> Message {
    let mut msg = Message::new(sender.to_string(), Request::SnapshotAck, Some(term));
    msg.value = serde_json::to_value(AckValue { info: info.clone(), received }).unwrap_or_default();
    msg
}

/// Reads a `SNAPSHOT` message; why not, when it is not one that makes sense.
pub fn read_piece(msg: Message) -> Result<Piece, String> {
    let term = msg.term.ok_or("SNAPSHOT without a term")?;
    let value: PieceValue = serde_json::from_value(msg.value).map_err(|e| format!("SNAPSHOT: {e}"))?;
    let data = Base64::decode_vec(&value.data).map_err(|e| format!("SNAPSHOT data: {e}"))?;
    let end = value.offset.checked_add(data.len() as u64).ok_or("SNAPSHOT offset out of range")?;
    check_info(&value.info)?;
    if end > value.info.size || data.len() > CHUNK {
        return Err(format!("SNAPSHOT piece {}..{end} beyond its {} bytes", value.offset, value.info.size));
    }
    Ok(Piece { term, info: value.info, offset: value.offset, data, retained: value.retained })
}

/// Reads a `SNAPSHOT_ACK` message.
pub fn read_ack(msg: Message) -> Result<Ack, String> {
    let term = msg.term.ok_or("SNAPSHOT_ACK without a term")?;
    let value: AckValue = serde_json::from_value(msg.value).map_err(|e| format!("SNAPSHOT_ACK: {e}"))?;
    check_info(&value.info)?;
    if value.received > value.info.size {
        return Err(format!("SNAPSHOT_ACK of {} bytes of {}", value.received, value.info.size));
    }
    Ok(Ack { term, info: value.info, received: value.received })
}

fn check_info(info: &SnapshotInfo) -> Result<(), String> {
    let hex = info.sha256.len() == 64 && info.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        return Err("a snapshot's SHA-256 is 64 lowercase hex digits".into());
    }
    if info.index > proto::MAX_WIRE_NUMBER || info.term > proto::MAX_WIRE_NUMBER || info.size > proto::MAX_WIRE_NUMBER {
        return Err("a snapshot's index, term or size out of range".into());
    }
    Ok(())
}

/// The leader's transfer of one snapshot to one follower.
#[derive(Debug)]
pub struct Sending {
    pub info: SnapshotInfo,
    /// The follower holds the bytes before this.
    pub acked: u64,
    /// The next byte to send.
    pub next: u64,
    /// When the follower last answered (or the transfer started).
    pub heard_at: Micros,
    /// When the pieces from `acked` were last sent, or the follower last took one.
    pub sent_at: Micros,
    /// The follower has answered this transfer.
    answered: bool,
    /// How long without progress before the pieces go again: [`RESEND_AFTER`], doubled at
    /// every resend that brought none, up to [`RESEND_AFTER_MAX`].
    resend_after: Micros,
}

impl Sending {
    pub fn new(info: SnapshotInfo, now: Micros) -> Sending {
        Sending { info, acked: 0, next: 0, heard_at: now, sent_at: now, answered: false, resend_after: RESEND_AFTER }
    }

    /// The follower holds `received` bytes without a gap, and sending goes on from there (a
    /// follower that lost its partial copy says 0, and gets it all again).
    pub fn acked(&mut self, now: Micros, received: u64) {
        self.heard_at = now;
        let progress = received > self.acked || !self.answered;
        self.answered = true;
        if received < self.acked {
            // It started again (a restart lost the bytes it had): so does the transfer.
            self.acked = received;
            self.next = received;
            self.sent_at = now;
            self.resend_after = RESEND_AFTER;
        } else if progress {
            self.acked = received;
            self.next = self.next.max(received);
            self.sent_at = now;
            self.resend_after = RESEND_AFTER;
        }
    }

    /// The pieces to send now: `(offset, len)`, within the window.
    pub fn due(&mut self, now: Micros) -> Vec<(u64, usize)> {
        if self.complete() {
            if now.saturating_sub(self.sent_at) < LOADING_CHECK {
                return Vec::new();
            }
            self.sent_at = now;
            return vec![(0, self.info.size.min(CHUNK as u64) as usize)];
        }
        if now.saturating_sub(self.sent_at) >= self.resend_after {
            // Lost on the way, pieces or answers, or a follower slow to take them: again from
            // what the follower holds, and later each time until it moves on.
            self.next = self.acked;
            self.sent_at = now;
            self.resend_after = (self.resend_after * 2).min(RESEND_AFTER_MAX);
        }
        let mut due = Vec::new();
        while self.next < self.info.size && self.next < self.acked + WINDOW {
            let len = (self.info.size - self.next).min(CHUNK as u64) as usize;
            due.push((self.next, len));
            self.next += len as u64;
        }
        // An empty snapshot still needs one piece to say it is complete.
        if self.info.size == 0 && self.next == 0 && !self.answered {
            due.push((0, 0));
            self.next = 1;
        }
        due
    }

    /// The follower holds every byte.
    pub fn complete(&self) -> bool {
        self.answered && self.acked >= self.info.size
    }

    pub fn given_up(&self, now: Micros) -> bool {
        now.saturating_sub(self.heard_at) >= GIVE_UP_AFTER
    }
}

/// A follower's transfer in: from which leader, in which term, and how far.
#[derive(Debug)]
pub struct Receiving {
    pub leader: super::raft::NodeId,
    pub term: u64,
    pub info: SnapshotInfo,
    pub retained: Vec<LogEntry>,
    /// The bytes from the start held without a gap...
    pub received: u64,
    /// ...and the pieces written after a gap, by offset, with their ends.
    pub beyond: std::collections::BTreeMap<u64, u64>,
    /// The first piece came, with the entries RETRIEVE shows.
    pub first_seen: bool,
    /// Every byte is here, and the state machine is checking and loading it.
    pub loading: bool,
}

impl Receiving {
    /// Whether the piece at `offset` of `len` bytes is to be written: not held yet, and within
    /// two windows of what is held without a gap (a bound on what is kept track of).
    pub fn wants(&self, offset: u64, len: usize) -> bool {
        len > 0
            && offset >= self.received
            && offset < self.received + 2 * WINDOW
            && !self.beyond.contains_key(&offset)
            && !self.loading
    }

    /// What will be held without a gap once the piece at `offset` of `len` bytes is written.
    pub fn held_after(&self, offset: u64, len: usize) -> u64 {
        if offset != self.received {
            return self.received;
        }
        let mut held = offset + len as u64;
        while let Some(&end) = self.beyond.get(&held) {
            held = end;
        }
        held
    }

    /// The piece at `offset` of `len` bytes is written: what is held without a gap grows
    /// over the pieces that waited for it.
    pub fn wrote(&mut self, offset: u64, len: usize) {
        self.beyond.insert(offset, offset + len as u64);
        while let Some(end) = self.beyond.remove(&self.received) {
            self.received = end;
        }
        // Pieces that a resend cut differently are passed over.
        self.beyond.retain(|&start, _| start > self.received);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_keeps_pieces_that_overtook_others_and_counts_what_it_holds_without_a_gap() {
        let info = SnapshotInfo { index: 1, term: 1, size: 4 * CHUNK as u64, sha256: "0".repeat(64) };
        let mut r = Receiving {
            leader: 1,
            term: 1,
            info,
            retained: Vec::new(),
            received: 0,
            beyond: Default::default(),
            first_seen: true,
            loading: false,
        };
        let c = CHUNK as u64;
        assert!(r.wants(2 * c, CHUNK));
        r.wrote(2 * c, CHUNK);
        assert_eq!(r.held_after(c, CHUNK), 0);
        r.wrote(c, CHUNK);
        assert_eq!(r.received, 0, "a gap at the start");
        assert!(!r.wants(c, CHUNK), "held already");
        assert_eq!(r.held_after(0, CHUNK), 3 * c);
        r.wrote(0, CHUNK);
        assert_eq!((r.received, r.beyond.len()), (3 * c, 0));
        assert!(!r.wants(0, CHUNK) && !r.wants(3 * c + 2 * WINDOW, CHUNK));
        r.wrote(3 * c, CHUNK);
        assert_eq!(r.received, 4 * c);
    }

    fn info(size: u64) -> SnapshotInfo {
        SnapshotInfo { index: 9, term: 2, size, sha256: "ab".repeat(32) }
    }

    #[test]
    fn pieces_and_answers_read_back_as_sent_and_nonsense_is_refused() {
        let retained = vec![LogEntry { term: 1, key: Some("k".into()), value: serde_json::json!("v").into() }];
        let data = vec![7u8; CHUNK];
        let msg = piece("node1", 3, &info(CHUNK as u64 * 2), 0, &data, &retained);
        assert!(msg.encode().len() < proto::MAX_DATAGRAM, "a piece fits a datagram");
        let (decoded, request) = Message::decode(&msg.encode()).unwrap();
        assert_eq!(request, Request::Snapshot);
        let p = read_piece(decoded).unwrap();
        assert_eq!((p.term, p.offset, p.data, p.retained), (3, 0, data, retained.clone()));
        // Later pieces carry no retained entries.
        let later = read_piece(piece("node1", 3, &info(CHUNK as u64 * 2), CHUNK as u64, &[1], &retained)).unwrap();
        assert!(later.retained.is_empty());

        let a = read_ack(ack("node2", 3, &info(10), 4)).unwrap();
        assert_eq!((a.term, a.received), (3, 4));

        assert!(read_piece(piece("node1", 3, &info(4), 2, &[1, 2, 3], &[])).is_err(), "beyond the end");
        assert!(read_ack(ack("node2", 3, &info(4), 5)).is_err(), "more than there is");
        let bad = SnapshotInfo { sha256: "xyz".into(), ..info(4) };
        assert!(read_ack(ack("node2", 3, &bad, 1)).is_err());
        let mut garbage = Message::new("node1", Request::Snapshot, Some(1));
        garbage.value = serde_json::json!({"offset": "x"});
        assert!(read_piece(garbage).is_err());
    }

    #[test]
    fn the_leader_sends_a_window_ahead_and_again_from_what_the_follower_holds() {
        let size = 20 * CHUNK as u64 + 5;
        let mut s = Sending::new(info(size), 0);
        let first = s.due(0);
        assert_eq!(first.len(), 8);
        assert!(s.due(1).is_empty(), "the window is full");
        s.acked(10, 3 * CHUNK as u64);
        assert_eq!(s.due(10), [(8 * CHUNK as u64, CHUNK), (9 * CHUNK as u64, CHUNK), (10 * CHUNK as u64, CHUNK)]);
        // Nothing heard for a while: from what it holds, a window again.
        let again = s.due(10 + RESEND_AFTER);
        assert_eq!(again.first(), Some(&(3 * CHUNK as u64, CHUNK)));
        assert_eq!(again.len(), 8);
        s.acked(20 + RESEND_AFTER, size - 5);
        assert_eq!(s.due(20 + RESEND_AFTER).last(), Some(&(20 * CHUNK as u64, 5)));
        s.acked(30 + RESEND_AFTER, size);
        assert!(s.complete() && s.due(40 + RESEND_AFTER).is_empty());
        assert!(!s.given_up(30 + RESEND_AFTER + GIVE_UP_AFTER - 1) && s.given_up(30 + RESEND_AFTER + GIVE_UP_AFTER));
        // Not installed a while after: the first piece again, which a restarted follower needs.
        assert_eq!(s.due(30 + RESEND_AFTER + LOADING_CHECK), [(0, CHUNK)]);
        assert!(s.due(31 + RESEND_AFTER + LOADING_CHECK).is_empty());
        // A follower that lost its copy says 0: everything again.
        s.acked(50 + RESEND_AFTER + LOADING_CHECK, 0);
        assert_eq!(s.due(50 + RESEND_AFTER + LOADING_CHECK).first(), Some(&(0, CHUNK)));
    }

    #[test]
    fn a_follower_that_takes_nothing_is_sent_the_window_again_less_and_less_often() {
        let size = 20 * CHUNK as u64;
        let mut s = Sending::new(info(size), 0);
        assert_eq!(s.due(0).len(), 8);
        let mut resends = Vec::new();
        for now in (0..5_000_000).step_by(10_000) {
            if !s.due(now).is_empty() {
                resends.push(now);
            }
        }
        assert_eq!(resends, [100_000, 300_000, 700_000, 1_500_000, 3_100_000, 4_700_000]);
        // Progress: the next resend is after the first wait again.
        s.acked(5_000_000, CHUNK as u64);
        assert_eq!(s.due(5_000_000).len(), 1, "the window moves by the piece taken");
        assert!(s.due(5_000_000 + RESEND_AFTER - 1).is_empty());
        assert_eq!(s.due(5_000_000 + RESEND_AFTER).len(), 8);
    }

    #[test]
    fn an_empty_snapshot_is_one_empty_piece() {
        let mut s = Sending::new(info(0), 5);
        assert_eq!(s.due(7), [(0, 0)]);
        assert!(s.due(8).is_empty());
        assert_eq!(s.due(8 + RESEND_AFTER), [(0, 0)], "again while unanswered");
        s.acked(9 + RESEND_AFTER, 0);
        assert!(s.complete() && s.due(10 + 2 * RESEND_AFTER).is_empty());
        assert_eq!(s.due(9 + RESEND_AFTER + LOADING_CHECK), [(0, 0)]);
    }
}
