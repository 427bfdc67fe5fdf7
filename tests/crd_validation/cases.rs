//! The table of invalid objects and updates that tests/crd_validation.rs sends to the API
//! server, and the valid bases they start from.

use kube::api::Api;
use kube::core::{ApiResource, DynamicObject};
use serde_json::{Value, json};

use conveyor::api::{Broker, EventSubscription, Queue, Topic};

/// The kinds of Conveyor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Broker,
    Queue,
    Topic,
    EventSubscription,
}

impl Kind {
    pub fn resource(self) -> ApiResource {
        match self {
            Kind::Broker => ApiResource::erase::<Broker>(&()),
            Kind::Queue => ApiResource::erase::<Queue>(&()),
            Kind::Topic => ApiResource::erase::<Topic>(&()),
            Kind::EventSubscription => ApiResource::erase::<EventSubscription>(&()),
        }
    }

    pub fn from_name(kind: &str) -> Option<Kind> {
        match kind {
            "Broker" => Some(Kind::Broker),
            "Queue" => Some(Kind::Queue),
            "Topic" => Some(Kind::Topic),
            "EventSubscription" => Some(Kind::EventSubscription),
            _ => None,
        }
    }
}

pub fn api(client: &kube::Client, ns: &str, kind: Kind) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &kind.resource())
}

pub fn object(name: &str, kind: Kind, spec: &Value) -> DynamicObject {
    DynamicObject::new(name, &kind.resource()).data(json!({ "spec": spec }))
}

/// Applies a JSON merge patch (RFC 7386) to `target`: `null` removes a key, objects merge,
/// everything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().expect("an object");
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

pub fn with(base: &Value, patch: Value) -> Value {
    let mut v = base.clone();
    merge(&mut v, &patch);
    v
}

// Valid bases: each invalid case is one of these with exactly one change.

pub fn managed_broker() -> Value {
    json!({"engine": "nats", "managed": {"replicas": 1}})
}

pub fn external_broker() -> Value {
    json!({"engine": "nats", "external": {"urls": ["nats://nats.example:4222"]}})
}

pub fn external_rabbitmq_broker() -> Value {
    json!({"engine": "rabbitmq", "external": {
        "urls": ["amqp://rabbitmq.example:5672"],
        "rabbitmq": {"managementUrl": "http://rabbitmq.example:15672", "virtualHost": "shop"}
    }})
}

pub fn queue() -> Value {
    json!({"brokerRef": {"name": "events"}})
}

pub fn topic() -> Value {
    json!({"brokerRef": {"name": "events"}})
}

pub fn topic_subscription() -> Value {
    json!({"topicRef": {"name": "orders"}, "consumer": {"workloadRef": {"name": "worker"}}})
}

pub fn queue_subscription() -> Value {
    json!({"queueRef": {"name": "work"}, "consumer": {"workloadRef": {"name": "worker"}}})
}

pub fn pod_template() -> Value {
    json!({"spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}})
}

/// An object that must be rejected on create: a valid base with one change.
pub struct Invalid {
    pub name: &'static str,
    pub kind: Kind,
    pub base: Value,
    pub body: Value,
    pub expected: &'static str,
    /// Other errors the one change necessarily causes as well.
    pub also: &'static [&'static str],
    /// The object's name, when the name is what is invalid.
    pub object_name: Option<&'static str>,
}

impl Invalid {
    pub fn named(mut self, name: &'static str) -> Self {
        self.object_name = Some(name);
        self
    }

    pub fn also(mut self, also: &'static [&'static str]) -> Self {
        self.also = also;
        self
    }
}

pub fn invalid(
    name: &'static str,
    kind: Kind,
    base: Value,
    change: Value,
    expected: &'static str,
) -> Invalid {
    let body = with(&base, change);
    Invalid {
        name,
        kind,
        base,
        body,
        expected,
        also: &[],
        object_name: None,
    }
}

pub const BROKER_NAME_MESSAGE: &str = "a Broker's name must be at most 40 lowercase letters, digits and '-', starting with a letter: it prefixes the names of its StatefulSet, Services and pods";

pub fn invalid_cases() -> Vec<Invalid> {
    use Kind::*;
    let urls = json!(["nats://nats.example:4222"]);
    vec![
        // Broker
        invalid(
            "broker-neither-managed-nor-external",
            Broker,
            managed_broker(),
            json!({"managed": null}),
            "set exactly one of spec.managed (Conveyor runs the broker) or spec.external (connect to a broker that exists already)",
        ),
        invalid(
            "broker-both-managed-and-external",
            Broker,
            managed_broker(),
            json!({"external": {"urls": urls}}),
            "set exactly one of spec.managed (Conveyor runs the broker) or spec.external (connect to a broker that exists already)",
        ),
        invalid(
            "broker-name-longer-than-40",
            Broker,
            managed_broker(),
            json!({}),
            BROKER_NAME_MESSAGE,
        )
        .named("broker-name-that-is-longer-than-forty-chars"),
        invalid(
            "broker-name-with-dot",
            Broker,
            managed_broker(),
            json!({}),
            BROKER_NAME_MESSAGE,
        )
        .named("events.v2"),
        invalid(
            "broker-even-replicas",
            Broker,
            managed_broker(),
            json!({"managed": {"replicas": 4}}),
            "spec.managed.replicas must be odd (1, 3, 5 or 7) so that the cluster keeps a quorum",
        ),
        invalid(
            "broker-replicas-0",
            Broker,
            managed_broker(),
            json!({"managed": {"replicas": 0}}),
            "spec.managed.replicas in body should be greater than or equal to 1",
        )
        // 0 is also even.
        .also(&["spec.managed.replicas must be odd"]),
        invalid(
            "broker-replicas-9",
            Broker,
            managed_broker(),
            json!({"managed": {"replicas": 9}}),
            "spec.managed.replicas in body should be less than or equal to 7",
        ),
        invalid(
            "broker-unknown-engine",
            Broker,
            managed_broker(),
            json!({"engine": "kafka"}),
            r#"spec.engine: Unsupported value: "kafka""#,
        ),
        invalid(
            "broker-unknown-volume-deletion-policy",
            Broker,
            managed_broker(),
            json!({"managed": {"storage": {"deletionPolicy": "Forget"}}}),
            r#"spec.managed.storage.deletionPolicy: Unsupported value: "Forget""#,
        ),
        invalid(
            "broker-external-without-urls",
            Broker,
            external_broker(),
            json!({"external": {"urls": []}}),
            "spec.external.urls in body should have at least 1 items",
        ),
        invalid(
            "broker-external-http-url",
            Broker,
            external_broker(),
            json!({"external": {"urls": ["http://nats.example:4222"]}}),
            "spec.external.urls[0] in body should match",
        )
        .also(&["spec.external.urls must be nats:// or tls:// URLs"]),
        invalid(
            "broker-external-url-with-credentials",
            Broker,
            external_broker(),
            json!({"external": {"urls": ["nats://user:secret@nats.example:4222"]}}),
            "spec.external.urls[0] in body should match",
        ),
        invalid(
            "broker-nats-settings-on-rabbitmq",
            Broker,
            managed_broker(),
            json!({"engine": "rabbitmq", "managed": {"nats": {"maxPayload": 2048}}}),
            "spec.managed.nats applies only to engine nats",
        ),
        invalid(
            "broker-nats-with-amqp-url",
            Broker,
            external_broker(),
            json!({"external": {"urls": ["amqp://rabbitmq.example:5672"]}}),
            "spec.external.urls must be nats:// or tls:// URLs for engine nats, amqp:// or amqps:// URLs for engine rabbitmq",
        ),
        invalid(
            "broker-rabbitmq-with-nats-url",
            Broker,
            external_rabbitmq_broker(),
            json!({"external": {"urls": ["nats://nats.example:4222"]}}),
            "spec.external.urls must be nats:// or tls:// URLs for engine nats, amqp:// or amqps:// URLs for engine rabbitmq",
        ),
        invalid(
            "broker-rabbitmq-without-management-url",
            Broker,
            external_rabbitmq_broker(),
            json!({"external": {"rabbitmq": null}}),
            "engine rabbitmq needs spec.external.rabbitmq.managementUrl: Conveyor declares queues and exchanges through the management API",
        ),
        invalid(
            "broker-rabbitmq-settings-on-nats",
            Broker,
            external_broker(),
            json!({"external": {"rabbitmq": {"managementUrl": "http://rabbitmq.example:15672"}}}),
            "spec.external.rabbitmq applies only to engine rabbitmq",
        ),
        invalid(
            "broker-rabbitmq-amqp-url-with-vhost-path",
            Broker,
            external_rabbitmq_broker(),
            json!({"external": {"urls": ["amqp://rabbitmq.example:5672/shop"]}}),
            "spec.external.urls[0] in body should match",
        ),
        invalid(
            "broker-rabbitmq-management-url-with-credentials",
            Broker,
            external_rabbitmq_broker(),
            json!({"external": {"rabbitmq": {"managementUrl": "http://admin:secret@rabbitmq.example:15672"}}}),
            "spec.external.rabbitmq.managementUrl in body should match",
        ),
        invalid(
            "queue-dedup-window-longer-than-max-age",
            Queue,
            queue(),
            json!({"retention": {"maxAge": "1m"}, "deduplicationWindow": "2m"}),
            "spec.deduplicationWindow must not be longer than spec.retention.maxAge",
        ),
        invalid(
            "topic-dedup-window-longer-than-max-age",
            Topic,
            topic(),
            json!({"retention": {"maxAge": "30s"}, "deduplicationWindow": "1h"}),
            "spec.deduplicationWindow must not be longer than spec.retention.maxAge",
        ),
        // Queue
        invalid(
            "queue-without-brokerRef",
            Queue,
            queue(),
            json!({"brokerRef": null}),
            "spec.brokerRef: Required value",
        ),
        invalid(
            "queue-unknown-deletion-policy",
            Queue,
            queue(),
            json!({"deletionPolicy": "Destroy"}),
            r#"spec.deletionPolicy: Unsupported value: "Destroy""#,
        ),
        invalid(
            "queue-unknown-storage",
            Queue,
            queue(),
            json!({"storage": "Disk"}),
            r#"spec.storage: Unsupported value: "Disk""#,
        ),
        invalid(
            "queue-unknown-discard",
            Queue,
            queue(),
            json!({"retention": {"discard": "Oldest"}}),
            r#"spec.retention.discard: Unsupported value: "Oldest""#,
        ),
        invalid(
            "queue-unknown-drift-policy",
            Queue,
            queue(),
            json!({"driftPolicy": "Ignore"}),
            r#"spec.driftPolicy: Unsupported value: "Ignore""#,
        ),
        invalid(
            "queue-max-age-in-words-with-a-dedup-window",
            Queue,
            queue(),
            json!({"retention": {"maxAge": "7 days"}, "deduplicationWindow": "2m"}),
            "spec.retention.maxAge in body should match",
        ),
        invalid(
            "topic-dedup-window-in-words-with-a-max-age",
            Topic,
            topic(),
            json!({"retention": {"maxAge": "1h"}, "deduplicationWindow": "two minutes"}),
            "spec.deduplicationWindow in body should match",
        ),
        invalid(
            "queue-max-age-in-words",
            Queue,
            queue(),
            json!({"retention": {"maxAge": "7 days"}}),
            "spec.retention.maxAge in body should match",
        ),
        invalid(
            "queue-deduplication-window-without-unit",
            Queue,
            queue(),
            json!({"deduplicationWindow": "2"}),
            "spec.deduplicationWindow in body should match",
        ),
        invalid(
            "queue-stream-replicas-6",
            Queue,
            queue(),
            json!({"replicas": 6}),
            "spec.replicas in body should be less than or equal to 5",
        ),
        invalid(
            "queue-stream-name-with-dot",
            Queue,
            queue(),
            json!({"nameInBroker": "has.dot"}),
            "spec.nameInBroker in body should match",
        ),
        // Topic
        invalid(
            "topic-event-type-starting-with-digit",
            Topic,
            topic(),
            json!({"eventTypes": [{"type": "1Order"}]}),
            "spec.eventTypes[0].type in body should match",
        ),
        invalid(
            "topic-stream-name-with-dot",
            Topic,
            topic(),
            json!({"nameInBroker": "has.dot"}),
            "spec.nameInBroker in body should match",
        ),
        invalid(
            "topic-unknown-storage",
            Topic,
            topic(),
            json!({"storage": "Tape"}),
            r#"spec.storage: Unsupported value: "Tape""#,
        ),
        // EventSubscription
        invalid(
            "subscription-neither-topicRef-nor-queueRef",
            EventSubscription,
            topic_subscription(),
            json!({"topicRef": null}),
            "set exactly one of spec.topicRef or spec.queueRef",
        ),
        invalid(
            "subscription-both-topicRef-and-queueRef",
            EventSubscription,
            topic_subscription(),
            json!({"queueRef": {"name": "work"}}),
            "set exactly one of spec.topicRef or spec.queueRef",
        ),
        invalid(
            "subscription-filter-with-queueRef",
            EventSubscription,
            queue_subscription(),
            json!({"filter": {"eventTypes": ["OrderPlaced"]}}),
            "spec.filter selects event types of a Topic; remove it when spec.queueRef is set",
        ),
        invalid(
            "subscription-backoff-longer-than-maxDeliveries",
            EventSubscription,
            topic_subscription(),
            json!({"delivery": {"maxDeliveries": 2, "backoff": ["1s", "5s"]}}),
            "spec.delivery.backoff may list fewer durations than spec.delivery.maxDeliveries (the first delivery waits for no backoff)",
        ),
        invalid(
            "subscription-name-longer-than-63",
            EventSubscription,
            topic_subscription(),
            json!({}),
            "an EventSubscription's name must be at most 63 characters: it labels its consumer's pods",
        )
        .named("subscription-whose-name-is-longer-than-sixty-three-characters-in-all"),
        invalid(
            "subscription-queue-startFrom-New",
            EventSubscription,
            queue_subscription(),
            json!({"delivery": {"startFrom": "New"}}),
            "a subscription on a Queue takes all of its work: spec.delivery.startFrom must be All with spec.queueRef",
        ),
        invalid(
            "subscription-startFrom-Time-without-startTime",
            EventSubscription,
            topic_subscription(),
            json!({"delivery": {"startFrom": "Time"}}),
            "set spec.delivery.startTime exactly when spec.delivery.startFrom is Time",
        ),
        invalid(
            "subscription-startTime-without-startFrom-Time",
            EventSubscription,
            topic_subscription(),
            json!({"delivery": {"startTime": "2026-12-01T00:00:00Z"}}),
            "set spec.delivery.startTime exactly when spec.delivery.startFrom is Time",
        ),
        invalid(
            "subscription-startTime-not-RFC3339",
            EventSubscription,
            topic_subscription(),
            json!({"delivery": {"startFrom": "Time", "startTime": "yesterday"}}),
            "spec.delivery.startTime in body should match",
        ),
        invalid(
            "subscription-consumer-neither-template-nor-workloadRef",
            EventSubscription,
            topic_subscription(),
            json!({"consumer": {"workloadRef": null}}),
            "set exactly one of spec.consumer.template (Conveyor runs the Deployment) or spec.consumer.workloadRef (a Deployment you own)",
        ),
        invalid(
            "subscription-consumer-both-template-and-workloadRef",
            EventSubscription,
            topic_subscription(),
            json!({"consumer": {"template": pod_template()}}),
            "set exactly one of spec.consumer.template (Conveyor runs the Deployment) or spec.consumer.workloadRef (a Deployment you own)",
        ),
        invalid(
            "subscription-minReplicas-above-maxReplicas",
            EventSubscription,
            topic_subscription(),
            json!({"scaling": {"minReplicas": 5, "maxReplicas": 3}}),
            "spec.scaling.minReplicas must not exceed spec.scaling.maxReplicas",
        ),
        invalid(
            "subscription-ackWait-without-unit",
            EventSubscription,
            topic_subscription(),
            json!({"delivery": {"ackWait": "30"}}),
            "spec.delivery.ackWait in body should match",
        ),
        invalid(
            "subscription-cooldown-in-words",
            EventSubscription,
            topic_subscription(),
            json!({"scaling": {"cooldown": "5 minutes"}}),
            "spec.scaling.cooldown in body should match",
        ),
        invalid(
            "subscription-backoff-entry-1sec",
            EventSubscription,
            topic_subscription(),
            json!({"delivery": {"backoff": ["1sec"]}}),
            "spec.delivery.backoff[0] in body should match",
        ),
        invalid(
            "subscription-maxDeliveries-0",
            EventSubscription,
            topic_subscription(),
            json!({"delivery": {"maxDeliveries": 0}}),
            "spec.delivery.maxDeliveries in body should be greater than or equal to 1",
        ),
        invalid(
            "subscription-negative-minReplicas",
            EventSubscription,
            topic_subscription(),
            json!({"scaling": {"minReplicas": -1}}),
            "spec.scaling.minReplicas in body should be greater than or equal to 0",
        ),
        invalid(
            "subscription-workloadRef-statefulset",
            EventSubscription,
            topic_subscription(),
            json!({"consumer": {"workloadRef": {"kind": "StatefulSet"}}}),
            "spec.consumer.workloadRef.kind in body should match '^Deployment$'",
        ),
        invalid(
            "subscription-without-consumer",
            EventSubscription,
            topic_subscription(),
            json!({"consumer": null}),
            "spec.consumer: Required value",
        ),
        invalid(
            "subscription-filter-event-type-starting-with-digit",
            EventSubscription,
            topic_subscription(),
            json!({"filter": {"eventTypes": ["1Order"]}}),
            "spec.filter.eventTypes[0] in body should match",
        ),
    ]
}
