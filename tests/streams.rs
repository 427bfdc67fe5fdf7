//! Queues and Topics on a real nats-server, with the operator as its own process: streams
//! created, updated in place and deleted under each deletion policy; event types as subjects;
//! drift repaired or reported; foreign streams left alone; convergence after the broker comes
//! back; duplicate detection; deletion that does not hang when the broker is gone; and 200
//! Queues applied at once.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use common::nats::NatsServer;
use common::operator::Operator;
use common::{Plane, TestNamespace, wait_condition};
use conveyor::api::{Broker, Queue, Topic};
use futures::future::join_all;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(45);

/// A test's own broker, the operator, and the APIs the tests use.
struct Env {
    plane: Plane,
    ns: TestNamespace,
    server: NatsServer,
    js: jetstream::Context,
    _op: Operator,
    queues: Api<Queue>,
    topics: Api<Topic>,
    brokers: Api<Broker>,
}

impl Env {
    /// Starts a server and an operator, and creates the Broker `events` pointing at the server.
    async fn start(test: &str, plane: Plane, ns: TestNamespace, extra: &[&str]) -> Option<Self> {
        let server = NatsServer::start(&[])?;
        common::install_crds(&plane).await;
        let mut args = vec![
            "--allowed-broker-destinations",
            "127.0.0.1/32",
            "--unreachable-deletion-grace-seconds",
            "3",
        ];
        args.extend_from_slice(extra);
        let op = Operator::start_with(&plane, &ns.name, test, &args);
        let client = async_nats::connect(&server.url).await.unwrap();
        let c = plane.client.clone();
        let env = Self {
            js: jetstream::new(client),
            queues: Api::namespaced(c.clone(), &ns.name),
            topics: Api::namespaced(c.clone(), &ns.name),
            brokers: Api::namespaced(c, &ns.name),
            _op: op,
            server,
            ns,
            plane,
        };
        let broker: Broker = serde_json::from_value(json!({
            "apiVersion": "conveyor.dev/v1alpha1", "kind": "Broker", "metadata": {"name": "events"},
            "spec": {"engine": "nats", "external": {"urls": [env.server.url]}}
        }))
        .unwrap();
        env.brokers
            .create(&PostParams::default(), &broker)
            .await
            .unwrap();
        wait_condition(&env.brokers, "events", "Ready", "True", T).await;
        Some(env)
    }

    fn stream(&self, kind: &str, name: &str) -> String {
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

    async fn config(&self, stream: &str) -> Option<stream::Config> {
        let mut s = self.js.get_stream(stream).await.ok()?;
        Some(s.info().await.ok()?.config.clone())
    }

    async fn messages(&self, stream: &str) -> Option<u64> {
        let mut s = self.js.get_stream(stream).await.ok()?;
        Some(s.info().await.ok()?.state.messages)
    }

    async fn publish(&self, subject: &str, n: usize) {
        for i in 0..n {
            self.js
                .publish(subject.to_string(), format!("m{i}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
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
    ($test:expr) => {
        env!($test, &[])
    };
    ($test:expr, $extra:expr) => {{
        let (plane, ns) = setup!($test);
        match Env::start($test, plane, ns, $extra).await {
            Some(env) => env,
            None => return,
        }
    }};
}

#[tokio::test]
async fn queues_are_created_updated_and_deleted_under_each_policy() {
    let env = env!("queue-lifecycle", &["--stream-refresh-seconds", "2"]);
    for (name, policy) in [
        ("keep", "Retain"),
        ("drop", "Delete"),
        ("drain", "DeleteIfEmpty"),
    ] {
        env.create_queue(name, json!({"deletionPolicy": policy, "retention": {"maxAge": "1h"}, "deduplicationWindow": "1m"})).await;
    }
    for name in ["keep", "drop", "drain"] {
        wait_condition(&env.queues, name, "Ready", "True", T).await;
        let stream = env.stream("queue", name);
        let c = env
            .config(&stream)
            .await
            .expect("the stream exists in the broker");
        assert_eq!(c.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(c.subjects, [stream.clone(), format!("{stream}.>")]);
        assert_eq!(
            (c.max_age, c.duplicate_window),
            (Duration::from_secs(3600), Duration::from_secs(60))
        );
        assert_eq!(
            c.metadata.get("conveyor.dev/owner"),
            Some(&format!("Queue {}/{name}", env.ns.name))
        );
        env.publish(&stream, 3).await;
        common::wait_for(&format!("{name} status to count 3 messages"), T, || async {
            let q = env.queues.get(name).await.ok()?;
            (q.status?.messages == Some(3)).then_some(())
        })
        .await;
        patch_spec(&env.queues, name, json!({"retention": {"maxAge": "2h"}})).await;
        common::wait_for("the update to reach the broker in place", T, || async {
            let c = env.config(&stream).await?;
            (c.max_age == Duration::from_secs(7200)).then_some(())
        })
        .await;
        assert_eq!(
            env.messages(&stream).await,
            Some(3),
            "updating in place keeps the messages"
        );
    }

    // Retain: the resource goes, the stream and its messages stay.
    env.queues
        .delete("keep", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("keep").await;
    assert_eq!(env.messages(&env.stream("queue", "keep")).await, Some(3));

    // Delete: the stream goes with the resource.
    env.queues
        .delete("drop", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("drop").await;
    assert!(env.config(&env.stream("queue", "drop")).await.is_none());

    // DeleteIfEmpty: refused while messages remain, done once the stream is empty.
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
    let drain = env.stream("queue", "drain");
    assert_eq!(env.messages(&drain).await, Some(3));
    assert!(
        common::event_reasons(&env.plane, &env.ns.name, "drain")
            .await
            .iter()
            .any(|r| r == "DeletionBlocked")
    );
    env.js
        .get_stream(&drain)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    env.gone("drain").await;
    assert!(env.config(&drain).await.is_none());
}

#[tokio::test]
async fn topic_event_types_are_subjects_and_schemas_are_checked() {
    let env = env!("topic-event-types");
    let topic: Topic = serde_json::from_value(json!({
        "apiVersion": "conveyor.dev/v1alpha1", "kind": "Topic", "metadata": {"name": "orders"},
        "spec": {"brokerRef": {"name": "events"}, "eventTypes": [
            {"type": "OrderPlaced", "schema": {"type": "object", "required": ["orderId"]}}
        ]}
    }))
    .unwrap();
    env.topics
        .create(&PostParams::default(), &topic)
        .await
        .unwrap();
    wait_condition(&env.topics, "orders", "Ready", "True", T).await;
    let stream = env.stream("topic", "orders");
    let c = env.config(&stream).await.unwrap();
    assert_eq!(c.retention, stream::RetentionPolicy::Limits);
    assert_eq!(c.subjects, [format!("{stream}.OrderPlaced")]);
    env.publish(&format!("{stream}.OrderPlaced"), 1).await;
    let undeclared = env
        .js
        .publish(format!("{stream}.Unknown"), "x".into())
        .await
        .unwrap()
        .await;
    assert!(
        undeclared.is_err(),
        "an undeclared event type has no stream to land in"
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
        let c = env.config(&stream).await?;
        (c.subjects.len() == 2 && c.subjects.contains(&format!("{stream}.OrderShipped")))
            .then_some(())
    })
    .await;
    assert_eq!(env.messages(&stream).await, Some(1));

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

#[tokio::test]
async fn drift_is_repaired_or_only_reported() {
    let env = env!("stream-drift", &["--stream-refresh-seconds", "2"]);
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
        env.stream("queue", "repaired"),
        env.stream("queue", "reported"),
    );

    // Deleted outside Conveyor: recreated.
    env.js.delete_stream(&repaired).await.unwrap();
    common::wait_for("the deleted stream to be recreated", T, || async {
        env.config(&repaired).await.map(|_| ())
    })
    .await;

    // Edited outside Conveyor: set back, or reported and left.
    for s in [&repaired, &reported] {
        let mut c = env.config(s).await.unwrap();
        c.max_age = Duration::from_secs(600);
        env.js.update_stream(&c).await.unwrap();
    }
    common::wait_for("the edited stream to be set back", T, || async {
        (env.config(&repaired).await?.max_age == Duration::from_secs(3600)).then_some(())
    })
    .await;
    let (reason, message) = wait_condition(&env.queues, "reported", "Synced", "False", T).await;
    assert_eq!(reason, "Drifted");
    assert!(message.contains("maxAge"), "{message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.config(&reported).await.unwrap().max_age,
        Duration::from_secs(600),
        "Report leaves the stream as it is"
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

#[tokio::test]
async fn a_stream_conveyor_did_not_create_is_not_taken_over() {
    let env = env!("stream-conflict");
    let name = env.stream("queue", "taken");
    env.js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec!["elsewhere.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    env.create_queue("taken", json!({})).await;
    let (reason, message) = wait_condition(&env.queues, "taken", "Ready", "False", T).await;
    assert_eq!(reason, "Conflict");
    assert!(message.contains("not created by Conveyor"), "{message}");
    let c = env.config(&name).await.unwrap();
    assert_eq!(
        c.subjects,
        ["elsewhere.>"],
        "the foreign stream is untouched"
    );
    assert!(!c.metadata.contains_key("conveyor.dev/owner"));
}

#[tokio::test]
async fn a_queue_created_while_the_broker_is_down_converges_when_it_returns() {
    let mut env = env!("stream-broker-down");
    env.server.stop();
    wait_condition(&env.brokers, "events", "Reachable", "False", T).await;
    env.create_queue("patient", json!({})).await;
    let (reason, message) = wait_condition(&env.queues, "patient", "Ready", "False", T).await;
    assert_eq!(reason, "BrokerNotReady");
    assert!(message.contains("not reachable"), "{message}");
    env.server.restart();
    let back = Instant::now();
    wait_condition(&env.queues, "patient", "Ready", "True", T).await;
    eprintln!(
        "the Queue became Ready {:?} after the broker came back",
        back.elapsed()
    );
    let client = async_nats::connect(&env.server.url).await.unwrap();
    let mut s = jetstream::new(client)
        .get_stream(env.stream("queue", "patient"))
        .await
        .unwrap();
    assert_eq!(
        s.info().await.unwrap().config.retention,
        stream::RetentionPolicy::WorkQueue
    );
}

#[tokio::test]
async fn a_message_id_published_twice_in_the_window_is_stored_once() {
    let env = env!("stream-dedup");
    env.create_queue("orders", json!({"deduplicationWindow": "1m"}))
        .await;
    wait_condition(&env.queues, "orders", "Ready", "True", T).await;
    let stream = env.stream("queue", "orders");
    let mut acks = Vec::new();
    for _ in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "order-42");
        acks.push(
            env.js
                .publish_with_headers(stream.clone(), headers, "placed".into())
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
    assert_eq!(env.messages(&stream).await, Some(1));
}

#[tokio::test]
async fn deletion_does_not_hang_when_the_broker_is_gone() {
    let mut env = env!("stream-broker-gone");
    env.create_queue("orphan", json!({"deletionPolicy": "Delete"}))
        .await;
    env.create_queue("homeless", json!({"deletionPolicy": "Delete"}))
        .await;
    wait_condition(&env.queues, "orphan", "Ready", "True", T).await;
    wait_condition(&env.queues, "homeless", "Ready", "True", T).await;

    // The broker stops for good: the deletion is retried for the grace period (3 s here), then
    // the resource goes and an Event says the stream was left behind.
    env.server.stop();
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

#[tokio::test]
async fn two_hundred_queues_applied_at_once_all_become_ready() {
    let env = env!("stream-200");
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
    let client = async_nats::connect(&env.server.url).await.unwrap();
    let account = jetstream::new(client).query_account().await.unwrap();
    assert_eq!(account.streams, 200);
    eprintln!("200 Queues applied at once were all Ready after {elapsed:?}");
}
