//! Counters that the management API and the Prometheus endpoint read: what each connection and
//! channel is and has done, and the broker's running totals.
//!
//! Counting costs the data path a relaxed atomic add on a cache line that only the owning
//! connection task writes (channels) or an add under a lock already held (queues). Nothing
//! here is sampled or formatted until someone asks: rates are worked out by the management
//! layer from counters it samples every few seconds, so an idle broker does no work for them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Message counters of a channel (and, summed, of a vhost or the broker), by what RabbitMQ's
/// `message_stats` calls them.
#[derive(Debug, Default)]
pub struct MessageCounters {
    pub publish: AtomicU64,
    /// Publishes received on channels in confirm mode (Prometheus'
    /// `rabbitmq_global_messages_received_confirm_total`).
    pub publish_confirm: AtomicU64,
    pub confirm: AtomicU64,
    pub deliver: AtomicU64,
    pub deliver_no_ack: AtomicU64,
    pub get: AtomicU64,
    pub get_no_ack: AtomicU64,
    /// basic.get that found the queue empty.
    pub get_empty: AtomicU64,
    pub ack: AtomicU64,
    pub redeliver: AtomicU64,
    /// Mandatory messages that no queue took, returned to the publisher.
    pub return_unroutable: AtomicU64,
    /// Messages that no queue took, dropped.
    pub drop_unroutable: AtomicU64,
}

/// A snapshot of [`MessageCounters`] (or a queue's counters), to add up and compare.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MessageTotals {
    pub publish: u64,
    pub publish_confirm: u64,
    pub confirm: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub get_empty: u64,
    pub ack: u64,
    pub redeliver: u64,
    pub return_unroutable: u64,
    pub drop_unroutable: u64,
}

/// Adds one to a counter that one task writes and others only read.
#[inline]
pub fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl MessageCounters {
    pub fn snapshot(&self) -> MessageTotals {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MessageTotals {
            publish: get(&self.publish),
            publish_confirm: get(&self.publish_confirm),
            confirm: get(&self.confirm),
            deliver: get(&self.deliver),
            deliver_no_ack: get(&self.deliver_no_ack),
            get: get(&self.get),
            get_no_ack: get(&self.get_no_ack),
            get_empty: get(&self.get_empty),
            ack: get(&self.ack),
            redeliver: get(&self.redeliver),
            return_unroutable: get(&self.return_unroutable),
            drop_unroutable: get(&self.drop_unroutable),
        }
    }

    /// Adds a closed channel's counts, so that totals never go backwards.
    pub fn add(&self, t: &MessageTotals) {
        bump(&self.publish, t.publish);
        bump(&self.publish_confirm, t.publish_confirm);
        bump(&self.confirm, t.confirm);
        bump(&self.deliver, t.deliver);
        bump(&self.deliver_no_ack, t.deliver_no_ack);
        bump(&self.get, t.get);
        bump(&self.get_no_ack, t.get_no_ack);
        bump(&self.get_empty, t.get_empty);
        bump(&self.ack, t.ack);
        bump(&self.redeliver, t.redeliver);
        bump(&self.return_unroutable, t.return_unroutable);
        bump(&self.drop_unroutable, t.drop_unroutable);
    }
}

impl MessageTotals {
    pub fn add(&mut self, t: &MessageTotals) {
        self.publish += t.publish;
        self.publish_confirm += t.publish_confirm;
        self.confirm += t.confirm;
        self.deliver += t.deliver;
        self.deliver_no_ack += t.deliver_no_ack;
        self.get += t.get;
        self.get_no_ack += t.get_no_ack;
        self.get_empty += t.get_empty;
        self.ack += t.ack;
        self.redeliver += t.redeliver;
        self.return_unroutable += t.return_unroutable;
        self.drop_unroutable += t.drop_unroutable;
    }

    /// Deliveries and gets of every kind, as RabbitMQ's `deliver_get`.
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }
}

/// What a connection negotiated, known once Connection.Open succeeded.
#[derive(Debug, Clone)]
pub struct Opened {
    pub user: String,
    pub vhost: String,
    /// Kept encoded, as the client sent them, and decoded only to be shown: decoded, a
    /// table of small values takes 30 to 60 times its wire size.
    pub client_properties: Box<[u8]>,
    pub auth_mechanism: String,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat_s: u16,
}

/// A live connection as operators see it. Made when the socket is accepted, filled in at
/// Connection.Open, and dropped with the connection.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    /// Milliseconds since the epoch when the socket was accepted.
    pub connected_at_ms: u64,
    /// Shared: every listing of channels refers to it, a count each (it holds the client's
    /// properties, up to a frame in size).
    opened: Mutex<Option<Arc<Opened>>>,
    /// Bytes read and written, for `recv_oct`/`send_oct` and the Prometheus byte counters.
    pub recv_oct: AtomicU64,
    /// Socket reads that brought bytes, RabbitMQ's `recv_cnt` (its socket's packet count).
    pub recv_cnt: AtomicU64,
    pub send_oct: AtomicU64,
    /// Socket writes that took bytes, RabbitMQ's `send_cnt`.
    pub send_cnt: AtomicU64,
    /// Where the connection is in flow control under an alarm ([`FlowState`] as a byte),
    /// the `state` operators see: RabbitMQ's `blocking` (an alarm is raised, its next
    /// publish blocks it) and `blocked` (it published, nothing of it is read).
    pub flow: AtomicU8,
    /// The connection's channels; a closed channel's entry no longer upgrades.
    channels: Mutex<Vec<Weak<ChannelInfo>>>,
}

impl ConnectionInfo {
    pub fn new(id: u64, peer: SocketAddr, local: SocketAddr, tls: bool) -> Self {
        ConnectionInfo {
            id,
            peer,
            local,
            tls,
            connected_at_ms: super::timer::now_ms(),
            opened: Mutex::new(None),
            recv_oct: AtomicU64::new(0),
            recv_cnt: AtomicU64::new(0),
            send_oct: AtomicU64::new(0),
            send_cnt: AtomicU64::new(0),
            flow: AtomicU8::new(FlowState::Running as u8),
            channels: Mutex::new(Vec::new()),
        }
    }

    pub fn set_opened(&self, opened: Opened) {
        *self.opened.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(opened));
    }

    /// What the connection negotiated; `None` until Connection.Open succeeded.
    pub fn opened(&self) -> Option<Arc<Opened>> {
        self.opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The connection's `state`, as RabbitMQ's management API and `rabbitmqctl` show it.
    pub fn state(&self) -> &'static str {
        match self.flow.load(Ordering::Relaxed) {
            x if x == FlowState::Blocking as u8 => "blocking",
            x if x == FlowState::Blocked as u8 => "blocked",
            _ => "running",
        }
    }

    /// The name RabbitMQ gives a connection: `peer -> local`, e.g.
    /// `127.0.0.1:50312 -> 127.0.0.1:5672`.
    pub fn name(&self) -> String {
        format!("{} -> {}", self.peer, self.local)
    }

    pub fn add_channel(&self, channel: &Arc<ChannelInfo>) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.retain(|c| c.strong_count() > 0);
        channels.push(Arc::downgrade(channel));
    }

    /// The connection's open channels.
    pub fn channels(&self) -> Vec<Arc<ChannelInfo>> {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.iter().filter_map(Weak::upgrade).collect()
    }
}

/// A connection's flow-control state, as [`ConnectionInfo::flow`] stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FlowState {
    Running = 0,
    Blocking = 1,
    Blocked = 2,
}

/// A channel as operators see it. The channel's task writes it; readers take what they find.
#[derive(Debug, Default)]
pub struct ChannelInfo {
    pub number: u16,
    pub messages: MessageCounters,
    /// basic.qos global=false: the prefetch of consumers created from now on.
    pub prefetch_count: AtomicU32,
    /// basic.qos global=true: the prefetch shared by the channel's consumers.
    pub global_prefetch_count: AtomicU32,
    pub confirm: AtomicBool,
    pub transactional: AtomicBool,
    pub consumers: AtomicU32,
    pub unacked: AtomicU32,
    pub unconfirmed: AtomicU32,
    /// Publishes and settled deliveries an open transaction holds until tx.commit.
    pub uncommitted_messages: AtomicU32,
    pub uncommitted_acks: AtomicU32,
    /// Set (under the [`Ledger`]'s lock) when the closed channel's counters were added to
    /// the retired totals: from then on a total that still holds this channel skips it.
    pub(crate) retired: AtomicBool,
}

/// Counters that only grow, for Prometheus's `_total` counters and the overview's churn.
#[derive(Debug, Default)]
pub struct Churn {
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    pub channels_opened: AtomicU64,
    pub channels_closed: AtomicU64,
    pub queues_declared: AtomicU64,
    pub queues_created: AtomicU64,
    pub queues_deleted: AtomicU64,
}

impl Churn {
    /// The counts by the names of RabbitMQ's `churn_rates`.
    pub fn fields(&self) -> [(&'static str, u64); 7] {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("channel_closed", load(&self.channels_closed)),
            ("channel_created", load(&self.channels_opened)),
            ("connection_closed", load(&self.connections_closed)),
            ("connection_created", load(&self.connections_opened)),
            ("queue_created", load(&self.queues_created)),
            ("queue_declared", load(&self.queues_declared)),
            ("queue_deleted", load(&self.queues_deleted)),
        ]
    }
}

/// The broker's running totals, which never go backwards (Prometheus reads a counter that
/// drops as a restart, and a rate chart would spike): churn, and the message counters of
/// closed channels, broker-wide and per vhost.
///
/// A total is the retired counters plus those of the channels still open. A channel that
/// closes moves its counters into the retired ones under this ledger's lock, and a total is
/// added up under it too, so every channel counts exactly once: a total never holds a
/// closing channel twice (retired and still listed) nor misses it (listed no more, not yet
/// retired). The lock is taken when a channel closes and when an operator asks, never per
/// message.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Connections, channels and queues opened and closed since the start, in every vhost
    /// (a deleted vhost's queues still count).
    pub churn: Churn,
    /// The message counters of every closed channel, of every vhost.
    retired: MessageCounters,
    lock: Mutex<()>,
}

impl Ledger {
    /// Moves a closing channel's counters into its vhost's retired counters and the
    /// broker's.
    pub fn retire(&self, vhost: &MessageCounters, channel: &ChannelInfo) {
        let _counting = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let counted = channel.messages.snapshot();
        vhost.add(&counted);
        self.retired.add(&counted);
        channel.retired.store(true, Ordering::Relaxed);
    }

    /// Counts what no client's channel did (the management API's publishes and gets) into
    /// the vhost's and the broker's totals, as RabbitMQ counts them: it does them on a
    /// channel of its own, closed at once.
    pub fn count_unlisted(&self, vhost: &MessageCounters, count: impl Fn(&MessageCounters)) {
        let _counting = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        count(vhost);
        count(&self.retired);
    }

    /// The totals of `retired` (a vhost's; the broker's when `None`) and of `open`, those
    /// channels that are still open.
    pub fn total<'a>(
        &self,
        retired: Option<&MessageCounters>,
        open: impl IntoIterator<Item = &'a ChannelInfo>,
    ) -> MessageTotals {
        let _counting = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut totals = retired.unwrap_or(&self.retired).snapshot();
        for ch in open {
            if !ch.retired.load(Ordering::Relaxed) {
                totals.add(&ch.messages.snapshot());
            }
        }
        totals
    }
}

#[cfg(test)]
mod ledger_tests {
    use super::*;

    /// A total taken while a closing channel is still listed (a scrape that found it just
    /// before it closed) counts it once, from the retired counters.
    #[test]
    fn a_closing_channel_counts_once() {
        let ledger = Ledger::default();
        let vhost = MessageCounters::default();
        let ch = ChannelInfo::default();
        bump(&ch.messages.publish, 5);
        assert_eq!(ledger.total(None, [&ch]).publish, 5);
        ledger.retire(&vhost, &ch);
        assert_eq!(ledger.total(None, [&ch]).publish, 5, "still listed");
        assert_eq!(ledger.total(Some(&vhost), [&ch]).publish, 5);
        assert_eq!(ledger.total(None, []).publish, 5, "no longer listed");
    }
}

/// A queue's counters, kept under its lock.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueCounters {
    pub publish: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub get_empty: u64,
    pub ack: u64,
    pub redeliver: u64,
}

impl QueueCounters {
    pub fn totals(&self) -> MessageTotals {
        MessageTotals {
            publish: self.publish,
            deliver: self.deliver,
            deliver_no_ack: self.deliver_no_ack,
            get: self.get,
            get_no_ack: self.get_no_ack,
            get_empty: self.get_empty,
            ack: self.ack,
            redeliver: self.redeliver,
            ..MessageTotals::default()
        }
    }
}

/// An exchange's counters: messages published into it, and routed out of it.
#[derive(Debug, Default)]
pub struct ExchangeCounters {
    pub publish_in: AtomicU64,
    pub publish_out: AtomicU64,
}
