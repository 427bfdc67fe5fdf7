//! The update cases of the CRD validation tests: a valid object and a change of it that the API
//! server must refuse (an immutable field, a forbidden switch) or accept (a mutable field).

use serde_json::{Value, json};

use super::cases::*;

/// A valid object and an update of it that must be rejected (or, for a mutable field, accepted).
pub struct Update {
    pub name: &'static str,
    pub kind: Kind,
    pub base: Value,
    /// A JSON merge patch of `spec`.
    pub change: Value,
    /// `None`: the update must be accepted.
    pub expected: Option<&'static str>,
}

pub fn update(
    name: &'static str,
    kind: Kind,
    base: Value,
    change: Value,
    expected: Option<&'static str>,
) -> Update {
    Update {
        name,
        kind,
        base,
        change,
        expected,
    }
}

pub fn update_cases() -> Vec<Update> {
    use Kind::*;
    let queue_stream = with(&queue(), json!({"nameInBroker": "work_a"}));
    let topic_stream = with(&topic(), json!({"nameInBroker": "orders_a"}));
    vec![
        update(
            "broker-managed-to-external",
            Broker,
            managed_broker(),
            json!({"managed": null, "external": {"urls": ["nats://nats.example:4222"]}}),
            Some(
                "a Broker cannot switch between managed and external: create a new Broker instead",
            ),
        ),
        update(
            "broker-external-to-managed",
            Broker,
            external_broker(),
            json!({"external": null, "managed": {"replicas": 1}}),
            Some(
                "a Broker cannot switch between managed and external: create a new Broker instead",
            ),
        ),
        update(
            "broker-storage-class-changed",
            Broker,
            with(
                &managed_broker(),
                json!({"managed": {"storage": {"storageClassName": "standard"}}}),
            ),
            json!({"managed": {"storage": {"storageClassName": "fast"}}}),
            Some("spec.managed.storage.storageClassName is immutable"),
        ),
        update(
            "broker-storage-size-changed",
            Broker,
            managed_broker(),
            json!({"managed": {"storage": {"size": "20Gi"}}}),
            Some(
                "spec.managed.storage.size is immutable: the StatefulSet's volume claims cannot be resized in place",
            ),
        ),
        update(
            "broker-storage-class-added",
            Broker,
            managed_broker(),
            json!({"managed": {"storage": {"storageClassName": "fast"}}}),
            Some("spec.managed.storage.storageClassName cannot be added or removed after creation"),
        ),
        update(
            "broker-storage-class-removed",
            Broker,
            with(
                &managed_broker(),
                json!({"managed": {"storage": {"storageClassName": "standard"}}}),
            ),
            json!({"managed": {"storage": {"storageClassName": null}}}),
            Some("spec.managed.storage.storageClassName cannot be added or removed after creation"),
        ),
        update(
            "queue-storage-changed",
            Queue,
            queue(),
            json!({"storage": "Memory"}),
            Some(
                "spec.storage is fixed at creation: the broker cannot move a stream between file and memory storage",
            ),
        ),
        update(
            "topic-storage-changed",
            Topic,
            topic(),
            json!({"storage": "Memory"}),
            Some(
                "spec.storage is fixed at creation: the broker cannot move a stream between file and memory storage",
            ),
        ),
        update(
            "queue-brokerRef-name-changed",
            Queue,
            queue(),
            json!({"brokerRef": {"name": "other"}}),
            Some("spec.brokerRef is immutable: create a new Queue to use another Broker"),
        ),
        update(
            "queue-nameInBroker-changed",
            Queue,
            queue_stream.clone(),
            json!({"nameInBroker": "work_b"}),
            Some("spec.nameInBroker is immutable"),
        ),
        update(
            "queue-nameInBroker-added",
            Queue,
            queue(),
            json!({"nameInBroker": "work_a"}),
            Some("spec.nameInBroker cannot be added or removed after creation"),
        ),
        update(
            "queue-nameInBroker-removed",
            Queue,
            queue_stream,
            json!({"nameInBroker": null}),
            Some("spec.nameInBroker cannot be added or removed after creation"),
        ),
        update(
            "topic-brokerRef-name-changed",
            Topic,
            topic(),
            json!({"brokerRef": {"name": "other"}}),
            Some("spec.brokerRef is immutable: create a new Topic to use another Broker"),
        ),
        update(
            "topic-nameInBroker-changed",
            Topic,
            topic_stream.clone(),
            json!({"nameInBroker": "orders_b"}),
            Some("spec.nameInBroker is immutable"),
        ),
        update(
            "topic-nameInBroker-added",
            Topic,
            topic(),
            json!({"nameInBroker": "orders_a"}),
            Some("spec.nameInBroker cannot be added or removed after creation"),
        ),
        update(
            "topic-nameInBroker-removed",
            Topic,
            topic_stream,
            json!({"nameInBroker": null}),
            Some("spec.nameInBroker cannot be added or removed after creation"),
        ),
        update(
            "subscription-topicRef-name-changed",
            EventSubscription,
            topic_subscription(),
            json!({"topicRef": {"name": "payments"}}),
            Some("spec.topicRef is immutable: create a new EventSubscription"),
        ),
        update(
            "subscription-queueRef-name-changed",
            EventSubscription,
            queue_subscription(),
            json!({"queueRef": {"name": "other-work"}}),
            Some("spec.queueRef is immutable: create a new EventSubscription"),
        ),
        update(
            "subscription-topicRef-to-queueRef",
            EventSubscription,
            topic_subscription(),
            json!({"topicRef": null, "queueRef": {"name": "work"}}),
            Some(
                "an EventSubscription cannot switch between a Topic and a Queue: create a new one",
            ),
        ),
        update(
            "subscription-queueRef-to-topicRef",
            EventSubscription,
            queue_subscription(),
            json!({"queueRef": null, "topicRef": {"name": "orders"}}),
            Some(
                "an EventSubscription cannot switch between a Topic and a Queue: create a new one",
            ),
        ),
        update(
            "subscription-template-to-workloadRef",
            EventSubscription,
            with(
                &topic_subscription(),
                json!({"consumer": {"workloadRef": null, "template": pod_template()}}),
            ),
            json!({"consumer": {"template": null, "workloadRef": {"name": "worker"}}}),
            Some(
                "an EventSubscription cannot switch between spec.consumer.template and spec.consumer.workloadRef: create a new one",
            ),
        ),
        update(
            "subscription-startFrom-changed",
            EventSubscription,
            topic_subscription(),
            json!({"delivery": {"startFrom": "New"}}),
            Some(
                "spec.delivery.startFrom and spec.delivery.startTime are fixed once the subscription exists: create a new EventSubscription to start elsewhere",
            ),
        ),
        // Mutable fields: these updates must be accepted.
        update(
            "subscription-filter-and-maxDeliveries-changed",
            EventSubscription,
            topic_subscription(),
            json!({"filter": {"eventTypes": ["OrderCancelled"]}, "delivery": {"maxDeliveries": 9}}),
            None,
        ),
        update(
            "queue-retention-maxAge-changed",
            Queue,
            with(&queue(), json!({"retention": {"maxAge": "1h"}})),
            json!({"retention": {"maxAge": "2h"}}),
            None,
        ),
        update(
            "broker-replicas-changed",
            Broker,
            managed_broker(),
            json!({"managed": {"replicas": 3}}),
            None,
        ),
        update(
            "subscription-scaling-changed",
            EventSubscription,
            topic_subscription(),
            json!({"scaling": {"maxReplicas": 20}, "filter": {"eventTypes": ["OrderPlaced"]}}),
            None,
        ),
    ]
}
