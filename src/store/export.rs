//! What the definitions are: vhosts, users, permissions, durable exchanges and queues,
//! bindings and policies, in the shape of RabbitMQ's definitions export, and the changes
//! journalled between snapshots ([`Change`]). Arguments are kept twice: as plain JSON, as
//! RabbitMQ exports them, and with their AMQP types.

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
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
    pub exchanges: Vec<ExchangeDef>,
    #[serde(default)]
    pub queues: Vec<QueueDef>,
    #[serde(default)]
    pub bindings: Vec<BindingDef>,
    #[serde(default)]
    pub policies: Vec<PolicyDef>,
    /// Operator policies: set by operators, they cap what user policies and arguments ask.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operator_policies: Vec<PolicyDef>,
    /// The next id to give a durable queue (its directory under `queues/`).
    #[serde(default)]
    pub lepus_next_queue_id: u64,
    /// The first journal generation this snapshot does not contain.
    #[serde(default)]
    pub lepus_journal_generation: u64,
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
}

impl Definitions {
    /// Applies a change (idempotently: replaying a journal twice gives the same state).
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::PutUser(u) => {
                self.users.retain(|x| x.name != u.name);
                self.users.push(u);
            }
            Change::PutVhost(v) => {
                self.vhosts.retain(|x| x.name != v.name);
                self.vhosts.push(v);
            }
            Change::PutPermission(p) => {
                self.permissions
                    .retain(|x| !(x.user == p.user && x.vhost == p.vhost));
                self.permissions.push(p);
            }
            Change::DeleteUser { name } => {
                self.users.retain(|x| x.name != name);
                self.permissions.retain(|x| x.user != name);
                self.topic_permissions.retain(|x| x.user != name);
            }
            Change::DeletePermission { user, vhost } => {
                self.permissions
                    .retain(|x| !(x.user == user && x.vhost == vhost));
            }
            Change::PutTopicPermission(p) => {
                self.topic_permissions.retain(|x| {
                    !(x.user == p.user && x.vhost == p.vhost && x.exchange == p.exchange)
                });
                self.topic_permissions.push(p);
            }
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
            Change::PutExchange(x) => {
                self.exchanges
                    .retain(|e| !(e.vhost == x.vhost && e.name == x.name));
                self.exchanges.push(x);
            }
            Change::DeleteExchange { vhost, name } => {
                self.exchanges
                    .retain(|e| !(e.vhost == vhost && e.name == name));
                self.bindings.retain(|b| {
                    !(b.vhost == vhost
                        && (b.source == name
                            || (b.destination_type == "exchange" && b.destination == name)))
                });
            }
            Change::PutQueue(q) => {
                self.lepus_next_queue_id = self.lepus_next_queue_id.max(q.lepus_id + 1);
                self.queues
                    .retain(|e| !(e.vhost == q.vhost && e.name == q.name));
                self.queues.push(q);
            }
            Change::DeleteQueue { vhost, name } => {
                self.queues
                    .retain(|e| !(e.vhost == vhost && e.name == name));
                self.bindings.retain(|b| {
                    !(b.vhost == vhost && b.destination_type == "queue" && b.destination == name)
                });
            }
            Change::PutBinding(b) => {
                if !self.bindings.contains(&b) {
                    self.bindings.push(b);
                }
            }
            Change::DeleteBinding(b) => self.bindings.retain(|x| *x != b),
            other => self.apply_policy_or_vhost(other),
        }
    }

    /// The policy and vhost-deletion half of [`Definitions::apply`].
    fn apply_policy_or_vhost(&mut self, change: Change) {
        match change {
            Change::PutPolicy(p) => {
                self.policies
                    .retain(|x| !(x.vhost == p.vhost && x.name == p.name));
                self.policies.push(p);
            }
            Change::DeletePolicy { vhost, name } => {
                self.policies
                    .retain(|x| !(x.vhost == vhost && x.name == name));
            }
            Change::DeleteVhost { name } => {
                self.vhosts.retain(|x| x.name != name);
                self.permissions.retain(|x| x.vhost != name);
                self.topic_permissions.retain(|x| x.vhost != name);
                self.exchanges.retain(|x| x.vhost != name);
                self.queues.retain(|x| x.vhost != name);
                self.bindings.retain(|x| x.vhost != name);
                self.policies.retain(|x| x.vhost != name);
                self.operator_policies.retain(|x| x.vhost != name);
            }
            Change::PutOperatorPolicy(p) => {
                self.operator_policies
                    .retain(|x| !(x.vhost == p.vhost && x.name == p.name));
                self.operator_policies.push(p);
            }
            Change::DeleteOperatorPolicy { vhost, name } => {
                self.operator_policies
                    .retain(|x| !(x.vhost == vhost && x.name == name));
            }
            _ => {}
        }
    }
}

/// Encodes arguments twice: as plain JSON (RabbitMQ's view) and with their AMQP types.
pub fn encode_arguments(table: &FieldTable) -> (Value, String) {
    let typed = amq_protocol::types::generation::gen_field_table(table)(Vec::new().into())
        .map(|ctx| BASE64.encode(ctx.write))
        .unwrap_or_default();
    (table_to_json(table), typed)
}

/// Decodes arguments, preferring the typed encoding.
pub fn decode_arguments(json: &Value, typed: &str) -> FieldTable {
    if !typed.is_empty()
        && let Ok(bytes) = BASE64.decode(typed)
        && crate::protocol::table::check_depth(&bytes, crate::protocol::table::MAX_TABLE_DEPTH)
            .is_ok()
        && let Ok(([], table)) = amq_protocol::types::parsing::parse_field_table(&bytes[..])
    {
        return table;
    }
    match json_to_value(json) {
        AMQPValue::FieldTable(t) => t,
        _ => FieldTable::default(),
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

fn json_to_value(v: &Value) -> AMQPValue {
    match v {
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
                a.push(json_to_value(i));
            }
            AMQPValue::FieldArray(a)
        }
        Value::Object(map) => {
            let mut t = FieldTable::default();
            for (k, v) in map {
                t.insert(ShortString::from(k.clone()), json_to_value(v));
            }
            AMQPValue::FieldTable(t)
        }
    }
}
