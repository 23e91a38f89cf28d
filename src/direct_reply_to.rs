//! Direct reply-to: RPC replies without a reply queue, as RabbitMQ's `amq.rabbitmq.reply-to`.
//!
//! A requester consumes from the pseudo-queue `amq.rabbitmq.reply-to` (no-ack only, one such
//! consumer per channel) and publishes requests with `reply_to` set to that name. The broker
//! rewrites the property to `amq.rabbitmq.reply-to.<key>`, a name unique to that consumer.
//! A responder publishes to the default exchange with that name as the routing key, and the
//! broker hands the reply straight to the requester's connection: no queue, no ack, and no
//! delivery tag of its own (RabbitMQ sends the channel's next tag without taking it).
//!
//! The broker keeps one map from key to the consumer's connection outbox and channel.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use dashmap::DashMap;

use crate::message::Message;
use crate::outbox::{Outbox, OutboxEvent};

/// The pseudo-queue a requester consumes from and names in `reply_to`.
pub const PSEUDO_QUEUE: &str = "amq.rabbitmq.reply-to";
/// The prefix of the names the broker gives reply consumers.
pub const PREFIX: &str = "amq.rabbitmq.reply-to.";

/// Where replies for one reply consumer go.
struct Target {
    outbox: Arc<Outbox>,
    channel: u16,
}

/// Every live reply consumer of the broker, by key.
#[derive(Default)]
pub struct ReplyConsumers {
    targets: DashMap<String, Target>,
}

impl std::fmt::Debug for ReplyConsumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyConsumers")
            .field("live", &self.targets.len())
            .finish()
    }
}

impl ReplyConsumers {
    /// Registers a reply consumer on `channel` of the connection owning `outbox`; returns
    /// its key. Shaped like RabbitMQ's (`<who>.<random>`, standard base64 with padding), so
    /// clients that parse or log these names see what they are used to.
    pub fn register(&self, outbox: Arc<Outbox>, channel: u16) -> String {
        let mut who = outbox.connection_id.to_be_bytes().to_vec();
        who.extend_from_slice(&channel.to_be_bytes());
        let mut random = crate::naming::random_u64().to_be_bytes().to_vec();
        random.extend_from_slice(&crate::naming::random_u64().to_be_bytes());
        let key = format!("{}.{}", BASE64.encode(who), BASE64.encode(random));
        self.targets.insert(key.clone(), Target { outbox, channel });
        key
    }

    pub fn unregister(&self, key: &str) {
        self.targets.remove(key);
    }

    /// Whether `name` (a full `amq.rabbitmq.reply-to.<key>` name) has a live consumer.
    pub fn is_live(&self, name: &str) -> bool {
        name.strip_prefix(PREFIX)
            .is_some_and(|key| self.targets.contains_key(key))
    }

    /// Hands a reply published to `routing_key` to its consumer. Returns false when no such
    /// consumer exists (the reply is dropped, as in RabbitMQ) or its connection is too far
    /// behind to take more.
    pub fn deliver(&self, routing_key: &[u8], message: &Arc<Message>) -> bool {
        let Some(key) = std::str::from_utf8(routing_key)
            .ok()
            .and_then(|k| k.strip_prefix(PREFIX))
        else {
            return false;
        };
        let Some(target) = self.targets.get(key) else {
            return false;
        };
        target.outbox.push_reply(
            OutboxEvent::DirectReply {
                channel: target.channel,
                key: Bytes::copy_from_slice(key.as_bytes()),
                message: message.clone(),
            },
            message.wire_size(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_look_like_rabbitmqs_and_are_unique() {
        let replies = ReplyConsumers::default();
        let outbox = Arc::new(Outbox::new(7, 1024));
        let a = replies.register(outbox.clone(), 1);
        let b = replies.register(outbox, 1);
        assert_ne!(a, b);
        let (who, random) = a.split_once('.').unwrap();
        assert_eq!(BASE64.decode(who).unwrap().len(), 10);
        assert_eq!(BASE64.decode(random).unwrap().len(), 16);
        assert!(replies.is_live(&format!("{PREFIX}{a}")));
        replies.unregister(&a);
        assert!(!replies.is_live(&format!("{PREFIX}{a}")));
        assert!(!replies.is_live(PSEUDO_QUEUE));
    }
}
