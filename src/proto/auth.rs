//! Authenticated datagrams: what a cluster secret adds to the wire (SPEC §7, secure mode).
//!
//! With a secret, every datagram a member or `labctl controller` sends ends with two fields
//! beside the message's own, and a receiver takes only datagrams whose MAC is right:
//!
//! ```json
//! {"sender_name":"node1","request":"APPEND_RPC","term":7,…,"to":"node3","mac":"1.1733324661000123.<64 hex digits>"}
//! ```
//!
//! - `to` names the receiver (`node3`, or `Controller` for a reply to a controller), so a
//!   datagram meant for one node is refused by every other: a vote for node2 cannot be
//!   replayed to node3.
//! - `mac` is `1.<seq>.<tag>`: version 1, the sender's sequence number, and the tag, an
//!   HMAC-SHA256 in lower-case hex over the datagram's exact bytes with the tag written as 64
//!   `0`s. The key is HMAC-SHA256(secret, `"labctl datagram key v1"`), so the secret itself is
//!   never used directly.
//! - `seq` is the sender's clock in microseconds since the Unix epoch when it started, plus one
//!   for each datagram it sends: it only grows, across restarts too, as long as the clock does.
//!
//! The MAC covers everything before the tag, so nothing can be changed, added or moved. The
//! two fields are always the last ones, written exactly as above, which is what lets a
//! receiver find them without parsing the JSON first; tools that do not know them read the
//! message as usual and ignore them.
//!
//! Replays are refused by [`ReplayWindow`] (per member: a sequence number is taken once, and
//! not when far behind the newest one seen) and [`FreshSet`] (control requests: taken once,
//! and only within [`FRESHNESS`] of the receiver's clock, since many controllers share one
//! name and a node restarts without its windows). Raft itself tolerates old and duplicated
//! messages; what these stop is a recorded `SHUTDOWN` or `STORE` being sent again.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;
/// Bytes a sealed datagram has beyond its message: what a sender leaves free in a datagram.
pub const SEAL_ROOM: usize = 160;
/// How far a control request's sequence number (its sender's clock) may be from the
/// receiver's clock.
pub const FRESHNESS: Duration = Duration::from_secs(30);
/// How many sequence numbers behind the newest one a member's datagram may be: datagrams
/// that overtook each other on the way.
pub const WINDOW: u64 = 1024;

const VERSION: &str = "1";
const TAG_HEX: usize = 64;
const TO_FIELD: &[u8] = b",\"to\":\"";
const MAC_FIELD: &[u8] = b"\",\"mac\":\"";

/// The key datagrams are signed with, derived from the cluster secret.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the cluster secret is {0} bytes; it must have at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)")]
    TooShort(usize),
}

impl Key {
    /// The key for `secret` (surrounding whitespace, such as a file's last newline, is not
    /// part of it).
    pub fn derive(secret: &[u8]) -> Result<Key, SecretError> {
        let secret = secret.trim_ascii();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(secret.len()));
        }
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(b"labctl datagram key v1");
        Ok(Key(mac.finalize().into_bytes().into()))
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no MAC")]
    Unsigned,
    #[error("a MAC of another form or version")]
    Malformed,
    #[error("a wrong MAC")]
    BadMac,
    #[error("meant for {0:?}")]
    NotForMe(String),
    #[error("a replay or a datagram too far behind (sequence number {0})")]
    Replayed(u64),
    #[error("sequence number {0} is not within 30 s of this node's clock")]
    Stale(u64),
    #[error("more signed control requests within a minute than a node remembers")]
    Busy,
}

/// A datagram whose MAC is right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed<'a> {
    /// The receiver it names.
    pub to: &'a str,
    /// The sender's sequence number.
    pub seq: u64,
}

/// Appends `to` and the MAC to an encoded message (a JSON object).
pub fn seal(key: &Key, message: &[u8], to: &str, seq: u64) -> Vec<u8> {
    let body = message.strip_suffix(b"}").unwrap_or(message);
    let mut out = Vec::with_capacity(body.len() + SEAL_ROOM);
    out.extend_from_slice(body);
    // An empty object has no field to follow.
    if body.ends_with(b"{") {
        out.extend_from_slice(&TO_FIELD[1..]);
    } else {
        out.extend_from_slice(TO_FIELD);
    }
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(MAC_FIELD);
    out.extend_from_slice(format!("{VERSION}.{seq}.").as_bytes());
    let tag_at = out.len();
    out.extend_from_slice(&[b'0'; TAG_HEX]);
    out.extend_from_slice(b"\"}");
    let mut mac = key.mac();
    mac.update(&out);
    let tag = mac.finalize().into_bytes();
    hex_into(&tag, &mut out[tag_at..tag_at + TAG_HEX]);
    out
}

/// Checks a datagram's MAC; on success says whom it is for and its sequence number.
pub fn open<'a>(key: &Key, datagram: &'a [u8]) -> Result<Sealed<'a>, AuthError> {
    let end = datagram.strip_suffix(b"\"}").ok_or(AuthError::Unsigned)?;
    let mac_at = rfind(end, MAC_FIELD).ok_or(AuthError::Unsigned)?;
    let value = &end[mac_at + MAC_FIELD.len()..];
    let mut parts = value.splitn(3, |&b| b == b'.');
    let (Some(version), Some(seq), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Malformed);
    };
    if version != VERSION.as_bytes() || tag.len() != TAG_HEX || seq.is_empty() || seq.len() > 20 {
        return Err(AuthError::Malformed);
    }
    let seq: u64 = std::str::from_utf8(seq).ok().and_then(|s| s.parse().ok()).ok_or(AuthError::Malformed)?;
    let mut given = [0u8; 32];
    unhex(tag, &mut given).ok_or(AuthError::Malformed)?;
    let name = &TO_FIELD[1..];
    let to_at = rfind(&end[..mac_at], name).ok_or(AuthError::Malformed)?;
    if !matches!(to_at.checked_sub(1).map(|i| end[i]), Some(b',' | b'{')) {
        return Err(AuthError::Malformed);
    }
    let to = std::str::from_utf8(&end[to_at + name.len()..mac_at]).map_err(|_| AuthError::Malformed)?;
    if to.is_empty() || to.len() > 64 || !to.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(AuthError::Malformed);
    }
    let tag_at = datagram.len() - 2 - TAG_HEX;
    let mut mac = key.mac();
    mac.update(&datagram[..tag_at]);
    mac.update(&[b'0'; TAG_HEX]);
    mac.update(b"\"}");
    mac.verify_slice(&given).map_err(|_| AuthError::BadMac)?;
    Ok(Sealed { to, seq })
}

/// `bytes` in lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; 2 * bytes.len()];
    hex_into(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// `bytes` random bytes from the operating system, in hex: secrets, tokens, passwords.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut random = vec![0u8; bytes];
    getrandom::getrandom(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(hex(&random))
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = DIGITS[(b & 0xf) as usize];
    }
}

fn unhex(hex: &[u8], out: &mut [u8; 32]) -> Option<()> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// Microseconds since the Unix epoch by this machine's clock.
pub fn clock_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// A sender's sequence numbers: its clock in microseconds at first, then one more each time,
/// and never behind the clock.
#[derive(Debug)]
pub struct Sequence {
    last: u64,
}

impl Sequence {
    pub fn new() -> Sequence {
        Sequence { last: 0 }
    }

    pub fn take(&mut self) -> u64 {
        self.last = (self.last + 1).max(clock_micros());
        self.last
    }
}

impl Default for Sequence {
    fn default() -> Sequence {
        Sequence::new()
    }
}

/// One member's sequence numbers seen: each is taken once, and not when [`WINDOW`] or more
/// behind the newest.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    newest: u64,
    /// Bit i: `newest - i` was seen.
    seen: [u64; (WINDOW / 64) as usize],
}

impl ReplayWindow {
    /// True (and remembered) when `seq` was not seen and is not too far behind.
    pub fn take(&mut self, seq: u64) -> bool {
        if seq > self.newest {
            self.shift(seq - self.newest);
            self.newest = seq;
            self.seen[0] |= 1;
            return true;
        }
        let behind = self.newest - seq;
        if behind >= WINDOW {
            return false;
        }
        let (word, bit) = ((behind / 64) as usize, behind % 64);
        if self.seen[word] & (1 << bit) != 0 {
            return false;
        }
        self.seen[word] |= 1 << bit;
        true
    }

    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.seen = Default::default();
            return;
        }
        let (words, bits) = ((by / 64) as usize, by % 64);
        let n = self.seen.len();
        for i in (0..n).rev() {
            let from = i.checked_sub(words);
            let high = from.map_or(0, |f| self.seen[f] << bits);
            let low = match (from.and_then(|f| f.checked_sub(1)), bits) {
                (Some(f), b) if b > 0 => self.seen[f] >> (64 - b),
                _ => 0,
            };
            self.seen[i] = high | low;
        }
    }
}

/// Control requests seen within [`FRESHNESS`]: each signed datagram once, and only when its
/// sequence number is within [`FRESHNESS`] of this clock. Bounded: past [`FreshSet::MAX`]
/// remembered, new requests are refused until old ones age out.
#[derive(Debug, Default)]
pub struct FreshSet {
    seen: HashSet<(u64, [u8; 8])>,
    /// What `seen` holds, by arrival: (arrival, entry).
    order: VecDeque<(u64, (u64, [u8; 8]))>,
}

impl FreshSet {
    pub const MAX: usize = 16_384;

    pub fn new() -> FreshSet {
        FreshSet::default()
    }

    /// Takes an opened `datagram` with sequence number `seq`, at clock `now_micros`.
    pub fn take(&mut self, datagram: &[u8], seq: u64, now_micros: u64) -> Result<(), AuthError> {
        let window = FRESHNESS.as_micros() as u64;
        if seq.abs_diff(now_micros) > window {
            return Err(AuthError::Stale(seq));
        }
        // A datagram that arrived two windows ago can no longer be fresh: forget it.
        while let Some(&(arrived, entry)) = self.order.front() {
            if arrived.saturating_add(2 * window) > now_micros {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&entry);
        }
        // The tag's first 8 hex digits tell apart datagrams with one sequence number.
        let mut id = [0u8; 8];
        let tag_at = datagram.len().saturating_sub(2 + TAG_HEX);
        for (to, from) in id.iter_mut().zip(&datagram[tag_at..]) {
            *to = *from;
        }
        let entry = (seq, id);
        if self.seen.contains(&entry) {
            return Err(AuthError::Replayed(seq));
        }
        if self.seen.len() >= Self::MAX {
            return Err(AuthError::Busy);
        }
        self.seen.insert(entry);
        self.order.push_back((now_micros, entry));
        Ok(())
    }
}

/// The header that carries a signed HTTP request's signature (a leader's announcement to the
/// manager): `1.<micros>.<tag>`, the tag an HMAC-SHA256 of
/// `labctl http v1\n<method> <path>\n<micros>\n` followed by the body.
pub const SIGNATURE_HEADER: &str = "X-Labctl-Signature";

fn request_mac(key: &Key, what: &str, micros: u64, body: &[u8]) -> HmacSha256 {
    let mut mac = key.mac();
    mac.update(format!("labctl http v1\n{what}\n{micros}\n").as_bytes());
    mac.update(body);
    mac
}

/// The [`SIGNATURE_HEADER`] value for a request `what` (`POST /leader`) with `body`, at clock
/// `micros`.
pub fn sign_request(key: &Key, what: &str, micros: u64, body: &[u8]) -> String {
    let tag = request_mac(key, what, micros, body).finalize().into_bytes();
    format!("{VERSION}.{micros}.{}", hex(&tag))
}

/// Checks a [`SIGNATURE_HEADER`] value: the right tag, made within [`FRESHNESS`] of `now_micros`.
pub fn verify_request(
    key: &Key,
    what: &str,
    header: Option<&str>,
    body: &[u8],
    now_micros: u64,
) -> Result<(), AuthError> {
    let header = header.ok_or(AuthError::Unsigned)?;
    let mut parts = header.trim().splitn(3, '.');
    let (Some(VERSION), Some(micros), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Malformed);
    };
    let micros: u64 = micros.parse().map_err(|_| AuthError::Malformed)?;
    let mut given = [0u8; 32];
    if tag.len() != TAG_HEX {
        return Err(AuthError::Malformed);
    }
    unhex(tag.as_bytes(), &mut given).ok_or(AuthError::Malformed)?;
    request_mac(key, what, micros, body).verify_slice(&given).map_err(|_| AuthError::BadMac)?;
    if micros.abs_diff(now_micros) > FRESHNESS.as_micros() as u64 {
        return Err(AuthError::Stale(micros));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Message, Request};

    fn key() -> Key {
        Key::derive(b"a secret of more than sixteen bytes\n").unwrap()
    }

    #[test]
    fn a_sealed_message_opens_and_still_decodes_as_the_message() {
        let msg = Message::new("node1", Request::VoteAck, Some(7));
        let sealed = seal(&key(), &msg.encode(), "node3", 42);
        assert_eq!(open(&key(), &sealed), Ok(Sealed { to: "node3", seq: 42 }));
        let text = std::str::from_utf8(&sealed).unwrap();
        assert!(text.ends_with("\"}") && text.contains(r#","to":"node3","mac":"1.42."#), "{text}");
        let (decoded, request) = Message::decode(&sealed).unwrap();
        assert_eq!((decoded, request), (msg, Request::VoteAck));
        // An empty object too.
        assert_eq!(open(&key(), &seal(&key(), b"{}", "Controller", 1)).unwrap().to, "Controller");
    }

    #[test]
    fn any_change_breaks_the_mac() {
        let msg = Message::new("node1", Request::AppendRpc, Some(7)).encode();
        let sealed = seal(&key(), &msg, "node3", 42);
        for i in 0..sealed.len() {
            for flip in [1u8, 0x20] {
                let mut bad = sealed.clone();
                bad[i] ^= flip;
                assert!(open(&key(), &bad).is_err(), "byte {i} ^ {flip}: {}", String::from_utf8_lossy(&bad));
            }
        }
        let other = Key::derive(b"another secret of sixteen bytes").unwrap();
        assert_eq!(open(&other, &sealed), Err(AuthError::BadMac));
        assert_eq!(open(&key(), &msg), Err(AuthError::Unsigned));
        // Cut short, or with a field moved after the MAC.
        assert!(open(&key(), &sealed[..sealed.len() - 1]).is_err());
        let mut moved = sealed[..sealed.len() - 1].to_vec();
        moved.extend_from_slice(br#","term":8}"#);
        assert!(open(&key(), &moved).is_err());
    }

    #[test]
    fn secrets_are_at_least_sixteen_bytes_without_surrounding_whitespace() {
        assert_eq!(Key::derive(b"  short secret \n").unwrap_err(), SecretError::TooShort(12));
        assert!(Key::derive(b"exactly 16 bytes").is_ok());
        let a = Key::derive(b"exactly 16 bytes\n").unwrap();
        let b = Key::derive(b"exactly 16 bytes").unwrap();
        assert_eq!(a.0, b.0, "a file's last newline is not part of the secret");
        assert_eq!(format!("{a:?}"), "Key(…)", "a key never shows in a log line");
    }

    #[test]
    fn the_window_takes_each_sequence_number_once() {
        let mut w = ReplayWindow::default();
        assert!(w.take(1000));
        assert!(!w.take(1000), "a replay");
        assert!(w.take(1002));
        assert!(w.take(1001), "overtaken, not seen yet");
        assert!(!w.take(1001));
        assert!(w.take(1000 + WINDOW + 1));
        assert!(!w.take(1002), "too far behind now");
        assert!(w.take(1003 + 65), "within the window, across a word");
        assert!(!w.take(1003 + 65));
        assert!(w.take(u64::MAX / 2));
        assert!(!w.take(1000 + WINDOW + 1), "a jump forgets what was before");
        // Against a model: a set of taken numbers and the newest.
        let mut w = ReplayWindow::default();
        let (mut taken, mut newest) = (std::collections::HashSet::new(), 0u64);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let seq = (newest + 100).saturating_sub(x % 1300) + 1;
            let expect = !taken.contains(&seq) && seq + WINDOW > newest;
            assert_eq!(w.take(seq), expect, "seq {seq}, newest {newest}");
            if expect {
                taken.insert(seq);
                newest = newest.max(seq);
            }
        }
    }

    #[test]
    fn signed_http_requests_verify_only_unchanged_and_fresh() {
        let now = clock_micros();
        let body = br#"{"name":"node2","term":4,"http":"127.0.0.2:8000"}"#;
        let header = sign_request(&key(), "POST /leader", now, body);
        assert_eq!(verify_request(&key(), "POST /leader", Some(&header), body, now + 1_000_000), Ok(()));
        assert_eq!(verify_request(&key(), "POST /leader", None, body, now), Err(AuthError::Unsigned));
        assert_eq!(verify_request(&key(), "POST /other", Some(&header), body, now), Err(AuthError::BadMac));
        let changed = br#"{"name":"node2","term":5,"http":"127.0.0.2:8000"}"#;
        assert_eq!(verify_request(&key(), "POST /leader", Some(&header), changed, now), Err(AuthError::BadMac));
        let other = Key::derive(b"another secret of sixteen bytes").unwrap();
        assert_eq!(verify_request(&other, "POST /leader", Some(&header), body, now), Err(AuthError::BadMac));
        let later = now + 31_000_000;
        assert_eq!(verify_request(&key(), "POST /leader", Some(&header), body, later), Err(AuthError::Stale(now)));
        for bad in ["", "1.x.00", "2.5.00", &header[..header.len() - 1], &header.replace("1.", "1.-")] {
            assert!(verify_request(&key(), "POST /leader", Some(bad), body, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn control_requests_are_taken_once_and_only_while_fresh() {
        let now = 1_000_000_000_000u64;
        let mut fresh = FreshSet::new();
        let a = seal(&key(), b"{}", "node1", now);
        let b = seal(&key(), br#"{"x":1}"#, "node1", now);
        assert_eq!(fresh.take(&a, now, now), Ok(()));
        assert_eq!(fresh.take(&a, now, now + 1), Err(AuthError::Replayed(now)));
        assert_eq!(fresh.take(&b, now, now + 1), Ok(()), "another controller, the same microsecond");
        let window = FRESHNESS.as_micros() as u64;
        assert_eq!(fresh.take(&a, now, now + window + 1), Err(AuthError::Stale(now)));
        let old = seal(&key(), b"{}", "node1", now - window - 1);
        assert_eq!(fresh.take(&old, now - window - 1, now), Err(AuthError::Stale(now - window - 1)));
        // Remembered entries age out.
        let later = now + 3 * window;
        let c = seal(&key(), b"{}", "node1", later);
        assert_eq!(fresh.take(&c, later, later), Ok(()));
        assert_eq!(fresh.seen.len(), 1);
    }
}
