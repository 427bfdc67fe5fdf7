//! The `EventSubscription` kind: one consuming service bound to a Topic or a Queue, with its
//! durable consumer, its consumer workload and its autoscaling.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Conditions, DURATION_PATTERN, SourceReference};
use super::topic::EVENT_TYPE_PATTERN;

/// One consuming service bound to a Topic or a Queue.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "conveyor.dev",
    version = "v1alpha1",
    kind = "EventSubscription",
    namespaced,
    status = "EventSubscriptionStatus",
    shortname = "esub",
    category = "conveyor",
    printcolumn(name = "Source", type_ = "string", json_path = ".status.source"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Backlog", type_ = "integer", json_path = ".status.backlog"),
    printcolumn(
        name = "Dead Letters",
        type_ = "integer",
        json_path = ".status.deadLetters"
    ),
    printcolumn(name = "Workload", type_ = "string", json_path = ".status.workload"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        priority = 1,
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(
        name = "Consumer",
        type_ = "string",
        priority = 1,
        json_path = ".status.consumerName"
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        priority = 1,
        json_path = ".status.pending"
    ),
    printcolumn(
        name = "In Flight",
        type_ = "integer",
        priority = 1,
        json_path = ".status.inFlight"
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
#[kube(
    validation = Rule::new("size(self.metadata.name) <= 63").message("an EventSubscription's name must be at most 63 characters: it labels its consumer's pods")
)]
#[x_kube(
    validation = Rule::new("has(self.topicRef) != has(self.queueRef)").message("set exactly one of spec.topicRef or spec.queueRef"),
    validation = Rule::new("has(self.topicRef) == has(oldSelf.topicRef)").message("an EventSubscription cannot switch between a Topic and a Queue: create a new one"),
    validation = Rule::new("!has(self.queueRef) || !has(self.filter)").message("spec.filter selects event types of a Topic; remove it when spec.queueRef is set"),
    validation = Rule::new("!has(self.queueRef) || self.delivery.startFrom == 'All'").message("a subscription on a Queue takes all of its work: spec.delivery.startFrom must be All with spec.queueRef"),
    validation = Rule::new("has(self.consumer.template) == has(oldSelf.consumer.template)").message("an EventSubscription cannot switch between spec.consumer.template and spec.consumer.workloadRef: create a new one")
)]
#[serde(rename_all = "camelCase")]
pub struct EventSubscriptionSpec {
    /// The Topic to receive every event of (filtered by `filter`). Immutable. Exactly one of
    /// `topicRef` and `queueRef` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.topicRef is immutable: create a new EventSubscription"))]
    pub topic_ref: Option<SourceReference>,
    /// The Queue to take work from. Immutable. Exactly one of `topicRef` and `queueRef` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.queueRef is immutable: create a new EventSubscription"))]
    pub queue_ref: Option<SourceReference>,
    /// Which events of the Topic this subscription receives. All of them when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<EventFilter>,
    /// How messages are delivered and redelivered to the consumer.
    #[serde(default)]
    pub delivery: Delivery,
    /// The workload that consumes the messages.
    pub consumer: Consumer,
    /// How the consumer workload is scaled from the backlog.
    #[serde(default)]
    pub scaling: Scaling,
}

/// Selects event types of a Topic.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventFilter {
    /// The event types to receive (`OrderPlaced`); each must be declared on the Topic.
    #[schemars(length(min = 1, max = 32), inner(regex(pattern = EVENT_TYPE_PATTERN)))]
    pub event_types: Vec<String>,
}

/// Delivery settings of the subscription's durable consumer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.backoff) || size(self.backoff) < self.maxDeliveries").message("spec.delivery.backoff may list fewer durations than spec.delivery.maxDeliveries (the first delivery waits for no backoff)"),
    validation = Rule::new("(self.startFrom == 'Time') == has(self.startTime)").message("set spec.delivery.startTime exactly when spec.delivery.startFrom is Time"),
    validation = Rule::new("self.startFrom == oldSelf.startFrom && has(self.startTime) == has(oldSelf.startTime) && (!has(self.startTime) || self.startTime == oldSelf.startTime)").message("spec.delivery.startFrom and spec.delivery.startTime are fixed once the subscription exists: create a new EventSubscription to start elsewhere")
)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Where a new subscription starts in its source: `All` (every message the source still
    /// holds, the default, so that nothing published before the subscription is missed),
    /// `New` (only messages published after it is created) or `Time` (from `startTime`).
    /// Fixed once the subscription exists.
    #[serde(default)]
    pub start_from: StartFrom,
    /// With `startFrom: Time`, the time to start from (RFC 3339, `2026-12-01T00:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
    ))]
    pub start_time: Option<String>,
    /// How long the broker waits for an acknowledgement before it redelivers a message (`30s`).
    #[serde(default = "default_ack_wait")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ack_wait: String,
    /// How many times a message is delivered before it is given up on (and dead-lettered when
    /// `deadLetter.enabled`).
    #[serde(default = "default_max_deliveries")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_deliveries: i32,
    /// Delays between redeliveries (`[1s, 5s, 30s]`): how long the broker waits for the
    /// acknowledgement of each delivery before the next; the last one repeats. Fewer entries
    /// than `maxDeliveries`. `ackWait` between redeliveries when left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(regex(pattern = DURATION_PATTERN)))]
    pub backoff: Vec<String>,
    /// Most messages delivered and not yet acknowledged at once, across all replicas.
    #[serde(default = "default_max_ack_pending")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_ack_pending: i32,
    /// Where messages go after `maxDeliveries` failed deliveries.
    #[serde(default)]
    pub dead_letter: DeadLetter,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            start_from: StartFrom::default(),
            start_time: None,
            ack_wait: default_ack_wait(),
            max_deliveries: default_max_deliveries(),
            backoff: Vec::new(),
            max_ack_pending: default_max_ack_pending(),
            dead_letter: DeadLetter::default(),
        }
    }
}

fn default_ack_wait() -> String {
    "30s".into()
}
fn default_max_deliveries() -> i32 {
    5
}
fn default_max_ack_pending() -> i32 {
    1000
}

/// Where a new subscription starts in its source.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StartFrom {
    /// Every message the source still holds.
    #[default]
    All,
    /// Only messages published after the subscription is created.
    New,
    /// Messages published at or after `startTime`.
    Time,
}

/// Dead-lettering of messages that exhausted their deliveries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Keep messages that used up `maxDeliveries` in the subscription's dead-letter destination
    /// (`status.deadLetterDestination`), with where they came from and how many deliveries
    /// were tried. Kept after the subscription is deleted when it holds messages.
    #[serde(default)]
    pub enabled: bool,
}

/// The workload that consumes the messages: either a pod template (Conveyor owns the
/// Deployment) or a reference to a Deployment the user owns. Exactly one is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.template) != has(self.workloadRef)").message("set exactly one of spec.consumer.template (Conveyor runs the Deployment) or spec.consumer.workloadRef (a Deployment you own)"))]
#[serde(rename_all = "camelCase")]
pub struct Consumer {
    /// The pod template of the consumer; Conveyor creates and owns a Deployment from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplateSpec>,
    /// A Deployment in the subscription's namespace that you own; Conveyor only scales it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_ref: Option<WorkloadReference>,
}

/// A workload that Conveyor scales.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadReference {
    /// Kind of the workload. Only `Deployment`.
    #[serde(default = "default_workload_kind")]
    #[schemars(regex(pattern = r"^Deployment$"))]
    pub kind: String,
    /// Name of the workload, in the namespace of the EventSubscription.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

fn default_workload_kind() -> String {
    "Deployment".into()
}

/// Autoscaling of the consumer workload from the observed backlog.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("spec.scaling.minReplicas must not exceed spec.scaling.maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct Scaling {
    /// Fewest replicas; 0 lets the consumer scale to zero when there is no work.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,
    /// Most replicas.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Backlog (pending plus unacknowledged messages) that one replica is expected to handle.
    #[serde(default = "default_target_backlog")]
    #[schemars(range(min = 1))]
    pub target_backlog_per_replica: i64,
    /// Alternatively, scale so that the backlog drains within this many seconds at the measured
    /// per-replica rate; the larger of the two recommendations wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_drain_seconds: Option<i64>,
    /// Backlog above which a consumer at zero replicas is started.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub activation_backlog: i64,
    /// How long the backlog must stay empty before the consumer scales to zero (`5m`).
    #[serde(default = "default_cooldown")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub cooldown: String,
    /// Scale-down recommendations are held for this long; the highest within the window wins (`1m`).
    #[serde(default = "default_scale_down_window")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub scale_down_stabilization: String,
    /// Stop scaling and leave the replica count as it is.
    #[serde(default)]
    pub paused: bool,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            min_replicas: 0,
            max_replicas: default_max_replicas(),
            target_backlog_per_replica: default_target_backlog(),
            target_drain_seconds: None,
            activation_backlog: 0,
            cooldown: default_cooldown(),
            scale_down_stabilization: default_scale_down_window(),
            paused: false,
        }
    }
}

fn default_max_replicas() -> i32 {
    10
}
fn default_target_backlog() -> i64 {
    100
}
fn default_cooldown() -> String {
    "5m".into()
}
fn default_scale_down_window() -> String {
    "1m".into()
}

/// The observed state of an EventSubscription.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventSubscriptionStatus {
    /// The generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The state of the subscription: `Ready`, `ResolvedRefs`, `ConsumerReady`, `Scaling`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
    /// What the subscription consumes, as `topic/<name>` or `queue/<name>`, with the namespace
    /// (`topic/<namespace>/<name>`) when it is not the subscription's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Name of the durable consumer inside the broker (on RabbitMQ and a Topic, the name of the
    /// subscription's queue). Set once; never changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_name: Option<String>,
    /// The Broker that holds the consumer (`namespace/name`), so that deleting the
    /// subscription removes the consumer even after its source is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// The name inside the broker of the stream, queue or exchange the consumer reads from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_in_broker: Option<String>,
    /// Messages not yet delivered to the consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<i64>,
    /// Messages delivered and not yet acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<i64>,
    /// `pending + inFlight`: the work not yet done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<i64>,
    /// Messages that used up `maxDeliveries` and are kept in the dead-letter destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<i64>,
    /// The dead-letter destination in the broker: a stream on NATS, a queue on RabbitMQ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_destination: Option<String>,
    /// The consumer workload, as `deployment/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Replicas of the consumer workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Acknowledgements per second across the workload's replicas, as a decimal (`12.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consume_rate: Option<String>,
    /// The replicas the autoscaler wants the workload to have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// When the autoscaler last changed the workload's replicas (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Why the autoscaler last changed the workload's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
}

impl EventSubscriptionStatus {
    /// The status without what the autoscaler writes (the figures, the replicas, the last
    /// scale and the `Scaling` condition): the part the reconciler owns.
    pub fn without_autoscaler_fields(&self) -> Self {
        let mut s = self.clone();
        s.pending = None;
        s.in_flight = None;
        s.backlog = None;
        s.replicas = None;
        s.consume_rate = None;
        s.desired_replicas = None;
        s.last_scale_time = None;
        s.last_scale_reason = None;
        s.conditions.retain(|c| c.type_ != "Scaling");
        s
    }

    /// Only what the autoscaler writes.
    pub fn autoscaler_fields(&self) -> Self {
        Self {
            conditions: self
                .conditions
                .iter()
                .filter(|c| c.type_ == "Scaling")
                .cloned()
                .collect(),
            pending: self.pending,
            in_flight: self.in_flight,
            backlog: self.backlog,
            replicas: self.replicas,
            consume_rate: self.consume_rate.clone(),
            desired_replicas: self.desired_replicas,
            last_scale_time: self.last_scale_time.clone(),
            last_scale_reason: self.last_scale_reason.clone(),
            ..Self::default()
        }
    }
}
