//! The simulated network: datagrams in flight, partitions, loss, duplication and delay.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use labctl::node::raft::{Micros, Msg, NodeId, Rng, DEFAULT_MAX_ENTRY_BYTES};
use labctl::proto::fragment::{Fragmenter, Limits, Reassembler};
use labctl::proto::{node_name, Message, MAX_DATAGRAM};

use super::MS;

/// A datagram in flight, ordered by delivery time (then by send order).
pub struct Delivery {
    pub at: Micros,
    seq: u64,
    pub from: NodeId,
    pub to: NodeId,
    pub msg: Msg,
}

impl PartialEq for Delivery {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Delivery {}
impl PartialOrd for Delivery {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delivery {
    // Reversed, so that the BinaryHeap pops the earliest delivery first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Counters of what the network did.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
    /// Log entries carried by AppendEntries datagrams.
    pub entries_sent: u64,
}

/// Links between nodes and the datagrams on them. Two nodes talk when they are in the same
/// group and the link is not blocked in that direction; the check is made both when a
/// datagram is sent and when it arrives, so a partition also cuts what is in flight.
pub struct Network {
    rng: Rng,
    queue: BinaryHeap<Delivery>,
    seq: u64,
    group: BTreeMap<NodeId, u64>,
    next_group: u64,
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Each copy of a datagram takes a uniformly random delay in this range, so datagrams
    /// overtake each other when the range is wide.
    pub delay: (Micros, Micros),
    /// The share of datagrams sent through the real wire encoding, checking that each fits
    /// in one datagram and decodes to the same message (1.0: all of them).
    pub wire_check: f64,
    pub stats: NetStats,
}

impl Network {
    pub fn new(ids: &[NodeId], seed: u64) -> Network {
        Network {
            rng: Rng::new(seed ^ 0x6E65_7477_6F72_6B00),
            queue: BinaryHeap::new(),
            seq: 0,
            group: ids.iter().map(|&id| (id, 0)).collect(),
            next_group: 1,
            blocked: BTreeSet::new(),
            loss: 0.0,
            duplicate: 0.0,
            delay: (MS, 5 * MS),
            wire_check: 1.0,
            stats: NetStats::default(),
        }
    }

    pub fn connected(&self, from: NodeId, to: NodeId) -> bool {
        self.group.get(&from) == self.group.get(&to) && !self.blocked.contains(&(from, to))
    }

    /// Splits the nodes into the given groups; a node not named is cut off alone.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        let ids: Vec<NodeId> = self.group.keys().copied().collect();
        for id in ids {
            self.isolate(id);
        }
        for group in groups {
            let g = self.fresh_group();
            for id in group.iter() {
                self.group.insert(*id, g);
            }
        }
    }

    /// Cuts one node off from all others.
    pub fn isolate(&mut self, id: NodeId) {
        let g = self.fresh_group();
        self.group.insert(id, g);
    }

    /// Joins a node to the main group (the one `heal` puts everyone in).
    pub fn reconnect(&mut self, id: NodeId) {
        self.group.insert(id, 0);
    }

    /// Drops everything from `from` to `to`, but not the other way round.
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Every node can reach every other node again.
    pub fn heal(&mut self) {
        self.group.values_mut().for_each(|g| *g = 0);
        self.blocked.clear();
    }

    /// Who can reach whom, for failure reports.
    pub fn describe(&self) -> String {
        let mut groups: BTreeMap<u64, Vec<NodeId>> = BTreeMap::new();
        for (&id, &g) in &self.group {
            groups.entry(g).or_default().push(id);
        }
        let groups: Vec<String> = groups.values().map(|ids| format!("{ids:?}")).collect();
        format!(
            "groups {} blocked {:?} loss {} duplicate {} delay {}..{}us",
            groups.join(" "),
            self.blocked,
            self.loss,
            self.duplicate,
            self.delay.0,
            self.delay.1
        )
    }

    fn fresh_group(&mut self) -> u64 {
        self.next_group += 1;
        self.next_group
    }

    /// Puts a datagram on the wire at `now`. Errors when the message cannot travel as a
    /// datagram of the product's wire protocol.
    pub fn send(&mut self, now: Micros, from: NodeId, to: NodeId, msg: Msg) -> Result<(), String> {
        self.stats.sent += 1;
        if let Msg::Append { entries, .. } = &msg {
            self.stats.entries_sent += entries.len() as u64;
        }
        let msg = if self.rng.chance(self.wire_check) { through_the_wire(from, &msg, &mut self.rng)? } else { msg };
        if !self.connected(from, to) || self.rng.chance(self.loss) {
            self.stats.dropped += 1;
            return Ok(());
        }
        let copies = if self.rng.chance(self.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let at = now + self.rng.range(self.delay.0, self.delay.1 + 1);
            self.seq += 1;
            self.queue.push(Delivery { at, seq: self.seq, from, to, msg: msg.clone() });
        }
        Ok(())
    }

    /// When the next datagram arrives.
    pub fn next_at(&self) -> Option<Micros> {
        self.queue.peek().map(|d| d.at)
    }

    /// Takes the next datagram; `None` when it was cut off on the way.
    pub fn pop(&mut self) -> Option<Delivery> {
        let d = self.queue.pop()?;
        if self.connected(d.from, d.to) {
            self.stats.delivered += 1;
            Some(d)
        } else {
            self.stats.dropped += 1;
            None
        }
    }
}

/// The largest message a node accepts: the largest entry and room for the rest.
const MAX_MESSAGE: usize = DEFAULT_MAX_ENTRY_BYTES + 64 * 1024;

/// Encodes `msg` as the datagram `from` would send and decodes it as a receiver would; a
/// message larger than a datagram travels as fragments, in any order.
fn through_the_wire(from: NodeId, msg: &Msg, rng: &mut Rng) -> Result<Msg, String> {
    let mut bytes = msg.to_wire(from).encode();
    if bytes.len() > MAX_DATAGRAM {
        if !matches!(msg, Msg::Append { entries, .. } if entries.len() == 1) {
            return Err(format!(
                "node{from} sent a {:?} of {} bytes that is not one large entry alone",
                msg.request(),
                bytes.len()
            ));
        }
        let mut pieces = Fragmenter::new(node_name(from), rng.next_u64()).split(Some(msg.term()), &bytes);
        for i in (1..pieces.len()).rev() {
            pieces.swap(i, rng.range(0, i as u64 + 1) as usize);
        }
        let mut reassembler = Reassembler::new(Limits::for_messages_of(MAX_MESSAGE));
        let now = std::time::Instant::now();
        let mut whole = None;
        for piece in &pieces {
            if piece.len() > MAX_DATAGRAM {
                return Err(format!("a fragment of {} bytes is over the datagram limit", piece.len()));
            }
            let (fragment, _) = Message::decode(piece).map_err(|e| format!("a fragment does not decode: {e}"))?;
            whole = reassembler.accept(&fragment, now).map_err(|e| format!("a fragment is refused: {e}"))?;
        }
        bytes = whole.ok_or("the fragments did not make the message")?.bytes;
    }
    let (wire, request) = Message::decode_with_limit(&bytes, MAX_MESSAGE)
        .map_err(|e| format!("node{from} sent a datagram that does not decode: {e}"))?;
    let (sender, back) =
        Msg::from_wire(wire, request).map_err(|e| format!("node{from} sent an unreadable {request}: {e}"))?;
    if sender != from || back != *msg {
        return Err(format!("node{from}'s {msg:?} arrived as {back:?} from node{sender}"));
    }
    Ok(back)
}
