//! A linearizability checker for registers: the algorithm of Wing and Gong with Lowe's cache of
//! visited configurations, the one Porcupine and Knossos use, checked key by key (a history of
//! independent registers is linearizable when each register's is: P-compositionality).
//!
//! Each operation has the time it was called and the time it returned. A write whose outcome is
//! unknown (the client got no answer) returns "never": it may take effect at any point after its
//! call, or not at all. Reads without an answer are left out, as they change nothing.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

/// One operation on one register, as a client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub kind: Kind,
    /// Microseconds since the history began.
    pub call: u64,
    /// None: no answer came, the operation may or may not have taken effect.
    pub ret: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// Set the register; acknowledged, or of unknown outcome.
    Write(String),
    /// The register held this (None: never written).
    Read(Option<String>),
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub key: String,
    /// The most operations of that key that could be put in an order respecting the register
    /// and real time, in that order; the rest could not follow them.
    pub longest_prefix: Vec<Op>,
    /// Every operation on the key, by call time.
    pub ops: Vec<Op>,
}

/// Checks every register's history; the first violation found, by key.
pub fn check(history: &[Op]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        if let Err(prefix) = check_register(&ops) {
            let mut ops: Vec<Op> = ops.into_iter().cloned().collect();
            ops.sort_by_key(|op| op.call);
            return Err(Violation { key: key.to_string(), longest_prefix: prefix, ops });
        }
    }
    Ok(())
}

/// A call or a return in the doubly linked list of events.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// The index of the op's return event, for a call.
    ret: usize,
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;

/// One register: Ok, or the longest sequence of ops that could be linearized.
fn check_register(ops: &[&Op]) -> Result<(), Vec<Op>> {
    // Events by time; at equal times calls first, so ops that touch are taken as concurrent.
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, false, i));
        order.push((op.ret.unwrap_or(u64::MAX), true, i));
    }
    order.sort();
    // Event 0 is the list's head; events 1.. follow `order`.
    let mut events = vec![Event { op: NONE, is_call: false, ret: NONE, prev: NONE, next: NONE }];
    let mut return_of = vec![NONE; ops.len()];
    for (position, &(_, is_return, op)) in order.iter().enumerate() {
        let index = position + 1;
        events.push(Event { op, is_call: !is_return, ret: NONE, prev: index - 1, next: NONE });
        events[index - 1].next = index;
        if is_return {
            return_of[op] = index;
        }
    }
    for event in events.iter_mut().skip(1) {
        if event.is_call {
            event.ret = return_of[event.op];
        }
    }
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Option<String> = None;
    let mut cache: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    // (call event, state before it)
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut entry = events[0].next;
    while events[0].next != NONE {
        if entry == NONE {
            // Only unknown writes' returns can be left at the end: they never have to happen.
            break;
        }
        let event = events[entry];
        if event.is_call {
            let op = ops[event.op];
            let next_state = match &op.kind {
                Kind::Write(value) => Some(Some(value.clone())),
                Kind::Read(value) => (*value == state).then(|| state.clone()),
            };
            if let Some(next_state) = next_state {
                let mut bits = linearized.clone();
                bits[event.op / 64] |= 1 << (event.op % 64);
                if cache.insert((bits.clone(), next_state.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, next_state)));
                    linearized = bits;
                    lift(&mut events, entry);
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|&(e, _)| events[e].op).collect();
                    }
                    entry = events[0].next;
                    continue;
                }
            }
            entry = event.next;
        } else if ops[event.op].ret.is_none() {
            // An unknown write's "return" comes after every real event: reaching it means
            // everything else is linearized, and this write need not have happened.
            break;
        } else {
            // An op returned before any order could take it: undo the last choice.
            let Some((call, before)) = stack.pop() else {
                return Err(longest.into_iter().map(|i| ops[i].clone()).collect());
            };
            state = before;
            let op = events[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut events, call);
            entry = events[call].next;
        }
    }
    Ok(())
}

/// Takes a call and its return out of the list.
fn lift(events: &mut [Event], call: usize) {
    let ret = events[call].ret;
    for e in [call, ret] {
        let (prev, next) = (events[e].prev, events[e].next);
        events[prev].next = next;
        if next != NONE {
            events[next].prev = prev;
        }
    }
}

/// Puts them back (in the reverse order of [`lift`]).
fn unlift(events: &mut [Event], call: usize) {
    let ret = events[call].ret;
    for e in [ret, call] {
        let (prev, next) = (events[e].prev, events[e].next);
        events[prev].next = e;
        if next != NONE {
            events[next].prev = e;
        }
    }
}
