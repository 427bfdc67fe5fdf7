//! The status that Queue and Topic share: both are a stream inside the broker.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::common::Conditions;

/// The regular expression a broker-side name of a Queue or Topic must match.
pub const NAME_IN_BROKER_PATTERN: &str = r"^[A-Za-z0-9_-]{1,64}$";

/// The observed state of a Queue or a Topic and of its stream inside the broker.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    /// The generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The state of the resource: `Ready`, `ResolvedRefs`, `Synced`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
    /// True once Conveyor has created the destination (or found its own) in the broker: from
    /// then on a missing one is drift, and deletion applies the deletion policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared: Option<bool>,
    /// Name of the queue, stream or exchange inside the broker. Set once; never changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_in_broker: Option<String>,
    /// Messages held: in the stream (NATS), in the quorum queue (RabbitMQ Queue), or in the
    /// Topic's unrouted queue (RabbitMQ Topic: events that no subscription took).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<i64>,
    /// Bytes of those messages, where the broker reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// Consumers of the stream (NATS), of the queue (RabbitMQ Queue), or queues bound to the
    /// exchange (RabbitMQ Topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<i64>,
    /// Sequence number of the oldest message in the stream (NATS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_sequence: Option<i64>,
    /// Sequence number of the newest message in the stream (NATS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sequence: Option<i64>,
}
