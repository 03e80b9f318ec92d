//! Secure mode at the node's door: which datagrams a node takes when it has a cluster secret.
//!
//! Every datagram must carry a right MAC for this node ([`crate::proto::auth`]): a member's
//! with a sequence number it has not sent before (per member, [`ReplayWindow`]), a
//! controller's within 30 s of this node's clock and only once ([`FreshSet`]). An unsigned
//! control request is taken only from an address of the allow-list, so that an operator can
//! let a course controller in; it is answered unsigned, as that controller expects. Anything
//! else is dropped. (Open mode has no guard; the check that a node message comes from its
//! member's address applies in both modes, in the driver.)

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::proto::auth::{self, AuthError, FreshSet, Key, ReplayWindow};
use crate::proto::{parse_node_name, Message, Request};

use super::raft::NodeId;

/// Addresses, or networks in CIDR notation (`10.0.0.0/24`, `::1`), allowed to send unsigned
/// control requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<(IpAddr, u8)>);

impl AllowList {
    /// Parses a comma- or space-separated list.
    pub fn parse(text: &str) -> Result<AllowList, String> {
        let mut nets = Vec::new();
        for item in text.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, prefix) = item.split_once('/').map_or((item, None), |(a, p)| (a, Some(p)));
            let ip: IpAddr =
                addr.parse().map_err(|_| format!("{item:?} is not an IP address or a network like 10.0.0.0/24"))?;
            let ip = ip.to_canonical();
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => p
                    .parse::<u8>()
                    .ok()
                    .filter(|&p| p <= max)
                    .ok_or_else(|| format!("{item:?}: the prefix length must be a number from 0 to {max}"))?,
            };
            nets.push((ip, prefix));
        }
        Ok(AllowList(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|&(net, prefix)| match (net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), prefix, 32) == masked(u32::from(ip).into(), prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), prefix, 128) == masked(u128::from(ip), prefix, 128)
            }
            _ => false,
        })
    }
}

fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let keep = u128::MAX << (width - prefix);
    bits & keep & if width == 128 { u128::MAX } else { (1u128 << width) - 1 }
}

impl std::fmt::Display for AllowList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = self.0.iter().map(|(ip, p)| format!("{ip}/{p}")).collect();
        f.write_str(&items.join(", "))
    }
}

/// A datagram the guard let in.
#[derive(Debug)]
pub struct Admitted {
    pub msg: Message,
    pub request: Request,
    /// Whether it was signed: replies to it are signed too.
    pub signed: bool,
}

/// Why the guard dropped a datagram.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Decode(#[from] crate::proto::DecodeError),
    #[error("an unsigned {0} from an address that is not allowed to send unsigned control requests")]
    Unsigned(Request),
    #[error("a signed {request} in the name of {sender:?}, which is not another member")]
    NotMember { request: Request, sender: String },
}

/// One node's secure-mode state.
#[derive(Debug)]
pub struct Guard {
    key: Key,
    name: String,
    me: NodeId,
    nodes: u32,
    allow: AllowList,
    windows: HashMap<NodeId, ReplayWindow>,
    fresh: FreshSet,
}

impl Guard {
    pub fn new(key: Key, me: NodeId, nodes: u32, allow: AllowList) -> Guard {
        Guard {
            key,
            name: crate::proto::node_name(me),
            me,
            nodes,
            allow,
            windows: HashMap::new(),
            fresh: FreshSet::new(),
        }
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Checks one datagram from `from`; `now_micros` is this machine's clock
    /// ([`auth::clock_micros`]).
    pub fn admit(&mut self, bytes: &[u8], from: SocketAddr, now_micros: u64) -> Result<Admitted, Refused> {
        let sealed = match auth::open(&self.key, bytes) {
            Ok(sealed) => sealed,
            Err(AuthError::Unsigned) => {
                let (msg, request) = Message::decode(bytes)?;
                if request.is_control() && self.allow.contains(from.ip()) {
                    return Ok(Admitted { msg, request, signed: false });
                }
                return Err(Refused::Unsigned(request));
            }
            Err(e) => return Err(e.into()),
        };
        if !sealed.to.eq_ignore_ascii_case(&self.name) {
            return Err(AuthError::NotForMe(sealed.to.to_string()).into());
        }
        let seq = sealed.seq;
        let (msg, request) = Message::decode(bytes)?;
        if request.is_control() {
            self.fresh.take(bytes, seq, now_micros)?;
        } else {
            let sender =
                msg.sender_name.as_deref().and_then(parse_node_name).filter(|&id| id != self.me && id <= self.nodes);
            let Some(sender) = sender else {
                let sender: String = msg.sender_name.as_deref().unwrap_or("nobody").chars().take(32).collect();
                return Err(Refused::NotMember { request, sender });
            };
            if !self.windows.entry(sender).or_default().take(seq) {
                return Err(AuthError::Replayed(seq).into());
            }
        }
        Ok(Admitted { msg, request, signed: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::derive(b"the cluster secret for these tests").unwrap()
    }

    #[test]
    fn allow_lists_take_addresses_and_networks() {
        let list = AllowList::parse("127.0.0.9, 10.1.0.0/16 ::1 fd00::/8").unwrap();
        for ip in ["127.0.0.9", "10.1.200.3", "::1", "fd12::5", "::ffff:127.0.0.9"] {
            assert!(list.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.1", "10.2.0.1", "::2", "fe80::1"] {
            assert!(!list.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(AllowList::parse("0.0.0.0/0").unwrap().contains("192.0.2.1".parse().unwrap()));
        assert!(AllowList::parse("").unwrap().is_empty());
        for bad in ["node1", "10.0.0.0/33", "10.0.0.0/x", "::/129"] {
            assert!(AllowList::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_signed_datagrams_for_this_node_are_taken_once() {
        let now = auth::clock_micros();
        let allow = AllowList::parse("127.0.0.9").unwrap();
        let mut guard = Guard::new(key(), 2, 3, allow);
        let stranger: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let allowed: SocketAddr = "127.0.0.9:40000".parse().unwrap();
        let vote = Message::new("node1", Request::VoteAck, Some(3)).encode();
        let signed = auth::seal(&key(), &vote, "node2", 7);
        let admitted = guard.admit(&signed, stranger, now).unwrap();
        assert!(admitted.signed && admitted.request == Request::VoteAck);
        assert!(matches!(guard.admit(&signed, stranger, now), Err(Refused::Auth(AuthError::Replayed(7)))));
        // For another node, unsigned, signed with another key, or in a stranger's name.
        let for_node3 = auth::seal(&key(), &vote, "node3", 8);
        assert!(matches!(guard.admit(&for_node3, stranger, now), Err(Refused::Auth(AuthError::NotForMe(_)))));
        assert!(matches!(guard.admit(&vote, allowed, now), Err(Refused::Unsigned(Request::VoteAck))));
        let other = Key::derive(b"another secret, sixteen bytes or more").unwrap();
        assert!(matches!(guard.admit(&auth::seal(&other, &vote, "node2", 9), stranger, now), Err(Refused::Auth(_))));
        let from_9 = Message::new("node9", Request::VoteAck, Some(3)).encode();
        let from_9 = auth::seal(&key(), &from_9, "node2", 10);
        assert!(matches!(guard.admit(&from_9, stranger, now), Err(Refused::NotMember { .. })));
        // Control requests: unsigned only from the allow-list; signed ones once, while fresh.
        let timeout = Message::new("Controller", Request::Timeout, None).encode();
        assert!(matches!(guard.admit(&timeout, stranger, now), Err(Refused::Unsigned(Request::Timeout))));
        let admitted = guard.admit(&timeout, allowed, now).unwrap();
        assert!(!admitted.signed, "answered unsigned, as a course controller expects");
        let signed = auth::seal(&key(), &timeout, "node2", now);
        assert!(guard.admit(&signed, stranger, now).unwrap().signed);
        assert!(matches!(guard.admit(&signed, stranger, now), Err(Refused::Auth(AuthError::Replayed(_)))));
        let old = now - 31_000_000;
        let stale = auth::seal(&key(), &timeout, "node2", old);
        assert!(matches!(guard.admit(&stale, stranger, now), Err(Refused::Auth(AuthError::Stale(_)))));
    }
}
