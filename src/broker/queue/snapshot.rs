//! What the management API shows of a queue and its consumers.

/// A queue as the management API shows it.
#[derive(Debug, Clone)]
pub struct QueueSnapshot {
    /// Messages ready for delivery, in memory or on disk.
    pub ready: u32,
    /// Messages delivered and not yet acknowledged.
    pub unacked: u32,
    /// Body bytes of the ready messages, in memory or on disk.
    pub ready_bytes: u64,
    /// Body bytes of the messages delivered and not yet acknowledged.
    pub unacked_bytes: u64,
    /// Messages with a durable record (persistent messages of a durable queue), ready or
    /// unacknowledged, and their body bytes.
    pub persistent: super::state::Tally,
    /// What the ready messages held in memory take there.
    pub memory_bytes: u64,
    /// The consumers (empty from `Queue::gauges`).
    pub consumers: Vec<ConsumerSnapshot>,
    /// How many consumers there are.
    pub consumer_count: usize,
    /// The tag of the consumer holding the queue exclusively, if one does.
    pub exclusive_consumer: Option<String>,
    /// The tag of the single active consumer, if the queue has one.
    pub single_active_consumer: Option<String>,
    pub counters: crate::broker::stats::QueueCounters,
    /// When the queue was last used (milliseconds since the epoch).
    pub last_used_ms: u64,
    /// Ready messages that live only on disk (paged out).
    pub paged_out: u64,
    /// Dead letters held until their queues have them (at-least-once), and their body
    /// bytes: RabbitMQ's `messages_dlx` and `message_bytes_dlx`.
    pub held: u64,
    pub held_bytes: u64,
}

/// A consumer as the management API shows it.
#[derive(Debug, Clone)]
pub struct ConsumerSnapshot {
    pub tag: String,
    pub channel: u16,
    /// The consumer's connection id.
    pub connection: u64,
    pub ack_required: bool,
    pub exclusive: bool,
    pub prefetch_count: u32,
    pub arguments: bytes::Bytes,
    /// Whether it gets messages, or waits its turn on a single-active-consumer queue.
    pub activity: super::consumers::Activity,
}
