//! Typed condition types and reasons, and the pure logic that merges conditions by type.
//!
//! Invariants: `lastTransitionTime` changes only when a condition's status flips, and a
//! condition that did not change is kept exactly as it was, so that comparing the old and the
//! new status tells whether anything but timestamps changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The condition types Conveyor sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// The resource does what it describes.
    Ready,
    /// Every resource this one refers to exists and may be used.
    ResolvedRefs,
    /// The broker answers.
    Reachable,
    /// A change of the spec is being rolled out.
    Progressing,
    /// The broker runs with fewer healthy servers than it should.
    Degraded,
    /// The object inside the broker matches the spec.
    Synced,
    /// The Broker's engine honours every setting of the spec; otherwise the message names the
    /// settings it cannot honour.
    Supported,
    /// An EventSubscription's durable consumer is in the broker and matches the spec.
    ConsumerReady,
    /// An EventSubscription has a broker identity of its own that may consume only from its
    /// consumer; otherwise the message says what isolation there is.
    Isolated,
    /// An EventSubscription's workload is scaled from its observed backlog; otherwise the
    /// message says why its replicas are held.
    Scaling,
}

impl ConditionType {
    /// The name written to `status.conditions[].type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::ResolvedRefs => "ResolvedRefs",
            Self::Reachable => "Reachable",
            Self::Progressing => "Progressing",
            Self::Degraded => "Degraded",
            Self::Synced => "Synced",
            Self::Supported => "Supported",
            Self::ConsumerReady => "ConsumerReady",
            Self::Isolated => "Isolated",
            Self::Scaling => "Scaling",
        }
    }
}

/// The reasons Conveyor gives in conditions and Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Every reference resolved.
    Resolved,
    /// A referenced Broker does not exist.
    BrokerNotFound,
    /// A referenced Broker does not allow this namespace.
    RefNotPermitted,
    /// A referenced Secret does not exist or lacks a key.
    SecretNotFound,
    /// A referenced Topic does not exist.
    TopicNotFound,
    /// A referenced Queue does not exist.
    QueueNotFound,
    /// A referenced Deployment does not exist.
    WorkloadNotFound,
    /// A filter names an event type the Topic does not declare.
    UnknownEventType,
    /// The referenced Broker is not Ready.
    BrokerNotReady,
    /// The referenced Topic or Queue is not Ready.
    SourceNotReady,
    /// This build of Conveyor cannot yet do what the spec asks.
    NotSupported,
    /// A reference could not be resolved for a reason other than the above.
    ResolutionFailed,
    /// The broker answered.
    Connected,
    /// The broker did not answer.
    Unreachable,
    /// The broker answers but lacks something Conveyor needs (NATS without JetStream).
    MissingCapability,
    /// The broker refused Conveyor's credentials.
    Unauthorized,
    /// The management API answers but the AMQP listener does not (RabbitMQ).
    AmqpUnreachable,
    /// An external Broker points outside the destinations the operator may reach.
    DestinationNotAllowed,
    /// Every server is ready and up to date.
    Available,
    /// Some servers are not ready yet.
    NotAvailable,
    /// Servers are being updated or added.
    RollingUpdate,
    /// Every server runs the current spec.
    Complete,
    /// A scale-down was refused because streams could lose replicas.
    ScaleDownRefused,
    /// Every server is ready.
    AllServersReady,
    /// Some servers that should be ready are not.
    ServersNotReady,
    /// The stream in the broker matches the spec.
    InSync,
    /// The stream in the broker differs from the spec and is left alone.
    Drifted,
    /// The object was deleted from the broker outside Conveyor and is not recreated.
    MissingInBroker,
    /// A stream of that name belongs to someone else.
    Conflict,
    /// The broker refused a change.
    UpdateRejected,
    /// The spec asks for more replicas than the broker has servers.
    InsufficientServers,
    /// An event type's schema is not valid JSON Schema.
    InvalidEventSchema,
    /// Deletion waits until the stream is empty.
    DeletionBlocked,
    /// The spec cannot be turned into broker settings.
    InvalidSpec,
    /// The object exists in the broker.
    Declared,
    /// The engine honours every setting.
    AllSettingsSupported,
    /// The engine cannot honour a setting; the message names it.
    SettingNotSupported,
    /// The subscription consumes with a broker identity of its own.
    OwnIdentity,
    /// The broker cannot give the subscription an identity of its own.
    IdentityUnavailable,
    /// The workload follows the observed backlog.
    BacklogObserved,
    /// `spec.scaling.paused`: the replicas are left as they are.
    ScalingPaused,
    /// The broker could not be asked for the backlog; the replicas are held.
    BacklogUnknown,
    /// The subscription's consumer is not in the broker; the replicas are held.
    ConsumerMissing,
    /// The scale subresource refused a write.
    ScaleFailed,
}

impl Reason {
    /// The name written to `status.conditions[].reason` and to Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resolved => "Resolved",
            Self::BrokerNotFound => "BrokerNotFound",
            Self::RefNotPermitted => "RefNotPermitted",
            Self::SecretNotFound => "SecretNotFound",
            Self::TopicNotFound => "TopicNotFound",
            Self::QueueNotFound => "QueueNotFound",
            Self::WorkloadNotFound => "WorkloadNotFound",
            Self::UnknownEventType => "UnknownEventType",
            Self::BrokerNotReady => "BrokerNotReady",
            Self::SourceNotReady => "SourceNotReady",
            Self::NotSupported => "NotSupported",
            Self::ResolutionFailed => "ResolutionFailed",
            Self::Connected => "Connected",
            Self::Unreachable => "Unreachable",
            Self::MissingCapability => "MissingCapability",
            Self::Unauthorized => "Unauthorized",
            Self::AmqpUnreachable => "AmqpUnreachable",
            Self::DestinationNotAllowed => "DestinationNotAllowed",
            Self::Available => "Available",
            Self::NotAvailable => "NotAvailable",
            Self::RollingUpdate => "RollingUpdate",
            Self::Complete => "Complete",
            Self::ScaleDownRefused => "ScaleDownRefused",
            Self::AllServersReady => "AllServersReady",
            Self::ServersNotReady => "ServersNotReady",
            Self::InSync => "InSync",
            Self::Drifted => "Drifted",
            Self::MissingInBroker => "MissingInBroker",
            Self::Conflict => "Conflict",
            Self::UpdateRejected => "UpdateRejected",
            Self::InsufficientServers => "InsufficientServers",
            Self::InvalidEventSchema => "InvalidEventSchema",
            Self::DeletionBlocked => "DeletionBlocked",
            Self::InvalidSpec => "InvalidSpec",
            Self::Declared => "Declared",
            Self::AllSettingsSupported => "AllSettingsSupported",
            Self::SettingNotSupported => "SettingNotSupported",
            Self::OwnIdentity => "OwnIdentity",
            Self::IdentityUnavailable => "IdentityUnavailable",
            Self::BacklogObserved => "BacklogObserved",
            Self::ScalingPaused => "ScalingPaused",
            Self::BacklogUnknown => "BacklogUnknown",
            Self::ConsumerMissing => "ConsumerMissing",
            Self::ScaleFailed => "ScaleFailed",
        }
    }
}

/// `Supported`: true when the engine honours every setting, else false naming each one it cannot.
pub fn supported(unsupported: &[String]) -> Desired {
    if unsupported.is_empty() {
        Desired::is_true(
            ConditionType::Supported,
            Reason::AllSettingsSupported,
            "the broker honours every setting",
        )
    } else {
        Desired::is_false(
            ConditionType::Supported,
            Reason::SettingNotSupported,
            unsupported.join("; "),
        )
    }
}

/// A condition as a reconciler decides it, before timestamps and generations are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: ConditionType,
    pub status: bool,
    pub reason: Reason,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: ConditionType,
        status: bool,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
    pub fn is_true(type_: ConditionType, reason: Reason, message: impl Into<String>) -> Self {
        Self::new(type_, true, reason, message)
    }
    pub fn is_false(type_: ConditionType, reason: Reason, message: impl Into<String>) -> Self {
        Self::new(type_, false, reason, message)
    }

    /// `Ready=False` with this condition's reason and message: what a resource reports when
    /// this condition keeps it from being ready.
    pub fn as_not_ready(&self) -> Self {
        Self::is_false(ConditionType::Ready, self.reason, self.message.clone())
    }
}

fn status_str(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Merges `desired` into `current` by type and returns the new list, sorted by type.
///
/// A condition whose status, reason, message and generation are unchanged is kept as it was;
/// `lastTransitionTime` is kept unless the status flips; conditions of other types are kept.
pub fn merge(
    current: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = current
        .iter()
        .filter(|c| !desired.iter().any(|d| d.type_.as_str() == c.type_))
        .cloned()
        .collect();
    for d in desired {
        let old = current.iter().find(|c| c.type_ == d.type_.as_str());
        let status = status_str(d.status);
        let next = match old {
            Some(o)
                if o.status == status
                    && o.reason == d.reason.as_str()
                    && o.message == d.message
                    && o.observed_generation == generation =>
            {
                o.clone()
            }
            _ => Condition {
                type_: d.type_.as_str().to_string(),
                status: status.to_string(),
                reason: d.reason.as_str().to_string(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time: match old {
                    Some(o) if o.status == status => o.last_transition_time.clone(),
                    _ => Time(now),
                },
            },
        };
        out.push(next);
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Whether the condition of `type_` is present and `True`.
pub fn is_true(conditions: &[Condition], type_: ConditionType) -> bool {
    find(conditions, type_).is_some_and(is_true_condition)
}

/// Whether a condition's status is `True`.
pub fn is_true_condition(c: &Condition) -> bool {
    c.status == "True"
}

/// The condition of `type_`, if present.
pub fn find(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn ready(status: bool, msg: &str) -> Desired {
        Desired::new(ConditionType::Ready, status, Reason::BrokerNotReady, msg)
    }

    #[test]
    fn unchanged_condition_is_kept_byte_for_byte() {
        let first = merge(&[], &[ready(false, "waiting")], Some(1), t(0));
        let second = merge(&first, &[ready(false, "waiting")], Some(1), t(60));
        assert_eq!(
            first, second,
            "nothing but the clock changed, so no write is needed"
        );
        assert_eq!(second[0].last_transition_time, Time(t(0)));
    }

    #[test]
    fn message_change_keeps_transition_time() {
        let first = merge(&[], &[ready(false, "waiting")], Some(1), t(0));
        let second = merge(&first, &[ready(false, "still waiting")], Some(1), t(60));
        assert_ne!(first, second);
        assert_eq!(second[0].message, "still waiting");
        assert_eq!(second[0].last_transition_time, Time(t(0)));
    }

    #[test]
    fn status_flip_moves_transition_time() {
        let first = merge(&[], &[ready(false, "waiting")], Some(1), t(0));
        let second = merge(&first, &[ready(true, "ok")], Some(1), t(60));
        assert_eq!(second[0].status, "True");
        assert_eq!(second[0].last_transition_time, Time(t(60)));
    }

    #[test]
    fn new_generation_is_recorded_without_a_transition() {
        let first = merge(&[], &[ready(false, "waiting")], Some(1), t(0));
        let second = merge(&first, &[ready(false, "waiting")], Some(2), t(60));
        assert_eq!(second[0].observed_generation, Some(2));
        assert_eq!(second[0].last_transition_time, Time(t(0)));
    }

    #[test]
    fn other_types_are_kept_and_order_is_stable() {
        let refs = Desired::is_true(ConditionType::ResolvedRefs, Reason::Resolved, "ok");
        let first = merge(&[], &[ready(false, "w"), refs.clone()], Some(1), t(0));
        let second = merge(&first, &[ready(false, "w")], Some(1), t(5));
        assert_eq!(first, second);
        let types: Vec<_> = second.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "ResolvedRefs"]);
        assert!(is_true(&second, ConditionType::ResolvedRefs));
        assert!(!is_true(&second, ConditionType::Ready));
    }
}
