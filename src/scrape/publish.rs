//! `--publish`: every item of the processed file to a durable RabbitMQ queue.
//!
//! Each item is one persistent message (delivery mode 2, `application/json`, a `message_id`
//! unique per run and item) on the default exchange, routed to the queue. Publisher confirms
//! are on, and the run waits until the broker has confirmed every message: only then are
//! the items safe on the broker. A negative confirm, a lost connection or a timeout is an error.

use std::time::{Duration, Instant};

use amiquip::{AmqpProperties, Channel, Confirm, ConfirmSmoother, Connection, Publish, QueueDeclareOptions};

use super::process::{message_id, ProcessedFile};

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct Broker {
    pub url: String,
    pub queue: String,
    pub confirm_timeout: Duration,
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot connect to RabbitMQ at {url}: {error}")]
    Connect { url: String, error: String },
    #[error("RabbitMQ at {url}: cannot use queue {queue:?}: {error}")]
    Queue { url: String, queue: String, error: String },
    #[error("RabbitMQ at {url}: {what}: {error}")]
    Broker { url: String, what: &'static str, error: String },
    #[error("RabbitMQ at {url} refused {refused} of {total} items (negative confirm), first {first:?}")]
    Refused { url: String, refused: usize, total: usize, first: String },
    #[error("RabbitMQ at {url} confirmed {confirmed} of {total} items within {timeout:?}; the rest may be lost")]
    Unconfirmed { url: String, confirmed: usize, total: usize, timeout: Duration },
    #[error("RabbitMQ at {url} closed the connection after confirming {confirmed} of {total} items")]
    Closed { url: String, confirmed: usize, total: usize },
}

/// Publishes every item of `file` and waits for the broker's confirms; the number published.
pub fn publish(file: &ProcessedFile, broker: &Broker) -> Result<usize, PublishError> {
    let url = redact(&broker.url);
    let mut connection = Connection::insecure_open(&with_connect_timeout(&broker.url))
        .map_err(|e| PublishError::Connect { url: url.clone(), error: e.to_string() })?;
    let channel = durable_queue(&mut connection, &broker.queue).map_err(|e| PublishError::Queue {
        url: url.clone(),
        queue: broker.queue.clone(),
        error: e.to_string(),
    })?;
    let fail = |what: &'static str| {
        let url = url.clone();
        move |e: amiquip::Error| PublishError::Broker { url, what, error: e.to_string() }
    };
    let confirms = channel.listen_for_publisher_confirms().map_err(fail("listening for confirms"))?;
    channel.enable_publisher_confirms().map_err(fail("enabling publisher confirms"))?;

    for (position, item) in file.items.iter().enumerate() {
        let body = serde_json::to_vec(item).expect("a product serializes");
        let properties = AmqpProperties::default()
            .with_content_type("application/json".to_string())
            .with_delivery_mode(2)
            .with_message_id(message_id(file, position))
            .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
        channel
            .basic_publish("", Publish::with_properties(&body, broker.queue.as_str(), properties))
            .map_err(fail("publishing"))?;
    }

    let total = file.items.len();
    let deadline = Instant::now() + broker.confirm_timeout;
    let mut smoother = ConfirmSmoother::new();
    let (mut acked, mut refused) = (0, Vec::new());
    while acked + refused.len() < total {
        let left = deadline.saturating_duration_since(Instant::now());
        let raw = match confirms.recv_timeout(left) {
            Ok(raw) => raw,
            Err(e) if e.is_timeout() => {
                return Err(PublishError::Unconfirmed {
                    url,
                    confirmed: acked + refused.len(),
                    total,
                    timeout: broker.confirm_timeout,
                })
            }
            Err(_) => return Err(PublishError::Closed { url, confirmed: acked + refused.len(), total }),
        };
        for confirm in smoother.process(raw) {
            match confirm {
                Confirm::Ack(_) => acked += 1,
                Confirm::Nack(payload) => refused.push(payload.delivery_tag),
            }
        }
    }
    if let Some(&first) = refused.first() {
        let title = file.items.get(first as usize - 1).map(|i| i.title.clone()).unwrap_or_default();
        return Err(PublishError::Refused { url, refused: refused.len(), total, first: title });
    }
    connection.close().map_err(fail("closing the connection"))?;
    Ok(acked)
}

/// A channel on which `queue` exists: used as it is when it exists (whatever its arguments),
/// else declared durable.
fn durable_queue(connection: &mut Connection, queue: &str) -> Result<Channel, amiquip::Error> {
    let channel = connection.open_channel(None)?;
    if channel.queue_declare_passive(queue).is_ok() {
        return Ok(channel);
    }
    // The broker closed that channel (404); declare on a new one.
    let channel = connection.open_channel(None)?;
    channel.queue_declare(queue, QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() })?;
    Ok(channel)
}

/// The URL with a connection timeout of 10 s unless it sets one, so an unreachable broker
/// fails the run instead of hanging it.
fn with_connect_timeout(url: &str) -> String {
    if url.contains("connection_timeout=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&connection_timeout=10000")
    } else {
        format!("{url}?connection_timeout=10000")
    }
}

/// The URL with its password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(redact("amqp://guest:secret@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }

    #[test]
    fn a_connect_timeout_is_added_unless_given() {
        assert_eq!(with_connect_timeout("amqp://h"), "amqp://h?connection_timeout=10000");
        assert_eq!(with_connect_timeout("amqp://h?heartbeat=5"), "amqp://h?heartbeat=5&connection_timeout=10000");
        assert_eq!(with_connect_timeout("amqp://h?connection_timeout=5"), "amqp://h?connection_timeout=5");
    }
}
