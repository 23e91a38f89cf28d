//! Importing a RabbitMQ definitions file (`load_definitions` at start-up; later the
//! management API's `POST /api/definitions`): users with their password hashes, vhosts,
//! permissions, topic permissions, policies, exchanges, queues and bindings, in that order so
//! that each finds what it refers to. What exists already is updated (users, grants,
//! policies) or must be equivalent (exchanges and queues, as a redeclare would).

use amq_protocol::types::FieldTable;

use super::Broker;
use super::vhost::checks::no_checks;
use super::vhost::exchanges::ExchangeDeclare;
use super::vhost::queues::QueueDeclare;
use crate::auth::Hashing;
use crate::store::definitions::{Change, Definitions, PolicyDef, decode_arguments};

/// No connection owns what an import declares.
const NO_CONNECTION: u64 = 0;

/// What an import brought in.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub users: usize,
    pub vhosts: usize,
    pub permissions: usize,
    pub policies: usize,
    pub exchanges: usize,
    pub queues: usize,
    pub bindings: usize,
}

impl Broker {
    /// Imports definitions as `user` (who the exchanges say declared them); stops at the
    /// first one that cannot be applied, naming it.
    pub fn import_definitions(
        &self,
        defs: &Definitions,
        user: &str,
    ) -> Result<ImportReport, String> {
        let mut report = ImportReport::default();
        // Refused before anything is applied, rather than half way.
        check_global_parameters(defs)?;
        check_names(defs)?;
        for u in &defs.users {
            let hashing = Hashing::from_name(&u.hashing_algorithm).ok_or_else(|| {
                format!(
                    "user '{}': unknown hashing_algorithm '{}'",
                    u.name, u.hashing_algorithm
                )
            })?;
            self.put_user_hash(&u.name, &u.password_hash, hashing)?;
            self.set_user_tags(&u.name, u.tags.clone())?;
            if !u.limits.is_empty() {
                self.set_user_limits(&u.name, u.limits)?;
            }
            report.users += 1;
        }
        for v in &defs.vhosts {
            self.add_vhost(v)?;
            report.vhosts += 1;
        }
        for p in &defs.permissions {
            self.set_permissions(&p.user, &p.vhost, &p.configure, &p.write, &p.read)?;
            report.permissions += 1;
        }
        for t in &defs.topic_permissions {
            self.set_topic_permissions(&t.user, &t.vhost, &t.exchange, &t.write, &t.read)?;
            report.permissions += 1;
        }
        self.import_global_parameters(defs)?;
        report.policies = self.import_policies(&defs.policies)?;
        for x in &defs.exchanges {
            let vhost = self.existing_vhost_of(&x.vhost, "exchange", &x.name)?;
            let declare = ExchangeDeclare {
                name: x.name.clone(),
                kind: x.kind.clone(),
                passive: false,
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: decode_arguments(&x.arguments, &x.lepus_arguments)
                    .map_err(|e| format!("exchange '{}' in vhost '{}': {e}", x.name, x.vhost))?,
                user: user.to_owned(),
            };
            vhost
                .declare_exchange(&declare, &no_checks)
                .map_err(|e| format!("exchange '{}' in vhost '{}': {}", x.name, x.vhost, e.text))?;
            report.exchanges += 1;
        }
        for q in &defs.queues {
            let vhost = self.existing_vhost_of(&q.vhost, "queue", &q.name)?;
            let declare = QueueDeclare {
                nowait: false,
                name: q.name.clone(),
                passive: false,
                durable: q.durable,
                exclusive: false,
                auto_delete: q.auto_delete,
                arguments: decode_arguments(&q.arguments, &q.lepus_arguments)
                    .map_err(|e| format!("queue '{}' in vhost '{}': {e}", q.name, q.vhost))?,
            };
            vhost
                .declare_queue(&declare, NO_CONNECTION, &no_checks)
                .map_err(|e| format!("queue '{}' in vhost '{}': {}", q.name, q.vhost, e.text))?;
            report.queues += 1;
        }
        for b in &defs.bindings {
            let vhost = self.existing_vhost_of(&b.vhost, "binding from", &b.source)?;
            let args: FieldTable = decode_arguments(&b.arguments, &b.lepus_arguments)
                .map_err(|e| format!("binding from '{}' in vhost '{}': {e}", b.source, b.vhost))?;
            let result = if b.destination_type == "exchange" {
                vhost.bind_exchange(&b.destination, &b.source, &b.routing_key, &args)
            } else {
                vhost.bind_queue(
                    &b.destination,
                    &b.source,
                    &b.routing_key,
                    &args,
                    NO_CONNECTION,
                )
            };
            result.map_err(|e| {
                format!(
                    "binding of '{}' to '{}' in vhost '{}': {}",
                    b.destination, b.source, b.vhost, e.text
                )
            })?;
            report.bindings += 1;
        }
        Ok(report)
    }

    /// Same as RabbitMQ, which imports global parameters: the cluster's name and permanent
    /// id, of those Lepus has (as strings; other global parameters belong to plugins Lepus
    /// does not have).
    fn import_global_parameters(&self, defs: &Definitions) -> Result<(), String> {
        use super::admin::{CLUSTER_NAME, INTERNAL_CLUSTER_ID};
        for p in &defs.global_parameters {
            let Some(value) = p.value.as_str() else {
                continue;
            };
            match p.name.as_str() {
                CLUSTER_NAME => self.set_cluster_name(value.to_owned())?,
                INTERNAL_CLUSTER_ID => self.set_cluster_id(value.to_owned())?,
                _ => continue,
            };
        }
        Ok(())
    }

    /// Sets the policies one after the other, as RabbitMQ's import does, stopping at the
    /// first it refuses. Those set before it are in force whatever the outcome: recorded and
    /// not applied, they were listed and exported while no queue followed them until the
    /// next policy change or restart.
    fn import_policies(&self, policies: &[PolicyDef]) -> Result<usize, String> {
        let set = policies.iter().try_for_each(|p| {
            if self.vhost(&p.vhost).is_none() {
                return Err(format!(
                    "policy '{}': vhost '{}' does not exist",
                    p.name, p.vhost
                ));
            }
            // Checked as a policy set any other way is (RabbitMQ's import sets them so).
            self.validate_policy(p, false)
                .map_err(|e| format!("policy '{}': {}", p.name, e.trim()))?;
            self.definitions.record(Change::PutPolicy(p.clone()));
            Ok(())
        });
        for v in self.vhosts() {
            v.reload_policies(false);
        }
        set.map(|()| policies.len())
    }

    fn existing_vhost_of(
        &self,
        vhost: &str,
        what: &str,
        name: &str,
    ) -> Result<std::sync::Arc<super::vhost::VirtualHost>, String> {
        self.vhost(vhost)
            .ok_or_else(|| format!("{what} '{name}': vhost '{vhost}' does not exist"))
    }
}

/// What `Broker::add_vhost` and the declares would refuse: a vhost, exchange or queue name
/// longer than an AMQP short string.
fn check_names(defs: &Definitions) -> Result<(), String> {
    let max = crate::protocol::SHORT_STRING_MAX_BYTES;
    let vhosts = defs.vhosts.iter().map(|v| ("vhost", &v.name));
    let exchanges = defs.exchanges.iter().map(|x| ("exchange", &x.name));
    let queues = defs.queues.iter().map(|q| ("queue", &q.name));
    match vhosts
        .chain(exchanges)
        .chain(queues)
        .find(|(_, name)| name.len() > max)
    {
        Some((kind, name)) => Err(format!(
            "{kind} should be less than {max} bytes, actually was {}",
            name.len()
        )),
        None => Ok(()),
    }
}

/// What [`Broker::import_global_parameters`] would refuse: a cluster name or id too long.
fn check_global_parameters(defs: &Definitions) -> Result<(), String> {
    use super::admin::{CLUSTER_NAME, INTERNAL_CLUSTER_ID, MAX_CLUSTER_NAME_BYTES};
    let too_long = defs.global_parameters.iter().find(|p| {
        [CLUSTER_NAME, INTERNAL_CLUSTER_ID].contains(&p.name.as_str())
            && p.value
                .as_str()
                .is_some_and(|n| n.len() > MAX_CLUSTER_NAME_BYTES)
    });
    match too_long {
        Some(p) => Err(super::admin::global_too_long(&p.name)),
        None => Ok(()),
    }
}
