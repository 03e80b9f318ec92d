//! The UDP wire message shared by nodes, the controller and tests (SPEC §3).
//!
//! One JSON object per datagram. Every message carries the five fields of the course's
//! `Message.json` (`sender_name`, `request`, `term`, `key`, `value`), always present on the
//! wire, `null` when unused. Raft adds fields beside them; a receiver ignores fields it does
//! not know and reads a missing field as `null`.
//!
//! [`Message`] is the lenient, untyped form as it travels; [`Request`] names the request kinds
//! this product understands. Decoding never panics: anything that is not such an object, is
//! larger than [`MAX_DATAGRAM`], or has a field of the wrong type is a [`DecodeError`].
//!
//! Course controllers fill the base fields in many ways, so three of them are read liberally
//! (SPEC §7: control requests accept `term`, `key` and `value` of any JSON type):
//! - `term`: a whole number from 0 to [`MAX_WIRE_NUMBER`], given as a JSON number (`3`, `3.0`) or as a
//!   string of decimal digits (`"3"`, `" 3 "`), is that term. Anything else (null, missing,
//!   `"NULL"`, `"None"`, `""`, negative or fractional numbers, numbers over [`MAX_WIRE_NUMBER`] such as
//!   `1e400`, other strings, booleans, arrays, objects) reads as no term (`None`), never as an
//!   error. Raft stays strict all the same: a Raft message without a term is refused
//!   (`Msg::from_wire`), so a Raft message whose term is not such a number is dropped.
//! - `key`: a string is the key as sent, except the string `"NULL"` (any case), which some
//!   controllers write for an unused field and which reads as no key, like null or a missing
//!   field. Any other JSON (a number, a boolean, an array, an object) is a key spelled as its
//!   JSON text: `7` is the key `"7"`.
//! - `value`: any JSON, kept as sent. The string `"NULL"` stays a string, since a STORE's
//!   value is data; the requests that take no value (LEADER_INFO, TIMEOUT, …) never read it.
//!
//! Request names are matched case-insensitively (`"timeout"`, `"Leader_Info"`). Control
//! requests are recognised by their request alone, whatever their `sender_name` (`Controller`,
//! `controller` or anything else).
//!
//! [`client`] is the sending side of the control requests, shared by the controller, the
//! cluster runner and tests; [`fragment`] carries node messages larger than one datagram.

pub mod auth;
pub mod client;
pub mod fragment;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest datagram a node sends or accepts. Leaders batch log entries so that an
/// AppendEntries message stays below it, unless one entry alone is larger: such a message
/// travels as [`fragment`]s.
pub const MAX_DATAGRAM: usize = 60 * 1024;

/// The `sender_name` of control requests. Nodes do not check it: a control request is known
/// by its request, so `controller` in any case (or any other name) is taken as well.
pub const CONTROLLER: &str = "Controller";

/// The largest term, index or sequence number a message may carry: 2^53, the largest
/// integer a JSON number holds exactly (a peer written in JavaScript, or Python's `json` with
/// floats, cannot say more; SPEC §7). No honest cluster gets near it: a term a second for 285
/// million years. A larger `term` reads as no term, and a Raft message with a larger number
/// anywhere is refused (`Msg::from_wire`), so no datagram can push a node's term to where
/// `term + 1` overflows.
pub const MAX_WIRE_NUMBER: u64 = 1 << 53;

/// One datagram, as it travels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `nodeN` for node traffic, `Controller` for control requests.
    pub sender_name: Option<String>,
    /// The request kind, e.g. `APPEND_RPC`; see [`Request`].
    pub request: Option<String>,
    /// The sender's current term (`null` from controllers). Read leniently (see the module
    /// documentation): anything that is not a whole number up to [`MAX_WIRE_NUMBER`] reads as `None`.
    #[serde(default, deserialize_with = "lenient::term")]
    pub term: Option<u64>,
    /// Request key: the STORE key, `LEADER` in LEADER_INFO replies, `COMMITED_LOGS` in RETRIEVE
    /// replies. Read leniently (see the module documentation): `"NULL"` (any case) reads as
    /// `None`, a number as its JSON text.
    #[serde(default, deserialize_with = "lenient::key")]
    pub key: Option<String>,
    /// Request value: any JSON, kept as sent (the string `"NULL"` too: a STORE's value is data).
    #[serde(default)]
    pub value: Value,

    // ---- Raft fields, absent from the wire when unused ----
    /// RequestVote / PreVote: index of the candidate's last log entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_log_index: Option<u64>,
    /// RequestVote / PreVote: term of the candidate's last log entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_log_term: Option<u64>,
    /// RequestVote: the election was started by a controller TIMEOUT; voters do not refuse it
    /// for having heard from a live leader (the thesis's TimeoutNow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// AppendEntries: index of the entry just before `entries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_log_index: Option<u64>,
    /// AppendEntries: term of the entry at `prev_log_index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_log_term: Option<u64>,
    /// AppendEntries: the entries to append (empty for a heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<LogEntry>>,
    /// AppendEntries: the leader's commit index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_commit: Option<u64>,
    /// Replies: whether the request was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// APPEND_REPLY: the highest index known to match the leader's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_index: Option<u64>,
    /// APPEND_REPLY on a mismatch: where the leader should retry from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_index: Option<u64>,
    /// APPEND_REPLY on a mismatch: the term of the follower's conflicting entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_term: Option<u64>,
    /// APPEND_RPC: the number of the leader's latest leadership check for linearizable reads;
    /// APPEND_REPLY: the same number, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_seq: Option<u64>,
}

/// The value of a log entry: any JSON, kept as its text.
///
/// A node never looks inside the values it replicates; only the applier reads its own
/// commands out of them. Kept as text, a value is checked once as it arrives, written to the
/// log and to peers as it is, and shared (not copied) between the log, the messages to each
/// follower and the applier. Two values are equal when their texts are.
#[derive(Clone)]
pub struct EntryValue(std::sync::Arc<serde_json::value::RawValue>);

impl EntryValue {
    /// `null`: the value of a leader's no-op (one shared text).
    pub fn null() -> EntryValue {
        static NULL: std::sync::LazyLock<std::sync::Arc<serde_json::value::RawValue>> =
            std::sync::LazyLock::new(|| serde_json::value::RawValue::from_string("null".into()).expect("JSON").into());
        EntryValue(NULL.clone())
    }

    /// The JSON text of any serializable value.
    pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<EntryValue, serde_json::Error> {
        Ok(EntryValue(serde_json::value::to_raw_value(value)?.into()))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    pub fn is_null(&self) -> bool {
        self.get() == "null"
    }

    /// The value parsed (`null` if it cannot be: one nested deeper than serde_json parses).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.get()).unwrap_or(Value::Null)
    }
}

impl Default for EntryValue {
    fn default() -> EntryValue {
        EntryValue::null()
    }
}

impl PartialEq for EntryValue {
    fn eq(&self, other: &EntryValue) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0) || self.get() == other.get()
    }
}

impl std::fmt::Debug for EntryValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl std::fmt::Display for EntryValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl From<Value> for EntryValue {
    fn from(value: Value) -> EntryValue {
        EntryValue::from(&value)
    }
}

impl From<&Value> for EntryValue {
    fn from(value: &Value) -> EntryValue {
        EntryValue::to_json(value).unwrap_or_default()
    }
}

/// A JSON string, as `Value::from(&str)`.
impl From<&str> for EntryValue {
    fn from(s: &str) -> EntryValue {
        EntryValue::from(Value::from(s))
    }
}

impl From<String> for EntryValue {
    fn from(s: String) -> EntryValue {
        EntryValue::from(Value::from(s))
    }
}

impl Serialize for EntryValue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for EntryValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<EntryValue, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        Ok(EntryValue(raw.into()))
    }
}

/// One replicated log entry as it appears on the wire and in RETRIEVE replies:
/// `{"Term":1,"Key":"k","Value":"v"}`. A leader's no-op entry has a null key and value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    #[serde(rename = "Term")]
    pub term: u64,
    #[serde(rename = "Key", default)]
    pub key: Option<String>,
    #[serde(rename = "Value", default)]
    pub value: EntryValue,
}

impl LogEntry {
    /// The entry a new leader appends to commit earlier terms' entries.
    pub fn noop(term: u64) -> Self {
        LogEntry { term, key: None, value: EntryValue::null() }
    }

    /// True for a leader's no-op entry, which carries no user data.
    pub fn is_noop(&self) -> bool {
        self.key.is_none() && self.value.is_null()
    }
}

/// The request kinds labctl understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    // Node requests.
    AppendRpc,
    AppendReply,
    VoteRequest,
    VoteAck,
    PreVoteRequest,
    PreVoteReply,
    /// Election handshake: a follower accepts its leader.
    Accept,
    /// Election handshake: HTTP address (and the leader's write token).
    Credentials,
    /// One piece of a node message larger than a datagram (see [`fragment`]).
    Fragment,
    /// A piece of a snapshot of the leader's state machine, for a follower that needs entries
    /// the leader's log no longer holds (see `node::transfer`).
    Snapshot,
    /// A follower's answer to `SNAPSHOT`: how many of the snapshot's bytes it holds.
    SnapshotAck,
    // Control requests (sender "Controller") and their replies.
    ConvertFollower,
    Timeout,
    Shutdown,
    LeaderInfo,
    Store,
    Retrieve,
}

impl Request {
    pub const ALL: [Request; 17] = [
        Request::AppendRpc,
        Request::AppendReply,
        Request::VoteRequest,
        Request::VoteAck,
        Request::PreVoteRequest,
        Request::PreVoteReply,
        Request::Accept,
        Request::Credentials,
        Request::Fragment,
        Request::Snapshot,
        Request::SnapshotAck,
        Request::ConvertFollower,
        Request::Timeout,
        Request::Shutdown,
        Request::LeaderInfo,
        Request::Store,
        Request::Retrieve,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Request::AppendRpc => "APPEND_RPC",
            Request::AppendReply => "APPEND_REPLY",
            Request::VoteRequest => "VOTE_REQUEST",
            Request::VoteAck => "VOTE_ACK",
            Request::PreVoteRequest => "PRE_VOTE_REQUEST",
            Request::PreVoteReply => "PRE_VOTE_REPLY",
            Request::Accept => "ACCEPT",
            Request::Credentials => "CREDENTIALS",
            Request::Fragment => "FRAGMENT",
            Request::Snapshot => "SNAPSHOT",
            Request::SnapshotAck => "SNAPSHOT_ACK",
            Request::ConvertFollower => "CONVERT_FOLLOWER",
            Request::Timeout => "TIMEOUT",
            Request::Shutdown => "SHUTDOWN",
            Request::LeaderInfo => "LEADER_INFO",
            Request::Store => "STORE",
            Request::Retrieve => "RETRIEVE",
        }
    }

    /// Parses a wire name. Names are matched case-insensitively and without surrounding
    /// whitespace: `"timeout"` and `"Leader_Info"` are TIMEOUT and LEADER_INFO.
    pub fn parse(s: &str) -> Option<Request> {
        let s = s.trim();
        Request::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(s))
    }

    /// True for the requests a controller sends.
    pub fn is_control(self) -> bool {
        matches!(
            self,
            Request::ConvertFollower
                | Request::Timeout
                | Request::Shutdown
                | Request::LeaderInfo
                | Request::Store
                | Request::Retrieve
        )
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Key of the LEADER_INFO reply.
pub const KEY_LEADER: &str = "LEADER";
/// Key of the RETRIEVE reply, spelled as the course protocol spells it.
pub const KEY_COMMITED_LOGS: &str = "COMMITED_LOGS";
/// The correct spelling, accepted wherever a reply is read.
pub const KEY_COMMITTED_LOGS: &str = "COMMITTED_LOGS";

/// Why a datagram was dropped.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {0} bytes is larger than {1}")]
    TooLarge(usize, usize),
    #[error("not UTF-8 JSON of the message shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no `request` field")]
    MissingRequest,
    #[error("unknown request {0:?}")]
    UnknownRequest(String),
}

impl Message {
    /// A message with the five base fields set and no Raft fields.
    pub fn new(sender: impl Into<String>, request: Request, term: Option<u64>) -> Self {
        Message {
            sender_name: Some(sender.into()),
            request: Some(request.as_str().to_string()),
            term,
            ..Message::default()
        }
    }

    /// Decodes one datagram, checking that it names a known request.
    pub fn decode(bytes: &[u8]) -> Result<(Message, Request), DecodeError> {
        Message::decode_with_limit(bytes, MAX_DATAGRAM)
    }

    /// Decodes a message of at most `limit` bytes (a reassembled one may exceed a datagram).
    pub fn decode_with_limit(bytes: &[u8], limit: usize) -> Result<(Message, Request), DecodeError> {
        if bytes.len() > limit {
            return Err(DecodeError::TooLarge(bytes.len(), limit));
        }
        let msg: Message = serde_json::from_slice(bytes)?;
        let name = msg.request.as_deref().ok_or(DecodeError::MissingRequest)?;
        let request =
            Request::parse(name).ok_or_else(|| DecodeError::UnknownRequest(name.chars().take(64).collect()))?;
        Ok((msg, request))
    }

    /// Encodes as one JSON datagram.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail: every map key is a string.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The parsed request kind, if known.
    pub fn request_kind(&self) -> Option<Request> {
        self.request.as_deref().and_then(Request::parse)
    }

    /// The leader named in a LEADER_INFO reply (`value`), if any.
    pub fn leader_name(&self) -> Option<&str> {
        self.value.as_str()
    }

    /// The committed log in a RETRIEVE reply, accepting both spellings of the key.
    pub fn committed_logs(&self) -> Option<Vec<LogEntry>> {
        match self.key.as_deref() {
            Some(KEY_COMMITED_LOGS) | Some(KEY_COMMITTED_LOGS) => serde_json::from_value(self.value.clone()).ok(),
            _ => None,
        }
    }
}

/// Lenient readers of the base fields `term` and `key` (see the module documentation).
///
/// Both read the field's JSON text first: serde_json refuses a number that does not fit an
/// `f64` (`1e400`) while parsing it, so only the text lets such a term read as no term
/// instead of making the whole datagram an error.
mod lenient {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};
    use serde_json::value::RawValue;

    use super::MAX_WIRE_NUMBER;

    /// `term`: see [`term_of`].
    pub fn term<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(term_of(raw.get()))
    }

    /// `key`: see [`key_of`].
    pub fn key<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        key_of(raw.get()).map_err(D::Error::custom)
    }

    /// The term a field's JSON text gives: a whole number from 0 to [`MAX_WIRE_NUMBER`], written as a
    /// JSON number or as a string of decimal digits; `None` for anything else.
    pub(super) fn term_of(json: &str) -> Option<u64> {
        let json = json.trim();
        let term = match json.as_bytes().first()? {
            b'"' => {
                let text: String = serde_json::from_str(json).ok()?;
                let digits = text.trim();
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                // All digits: the only failure left is a number beyond u64.
                digits.parse::<u64>().ok()?
            }
            b'-' | b'0'..=b'9' => match json.parse::<u64>() {
                Ok(term) => term,
                Err(_) => {
                    // A fraction, an exponent, a minus sign or beyond u64: a term only if it
                    // is a whole number in range (`3.0`, `3e2`, `-0`). 1e400 parses to
                    // infinity and is refused here.
                    let float: f64 = json.parse().ok()?;
                    let whole = (0.0..=MAX_WIRE_NUMBER as f64).contains(&float) && float.fract() == 0.0;
                    whole.then_some(float as u64)?
                }
            },
            // null, true, false, arrays, objects.
            _ => return None,
        };
        (term <= MAX_WIRE_NUMBER).then_some(term)
    }

    /// The key a field's JSON text gives: null and the string `"NULL"` (any case) are no key,
    /// another string is the key as sent, any other JSON is a key spelled as its JSON text.
    /// Only a string serde_json cannot read (a lone surrogate escape) is an error.
    pub(super) fn key_of(json: &str) -> Result<Option<String>, serde_json::Error> {
        let json = json.trim();
        Ok(match json.as_bytes().first() {
            None => None,
            Some(b'"') => {
                let key: String = serde_json::from_str(json)?;
                (!key.eq_ignore_ascii_case("null")).then_some(key)
            }
            Some(_) if json == "null" => None,
            Some(_) => Some(json.to_string()),
        })
    }
}

/// Parses a node name (`node3`, `Node3`, `NODE3`) into its id. Names are case-insensitive.
pub fn parse_node_name(name: &str) -> Option<u32> {
    let name = name.trim();
    // Every datagram's sender is read with this: no allocation.
    let (prefix, digits) = name.split_at_checked(4)?;
    if !prefix.eq_ignore_ascii_case("node") {
        return None;
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&id| id > 0)
}

/// The canonical name of node `id`: `node3`.
pub fn node_name(id: u32) -> String {
    format!("node{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_values_travel_as_their_text() {
        let wire = br#"{"sender_name":"node1","request":"APPEND_RPC","term":2,"key":null,"value":null,
            "prev_log_index":0,"prev_log_term":0,"leader_commit":0,
            "entries":[{"Term":2,"Key":"k","Value":{"b":[1,{"c":null}],"a":"x\"y"}},{"Term":2,"Key":null,"Value":null}]}"#;
        let (msg, _) = Message::decode(wire).unwrap();
        let entries = msg.entries.clone().unwrap();
        assert_eq!(entries[0].value.get(), r#"{"b":[1,{"c":null}],"a":"x\"y"}"#, "kept as sent, keys in order");
        assert_eq!(entries[0].value.to_value(), serde_json::json!({"a": "x\"y", "b": [1, {"c": null}]}));
        assert!(entries[1].is_noop());
        // Encoded again, a value is the same text.
        let (again, _) = Message::decode(&msg.encode()).unwrap();
        assert_eq!(again.entries.unwrap(), entries);
        // A value that is not JSON makes the whole message an error.
        let bad = br#"{"request":"APPEND_RPC","entries":[{"Term":1,"Value":{"a":}}]}"#;
        assert!(Message::decode(bad).is_err());
    }

    #[test]
    fn course_controller_message_decodes() {
        let raw =
            br#"{"sender_name": "Controller", "request": "LEADER_INFO", "term": null, "key": null, "value": null}"#;
        let (msg, req) = Message::decode(raw).unwrap();
        assert_eq!(req, Request::LeaderInfo);
        assert_eq!(msg.sender_name.as_deref(), Some(CONTROLLER));
        assert_eq!(msg.term, None);
    }

    #[test]
    fn missing_fields_are_null_and_unknown_fields_ignored() {
        let (msg, req) = Message::decode(br#"{"request":"TIMEOUT","colour":"blue"}"#).unwrap();
        assert_eq!(req, Request::Timeout);
        assert_eq!(msg.sender_name, None);
        assert_eq!(msg.value, Value::Null);
    }

    #[test]
    fn encoded_message_always_has_the_five_fields() {
        let bytes = Message::new("node2", Request::VoteRequest, Some(7)).encode();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let obj = v.as_object().unwrap();
        for field in ["sender_name", "request", "term", "key", "value"] {
            assert!(obj.contains_key(field), "missing {field} in {v}");
        }
        assert_eq!(obj["sender_name"], "node2");
        assert_eq!(obj["request"], "VOTE_REQUEST");
        assert_eq!(obj["term"], 7);
        assert!(!obj.contains_key("entries"));
    }

    #[test]
    fn bad_datagrams_are_errors() {
        assert!(matches!(Message::decode(b"\xff\xfe"), Err(DecodeError::Json(_))));
        assert!(matches!(Message::decode(b"[1,2]"), Err(DecodeError::Json(_))));
        assert!(matches!(Message::decode(br#"{"request":5}"#), Err(DecodeError::Json(_))));
        assert!(matches!(Message::decode(br#"{"request":"STORE","key":"\ud800"}"#), Err(DecodeError::Json(_))));
        assert!(matches!(Message::decode(br#"{"request":"STORE","sender_name":7}"#), Err(DecodeError::Json(_))));
        assert!(matches!(Message::decode(br#"{"request":"STORE","entries":"x"}"#), Err(DecodeError::Json(_))));
        assert!(matches!(Message::decode(br#"{"request":"STORE","term":[1,}"#), Err(DecodeError::Json(_))));
        // A term that is not a whole number is no term, not an error (see `lenient_terms`).
        let (msg, _) = Message::decode(br#"{"term":"x","request":"TIMEOUT"}"#).unwrap();
        assert_eq!(msg.term, None);
        let (msg, _) = Message::decode(br#"{"term":-1,"request":"TIMEOUT"}"#).unwrap();
        assert_eq!(msg.term, None);
        assert!(matches!(Message::decode(br#"{"key":null}"#), Err(DecodeError::MissingRequest)));
        assert!(matches!(Message::decode(br#"{"request":"HELLO"}"#), Err(DecodeError::UnknownRequest(_))));
        let huge = vec![b' '; MAX_DATAGRAM + 1];
        assert!(matches!(Message::decode(&huge), Err(DecodeError::TooLarge(..))));
    }

    /// `{"term": <term>}` on a TIMEOUT from a controller, and on a VOTE_ACK from node2: the
    /// control request decodes with the lenient term; the Raft message is taken only with a term.
    fn check_term(term: Option<&str>, want: Option<u64>) {
        let field = term.map_or(String::new(), |t| format!(r#","term":{t}"#));
        let control = format!(r#"{{"sender_name":"Controller","request":"TIMEOUT"{field}}}"#);
        let (msg, request) = Message::decode(control.as_bytes()).unwrap_or_else(|e| panic!("{control}: {e}"));
        assert_eq!((request, msg.term), (Request::Timeout, want), "{control}");
        // The same through serde_json::Value, as the controller reads replies.
        if let Ok(value) = serde_json::from_str::<Value>(&control) {
            let msg: Message = serde_json::from_value(value).unwrap_or_else(|e| panic!("{control}: {e}"));
            assert_eq!(msg.term, want, "{control} through a Value");
        }
        let raft = format!(r#"{{"sender_name":"node2","request":"VOTE_ACK"{field}}}"#);
        let (msg, request) = Message::decode(raft.as_bytes()).unwrap_or_else(|e| panic!("{raft}: {e}"));
        let taken = crate::node::raft::Msg::from_wire(msg, request).map(|(_, m)| m.term());
        assert_eq!(taken.ok(), want, "{raft}");
    }

    #[test]
    fn lenient_terms() {
        let max = MAX_WIRE_NUMBER.to_string();
        let accepted: &[(&str, u64)] = &[
            ("3", 3),
            ("0", 0),
            ("3.0", 3),
            ("3e2", 300),
            ("300E-2", 3),
            ("-0", 0),
            (&max, MAX_WIRE_NUMBER),
            ("9007199254740992.0", MAX_WIRE_NUMBER),
            (r#""3""#, 3),
            (r#"" 3 ""#, 3),
            (r#""\t12\n""#, 12),
            (r#""007""#, 7),
            (r#""\u0033""#, 3),
            (r#""9007199254740992""#, MAX_WIRE_NUMBER),
        ];
        for &(term, want) in accepted {
            check_term(Some(term), Some(want));
        }
        let refused = [
            "null",
            r#""NULL""#,
            r#""null""#,
            r#""Null""#,
            r#"" NULL ""#,
            r#""None""#,
            r#""none""#,
            r#""""#,
            r#""  ""#,
            "-1",
            "-3.0",
            "3.5",
            "0.1",
            r#""3.5""#,
            r#""3.0""#,
            r#""-3""#,
            r#""+3""#,
            r#""3x""#,
            r#""3 4""#,
            r#""high""#,
            r#""٣""#,
            "true",
            "false",
            "[]",
            "[3]",
            "{}",
            r#"{"term":3}"#,
            "9007199254740993",
            r#""9007199254740993""#,
            "9007199254740994.0",
            "1e20",
            "18446744073709551615",
            "18446744073709551616",
            r#""18446744073709551616""#,
            "123456789012345678901234567890",
            "1e400",
            "-1e400",
        ];
        for term in refused {
            check_term(Some(term), None);
        }
        check_term(None, None);
    }

    #[test]
    fn lenient_keys() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#""k""#, Some("k")),
            (r#""""#, Some("")),
            (r#""None""#, Some("None")),
            (r#"" NULL ""#, Some(" NULL ")),
            (r#""NULLS""#, Some("NULLS")),
            (r#""ключ""#, Some("ключ")),
            ("null", None),
            (r#""NULL""#, None),
            (r#""null""#, None),
            (r#""Null""#, None),
            (r#""\u004eULL""#, None),
            ("7", Some("7")),
            ("-1", Some("-1")),
            ("7.5", Some("7.5")),
            ("1e400", Some("1e400")),
            ("18446744073709551616", Some("18446744073709551616")),
            ("true", Some("true")),
            ("false", Some("false")),
            ("[1,2]", Some("[1,2]")),
            (r#"{"a":1}"#, Some(r#"{"a":1}"#)),
        ];
        for &(key, want) in cases {
            let raw = format!(r#"{{"sender_name":"Controller","request":"STORE","key":{key},"value":"v"}}"#);
            let (msg, request) = Message::decode(raw.as_bytes()).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!((request, msg.key.as_deref()), (Request::Store, want), "{raw}");
            // The same through serde_json::Value where it keeps the key's text (it holds
            // 18446744073709551616 as a float, and cannot hold 1e400).
            let value = serde_json::from_str::<Value>(&raw)
                .ok()
                .filter(|v| serde_json::to_string(&v["key"]).is_ok_and(|text| text == key));
            if let Some(value) = value {
                let msg: Message = serde_json::from_value(value).unwrap_or_else(|e| panic!("{raw}: {e}"));
                assert_eq!(msg.key.as_deref(), want, "{raw} through a Value");
            }
        }
        let (msg, _) = Message::decode(br#"{"request":"STORE"}"#).unwrap();
        assert_eq!(msg.key, None, "missing");
        // A string serde_json cannot read stays an error.
        assert!(matches!(Message::decode(br#"{"request":"STORE","key":"\ud800"}"#), Err(DecodeError::Json(_))));
        // A key read leniently encodes as the string it became.
        let (msg, _) = Message::decode(br#"{"request":"STORE","key":7}"#).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&msg.encode()).unwrap()["key"], "7");
    }

    #[test]
    fn values_are_kept_as_sent() {
        for value in [r#""NULL""#, r#""null""#, "null", "7", r#"{"a":[1,"NULL"]}"#] {
            let raw = format!(r#"{{"request":"STORE","key":"k","value":{value}}}"#);
            let (msg, _) = Message::decode(raw.as_bytes()).unwrap();
            assert_eq!(msg.value, serde_json::from_str::<Value>(value).unwrap(), "{raw}");
        }
    }

    #[test]
    fn request_names_match_in_any_case() {
        let cases: &[(&str, Option<Request>)] = &[
            ("TIMEOUT", Some(Request::Timeout)),
            ("timeout", Some(Request::Timeout)),
            ("Leader_Info", Some(Request::LeaderInfo)),
            (" store ", Some(Request::Store)),
            ("retrieve", Some(Request::Retrieve)),
            ("Convert_Follower", Some(Request::ConvertFollower)),
            ("append_rpc", Some(Request::AppendRpc)),
            ("LEADER-INFO", None),
            ("LEADERINFO", None),
            ("TIMEOUTS", None),
            ("TIME OUT", None),
            ("", None),
        ];
        for &(name, want) in cases {
            assert_eq!(Request::parse(name), want, "{name:?}");
        }
        for request in Request::ALL {
            assert_eq!(Request::parse(&request.as_str().to_ascii_lowercase()), Some(request));
        }
        // A course controller's lower-case request from "controller" is a control request.
        for sender in ["Controller", "controller", "CONTROLLER"] {
            let raw = format!(r#"{{"sender_name":"{sender}","request":"leader_info","term":"NULL","key":"NULL"}}"#);
            let (msg, request) = Message::decode(raw.as_bytes()).unwrap();
            assert!(request.is_control() && request == Request::LeaderInfo, "{raw}");
            assert_eq!((msg.term, msg.key.as_deref()), (None, None), "{raw}");
            assert_eq!(msg.request_kind(), Some(Request::LeaderInfo));
        }
    }

    #[test]
    fn committed_logs_accepts_both_spellings() {
        let entries = serde_json::json!([{"Term": 1, "Key": "k", "Value": "v"}]);
        for key in [KEY_COMMITED_LOGS, KEY_COMMITTED_LOGS] {
            let msg = Message { key: Some(key.into()), value: entries.clone(), ..Message::default() };
            let logs = msg.committed_logs().unwrap();
            assert_eq!(logs, vec![LogEntry { term: 1, key: Some("k".into()), value: "v".into() }]);
        }
    }

    #[test]
    fn node_names_are_case_insensitive() {
        assert_eq!(parse_node_name("node3"), Some(3));
        assert_eq!(parse_node_name("Node1"), Some(1));
        assert_eq!(parse_node_name("NODE12"), Some(12));
        assert_eq!(parse_node_name("node"), None);
        assert_eq!(parse_node_name("node0"), None);
        assert_eq!(parse_node_name("node-1"), None);
        assert_eq!(parse_node_name("Controller"), None);
        assert_eq!(node_name(4), "node4");
    }
}
