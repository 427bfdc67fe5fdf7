//! What the autoscaler needs of one EventSubscription: where its consumer is, which
//! workload it scales and how. Pure: read from the subscription's spec and status.

use kube::ResourceExt;

use super::policy::Policy;
use crate::api::EventSubscription;
use crate::api::broker::Engine;
use crate::controller::stream::spec::duration;
use crate::engine::registry::BrokerKey;

/// A subscription the autoscaler scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    /// The Broker that holds the consumer.
    pub broker: BrokerKey,
    /// The stream, queue or exchange the consumer reads from.
    pub source: String,
    /// The consumer's name in the broker.
    pub consumer: String,
    /// Whether the source is a Queue (else a Topic).
    pub on_queue: bool,
    /// The Deployment scaled, in the subscription's namespace.
    pub workload: String,
    pub policy: Policy,
    pub generation: Option<i64>,
}

/// The subscription's key: namespace and name.
pub type Key = (String, String);

impl Target {
    pub fn key(&self) -> Key {
        (self.namespace.clone(), self.name.clone())
    }

    /// The name the engine's depth listing shows this consumer under: on RabbitMQ a
    /// subscription on a Queue consumes the Queue's own queue.
    pub fn listed_as(&self, engine: Engine) -> &str {
        if self.on_queue && engine == Engine::Rabbitmq {
            &self.source
        } else {
            &self.consumer
        }
    }

    /// The policy on `engine`: only NATS enforces `maxAckPending` as a ceiling.
    pub fn policy_on(&self, engine: Engine) -> Policy {
        let mut p = self.policy.clone();
        if engine != Engine::Nats {
            p.max_in_flight = None;
        }
        p
    }
}

/// The target a subscription makes once its consumer is in the broker (`None` before that).
pub fn target(sub: &EventSubscription) -> Option<Target> {
    if sub.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = sub.status.as_ref()?;
    let (broker_ns, broker_name) = status.broker.as_deref()?.split_once('/')?;
    let source = status.source_in_broker.clone()?;
    let consumer = status.consumer_name.clone()?;
    let c = &sub.spec.consumer;
    let workload = match (&c.template, &c.workload_ref) {
        (Some(_), _) => sub.name_any(),
        (None, Some(w)) => w.name.clone(),
        (None, None) => return None,
    };
    Some(Target {
        namespace: sub.namespace().unwrap_or_default(),
        name: sub.name_any(),
        broker: (broker_ns.to_string(), broker_name.to_string()),
        source,
        consumer,
        on_queue: sub.spec.queue_ref.is_some(),
        workload,
        policy: policy(sub),
        generation: sub.metadata.generation,
    })
}

/// The policy of `spec.scaling`, with `maxAckPending` as the in-flight limit; durations the
/// schema accepted but that do not parse count as zero.
pub fn policy(sub: &EventSubscription) -> Policy {
    let s = &sub.spec.scaling;
    let d = |v: &str| duration(v).unwrap_or_default();
    Policy {
        min: s.min_replicas.max(0) as u32,
        max: s.max_replicas.max(0) as u32,
        target_backlog: s.target_backlog_per_replica.max(1) as u64,
        target_drain: s
            .target_drain_seconds
            .map(|v| std::time::Duration::from_secs(v.max(1) as u64)),
        activation: s.activation_backlog.max(0) as u64,
        cooldown: d(&s.cooldown),
        stabilization: d(&s.scale_down_stabilization),
        max_in_flight: Some(sub.spec.delivery.max_ack_pending.max(1) as u64),
        paused: s.paused,
    }
}
