//! The `Queue` kind: a point-to-point work queue; each message goes to exactly one consumer.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{BrokerReference, StreamSettings};
use super::stream::{NAME_IN_BROKER_PATTERN, StreamStatus};

/// A work queue inside a Broker: each message goes to exactly one consumer.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "conveyor.dev",
    version = "v1alpha1",
    kind = "Queue",
    namespaced,
    status = "StreamStatus",
    shortname = "cq",
    category = "conveyor",
    printcolumn(name = "Broker", type_ = "string", json_path = ".spec.brokerRef.name"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Depth", type_ = "integer", json_path = ".status.messages"),
    printcolumn(
        name = "Bytes",
        type_ = "integer",
        priority = 1,
        json_path = ".status.bytes"
    ),
    printcolumn(
        name = "In Broker",
        type_ = "string",
        priority = 1,
        json_path = ".status.nameInBroker"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("has(self.nameInBroker) == has(oldSelf.nameInBroker)").message("spec.nameInBroker cannot be added or removed after creation"),
    validation = Rule::new("!has(self.retention) || !has(self.retention.maxAge) || !has(self.deduplicationWindow) || !self.retention.maxAge.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$') || !self.deduplicationWindow.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$') || duration(self.deduplicationWindow) <= duration(self.retention.maxAge)").message("spec.deduplicationWindow must not be longer than spec.retention.maxAge")
)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// The Broker that holds the queue. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.brokerRef is immutable: create a new Queue to use another Broker"))]
    pub broker_ref: BrokerReference,
    /// Name of the queue inside the broker (letters, digits, `-` and `_`): the JetStream
    /// stream on NATS, the quorum queue on RabbitMQ. Defaults to `queue_<namespace>_<name>`.
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = NAME_IN_BROKER_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.nameInBroker is immutable"))]
    pub name_in_broker: Option<String>,
    /// Namespaces, besides the Queue's own, whose EventSubscriptions may consume it. `*` allows
    /// every namespace. Empty (the default): only the Queue's own namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub allowed_namespaces: Vec<String>,
    /// Retention, replicas, storage, duplicate detection and deletion of the queue.
    #[serde(flatten)]
    pub stream: StreamSettings,
}
