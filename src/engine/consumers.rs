//! The engine-neutral model of an EventSubscription's durable consumer: what a subscription
//! asks of the broker and what the broker reports back. Each engine maps it onto its own
//! objects (NATS: a durable pull consumer on the source's stream; RabbitMQ: a quorum queue of
//! the subscription's own bound to a Topic's exchange, or a Queue's own quorum queue).

use std::time::{Duration, SystemTime};

use super::DestinationKind;

/// Where a new consumer starts in its source. Fixed once the consumer exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StartFrom {
    /// Every message the source still holds.
    All,
    /// Only messages published after the consumer was created.
    New,
    /// Messages published at or after this time.
    Time(SystemTime),
}

/// A subscription's consumer as Conveyor wants it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConsumerSpec {
    /// Whether the source is a Queue or a Topic.
    pub source_kind: DestinationKind,
    /// The source's name in the broker (stream, queue or exchange).
    pub source: String,
    /// The consumer's name in the broker (for RabbitMQ and a Topic, its queue's name).
    pub name: String,
    /// The event types to receive; empty: all of them.
    pub event_types: Vec<String>,
    pub ack_wait: Duration,
    /// Deliveries before a message is given up on.
    pub max_deliveries: i64,
    /// Delays between redeliveries; the last one repeats. Empty: `ack_wait`.
    pub backoff: Vec<Duration>,
    /// Messages delivered and not yet acknowledged at once, across all replicas.
    pub max_ack_pending: i64,
    pub start: StartFrom,
    /// Keep messages that used up their deliveries (`delivery.deadLetter.enabled`) in the
    /// consumer's dead-letter destination (`dead_letter_name`).
    pub dead_letter: bool,
    /// Replicas of what the consumer keeps in the broker (a subscription queue on RabbitMQ).
    pub replicas: usize,
    /// Who owns the consumer (`EventSubscription shop/payment`); one with another owner, or
    /// none, is never taken over.
    pub owner: String,
}

/// What a consumer has to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerState {
    /// Messages not yet delivered to the consumer.
    pub pending: u64,
    /// Messages delivered and not yet acknowledged.
    pub in_flight: u64,
    /// Messages in the consumer's dead-letter destination, when it has one.
    pub dead_letters: Option<u64>,
}

impl ConsumerState {
    /// The work not yet done: pending plus in flight.
    pub fn backlog(&self) -> u64 {
        self.pending + self.in_flight
    }
}

/// Which consumer a deletion is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerTarget {
    pub source_kind: DestinationKind,
    pub source: String,
    pub name: String,
    pub owner: String,
}

/// The dead-letter destination of the consumer `consumer` (a stream on NATS, a quorum queue on
/// RabbitMQ). Kubernetes names have no `_`, so no default consumer name ends like this.
pub fn dead_letter_name(consumer: &str) -> String {
    format!("{consumer}_dead")
}

/// A consumer's figures as the autoscaler reads them from a batched listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerDepth {
    /// Messages not yet delivered to the consumer.
    pub pending: u64,
    /// Messages delivered and not yet acknowledged.
    pub in_flight: u64,
    /// A counter of acknowledged deliveries, for the consume rate, where the broker keeps one
    /// (NATS: the consumer's acknowledgement floor; RabbitMQ: the queue's `ack` statistic).
    pub acknowledged: Option<u64>,
}

/// A cheap, fresh sign of new work, for consumers whose workload is at zero replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arrivals {
    /// Per source, a mark that changes whenever a message arrives (NATS: the stream's last
    /// sequence): a changed mark means the source's consumers should be listed now.
    Marks(std::collections::HashMap<String, u64>),
    /// Per consumer, its pending count, fresh from the broker.
    Pending(std::collections::HashMap<String, u64>),
    /// The engine has no such sign: the batched listing is all there is.
    Unavailable,
}
