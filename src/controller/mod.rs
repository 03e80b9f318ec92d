//! `labctl controller`: sends control requests to nodes over UDP and prints the replies.
//!
//! Each request goes out from a socket of its own (see [`crate::proto::client`]) and the
//! replies are awaited until `--timeout-ms`. Output is a table, or with `--json` one JSON
//! object per reply, exactly as the node sent it. A node that does not answer, or whose name does
//! not resolve (its container is gone), makes the command fail after everything the other nodes
//! answered has been printed; the error names each such node and why.

mod table;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::{ClusterArgs, ConfigError, FileConfig};
use crate::proto::client::{self, Answer, ClientError, LeaderInfo, LeaderSummary, Reply};
use crate::proto::{node_name, parse_node_name, LogEntry, Message, Request};

/// Wait for a reply this long unless configured otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;

/// Options of `labctl controller`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Node names are node1 … nodeN, case-insensitive (Node1 is node1). \
Node N is reached at the host pattern with {id}=N (127.0.0.N locally) on the Raft UDP port. \
With a cluster secret (LABCTL_CLUSTER_SECRET_FILE or LABCTL_CLUSTER_SECRET), requests are signed \
and only signed replies are read.")]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    /// How long to wait for each reply, in milliseconds [default: 1000; config: [controller] timeout_ms]
    #[arg(long, env = "LABCTL_CONTROLLER_TIMEOUT_MS", global = true)]
    pub timeout_ms: Option<u64>,
    /// Print one JSON object per reply (as the node sent it) instead of a table
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The control requests.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// Make nodes start an election now (TIMEOUT); prints "sent", no reply is awaited
    ///
    /// The node's election timer fires at once: it becomes a candidate in a new term, skipping
    /// the pre-vote, and voters grant it even while they hear from a live leader. A node whose
    /// log is up to date thereby becomes the leader.
    Timeout {
        /// The node(s), e.g. node2
        #[arg(required = true, value_name = "NODE", value_parser = parse_node)]
        targets: Vec<u32>,
    },
    /// Make nodes become followers (CONVERT_FOLLOWER); prints "sent", no reply is awaited
    ///
    /// A leader that is converted stops sending heartbeats; the cluster elects a leader again
    /// (possibly the same node) in a higher term.
    ConvertFollower {
        /// The node(s), e.g. node1
        #[arg(required = true, value_name = "NODE", value_parser = parse_node)]
        targets: Vec<u32>,
    },
    /// Stop nodes (SHUTDOWN): each stops all its work and exits 0; prints "sent", no reply is awaited
    Shutdown {
        /// The node(s), e.g. node3
        #[arg(required = true, value_name = "NODE", value_parser = parse_node)]
        targets: Vec<u32>,
    },
    /// Ask nodes whom they know as leader (LEADER_INFO) and print NODE, LEADER, TERM
    ///
    /// LEADER is "none" while a node knows no leader, "no reply" when it did not answer in
    /// time and "unreachable" when its name does not resolve (e.g. its container is gone); the
    /// command then fails, naming each such node, after printing what the others answered.
    LeaderInfo {
        /// The nodes to ask [default: all members]
        #[arg(value_name = "NODE", value_parser = parse_node)]
        targets: Vec<u32>,
    },
    /// Store KEY = VALUE in the replicated log (STORE) and wait until the leader acknowledges it
    ///
    /// Without --node the leader is found with LEADER_INFO first. A node that is not the leader
    /// answers with the leader it knows; that leader is then asked instead, once.
    Store {
        /// The key
        key: String,
        /// The value, sent as a JSON string
        value: String,
        /// Send to this node instead of the leader found with LEADER_INFO
        #[arg(long, value_parser = parse_node)]
        node: Option<u32>,
    },
    /// Print the committed log entries (RETRIEVE) as a table TERM, KEY, VALUE
    ///
    /// Without --node the leader is found with LEADER_INFO first; a non-leader's answer is
    /// followed once. The leader's own no-op entries are not shown in the table (--json shows
    /// the reply unchanged).
    Retrieve {
        /// Send to this node instead of the leader found with LEADER_INFO
        #[arg(long, value_parser = parse_node)]
        node: Option<u32>,
    },
    /// Ask every node LEADER_INFO and sum up: who leads, whether the terms agree
    ///
    /// Fails unless every node answers and a majority names the same leader in the same term.
    /// Nodes that do not answer or cannot be reached are shown as such, with the others'
    /// answers, and named in the error.
    Status,
}

/// Parses a node name for clap: `node3`, `Node3`.
fn parse_node(name: &str) -> Result<u32, String> {
    parse_node_name(name).ok_or_else(|| format!("{name:?} is not a node name (node1, node2, …)"))
}

/// Why a controller command failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{name} is not a member of this cluster of {nodes} nodes (node1 … node{nodes}); set --nodes")]
    NotMember { name: String, nodes: u32 },
    #[error("no reply from {names} within {ms} ms{hint}")]
    NoReply { names: String, ms: u128, hint: &'static str },
    #[error("{0}")]
    Unanswered(String),
    #[error("no leader is known: {0}")]
    NoLeader(String),
    #[error("{node} is not the leader and {}; try again once a leader is elected",
        match leader { Some(l) => format!("names {l} as leader"), None => "knows no leader".to_string() })]
    NotLeader { node: String, leader: Option<String> },
    #[error("{node} did not store {key:?}: its acknowledgement says success false")]
    StoreRefused { node: String, key: String },
}

/// Runs `labctl controller`.
pub fn run(args: Args, file: &FileConfig) -> anyhow::Result<ExitCode> {
    let cluster = crate::config::Cluster::resolve(&args.cluster, &file.cluster)?;
    let wait = Duration::from_millis(args.timeout_ms.or(file.controller.timeout_ms).unwrap_or(DEFAULT_TIMEOUT_MS));
    let signing = crate::config::cluster_key(&args.cluster, &file.cluster)?.map(client::Signing::new);
    let controller = Controller { cluster, wait, json: args.json, signing };
    controller.execute(&args.action)?;
    Ok(ExitCode::SUCCESS)
}

struct Controller {
    cluster: crate::config::Cluster,
    wait: Duration,
    json: bool,
    /// Secure mode: requests are signed, and only signed replies are read.
    signing: Option<client::Signing>,
}

impl Controller {
    fn execute(&self, action: &Action) -> Result<(), ControllerError> {
        match action {
            Action::Timeout { targets } => self.send_only(Request::Timeout, targets),
            Action::ConvertFollower { targets } => self.send_only(Request::ConvertFollower, targets),
            Action::Shutdown { targets } => self.send_only(Request::Shutdown, targets),
            Action::LeaderInfo { targets } => self.leader_info(targets),
            Action::Store { key, value, node } => self.store(key, value, *node),
            Action::Retrieve { node } => self.retrieve(*node),
            Action::Status => self.status(),
        }
    }

    /// The nodes' UDP addresses, checking that each is a member.
    fn targets(&self, ids: &[u32]) -> Result<Vec<(u32, SocketAddr)>, ControllerError> {
        ids.iter().map(|&id| Ok((id, self.addr(id)?))).collect()
    }

    /// Checks that every id is a member.
    fn members(&self, ids: &[u32]) -> Result<(), ControllerError> {
        match ids.iter().find(|&&id| id > self.cluster.nodes) {
            Some(&id) => Err(ControllerError::NotMember { name: node_name(id), nodes: self.cluster.nodes }),
            None => Ok(()),
        }
    }

    /// One node's UDP address, checking that it is a member.
    fn addr(&self, id: u32) -> Result<SocketAddr, ControllerError> {
        if id > self.cluster.nodes {
            return Err(ControllerError::NotMember { name: node_name(id), nodes: self.cluster.nodes });
        }
        Ok(self.cluster.raft_addr(id)?)
    }

    fn all_ids(&self) -> Vec<u32> {
        self.cluster.ids().collect()
    }

    fn no_reply(&self, ids: &[u32]) -> ControllerError {
        let names: Vec<String> = ids.iter().map(|&id| node_name(id)).collect();
        // A cluster in secure mode drops unsigned requests without a word.
        let hint = if self.signing.is_none() {
            " (a cluster in secure mode answers only signed requests: give the controller its secret \
             with LABCTL_CLUSTER_SECRET_FILE)"
        } else {
            ""
        };
        ControllerError::NoReply { names: names.join(", "), ms: self.wait.as_millis(), hint }
    }

    fn send_only(&self, request: Request, ids: &[u32]) -> Result<(), ControllerError> {
        let msg = client::control_message(request);
        for (id, addr) in self.targets(ids)? {
            client::exchange_with(self.signing.as_ref(), id, addr, &msg, None)?;
            println!("{}", format_sent(request, id, self.json));
        }
        Ok(())
    }

    /// Asks `ids` (members) LEADER_INFO at once. A node whose name does not resolve, or to which
    /// the request cannot be sent, is [`Heard::Unreachable`]: the others are still asked.
    fn ask_leader_info(&self, ids: &[u32]) -> Result<Vec<(u32, Heard)>, ControllerError> {
        self.members(ids)?;
        let msg = client::control_message(Request::LeaderInfo);
        let mut heard: Vec<(u32, Heard)> = Vec::with_capacity(ids.len());
        let mut targets = Vec::with_capacity(ids.len());
        for &id in ids {
            match self.cluster.raft_addr(id) {
                Ok(addr) => targets.push((id, addr)),
                Err(e) => heard.push((id, Heard::Unreachable(e.to_string()))),
            }
        }
        for (id, result) in client::exchange_all(self.signing.as_ref(), &targets, &msg, Some(self.wait)) {
            heard.push((
                id,
                match result {
                    Ok(Some(answer)) => Heard::Answer(answer),
                    Ok(None) => Heard::Silent,
                    Err(e) => Heard::Unreachable(e.to_string()),
                },
            ));
        }
        heard.sort_by_key(|(id, _)| ids.iter().position(|i| i == id));
        Ok(heard)
    }

    /// Ok when every node answered; else the error naming the silent and the unreachable ones.
    fn all_answered(&self, replies: &[(u32, Heard)]) -> Result<(), ControllerError> {
        let silent: Vec<u32> = replies.iter().filter(|(_, h)| matches!(h, Heard::Silent)).map(|(id, _)| *id).collect();
        let mut problems: Vec<String> = replies
            .iter()
            .filter_map(|(id, h)| match h {
                Heard::Unreachable(why) => Some(format!("cannot reach {}: {why}", node_name(*id))),
                _ => None,
            })
            .collect();
        if problems.is_empty() && silent.is_empty() {
            return Ok(());
        }
        if !silent.is_empty() {
            problems.insert(0, self.no_reply(&silent).to_string());
        }
        Err(ControllerError::Unanswered(problems.join("; ")))
    }

    fn leader_info(&self, ids: &[u32]) -> Result<(), ControllerError> {
        let ids = if ids.is_empty() { self.all_ids() } else { ids.to_vec() };
        let replies = self.ask_leader_info(&ids)?;
        print!("{}", format_leader_info(&replies, self.json));
        self.all_answered(&replies)
    }

    fn status(&self) -> Result<(), ControllerError> {
        let replies = self.ask_leader_info(&self.all_ids())?;
        let summary = summarize(&replies);
        if self.json {
            println!("{}", status_json(&replies, &summary));
        } else {
            print!("{}", format_leader_info(&replies, false));
            print!("{}", format_summary(&summary));
        }
        self.all_answered(&replies)?;
        if summary.agreed_leader().is_none() {
            return Err(ControllerError::NoLeader("no majority of nodes names the same leader in one term".into()));
        }
        Ok(())
    }

    /// The leader as the nodes see it: the one named for the highest term.
    fn find_leader(&self) -> Result<u32, ControllerError> {
        let replies = self.ask_leader_info(&self.all_ids())?;
        let summary = summarize(&replies);
        match summary.leader.as_ref().and_then(|(name, _, _)| parse_node_name(name)) {
            Some(id) => {
                log::debug!("leader is {} ({} of {} nodes answered)", node_name(id), summary.answered, summary.nodes);
                Ok(id)
            }
            // Nobody answered: say who was silent and who could not be reached.
            None if summary.answered == 0 => {
                Err(self.all_answered(&replies).err().unwrap_or_else(|| self.no_reply(&self.all_ids())))
            }
            None => Err(ControllerError::NoLeader(format!(
                "none of the {} nodes that answered names a leader",
                summary.answered
            ))),
        }
    }

    /// Sends a STORE or RETRIEVE to `target` or the leader, following one LEADER_INFO answer.
    fn ask_leader(&self, msg: &Message, target: Option<u32>) -> Result<(u32, Answer), ControllerError> {
        let mut node = match target {
            Some(id) => id,
            None => self.find_leader()?,
        };
        let mut followed = false;
        loop {
            let Some(answer) =
                client::exchange_with(self.signing.as_ref(), node, self.addr(node)?, msg, Some(self.wait))?
            else {
                return Err(self.no_reply(&[node]));
            };
            let Reply::LeaderInfo(info) = &answer.reply else { return Ok((node, answer)) };
            match info.leader_id() {
                Some(next) if next != node && !followed => {
                    log::info!("{} is not the leader; asking {} instead", node_name(node), node_name(next));
                    node = next;
                    followed = true;
                }
                _ => return Err(ControllerError::NotLeader { node: node_name(node), leader: info.leader.clone() }),
            }
        }
    }

    fn store(&self, key: &str, value: &str, target: Option<u32>) -> Result<(), ControllerError> {
        let mut msg = client::control_message(Request::Store);
        msg.key = Some(key.to_string());
        msg.value = Value::String(value.to_string());
        let (node, answer) = self.ask_leader(&msg, target)?;
        if answer.reply == (Reply::Stored { success: false }) {
            if self.json {
                println!("{}", answer.raw);
            }
            return Err(ControllerError::StoreRefused { node: node_name(node), key: key.to_string() });
        }
        if self.json {
            println!("{}", answer.raw);
        } else {
            let term = answer.raw.get("term").and_then(Value::as_u64);
            println!("{}", format_stored(key, value, &node_name(node), term));
        }
        Ok(())
    }

    fn retrieve(&self, target: Option<u32>) -> Result<(), ControllerError> {
        let msg = client::control_message(Request::Retrieve);
        let (_, answer) = self.ask_leader(&msg, target)?;
        if self.json {
            println!("{}", answer.raw);
        } else if let Reply::Logs(entries) = &answer.reply {
            print!("{}", format_logs(entries));
        }
        Ok(())
    }
}

/// What one node made of a request.
enum Heard {
    /// Its reply.
    Answer(Answer),
    /// No reply within the wait.
    Silent,
    /// Not asked: its name did not resolve, or the request could not be sent (why).
    Unreachable(String),
}

impl Heard {
    fn answer(&self) -> Option<&Answer> {
        match self {
            Heard::Answer(answer) => Some(answer),
            _ => None,
        }
    }
}

fn summarize(replies: &[(u32, Heard)]) -> LeaderSummary {
    LeaderSummary::from_replies(replies.iter().map(|(_, heard)| heard.answer().and_then(leader_info)))
}

fn leader_info(answer: &Answer) -> Option<&LeaderInfo> {
    match &answer.reply {
        Reply::LeaderInfo(info) => Some(info),
        _ => None,
    }
}

/// The line printed for a request that expects no reply.
fn format_sent(request: Request, id: u32, json: bool) -> String {
    if json {
        json!({"node": node_name(id), "request": request.as_str(), "sent": true}).to_string()
    } else {
        format!("sent {request} to {}", node_name(id))
    }
}

/// LEADER_INFO replies as a table NODE, LEADER, TERM, or as the raw replies one per line.
fn format_leader_info(replies: &[(u32, Heard)], json: bool) -> String {
    if json {
        return replies.iter().filter_map(|(_, h)| h.answer()).map(|a| format!("{}\n", a.raw)).collect();
    }
    let rows: Vec<Vec<String>> = replies
        .iter()
        .map(|(id, heard)| {
            let (leader, term) = match (heard, heard.answer().and_then(leader_info)) {
                (_, Some(info)) => (
                    info.leader.clone().unwrap_or_else(|| "none".into()),
                    info.term.map_or_else(|| "-".into(), |t| t.to_string()),
                ),
                (Heard::Unreachable(_), _) => ("unreachable".into(), "-".into()),
                _ => ("no reply".into(), "-".into()),
            };
            vec![node_name(*id), leader, term]
        })
        .collect();
    table::render(&["NODE", "LEADER", "TERM"], &rows)
}

/// The lines under the `status` table: who leads, whether terms agree.
fn format_summary(s: &LeaderSummary) -> String {
    let mut out = String::new();
    match (&s.leader, s.agreed_leader()) {
        (Some((name, term, count)), Some(_)) => {
            out.push_str(&format!("leader: {name} in term {term}, named by {count} of {} nodes\n", s.nodes))
        }
        (Some((name, term, count)), None) => out.push_str(&format!(
            "leader: none agreed; {name} in term {term} is named by only {count} of {} nodes\n",
            s.nodes
        )),
        (None, _) => out.push_str(&format!("leader: none known ({} of {} nodes answered)\n", s.answered, s.nodes)),
    }
    match s.terms.as_slice() {
        [] => {}
        [(term, count)] => out.push_str(&format!("terms: all {count} answering nodes are in term {term}\n")),
        terms => {
            let parts: Vec<String> = terms
                .iter()
                .map(|(term, count)| format!("term {term} on {count} node{}", if *count == 1 { "" } else { "s" }))
                .collect();
            out.push_str(&format!("terms: differ: {}\n", parts.join(", ")));
        }
    }
    out
}

/// `status --json`: one object with the summary and the raw replies.
fn status_json(replies: &[(u32, Heard)], s: &LeaderSummary) -> Value {
    let agreed = s.agreed_leader();
    json!({
        "nodes": s.nodes,
        "answered": s.answered,
        "leader": agreed.map(|(name, _)| name),
        "term": agreed.map(|(_, term)| term),
        "named_by": agreed.and(s.leader.as_ref().map(|(_, _, count)| *count)),
        "terms": s.terms.iter().map(|(term, count)| json!({"term": term, "nodes": count})).collect::<Vec<_>>(),
        "no_reply": replies
            .iter()
            .filter(|(_, h)| matches!(h, Heard::Silent))
            .map(|(id, _)| node_name(*id))
            .collect::<Vec<_>>(),
        "unreachable": replies
            .iter()
            .filter_map(|(id, h)| match h {
                Heard::Unreachable(why) => Some(json!({"node": node_name(*id), "error": why})),
                _ => None,
            })
            .collect::<Vec<_>>(),
        "replies": replies.iter().filter_map(|(_, h)| h.answer().map(|a| a.raw.clone())).collect::<Vec<_>>(),
    })
}

fn format_stored(key: &str, value: &str, node: &str, term: Option<u64>) -> String {
    match term {
        Some(term) => format!("stored {key:?} = {value:?} (committed by leader {node}, term {term})"),
        None => format!("stored {key:?} = {value:?} (committed by leader {node})"),
    }
}

/// Committed entries as a table TERM, KEY, VALUE, without the leaders' no-op entries.
fn format_logs(entries: &[LogEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .filter(|e| !e.is_noop())
        .map(|e| vec![e.term.to_string(), e.key.clone().unwrap_or_default(), cell(&e.value.to_value())])
        .collect();
    table::render(&["TERM", "KEY", "VALUE"], &rows)
}

/// A JSON value in a table cell: strings bare, anything else as JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Parses `labctl controller ARGV…` through the whole command line, as users type it.
    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        let cli = crate::cli::Cli::try_parse_from(["labctl", "controller"].into_iter().chain(argv.iter().copied()))?;
        match cli.command {
            crate::cli::Command::Controller(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn answer(raw: Value) -> Answer {
        let msg: Message = serde_json::from_value(raw.clone()).unwrap();
        let reply = client::match_reply(&client::control_message(Request::LeaderInfo), &msg).unwrap();
        Answer { reply, raw, from: "127.0.0.1:5555".parse().unwrap() }
    }

    #[test]
    fn node_names_are_case_insensitive_and_checked() {
        let args = parse(&["timeout", "Node2"]).unwrap();
        assert!(matches!(args.action, Action::Timeout { ref targets } if targets == &[2]));
        let args = parse(&["leader-info", "node1", "NODE3", "--timeout-ms", "200", "--json"]).unwrap();
        assert!(matches!(args.action, Action::LeaderInfo { ref targets } if targets == &[1, 3]));
        assert_eq!(args.timeout_ms, Some(200));
        assert!(args.json);
        assert!(parse(&["shutdown", "server3"]).is_err());
        assert!(parse(&["timeout"]).is_err(), "a node is required");
        let args = parse(&["store", "k", "v", "--node", "node4"]).unwrap();
        assert!(
            matches!(args.action, Action::Store { ref key, ref value, node: Some(4) } if key == "k" && value == "v")
        );
        assert!(
            matches!(parse(&["leader-info"]).unwrap().action, Action::LeaderInfo { ref targets } if targets.is_empty())
        );
        // The cluster flags apply after any subcommand.
        let args = parse(&["leader-info", "node1", "--nodes", "3", "--raft-port", "6000"]).unwrap();
        assert_eq!((args.cluster.nodes, args.cluster.raft_port), (Some(3), Some(6000)));
        let args = parse(&["timeout", "node1", "--nodes=7"]).unwrap();
        assert_eq!(args.cluster.nodes, Some(7));
    }

    #[test]
    fn a_node_outside_the_cluster_is_refused() {
        let cluster = crate::config::Cluster { nodes: 3, ..Default::default() };
        let c = Controller { cluster, wait: Duration::from_millis(10), json: false, signing: None };
        let err = c.targets(&[4]).unwrap_err();
        assert!(err.to_string().contains("node4 is not a member"), "{err}");
    }

    #[test]
    fn leader_info_table_and_json() {
        let replies = vec![
            (
                1,
                Heard::Answer(answer(
                    json!({"sender_name":"node1","request":"LEADER_INFO","term":2,"key":"LEADER","value":"node3"}),
                )),
            ),
            (
                2,
                Heard::Answer(answer(
                    json!({"sender_name":"node2","request":"LEADER_INFO","term":1,"key":"LEADER","value":null}),
                )),
            ),
            (3, Heard::Silent),
        ];
        assert_eq!(
            format_leader_info(&replies, false),
            "NODE   LEADER    TERM\nnode1  node3     2\nnode2  none      1\nnode3  no reply  -\n"
        );
        let json_text = format_leader_info(&replies, true);
        let lines: Vec<Value> = json_text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["value"], "node3");
    }

    #[test]
    fn status_summary_says_who_leads_and_whether_terms_agree() {
        let reply = |n: u32, term: u64| {
            (
                n,
                Heard::Answer(answer(
                    json!({"sender_name":node_name(n),"request":"LEADER_INFO","term":term,"key":"LEADER","value":"node2"}),
                )),
            )
        };
        let agreed = vec![reply(1, 3), reply(2, 3), reply(3, 3)];
        let s = summarize(&agreed);
        assert_eq!(
            format_summary(&s),
            "leader: node2 in term 3, named by 3 of 3 nodes\nterms: all 3 answering nodes are in term 3\n"
        );
        let split = vec![reply(1, 3), reply(2, 4), (3, Heard::Silent)];
        let s = summarize(&split);
        let text = format_summary(&s);
        assert!(text.contains("none agreed; node2 in term 4 is named by only 1 of 3 nodes"), "{text}");
        assert!(text.contains("terms: differ: term 3 on 1 node, term 4 on 1 node"), "{text}");
        let v = status_json(&split, &s);
        assert_eq!(v["leader"], Value::Null);
        assert_eq!(v["no_reply"], json!(["node3"]));
        assert_eq!(v["unreachable"], json!([]));
        assert_eq!(v["replies"].as_array().unwrap().len(), 2);
    }

    /// Members whose names do not resolve (their containers are gone) are named with the
    /// reason, in the table, the JSON and the error, beside what the others answered.
    #[test]
    fn unresolvable_nodes_are_named() {
        let cluster = crate::config::Cluster { nodes: 2, host: "node{id}.invalid".into(), ..Default::default() };
        let c = Controller { cluster, wait: Duration::from_millis(200), json: false, signing: None };
        let replies = c.ask_leader_info(&[2, 1]).unwrap();
        let ids: Vec<u32> = replies.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [2, 1], "in the order asked");
        assert!(replies
            .iter()
            .all(|(_, h)| matches!(h, Heard::Unreachable(why) if why.starts_with("cannot resolve node"))));
        let err = c.all_answered(&replies).unwrap_err().to_string();
        assert!(err.starts_with("cannot reach node2: cannot resolve node2.invalid:5555"), "{err}");
        assert!(err.contains("; cannot reach node1: cannot resolve node1.invalid:5555"), "{err}");

        let mixed = vec![
            (
                1,
                Heard::Answer(answer(
                    json!({"sender_name":"node1","request":"LEADER_INFO","term":4,"key":"LEADER","value":"node1"}),
                )),
            ),
            (2, Heard::Silent),
            (3, Heard::Unreachable("cannot resolve node3:5555: Name or service not known".into())),
        ];
        assert_eq!(
            format_leader_info(&mixed, false),
            "NODE   LEADER       TERM\nnode1  node1        4\nnode2  no reply     -\nnode3  unreachable  -\n"
        );
        let err = c.all_answered(&mixed).unwrap_err().to_string();
        assert!(err.starts_with("no reply from node2 within 200 ms"), "{err}");
        assert!(err.ends_with("; cannot reach node3: cannot resolve node3:5555: Name or service not known"), "{err}");
        let v = status_json(&mixed, &summarize(&mixed));
        assert_eq!(v["answered"], 1);
        assert_eq!(v["no_reply"], json!(["node2"]));
        assert_eq!(
            v["unreachable"],
            json!([{"node": "node3", "error": "cannot resolve node3:5555: Name or service not known"}])
        );
    }

    #[test]
    fn logs_table_hides_noops_and_renders_values() {
        let entries = vec![
            LogEntry::noop(1),
            LogEntry { term: 1, key: Some("k".into()), value: "v".into() },
            LogEntry { term: 2, key: Some("n".into()), value: json!(5).into() },
        ];
        assert_eq!(format_logs(&entries), "TERM  KEY  VALUE\n1     k    v\n2     n    5\n");
    }

    #[test]
    fn sent_lines() {
        assert_eq!(format_sent(Request::Timeout, 2, false), "sent TIMEOUT to node2");
        let v: Value = serde_json::from_str(&format_sent(Request::Shutdown, 3, true)).unwrap();
        assert_eq!(v, json!({"node":"node3","request":"SHUTDOWN","sent":true}));
        assert_eq!(
            format_stored("k", "v", "node1", Some(2)),
            "stored \"k\" = \"v\" (committed by leader node1, term 2)"
        );
    }
}
