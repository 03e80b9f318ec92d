//! The consumer: scraped products from RabbitMQ to the leader, each stored once.
//!
//! One thread owns the RabbitMQ connection (amiquip channels belong to one thread). It receives
//! deliveries from the durable queue with a bounded prefetch and hands them to a pool of workers,
//! which post them to the leader's `/api/products` several at once, with the message's
//! `Idempotency-Key`. The thread acknowledges a message only when its worker reports a 2xx; an
//! item the leader can never accept (a final 4xx) is first published to the dead-letter queue with
//! the reason, with a publisher confirm, and then acknowledged.
//!
//! When the connection drops, the thread reconnects with backoff; messages not yet acknowledged
//! come back from RabbitMQ and are posted again with the same key, which the cluster answers with
//! the first outcome instead of storing a second copy. Results of a previous connection are
//! never acknowledged on the new one (delivery tags belong to a channel): every delivery carries
//! the number of the connection that received it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use amiquip::{
    AmqpProperties, AmqpValue, Channel, Confirm, Connection, ConsumerMessage, ConsumerOptions, Delivery, FieldTable,
    Publish, QueueDeclareOptions,
};
use crossbeam_channel::{select, Receiver, Sender};

use super::leader::{Delivered, LeaderClient};
use super::{pause, redact_url, sha256_hex, Stats};

/// Where to consume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSettings {
    pub amqp_url: String,
    pub queue: String,
    pub dead_letter_queue: String,
    pub prefetch: u16,
    /// Workers posting to the leader.
    pub concurrency: usize,
}

/// The longest `message_id` used as it is for the `Idempotency-Key`; longer ones are hashed.
pub const MAX_KEY: usize = 200;
/// The path items are posted to.
pub const PRODUCTS_PATH: &str = "/api/products";
/// Headers of a dead-lettered message.
pub const REASON_HEADER: &str = "x-labctl-reason";
pub const STATUS_HEADER: &str = "x-labctl-status";

const FIRST_RECONNECT: Duration = Duration::from_millis(200);
const MAX_RECONNECT: Duration = Duration::from_secs(5);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// The key that makes posting this message idempotent: its `message_id` when that is a usable
/// key (1–200 visible ASCII bytes), else a hash of the `message_id`, else a hash of the body.
pub fn idempotency_key(message_id: Option<&str>, body: &[u8]) -> String {
    match message_id {
        Some(id) if !id.is_empty() && id.len() <= MAX_KEY && id.bytes().all(|b| b.is_ascii_graphic()) => id.to_string(),
        Some(id) if !id.is_empty() => format!("id-{}", sha256_hex(id.as_bytes())),
        _ => format!("body-{}", sha256_hex(body)),
    }
}

/// A delivery handed to a worker, with the number of the connection it came on.
struct Job {
    connection: u64,
    delivery: Delivery,
}

/// What a worker did with a delivery.
struct Done {
    connection: u64,
    delivery: Delivery,
    outcome: Outcome,
}

enum Outcome {
    Stored,
    Rejected { status: u16, reason: String },
    Stopped,
}

/// How a connection ended.
enum End {
    Stopped,
    Lost(String),
}

/// Starts the consumer thread and its workers; they run until `stop` closes.
pub fn start(
    settings: ConsumerSettings,
    client: Arc<LeaderClient>,
    stats: Arc<Stats>,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<Job>();
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
    let current = Arc::new(AtomicU64::new(0));
    for i in 0..settings.concurrency {
        let (jobs, done, client, current, stats) =
            (jobs_rx.clone(), done_tx.clone(), client.clone(), current.clone(), stats.clone());
        // Workers are not joined: one may wait on a slow leader, and what it holds comes back
        // from RabbitMQ anyway.
        std::thread::Builder::new()
            .name(format!("post-{i}"))
            .spawn(move || work(jobs, done, &client, &current, &stats))?;
    }
    std::thread::Builder::new().name("consumer".into()).spawn(move || {
        let mut connection = 0;
        let mut wait = FIRST_RECONNECT;
        let url = redact_url(&settings.amqp_url);
        loop {
            connection += 1;
            current.store(connection, Ordering::Relaxed);
            match consume(&settings, connection, &jobs_tx, &done_rx, &stats, &stop) {
                Ok(End::Stopped) => break,
                Ok(End::Lost(reason)) => {
                    log::warn!("manager: lost RabbitMQ at {url}: {reason}; reconnecting");
                    wait = FIRST_RECONNECT;
                }
                Err(e) => {
                    log::warn!("manager: cannot consume {} at {url}: {e:#}; retrying in {wait:?}", settings.queue)
                }
            }
            stats.amqp_connected.store(false, Ordering::Relaxed);
            if pause(&stop, wait) {
                break;
            }
            wait = (wait * 2).min(MAX_RECONNECT);
        }
        stats.amqp_connected.store(false, Ordering::Relaxed);
        log::info!("manager: consumer stopped");
    })
}

/// Posts deliveries of the current connection; skips those of an older one (RabbitMQ delivers
/// them again).
fn work(jobs: Receiver<Job>, done: Sender<Done>, client: &LeaderClient, current: &AtomicU64, stats: &Stats) {
    for job in jobs.iter() {
        if job.connection != current.load(Ordering::Relaxed) {
            continue;
        }
        let d = &job.delivery;
        let key = idempotency_key(d.properties.message_id().as_deref(), &d.body);
        Stats::add(&stats.in_flight, 1);
        let outcome = match client.post(PRODUCTS_PATH, "application/json", &d.body, &key, &format!("item {key}")) {
            Delivered::Accepted { .. } => Outcome::Stored,
            Delivered::Rejected { status, body } => Outcome::Rejected { status, reason: body },
            Delivered::Stopped => Outcome::Stopped,
        };
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        if done.send(Done { connection: job.connection, delivery: job.delivery, outcome }).is_err() {
            return;
        }
    }
}

/// Lets URL options bound how long opening a connection may block and how soon a silent broker
/// is noticed, unless the URL sets them.
fn tuned_url(url: &str) -> String {
    let mut url = url.to_string();
    for (name, value) in [("connection_timeout", "5000"), ("heartbeat", "10")] {
        if !url.contains(&format!("{name}=")) {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("{name}={value}"));
        }
    }
    url
}

/// One connection: declares the queues, consumes until the connection ends or `stop` closes.
fn consume(
    settings: &ConsumerSettings,
    connection: u64,
    jobs: &Sender<Job>,
    done: &Receiver<Done>,
    stats: &Stats,
    stop: &Receiver<()>,
) -> anyhow::Result<End> {
    let mut amqp = Connection::insecure_open(&tuned_url(&settings.amqp_url))?;
    let channel = amqp.open_channel(None)?;
    channel.qos(0, settings.prefetch, false)?;
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    let queue = channel.queue_declare(settings.queue.as_str(), durable.clone())?;
    let mut dead = DeadLetters::open(&mut amqp, &settings.dead_letter_queue, durable)?;
    let consumer = queue.consume(ConsumerOptions::default())?;
    Stats::add(&stats.amqp_connects, 1);
    stats.amqp_connected.store(true, Ordering::Relaxed);
    log::info!(
        "manager: consuming {} at {} ({} waiting), dead letters to {}",
        settings.queue,
        redact_url(&settings.amqp_url),
        queue.declared_message_count().unwrap_or(0),
        settings.dead_letter_queue
    );
    loop {
        select! {
            recv(consumer.receiver()) -> message => match message {
                Ok(ConsumerMessage::Delivery(delivery)) => {
                    Stats::add(&stats.consumed, 1);
                    if jobs.send(Job { connection, delivery }).is_err() {
                        return Ok(End::Stopped);
                    }
                }
                Ok(other) => return Ok(End::Lost(describe(other))),
                Err(_) => return Ok(End::Lost("the consumer ended".into())),
            },
            recv(done) -> finished => {
                let Ok(finished) = finished else { return Ok(End::Stopped) };
                if finished.connection != connection {
                    continue;
                }
                if let Err(e) = settle(&consumer, &mut dead, finished, settings, stats) {
                    return Ok(End::Lost(format!("{e:#}")));
                }
            },
            recv(stop) -> _ => {
                let _ = amqp.close();
                return Ok(End::Stopped);
            },
        }
    }
}

/// Acknowledges what a worker finished: stored, or refused and moved to the dead-letter queue.
fn settle(
    consumer: &amiquip::Consumer<'_>,
    dead: &mut DeadLetters,
    finished: Done,
    settings: &ConsumerSettings,
    stats: &Stats,
) -> anyhow::Result<()> {
    let Done { delivery, outcome, .. } = finished;
    match outcome {
        Outcome::Stored => {
            consumer.ack(delivery)?;
            Stats::add(&stats.stored, 1);
        }
        Outcome::Rejected { status, reason } => {
            let reason = reason.trim().to_string();
            dead.publish(&delivery, status, &reason)?;
            log::warn!(
                "manager: the leader refused an item ({status}: {reason}); moved to {}",
                settings.dead_letter_queue
            );
            consumer.ack(delivery)?;
            Stats::add(&stats.dead_lettered, 1);
        }
        // Not acknowledged: RabbitMQ delivers it again to the next consumer.
        Outcome::Stopped => {}
    }
    Ok(())
}

fn describe(message: ConsumerMessage) -> String {
    match message {
        ConsumerMessage::Delivery(_) => "a delivery".into(),
        ConsumerMessage::ServerClosedChannel(e) => format!("the server closed the channel: {e}"),
        ConsumerMessage::ServerClosedConnection(e) => format!("the server closed the connection: {e}"),
        ConsumerMessage::ServerCancelled => "the server cancelled the consumer (queue deleted?)".into(),
        other => format!("{other:?}"),
    }
}

/// The dead-letter queue, on a channel of its own in confirm mode.
struct DeadLetters {
    channel: Channel,
    confirms: Receiver<Confirm>,
    queue: String,
    /// Publishes on this channel so far (confirm delivery tags count from 1).
    published: u64,
}

impl DeadLetters {
    fn open(amqp: &mut Connection, queue: &str, options: QueueDeclareOptions) -> amiquip::Result<DeadLetters> {
        let channel = amqp.open_channel(None)?;
        channel.queue_declare(queue, options)?;
        channel.enable_publisher_confirms()?;
        let confirms = channel.listen_for_publisher_confirms()?;
        Ok(DeadLetters { channel, confirms, queue: queue.to_string(), published: 0 })
    }

    /// Publishes a copy of `delivery` with the reason, persistent, and waits for RabbitMQ's confirm.
    fn publish(&mut self, delivery: &Delivery, status: u16, reason: &str) -> anyhow::Result<()> {
        let mut headers: FieldTable = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(REASON_HEADER.into(), AmqpValue::LongString(reason.into()));
        headers.insert(STATUS_HEADER.into(), AmqpValue::LongInt(i32::from(status)));
        let properties: AmqpProperties = delivery.properties.clone().with_headers(headers).with_delivery_mode(2);
        self.channel.basic_publish("", Publish::with_properties(&delivery.body, self.queue.as_str(), properties))?;
        self.published += 1;
        let tag = self.published;
        loop {
            let Ok(confirm) = self.confirms.recv_timeout(CONFIRM_TIMEOUT) else {
                anyhow::bail!("RabbitMQ did not confirm a dead letter within {CONFIRM_TIMEOUT:?}");
            };
            let (Confirm::Ack(p) | Confirm::Nack(p)) = confirm;
            let covers = p.delivery_tag == tag || (p.multiple && p.delivery_tag > tag);
            match confirm {
                Confirm::Ack(_) if covers => return Ok(()),
                Confirm::Nack(_) if covers => anyhow::bail!("RabbitMQ refused a dead letter to {}", self.queue),
                _ => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_message_id_when_usable_else_a_hash() {
        assert_eq!(idempotency_key(Some("run-1|item-7"), b"{}"), "run-1|item-7");
        let long = "x".repeat(201);
        let hashed = idempotency_key(Some(&long), b"{}");
        assert_eq!(hashed, format!("id-{}", sha256_hex(long.as_bytes())));
        assert!(hashed.len() <= MAX_KEY);
        assert!(idempotency_key(Some("with space"), b"{}").starts_with("id-"));
        assert!(idempotency_key(Some("é"), b"{}").starts_with("id-"));
        assert_eq!(idempotency_key(None, b"{\"a\":1}"), format!("body-{}", sha256_hex(b"{\"a\":1}")));
        assert_eq!(idempotency_key(Some(""), b"x"), idempotency_key(None, b"x"));
    }

    #[test]
    fn url_options_are_added_once() {
        assert_eq!(tuned_url("amqp://h:5672/%2f"), "amqp://h:5672/%2f?connection_timeout=5000&heartbeat=10");
        assert_eq!(tuned_url("amqp://h/%2f?heartbeat=30"), "amqp://h/%2f?heartbeat=30&connection_timeout=5000");
    }
}
