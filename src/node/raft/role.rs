//! The role of a node and the transitions Raft allows between roles (§5.2, Figure 4).

use std::fmt;

/// What a node is doing in the current term.
///
/// A node running the PreVote phase (thesis §9.6) is still a `Follower`: pre-voting changes
/// neither its term nor its vote, and it keeps accepting a leader's heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

/// A role change Raft never makes, e.g. a follower becoming leader without an election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Raft never moves from {from} to {to}")]
pub struct InvalidTransition {
    pub from: Role,
    pub to: Role,
}

impl Role {
    /// The one place role changes are checked.
    ///
    /// - a follower stays a follower (new term or leader) or starts an election;
    /// - a candidate starts another election, wins, or learns of a leader or a newer term;
    /// - a leader only ever steps down.
    pub fn transition(self, to: Role) -> Result<Role, InvalidTransition> {
        use Role::*;
        match (self, to) {
            (Follower, Follower) | (Follower, Candidate) => Ok(to),
            (Candidate, Candidate) | (Candidate, Leader) | (Candidate, Follower) => Ok(to),
            (Leader, Follower) => Ok(to),
            (Follower, Leader) | (Leader, Candidate) | (Leader, Leader) => Err(InvalidTransition { from: self, to }),
        }
    }
}

impl Role {
    /// The protocol's name of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "FOLLOWER",
            Role::Candidate => "CANDIDATE",
            Role::Leader => "LEADER",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Role::*;
    use super::*;

    #[test]
    fn display_uses_protocol_names() {
        assert_eq!(Follower.to_string(), "FOLLOWER");
        assert_eq!(Candidate.to_string(), "CANDIDATE");
        assert_eq!(Leader.to_string(), "LEADER");
    }

    #[test]
    fn transitions_raft_never_makes_are_refused() {
        assert_eq!(Follower.transition(Leader), Err(InvalidTransition { from: Follower, to: Leader }));
        assert!(Leader.transition(Candidate).is_err());
        assert!(Leader.transition(Leader).is_err());
        assert_eq!(Follower.transition(Candidate), Ok(Candidate));
        assert_eq!(Candidate.transition(Leader), Ok(Leader));
        assert_eq!(Candidate.transition(Candidate), Ok(Candidate));
        assert_eq!(Leader.transition(Follower), Ok(Follower));
    }
}
