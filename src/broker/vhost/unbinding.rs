//! Removing the bindings of a deleted queue or exchange: those out of it (an exchange's) and
//! those into it, found through the reverse index.
//!
//! A deletion first takes the object out of the vhost under the topology lock: it records
//! the deletion in the definitions (which forgets every binding from and to it), takes its
//! entry out of the reverse index, and from then on no bind can reach it. Its bindings are
//! then removed [`UNBIND_BATCH`] at a time, the lock handed to any waiter between batches
//! (`unlock_fair`; let go plainly, the deleting thread took it straight back): deleting an
//! exchange of 200,000 bindings held the lock for 240 ms in one piece (a release build),
//! and every declare, bind and delete of the vhost waited, each holding a runtime worker.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{IncomingKey, SyncEpoch, Topology, VirtualHost};
use crate::broker::exchange::{BindingKey, Destination, Exchange};

/// Bindings removed per hold of the topology lock when a queue or exchange is deleted.
pub(super) const UNBIND_BATCH: usize = 4096;

/// What leads to one destination: its entry of the reverse index.
pub(super) type Incoming = HashMap<IncomingKey, Arc<Exchange>>;

/// Exchanges an auto-delete cascade took out of the vhost, with the bindings into them still
/// to remove: kept by the operation that started the cascade, which removes them in batches
/// once it lets the lock go ([`VirtualHost::settle_unbinding`]), and so waits for all of it.
pub(super) type Pending = Vec<(Destination, Incoming)>;

/// The sources that lost a binding to a deleted destination, each once, for the caller to
/// auto-delete.
#[derive(Default)]
pub(super) struct Sources {
    seen: HashSet<usize>,
    pub(super) list: Vec<Arc<Exchange>>,
}

impl Sources {
    fn add(&mut self, source: Arc<Exchange>) {
        if self.seen.insert(Arc::as_ptr(&source) as usize) {
            self.list.push(source);
        }
    }
}

impl VirtualHost {
    /// Takes `destination`'s entry out of the reverse index: no binding to it is found
    /// through it any more.
    pub(super) fn take_incoming(topology: &mut Topology, destination: &Destination) -> Incoming {
        topology
            .incoming
            .remove(&destination.identity())
            .unwrap_or_default()
    }

    /// Removes the bindings in `incoming` from their sources. Under the topology lock. No
    /// definitions change is recorded: the deletion of the destination, recorded already,
    /// forgets them.
    pub(super) fn unbind_incoming_locked(
        destination: &Destination,
        incoming: impl Iterator<Item = (IncomingKey, Arc<Exchange>)>,
        sources: &mut Sources,
    ) {
        for ((_, routing_key, arguments), source) in incoming {
            // By the key, its arguments left encoded.
            let key = BindingKey::new(destination.clone(), routing_key, arguments.into());
            if source.unbind_key(&key) {
                sources.add(source);
            }
        }
    }

    /// Removes every binding out of `x`, which has left the vhost. Under the topology lock.
    pub(super) fn unbind_outgoing_locked(
        topology: &mut Topology,
        x: &Arc<Exchange>,
        keys: &[Arc<BindingKey<Destination>>],
    ) {
        // By their keys, their arguments left encoded (decoded, a wide binding took 30 times
        // its size, all of them at once).
        for key in keys {
            x.unbind_key(key);
            Self::forget_incoming_key(topology, key, x);
        }
    }

    /// [`VirtualHost::unbind_incoming_locked`], a batch at a time, taking the lock for each.
    pub(super) fn unbind_incoming(&self, destination: &Destination, incoming: Incoming) -> Sources {
        let mut sources = Sources::default();
        let mut entries = incoming.into_iter().peekable();
        while entries.peek().is_some() {
            let topology = self.lock();
            Self::unbind_incoming_locked(
                destination,
                entries.by_ref().take(UNBIND_BATCH),
                &mut sources,
            );
            self.changed();
            // Handed to a waiter, if any: let go plainly, this thread took it straight back.
            parking_lot::MutexGuard::unlock_fair(topology);
        }
        sources
    }

    /// [`VirtualHost::unbind_outgoing_locked`], a batch at a time, taking the lock for each.
    pub(super) fn unbind_outgoing(&self, x: &Arc<Exchange>) {
        for batch in x.binding_keys().chunks(UNBIND_BATCH) {
            let mut topology = self.lock();
            Self::unbind_outgoing_locked(&mut topology, x, batch);
            self.changed();
            parking_lot::MutexGuard::unlock_fair(topology);
        }
    }

    /// The vhost is being deleted: every exchange loses its bindings, a batch at a time. An
    /// exchange bound to another that is bound back (or to itself) holds it in its bindings:
    /// left to the vhost's end, the pair kept each other, and their shares of the topology
    /// budget, for as long as the broker ran.
    pub fn retire_exchanges(&self) {
        for x in self.exchanges() {
            x.detach();
            self.unbind_outgoing(&x);
        }
    }

    /// Auto-deletes the `sources` that lost a binding and have none left, a batch per hold
    /// of the lock; then removes the bindings into the exchanges so deleted
    /// (`pending`) as a deleted exchange's are, and auto-deletes what they
    /// leave, and so on. Called with the lock let go, after every change that can start an
    /// auto-delete cascade. Returns the epoch of the definitions changes it made.
    pub(super) fn settle_unbinding(
        &self,
        mut sources: Vec<Arc<Exchange>>,
        mut pending: Pending,
    ) -> SyncEpoch {
        let mut sync = None;
        loop {
            for batch in sources.chunks(UNBIND_BATCH) {
                let mut topology = self.lock();
                for source in batch {
                    self.maybe_auto_delete(&mut topology, source, &mut pending);
                }
                sync = sync.max(topology.sync.take());
                parking_lot::MutexGuard::unlock_fair(topology);
            }
            let Some((destination, incoming)) = pending.pop() else {
                return sync;
            };
            sources = self.unbind_incoming(&destination, incoming).list;
        }
    }
}
