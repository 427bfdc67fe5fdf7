//! The CRDs against the real API server: they install and become Established, `kubectl explain`
//! shows their documentation, invalid objects are rejected with a message that says what is
//! wrong, the examples are accepted, and the immutable fields cannot change.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use serde_json::{Value, json};

use conveyor::api::{Broker, EventSubscription, Queue, Topic};

const T: Duration = Duration::from_secs(60);
const FIELD_MANAGER: &str = "conveyor-test";

fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Set once the CRDs of this checkout are installed and serving, so that tests running in
/// parallel apply them once and all wait for the same installation.
static CRDS_INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Installs the CRDs under `crds/` with server-side apply and waits until each is Established.
async fn ensure_crds(plane: &common::Plane) {
    CRDS_INSTALLED
        .get_or_init(|| install_crds(plane.client.clone()))
        .await;
}

async fn install_crds(client: kube::Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let mut names = Vec::new();
    let mut changed = false;
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path("crds"))
        .expect("reading crds/")
        .map(|e| e.expect("a crds/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        4,
        "expected 4 CRD files under crds/: {files:?}"
    );
    for file in files {
        let text = std::fs::read_to_string(&file).expect("reading a CRD file");
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
        let name = crd.metadata.name.clone().expect("a CRD name");
        let before = api
            .get_opt(&name)
            .await
            .expect("reading the CRD")
            .and_then(|c| c.metadata.generation);
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await
            .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        changed |= applied.metadata.generation != before;
        names.push(name);
    }
    for name in &names {
        common::wait_for(&format!("CRD {name} to be Established"), T, || async {
            let crd = api.get(name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await;
    }
    if changed {
        // An Established CRD whose schema just changed is served with the new schema a moment
        // later; give the API server that moment.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// The kinds of Conveyor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Broker,
    Queue,
    Topic,
    EventSubscription,
}

impl Kind {
    fn resource(self) -> ApiResource {
        match self {
            Kind::Broker => ApiResource::erase::<Broker>(&()),
            Kind::Queue => ApiResource::erase::<Queue>(&()),
            Kind::Topic => ApiResource::erase::<Topic>(&()),
            Kind::EventSubscription => ApiResource::erase::<EventSubscription>(&()),
        }
    }

    fn from_name(kind: &str) -> Option<Kind> {
        match kind {
            "Broker" => Some(Kind::Broker),
            "Queue" => Some(Kind::Queue),
            "Topic" => Some(Kind::Topic),
            "EventSubscription" => Some(Kind::EventSubscription),
            _ => None,
        }
    }
}

fn api(client: &kube::Client, ns: &str, kind: Kind) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &kind.resource())
}

fn object(name: &str, kind: Kind, spec: &Value) -> DynamicObject {
    DynamicObject::new(name, &kind.resource()).data(json!({ "spec": spec }))
}

/// Applies a JSON merge patch (RFC 7386) to `target`: `null` removes a key, objects merge,
/// everything else replaces.
fn merge(target: &mut Value, patch: &Value) {
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

fn with(base: &Value, patch: Value) -> Value {
    let mut v = base.clone();
    merge(&mut v, &patch);
    v
}

// Valid bases: each invalid case is one of these with exactly one change.

fn managed_broker() -> Value {
    json!({"engine": "nats", "managed": {"replicas": 1}})
}

fn external_broker() -> Value {
    json!({"engine": "nats", "external": {"urls": ["nats://nats.example:4222"]}})
}

fn queue() -> Value {
    json!({"brokerRef": {"name": "events"}})
}

fn topic() -> Value {
    json!({"brokerRef": {"name": "events"}})
}

fn topic_subscription() -> Value {
    json!({"topicRef": {"name": "orders"}, "consumer": {"workloadRef": {"name": "worker"}}})
}

fn queue_subscription() -> Value {
    json!({"queueRef": {"name": "work"}, "consumer": {"workloadRef": {"name": "worker"}}})
}

fn pod_template() -> Value {
    json!({"spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}})
}

/// An object that must be rejected on create: a valid base with one change.
struct Invalid {
    name: &'static str,
    kind: Kind,
    base: Value,
    body: Value,
    expected: &'static str,
    /// Other errors the one change necessarily causes as well.
    also: &'static [&'static str],
    /// The object's name, when the name is what is invalid.
    object_name: Option<&'static str>,
}

impl Invalid {
    fn named(mut self, name: &'static str) -> Self {
        self.object_name = Some(name);
        self
    }

    fn also(mut self, also: &'static [&'static str]) -> Self {
        self.also = also;
        self
    }
}

fn invalid(
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

const BROKER_NAME_MESSAGE: &str = "a Broker's name must be at most 40 lowercase letters, digits and '-', starting with a letter: it prefixes the names of its StatefulSet, Services and pods";

fn invalid_cases() -> Vec<Invalid> {
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
        ),
        invalid(
            "broker-external-url-with-credentials",
            Broker,
            external_broker(),
            json!({"external": {"urls": ["nats://user:secret@nats.example:4222"]}}),
            "spec.external.urls[0] in body should match",
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
            json!({"streamName": "has.dot"}),
            "spec.streamName in body should match",
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
            json!({"streamName": "has.dot"}),
            "spec.streamName in body should match",
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
            json!({"delivery": {"maxDeliveries": 2, "backoff": ["1s", "5s", "30s"]}}),
            "spec.delivery.backoff may list at most spec.delivery.maxDeliveries durations",
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

/// A valid object and an update of it that must be rejected (or, for a mutable field, accepted).
struct Update {
    name: &'static str,
    kind: Kind,
    base: Value,
    /// A JSON merge patch of `spec`.
    change: Value,
    /// `None`: the update must be accepted.
    expected: Option<&'static str>,
}

fn update(
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

fn update_cases() -> Vec<Update> {
    use Kind::*;
    let queue_stream = with(&queue(), json!({"streamName": "work_a"}));
    let topic_stream = with(&topic(), json!({"streamName": "orders_a"}));
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
            "queue-streamName-changed",
            Queue,
            queue_stream.clone(),
            json!({"streamName": "work_b"}),
            Some("spec.streamName is immutable"),
        ),
        update(
            "queue-streamName-added",
            Queue,
            queue(),
            json!({"streamName": "work_a"}),
            Some("spec.streamName cannot be added or removed after creation"),
        ),
        update(
            "queue-streamName-removed",
            Queue,
            queue_stream,
            json!({"streamName": null}),
            Some("spec.streamName cannot be added or removed after creation"),
        ),
        update(
            "topic-brokerRef-name-changed",
            Topic,
            topic(),
            json!({"brokerRef": {"name": "other"}}),
            Some("spec.brokerRef is immutable: create a new Topic to use another Broker"),
        ),
        update(
            "topic-streamName-changed",
            Topic,
            topic_stream.clone(),
            json!({"streamName": "orders_b"}),
            Some("spec.streamName is immutable"),
        ),
        update(
            "topic-streamName-added",
            Topic,
            topic(),
            json!({"streamName": "orders_a"}),
            Some("spec.streamName cannot be added or removed after creation"),
        ),
        update(
            "topic-streamName-removed",
            Topic,
            topic_stream,
            json!({"streamName": null}),
            Some("spec.streamName cannot be added or removed after creation"),
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
        // Mutable fields: these updates must be accepted.
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

/// The `.message("...")` of every CEL rule under `src/api/`.
fn cel_messages() -> Vec<String> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path("src/api"))
        .expect("reading src/api")
        .map(|e| e.expect("a src/api entry").path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        for (i, _) in text.match_indices("Rule::new(") {
            let rest = &text[i..];
            let Some(start) = rest.find(".message(\"") else {
                continue;
            };
            let msg = &rest[start + ".message(\"".len()..];
            let end = msg.find("\")").expect("the end of a rule message");
            out.push(msg[..end].to_string());
        }
    }
    out
}

/// The notice the API server adds when it skipped the CEL rules of an object with schema errors.
const RULES_NOT_CHECKED: &str = "some validation rules were not checked";

/// `Ok` when `result` is a 422 rejection whose message contains `expected` and whose every cause
/// is the expected one (or one of `also`): the object is invalid for the intended reason only.
/// Otherwise what happened instead.
fn check_rejected(
    result: Result<DynamicObject, kube::Error>,
    expected: &str,
    also: &[&str],
) -> Result<(), String> {
    let status = match result {
        Err(kube::Error::Api(s)) => s,
        Err(e) => return Err(format!("failed with a non-API error: {e}")),
        Ok(obj) => {
            return Err(format!(
                "was ACCEPTED; the spec reads back as {}",
                obj.data["spec"]
            ));
        }
    };
    if status.code != 422 || !status.message.contains(expected) {
        return Err(format!(
            "rejected with HTTP {} but not as expected\n      actual message: {}",
            status.code, status.message
        ));
    }
    let causes = status.details.map(|d| d.causes).unwrap_or_default();
    let unexpected: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .filter(|c| !c.contains(RULES_NOT_CHECKED))
        .filter(|c| !c.contains(expected) && !also.iter().any(|a| c.contains(a)))
        .collect();
    if unexpected.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "rejected for other reasons as well: {unexpected:?}\n      actual message: {}",
            status.message
        ))
    }
}

#[test]
fn every_cel_rule_message_is_exercised() {
    let create: Vec<&str> = invalid_cases().iter().map(|c| c.expected).collect();
    let updates: Vec<&str> = update_cases().iter().filter_map(|c| c.expected).collect();
    let messages = cel_messages();
    assert!(
        messages.len() >= 15,
        "found only {} CEL messages under src/api: {messages:?}",
        messages.len()
    );
    let untested: Vec<&String> = messages
        .iter()
        // `spec.engine` has a single allowed value, so no update can change it.
        .filter(|m| !m.starts_with("spec.engine is immutable"))
        .filter(|m| !create.contains(&m.as_str()) && !updates.contains(&m.as_str()))
        .collect();
    assert!(
        untested.is_empty(),
        "CEL rule messages under src/api without a case in invalid_cases() or update_cases(): {untested:#?}"
    );
}

#[tokio::test]
async fn crds_are_established_and_explained() {
    let (plane, ns) = setup!("crds-established");
    ensure_crds(&plane).await;
    let api: Api<CustomResourceDefinition> = Api::all(plane.client.clone());
    for name in [
        "brokers.conveyor.dev",
        "queues.conveyor.dev",
        "topics.conveyor.dev",
        "eventsubscriptions.conveyor.dev",
    ] {
        let crd = api.get(name).await.unwrap();
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "CRD {name} is not Established");
    }
    // The OpenAPI document that `kubectl explain` reads is published shortly after the CRD.
    let phrase = "each with its JSON Schema: the event contract";
    let deadline = std::time::Instant::now() + T;
    let out = loop {
        let out = ns.kubectl(&["explain", "topics.spec.eventTypes"]);
        let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
        if flat.contains(phrase) || std::time::Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(phrase),
        "`kubectl explain topics.spec.eventTypes` does not show {phrase:?}:\n{out}"
    );
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_a_clear_message() {
    let (plane, ns) = setup!("crd-invalid-objects");
    ensure_crds(&plane).await;
    let cases = invalid_cases();
    assert!(cases.len() >= 25, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let api = api(&plane.client, &ns.name, case.kind);
        let name = case
            .object_name
            .map_or_else(|| format!("invalid-{i}"), str::to_string);
        let obj = object(&name, case.kind, &case.body);
        let result = api.create(&PostParams::default(), &obj).await;
        if let Err(why) = check_rejected(result, case.expected, case.also) {
            failures.push(format!(
                "{} ({:?} {name} {}):\n      expected message containing: {}\n      {why}",
                case.name, case.kind, case.body, case.expected
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid objects were not rejected as expected:\n  - {}",
        failures.len(),
        cases.len(),
        failures.join("\n  - ")
    );
}

#[tokio::test]
async fn valid_bases_of_the_invalid_cases_are_accepted() {
    let (plane, ns) = setup!("crd-valid-bases");
    ensure_crds(&plane).await;
    let mut failures = Vec::new();
    for (i, case) in invalid_cases().iter().enumerate() {
        let api = api(&plane.client, &ns.name, case.kind);
        let obj = object(&format!("base-{i}"), case.kind, &case.base);
        if let Err(e) = api.create(&PostParams::default(), &obj).await {
            failures.push(format!("base of {} ({}): {e}", case.name, case.base));
        }
    }
    assert!(
        failures.is_empty(),
        "valid bases were rejected:\n  - {}",
        failures.join("\n  - ")
    );
}

#[tokio::test]
async fn valid_examples_are_accepted() {
    let (plane, ns) = setup!("crd-valid-examples");
    ensure_crds(&plane).await;
    let path = repo_path("examples/order-processing.yaml");
    let text = std::fs::read_to_string(&path).expect("reading the example");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("parsing the example");
    let mut created = 0;
    let mut failures = Vec::new();
    for mut doc in docs {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default();
        if !api_version.starts_with("conveyor.dev/") {
            continue;
        }
        let kind_name = doc["kind"].as_str().unwrap_or_default().to_string();
        let kind = Kind::from_name(&kind_name)
            .unwrap_or_else(|| panic!("unknown conveyor.dev kind {kind_name:?} in the example"));
        doc["metadata"]["namespace"] = json!(ns.name);
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let obj: DynamicObject = serde_json::from_value(doc).expect("a Kubernetes object");
        match api(&plane.client, &ns.name, kind)
            .create(&PostParams::default(), &obj)
            .await
        {
            Ok(_) => created += 1,
            Err(e) => failures.push(format!("{kind_name} {name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "example objects were rejected:\n  - {}",
        failures.join("\n  - ")
    );
    assert_eq!(created, 5, "the example holds 5 conveyor.dev objects");
}

#[tokio::test]
async fn immutable_fields_cannot_change() {
    let (plane, ns) = setup!("crd-immutable-fields");
    ensure_crds(&plane).await;
    let cases = update_cases();
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let api = api(&plane.client, &ns.name, case.kind);
        let name = format!("update-{i}");
        if let Err(e) = api
            .create(
                &PostParams::default(),
                &object(&name, case.kind, &case.base),
            )
            .await
        {
            failures.push(format!(
                "{}: the valid base {} was rejected: {e}",
                case.name, case.base
            ));
            continue;
        }
        let patch = json!({ "spec": case.change });
        let result = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        let outcome = match (case.expected, result) {
            (Some(expected), result) => check_rejected(result, expected, &[]),
            (None, Ok(obj)) => {
                let want = with(&case.base, case.change.clone());
                let got = &obj.data["spec"];
                // Every field the base and the change set reads back as set (defaults aside).
                let mut merged = got.clone();
                merge(&mut merged, &want);
                if &merged == got {
                    Ok(())
                } else {
                    Err(format!("accepted, but the spec reads back as {got}"))
                }
            }
            (None, Err(e)) => Err(format!("a mutable change was rejected: {e}")),
        };
        if let Err(why) = outcome {
            failures.push(format!(
                "{} ({:?} {} patched with {}):\n      expected: {}\n      {why}",
                case.name,
                case.kind,
                case.base,
                case.change,
                case.expected.unwrap_or("accepted")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} updates did not behave as expected:\n  - {}",
        failures.len(),
        cases.len(),
        failures.join("\n  - ")
    );
}
