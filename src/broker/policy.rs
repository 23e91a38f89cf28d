//! Policies: RabbitMQ's way of configuring queues and exchanges by name pattern instead of
//! by declare arguments.
//!
//! A policy has a name, a regular expression matched against queue or exchange names, what it
//! applies to (`queues`, `exchanges` or `all`), a priority, and a definition (a JSON object of
//! keys such as `message-ttl` or `dead-letter-exchange`). For each queue or exchange, the
//! matching policy with the highest priority applies (ties go to the name that sorts last,
//! as in RabbitMQ). How a policy value combines with a declare argument is up to each key; see
//! [`crate::queue::settings`].
//!
//! Policies come from the definitions (`definitions.json`, RabbitMQ's export format).

use crate::auth::pattern::{Classes, Matcher};
use serde_json::Value;

use crate::store::definitions::PolicyDef;

/// A policy with its pattern compiled.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pattern: Matcher,
    apply_to: ApplyTo,
    priority: i64,
    pub definition: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApplyTo {
    Queues,
    Exchanges,
    All,
}

/// What a policy is being matched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Queue,
    Exchange,
}

impl Policy {
    /// Compiles a policy from its definition; `None` (with a warning) if the pattern is not
    /// a valid regular expression or the definition is not an object.
    pub fn compile(def: &PolicyDef) -> Option<Policy> {
        let pattern = match Matcher::compile(&def.pattern, Classes::Unicode) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(policy = %def.name, error = %e, "ignoring a policy with an invalid pattern");
                return None;
            }
        };
        let apply_to = match def.apply_to.as_str() {
            "queues" => ApplyTo::Queues,
            "exchanges" => ApplyTo::Exchanges,
            "all" | "" => ApplyTo::All,
            other => {
                tracing::warn!(policy = %def.name, apply_to = other, "ignoring a policy with an unknown apply-to");
                return None;
            }
        };
        let Value::Object(definition) = &def.definition else {
            tracing::warn!(policy = %def.name, "ignoring a policy whose definition is not an object");
            return None;
        };
        Some(Policy {
            name: def.name.clone(),
            pattern,
            apply_to,
            priority: def.priority,
            definition: definition.clone(),
        })
    }

    fn applies(&self, target: Target, name: &str) -> bool {
        let kind = matches!(
            (self.apply_to, target),
            (ApplyTo::All, _)
                | (ApplyTo::Queues, Target::Queue)
                | (ApplyTo::Exchanges, Target::Exchange)
        );
        kind && self.pattern.matches(name)
    }

    /// An integer value of the definition.
    pub fn int(&self, key: &str) -> Option<i64> {
        self.definition.get(key).and_then(Value::as_i64)
    }

    /// A string value of the definition.
    pub fn string(&self, key: &str) -> Option<&str> {
        self.definition.get(key).and_then(Value::as_str)
    }
}

/// The keys an operator policy may set: limits, which cap what user policies and arguments
/// ask (the lower value wins), as in RabbitMQ.
pub const OPERATOR_KEYS: &[&str] = &[
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
];

/// The policy in force for a queue: the user policy with the operator policy's limits laid
/// over it, each key at the lower of the two values. Named after the user policy, if any.
pub fn with_operator(user: Option<&Policy>, operator: Option<&Policy>) -> Option<Policy> {
    let Some(op) = operator else {
        return user.cloned();
    };
    let mut merged = match user {
        Some(u) => u.clone(),
        None => Policy {
            definition: serde_json::Map::new(),
            ..op.clone()
        },
    };
    for key in OPERATOR_KEYS {
        let Some(cap) = op.int(key) else { continue };
        let value = merged.int(key).map_or(cap, |v| v.min(cap));
        merged
            .definition
            .insert((*key).to_owned(), Value::from(value));
    }
    Some(merged)
}

/// The policy that applies to a queue or exchange named `name`, if any. As in RabbitMQ
/// (checked on a 3.10.8 node), names starting with `amq.` are no exception: a policy applies
/// to `amq.topic` and to server-named `amq.gen-...` queues alike.
pub fn matching<'a>(policies: &'a [Policy], target: Target, name: &str) -> Option<&'a Policy> {
    policies
        .iter()
        .filter(|p| p.applies(target, name))
        .max_by(|a, b| a.priority.cmp(&b.priority).then(a.name.cmp(&b.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, pattern: &str, apply_to: &str, priority: i64, definition: Value) -> Policy {
        Policy::compile(&PolicyDef {
            vhost: "/".into(),
            name: name.into(),
            pattern: pattern.into(),
            apply_to: apply_to.into(),
            definition,
            priority,
        })
        .unwrap()
    }

    #[test]
    fn the_highest_priority_matching_policy_applies() {
        let policies = vec![
            def(
                "ttl",
                "^orders\\.",
                "queues",
                0,
                serde_json::json!({"message-ttl": 1000}),
            ),
            def(
                "dlx",
                "^orders\\.eu",
                "all",
                5,
                serde_json::json!({"dead-letter-exchange": "dlx"}),
            ),
            def(
                "ae",
                ".*",
                "exchanges",
                9,
                serde_json::json!({"alternate-exchange": "ae"}),
            ),
        ];
        let p = matching(&policies, Target::Queue, "orders.eu").unwrap();
        assert_eq!(p.string("dead-letter-exchange"), Some("dlx"));
        let p = matching(&policies, Target::Queue, "orders.us").unwrap();
        assert_eq!(p.int("message-ttl"), Some(1000));
        assert!(matching(&policies, Target::Queue, "other").is_none());
        assert_eq!(
            matching(&policies, Target::Exchange, "x").unwrap().name,
            "ae"
        );
        assert_eq!(
            matching(&policies, Target::Exchange, "amq.direct")
                .unwrap()
                .name,
            "ae",
            "as in RabbitMQ, amq.* names are no exception"
        );
    }

    #[test]
    fn invalid_patterns_are_ignored() {
        assert!(
            Policy::compile(&PolicyDef {
                vhost: "/".into(),
                name: "bad".into(),
                pattern: "(".into(),
                apply_to: "queues".into(),
                definition: serde_json::json!({}),
                priority: 0,
            })
            .is_none()
        );
    }
}
