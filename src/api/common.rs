//! Types shared by every Conveyor kind: references, durations, policies and status conditions.
//! Types only: no IO and no Kubernetes client calls live here.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Conveyor kind.
pub const GROUP: &str = "conveyor.dev";
/// The served and stored version of every Conveyor kind.
pub const VERSION: &str = "v1alpha1";

/// The regular expression a duration string must match: a sequence of numbers with the units
/// `ms`, `s`, `m` or `h`, as in Go and Kubernetes (`500ms`, `30s`, `2m`, `168h`, `1h30m`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// A reference to a Broker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerReference {
    /// Name of the Broker.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Broker. Defaults to the namespace of the referring resource. A Broker in
    /// another namespace must list the referring namespace in its `spec.allowedNamespaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// A reference to a Topic or a Queue.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceReference {
    /// Name of the Topic or Queue.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Topic or Queue. Defaults to the EventSubscription's own. A Topic or
    /// Queue in another namespace must list the subscription's namespace in its
    /// `spec.allowedNamespaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// Whether a resource in `own_ns` whose `spec.allowedNamespaces` is `allowed` may be used from
/// namespace `from_ns`: always from its own namespace, from others when listed (`*`: all).
pub fn namespace_allowed(allowed: &[String], own_ns: &str, from_ns: &str) -> bool {
    from_ns == own_ns || allowed.iter().any(|a| a == "*" || a == from_ns)
}

/// A reference to a Secret in the namespace of the referring resource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What happens to the data held in the broker (a stream and its messages, or a Broker's volumes)
/// when the Conveyor resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the data in the broker; only the Kubernetes resource goes. The default.
    #[default]
    Retain,
    /// Delete the data with the resource.
    Delete,
    /// Delete the data only when it holds no messages; otherwise keep the resource and report why.
    DeleteIfEmpty,
}

/// What Conveyor does when the object inside the broker differs from the spec.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DriftPolicy {
    /// Set the broker back to the spec (recreate what was deleted, revert what was edited). The default.
    #[default]
    Repair,
    /// Only report the drift in a condition and an Event.
    Report,
}

/// Where the broker keeps the messages of a stream.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StorageType {
    /// On disk. The default.
    #[default]
    File,
    /// In memory: faster, lost when the broker restarts.
    Memory,
}

/// What the broker does when a limit is reached.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DiscardPolicy {
    /// Drop the oldest messages to make room. The default.
    #[default]
    Old,
    /// Refuse new messages.
    New,
}

/// How long and how much a stream keeps. A limit left out is unlimited.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Maximum age of a message, as a duration (`168h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_age: Option<String>,
    /// Maximum number of messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_messages: Option<i64>,
    /// Maximum total size of the messages, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_bytes: Option<i64>,
    /// What to do when a limit is reached: `Old` drops the oldest messages, `New` refuses new ones.
    #[serde(default)]
    pub discard: DiscardPolicy,
}

/// The settings of a Queue's or Topic's object inside the broker, shared by both kinds. What an
/// engine cannot honour is reported in the resource's `Supported` condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamSettings {
    /// How long and how much the queue or topic keeps. On RabbitMQ these become a policy
    /// (`message-ttl`, `max-length`, `max-length-bytes`, `overflow`), so they change in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// Number of copies of each message across the broker's servers (1 to 5); at most the
    /// broker's size. On RabbitMQ: the quorum queue's initial group size, fixed at declaration.
    #[serde(default = "default_stream_replicas")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: i32,
    /// Where the messages are kept: `File` (default) or `Memory` (NATS only; RabbitMQ's quorum
    /// queues are always on disk). Fixed at creation.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.storage is fixed at creation: the broker cannot move a stream between file and memory storage"))]
    pub storage: StorageType,
    /// Window within which the broker drops a re-published message with the same message id
    /// (the `Nats-Msg-Id` header): the basis of idempotent publishing. A duration (`2m`;
    /// default `2m` on NATS). NATS only: RabbitMQ has no duplicate detection in its core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub deduplication_window: Option<String>,
    /// What happens to the stream and its messages when this resource is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// What Conveyor does when the stream inside the broker drifts from this spec.
    #[serde(default)]
    pub drift_policy: DriftPolicy,
}

fn default_stream_replicas() -> i32 {
    1
}

/// Status conditions, merged by `type`.
pub type Conditions = Vec<Condition>;
