//! The `Topic` kind: a publish/subscribe stream of events; every subscription gets every event.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{BrokerReference, StreamSettings};
use super::stream::{NAME_IN_BROKER_PATTERN, StreamStatus};

/// The regular expression an event type name must match (`OrderPlaced`, `order.placed`).
pub const EVENT_TYPE_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$";

/// A publish/subscribe stream of events inside a Broker: every subscription gets every event.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "conveyor.dev",
    version = "v1alpha1",
    kind = "Topic",
    namespaced,
    status = "StreamStatus",
    shortname = "ct",
    category = "conveyor",
    printcolumn(name = "Broker", type_ = "string", json_path = ".spec.brokerRef.name"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Messages", type_ = "integer", json_path = ".status.messages"),
    printcolumn(
        name = "Subscriptions",
        type_ = "integer",
        json_path = ".status.consumers"
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
pub struct TopicSpec {
    /// The Broker that holds the topic. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.brokerRef is immutable: create a new Topic to use another Broker"))]
    pub broker_ref: BrokerReference,
    /// Name of the topic inside the broker (letters, digits, `-` and `_`): the JetStream
    /// stream on NATS, the topic exchange on RabbitMQ. Defaults to `topic_<namespace>_<name>`.
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = NAME_IN_BROKER_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.nameInBroker is immutable"))]
    pub name_in_broker: Option<String>,
    /// The event types published to this topic, each with its JSON Schema: the event contract.
    /// An event of type `T` is published on the NATS subject `<nameInBroker>.T`, or to the
    /// RabbitMQ topic exchange with routing key `T`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub event_types: Vec<EventType>,
    /// Namespaces, besides the Topic's own, whose EventSubscriptions may consume it. `*` allows
    /// every namespace. Empty (the default): only the Topic's own namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub allowed_namespaces: Vec<String>,
    /// Retention, replicas, storage, duplicate detection and deletion of the topic.
    #[serde(flatten)]
    pub stream: StreamSettings,
}

/// One type of event on a Topic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventType {
    /// Name of the event type (`OrderPlaced`): a letter, then letters, digits, `_` and `-`,
    /// optionally in dot-separated parts.
    #[serde(rename = "type")]
    #[schemars(regex(pattern = EVENT_TYPE_PATTERN), length(max = 128))]
    pub type_: String,
    /// What the event means, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema that every event of this type satisfies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "json_object_schema")]
    pub schema: Option<serde_json::Value>,
}

fn json_object_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
