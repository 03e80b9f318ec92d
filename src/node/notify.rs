//! E-mail notifications of a node, off by default. With an SMTP server (`[smtp] server` or
//! `LABCTL_SMTP_SERVER`) and recipients (`[notify] to` or `LABCTL_NOTIFY_TO`) configured, a node
//! mails the recipients each time it wins an election, and, as leader, mails a user when a
//! write it answers assigns a task to them (a new task with an assignee, or a changed
//! assignee; `[notify] tasks = false` turns that off).
//!
//! Mails are composed and sent by [`crate::smtp::Mailer`] on a thread of their own, fed by a
//! bounded queue: the Raft loop and the HTTP answers never wait for the mail server. A full
//! queue or a failed send is logged and the mail dropped.

use super::advertise::Advertised;
use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use lettre::message::{Mailbox, SinglePart};
use lettre::Message;
use tokio::sync::watch;

use super::apply::WriteResult;
use super::status::NodeStatus;
use super::store::{ApplyOutcome, Op, Reply, Store, Task};
use crate::config::FileConfig;
use crate::smtp::compose::mailbox;
use crate::smtp::{mailer, Mailer, ServerArgs, Settings};

/// Mails waiting to be sent, at most.
const QUEUE: usize = 64;
/// Task mails remembered, so that a retried write does not mail twice.
const REMEMBERED: usize = 256;

/// Recipients of election mails, comma-separated.
pub const TO_ENV: &str = "LABCTL_NOTIFY_TO";
/// `false` turns task mails off.
pub const TASKS_ENV: &str = "LABCTL_NOTIFY_TASKS";

/// Something worth a mail.
#[derive(Debug)]
enum Event {
    /// `leader_url`: the leader's HTTP API as a reader of the mail reaches it.
    Elected {
        status: Box<NodeStatus>,
        leader_url: Option<String>,
    },
    Assigned {
        task: Box<Task>,
        leader_url: Option<String>,
    },
}

/// The handle the node keeps; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    name: String,
    tx: SyncSender<Event>,
    /// A read connection of its own, for assignees' addresses; None when task mails are off.
    store: Option<Arc<Mutex<Store>>>,
    /// The addresses for links in mails: public ones when configured (see [`super::advertise`]).
    advertised: Advertised,
}

impl Notifier {
    /// Starts the mail thread when notifications are configured; Ok(None) when they are not.
    pub fn start(
        file: &FileConfig,
        name: &str,
        database_url: &str,
        advertised: &Advertised,
    ) -> anyhow::Result<Option<Notifier>> {
        let to_env = std::env::var(TO_ENV).ok().filter(|t| !t.trim().is_empty());
        let to: Vec<String> = match to_env {
            Some(list) => list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            None => file.notify.to.clone().unwrap_or_default(),
        };
        if to.is_empty() {
            return Ok(None);
        }
        let server = ServerArgs::from_env()?;
        let has_server = server.server.is_some() || file.smtp.server.is_some();
        if !has_server {
            anyhow::bail!("[notify] to is set but no SMTP server: set [smtp] server or LABCTL_SMTP_SERVER");
        }
        let settings = Settings::resolve(&server, &file.smtp)?;
        if settings.from.is_none() {
            anyhow::bail!("notifications need a sender: set [smtp] from or LABCTL_SMTP_FROM");
        }
        let to = to.iter().map(|t| mailbox("[notify] to", t)).collect::<Result<Vec<_>, _>>()?;
        let tasks = match std::env::var(TASKS_ENV) {
            Ok(v) => v.trim().parse::<bool>().map_err(|_| anyhow::anyhow!("{TASKS_ENV} must be true or false"))?,
            Err(_) => file.notify.tasks.unwrap_or(true),
        };
        let store = if tasks { Some(Arc::new(Mutex::new(Store::open(database_url)?))) } else { None };
        let mailer = Mailer::new(settings)?;
        log::info!(
            "{name}: e-mail notifications through {} ({}) to {}{}",
            mailer.settings().address(),
            mailer.settings().tls,
            to.iter().map(|m| m.email.to_string()).collect::<Vec<_>>().join(", "),
            if tasks { ", and to assignees of tasks" } else { "" }
        );
        let (tx, rx) = sync_channel(QUEUE);
        let thread_store = store.clone();
        let thread_name = name.to_string();
        std::thread::Builder::new()
            .name("notify".into())
            .spawn(move || run(rx, mailer, to, thread_store, thread_name))?;
        Ok(Some(Notifier { name: name.to_string(), tx, store, advertised: advertised.clone() }))
    }

    fn push(&self, event: Event) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                log::warn!("{}: {QUEUE} mails are waiting for the mail server; dropped {event:?}", self.name)
            }
            Err(TrySendError::Disconnected(_)) => log::warn!("{}: the mail thread has stopped", self.name),
        }
    }

    /// Mails the recipients after each election this node wins, until `status` closes.
    pub async fn watch_elections(self, mut status: watch::Receiver<Arc<NodeStatus>>) {
        let mut told: Option<u64> = None;
        loop {
            let now = status.borrow_and_update().clone();
            if now.role == "LEADER" && told != Some(now.term) {
                told = Some(now.term);
                let leader_url = now.leader_http.as_deref().map(|http| self.advertised.outside().url(http));
                self.push(Event::Elected { status: Box::new((*now).clone()), leader_url });
            }
            if status.changed().await.is_err() {
                return;
            }
        }
    }
}

/// A task write that may assign a task, noted before it is proposed; see [`Assignment::after`].
pub struct Assignment(Option<(Notifier, i64)>);

impl Assignment {
    /// Notes `op` if it names an assignee the task does not have yet (read from this node's
    /// database before the write; a point read, never a wait on the mail server).
    pub async fn before(notifier: Option<&Notifier>, op: &Op) -> Assignment {
        let Some(n) = notifier.filter(|n| n.store.is_some()) else { return Assignment(None) };
        let (assignee, task_id) = match op {
            Op::CreateTask { task } => (task.assignee, None),
            Op::UpdateTask { id, task } => (task.assignee, Some(*id)),
            _ => return Assignment(None),
        };
        let Some(assignee) = assignee else { return Assignment(None) };
        if let (Some(id), Some(store)) = (task_id, n.store.clone()) {
            let before = tokio::task::spawn_blocking(move || store.lock().ok()?.get_task(id).ok().flatten()).await;
            if before.ok().flatten().and_then(|t| t.assignee) == Some(assignee) {
                return Assignment(None);
            }
        }
        Assignment(Some((n.clone(), assignee)))
    }

    /// Queues the mail if the write was applied with the assignee noted.
    pub fn after(self, result: &WriteResult, status: &NodeStatus) {
        let Some((notifier, assignee)) = self.0 else { return };
        if let WriteResult::Done(ApplyOutcome::Applied { reply: Reply::Task(task), .. }) = result {
            if task.assignee == Some(assignee) {
                notifier.push(Event::Assigned {
                    task: task.clone(),
                    leader_url: status.leader_http.as_deref().map(|http| notifier.advertised.outside().url(http)),
                });
            }
        }
    }
}

/// The mail thread: composes and sends each event in turn.
fn run(rx: Receiver<Event>, mailer: Mailer, to: Vec<Mailbox>, store: Option<Arc<Mutex<Store>>>, name: String) {
    let mut sent_tasks: VecDeque<(i64, String)> = VecDeque::with_capacity(REMEMBERED);
    let from = mailer.settings().from.clone().expect("checked at start");
    while let Ok(event) = rx.recv() {
        let (what, message) = match event {
            Event::Elected { status, leader_url } => {
                ("election", election_mail(&status, leader_url.as_deref(), &from, &to))
            }
            Event::Assigned { task, leader_url } => {
                let key = (task.id, task.updated_at.clone());
                if sent_tasks.contains(&key) {
                    continue;
                }
                if sent_tasks.len() == REMEMBERED {
                    sent_tasks.pop_front();
                }
                sent_tasks.push_back(key);
                let user = task.assignee.and_then(|id| {
                    let store = store.as_ref()?;
                    let found = store.lock().ok()?.get_user(id);
                    found.unwrap_or_else(|e| {
                        log::warn!("{name}: cannot read user {id} for a task mail: {e}");
                        None
                    })
                });
                let Some(user) = user else { continue };
                ("task", task_mail(&task, &user, leader_url.as_deref(), &from))
            }
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                log::warn!("{name}: cannot write the {what} mail: {e}");
                continue;
            }
        };
        let rcpt: Vec<String> = message.envelope().to().iter().map(|a| a.to_string()).collect();
        match mailer.send(&message) {
            Ok(answer) => {
                log::info!("{name}: mailed the {what} to {}: {}", rcpt.join(", "), mailer::answer_text(&answer))
            }
            Err(e) => log::warn!("{name}: the {what} mail to {} was not sent: {e}", rcpt.join(", ")),
        }
    }
}

fn election_mail(
    status: &NodeStatus,
    leader_url: Option<&str>,
    from: &Mailbox,
    to: &[Mailbox],
) -> anyhow::Result<Message> {
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(format!("labctl: {} is the leader (term {})", status.name, status.term))
        .message_id(None);
    for mb in to {
        builder = builder.to(mb.clone());
    }
    let mut text = format!(
        "{} won the election for term {} at {}.\n",
        status.name,
        status.term,
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    if let Some(url) = leader_url {
        text.push_str(&format!("HTTP API: {url}/\n"));
    }
    let peers: Vec<&str> = status.peers.iter().map(|p| &*p.name).collect();
    text.push_str(&format!("Other members: {}\n", peers.join(", ")));
    Ok(builder.singlepart(SinglePart::plain(text))?)
}

fn task_mail(
    task: &Task,
    user: &super::store::User,
    leader_url: Option<&str>,
    from: &Mailbox,
) -> anyhow::Result<Message> {
    let to = Mailbox::new(Some(user.name.clone()), user.email.parse()?);
    let builder = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(format!("labctl: task #{} assigned to you: {}", task.id, task.title))
        .message_id(None);
    let mut text = format!(
        "Hello {},\n\ntask #{} \"{}\" is assigned to you.\n\nStatus: {}\nPriority: {}\n",
        user.name, task.id, task.title, task.status, task.priority
    );
    if let Some(due) = &task.due_date {
        text.push_str(&format!("Due: {due}\n"));
    }
    if let Some(description) = task.description.as_deref().filter(|d| !d.trim().is_empty()) {
        text.push_str(&format!("\n{description}\n"));
    }
    if let Some(url) = leader_url {
        text.push_str(&format!("\n{url}/api/tasks/{}\n", task.id));
    }
    Ok(builder.singlepart(SinglePart::plain(text))?)
}
