//! Changes operators make while the broker runs (the management API, `lepusctl`): vhosts
//! and policies. Each is recorded in the definitions and takes effect at once: a policy set
//! or cleared is re-applied to the live queues and exchanges it matches.

use std::sync::Arc;

use super::Broker;
use super::vhost::VirtualHost;
use crate::store::definitions::{Change, GlobalParameterDef, PolicyDef, VhostDef, json_within};

/// How deeply a policy setting's value may nest lists and objects.
const MAX_POLICY_VALUE_LEVELS: usize = 8;
/// The largest policy definition taken, as compact JSON: the largest arguments a declare
/// takes (`mgmt::http::MAX_ARGUMENTS_JSON_BYTES`, what RabbitMQ's default `frame_max` lets a
/// declare carry), since a policy's settings stand for arguments.
const MAX_POLICY_DEFINITION_JSON_BYTES: usize = 128 * 1024;

/// How deeply `v` nests arrays and objects (a scalar is 0), walked without recursion.
fn json_depth(v: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match v {
            serde_json::Value::Array(items) => stack.extend(items.iter().map(|x| (x, depth + 1))),
            serde_json::Value::Object(map) => stack.extend(map.values().map(|x| (x, depth + 1))),
            _ => {}
        }
    }
    deepest
}

/// The policy keys RabbitMQ 3.10 recognises; a policy with any other is refused, as
/// RabbitMQ's validation does.
pub const POLICY_KEYS: &[&str] = &[
    "alternate-exchange",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "dead-letter-strategy",
    "delivery-limit",
    "expires",
    "federation-upstream",
    "federation-upstream-set",
    "ha-mode",
    "ha-params",
    "ha-promote-on-failure",
    "ha-promote-on-shutdown",
    "ha-sync-batch-size",
    "ha-sync-mode",
    "initial-cluster-size",
    "max-age",
    "max-in-memory-bytes",
    "max-in-memory-length",
    "max-length",
    "max-length-bytes",
    "message-ttl",
    "overflow",
    "queue-leader-locator",
    "queue-master-locator",
    "queue-mode",
    "queue-version",
    "stream-max-segment-size-bytes",
];

/// The global runtime parameter that names the cluster, as RabbitMQ calls it.
pub const CLUSTER_NAME: &str = "cluster_name";

/// The global runtime parameter that holds the cluster's permanent id, as RabbitMQ calls it.
pub const INTERNAL_CLUSTER_ID: &str = "internal_cluster_id";

/// The longest cluster name (or id) taken: every connection's server properties carry the
/// name, and every Prometheus scrape the id.
pub const MAX_CLUSTER_NAME_BYTES: usize = 1024;

/// A new permanent id for a cluster, in RabbitMQ's shape (`rabbitmq-cluster-id-` and 16
/// random bytes in URL-safe base64): tools that read it see what they know.
pub fn new_cluster_id() -> String {
    format!(
        "rabbitmq-cluster-id-{}",
        crate::auth::random::random_suffix()
    )
}

/// The refusal of a cluster name or id longer than [`MAX_CLUSTER_NAME_BYTES`].
pub fn global_too_long(name: &str) -> String {
    let what = match name {
        CLUSTER_NAME => "the cluster name",
        _ => "the cluster id",
    };
    format!("{what} is longer than {MAX_CLUSTER_NAME_BYTES} bytes")
}

/// A global parameter Lepus keeps in memory as a string.
fn read_global(slot: &std::sync::RwLock<String>) -> String {
    slot.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Broker {
    /// The cluster's name (see [`Broker::cluster_name`]'s field).
    pub fn cluster_name(&self) -> String {
        read_global(&self.cluster_name)
    }

    /// Names the cluster, for connections opened from now on, and records the name with
    /// the definitions (as RabbitMQ's `set_cluster_name`); returns the epoch it is durable
    /// in. Same as RabbitMQ, an empty name is taken.
    pub fn set_cluster_name(&self, name: String) -> Result<u64, String> {
        self.set_global(&self.cluster_name, CLUSTER_NAME, name)
    }

    /// The cluster's permanent id (`internal_cluster_id`).
    pub fn cluster_id(&self) -> String {
        read_global(&self.cluster_id)
    }

    /// Replaces the cluster's permanent id (an import of definitions does, as RabbitMQ's
    /// does), recorded with the definitions; returns the epoch it is durable in.
    pub fn set_cluster_id(&self, id: String) -> Result<u64, String> {
        self.set_global(&self.cluster_id, INTERNAL_CLUSTER_ID, id)
    }

    /// Sets a global parameter Lepus keeps in memory as a string (the cluster's name or
    /// id), and records it with the definitions.
    fn set_global(
        &self,
        slot: &std::sync::RwLock<String>,
        name: &str,
        value: String,
    ) -> Result<u64, String> {
        if value.len() > MAX_CLUSTER_NAME_BYTES {
            return Err(global_too_long(name));
        }
        // Under the value's lock, so that of two values set at once the one kept in memory
        // is the one recorded last.
        let mut current = slot.write().unwrap_or_else(|e| e.into_inner());
        let epoch = self
            .definitions
            .record(Change::PutGlobalParameter(GlobalParameterDef {
                name: name.into(),
                value: serde_json::Value::String(value.clone()),
            }));
        *current = value;
        Ok(epoch)
    }

    /// `add_vhost`: creates the vhost unless it exists; an existing one takes the limits and
    /// description given. Returns whether it was created. Of two creations of one name at
    /// once, one creates it and the other updates it: the vhost joins the broker only if
    /// the name is still free, so nothing declared in it is lost to a second copy. A name
    /// longer than an AMQP short string is refused: no client could open the vhost.
    pub fn add_vhost(&self, def: &VhostDef) -> Result<bool, String> {
        if def.name.len() > crate::protocol::SHORT_STRING_MAX_BYTES {
            return Err(format!(
                "vhost should be less than {} bytes, actually was {}",
                crate::protocol::SHORT_STRING_MAX_BYTES,
                def.name.len()
            ));
        }
        let _changing = self.changing_vhosts();
        if let Some(existing) = self.vhost(&def.name) {
            self.update_vhost(&existing, def);
            return Ok(false);
        }
        let vhost = VirtualHost::new(&def.name, self.vhost_services());
        vhost.set_limits(def.limits.clone());
        vhost.reload_policies(false);
        vhost.reload_policies(true);
        match self.vhosts.entry(def.name.clone()) {
            dashmap::Entry::Occupied(won) => {
                let existing = won.get().clone();
                drop(won);
                self.update_vhost(&existing, def);
                return Ok(false);
            }
            dashmap::Entry::Vacant(free) => {
                free.insert(vhost.clone());
            }
        }
        // A policy set for it meanwhile did not find it: it reads them again.
        vhost.reload_policies(false);
        vhost.reload_policies(true);
        self.definitions.record(Change::PutVhost(def.clone()));
        Ok(true)
    }

    /// Serialises creating, updating and deleting vhosts: each changes the live vhost and
    /// then records its definition, and two at once must leave both the same (an update
    /// between a creation's insert and its record, or after a deletion, set the one and
    /// not the other). Never held across an `.await`.
    pub(super) fn changing_vhosts(&self) -> std::sync::MutexGuard<'_, ()> {
        self.vhost_changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `add_vhost` of a vhost that exists: it takes the limits, description and tags given.
    fn update_vhost(&self, existing: &VirtualHost, def: &VhostDef) {
        if !def.limits.is_empty() {
            existing.set_limits(def.limits.clone());
        }
        let mut recorded = self
            .definitions
            .vhost(&def.name)
            .unwrap_or_else(|| VhostDef::named(&def.name));
        if !def.limits.is_empty() {
            recorded.limits = def.limits.clone();
        }
        if !def.description.is_empty() || !def.tags.is_empty() {
            recorded.description = def.description.clone();
            recorded.tags = def.tags.clone();
        }
        self.definitions.record(Change::PutVhost(recorded));
    }

    /// `delete_vhost`: closes its connections (320), deletes its queues with their messages,
    /// its exchanges, permissions and policies. Returns the epoch the deletion is durable in.
    pub fn delete_vhost(&self, name: &str) -> Result<u64, String> {
        let _changing = self.changing_vhosts();
        let Some((_, vhost)) = self.vhosts.remove(name) else {
            return Err(format!("Virtual host '{name}' does not exist"));
        };
        vhost.retire();
        for conn in self.connections.list() {
            if conn.info().opened().is_some_and(|o| o.vhost == name) {
                conn.close(
                    320,
                    format!("CONNECTION_FORCED - vhost '{name}' is deleted"),
                );
            }
        }
        for q in vhost.queues() {
            vhost.remove_queue(&q);
        }
        vhost.retire_exchanges();
        self.access.forget_vhost(name);
        Ok(self.definitions.record(Change::DeleteVhost {
            name: name.to_owned(),
        }))
    }

    /// Checks a policy as RabbitMQ validates it: a known vhost, a valid pattern, a known
    /// apply-to and only recognised keys (operator policies: only limits).
    pub fn validate_policy(&self, p: &PolicyDef, operator: bool) -> Result<(), String> {
        if self.vhost(&p.vhost).is_none() {
            return Err(format!("Virtual host '{}' does not exist", p.vhost));
        }
        // Compiled as the policy will be (`Policy::compile`).
        let pattern = crate::auth::pattern::Matcher::compile(
            &p.pattern,
            crate::auth::pattern::Classes::Unicode,
        );
        pattern.map_err(|e| {
            format!(
                "Validation failed\n\n{} is not a valid regular expression: {e}\n",
                p.pattern
            )
        })?;
        if !matches!(p.apply_to.as_str(), "queues" | "exchanges" | "all") {
            return Err(format!(
                "Validation failed\n\n\"{}\" is not a valid apply-to value\n",
                p.apply_to
            ));
        }
        let serde_json::Value::Object(definition) = &p.definition else {
            return Err("Validation failed\n\ndefinition must be a JSON object\n".into());
        };
        if definition.is_empty() {
            return Err("Validation failed\n\nno policy provided\n".into());
        }
        let allowed = match operator {
            true => super::policy::OPERATOR_KEYS,
            false => POLICY_KEYS,
        };
        let unknown: Vec<&String> = definition
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .collect();
        if !unknown.is_empty() {
            let listed: Vec<String> = unknown
                .iter()
                // RabbitMQ's reason is the Erlang term, HTML-escaped.
                .map(|k| format!("{{&lt;&lt;\"{k}\"&gt;&gt;,{}}}", definition[k.as_str()]))
                .collect();
            return Err(format!(
                "Validation failed\n\n[{}] are not recognised policy settings\n",
                listed.join(",")
            ));
        }
        // Every setting's value is a number, a string or a list of them. Deeper JSON, stored,
        // could be deeper than the definitions reader takes back at the next start.
        if let Some(key) = definition
            .iter()
            .find(|(_, v)| json_depth(v) > MAX_POLICY_VALUE_LEVELS)
            .map(|(k, _)| k)
        {
            return Err(format!(
                "Validation failed\n\n{key} nests deeper than {MAX_POLICY_VALUE_LEVELS} levels\n"
            ));
        }
        // Every valid setting is a number, a short string or a short list; a definition
        // bounded only by the request's body was copied into every listing of every queue
        // it applies to.
        if !json_within(&p.definition, MAX_POLICY_DEFINITION_JSON_BYTES) {
            return Err(format!(
                "Validation failed\n\ndefinition longer than {MAX_POLICY_DEFINITION_JSON_BYTES} bytes as JSON\n"
            ));
        }
        Ok(())
    }

    /// Sets a policy (or operator policy) and applies it at once.
    pub fn put_policy(&self, p: PolicyDef, operator: bool) -> Result<u64, String> {
        self.validate_policy(&p, operator)?;
        let vhost = p.vhost.clone();
        let epoch = match operator {
            true => self.definitions.record(Change::PutOperatorPolicy(p)),
            false => self.definitions.record(Change::PutPolicy(p)),
        };
        self.reapply_policies(&vhost, operator);
        Ok(epoch)
    }

    /// Clears a policy (or operator policy) and applies what is left at once.
    pub fn delete_policy(&self, vhost: &str, name: &str, operator: bool) -> Result<u64, String> {
        let recorded = match operator {
            true => self.definitions.operator_policies(),
            false => self.definitions.policies(),
        };
        if !recorded.iter().any(|p| p.vhost == vhost && p.name == name) {
            return Err(format!(
                "Parameter does not exist: policy '{name}' in vhost '{vhost}'"
            ));
        }
        let (vhost, name) = (vhost.to_owned(), name.to_owned());
        let epoch = match operator {
            true => self.definitions.record(Change::DeleteOperatorPolicy {
                vhost: vhost.clone(),
                name,
            }),
            false => self.definitions.record(Change::DeletePolicy {
                vhost: vhost.clone(),
                name,
            }),
        };
        self.reapply_policies(&vhost, operator);
        Ok(epoch)
    }

    fn reapply_policies(&self, vhost: &str, operator: bool) {
        let Some(v): Option<Arc<VirtualHost>> = self.vhost(vhost) else {
            return;
        };
        v.reload_policies(operator);
    }
}
