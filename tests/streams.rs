//! Queues and Topics on real brokers, with the operator as its own process, the same test body
//! on NATS (a nats-server of the test's own) and on RabbitMQ (a virtual host of the test's own
//! on the plane's rabbitmq-server): destinations created, updated in place and deleted under
//! each deletion policy; drift repaired or reported; foreign queues left alone; convergence
//! after the broker comes back; deletion that does not hang when the broker is gone; and 200
//! Queues applied at once. Engine-specific behaviour (subjects, routing keys, duplicate
//! detection) has tests of its own at the end.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use common::broker::{EngineKind, TestBroker};
use common::operator::Operator;
use common::{Plane, TestNamespace, wait_condition};
use conveyor::api::{Broker, Queue, Topic};
use futures::future::join_all;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(45);

/// A test's own broker, the operator, and the APIs the tests use.
struct Env {
    plane: Plane,
    ns: TestNamespace,
    broker: TestBroker,
    _op: Operator,
    queues: Api<Queue>,
    topics: Api<Topic>,
    brokers: Api<Broker>,
}

impl Env {
    /// Starts a broker of `engine` and an operator, and creates the Broker `events` pointing at
    /// the broker.
    async fn start(
        engine: EngineKind,
        test: &str,
        plane: Plane,
        ns: TestNamespace,
        extra: &[&str],
    ) -> Option<Self> {
        let broker = TestBroker::start(engine, &ns.name).await?;
        common::install_crds(&plane).await;
        let mut args = vec![
            "--allowed-broker-destinations",
            "127.0.0.1/32",
            "--unreachable-deletion-grace-seconds",
            "3",
        ];
        args.extend_from_slice(extra);
        let op = Operator::start_with(&plane, &ns.name, test, &args);
        let c = plane.client.clone();
        let env = Self {
            queues: Api::namespaced(c.clone(), &ns.name),
            topics: Api::namespaced(c.clone(), &ns.name),
            brokers: Api::namespaced(c, &ns.name),
            _op: op,
            broker,
            ns,
            plane,
        };
        let (spec, secret) = env.broker.broker_spec();
        if let Some((name, data)) = secret {
            let secret: Secret = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data
            }))
            .unwrap();
            let secrets: Api<Secret> = Api::namespaced(env.plane.client.clone(), &env.ns.name);
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .unwrap();
        }
        let broker: Broker = serde_json::from_value(json!({
            "apiVersion": "conveyor.dev/v1alpha1", "kind": "Broker", "metadata": {"name": "events"},
            "spec": spec
        }))
        .unwrap();
        env.brokers
            .create(&PostParams::default(), &broker)
            .await
            .unwrap();
        wait_condition(&env.brokers, "events", "Ready", "True", T).await;
        Some(env)
    }

    fn engine(&self) -> EngineKind {
        self.broker.engine()
    }

    fn name_in_broker(&self, kind: &str, name: &str) -> String {
        format!("{kind}_{}_{name}", self.ns.name.replace('.', "_"))
    }

    async fn create_queue(&self, name: &str, spec: Value) {
        let mut s = json!({"brokerRef": {"name": "events"}});
        merge(&mut s, spec);
        let q: Queue = serde_json::from_value(json!({
            "apiVersion": "conveyor.dev/v1alpha1", "kind": "Queue", "metadata": {"name": name}, "spec": s
        }))
        .unwrap();
        self.queues
            .create(&PostParams::default(), &q)
            .await
            .unwrap();
    }

    /// Waits until the broker reports `n` messages in the Queue `queue` (RabbitMQ's figures
    /// lag by about two seconds).
    async fn wait_messages(&self, queue: &str, n: u64) {
        common::wait_for(&format!("{queue} to hold {n} message(s)"), T, || async {
            (self.broker.messages(false, queue).await == Some(n)).then_some(())
        })
        .await;
    }

    async fn gone(&self, name: &str) {
        common::wait_for(&format!("Queue {name} to be deleted"), T, || async {
            self.queues
                .get_opt(name)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
    }
}

fn merge(base: &mut Value, patch: Value) {
    if let (Some(b), Value::Object(p)) = (base.as_object_mut(), patch) {
        b.extend(p);
    }
}

async fn patch_spec<K>(api: &Api<K>, name: &str, spec: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": spec})),
    )
    .await
    .unwrap();
}

macro_rules! env {
    ($engine:expr, $test:expr) => {
        env!($engine, $test, &[])
    };
    ($engine:expr, $test:expr, $extra:expr) => {{
        let test = format!("{}-{}", $test, $engine.name());
        let (plane, ns) = setup!(&test);
        match Env::start($engine, &test, plane, ns, $extra).await {
            Some(env) => env,
            None => return,
        }
    }};
}

/// Runs one test body on both engines, as two tests.
macro_rules! on_both_engines {
    ($body:ident) => {
        mod $body {
            use super::*;

            #[tokio::test]
            async fn on_nats() {
                super::$body(EngineKind::Nats).await;
            }

            #[tokio::test]
            async fn on_rabbitmq() {
                super::$body(EngineKind::Rabbitmq).await;
            }
        }
    };
}

async fn queues_are_created_updated_and_deleted_under_each_policy(engine: EngineKind) {
    let env = env!(
        engine,
        "queue-lifecycle",
        &["--stream-refresh-seconds", "2"]
    );
    for (name, policy) in [
        ("keep", "Retain"),
        ("drop", "Delete"),
        ("drain", "DeleteIfEmpty"),
    ] {
        env.create_queue(
            name,
            json!({"deletionPolicy": policy, "retention": {"maxAge": "1h"}}),
        )
        .await;
    }
    for name in ["keep", "drop", "drain"] {
        wait_condition(&env.queues, name, "Ready", "True", T).await;
        let queue = env.name_in_broker("queue", name);
        assert!(
            env.broker.exists(false, &queue).await,
            "{queue} is in the broker"
        );
        assert_eq!(
            env.broker.max_age(false, &queue).await,
            Some(Duration::from_secs(3600))
        );
        env.broker.publish_to_queue(&queue, 3).await;
        common::wait_for(&format!("{name} status to count 3 messages"), T, || async {
            let q = env.queues.get(name).await.ok()?;
            (q.status?.messages == Some(3)).then_some(())
        })
        .await;
        patch_spec(&env.queues, name, json!({"retention": {"maxAge": "2h"}})).await;
        common::wait_for("the update to reach the broker in place", T, || async {
            (env.broker.max_age(false, &queue).await? == Duration::from_secs(7200)).then_some(())
        })
        .await;
        env.wait_messages(&queue, 3).await;
    }

    // Retain: the resource goes, the queue and its messages stay.
    env.queues
        .delete("keep", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("keep").await;
    env.wait_messages(&env.name_in_broker("queue", "keep"), 3)
        .await;

    // Delete: the queue goes with the resource.
    env.queues
        .delete("drop", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("drop").await;
    assert!(
        !env.broker
            .exists(false, &env.name_in_broker("queue", "drop"))
            .await
    );

    // DeleteIfEmpty: refused while messages remain, done once the queue is empty.
    env.queues
        .delete("drain", &DeleteParams::default())
        .await
        .unwrap();
    let (_, message) = common::wait_for("DeleteIfEmpty to block", T, || async {
        let (s, reason, message) = common::condition(&env.queues, "drain", "Ready").await?;
        (s == "False" && reason == "DeletionBlocked").then_some(((), message))
    })
    .await;
    assert!(message.contains("3 message"), "{message}");
    let drain = env.name_in_broker("queue", "drain");
    env.wait_messages(&drain, 3).await;
    assert!(
        common::event_reasons(&env.plane, &env.ns.name, "drain")
            .await
            .iter()
            .any(|r| r == "DeletionBlocked")
    );
    env.broker.purge(&drain).await;
    env.gone("drain").await;
    assert!(!env.broker.exists(false, &drain).await);
}
on_both_engines!(queues_are_created_updated_and_deleted_under_each_policy);

async fn drift_is_repaired_or_only_reported(engine: EngineKind) {
    let env = env!(engine, "stream-drift", &["--stream-refresh-seconds", "2"]);
    env.create_queue("repaired", json!({"retention": {"maxAge": "1h"}}))
        .await;
    env.create_queue(
        "reported",
        json!({"retention": {"maxAge": "1h"}, "driftPolicy": "Report"}),
    )
    .await;
    wait_condition(&env.queues, "repaired", "Ready", "True", T).await;
    wait_condition(&env.queues, "reported", "Ready", "True", T).await;
    let (repaired, reported) = (
        env.name_in_broker("queue", "repaired"),
        env.name_in_broker("queue", "reported"),
    );

    // Deleted outside Conveyor: recreated.
    env.broker.delete_outside(false, &repaired).await;
    common::wait_for("the deleted queue to be recreated", T, || async {
        env.broker.exists(false, &repaired).await.then_some(())
    })
    .await;

    // Edited outside Conveyor: set back, or reported and left.
    for q in [&repaired, &reported] {
        env.broker
            .edit_max_age(false, q, Duration::from_secs(600))
            .await;
    }
    common::wait_for("the edited queue to be set back", T, || async {
        (env.broker.max_age(false, &repaired).await? == Duration::from_secs(3600)).then_some(())
    })
    .await;
    let (reason, message) = wait_condition(&env.queues, "reported", "Synced", "False", T).await;
    assert_eq!(reason, "Drifted");
    assert!(message.contains("maxAge"), "{message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.broker.max_age(false, &reported).await,
        Some(Duration::from_secs(600)),
        "Report leaves the queue as it is"
    );

    let events = common::event_reasons(&env.plane, &env.ns.name, "repaired").await;
    // Repeated Events of one reason are kept as one series, so one entry covers both repairs.
    assert!(events.iter().any(|r| r == "DriftRepaired"), "{events:?}");
    assert!(
        common::event_reasons(&env.plane, &env.ns.name, "reported")
            .await
            .iter()
            .any(|r| r == "DriftDetected")
    );
}
on_both_engines!(drift_is_repaired_or_only_reported);

async fn a_queue_conveyor_did_not_create_is_not_taken_over(engine: EngineKind) {
    let env = env!(engine, "stream-conflict");
    let name = env.name_in_broker("queue", "taken");
    env.broker.create_foreign_queue(&name).await;
    env.create_queue("taken", json!({})).await;
    let (reason, message) = wait_condition(&env.queues, "taken", "Ready", "False", T).await;
    assert_eq!(reason, "Conflict");
    assert!(message.contains("not created by Conveyor"), "{message}");
    assert!(
        env.broker.foreign_queue_untouched(&name).await,
        "the foreign queue is untouched"
    );
    // Deleting the resource leaves the foreign queue too, whatever its policy.
    patch_spec(&env.queues, "taken", json!({"deletionPolicy": "Delete"})).await;
    env.queues
        .delete("taken", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("taken").await;
    assert!(env.broker.foreign_queue_untouched(&name).await);
}
on_both_engines!(a_queue_conveyor_did_not_create_is_not_taken_over);

async fn a_queue_created_while_the_broker_is_down_converges_when_it_returns(engine: EngineKind) {
    let mut env = env!(engine, "stream-broker-down");
    env.broker.cut().await;
    wait_condition(&env.brokers, "events", "Reachable", "False", T).await;
    env.create_queue("patient", json!({})).await;
    let (reason, message) = wait_condition(&env.queues, "patient", "Ready", "False", T).await;
    assert_eq!(reason, "BrokerNotReady");
    assert!(message.contains("not reachable"), "{message}");
    env.broker.restore().await;
    let back = Instant::now();
    wait_condition(&env.queues, "patient", "Ready", "True", T).await;
    eprintln!(
        "{}: the Queue became Ready {:?} after the broker came back",
        env.engine().name(),
        back.elapsed()
    );
    assert!(
        env.broker
            .exists(false, &env.name_in_broker("queue", "patient"))
            .await
    );
}
on_both_engines!(a_queue_created_while_the_broker_is_down_converges_when_it_returns);

async fn deletion_does_not_hang_when_the_broker_is_gone(engine: EngineKind) {
    let mut env = env!(engine, "stream-broker-gone");
    env.create_queue("orphan", json!({"deletionPolicy": "Delete"}))
        .await;
    env.create_queue("homeless", json!({"deletionPolicy": "Delete"}))
        .await;
    wait_condition(&env.queues, "orphan", "Ready", "True", T).await;
    wait_condition(&env.queues, "homeless", "Ready", "True", T).await;

    // The broker goes away for good: the deletion is retried for the grace period (3 s here),
    // then the resource goes and an Event says the queue was left behind.
    env.broker.cut().await;
    wait_condition(&env.brokers, "events", "Reachable", "False", T).await;
    let started = Instant::now();
    env.queues
        .delete("orphan", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("orphan").await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "retried for the grace period first"
    );
    assert!(
        common::event_reasons(&env.plane, &env.ns.name, "orphan")
            .await
            .iter()
            .any(|r| r == "StreamLeftInBroker")
    );

    // The Broker resource itself is gone: nothing to wait for.
    env.brokers
        .delete("events", &DeleteParams::default())
        .await
        .unwrap();
    env.queues
        .delete("homeless", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("homeless").await;
}
on_both_engines!(deletion_does_not_hang_when_the_broker_is_gone);

async fn two_hundred_queues_applied_at_once_all_become_ready(engine: EngineKind) {
    let env = env!(engine, "stream-200");
    let started = Instant::now();
    let names: Vec<String> = (0..200).map(|i| format!("q{i:03}")).collect();
    join_all(names.iter().map(|n| env.create_queue(n, json!({})))).await;
    common::wait_for(
        "200 Queues to be Ready",
        Duration::from_secs(180),
        || async {
            let list = env.queues.list(&Default::default()).await.ok()?;
            let ready = list
                .items
                .iter()
                .filter(|q| {
                    q.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
                .count();
            (ready == 200).then_some(())
        },
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(env.broker.count_queues().await, 200);
    eprintln!(
        "{}: 200 Queues applied at once were all Ready after {elapsed:?}",
        env.engine().name()
    );
    refresh_cost(&env, &names).await;
}

/// What one depth refresh of the 200 Queues costs: the operator's own engine connection checks
/// each Queue in the broker as a refresh does, one after another.
async fn refresh_cost(env: &Env, names: &[String]) {
    use conveyor::engine::registry::{Auth, ConnectRequest, Registry};
    use conveyor::engine::{DestinationKind, DestinationSpec, Discard, Engine, Storage, SyncMode};
    let (spec, _) = env.broker.broker_spec();
    let ext = &spec["external"];
    let text = |v: &Value| v.as_str().map(str::to_string);
    let (engine, auth) = match &env.broker {
        TestBroker::Nats { .. } => (Engine::Nats, Auth::None),
        TestBroker::Rabbitmq(r) => (
            Engine::Rabbitmq,
            Auth::UserPassword(r.plane.user.clone(), r.plane.password.clone()),
        ),
    };
    let req = ConnectRequest {
        engine,
        urls: vec![text(&ext["urls"][0]).unwrap()],
        management_url: text(&ext["rabbitmq"]["managementUrl"]),
        virtual_host: text(&ext["rabbitmq"]["virtualHost"]),
        auth,
        only_listed_urls: true,
        ..Default::default()
    };
    let registry = Registry::default();
    let conn = registry
        .connect(&("bench".into(), "events".into()), &req)
        .await
        .unwrap();
    let started = Instant::now();
    for n in names {
        let name = env.name_in_broker("queue", n);
        let wanted = DestinationSpec {
            kind: DestinationKind::Queue,
            owner: format!("Queue {}/{n}", env.ns.name),
            description: format!("Managed by Conveyor: Queue {}/{n}", env.ns.name),
            name,
            event_types: vec![],
            max_age: Duration::ZERO,
            max_messages: -1,
            max_bytes: -1,
            discard: Discard::Old,
            replicas: 1,
            storage: Storage::File,
            deduplication_window: None,
        };
        let mode = SyncMode {
            create: false,
            repair: false,
        };
        let outcome = conn.ensure(&wanted, mode).await.unwrap();
        assert!(
            matches!(outcome, conveyor::engine::SyncOutcome::Unchanged(_)),
            "{outcome:?}"
        );
    }
    let per_queue = match engine {
        Engine::Nats => 1,
        Engine::Rabbitmq => 2,
    };
    eprintln!(
        "{}: one depth refresh of 200 Queues: {} broker requests in {:?}",
        env.engine().name(),
        per_queue * names.len(),
        started.elapsed()
    );
}
on_both_engines!(two_hundred_queues_applied_at_once_all_become_ready);

// NATS only: subjects per event type, and duplicate detection.

#[tokio::test]
async fn topic_event_types_are_subjects_and_schemas_are_checked() {
    let env = env!(EngineKind::Nats, "topic-event-types");
    let TestBroker::Nats { js, .. } = &env.broker else {
        unreachable!()
    };
    create_orders_topic(&env, &["OrderPlaced"]).await;
    wait_condition(&env.topics, "orders", "Ready", "True", T).await;
    let stream = env.name_in_broker("topic", "orders");
    let c = js
        .get_stream(&stream)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(c.retention, stream::RetentionPolicy::Limits);
    assert_eq!(c.subjects, [format!("{stream}.OrderPlaced")]);
    js.publish(format!("{stream}.OrderPlaced"), "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let undeclared = js
        .publish(format!("{stream}.Unknown"), "x".into())
        .await
        .unwrap()
        .await;
    assert!(
        undeclared.is_err(),
        "an undeclared event type has no stream to land in: the publisher gets an error"
    );

    patch_spec(
        &env.topics,
        "orders",
        json!({"eventTypes": [
            {"type": "OrderPlaced", "schema": {"type": "object"}},
            {"type": "OrderShipped", "schema": {"type": "object"}}
        ]}),
    )
    .await;
    common::wait_for("the new event type's subject", T, || async {
        let mut s = js.get_stream(&stream).await.ok()?;
        let c = s.info().await.ok()?.config.clone();
        (c.subjects.len() == 2 && c.subjects.contains(&format!("{stream}.OrderShipped")))
            .then_some(())
    })
    .await;
    assert_eq!(env.broker.messages(true, &stream).await, Some(1));

    patch_spec(
        &env.topics,
        "orders",
        json!({"eventTypes": [
            {"type": "OrderPlaced", "schema": {"type": "object"}},
            {"type": "OrderShipped", "schema": {"type": "objekt"}}
        ]}),
    )
    .await;
    let (reason, message) = wait_condition(&env.topics, "orders", "Ready", "False", T).await;
    assert_eq!(reason, "InvalidEventSchema");
    assert!(
        message.contains("eventTypes[OrderShipped].schema"),
        "{message}"
    );
}

async fn create_orders_topic(env: &Env, types: &[&str]) {
    let types: Vec<Value> = types
        .iter()
        .map(|t| json!({"type": t, "schema": {"type": "object", "required": ["orderId"]}}))
        .collect();
    let topic: Topic = serde_json::from_value(json!({
        "apiVersion": "conveyor.dev/v1alpha1", "kind": "Topic", "metadata": {"name": "orders"},
        "spec": {"brokerRef": {"name": "events"}, "eventTypes": types}
    }))
    .unwrap();
    env.topics
        .create(&PostParams::default(), &topic)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_message_id_published_twice_in_the_window_is_stored_once() {
    let env = env!(EngineKind::Nats, "stream-dedup");
    let TestBroker::Nats { js, .. } = &env.broker else {
        unreachable!()
    };
    env.create_queue("orders", json!({"deduplicationWindow": "1m"}))
        .await;
    wait_condition(&env.queues, "orders", "Ready", "True", T).await;
    let (_, message) = wait_condition(&env.queues, "orders", "Supported", "True", T).await;
    assert!(message.contains("every setting"), "{message}");
    let stream = env.name_in_broker("queue", "orders");
    let mut acks = Vec::new();
    for _ in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "order-42");
        acks.push(
            js.publish_with_headers(stream.clone(), headers, "placed".into())
                .await
                .unwrap()
                .await
                .unwrap(),
        );
    }
    assert!(
        !acks[0].duplicate && acks[1].duplicate,
        "the broker flags the second publish as a duplicate"
    );
    assert_eq!(env.broker.messages(false, &stream).await, Some(1));
}

// RabbitMQ only: routing keys per event type, unrouted events kept, what it cannot honour.

#[tokio::test]
async fn topic_events_are_routed_by_type_and_none_vanish_on_rabbitmq() {
    let env = env!(EngineKind::Rabbitmq, "topic-routing");
    let TestBroker::Rabbitmq(r) = &env.broker else {
        unreachable!()
    };
    create_orders_topic(&env, &["OrderPlaced", "OrderCancelled"]).await;
    wait_condition(&env.topics, "orders", "Ready", "True", T).await;
    let exchange = env.name_in_broker("topic", "orders");
    let info = r.api.exchange(&r.vhost, &exchange).await.unwrap().unwrap();
    assert_eq!(info.exchange_type, "topic");

    // A subscriber's queue bound for OrderPlaced only (as an EventSubscription will be).
    let args = json!({"x-queue-type": "quorum"});
    let payment = "payment";
    r.api
        .declare_queue(&r.vhost, payment, true, args.as_object().unwrap())
        .await
        .unwrap();
    r.api
        .bind_queue(&r.vhost, &exchange, payment, "OrderPlaced")
        .await
        .unwrap();
    let no_headers = serde_json::Map::new();
    for (event, routed) in [
        ("OrderPlaced", true),
        ("OrderCancelled", true),
        ("Unknown", true),
    ] {
        let got = r
            .api
            .publish(
                &r.vhost,
                &exchange,
                event,
                r#"{"orderId":"42"}"#,
                &no_headers,
            )
            .await
            .unwrap();
        assert_eq!(got, routed, "{event} is routed somewhere, never dropped");
    }
    let placed = r
        .api
        .get_messages(&r.vhost, payment, 10, false)
        .await
        .unwrap();
    assert_eq!(
        placed
            .iter()
            .map(|m| m.routing_key.as_str())
            .collect::<Vec<_>>(),
        ["OrderPlaced"],
        "the bound queue gets OrderPlaced and nothing else"
    );
    let unrouted = format!("{exchange}.unrouted");
    let kept = r
        .api
        .get_messages(&r.vhost, &unrouted, 10, true)
        .await
        .unwrap();
    let mut keys: Vec<&str> = kept.iter().map(|m| m.routing_key.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["OrderCancelled", "Unknown"],
        "events no subscription took are kept in the Topic's unrouted queue"
    );
    common::wait_for("the Topic to count its 2 unrouted events", T, || async {
        let t = env.topics.get("orders").await.ok()?;
        let s = t.status?;
        (s.messages == Some(2) && s.consumers == Some(1)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_topic_is_repaired_on_rabbitmq_and_a_foreign_exchange_left_alone() {
    let env = env!(
        EngineKind::Rabbitmq,
        "topic-drift",
        &["--stream-refresh-seconds", "2"]
    );
    let TestBroker::Rabbitmq(r) = &env.broker else {
        unreachable!()
    };
    create_orders_topic(&env, &["OrderPlaced"]).await;
    wait_condition(&env.topics, "orders", "Ready", "True", T).await;
    let exchange = env.name_in_broker("topic", "orders");
    let unrouted = format!("{exchange}.unrouted");

    // The unrouted-event queue and the exchange deleted outside Conveyor: both come back.
    r.api.delete_queue(&r.vhost, &unrouted).await.unwrap();
    common::wait_for("the unrouted queue to be recreated", T, || async {
        r.api.queue(&r.vhost, &unrouted).await.ok()?.map(|_| ())
    })
    .await;
    env.broker.delete_outside(true, &exchange).await;
    common::wait_for("the exchange to be recreated", T, || async {
        let e = r.api.exchange(&r.vhost, &exchange).await.ok()??;
        (e.exchange_type == "topic").then_some(())
    })
    .await;
    assert!(
        common::event_reasons(&env.plane, &env.ns.name, "orders")
            .await
            .iter()
            .any(|e| e == "DriftRepaired")
    );

    // A topic exchange of the same name that Conveyor did not make is not taken over.
    let foreign = env.name_in_broker("topic", "foreign");
    r.api
        .declare_exchange(&r.vhost, &foreign, "topic", true, &serde_json::Map::new())
        .await
        .unwrap();
    let topic: Topic = serde_json::from_value(json!({
        "apiVersion": "conveyor.dev/v1alpha1", "kind": "Topic", "metadata": {"name": "foreign"},
        "spec": {"brokerRef": {"name": "events"}, "deletionPolicy": "Delete"}
    }))
    .unwrap();
    env.topics
        .create(&PostParams::default(), &topic)
        .await
        .unwrap();
    let (reason, message) = wait_condition(&env.topics, "foreign", "Ready", "False", T).await;
    assert_eq!(reason, "Conflict");
    assert!(message.contains("not created by Conveyor"), "{message}");
    env.topics
        .delete("foreign", &DeleteParams::default())
        .await
        .unwrap();
    common::wait_for("the Topic to be deleted", T, || async {
        env.topics
            .get_opt("foreign")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let kept = r.api.exchange(&r.vhost, &foreign).await.unwrap();
    assert!(
        kept.is_some_and(|e| !e.arguments.contains_key("x-conveyor-owner")),
        "the foreign exchange is untouched"
    );
}

#[tokio::test]
async fn settings_rabbitmq_cannot_honour_are_named_in_a_condition() {
    let env = env!(EngineKind::Rabbitmq, "stream-unsupported");
    env.create_queue(
        "orders",
        json!({"deduplicationWindow": "1m", "storage": "Memory"}),
    )
    .await;
    wait_condition(&env.queues, "orders", "Ready", "True", T).await;
    let (reason, message) = wait_condition(&env.queues, "orders", "Supported", "False", T).await;
    assert_eq!(reason, "SettingNotSupported");
    assert!(
        message.contains("spec.deduplicationWindow") && message.contains("spec.storage"),
        "{message}"
    );
    let TestBroker::Rabbitmq(r) = &env.broker else {
        unreachable!()
    };
    let q = r
        .api
        .queue(&r.vhost, &env.name_in_broker("queue", "orders"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        q.queue_type.as_deref(),
        Some("quorum"),
        "kept on disk as a quorum queue"
    );
}

#[tokio::test]
async fn an_object_with_the_longest_name_still_gets_its_events() {
    let env = env!(EngineKind::Nats, "stream-long-name");
    // 253 characters: the longest name Kubernetes allows, in dotted parts of at most 63.
    let part = "a".repeat(62);
    let name = format!("{part}.{part}.{part}.{part}.q");
    assert_eq!(name.len(), 253);
    env.create_queue(&name, json!({})).await;
    wait_condition(&env.queues, &name, "Ready", "True", T).await;
    let reasons = common::wait_for("the Queue's StreamCreated Event", T, || async {
        let reasons = common::event_reasons(&env.plane, &env.ns.name, &name).await;
        reasons
            .iter()
            .any(|r| r == "StreamCreated")
            .then_some(reasons)
    })
    .await;
    assert!(reasons.iter().any(|r| r == "StreamCreated"), "{reasons:?}");
}
