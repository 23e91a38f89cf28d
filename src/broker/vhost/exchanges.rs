//! Exchanges of a vhost: declare, delete, and the auto-delete cascade.

use std::sync::Arc;

use amq_protocol::types::FieldTable;

use super::checks::{self, AuthorizeNew};
use super::unbinding::{Incoming, Pending};
use super::{SyncEpoch, Topology, VirtualHost, default_exchange_refused};
use crate::amqp_error;
use crate::broker::arguments::{self, exchange_desc};
use crate::broker::exchange::{Destination, Exchange, ExchangeKind};
use crate::protocol::error::AmqpResult;
use crate::store::definitions::Change;

/// What exchange.declare asks for.
#[derive(Debug, Clone)]
pub struct ExchangeDeclare {
    pub name: String,
    pub kind: String,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    /// Who declares it: the exchange keeps it if it is made (`Exchange::declared_by`).
    pub user: String,
}

impl VirtualHost {
    /// exchange.declare, with RabbitMQ's checks in RabbitMQ's order; `authorize_new` makes
    /// the checks a new exchange needs.
    pub fn declare_exchange(
        &self,
        d: &ExchangeDeclare,
        authorize_new: AuthorizeNew<'_>,
    ) -> AmqpResult<SyncEpoch> {
        let kind = if d.passive {
            None
        } else {
            Some(ExchangeKind::parse(&d.kind).ok_or_else(|| {
                amqp_error!(PreconditionFailed, "unknown exchange type '{}'", d.kind)
            })?)
        };
        if d.name.is_empty() {
            return Err(default_exchange_refused());
        }
        super::name_fits_amqp("exchange", &d.name)?;
        let mut topology = self.lock();
        self.refuse_if_retired(&topology)?;
        let existing = self.exchange(&d.name);
        let Some(kind) = kind else {
            return existing
                .map(|_| None)
                .ok_or_else(|| self.no_exchange(&d.name));
        };
        let desc = exchange_desc(&d.name, &self.name);
        if let Some(x) = existing {
            if x.kind != kind {
                return Err(amqp_error!(
                    PreconditionFailed,
                    "inequivalent arg 'type' for {}: received '{}' but current is '{}'",
                    desc,
                    kind.name(),
                    x.kind.name()
                ));
            }
            for (key, received, current) in [
                ("durable", d.durable, x.durable),
                ("auto_delete", d.auto_delete, x.auto_delete),
                ("internal", d.internal, x.internal),
            ] {
                if received != current {
                    return Err(arguments::inequivalent_flag(key, &desc, received, current));
                }
            }
            return arguments::assert_exchange_equivalence(&x.arguments, &d.arguments, &desc)
                .map(|_| None);
        }
        if d.name.starts_with("amq.") {
            return Err(amqp_error!(
                AccessRefused,
                "exchange name '{}' contains reserved prefix 'amq.*'",
                d.name
            ));
        }
        authorize_new(checks::new_exchange_checks(&d.name, &d.arguments))?;
        arguments::validate_exchange_arguments(&d.arguments, &desc)?;
        arguments::check_kept_size(&d.arguments, || desc.clone())?;
        let max = self.services.limits.max_exchanges_per_vhost;
        if self.exchanges.len() >= max {
            return Err(amqp_error!(
                PreconditionFailed,
                "cannot declare exchange '{}': exchange limit in vhost '{}' ({}) is reached",
                d.name,
                self.name,
                max
            ));
        }
        let share = self.topology_share(
            Exchange::kept_bytes(&d.name, d.durable, &d.arguments),
            || format!("cannot declare exchange '{}'", d.name),
        )?;
        let x = Arc::new(
            Exchange::new(
                d.name.clone(),
                kind,
                d.durable,
                d.auto_delete,
                d.internal,
                d.arguments.clone(),
            )
            .declared_by(&d.user)
            .charged_to(&self.services.limits.topology, share),
        );
        if x.durable {
            let def = self.exchange_def(&x);
            self.record(&mut topology, Change::PutExchange(def));
        }
        self.exchanges.insert(d.name.clone(), x.clone());
        self.apply_exchange_policy(&x);
        self.changed();
        Ok(topology.sync.take())
    }

    /// Puts back a durable exchange found in the definitions at start-up.
    pub fn restore_exchange(&self, x: Exchange) {
        self.apply_exchange_policy(&x);
        self.exchanges.insert(x.name.clone(), Arc::new(x));
        self.changed();
    }

    /// exchange.delete. Deleting a missing exchange succeeds, as in RabbitMQ.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> AmqpResult<SyncEpoch> {
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(amqp_error!(
                AccessRefused,
                "deletion of system exchange '{}' in vhost '{}' not allowed",
                name,
                self.name
            ));
        }
        let mut topology = self.lock();
        let Some(x) = self.exchange(name) else {
            return Ok(None);
        };
        if if_unused && x.in_use() {
            return Err(amqp_error!(
                PreconditionFailed,
                "{} in use",
                exchange_desc(name, &self.name)
            ));
        }
        // Out of the vhost under the lock; its bindings removed a batch at a time after.
        let Some(incoming) = self.detach_exchange_locked(&mut topology, &x) else {
            return Ok(None);
        };
        let sync = topology.sync.take();
        drop(topology);
        // The bindings into it first: until they are gone a message may still reach it
        // through another exchange, and then reaches all of its destinations, as in
        // RabbitMQ, where they all go at once.
        let sources = self.unbind_incoming(&Destination::Exchange(x.clone()), incoming);
        self.unbind_outgoing(&x);
        Ok(sync.max(self.settle_unbinding(sources.list, Pending::new())))
    }

    /// Takes `x` out of the vhost: out of its exchanges, its deletion recorded (which forgets
    /// the bindings from and to it in the definitions), and what leads to it out of the
    /// reverse index, returned. `None` if it had left already.
    fn detach_exchange_locked(
        &self,
        topology: &mut Topology,
        x: &Arc<Exchange>,
    ) -> Option<Incoming> {
        if !self.exchange_is(x) {
            return None;
        }
        self.exchanges.remove_if(&x.name, |_, v| Arc::ptr_eq(v, x));
        x.detach();
        if x.durable {
            self.record(
                topology,
                Change::DeleteExchange {
                    vhost: self.name.clone(),
                    name: x.name.clone(),
                },
            );
        }
        self.changed();
        Some(Self::take_incoming(
            topology,
            &Destination::Exchange(x.clone()),
        ))
    }

    /// Takes an auto-delete exchange that lost its last binding out of the vhost; the
    /// bindings into it are left in `pending`, for [`VirtualHost::settle_unbinding`] to
    /// remove once the lock is let go (and the exchanges that loses to auto-delete, and so
    /// on: a worklist, not recursion, so a chain of auto-delete exchanges of any length costs
    /// no stack).
    pub(super) fn remove_exchange_locked(
        &self,
        topology: &mut Topology,
        x: &Arc<Exchange>,
        pending: &mut Pending,
    ) {
        let Some(incoming) = self.detach_exchange_locked(topology, x) else {
            return;
        };
        // None, for an exchange auto-deleted: it has no binding left.
        Self::unbind_outgoing_locked(topology, x, &x.binding_keys());
        if !incoming.is_empty() {
            pending.push((Destination::Exchange(x.clone()), incoming));
        }
    }

    /// Whether `source` is an auto-delete exchange of this vhost that has lost its last
    /// binding.
    pub(super) fn should_auto_delete(&self, source: &Arc<Exchange>) -> bool {
        source.auto_delete && !source.has_bindings() && self.exchange_is(source)
    }

    pub(super) fn maybe_auto_delete(
        &self,
        topology: &mut Topology,
        source: &Arc<Exchange>,
        pending: &mut Pending,
    ) {
        if self.should_auto_delete(source) {
            self.remove_exchange_locked(topology, source, pending);
        }
    }

    fn exchange_is(&self, x: &Arc<Exchange>) -> bool {
        self.exchanges
            .get(&x.name)
            .is_some_and(|v| Arc::ptr_eq(v.value(), x))
    }
}
