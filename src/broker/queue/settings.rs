//! What a queue does with its messages beyond keeping them in order: TTLs, dead-lettering,
//! length limits, priorities, single active consumer, delivery limit. Worked out from the
//! declare arguments and the policy that applies, the way RabbitMQ 3.10 combines them: for
//! limits and TTLs the smaller of the two wins; for the dead-letter exchange, its routing key
//! and the overflow mode the argument wins; priorities and single active consumer come from
//! arguments only.

use amq_protocol::types::FieldTable;
use bytes::Bytes;

use crate::broker::policy::Policy;
use crate::protocol::table;

/// What a queue does when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest messages.
    #[default]
    DropHead,
    /// Refuse the new message: a nack for publishers using confirms.
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// The two queue types Lepus implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    /// RabbitMQ's replicated queue type, here single-node: it counts deliveries
    /// (`x-delivery-count`) and honours `x-delivery-limit`.
    Quorum,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSettings {
    pub queue_type: QueueType,
    /// Per-queue message TTL in milliseconds.
    pub message_ttl_ms: Option<u64>,
    /// The queue is deleted after being unused this long.
    pub expires_ms: Option<u64>,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<Bytes>,
    /// Most ready messages the queue holds.
    pub max_length: Option<u64>,
    /// Most body bytes of ready messages the queue holds.
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    /// Highest message priority honoured; `None` is a plain FIFO queue.
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
    /// Quorum queues: deliveries after which a returned message is dead-lettered.
    pub delivery_limit: Option<u64>,
    /// How long a consumer may hold a delivery unacknowledged (`x-consumer-timeout`).
    pub consumer_timeout_ms: Option<u64>,
    /// Quorum queues: dead letters stay in the queue until every queue they are routed to
    /// has them (`x-dead-letter-strategy: at-least-once`). Only with `reject-publish` and a
    /// dead-letter exchange, as in RabbitMQ; otherwise dead-lettering is at most once.
    pub dead_letter_at_least_once: bool,
}

/// A non-negative integer argument.
fn arg_u64(args: &FieldTable, key: &str) -> Option<u64> {
    table::get(args, key)
        .and_then(table::as_int)
        .and_then(|v| u64::try_from(v).ok())
}

fn arg_string(args: &FieldTable, key: &str) -> Option<String> {
    table::get(args, key)
        .and_then(table::as_bytes)
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

/// The smaller of the two, or whichever is set.
fn min_of(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn policy_u64(policy: Option<&Policy>, key: &str) -> Option<u64> {
    policy
        .and_then(|p| p.int(key))
        .and_then(|v| u64::try_from(v).ok())
}

fn parse_overflow(s: &str) -> Option<Overflow> {
    match s {
        "drop-head" => Some(Overflow::DropHead),
        "reject-publish" => Some(Overflow::RejectPublish),
        "reject-publish-dlx" => Some(Overflow::RejectPublishDlx),
        _ => None,
    }
}

impl QueueSettings {
    /// Settings from declare arguments (already validated when the queue was created) and
    /// the policy that applies to the queue.
    pub fn new(args: &FieldTable, policy: Option<&Policy>) -> QueueSettings {
        let queue_type = match arg_string(args, "x-queue-type").as_deref() {
            Some("quorum") => QueueType::Quorum,
            _ => QueueType::Classic,
        };
        let dead_letter_exchange = arg_string(args, "x-dead-letter-exchange").or_else(|| {
            policy
                .and_then(|p| p.string("dead-letter-exchange"))
                .map(str::to_owned)
        });
        let dead_letter_routing_key = arg_string(args, "x-dead-letter-routing-key")
            .or_else(|| {
                policy
                    .and_then(|p| p.string("dead-letter-routing-key"))
                    .map(str::to_owned)
            })
            .map(|k| Bytes::from(k.into_bytes()));
        let overflow = arg_string(args, "x-overflow")
            .as_deref()
            .and_then(parse_overflow)
            .or_else(|| {
                policy
                    .and_then(|p| p.string("overflow"))
                    .and_then(parse_overflow)
            })
            .unwrap_or_default();
        // Same as RabbitMQ 3.10: quorum queues do not support `reject-publish-dlx`; they
        // warn and drop from the head.
        let overflow = match (queue_type, overflow) {
            (QueueType::Quorum, Overflow::RejectPublishDlx) => {
                tracing::warn!(
                    "reject-publish-dlx is not supported by quorum queues; using drop-head"
                );
                Overflow::DropHead
            }
            (_, overflow) => overflow,
        };
        let strategy = arg_string(args, "x-dead-letter-strategy").or_else(|| {
            policy
                .and_then(|p| p.string("dead-letter-strategy"))
                .map(str::to_owned)
        });
        let dead_letter_at_least_once = queue_type == QueueType::Quorum
            && strategy.as_deref() == Some("at-least-once")
            && dead_letter_exchange.is_some();
        if dead_letter_at_least_once && overflow != Overflow::RejectPublish {
            // Same as RabbitMQ 3.10 (`rabbit_quorum_queue:dlh`).
            tracing::warn!(
                "at-least-once dead-lettering needs overflow reject-publish; falling back to at-most-once"
            );
        }
        let dead_letter_at_least_once =
            dead_letter_at_least_once && overflow == Overflow::RejectPublish;
        QueueSettings {
            queue_type,
            dead_letter_at_least_once,
            message_ttl_ms: min_of(
                arg_u64(args, "x-message-ttl"),
                policy_u64(policy, "message-ttl"),
            ),
            expires_ms: min_of(arg_u64(args, "x-expires"), policy_u64(policy, "expires")),
            dead_letter_exchange,
            dead_letter_routing_key,
            max_length: min_of(
                arg_u64(args, "x-max-length"),
                policy_u64(policy, "max-length"),
            ),
            max_length_bytes: min_of(
                arg_u64(args, "x-max-length-bytes"),
                policy_u64(policy, "max-length-bytes"),
            ),
            overflow,
            max_priority: arg_u64(args, "x-max-priority").map(|p| p.min(255) as u8),
            single_active_consumer: table::get(args, "x-single-active-consumer")
                .and_then(table::as_bool)
                .unwrap_or(false),
            delivery_limit: (queue_type == QueueType::Quorum)
                .then(|| {
                    min_of(
                        arg_u64(args, "x-delivery-limit"),
                        policy_u64(policy, "delivery-limit"),
                    )
                })
                .flatten(),
            consumer_timeout_ms: min_of(
                arg_u64(args, "x-consumer-timeout"),
                policy_u64(policy, "consumer-timeout"),
            ),
        }
    }

    /// Whether the queue has a length limit of any kind.
    pub fn limited(&self) -> bool {
        self.max_length.is_some() || self.max_length_bytes.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::definitions::PolicyDef;
    use amq_protocol::types::{AMQPValue, LongString};

    fn policy(definition: serde_json::Value) -> Policy {
        Policy::compile(&PolicyDef {
            vhost: "/".into(),
            name: "p".into(),
            pattern: ".*".into(),
            apply_to: "queues".into(),
            definition,
            priority: 0,
        })
        .unwrap()
    }

    #[test]
    fn same_as_rabbitmq_limits_take_the_smaller_and_arguments_win_for_the_rest() {
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(5000));
        args.insert("x-max-length".into(), AMQPValue::LongInt(10));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from("from-arg")),
        );
        let p = policy(serde_json::json!({
            "message-ttl": 1000, "max-length": 100, "dead-letter-exchange": "from-policy",
            "overflow": "reject-publish", "expires": 60000
        }));
        let s = QueueSettings::new(&args, Some(&p));
        assert_eq!(s.message_ttl_ms, Some(1000));
        assert_eq!(s.max_length, Some(10));
        assert_eq!(s.dead_letter_exchange.as_deref(), Some("from-arg"));
        assert_eq!(s.overflow, Overflow::RejectPublish);
        assert_eq!(s.expires_ms, Some(60000));
        assert_eq!(
            s.delivery_limit, None,
            "classic queues have no delivery limit"
        );
    }
}
