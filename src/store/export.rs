//! What the definitions are: vhosts, users, permissions, durable exchanges and queues,
//! bindings and policies, in the shape of RabbitMQ's definitions export, and the changes
//! journalled between snapshots ([`Change`]). Arguments are kept twice: as plain JSON, as
//! RabbitMQ exports them, and with their AMQP types.

use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::positions::{BindingKey, ListKey, Positions, swap_out};
use crate::protocol::table::MAX_TABLE_DEPTH;

/// The definitions. Exchanges, queues and bindings are shared (`Arc`), so that a copy (for a
/// snapshot, or for `GET /api/definitions`) costs a pointer per item under the definitions
/// lock, not a deep copy: with 200,000 durable queues and as many bindings, the deep copy
/// took 0.6-1.5 s, and every durable declare waited for it.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Definitions {
    #[serde(default)]
    pub lepus_version: String,
    #[serde(default)]
    pub users: Vec<UserDef>,
    #[serde(default)]
    pub vhosts: Vec<VhostDef>,
    #[serde(default)]
    pub permissions: Vec<PermissionDef>,
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermissionDef>,
    #[serde(default)]
    pub exchanges: Vec<Arc<ExchangeDef>>,
    #[serde(default)]
    pub queues: Vec<Arc<QueueDef>>,
    #[serde(default)]
    pub bindings: Vec<Arc<BindingDef>>,
    #[serde(default)]
    pub policies: Vec<PolicyDef>,
    /// Operator policies: set by operators, they cap what user policies and arguments ask.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operator_policies: Vec<PolicyDef>,
    /// Settings of the whole node, as RabbitMQ's global runtime parameters: `cluster_name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub global_parameters: Vec<GlobalParameterDef>,
    /// The next id to give a durable queue (its directory under `queues/`).
    #[serde(default)]
    pub lepus_next_queue_id: u64,
    /// The first journal generation this snapshot does not contain.
    #[serde(default)]
    pub lepus_journal_generation: u64,
    /// Where each item is in the lists above, for changes to find them by a lookup.
    /// Derived from the lists, never written.
    #[serde(skip)]
    positions: Positions,
}

/// A copy without the positions: copies are read (exported, written as the snapshot), and
/// one that is changed builds its own when first changed. Copying the positions cost more
/// than the lists.
impl Clone for Definitions {
    fn clone(&self) -> Self {
        Definitions {
            lepus_version: self.lepus_version.clone(),
            users: self.users.clone(),
            vhosts: self.vhosts.clone(),
            permissions: self.permissions.clone(),
            topic_permissions: self.topic_permissions.clone(),
            exchanges: self.exchanges.clone(),
            queues: self.queues.clone(),
            bindings: self.bindings.clone(),
            policies: self.policies.clone(),
            operator_policies: self.operator_policies.clone(),
            global_parameters: self.global_parameters.clone(),
            lepus_next_queue_id: self.lepus_next_queue_id,
            lepus_journal_generation: self.lepus_journal_generation,
            positions: Positions::default(),
        }
    }
}

impl BindingKey {
    fn of(b: &BindingDef) -> Self {
        BindingKey::new([
            b.vhost.clone(),
            b.source.clone(),
            b.destination.clone(),
            b.destination_type.clone(),
            b.routing_key.clone(),
            b.arguments.to_string(),
            b.lepus_arguments.clone(),
        ])
    }
}

impl Positions {
    fn lengths(d: &Definitions) -> (usize, usize, usize) {
        (d.exchanges.len(), d.queues.len(), d.bindings.len())
    }

    fn build(d: &Definitions) -> Positions {
        let mut p = Positions::default();
        for (i, x) in d.exchanges.iter().enumerate() {
            p.exchanges.insert((x.vhost.clone(), x.name.clone()), i);
        }
        for (i, q) in d.queues.iter().enumerate() {
            p.queues.insert((q.vhost.clone(), q.name.clone()), i);
        }
        for (i, b) in d.bindings.iter().enumerate() {
            p.index_binding(b, i);
        }
        p.built_for = Some(Self::lengths(d));
        p
    }

    fn index_binding(&mut self, b: &BindingDef, at: usize) {
        let key = BindingKey::of(b);
        self.by_source
            .entry((b.vhost.clone(), b.source.clone()))
            .or_default()
            .insert(key.clone());
        self.by_destination
            .entry((
                b.vhost.clone(),
                b.destination_type.clone(),
                b.destination.clone(),
            ))
            .or_default()
            .insert(key.clone());
        self.bindings.insert(key, at);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserDef {
    pub name: String,
    /// RabbitMQ's format: base64(salt4 ++ SHA-256(salt4 ++ password)).
    pub password_hash: String,
    pub hashing_algorithm: String,
    /// A list; older exports (and `rabbitmqctl`) write one comma-separated string.
    #[serde(default, deserialize_with = "tags_from_string_or_list")]
    pub tags: Vec<String>,
    /// `max-connections` and `max-channels`, as `set_user_limits` sets them. RabbitMQ
    /// exports `{}` for a user without; older exports leave the key out.
    #[serde(default)]
    pub limits: UserLimits,
}

/// A user's limits, over all of the user's connections; absent or negative means none.
/// Fields in RabbitMQ's (alphabetical) order, as it prints them. A name that is no limit is
/// refused, as RabbitMQ's import refuses it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserLimits {
    #[serde(
        rename = "max-channels",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_channels: Option<i64>,
    #[serde(
        rename = "max-connections",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connections: Option<i64>,
}

impl UserLimits {
    /// The names `set_user_limits` and `/api/user-limits` take.
    pub const NAMES: [&'static str; 2] = ["max-connections", "max-channels"];

    pub fn is_empty(&self) -> bool {
        self.max_channels.is_none() && self.max_connections.is_none()
    }

    /// The limit of this name, to set or clear; `None` for a name that is not a limit.
    pub fn slot(&mut self, name: &str) -> Option<&mut Option<i64>> {
        match name {
            "max-connections" => Some(&mut self.max_connections),
            "max-channels" => Some(&mut self.max_channels),
            _ => None,
        }
    }

    /// These limits with every one `changes` sets put over them, as `set_user_limits` merges.
    pub fn merged(mut self, changes: UserLimits) -> UserLimits {
        self.max_channels = changes.max_channels.or(self.max_channels);
        self.max_connections = changes.max_connections.or(self.max_connections);
        self
    }
}

fn tags_from_string_or_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Tags {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Tags::deserialize(d)? {
        Tags::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        Tags::Many(v) => v,
    })
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VhostDef {
    pub name: String,
    /// The vhost's limits (`max-queues`, `max-connections`), as RabbitMQ's
    /// `set_vhost_limits` takes them; absent or negative means none.
    #[serde(default, skip_serializing_if = "VhostLimits::is_empty")]
    pub limits: VhostLimits,
    /// What the management API's `PUT /api/vhosts/{name}` said of it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl VhostDef {
    pub fn named(name: &str) -> Self {
        VhostDef {
            name: name.to_owned(),
            limits: VhostLimits::default(),
            description: String::new(),
            tags: Vec::new(),
        }
    }
}

/// A vhost's limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VhostLimits {
    #[serde(
        rename = "max-queues",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_queues: Option<i64>,
    #[serde(
        rename = "max-connections",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connections: Option<i64>,
}

impl VhostLimits {
    pub fn is_empty(&self) -> bool {
        self.max_queues.is_none() && self.max_connections.is_none()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PermissionDef {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A user's topic permissions on one exchange, in RabbitMQ's export shape.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopicPermissionDef {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExchangeDef {
    pub name: String,
    pub vhost: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Value,
    /// The arguments with their AMQP types (base64 of the encoded field table).
    #[serde(default)]
    pub lepus_arguments: String,
    /// Who declared it, kept across restarts as RabbitMQ keeps it (see
    /// `Exchange::declared_by`); empty in definitions written before it was kept. An export
    /// leaves it out, as RabbitMQ's does, and an import ignores it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lepus_user: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueDef {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub arguments: Value,
    #[serde(default)]
    pub lepus_arguments: String,
    /// Lepus: the queue's log directory under `queues/`.
    #[serde(default)]
    pub lepus_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BindingDef {
    pub source: String,
    pub vhost: String,
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    pub routing_key: String,
    pub arguments: Value,
    #[serde(default)]
    pub lepus_arguments: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyDef {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    #[serde(rename = "apply-to")]
    pub apply_to: String,
    pub definition: Value,
    pub priority: i64,
}

/// A global runtime parameter, as RabbitMQ's definitions list it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GlobalParameterDef {
    pub name: String,
    pub value: Value,
}

/// One change, as written to the journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    PutUser(UserDef),
    PutVhost(VhostDef),
    PutPermission(PermissionDef),
    DeleteUser {
        name: String,
    },
    DeletePermission {
        user: String,
        vhost: String,
    },
    PutTopicPermission(TopicPermissionDef),
    /// All of the user's topic permissions in the vhost when `exchange` is absent.
    DeleteTopicPermission {
        user: String,
        vhost: String,
        #[serde(default)]
        exchange: Option<String>,
    },
    PutExchange(ExchangeDef),
    DeleteExchange {
        vhost: String,
        name: String,
    },
    PutQueue(QueueDef),
    DeleteQueue {
        vhost: String,
        name: String,
    },
    PutBinding(BindingDef),
    DeleteBinding(BindingDef),
    PutPolicy(PolicyDef),
    DeletePolicy {
        vhost: String,
        name: String,
    },
    /// The vhost and everything in it.
    DeleteVhost {
        name: String,
    },
    PutOperatorPolicy(PolicyDef),
    DeleteOperatorPolicy {
        vhost: String,
        name: String,
    },
    PutGlobalParameter(GlobalParameterDef),
}

impl Definitions {
    /// Applies a change (idempotently: replaying a journal twice gives the same state).
    pub fn apply(&mut self, change: Change) {
        let change = match self.apply_indexed(change) {
            Some(other) => other,
            None => return,
        };
        match change {
            Change::PutUser(u) => self.positions.users.put(&mut self.users, u),
            Change::PutVhost(v) => self.positions.vhosts.put(&mut self.vhosts, v),
            Change::PutPermission(p) => self.positions.permissions.put(&mut self.permissions, p),
            Change::DeleteUser { name } => {
                self.users.retain(|x| x.name != name);
                self.permissions.retain(|x| x.user != name);
                self.topic_permissions.retain(|x| x.user != name);
            }
            Change::DeletePermission { user, vhost } => {
                self.permissions
                    .retain(|x| !(x.user == user && x.vhost == vhost));
            }
            Change::PutTopicPermission(p) => self
                .positions
                .topic_permissions
                .put(&mut self.topic_permissions, p),
            Change::DeleteTopicPermission {
                user,
                vhost,
                exchange,
            } => {
                self.topic_permissions.retain(|x| {
                    !(x.user == user
                        && x.vhost == vhost
                        && exchange.as_ref().is_none_or(|e| *e == x.exchange))
                });
            }
            other => self.apply_policy_or_vhost(other),
        }
    }

    /// Builds the positions of exchanges, queues and bindings now, if they are not: at
    /// start, rather than under the definitions lock at the first change (with a million
    /// definitions, a second or two that every durable declare would wait for).
    pub fn index(&mut self) {
        if self.positions.built_for != Some(Positions::lengths(self)) {
            self.positions = Positions::build(self);
        }
    }

    /// Applies a change to exchanges, queues or bindings through their positions; returns
    /// any other change.
    fn apply_indexed(&mut self, change: Change) -> Option<Change> {
        if !matches!(
            change,
            Change::PutExchange(_)
                | Change::DeleteExchange { .. }
                | Change::PutQueue(_)
                | Change::DeleteQueue { .. }
                | Change::PutBinding(_)
                | Change::DeleteBinding(_)
        ) {
            return Some(change);
        }
        self.index();
        match change {
            Change::PutExchange(x) => {
                let key = (x.vhost.clone(), x.name.clone());
                match self.positions.exchanges.get(&key) {
                    Some(&at) => self.exchanges[at] = Arc::new(x),
                    None => {
                        self.positions.exchanges.insert(key, self.exchanges.len());
                        self.exchanges.push(Arc::new(x));
                    }
                }
            }
            Change::DeleteExchange { vhost, name } => {
                self.remove_exchange(&vhost, &name);
                let mut gone: Vec<BindingKey> = Vec::new();
                let sources = self.positions.by_source.get(&(vhost.clone(), name.clone()));
                let destination = (vhost, "exchange".to_owned(), name);
                let destinations = self.positions.by_destination.get(&destination);
                for set in [sources, destinations].into_iter().flatten() {
                    gone.extend(set.iter().cloned());
                }
                for key in gone {
                    self.remove_binding(&key);
                }
            }
            Change::PutQueue(q) => {
                self.lepus_next_queue_id = self.lepus_next_queue_id.max(q.lepus_id + 1);
                let key = (q.vhost.clone(), q.name.clone());
                match self.positions.queues.get(&key) {
                    Some(&at) => self.queues[at] = Arc::new(q),
                    None => {
                        self.positions.queues.insert(key, self.queues.len());
                        self.queues.push(Arc::new(q));
                    }
                }
            }
            Change::DeleteQueue { vhost, name } => {
                if let Some(at) = self.positions.queues.remove(&(vhost.clone(), name.clone())) {
                    let positions = &mut self.positions.queues;
                    swap_out(&mut self.queues, at, |q, at| {
                        positions.insert((q.vhost.clone(), q.name.clone()), at);
                    });
                }
                let destination = (vhost, "queue".to_owned(), name);
                let gone: Vec<BindingKey> = self
                    .positions
                    .by_destination
                    .get(&destination)
                    .map(|set| set.iter().cloned().collect())
                    .unwrap_or_default();
                for key in gone {
                    self.remove_binding(&key);
                }
            }
            Change::PutBinding(b) => {
                if !self.positions.bindings.contains_key(&BindingKey::of(&b)) {
                    self.positions.index_binding(&b, self.bindings.len());
                    self.bindings.push(Arc::new(b));
                }
            }
            Change::DeleteBinding(b) => self.remove_binding(&BindingKey::of(&b)),
            other => return Some(other),
        }
        self.positions.built_for = Some(Positions::lengths(self));
        None
    }

    fn remove_exchange(&mut self, vhost: &str, name: &str) {
        let key = (vhost.to_owned(), name.to_owned());
        if let Some(at) = self.positions.exchanges.remove(&key) {
            let positions = &mut self.positions.exchanges;
            swap_out(&mut self.exchanges, at, |x, at| {
                positions.insert((x.vhost.clone(), x.name.clone()), at);
            });
        }
    }

    fn remove_binding(&mut self, key: &BindingKey) {
        let Some(at) = self.positions.bindings.remove(key) else {
            return;
        };
        let positions = &mut self.positions.bindings;
        let gone = swap_out(&mut self.bindings, at, |b, at| {
            positions.insert(BindingKey::of(b), at);
        });
        let source = (gone.vhost.clone(), gone.source.clone());
        if let Some(set) = self.positions.by_source.get_mut(&source) {
            set.remove(key);
            if set.is_empty() {
                self.positions.by_source.remove(&source);
            }
        }
        let destination = (
            gone.vhost.clone(),
            gone.destination_type.clone(),
            gone.destination.clone(),
        );
        if let Some(set) = self.positions.by_destination.get_mut(&destination) {
            set.remove(key);
            if set.is_empty() {
                self.positions.by_destination.remove(&destination);
            }
        }
    }

    /// The policy and vhost-deletion half of [`Definitions::apply`].
    fn apply_policy_or_vhost(&mut self, change: Change) {
        match change {
            Change::PutPolicy(p) => self.positions.policies.put(&mut self.policies, p),
            Change::DeletePolicy { vhost, name } => {
                self.policies
                    .retain(|x| !(x.vhost == vhost && x.name == name));
            }
            Change::DeleteVhost { name } => {
                // Rare: the lists are scanned, and the positions built again when next used.
                self.positions.built_for = None;
                self.vhosts.retain(|x| x.name != name);
                self.permissions.retain(|x| x.vhost != name);
                self.topic_permissions.retain(|x| x.vhost != name);
                self.exchanges.retain(|x| x.vhost != name);
                self.queues.retain(|x| x.vhost != name);
                self.bindings.retain(|x| x.vhost != name);
                self.policies.retain(|x| x.vhost != name);
                self.operator_policies.retain(|x| x.vhost != name);
            }
            Change::PutOperatorPolicy(p) => self
                .positions
                .operator_policies
                .put(&mut self.operator_policies, p),
            Change::DeleteOperatorPolicy { vhost, name } => {
                self.operator_policies
                    .retain(|x| !(x.vhost == vhost && x.name == name));
            }
            Change::PutGlobalParameter(p) => {
                match self.global_parameters.iter_mut().find(|x| x.name == p.name) {
                    Some(old) => *old = p,
                    None => self.global_parameters.push(p),
                }
            }
            _ => {}
        }
    }
}

/// Whether `value` written as compact JSON takes at most `max_bytes`: measured by writing
/// it out, stopping at the limit, without building the text.
pub fn json_within(value: &Value, max_bytes: usize) -> bool {
    /// Counts down what is written through it, failing past zero.
    struct Budget(usize);

    impl std::io::Write for Budget {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self
                .0
                .checked_sub(buf.len())
                .ok_or_else(|| std::io::Error::other("over budget"))?;
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    serde_json::to_writer(Budget(max_bytes), value).is_ok()
}

/// Encodes arguments twice: as plain JSON (RabbitMQ's view) and with their AMQP types.
pub fn encode_arguments(table: &FieldTable) -> (Value, String) {
    let typed = amq_protocol::types::generation::gen_field_table(table)(Vec::new().into())
        .map(|ctx| BASE64.encode(ctx.write))
        .unwrap_or_default();
    (table_to_json(table), typed)
}

/// Decodes arguments, preferring the typed encoding. Refuses what no AMQP table is: nested
/// past [`MAX_TABLE_DEPTH`] (stored, it could not be read back) or a name past 255 bytes.
pub fn decode_arguments(json: &Value, typed: &str) -> Result<FieldTable, String> {
    if !typed.is_empty()
        && let Ok(bytes) = BASE64.decode(typed)
        && crate::protocol::table::check_depth(&bytes, MAX_TABLE_DEPTH).is_ok()
        && let Ok(([], table)) = amq_protocol::types::parsing::parse_field_table(&bytes[..])
    {
        return Ok(table);
    }
    match json_to_value(json, 0)? {
        AMQPValue::FieldTable(t) => Ok(t),
        _ => Ok(FieldTable::default()),
    }
}

fn table_to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &AMQPValue) -> Value {
    if let Some(i) = crate::protocol::table::as_int(v) {
        return Value::from(i);
    }
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::Float(f) => Value::from(*f as f64),
        AMQPValue::Double(d) => Value::from(*d),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::ByteArray(b) => Value::String(BASE64.encode(b.as_slice())),
        _ => Value::Null,
    }
}

/// JSON as an AMQP value; `depth` is how many tables and arrays hold it.
fn json_to_value(v: &Value, depth: usize) -> Result<AMQPValue, String> {
    if depth > MAX_TABLE_DEPTH {
        return Err(format!(
            "arguments nest deeper than {MAX_TABLE_DEPTH} levels"
        ));
    }
    Ok(match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(items) => {
            let mut a = FieldArray::default();
            for i in items {
                a.push(json_to_value(i, depth + 1)?);
            }
            AMQPValue::FieldArray(a)
        }
        Value::Object(map) => {
            let mut t = FieldTable::default();
            for (k, v) in map {
                let key = ShortString::try_new(k.clone())
                    .map_err(|_| "an argument name is longer than 255 bytes".to_owned())?;
                t.insert(key, json_to_value(v, depth + 1)?);
            }
            AMQPValue::FieldTable(t)
        }
    })
}

impl ListKey for UserDef {
    type Key = String;
    fn key(&self) -> String {
        self.name.clone()
    }
}

impl ListKey for VhostDef {
    type Key = String;
    fn key(&self) -> String {
        self.name.clone()
    }
}

impl ListKey for PermissionDef {
    type Key = (String, String);
    fn key(&self) -> (String, String) {
        (self.user.clone(), self.vhost.clone())
    }
}

impl ListKey for TopicPermissionDef {
    type Key = (String, String, String);
    fn key(&self) -> (String, String, String) {
        (self.user.clone(), self.vhost.clone(), self.exchange.clone())
    }
}

impl ListKey for PolicyDef {
    type Key = (String, String);
    fn key(&self) -> (String, String) {
        (self.vhost.clone(), self.name.clone())
    }
}

#[cfg(test)]
mod tests;
