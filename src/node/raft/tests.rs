//! Unit tests of the core: each drives one node by hand and checks exactly what it asks the
//! driver to persist and send.

use super::*;
use serde_json::json;

const MS: Micros = 1000;

fn node(id: NodeId, n: u32) -> Raft {
    let peers = (1..=n).filter(|&p| p != id).collect();
    Raft::new(Config::new(id, peers), HardState::default(), Vec::new(), 0, 7)
}

/// Fires the election timer.
fn expire(raft: &mut Raft) -> Micros {
    let now = raft.next_deadline();
    raft.tick(now);
    now
}

/// Takes the node's `Ready` and reports its write done, as a driver does once it is on disk.
fn handled(raft: &mut Raft) -> Ready {
    let ready = raft.take_ready();
    if let Some(id) = ready.persist_id {
        raft.persisted(id);
    }
    ready
}

fn sent_to(ready: &Ready, to: NodeId) -> Vec<&Msg> {
    ready.messages.iter().filter(|(p, _)| *p == to).map(|(_, m)| m).collect()
}

/// An answer to AppendEntries; a refusal asks for the entry after `match_index`.
fn append_reply(term: u64, success: bool, match_index: u64, read_seq: u64) -> Msg {
    let conflict_index = if success { 0 } else { match_index + 1 };
    Msg::AppendReply { term, success, match_index, conflict_index, conflict_term: None, read_seq }
}

/// Makes node 1 of `n` leader in term 1 through a real pre-vote and vote round.
fn elect(n: u32) -> Raft {
    let mut raft = node(1, n);
    let now = expire(&mut raft);
    handled(&mut raft);
    for p in 2..=n {
        raft.step(now, p, Msg::PreVoteReply { term: 1, granted: true });
    }
    handled(&mut raft);
    for p in 2..=n {
        raft.step(now, p, Msg::VoteAck { term: 1 });
    }
    assert_eq!(raft.role(), Role::Leader);
    raft
}

#[test]
fn election_timeout_starts_a_prevote_that_changes_no_state() {
    let mut raft = node(1, 3);
    let deadline = raft.next_deadline();
    assert!((150 * MS..=300 * MS).contains(&deadline), "{deadline}");
    raft.tick(deadline - 1);
    assert!(!raft.is_prevoting());
    expire(&mut raft);
    let ready = handled(&mut raft);
    assert_eq!(raft.term(), 0);
    assert_eq!(raft.role(), Role::Follower);
    assert!(ready.hard_state.is_none(), "a pre-vote persists nothing");
    for p in [2, 3] {
        assert_eq!(sent_to(&ready, p), [&Msg::PreVote { term: 1, last_log_index: 0, last_log_term: 0 }]);
    }
}

#[test]
fn a_majority_of_prevotes_starts_a_real_election_and_persists_the_vote() {
    let mut raft = node(1, 5);
    let now = expire(&mut raft);
    handled(&mut raft);
    raft.step(now, 2, Msg::PreVoteReply { term: 1, granted: true });
    assert_eq!(raft.role(), Role::Follower, "two of five is not a majority");
    raft.step(now, 3, Msg::PreVoteReply { term: 1, granted: true });
    let ready = handled(&mut raft);
    assert_eq!(raft.role(), Role::Candidate);
    assert_eq!(ready.hard_state, Some(HardState { term: 1, voted_for: Some(1) }));
    assert_eq!(sent_to(&ready, 4), [&Msg::Vote { term: 1, last_log_index: 0, last_log_term: 0, force: false }]);
}

#[test]
fn a_new_leader_appends_a_noop_and_sends_it_to_everyone() {
    let mut raft = elect(3);
    let ready = handled(&mut raft);
    assert_eq!(ready.persist_from, Some(1));
    assert_eq!(raft.log().entries(), [LogEntry::noop(1)]);
    for p in [2, 3] {
        assert_eq!(
            sent_to(&ready, p),
            [&Msg::Append {
                term: 1,
                prev_log_index: 0,
                prev_log_term: 0,
                entries: vec![LogEntry::noop(1)],
                leader_commit: 0,
                read_seq: 0
            }]
        );
    }
    assert!(ready.events.contains(&Event::RoleChanged { role: Role::Leader, term: 1, leader: Some(1) }));
    // One acknowledgement makes a majority of three: the no-op commits.
    raft.step(0, 2, append_reply(1, true, 1, 0));
    assert_eq!(raft.commit_index(), 1);
}

#[test]
fn a_vote_is_granted_once_per_term_and_only_to_an_up_to_date_log() {
    let log = vec![LogEntry::noop(1), LogEntry::noop(2)];
    let mut raft = Raft::new(Config::new(1, vec![2, 3]), HardState { term: 2, voted_for: None }, log, 0, 1);
    // Stale log (last term 1): refused, silently.
    raft.step(0, 2, Msg::Vote { term: 3, last_log_index: 5, last_log_term: 1, force: false });
    let ready = handled(&mut raft);
    assert!(sent_to(&ready, 2).is_empty());
    assert_eq!(raft.term(), 3, "the newer term is adopted all the same");
    // Up to date: granted, and the vote is persisted in the same Ready as the ack.
    raft.step(0, 3, Msg::Vote { term: 3, last_log_index: 2, last_log_term: 2, force: false });
    let ready = handled(&mut raft);
    assert_eq!(ready.hard_state, Some(HardState { term: 3, voted_for: Some(3) }));
    assert_eq!(sent_to(&ready, 3), [&Msg::VoteAck { term: 3 }]);
    // A second candidate in the same term gets nothing.
    raft.step(0, 2, Msg::Vote { term: 3, last_log_index: 9, last_log_term: 2, force: false });
    assert!(sent_to(&handled(&mut raft), 2).is_empty());
}

#[test]
fn a_follower_hearing_from_its_leader_ignores_elections_unless_forced() {
    let mut raft = node(2, 3);
    raft.step(
        0,
        1,
        Msg::Append { term: 1, prev_log_index: 0, prev_log_term: 0, entries: vec![], leader_commit: 0, read_seq: 0 },
    );
    handled(&mut raft);
    raft.step(10 * MS, 3, Msg::PreVote { term: 2, last_log_index: 0, last_log_term: 0 });
    raft.step(10 * MS, 3, Msg::Vote { term: 2, last_log_index: 0, last_log_term: 0, force: false });
    assert!(handled(&mut raft).messages.is_empty());
    assert_eq!(raft.term(), 1);
    raft.step(10 * MS, 3, Msg::Vote { term: 2, last_log_index: 0, last_log_term: 0, force: true });
    let ready = handled(&mut raft);
    assert_eq!(sent_to(&ready, 3), [&Msg::VoteAck { term: 2 }]);
    // After the lease, a pre-vote is granted without changing the term.
    let mut raft = node(2, 3);
    raft.step(
        0,
        1,
        Msg::Append { term: 1, prev_log_index: 0, prev_log_term: 0, entries: vec![], leader_commit: 0, read_seq: 0 },
    );
    handled(&mut raft);
    raft.step(200 * MS, 3, Msg::PreVote { term: 2, last_log_index: 0, last_log_term: 0 });
    assert_eq!(sent_to(&handled(&mut raft), 3), [&Msg::PreVoteReply { term: 2, granted: true }]);
    assert_eq!(raft.term(), 1);
}

#[test]
fn timeout_now_elects_at_once_without_prevote() {
    let mut raft = node(3, 3);
    raft.timeout_now(5 * MS);
    let ready = handled(&mut raft);
    assert_eq!(raft.role(), Role::Candidate);
    assert_eq!(raft.term(), 1);
    assert_eq!(sent_to(&ready, 1), [&Msg::Vote { term: 1, last_log_index: 0, last_log_term: 0, force: true }]);
}

#[test]
fn a_stale_leader_learns_the_newer_term_from_the_reply() {
    let mut raft = Raft::new(Config::new(2, vec![1, 3]), HardState { term: 5, voted_for: None }, vec![], 0, 1);
    raft.step(
        0,
        1,
        Msg::Append { term: 3, prev_log_index: 0, prev_log_term: 0, entries: vec![], leader_commit: 0, read_seq: 0 },
    );
    let ready = handled(&mut raft);
    assert_eq!(
        sent_to(&ready, 1),
        [&Msg::AppendReply {
            term: 5,
            success: false,
            match_index: 0,
            conflict_index: 0,
            conflict_term: None,
            read_seq: 0
        }]
    );
    let mut leader = elect(3);
    leader.step(
        0,
        2,
        Msg::AppendReply {
            term: 5,
            success: false,
            match_index: 0,
            conflict_index: 0,
            conflict_term: None,
            read_seq: 0,
        },
    );
    assert_eq!((leader.role(), leader.term()), (Role::Follower, 5));
}

#[test]
fn a_conflicting_term_is_skipped_in_one_round_trip() {
    // Follower: terms [1,1,2,2,2]; leader sends prev=5 with term 3.
    let log = [1, 1, 2, 2, 2].iter().map(|&t| LogEntry::noop(t)).collect();
    let mut f = Raft::new(Config::new(2, vec![1, 3]), HardState { term: 3, voted_for: None }, log, 0, 1);
    f.step(
        0,
        1,
        Msg::Append { term: 3, prev_log_index: 5, prev_log_term: 3, entries: vec![], leader_commit: 0, read_seq: 0 },
    );
    let ready = handled(&mut f);
    assert_eq!(
        sent_to(&ready, 1),
        [&Msg::AppendReply {
            term: 3,
            success: false,
            match_index: 0,
            conflict_index: 3,
            conflict_term: Some(2),
            read_seq: 0
        }]
    );
    // Accepting a batch that overwrites the conflicting suffix persists from the first change.
    let entries = vec![LogEntry::noop(3), LogEntry::noop(3)];
    f.step(0, 1, Msg::Append { term: 3, prev_log_index: 2, prev_log_term: 1, entries, leader_commit: 4, read_seq: 0 });
    let ready = handled(&mut f);
    assert_eq!(ready.persist_from, Some(3));
    assert_eq!(f.last_index(), 4);
    assert_eq!(f.commit_index(), 4);
    assert_eq!(sent_to(&ready, 1), [&append_reply(3, true, 4, 0)]);
}

#[test]
fn proposals_are_batched_into_datagrams_under_the_limit() {
    let mut raft = elect(3);
    handled(&mut raft);
    for p in [2, 3] {
        raft.step(0, p, append_reply(1, true, 1, 0));
    }
    handled(&mut raft);
    let value = json!("v".repeat(1000));
    for i in 0..200 {
        raft.propose(Some(format!("k{i}")), value.clone()).unwrap();
    }
    let ready = handled(&mut raft);
    // 200 proposals made between two Readies leave as one batch per follower.
    assert_eq!(sent_to(&ready, 2).len(), 1);
    // A heartbeat resends from the last match in several datagrams, each under the limit.
    let now = raft.next_deadline();
    raft.tick(now);
    let ready = handled(&mut raft);
    let to2 = sent_to(&ready, 2);
    assert!(to2.len() > 1, "200 KB of entries need several datagrams");
    let mut next = 2;
    for msg in to2 {
        let Msg::Append { prev_log_index, entries, .. } = msg else { panic!("{msg:?}") };
        assert_eq!(*prev_log_index + 1, next);
        next += entries.len() as u64;
        assert!(msg.to_wire(1).encode().len() < crate::proto::MAX_DATAGRAM);
    }
    // An entry above the largest entry size is refused up front.
    let huge = json!("x".repeat(raft.config().max_entry_bytes));
    assert!(matches!(raft.propose(Some("big".into()), huge), Err(ProposeError::TooLarge { .. })));
}

/// Follower 2 of a 3-node leader has acknowledged everything up to `match_index`.
fn acked(raft: &mut Raft, now: Micros, match_index: u64) {
    let reply =
        Msg::AppendReply { term: 1, success: true, match_index, conflict_index: 0, conflict_term: None, read_seq: 0 };
    raft.step(now, 2, reply);
}

#[test]
fn an_entry_larger_than_a_batch_travels_alone_and_is_not_resent_at_every_heartbeat() {
    let mut raft = elect(3);
    handled(&mut raft);
    // Just before the first heartbeat.
    let sent_at = raft.next_deadline() - 1;
    acked(&mut raft, sent_at, 1);
    handled(&mut raft);
    let big = json!("x".repeat(1024 * 1024));
    let small = json!("s");
    let i = raft.propose(Some("a".into()), small.clone()).unwrap();
    let b = raft.propose(Some("big".into()), big.clone()).unwrap();
    raft.propose(Some("c".into()), small.clone()).unwrap();
    assert_eq!((i, b), (2, 3));
    let ready = handled(&mut raft);
    let batches: Vec<Vec<u64>> = sent_to(&ready, 2)
        .iter()
        .map(|m| match m {
            Msg::Append { prev_log_index, entries, .. } => {
                (1..=entries.len() as u64).map(|k| prev_log_index + k).collect()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    // One message per flush; the acknowledgements bring the rest.
    assert_eq!(batches, vec![vec![2]]);
    acked(&mut raft, sent_at, 2);
    let ready = handled(&mut raft);
    let [Msg::Append { entries, .. }] = sent_to(&ready, 2)[..] else { panic!("{:?}", ready.messages) };
    assert_eq!(entries.len(), 1, "the large entry goes alone");
    assert_eq!(entries[0].value, big.into());
    // Heartbeats while the follower takes in a megabyte: no copies of it.
    let heartbeat = raft.config().heartbeat;
    let grace = heartbeat * (1024 * 1024 / RESEND_GRACE_BYTES as u64);
    let mut now = sent_at;
    while now < sent_at + grace {
        now = raft.next_deadline();
        raft.tick(now);
        let ready = handled(&mut raft);
        for m in sent_to(&ready, 2) {
            let Msg::Append { prev_log_index, entries, .. } = m else { panic!("{m:?}") };
            if now < sent_at + grace {
                assert!(entries.is_empty(), "resent at {now} within the grace of {grace}");
                assert_eq!(*prev_log_index, 2, "a heartbeat anchored at the last match");
            } else {
                assert_eq!((*prev_log_index, entries.len()), (2, 1), "resent once the grace is over");
            }
        }
    }
    // Once acknowledged, the next entry follows at once and small entries are resent at the
    // next heartbeat again.
    acked(&mut raft, now, 3);
    let ready = handled(&mut raft);
    let [Msg::Append { prev_log_index: 3, entries, .. }] = sent_to(&ready, 2)[..] else { panic!() };
    assert_eq!(entries[0].value, small.into());
    let next = raft.next_deadline();
    raft.tick(next);
    let ready = handled(&mut raft);
    let [Msg::Append { prev_log_index: 3, entries, .. }] = sent_to(&ready, 2)[..] else { panic!() };
    assert_eq!(entries.len(), 1, "a small entry is resent at the next heartbeat");
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut raft = elect(3);
    handled(&mut raft);
    let elected = raft.next_deadline() - raft.config().heartbeat;
    let mut now = elected;
    while raft.role() == Role::Leader && now < 2_000 * MS {
        now = raft.next_deadline();
        raft.tick(now);
    }
    assert_eq!(raft.role(), Role::Follower);
    let after = now - elected;
    assert!(after <= raft.config().election_min, "stepped down {after} µs after winning");
}

#[test]
fn a_leader_follows_a_leader_of_a_newer_term() {
    let mut raft = elect(3);
    handled(&mut raft);
    raft.step(
        0,
        2,
        Msg::Append { term: 2, prev_log_index: 0, prev_log_term: 0, entries: vec![], leader_commit: 0, read_seq: 0 },
    );
    assert_eq!((raft.role(), raft.term(), raft.leader()), (Role::Follower, 2, Some(2)));
    let ready = handled(&mut raft);
    assert_eq!(sent_to(&ready, 2), [&append_reply(2, true, 0, 0)]);
}

#[test]
fn an_advanced_commit_index_alone_is_ready_work() {
    // The reply that commits an entry often sends nothing; the driver must still apply it
    // (and answer the client) at once, not with the next heartbeat.
    let mut raft = elect(3);
    handled(&mut raft);
    assert!(!raft.has_ready());
    raft.step(0, 2, append_reply(1, true, 1, 0));
    assert_eq!(raft.commit_index(), 1);
    assert!(raft.has_ready());
    let ready = handled(&mut raft);
    assert!(ready.messages.is_empty());
    assert_eq!(ready.commit_index, 1);
    assert!(!raft.has_ready());
}

#[test]
fn an_earlier_terms_entry_is_not_committed_by_counting_replicas() {
    // Figure 8 of the Raft paper: node 1 holds index 2 from term 2, never committed, and
    // leads again in term 4. Once nodes 2 and 3 store index 2 it sits on a majority, but a
    // node with a term-3 entry there could still win and overwrite it: it may only commit
    // together with an entry of the leader's own term (§5.4.2).
    let log = vec![LogEntry::noop(1), LogEntry { term: 2, key: Some("x".into()), value: json!(1).into() }];
    let peers = vec![2, 3, 4, 5];
    let mut raft = Raft::new(Config::new(1, peers), HardState { term: 3, voted_for: None }, log, 0, 1);
    raft.timeout_now(0);
    raft.step(0, 2, Msg::VoteAck { term: 4 });
    raft.step(0, 3, Msg::VoteAck { term: 4 });
    assert_eq!((raft.role(), raft.term()), (Role::Leader, 4));
    assert_eq!(raft.log().term(3), Some(4), "the new term's no-op");
    handled(&mut raft);
    for p in [2, 3] {
        raft.step(0, p, append_reply(4, true, 2, 0));
    }
    assert_eq!(raft.commit_index(), 0, "index 2 is on a majority but from an earlier term");
    for p in [2, 3] {
        raft.step(0, p, append_reply(4, true, 3, 0));
    }
    assert_eq!(raft.commit_index(), 3, "the no-op of term 4 commits index 2 with it");
}

#[test]
fn granting_a_prevote_restarts_the_voters_timer() {
    let mut raft = node(2, 5);
    let first = raft.next_deadline();
    let now = first - 1;
    raft.step(now, 1, Msg::PreVote { term: 1, last_log_index: 0, last_log_term: 0 });
    assert_eq!(sent_to(&handled(&mut raft), 1), [&Msg::PreVoteReply { term: 1, granted: true }]);
    assert!(raft.next_deadline() >= now + raft.config().election_min, "timer not restarted");
    // A node in its own pre-vote round grants too, but carries on with its round.
    let mut raft = node(2, 5);
    let now = expire(&mut raft);
    handled(&mut raft);
    let deadline = raft.next_deadline();
    raft.step(now + 1, 1, Msg::PreVote { term: 1, last_log_index: 0, last_log_term: 0 });
    assert_eq!(sent_to(&handled(&mut raft), 1), [&Msg::PreVoteReply { term: 1, granted: true }]);
    assert!(raft.is_prevoting());
    assert_eq!(raft.next_deadline(), deadline);
}

/// Leader of 3 in term 1 whose no-op (index 1) node 2 has acknowledged: committed.
fn leader_with_committed_noop() -> Raft {
    let mut raft = elect(3);
    handled(&mut raft);
    raft.step(0, 2, append_reply(1, true, 1, 0));
    assert_eq!(raft.commit_index(), 1);
    handled(&mut raft);
    raft
}

#[test]
fn a_read_waits_for_a_majority_to_answer_a_check_sent_after_it() {
    let mut raft = leader_with_committed_noop();
    raft.read_index(7).unwrap();
    let ready = handled(&mut raft);
    assert!(ready.reads.is_empty());
    // The check rides on heartbeats (nothing new to send), each anchored at the follower's
    // match: node 2 has index 1 (of term 1), node 3 nothing yet.
    let check = |prev: u64| Msg::Append {
        term: 1,
        prev_log_index: prev,
        prev_log_term: prev,
        entries: vec![],
        leader_commit: 1,
        read_seq: 1,
    };
    assert_eq!(sent_to(&ready, 2), [&check(1)]);
    assert_eq!(sent_to(&ready, 3), [&check(0)]);
    // An answer to an AppendEntries sent before the read proves nothing about after it.
    raft.step(0, 3, append_reply(1, true, 1, 0));
    assert!(handled(&mut raft).reads.is_empty());
    // An answer to the check (even a refusal of its entries) does: 2 of 3 with the leader.
    raft.step(0, 2, append_reply(1, false, 0, 1));
    assert_eq!(handled(&mut raft).reads, [ReadState { id: 7, index: 1 }]);
}

#[test]
fn reads_that_arrive_together_share_one_check() {
    let mut raft = leader_with_committed_noop();
    raft.propose(Some("k".into()), json!(1)).unwrap();
    raft.read_index(1).unwrap();
    raft.read_index(2).unwrap();
    let ready = handled(&mut raft);
    // Node 2 is caught up: the new entry carries the check. Node 3 gets a heartbeat.
    let to2 = sent_to(&ready, 2);
    assert_eq!(to2.len(), 1);
    assert!(matches!(to2[0], Msg::Append { entries, read_seq: 1, .. } if entries.len() == 1));
    assert_eq!(sent_to(&ready, 3).len(), 1);
    raft.step(0, 3, append_reply(1, true, 1, 1));
    // Both read the commit index of their arrival, 1: the new entry is not committed yet.
    assert_eq!(handled(&mut raft).reads, [ReadState { id: 1, index: 1 }, ReadState { id: 2, index: 1 }]);
    // A later read needs a later check; it reads the commit index of its own arrival.
    raft.step(0, 2, append_reply(1, true, 2, 1));
    assert_eq!(raft.commit_index(), 2);
    raft.read_index(3).unwrap();
    assert!(handled(&mut raft).reads.is_empty());
    raft.step(0, 2, append_reply(1, true, 2, 1));
    assert!(handled(&mut raft).reads.is_empty(), "answered a check sent before the read");
    raft.step(0, 2, append_reply(1, true, 2, 2));
    assert_eq!(handled(&mut raft).reads, [ReadState { id: 3, index: 2 }]);
}

#[test]
fn a_new_leaders_reads_wait_for_its_noop() {
    // Before its no-op commits, a leader's commit index may lag what earlier leaders
    // committed; its reads use the no-op's index, after all of that.
    let mut raft = elect(3);
    handled(&mut raft);
    assert_eq!(raft.commit_index(), 0);
    raft.read_index(1).unwrap();
    handled(&mut raft);
    raft.step(0, 2, append_reply(1, false, 0, 1));
    assert_eq!(handled(&mut raft).reads, [ReadState { id: 1, index: 1 }]);
    assert_eq!(raft.commit_index(), 0);
}

#[test]
fn only_a_leader_reads_and_a_deposed_one_drops_its_reads() {
    let mut follower = node(2, 3);
    assert_eq!(follower.read_index(1), Err(ProposeError::NotLeader { leader: None }));
    // Followers echo the check's number, whatever they answer.
    let check = |prev_log_index, read_seq| Msg::Append {
        term: 1,
        prev_log_index,
        prev_log_term: 0,
        entries: vec![],
        leader_commit: 0,
        read_seq,
    };
    follower.step(0, 1, check(0, 4));
    assert_eq!(sent_to(&handled(&mut follower), 1), [&append_reply(1, true, 0, 4)]);
    follower.step(0, 1, check(5, 6));
    let ready = handled(&mut follower);
    assert!(matches!(sent_to(&ready, 1)[..], [Msg::AppendReply { success: false, read_seq: 6, .. }]));

    let mut raft = leader_with_committed_noop();
    raft.read_index(9).unwrap();
    handled(&mut raft);
    raft.step(
        0,
        3,
        Msg::Append { term: 2, prev_log_index: 1, prev_log_term: 1, entries: vec![], leader_commit: 1, read_seq: 1 },
    );
    assert_eq!(raft.role(), Role::Follower);
    assert!(handled(&mut raft).reads.is_empty());
    raft.step(0, 2, append_reply(1, true, 1, 1));
    assert!(handled(&mut raft).reads.is_empty(), "a deposed leader confirmed a read");
}

#[test]
fn a_lone_node_reads_at_once() {
    let mut raft = node(1, 1);
    expire(&mut raft);
    assert_eq!(raft.role(), Role::Leader);
    handled(&mut raft);
    raft.read_index(1).unwrap();
    assert_eq!(handled(&mut raft).reads, [ReadState { id: 1, index: 1 }]);
}

/// The entries of the AppendEntries in `ready` for `to`, by index.
fn entries_to(ready: &Ready, to: NodeId) -> Vec<u64> {
    sent_to(ready, to)
        .into_iter()
        .flat_map(|m| match m {
            Msg::Append { prev_log_index, entries, .. } => (prev_log_index + 1..).take(entries.len()).collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn new_entries_go_at_once_to_the_followers_a_majority_needs_and_to_the_others_with_the_heartbeat() {
    // Voters 2 and 3 made node 1 leader of five: they are the first eager followers.
    let mut raft = elect(5);
    let noop = handled(&mut raft);
    for p in 2..=5 {
        assert_eq!(entries_to(&noop, p), [1], "the no-op tells node{p} who leads");
    }
    let now = raft.next_deadline() - raft.config().heartbeat;
    let index = raft.propose(None, json!("x")).unwrap();
    assert_eq!(index, 2);
    let ready = handled(&mut raft);
    assert_eq!((entries_to(&ready, 2), entries_to(&ready, 3)), (vec![2], vec![2]));
    assert!(sent_to(&ready, 4).is_empty() && sent_to(&ready, 5).is_empty(), "{:?}", ready.messages);
    raft.step(now, 2, append_reply(1, true, 2, 0));
    raft.step(now, 3, append_reply(1, true, 2, 0));
    assert_eq!(raft.commit_index(), 2, "the leader and two followers are a majority of five");

    // The heartbeat catches the others up.
    let now = raft.next_deadline();
    raft.tick(now);
    let beat = handled(&mut raft);
    assert_eq!((entries_to(&beat, 4), entries_to(&beat, 5)), (vec![1, 2], vec![1, 2]));
    assert!(entries_to(&beat, 2).is_empty() && entries_to(&beat, 3).is_empty());

    // Node 3 falls silent: at the next heartbeat a follower that answers takes its place.
    for p in [2, 4, 5] {
        raft.step(now, p, append_reply(1, true, 2, 0));
    }
    let now = raft.next_deadline();
    raft.tick(now);
    handled(&mut raft);
    raft.propose(None, json!("y")).unwrap();
    let ready = handled(&mut raft);
    let eager: Vec<NodeId> = (2..=5).filter(|&p| !entries_to(&ready, p).is_empty()).collect();
    assert_eq!(eager, [2, 4]);
    raft.step(now, 2, append_reply(1, true, 3, 0));
    raft.step(now, 4, append_reply(1, true, 3, 0));
    assert_eq!(raft.commit_index(), 3, "committed without node 3");
}

#[test]
fn without_thrift_new_entries_go_to_every_follower() {
    let mut cfg = Config::new(1, vec![2, 3, 4, 5]);
    cfg.thrifty = false;
    let mut raft = Raft::new(cfg, HardState::default(), Vec::new(), 0, 7);
    let now = expire(&mut raft);
    handled(&mut raft);
    for p in 2..=5 {
        raft.step(now, p, Msg::PreVoteReply { term: 1, granted: true });
    }
    handled(&mut raft);
    for p in 2..=5 {
        raft.step(now, p, Msg::VoteAck { term: 1 });
    }
    handled(&mut raft);
    raft.propose(None, json!("x")).unwrap();
    let ready = handled(&mut raft);
    for p in 2..=5 {
        assert_eq!(entries_to(&ready, p), [2]);
    }
}

#[test]
fn a_term_beyond_the_wire_limit_changes_nothing() {
    let mut leader = elect(3);
    handled(&mut leader);
    let heartbeat = |term| Msg::Append {
        term,
        prev_log_index: 0,
        prev_log_term: 0,
        entries: Vec::new(),
        leader_commit: 0,
        read_seq: 0,
    };
    for term in [MAX_WIRE_NUMBER + 1, u64::MAX] {
        leader.step(0, 2, heartbeat(term));
        leader.step(0, 3, Msg::Vote { term, last_log_index: 9, last_log_term: term, force: true });
        leader.step(0, 3, append_reply(term, false, 0, 0));
        assert_eq!((leader.role(), leader.term()), (Role::Leader, 1), "term {term}");
        assert!(!leader.has_ready() || handled(&mut leader).hard_state.is_none(), "nothing to persist");
    }
    // A node already at the limit (an older version took such a term) does not overflow: it
    // cannot campaign, and says so.
    let hard = HardState { term: MAX_WIRE_NUMBER, voted_for: None };
    let mut stuck = Raft::new(Config::new(1, vec![2, 3]), hard, Vec::new(), 0, 7);
    stuck.timeout_now(0);
    assert_eq!((stuck.role(), stuck.term()), (Role::Follower, MAX_WIRE_NUMBER));
}

#[test]
fn a_leader_counts_its_own_log_only_once_it_is_on_its_disk() {
    // Three nodes: the leader and one follower are a majority, but only with the leader's
    // own copy on its disk.
    let mut raft = elect(3);
    let ready = raft.take_ready();
    assert_eq!(ready.persist_from, Some(1));
    raft.step(0, 2, append_reply(1, true, 1, 0));
    assert_eq!(raft.commit_index(), 0, "committed before the leader's own write is done");
    raft.persisted(ready.persist_id.expect("a write to report"));
    assert_eq!(raft.commit_index(), 1);
    assert_eq!(raft.take_ready().commit_index, 1);

    // Five nodes: three followers are a majority without the leader.
    let mut raft = elect(5);
    raft.take_ready();
    for p in 2..=3 {
        raft.step(0, p, append_reply(1, true, 1, 0));
    }
    assert_eq!(raft.commit_index(), 0, "two followers and a leader whose write is not done");
    raft.step(0, 4, append_reply(1, true, 1, 0));
    assert_eq!(raft.commit_index(), 1, "three followers are a majority of five");
    assert_eq!(raft.take_ready().commit_index, 0, "not applied before it is on the node's own disk");
    assert_eq!(raft.durable_index(), 0);
}

#[test]
fn a_follower_applies_nothing_its_disk_does_not_hold() {
    let mut raft = node(2, 3);
    let entries = vec![LogEntry::noop(1), LogEntry { term: 1, key: None, value: json!("x").into() }];
    raft.step(
        0,
        1,
        Msg::Append { term: 1, prev_log_index: 0, prev_log_term: 0, entries, leader_commit: 2, read_seq: 0 },
    );
    assert_eq!(raft.commit_index(), 2);
    let ready = raft.take_ready();
    assert_eq!((ready.persist_from, ready.commit_index), (Some(1), 0));
    assert_eq!(sent_to(&ready, 1), [&append_reply(1, true, 2, 0)], "sent by the driver once the write is done");
    raft.persisted(ready.persist_id.expect("a write to report"));
    assert!(raft.has_ready());
    assert_eq!(raft.take_ready().commit_index, 2);
}

#[test]
fn a_write_whose_entries_were_replaced_meanwhile_leaves_only_what_came_before_them() {
    // Node 2 starts writing indexes 1-3 from the leader of term 1; before that write is done,
    // the leader of term 2 replaces index 2 on.
    let mut raft = node(2, 3);
    let x = |term, v: &str| LogEntry { term, key: None, value: json!(v).into() };
    let old = vec![LogEntry::noop(1), x(1, "a"), x(1, "b")];
    raft.step(
        0,
        1,
        Msg::Append { term: 1, prev_log_index: 0, prev_log_term: 0, entries: old, leader_commit: 1, read_seq: 0 },
    );
    let first = raft.take_ready().persist_id.expect("a write");
    let new = vec![x(2, "c")];
    raft.step(
        0,
        3,
        Msg::Append { term: 2, prev_log_index: 1, prev_log_term: 1, entries: new, leader_commit: 1, read_seq: 0 },
    );
    let second = raft.take_ready();
    assert_eq!(second.persist_from, Some(2));
    raft.persisted(first);
    assert_eq!(raft.durable_index(), 1, "the first write's index 2 and 3 are no longer this log");
    raft.persisted(second.persist_id.expect("a write"));
    assert_eq!(raft.durable_index(), 2);
    assert_eq!(raft.last_index(), 2);
}

/// Leader of 3 in term 1 holding the no-op and `n` more entries, all acknowledged by node 2
/// and committed; node 3 never answered.
fn leader_with_entries(n: u64) -> Raft {
    let mut raft = leader_with_committed_noop();
    for i in 0..n {
        raft.propose(None, json!(i)).unwrap();
    }
    handled(&mut raft);
    raft.step(0, 2, append_reply(1, true, n + 1, 0));
    assert_eq!(raft.commit_index(), n + 1);
    handled(&mut raft);
    raft
}

#[test]
fn compaction_drops_only_applicable_entries_and_asks_storage_for_a_rewrite() {
    let mut raft = leader_with_entries(9);
    assert!(!raft.compact(11), "not in the log");
    raft.propose(None, json!("new")).unwrap();
    assert!(!raft.compact(11), "not committed");
    assert!(raft.compact(8));
    assert!(!raft.compact(8) && !raft.compact(3), "at or before the base already");
    assert_eq!((raft.log().base(), raft.log().first_index(), raft.last_index()), ((8, 1), 9, 11));
    let ready = handled(&mut raft);
    assert_eq!(ready.rewrite, Some((8, 1)));
    assert_eq!(ready.persist_from, None, "the rewrite holds the new entry too");
    assert!(ready.persist_id.is_some());
    assert_eq!(raft.durable_index(), 11);
}

#[test]
fn a_follower_behind_the_base_is_sent_a_snapshot_then_the_entries_after_it() {
    let mut raft = leader_with_entries(9);
    assert!(raft.compact(8));
    handled(&mut raft);
    // Node 3 never answered: at the heartbeat it needs index 1, which is gone.
    let now = raft.next_deadline();
    raft.tick(now);
    let beat = handled(&mut raft);
    assert_eq!(beat.snapshots, [3]);
    assert_eq!(
        sent_to(&beat, 3),
        [&Msg::Append {
            term: 1,
            prev_log_index: 0,
            prev_log_term: 0,
            entries: vec![],
            leader_commit: 10,
            read_seq: raft.read_seq
        }],
        "a heartbeat anchored where every log matches"
    );
    // Its answer asks nothing more of the leader: the next heartbeat goes at its time. (Each
    // answer was answered at once, and the two exchanged heartbeats as fast as they could for
    // as long as the snapshot took, while the leader's other followers waited for theirs.)
    raft.step(now, 3, append_reply(1, true, 0, 0));
    assert_eq!(sent_to(&handled(&mut raft), 3), Vec::<&Msg>::new());
    // Asked again at every heartbeat until it is done; new entries do not go to it.
    raft.propose(None, json!("new")).unwrap();
    let ready = handled(&mut raft);
    assert!(entries_to(&ready, 3).is_empty());
    let now = raft.next_deadline();
    raft.tick(now);
    assert_eq!(handled(&mut raft).snapshots, [3]);

    // Node 3 installed a snapshot at 9: the leader sends what follows.
    raft.step(now, 3, append_reply(1, true, 9, 0));
    let ready = handled(&mut raft);
    assert!(ready.snapshots.is_empty());
    assert_eq!(entries_to(&ready, 3), [10, 11]);
    let now = raft.next_deadline();
    raft.tick(now);
    assert!(handled(&mut raft).snapshots.is_empty());
}

/// Node 3 of 3, a follower of node 1 in term 1, holding `terms` as its log.
fn follower_with(terms: &[u64]) -> Raft {
    let entries = terms.iter().map(|&t| LogEntry { term: t, key: None, value: json!("x").into() }).collect();
    let mut raft = Raft::new(Config::new(3, vec![1, 2]), HardState { term: 1, voted_for: None }, entries, 0, 7);
    raft.step(
        0,
        1,
        Msg::Append { term: 1, prev_log_index: 0, prev_log_term: 0, entries: vec![], leader_commit: 0, read_seq: 0 },
    );
    handled(&mut raft);
    raft
}

fn only_reply(ready: &Ready, to: NodeId) -> (bool, u64) {
    match sent_to(ready, to).as_slice() {
        [Msg::AppendReply { success, match_index, .. }] => (*success, *match_index),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_installed_snapshot_replaces_a_log_that_does_not_hold_its_entry() {
    // Index 3 of term 1 is missing here (the log ends at 2): the log starts after the snapshot.
    let mut raft = follower_with(&[1, 1]);
    assert_eq!(raft.snapshot_offered(0, 1, 1, 5), Offer::Load);
    raft.snapshot_installed(0, 1, 1, 5, 1);
    assert_eq!((raft.log().base(), raft.last_index(), raft.commit_index()), ((5, 1), 5, 5));
    let ready = handled(&mut raft);
    assert_eq!(ready.rewrite, Some((5, 1)));
    assert_eq!(only_reply(&ready, 1), (true, 5));
    assert_eq!(ready.commit_index, 5, "the state machine holds it");

    // A conflicting entry at the snapshot's index: everything from the old log goes.
    let mut raft = follower_with(&[1, 1, 1, 1]);
    raft.snapshot_installed(0, 1, 2, 3, 2);
    assert_eq!((raft.term(), raft.log().base(), raft.last_index()), (2, (3, 2), 3));
}

#[test]
fn an_installed_snapshot_keeps_the_entries_after_its_own() {
    let mut raft = follower_with(&[1, 1, 1, 1, 1]);
    raft.snapshot_installed(0, 1, 1, 3, 1);
    assert_eq!((raft.log().base(), raft.last_index()), ((3, 1), 5));
    let ready = handled(&mut raft);
    assert_eq!(only_reply(&ready, 1), (true, 3), "what follows is not known to match the leader's");
    // AppendEntries anchored before the base skip what the snapshot holds.
    let append = Msg::Append {
        term: 1,
        prev_log_index: 1,
        prev_log_term: 1,
        entries: (0..5).map(|_| LogEntry { term: 1, key: None, value: json!("x").into() }).collect(),
        leader_commit: 6,
        read_seq: 4,
    };
    raft.step(0, 1, append);
    assert_eq!((raft.last_index(), raft.commit_index()), (6, 6));
    assert_eq!(only_reply(&handled(&mut raft), 1), (true, 6));
    let behind =
        Msg::Append { term: 1, prev_log_index: 0, prev_log_term: 0, entries: vec![], leader_commit: 6, read_seq: 5 };
    raft.step(0, 1, behind);
    assert_eq!(only_reply(&handled(&mut raft), 1), (true, 3), "the base matches, whatever came before");
}

#[test]
fn a_snapshot_already_committed_here_or_from_an_old_leader_is_not_loaded() {
    let mut raft = follower_with(&[1, 1, 1]);
    raft.step(
        0,
        1,
        Msg::Append { term: 1, prev_log_index: 3, prev_log_term: 1, entries: vec![], leader_commit: 3, read_seq: 0 },
    );
    handled(&mut raft);
    assert_eq!(raft.snapshot_offered(0, 1, 1, 2), Offer::Covered);
    assert_eq!(only_reply(&handled(&mut raft), 1), (true, 3));
    raft.step(
        0,
        2,
        Msg::Append { term: 2, prev_log_index: 3, prev_log_term: 1, entries: vec![], leader_commit: 3, read_seq: 0 },
    );
    handled(&mut raft);
    assert_eq!(raft.snapshot_offered(0, 1, 1, 9), Offer::Stale);
    let ready = handled(&mut raft);
    assert!(matches!(sent_to(&ready, 1).as_slice(), [Msg::AppendReply { term: 2, success: false, .. }]));
    raft.snapshot_installed(0, 1, 1, 9, 1);
    assert_eq!((raft.log().base(), raft.last_index()), ((0, 0), 3), "an old leader's snapshot changes nothing");
}

#[test]
fn a_node_restarted_after_compaction_counts_its_base_as_committed_and_votes_by_it() {
    let log = Log::after(40, 3, vec![LogEntry { term: 4, key: None, value: json!("x").into() }]);
    let mut raft = Raft::restored(Config::new(1, vec![2, 3]), HardState { term: 4, voted_for: None }, log, 0, 7);
    assert_eq!((raft.commit_index(), raft.last_index()), (40, 41));
    assert_eq!(raft.take_ready().commit_index, 40);
    // A candidate with a shorter log of the same last term is refused; one as long is granted.
    raft.step(0, 2, Msg::Vote { term: 5, last_log_index: 40, last_log_term: 4, force: false });
    assert!(sent_to(&handled(&mut raft), 2).is_empty());
    raft.step(0, 3, Msg::Vote { term: 5, last_log_index: 41, last_log_term: 4, force: false });
    assert_eq!(sent_to(&handled(&mut raft), 3), [&Msg::VoteAck { term: 5 }]);
}
