//! Direct reply-to: RPC replies without a reply queue, as RabbitMQ's `amq.rabbitmq.reply-to`.
//!
//! A requester consumes from the pseudo-queue `amq.rabbitmq.reply-to` (no-ack only, one such
//! consumer per channel) and publishes requests with `reply_to` set to that name. The broker
//! rewrites the property to `amq.rabbitmq.reply-to.<key>`, a name unique to that consumer.
//! A responder publishes to the default exchange with that name as the routing key, and the
//! broker hands the reply straight to the requester's connection: no queue, no ack, and no
//! delivery tag of its own (RabbitMQ sends the channel's next tag without taking it).
//!
//! The broker keeps one map from key to the consumer's [`ReplySink`] (its connection's outbox)
//! and channel. What a requester's channel does with the pseudo-queue is in
//! `amqp::channel`; this is only the map both ends of a conversation share.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use dashmap::DashMap;

use crate::auth::random::random_u64;
use crate::broker::message::Message;

/// The pseudo-queue a requester consumes from and names in `reply_to`.
pub const PSEUDO_QUEUE: &str = "amq.rabbitmq.reply-to";
/// The prefix of the names the broker gives reply consumers.
pub const PREFIX: &str = "amq.rabbitmq.reply-to.";

/// Where the broker hands direct replies: the requester's connection.
pub trait ReplySink: Send + Sync {
    /// Identifies the connection; part of the reply names it hands out.
    fn sink_id(&self) -> u64;
    /// Takes a reply for the reply consumer `key` on `channel`. Returns false, dropping it,
    /// when the connection is gone or too far behind to take more.
    fn push_reply(&self, channel: u16, key: Bytes, message: Arc<Message>) -> bool;
}

/// Where replies for one reply consumer go.
struct Target {
    sink: Arc<dyn ReplySink>,
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
    /// Registers a reply consumer on `channel` of the connection `sink`; returns its key.
    /// Shaped like RabbitMQ's (`<who>.<random>`, standard base64 with padding), so clients
    /// that parse or log these names see what they are used to.
    pub fn register(&self, sink: Arc<dyn ReplySink>, channel: u16) -> String {
        let mut who = sink.sink_id().to_be_bytes().to_vec();
        who.extend_from_slice(&channel.to_be_bytes());
        let mut random = random_u64().to_be_bytes().to_vec();
        random.extend_from_slice(&random_u64().to_be_bytes());
        let key = format!("{}.{}", BASE64.encode(who), BASE64.encode(random));
        self.targets.insert(key.clone(), Target { sink, channel });
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

    /// Hands a message routed through the default exchange to the reply consumers its
    /// routing keys (with any CC and BCC keys) name. Same as RabbitMQ, whose default exchange
    /// routes the set of keys: a reply named twice (in CC and BCC, or 2,000 times in BCC) is
    /// delivered once; keys that are not reply names are left to the queues. `on_taken` is
    /// told each name whose consumer took it.
    pub fn deliver_named<'k>(
        &self,
        keys: impl Iterator<Item = &'k [u8]>,
        message: &Arc<Message>,
        mut on_taken: impl FnMut(&[u8]),
    ) {
        let prefix = PREFIX.as_bytes();
        let mut named: Vec<&[u8]> = keys.filter(|k| k.starts_with(prefix)).collect();
        if named.is_empty() {
            return;
        }
        named.sort_unstable();
        named.dedup();
        for key in named {
            if self.deliver(key, message) {
                on_taken(key);
            }
        }
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
        target.sink.push_reply(
            target.channel,
            Bytes::copy_from_slice(key.as_bytes()),
            message.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nowhere;
    impl ReplySink for Nowhere {
        fn sink_id(&self) -> u64 {
            7
        }
        fn push_reply(&self, _: u16, _: Bytes, _: Arc<Message>) -> bool {
            false
        }
    }

    #[test]
    fn keys_look_like_rabbitmqs_and_are_unique() {
        let replies = ReplyConsumers::default();
        let sink: Arc<dyn ReplySink> = Arc::new(Nowhere);
        let a = replies.register(sink.clone(), 1);
        let b = replies.register(sink, 1);
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
