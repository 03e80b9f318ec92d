//! Where the leader is, and writes to it that survive leader changes.
//!
//! The [`LeaderBook`] learns the leader three ways: the leader's own announcement
//! (`POST /leader` after each election it wins), a follower's `307` redirect naming it, and — when
//! nothing is known — asking every node's `/status`. A request to a leader that fails (no answer,
//! `503`) makes the book forget that leader, so the next attempt asks the nodes again.
//!
//! Whatever the source, the book takes only a configured member at that member's configured
//! HTTP address: the manager never sends data anywhere else, whoever claims to lead.
//!
//! [`LeaderClient::post`] sends one write until the cluster gives a final answer: a 2xx, or a 4xx
//! that no retry can change. Everything else (no leader, a dead leader, `5xx`, `408`, `429`,
//! timeouts) is retried with backoff, with the same `Idempotency-Key`, so a write the old leader
//! committed before it died is not applied twice.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};

use super::{pause, stopping, Stats};

/// The first wait before a retry; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(25);
const MAX_RETRY: Duration = Duration::from_secs(2);
/// Redirects followed in a row before waiting.
const MAX_HOPS: u32 = 5;
/// A write may wait this long on the leader (the node itself gives up after 15 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A node's `/status` answers fast or not at all.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// At most one warning about failing requests per this interval; the rest are counted.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// A leader: what it announces and what the nodes' `/status` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    pub name: String,
    pub term: u64,
    /// `host:port` of its HTTP API.
    pub http: String,
}

#[derive(Debug, Default)]
struct Book {
    leader: Option<Leader>,
    /// The highest term heard of.
    term: u64,
    /// Bumped on every change, so that a failed request forgets only the leader it used.
    version: u64,
    /// The leader last logged as found, and the one last logged as gone: while a dead leader's
    /// followers still name it, it is found and forgotten many times, and logged once.
    logged_found: Option<Leader>,
    logged_gone: Option<Leader>,
}

impl Book {
    fn set(&mut self, leader: Leader, source: &str) {
        if self.logged_found.as_ref() != Some(&leader) {
            log::info!("manager: leader is {} (term {}) at {}, from {source}", leader.name, leader.term, leader.http);
            self.logged_found = Some(leader.clone());
        }
        self.leader = Some(leader);
        self.version += 1;
    }
}

/// The manager's knowledge of the leader, shared by every thread.
#[derive(Debug, Default)]
pub struct LeaderBook {
    /// `host:port` of every member's HTTP API, node1 first.
    members: Vec<String>,
    book: Mutex<Book>,
    /// Held while asking the nodes, so that many workers without a leader ask once.
    discovering: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LeaderBook {
    /// A book that takes only these members (`host:port` of each one's HTTP API, node1 first).
    pub fn new(members: Vec<String>) -> LeaderBook {
        LeaderBook { members, ..LeaderBook::default() }
    }

    /// The configured HTTP address of member `name` (`node3`), if it is one.
    pub fn member(&self, name: &str) -> Option<&str> {
        let id = crate::proto::parse_node_name(name)?;
        self.members.get(id as usize - 1).map(String::as_str)
    }

    /// Why `leader` cannot be taken, if it cannot: it is not a member, it is not where the
    /// configuration puts that member, or its term is beyond any a cluster reaches.
    pub fn refusal(&self, leader: &Leader) -> Option<String> {
        let Some(http) = self.member(&leader.name) else {
            return Some(format!("{:?} is not a member of this cluster ({} nodes)", leader.name, self.members.len()));
        };
        if http != leader.http {
            return Some(format!("{} lives at {http}, not at {:?}", leader.name, leader.http));
        }
        if leader.term > crate::proto::MAX_WIRE_NUMBER {
            return Some(format!("term {} is beyond any a cluster reaches", leader.term));
        }
        None
    }

    /// Records `leader` unless a higher term is known; returns whether it was taken, and the
    /// leader known afterwards. A leader [`LeaderBook::refusal`] refuses is not taken.
    pub fn announce(&self, leader: Leader, source: &str) -> (bool, Option<Leader>) {
        if let Some(why) = self.refusal(&leader) {
            log::warn!("manager: ignored a leader from {source}: {why}");
            return (false, self.current().0);
        }
        let mut book = lock(&self.book);
        if leader.term < book.term {
            log::info!(
                "manager: ignored {} for term {} from {source}: term {} is known",
                leader.name,
                leader.term,
                book.term
            );
            return (false, book.leader.clone());
        }
        if book.leader.as_ref() != Some(&leader) {
            book.term = leader.term;
            book.set(leader, source);
        }
        (true, book.leader.clone())
    }

    /// A follower redirected a write to `http`; false (and nothing learned) when that is not a
    /// member's address. The member is named by the configuration, whatever the redirect says.
    pub fn redirected(&self, http: &str) -> bool {
        let Some(id) = self.members.iter().position(|m| m == http) else { return false };
        let mut book = lock(&self.book);
        if book.leader.as_ref().is_some_and(|l| l.http == http) {
            return true;
        }
        let leader = Leader { name: crate::proto::node_name(id as u32 + 1), term: book.term, http: http.to_string() };
        book.set(leader, "a redirect");
        true
    }

    /// Forgets the leader if it is still the one of `version`.
    pub fn forget(&self, version: u64) {
        let mut book = lock(&self.book);
        if book.version == version {
            if let Some(old) = book.leader.take() {
                if book.logged_gone.as_ref() != Some(&old) {
                    log::info!("manager: {} at {} does not answer as leader", old.name, old.http);
                    book.logged_gone = Some(old);
                }
            }
            book.version += 1;
        }
    }

    /// The known leader and the book's version.
    pub fn current(&self) -> (Option<Leader>, u64) {
        let book = lock(&self.book);
        (book.leader.clone(), book.version)
    }

    /// The highest term heard of.
    pub fn term(&self) -> u64 {
        lock(&self.book).term
    }
}

/// The final answer to a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// 2xx from the leader.
    Accepted { status: u16, body: String },
    /// A 4xx that the same request can never turn into a success.
    Rejected { status: u16, body: String },
    /// The manager is stopping; the write may or may not have been applied.
    Stopped,
}

/// What one attempt gave.
enum Attempt {
    Final(Delivered),
    Redirect {
        http: String,
    },
    /// Try again after a pause; the reason is logged.
    Retry {
        reason: String,
        leader_failed: bool,
    },
}

/// Sends writes to the leader; shared by the consumer's workers and the FTP sync.
pub struct LeaderClient {
    book: Arc<LeaderBook>,
    /// `host:port` of every node's HTTP API.
    nodes: Vec<String>,
    /// `https` or `http`: how the nodes are reached. A redirect to another scheme is not followed.
    scheme: &'static str,
    agent: ureq::Agent,
    status_agent: ureq::Agent,
    stats: Arc<Stats>,
    stop: Receiver<()>,
    /// When the last warning about a failed request was logged, and how many were skipped since.
    warned: Mutex<(Option<Instant>, u64)>,
    /// The `Authorization` sent with every request, when the nodes require an account.
    authorization: Option<String>,
}

impl LeaderClient {
    /// `connections`: requests that may be in flight at once (kept alive between requests).
    pub fn new(
        book: Arc<LeaderBook>,
        nodes: Vec<String>,
        scheme: &'static str,
        tls: &crate::tls::ClientTls,
        connections: usize,
        stats: Arc<Stats>,
        stop: Receiver<()>,
    ) -> LeaderClient {
        let agent = |timeout| -> ureq::Agent {
            ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .http_status_as_error(false)
                .max_redirects(0)
                .max_idle_connections(connections * 2 + 8)
                .max_idle_connections_per_host(connections + 2)
                .tls_config(tls.config())
                .build()
                .new_agent()
        };
        LeaderClient {
            book,
            nodes,
            scheme,
            agent: agent(REQUEST_TIMEOUT),
            status_agent: agent(STATUS_TIMEOUT),
            stats,
            stop,
            warned: Mutex::new((None, 0)),
            authorization: None,
        }
    }

    /// Sends `authorization` (`Basic …`), when given, with every write.
    pub fn with_authorization(mut self, authorization: Option<String>) -> LeaderClient {
        self.authorization = authorization;
        self
    }

    pub fn book(&self) -> &LeaderBook {
        &self.book
    }

    /// POSTs `body` to `path` on the leader until it is accepted or can never be; `what` names
    /// the write in logs.
    pub fn post(&self, path: &str, content_type: &str, body: &[u8], key: &str, what: &str) -> Delivered {
        let mut wait = FIRST_RETRY;
        let mut hops = 0;
        loop {
            if stopping(&self.stop) {
                return Delivered::Stopped;
            }
            let (mut leader, mut version) = self.book.current();
            if leader.is_none() {
                self.discover();
                (leader, version) = self.book.current();
            }
            let attempt = match leader {
                Some(leader) => self.attempt(&leader.http, path, content_type, body, key),
                None => Attempt::Retry { reason: "no node names a leader".into(), leader_failed: false },
            };
            match attempt {
                Attempt::Final(delivered) => return delivered,
                Attempt::Redirect { http } if !self.book.redirected(&http) => {
                    self.book.forget(version);
                    self.warn(&format!("{what}: redirected to {http}, which is no member's address: not followed"));
                }
                Attempt::Redirect { .. } if hops < MAX_HOPS => {
                    hops += 1;
                    continue;
                }
                Attempt::Redirect { .. } => {
                    self.warn(&format!("{what}: redirected {hops} times in a row; waiting"));
                }
                Attempt::Retry { reason, leader_failed } => {
                    if leader_failed {
                        self.book.forget(version);
                    }
                    self.warn(&format!("{what}: {reason}; retrying"));
                }
            }
            Stats::add(&self.stats.retried, 1);
            hops = 0;
            if pause(&self.stop, wait) {
                return Delivered::Stopped;
            }
            wait = (wait * 2).min(MAX_RETRY);
        }
    }

    fn attempt(&self, http: &str, path: &str, content_type: &str, body: &[u8], key: &str) -> Attempt {
        let url = format!("{}://{http}{path}", self.scheme);
        let mut request = self.agent.post(&url).header("Idempotency-Key", key).header("Content-Type", content_type);
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        let sent = request.send(body);
        let mut response = match sent {
            Ok(r) => r,
            Err(e) if crate::tls::is_tls_error(&e) => {
                let reason = format!(
                    "{url}: TLS refused: {e} (the node's certificate must chain to the CA file given with --tls-ca \
                     and name the node's host)"
                );
                return Attempt::Retry { reason, leader_failed: true };
            }
            Err(e) => return Attempt::Retry { reason: format!("{url}: {e}"), leader_failed: true },
        };
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let location = header("location");
        // Read the whole answer so that the connection can serve the next request.
        let text = response.body_mut().read_to_string().unwrap_or_default();
        match status {
            200..=299 => Attempt::Final(Delivered::Accepted { status, body: text }),
            301 | 302 | 303 | 307 | 308 => match location.as_deref().and_then(|l| authority(l, self.scheme)) {
                Some(target) => Attempt::Redirect { http: target },
                None => Attempt::Retry {
                    reason: format!("{url} redirected to {location:?}, not an {}:// URL", self.scheme),
                    leader_failed: true,
                },
            },
            // The manager's own account is refused: no item can be stored until the operator
            // fixes it, so nothing is dead-lettered meanwhile.
            401 | 403 => Attempt::Retry {
                reason: format!(
                    "{url} refused the manager's credentials ({status}): set LABCTL_MANAGER_USER and \
                     LABCTL_MANAGER_PASSWORD to an account of role member (admin for uploads); {}",
                    text.trim()
                ),
                leader_failed: false,
            },
            _ if retryable(status) => Attempt::Retry {
                reason: format!("{url} answered {status}: {}", text.trim()),
                // Whoever answered 503 cannot take writes now; ask the nodes again.
                leader_failed: status == 503,
            },
            _ => Attempt::Final(Delivered::Rejected { status, body: text }),
        }
    }

    /// Asks every node's `/status` at once and records the leader of the highest term named.
    fn discover(&self) {
        let _one_at_a_time = lock(&self.book.discovering);
        // Another thread may have found the leader while this one waited.
        if self.book.current().0.is_some() {
            return;
        }
        let answers: Vec<Leader> = std::thread::scope(|s| {
            let asks: Vec<_> = self.nodes.iter().map(|node| s.spawn(move || self.leader_named_by(node))).collect();
            asks.into_iter().filter_map(|ask| ask.join().ok().flatten()).collect()
        });
        if let Some(best) = answers.into_iter().max_by_key(|l| l.term) {
            self.book.announce(best, "the nodes' /status");
        }
    }

    /// The leader node `node` (`host:port`) names in its `/status`, if any.
    pub fn leader_named_by(&self, node: &str) -> Option<Leader> {
        let url = format!("{}://{node}/status", self.scheme);
        let mut response = match self.status_agent.get(&url).call() {
            Ok(response) => response,
            Err(e) => {
                if crate::tls::is_tls_error(&e) {
                    self.warn(&format!("{url}: TLS refused: {e}"));
                }
                return None;
            }
        };
        if response.status().as_u16() != 200 {
            return None;
        }
        let status: serde_json::Value = response.body_mut().read_json().ok()?;
        Some(Leader {
            name: status["leader"].as_str()?.to_string(),
            term: status["term"].as_u64()?,
            http: status["leader_http"].as_str()?.to_string(),
        })
    }

    /// Logs `message`, at most once per [`WARN_EVERY`], saying how many were skipped.
    fn warn(&self, message: &str) {
        let mut warned = lock(&self.warned);
        let now = Instant::now();
        if warned.0.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            warned.1 += 1;
            return;
        }
        match warned.1 {
            0 => log::warn!("manager: {message}"),
            n => log::warn!("manager: {message} (and {n} more failed requests)"),
        }
        *warned = (Some(now), 0);
    }
}

/// Statuses worth trying again with the same request: timeouts, throttling, server errors.
/// `409 Conflict` is final: with an idempotency key a repeat gives the same answer.
pub fn retryable(status: u16) -> bool {
    matches!(status, 408 | 425 | 429) || status >= 500
}

/// `host:port` of a `<scheme>://host:port/...` URL; None for any other scheme.
fn authority(url: &str, scheme: &str) -> Option<String> {
    let rest = url.strip_prefix(scheme)?.strip_prefix("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty()).then(|| authority.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(name: &str, term: u64) -> Leader {
        Leader { name: name.into(), term, http: format!("{name}:8000") }
    }

    fn book() -> LeaderBook {
        LeaderBook::new((1..=5).map(|id| format!("node{id}:8000")).collect())
    }

    #[test]
    fn a_lower_term_is_ignored_and_a_higher_one_taken() {
        let book = book();
        assert_eq!(book.announce(leader("node2", 3), "test"), (true, Some(leader("node2", 3))));
        assert_eq!(book.announce(leader("node1", 2), "test"), (false, Some(leader("node2", 3))));
        assert_eq!(book.announce(leader("node4", 5), "test"), (true, Some(leader("node4", 5))));
        assert_eq!(book.term(), 5);
    }

    #[test]
    fn forgetting_takes_only_the_leader_that_failed() {
        let book = book();
        book.announce(leader("node2", 3), "test");
        let (_, old) = book.current();
        assert!(book.redirected("node5:8000"));
        book.forget(old);
        assert_eq!(book.current().0.map(|l| l.name), Some("node5".to_string()), "a newer leader stays");
        let (_, now) = book.current();
        book.forget(now);
        assert_eq!(book.current().0, None);
        // A redirect keeps the known term: an announcement of that term still counts.
        assert!(book.redirected("node1:8000"));
        assert_eq!(book.current().0, Some(Leader { name: "node1".into(), term: 3, http: "node1:8000".into() }));
    }

    #[test]
    fn only_members_at_their_own_addresses_are_taken() {
        let book = book();
        book.announce(leader("node2", 3), "test");
        for stranger in [
            leader("node6", 9),
            leader("manager", 9),
            Leader { name: "node3".into(), term: 9, http: "attacker:8000".into() },
            Leader { name: "node3".into(), term: crate::proto::MAX_WIRE_NUMBER + 1, http: "node3:8000".into() },
        ] {
            assert!(book.refusal(&stranger).is_some(), "{stranger:?}");
            assert_eq!(book.announce(stranger, "test"), (false, Some(leader("node2", 3))));
        }
        assert_eq!(book.term(), 3, "a refused announcement raises no term");
        assert!(!book.redirected("attacker:8000"), "a redirect elsewhere is not followed");
        assert!(!book.redirected("node6:8000"));
        assert_eq!(book.current().0, Some(leader("node2", 3)));
        assert_eq!(book.member("Node4"), Some("node4:8000"));
        assert_eq!(book.member("node0"), None);
    }

    #[test]
    fn statuses_and_locations() {
        assert!(retryable(503) && retryable(500) && retryable(429) && retryable(408));
        assert!(!retryable(400) && !retryable(404) && !retryable(409) && !retryable(413) && !retryable(422));
        let http_authority = |url| authority(url, "http");
        assert_eq!(http_authority("http://127.0.0.3:8000/api/products").as_deref(), Some("127.0.0.3:8000"));
        assert_eq!(http_authority("http://node2:8000").as_deref(), Some("node2:8000"));
        assert_eq!(http_authority("https://node2/api"), None);
        assert_eq!(http_authority("/api/products"), None);
        // With https nodes, a redirect to plain http is not followed.
        assert_eq!(authority("https://node2:8000/api", "https").as_deref(), Some("node2:8000"));
        assert_eq!(authority("http://node2:8000/api", "https"), None);
    }
}
