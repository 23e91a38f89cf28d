//! A channel: the unit of work inside a connection. It assembles published messages from their
//! frames, runs every channel method, tracks the deliveries its consumers have not
//! acknowledged and numbers publishes for confirms.
//!
//! A channel belongs to its connection's task and is never shared. Queues reach it only
//! through the connection's outbox; the channel reaches queues by calling them directly.
//!
//! This file holds the channel's state and routes cold-path methods to their handlers, one
//! concern per file: content assembly and publishing ([`publish`]), the route cache
//! ([`route`]), deliveries and consumer timeouts ([`deliver`]), ack/nack/reject ([`settle`]),
//! transactions ([`tx`]), exchange and queue methods ([`declare`]), and consume, cancel, get,
//! qos and recover ([`consume`]).

mod consume;
mod consumers;
mod declare;
mod deliver;
mod publish;
mod purge;
mod route;
mod settle;
mod tx;
mod unacked;

use std::sync::Arc;
use std::time::Instant;

use amq_protocol::protocol::{AMQPClass, channel, confirm};
use bytes::Bytes;

use unacked::{Unacked, UnackedList};

use super::confirm::Confirms;
use super::output::Output;
use super::session::{Session, Share};
use crate::amqp_error;
use crate::broker::Broker;
use crate::broker::exchange::Exchange;
use crate::broker::memory::Charge;
use crate::broker::message::Message;
use crate::broker::queue::Queue;
use crate::broker::queue::delivery::ConsumerId;
use crate::broker::queue::prefetch::ChannelPrefetch;
use crate::broker::stats::{ChannelInfo, bump};
use crate::broker::user_limits::UserChannel;
use crate::broker::vhost::VirtualHost;
use crate::protocol::basic::{ContentHeader, Publish};
use crate::protocol::error::AmqpResult;
use crate::protocol::method::write_method;

/// Routes remembered per channel; publishers usually repeat a few exchange/key pairs.
const ROUTE_CACHE_ENTRIES: usize = 64;

/// Where a channel is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    Open,
    /// The broker sent Channel.Close and waits for Close-Ok; everything else is ignored.
    Closing,
}

/// A consumer as its channel knows it.
#[derive(Debug)]
struct ChannelConsumer {
    id: ConsumerId,
    queue: Arc<Queue>,
    /// How long its deliveries may stay unacknowledged.
    timeout_ms: Option<u64>,
    /// What it holds of its connection's consumer budget, given back when it goes.
    _share: Share,
}

/// A message being assembled from its frames.
#[derive(Debug)]
struct Content {
    publish: Publish,
    header: Option<ContentHeader>,
    /// The body of one that came in several frames (boxed: most bodies come in one).
    body: Option<Box<BodySoFar>>,
    received: u64,
    /// Bytes this half-received message holds, charged to the memory gauge: the body so far
    /// (it grows with what arrives, never to what the header merely announces) and, once
    /// detached from the read buffer, its names and properties.
    charge: Charge,
}

/// A body being assembled from its frames.
#[derive(Debug, Default)]
struct BodySoFar {
    /// Pieces complete so far, in order: large frames as they came (slices of the input's
    /// chunks, charged there), and small frames copied together.
    pieces: Vec<Bytes>,
    /// Small frames since the last large one, copied together into a buffer that grows with
    /// what arrives.
    small: Vec<u8>,
    /// Bytes of the buffers small frames were copied into: the message's own.
    copied: usize,
}

impl BodySoFar {
    /// Ends the run of small frames: their copy becomes the next piece.
    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            let small = std::mem::take(&mut self.small);
            self.copied += small.capacity();
            self.pieces.push(Bytes::from(small));
        }
    }
}

/// A publish held back by a transaction until commit.
#[derive(Debug)]
struct TxPublish {
    exchange: Bytes,
    routing_key: Bytes,
    mandatory: bool,
    routing_keys: Vec<Bytes>,
    /// The exchange it was published to, kept for its counters even if deleted since.
    target: Arc<Exchange>,
    /// The queues it was routed to when published, as RabbitMQ routes a transaction's
    /// publishes: the commit enqueues it in those still there. (A queue deleted and
    /// declared again meanwhile is another queue: RabbitMQ, which keeps names, would find
    /// the new one.)
    route: Route,
    /// The memory a route of its own takes (a cached route is shared).
    _route_charge: Charge,
    message: Arc<Message>,
}

/// Settlements held back by a transaction until commit.
enum TxSettle {
    Ack(Vec<Unacked>),
    Reject(Vec<Unacked>, bool),
}

#[derive(Default)]
struct Transaction {
    publishes: Vec<TxPublish>,
    settles: Vec<TxSettle>,
    /// Deliveries the held settlements cover (RabbitMQ's `acks_uncommitted`).
    settled: usize,
}

/// The queues a message goes to.
type Route = Arc<[Arc<Queue>]>;

/// This channel's consumer of the direct reply-to pseudo-queue.
#[derive(Debug)]
struct ReplyConsumer {
    tag: Bytes,
    /// Its key in the broker's map; its reply name is `amq.rabbitmq.reply-to.<key>`.
    key: String,
}

/// A channel.
pub struct Channel {
    pub id: u16,
    pub state: ChannelState,
    content: Option<Content>,
    consumers: consumers::ChannelConsumers,
    /// The consumer the last delivery was for (its id and timeout): deliveries to one
    /// consumer in a row skip hashing its tag. Forgotten whenever a consumer goes.
    last_consumer: Option<(u64, Option<u64>)>,
    /// Deliveries awaiting settlement, ordered by delivery tag.
    unacked: UnackedList,
    /// The last delivery tag used.
    last_tag: u64,
    /// Deliveries moved, queues asked, routing done (topic states, headers arguments) and
    /// queues enqueued to by the frames handled since the connection last took the count
    /// (`take_work`), so that it yields after enough of them.
    work: usize,
    /// Channel-wide credit, shared with the queues this channel consumes from.
    prefetch: Arc<ChannelPrefetch>,
    /// Prefetch given to consumers created from now on (basic.qos global=false).
    consumer_prefetch: u32,
    confirms: Option<Confirms>,
    tx: Option<Transaction>,
    /// A tx.commit under way: enqueued a batch per turn of the connection task
    /// (`tx::COMMIT_BATCH`), its input paused until the commit is done.
    committing: Option<tx::Committing>,
    /// A queue.purge under way: its paged tails read through a batch per turn of the
    /// connection task, its input paused until purge-ok (`purge`).
    purging: Option<purge::Purging>,
    /// The queue most recently declared on this channel, used for empty queue names.
    last_queue: Option<String>,
    routes: route::RouteCache,
    /// At most one direct reply-to consumer per channel, as in RabbitMQ.
    reply_consumer: Option<ReplyConsumer>,
    /// The next round of asking consumed queues for more starts after this one's (see
    /// `settle::kick_in_turn`): the key of a queue in `consumers`.
    kick_after: Option<ConsumerId>,
    /// No unacknowledged delivery times out before this (the earliest deadline when it was
    /// last worked out; acks since may have made it earlier than needed).
    timeout_check: Option<Instant>,
    /// Every consumer made on this channel has an id at least this: a delivery for a lower
    /// one was meant for an earlier channel with this number, whose credit it took.
    first_consumer_id: ConsumerId,
    /// What operators see of this channel; its counts join the vhost's when it closes.
    stats: Counted,
    /// Counts the channel against its user's `max-channels` while it lives.
    _user_slot: UserChannel,
}

/// A channel's counters, registered with its connection while the channel lives.
struct Counted {
    info: Arc<ChannelInfo>,
    vhost: Arc<VirtualHost>,
    broker: Arc<Broker>,
}

impl Counted {
    fn new(id: u16, s: &Session) -> Self {
        let info = Arc::new(ChannelInfo {
            number: id,
            ..ChannelInfo::default()
        });
        s.outbox.info.add_channel(&info);
        bump(&s.broker.ledger.churn.channels_opened, 1);
        Counted {
            info,
            vhost: s.vhost.clone(),
            broker: s.broker.clone(),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.broker.ledger.retire(&self.vhost.retired, &self.info);
        bump(&self.broker.ledger.churn.channels_closed, 1);
    }
}

/// What a channel method asks the connection to do afterwards.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Nothing,
    /// The client closed the channel: it is cleaned up, send Close-Ok and forget it.
    Closed,
    /// A tx.commit or queue.purge goes on over the next turns (`Channel::continue_work`);
    /// until it is done, the connection reads nothing more.
    Continues,
}

fn reply(out: &mut Output, channel: u16, method: AMQPClass) {
    write_method(out.buf(), channel, &method);
}

/// Strips CR and LF from a name, as RabbitMQ does for exchange and queue names.
fn strip_cr_lf(name: &str) -> String {
    name.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

impl Channel {
    pub fn new(id: u16, max_unacked: u32, session: &Session, user_slot: UserChannel) -> Self {
        Channel {
            stats: Counted::new(id, session),
            id,
            state: ChannelState::Open,
            content: None,
            consumers: Default::default(),
            last_consumer: None,
            unacked: UnackedList::default(),
            last_tag: 0,
            work: 0,
            prefetch: Arc::new(ChannelPrefetch::new(max_unacked)),
            consumer_prefetch: 0,
            confirms: None,
            tx: None,
            committing: None,
            purging: None,
            last_queue: None,
            routes: route::RouteCache::default(),
            reply_consumer: None,
            kick_after: None,
            timeout_check: None,
            first_consumer_id: consume::next_consumer_id(),
            _user_slot: user_slot,
        }
    }

    /// Tells operators how many consumers and unacknowledged deliveries the channel has (a
    /// plain store each; readers take what they find).
    fn note_gauges(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let info = &self.stats.info;
        info.consumers.store(self.consumers.len() as u32, Relaxed);
        info.unacked.store(self.unacked.len() as u32, Relaxed);
        let (publishes, settled) = self
            .tx
            .as_ref()
            .map_or((0, 0), |tx| (tx.publishes.len(), tx.settled));
        info.uncommitted_messages.store(publishes as u32, Relaxed);
        info.uncommitted_acks.store(settled as u32, Relaxed);
    }

    /// The work done since the last call (see `work`), which it resets.
    pub fn take_work(&mut self) -> usize {
        std::mem::take(&mut self.work)
    }

    pub fn is_open(&self) -> bool {
        self.state == ChannelState::Open
    }

    /// Runs a channel method other than publish and ack/nack/reject.
    pub fn handle(
        &mut self,
        s: &Session,
        out: &mut Output,
        method: AMQPClass,
    ) -> AmqpResult<After> {
        let (class_id, method_id) = (method.get_amqp_class_id(), method.get_amqp_method_id());
        self.expect_method()?;
        let result = self
            .dispatch(s, out, method)
            .map_err(|e| e.on_method(class_id, method_id));
        self.note_gauges();
        result
    }

    fn dispatch(&mut self, s: &Session, out: &mut Output, method: AMQPClass) -> AmqpResult<After> {
        let id = self.id;
        match method {
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                self.flush_resolved_confirms(s, out);
                self.shutdown(s);
                return Ok(After::Closed);
            }
            AMQPClass::Channel(channel::AMQPMethod::Flow(flow)) => {
                if !flow.active {
                    return Err(amqp_error!(NotImplemented, "active=false"));
                }
                reply(
                    out,
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: true,
                    })),
                );
            }
            AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                return Err(amqp_error!(ChannelError, "second 'channel.open' seen"));
            }
            AMQPClass::Access(_) => {
                reply(
                    out,
                    id,
                    AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::RequestOk(
                        amq_protocol::protocol::access::RequestOk {},
                    )),
                );
            }
            AMQPClass::Exchange(m) => self.exchange_method(s, out, m)?,
            AMQPClass::Queue(m) => return self.queue_method(s, out, m),
            AMQPClass::Basic(m) => self.basic_method(s, out, m)?,
            AMQPClass::Tx(m) => return self.tx_method(s, out, m),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(select)) => {
                if self.tx.is_some() {
                    return Err(amqp_error!(
                        PreconditionFailed,
                        "cannot switch from tx to confirm mode"
                    ));
                }
                if self.confirms.is_none() {
                    let early = crate::amqp::confirm::EarlyConfirms::new(&s.outbox);
                    self.confirms = Some(Confirms::with_early(early));
                    self.stats
                        .info
                        .confirm
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if !select.nowait {
                    reply(
                        out,
                        id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
            }
            _ => return Err(amqp_error!(CommandInvalid, "unimplemented method")),
        }
        Ok(After::Nothing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_cr_and_lf() {
        assert_eq!(strip_cr_lf("a\r\nb"), "ab");
    }
}
