//! EventSubscriptions' consumers on RabbitMQ.
//!
//! - On a Topic, a subscription has a durable quorum queue of its own, named by the consumer
//!   name and owned like a Queue's (`x-conveyor-owner`), bound to the Topic's exchange with one
//!   binding per selected event type (`#`, every type, without a filter). Its delivery limit
//!   is a policy (`conveyor.<queue>`), so that it changes in place.
//! - On a Queue, the consumer is the Queue's own quorum queue: nothing is created, and deleting
//!   the subscription leaves the queue and its messages to the Queue resource.

use serde_json::{Map, Value, json};

use super::RabbitConnection;
use super::management::{Binding, ManagementError, Policy, QueueInfo};
use super::topology::{self as t, POLICY_PRIORITY};
use crate::engine::consumers::{
    ConsumerSpec, ConsumerState, ConsumerTarget, StartFrom, dead_letter_name,
};
use crate::engine::{Deletion, DestinationKind, EngineError, SyncMode, SyncOutcome};

/// The binding keys of a subscription queue: its event types, or every type.
pub fn binding_keys(spec: &ConsumerSpec) -> Vec<String> {
    if spec.event_types.is_empty() {
        vec!["#".into()]
    } else {
        let mut keys = spec.event_types.clone();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// The arguments of a subscription queue, fixed at declaration.
pub fn queue_arguments(spec: &ConsumerSpec) -> Map<String, Value> {
    t::quorum_arguments(spec.replicas, &spec.owner)
}

/// The policy of a subscription queue: a message returned more than `delivery-limit` times is
/// given up on, so the limit is one less than the deliveries allowed. With dead letters it then
/// goes, through the default exchange, to the dead-letter queue, at least once: the quorum queue
/// keeps it until the dead-letter queue has confirmed it (which needs `reject-publish`).
pub fn delivery_policy(spec: &ConsumerSpec) -> Policy {
    let mut d = Map::new();
    d.insert(
        "delivery-limit".into(),
        json!((spec.max_deliveries - 1).max(0)),
    );
    if spec.dead_letter {
        d.insert("dead-letter-exchange".into(), json!(""));
        d.insert(
            "dead-letter-routing-key".into(),
            json!(dead_letter_name(&spec.name)),
        );
        d.insert("dead-letter-strategy".into(), json!("at-least-once"));
        d.insert("overflow".into(), json!("reject-publish"));
    }
    Policy {
        pattern: t::exact(&spec.name),
        apply_to: "queues".into(),
        priority: POLICY_PRIORITY,
        definition: d,
    }
}

/// What RabbitMQ cannot honour of a consumer spec, each naming the field.
pub fn unsupported(spec: &ConsumerSpec) -> Vec<String> {
    let mut out = vec![
        "spec.delivery.ackWait: RabbitMQ 3.10 has no acknowledgement timeout per queue; the broker-wide consumer_timeout applies".to_string(),
    ];
    if !spec.backoff.is_empty() {
        out.push(
            "spec.delivery.backoff: RabbitMQ redelivers a returned message at once".to_string(),
        );
    }
    if spec.source_kind == DestinationKind::Topic && spec.start != StartFrom::New {
        out.push(
            "spec.delivery.startFrom: a new subscription on RabbitMQ receives only the events published after its queue is bound".to_string(),
        );
    }
    if spec.source_kind == DestinationKind::Queue {
        out.push(
            "spec.delivery.maxDeliveries: not applied to a Queue's own queue on RabbitMQ yet; redeliveries are unlimited".to_string(),
        );
        if spec.dead_letter {
            out.push(
                "spec.delivery.deadLetter: not available for a Queue's own queue on RabbitMQ yet"
                    .to_string(),
            );
        }
    }
    out
}

fn state(q: &QueueInfo, dead: Option<&QueueInfo>) -> ConsumerState {
    ConsumerState {
        pending: q.messages_ready.unwrap_or(0),
        in_flight: q.messages_unacknowledged.unwrap_or(0),
        dead_letters: dead.map(|d| d.messages.unwrap_or(0)),
    }
}

/// The wanted bindings missing from `bound`, and the bound ones not wanted.
fn binding_changes<'a>(wanted: &[String], bound: &'a [Binding]) -> (Vec<String>, Vec<&'a Binding>) {
    let missing = wanted
        .iter()
        .filter(|k| !bound.iter().any(|b| &b.routing_key == *k))
        .cloned()
        .collect();
    let extra = bound
        .iter()
        .filter(|b| !wanted.contains(&b.routing_key))
        .collect();
    (missing, extra)
}

impl RabbitConnection {
    pub(super) async fn ensure_consumer(
        &self,
        spec: &ConsumerSpec,
        mode: SyncMode,
    ) -> Result<SyncOutcome<ConsumerState>, EngineError> {
        crate::engine::BrokerConnection::require_connected(self)?;
        match spec.source_kind {
            DestinationKind::Queue => Ok(match self.api.queue(&self.vhost, &spec.source).await? {
                Some(q) => SyncOutcome::Unchanged(state(&q, None)),
                None => SyncOutcome::Missing,
            }),
            DestinationKind::Topic => self.ensure_subscription_queue(spec, mode).await,
        }
    }

    async fn ensure_subscription_queue(
        &self,
        spec: &ConsumerSpec,
        mode: SyncMode,
    ) -> Result<SyncOutcome<ConsumerState>, EngineError> {
        let (vh, name) = (&self.vhost, &spec.name);
        let policy_name = t::policy_name(name);
        let wanted_policy = delivery_policy(spec);
        let keys = binding_keys(spec);
        // The dead-letter queue comes first: the policy that sends to it may not lead nowhere.
        let dead = match self.ensure_dead_letter_queue(spec, mode).await? {
            Ok(d) => d,
            Err(why) => return Ok(SyncOutcome::Conflict(why)),
        };
        let Some(queue) = self.api.queue(vh, name).await? else {
            if !mode.create {
                return Ok(SyncOutcome::Missing);
            }
            self.api
                .put_policy(vh, &policy_name, &wanted_policy)
                .await?;
            self.api
                .declare_queue(vh, name, true, &queue_arguments(spec))
                .await?;
            for key in &keys {
                self.api.bind_queue(vh, &spec.source, name, key).await?;
            }
            return Ok(SyncOutcome::Created(state(
                &QueueInfo::default(),
                dead.as_ref(),
            )));
        };
        let what = format!("queue {name}");
        if let Some(why) = t::not_owned(&what, &queue.arguments, &spec.owner) {
            return Ok(SyncOutcome::Conflict(why));
        }
        let mut changed = Vec::new();
        if queue.queue_type.as_deref() != Some("quorum") {
            changed.push("type (not a quorum queue)".to_string());
        }
        let policy = self.api.policy(vh, &policy_name).await?;
        let policy_differs = policy.as_ref() != Some(&wanted_policy);
        if policy_differs {
            changed.push("maxDeliveries and deadLetter".to_string());
        }
        let bound = self
            .api
            .bindings_from_exchange_to_queue(vh, &spec.source, name)
            .await?;
        let (missing, extra) = binding_changes(&keys, &bound);
        if !missing.is_empty() || !extra.is_empty() {
            changed.push("filter".to_string());
        }
        let state = state(&queue, dead.as_ref());
        if changed.is_empty() {
            return Ok(SyncOutcome::Unchanged(state));
        }
        if !mode.repair || queue.queue_type.as_deref() != Some("quorum") {
            return Ok(SyncOutcome::Drifted(state, changed));
        }
        if policy_differs {
            self.api
                .put_policy(vh, &policy_name, &wanted_policy)
                .await?;
        }
        // New bindings first, so that no event of a type still wanted is missed meanwhile.
        for key in &missing {
            self.api.bind_queue(vh, &spec.source, name, key).await?;
        }
        for b in extra {
            self.api
                .unbind_queue(vh, &spec.source, name, &b.properties_key)
                .await?;
        }
        Ok(SyncOutcome::Updated(state, changed))
    }

    /// The dead-letter queue of a subscription that keeps dead letters: declared like the
    /// subscription queue and owned by the subscription. `Err(why)` when one of that name is
    /// someone else's; `None` without dead letters, or when it may not be created.
    async fn ensure_dead_letter_queue(
        &self,
        spec: &ConsumerSpec,
        mode: SyncMode,
    ) -> Result<Result<Option<QueueInfo>, String>, EngineError> {
        if !spec.dead_letter {
            return Ok(Ok(None));
        }
        let (vh, name) = (&self.vhost, dead_letter_name(&spec.name));
        match self.api.queue(vh, &name).await? {
            Some(q) => {
                let what = format!("dead-letter queue {name}");
                Ok(match t::not_owned(&what, &q.arguments, &spec.owner) {
                    Some(why) => Err(why),
                    None => Ok(Some(q)),
                })
            }
            None if mode.create => {
                self.api
                    .declare_queue(vh, &name, true, &queue_arguments(spec))
                    .await?;
                Ok(Ok(Some(QueueInfo {
                    name,
                    ..Default::default()
                })))
            }
            None => Ok(Ok(None)),
        }
    }

    pub(super) async fn delete_consumer(
        &self,
        target: &ConsumerTarget,
    ) -> Result<Deletion, EngineError> {
        crate::engine::BrokerConnection::require_connected(self)?;
        if target.source_kind == DestinationKind::Queue {
            // The Queue's own queue: it belongs to the Queue resource.
            return Ok(Deletion::Deleted);
        }
        let (vh, name) = (&self.vhost, &target.name);
        let Some(queue) = self.api.queue(vh, name).await? else {
            self.api.delete_policy(vh, &t::policy_name(name)).await?;
            return Ok(Deletion::Absent);
        };
        let what = format!("queue {name}");
        if let Some(why) = t::not_owned(&what, &queue.arguments, &target.owner) {
            return Ok(Deletion::NotOwned(why));
        }
        self.api.delete_queue(vh, name).await?;
        self.api.delete_policy(vh, &t::policy_name(name)).await?;
        self.delete_dead_letter_queue_if_empty(target).await?;
        Ok(Deletion::Deleted)
    }

    /// Deletes the subscription's dead-letter queue when it holds nothing: dead letters are
    /// kept, with their queue, after the subscription goes.
    async fn delete_dead_letter_queue_if_empty(
        &self,
        target: &ConsumerTarget,
    ) -> Result<(), EngineError> {
        let (vh, name) = (&self.vhost, dead_letter_name(&target.name));
        let Some(q) = self.api.queue(vh, &name).await? else {
            return Ok(());
        };
        let what = format!("dead-letter queue {name}");
        if t::not_owned(&what, &q.arguments, &target.owner).is_some() {
            return Ok(());
        }
        // The server decides emptiness: the statistics lag behind.
        match self.api.delete_queue_if_empty(vh, &name).await {
            Ok(_) | Err(ManagementError::Status { code: 400, .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec() -> ConsumerSpec {
        ConsumerSpec {
            source_kind: DestinationKind::Topic,
            source: "topic_shop_orders".into(),
            name: "sub_shop_payment".into(),
            event_types: vec!["OrderShipped".into(), "OrderPlaced".into()],
            ack_wait: Duration::from_secs(30),
            max_deliveries: 5,
            backoff: Vec::new(),
            max_ack_pending: 1000,
            start: StartFrom::New,
            dead_letter: false,
            replicas: 3,
            owner: "EventSubscription shop/payment".into(),
        }
    }

    fn binding(key: &str) -> Binding {
        Binding {
            source: "topic_shop_orders".into(),
            destination: "sub_shop_payment".into(),
            destination_type: "queue".into(),
            routing_key: key.into(),
            properties_key: key.into(),
            arguments: Map::new(),
        }
    }

    #[test]
    fn a_subscription_queue_is_bound_per_event_type_or_to_everything() {
        assert_eq!(binding_keys(&spec()), ["OrderPlaced", "OrderShipped"]);
        let all = ConsumerSpec {
            event_types: Vec::new(),
            ..spec()
        };
        assert_eq!(binding_keys(&all), ["#"]);
        assert_eq!(queue_arguments(&spec())["x-quorum-initial-group-size"], 3);
        assert_eq!(delivery_policy(&spec()).definition["delivery-limit"], 4);
    }

    #[test]
    fn binding_changes_add_the_missing_and_remove_the_unwanted() {
        let bound = [binding("OrderPlaced"), binding("OrderCancelled")];
        let (missing, extra) = binding_changes(&binding_keys(&spec()), &bound);
        assert_eq!(missing, ["OrderShipped"]);
        assert_eq!(extra.len(), 1);
        assert_eq!(extra[0].routing_key, "OrderCancelled");
    }

    #[test]
    fn what_rabbitmq_cannot_do_is_named() {
        let s = ConsumerSpec {
            backoff: vec![Duration::from_secs(1)],
            start: StartFrom::All,
            ..spec()
        };
        let all = unsupported(&s).join("\n");
        for field in ["ackWait", "backoff", "startFrom"] {
            assert!(all.contains(field), "{all}");
        }
    }
}
