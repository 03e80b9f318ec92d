//! The simulated network: datagrams in flight, partitions, loss, duplication and delay.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use labctl::node::raft::{Micros, NodeId, Rng};
use labctl::proto::MAX_DATAGRAM;

use super::MS;

/// A datagram in flight, ordered by delivery time (then by send order).
pub struct Delivery {
    pub at: Micros,
    seq: u64,
    pub from: NodeId,
    pub to: NodeId,
    pub bytes: Vec<u8>,
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

    /// Puts a datagram on the wire at `now`. Errors when it is larger than a datagram of the
    /// product's wire protocol may be.
    pub fn send(&mut self, now: Micros, from: NodeId, to: NodeId, bytes: Vec<u8>) -> Result<(), String> {
        self.stats.sent += 1;
        if bytes.len() > MAX_DATAGRAM {
            return Err(format!("node{from} sent node{to} a datagram of {} bytes", bytes.len()));
        }
        if !self.connected(from, to) || self.rng.chance(self.loss) {
            self.stats.dropped += 1;
            return Ok(());
        }
        if self.rng.chance(self.duplicate) {
            self.deliver(now, from, to, bytes.clone());
        }
        self.deliver(now, from, to, bytes);
        Ok(())
    }

    fn deliver(&mut self, now: Micros, from: NodeId, to: NodeId, bytes: Vec<u8>) {
        let at = now + self.rng.range(self.delay.0, self.delay.1 + 1);
        self.seq += 1;
        self.queue.push(Delivery { at, seq: self.seq, from, to, bytes });
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
