//! The Queue and Topic tests' environment: a broker of either engine, the operator as its own
//! process, the Broker `events` pointing at the broker, and the APIs the tests use.

use std::time::Duration;

use conveyor::api::{Broker, Queue, Topic};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::broker::{EngineKind, TestBroker};
use super::operator::Operator;
use super::{Plane, TestNamespace, wait_condition};

pub const T: Duration = Duration::from_secs(45);

/// A test's own broker, the operator, and the APIs the tests use.
pub struct Env {
    pub plane: Plane,
    pub ns: TestNamespace,
    pub broker: TestBroker,
    pub op: Option<Operator>,
    test: String,
    args: Vec<String>,
    pub queues: Api<Queue>,
    pub topics: Api<Topic>,
    pub brokers: Api<Broker>,
}

/// The operator stops first: were it still running while the namespace's finalizers are
/// stripped, it would add them back and leave the namespace Terminating for good.
impl Drop for Env {
    fn drop(&mut self) {
        // No panic here: this may run while a failed test unwinds. The Operator's own drop
        // kills a process that did not exit.
        if let Some(mut op) = self.op.take() {
            op.signal("-TERM");
            let _ = op.wait_exit(Duration::from_secs(20));
        }
    }
}

impl Env {
    /// Starts a broker of `engine` and an operator, and creates the Broker `events` pointing at
    /// the broker.
    pub async fn start(
        engine: EngineKind,
        test: &str,
        plane: Plane,
        ns: TestNamespace,
        extra: &[&str],
    ) -> Option<Self> {
        let broker = TestBroker::start(engine, &ns.name).await?;
        super::install_crds(&plane).await;
        let mut args = vec!["--allowed-broker-destinations", "127.0.0.1/32"];
        let grace = "--unreachable-deletion-grace-seconds";
        if !extra.contains(&grace) {
            args.extend([grace, "3"]);
        }
        // These tests are about resources, not leadership: a lease of the production length
        // keeps a renewal slowed by the many tests loading the API server at once from ending
        // the one operator (a 3 s lease leaves a renewal 1 s). It stops with SIGTERM, which
        // releases the lease, so a restarted operator takes over at once.
        let lease = "--lease-duration-seconds";
        if !extra.contains(&lease) {
            args.extend([lease, "15"]);
        }
        args.extend_from_slice(extra);
        let op = Operator::start_with(&plane, &ns.name, test, &args);
        let args = args.iter().map(|a| a.to_string()).collect();
        let c = plane.client.clone();
        let env = Self {
            queues: Api::namespaced(c.clone(), &ns.name),
            topics: Api::namespaced(c.clone(), &ns.name),
            brokers: Api::namespaced(c, &ns.name),
            op: Some(op),
            test: test.to_string(),
            args,
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

    /// Stops the operator (SIGTERM) and waits for it to exit.
    pub fn stop_operator(&mut self) {
        if let Some(mut op) = self.op.take() {
            op.signal("-TERM");
            op.wait_exit(Duration::from_secs(20))
                .expect("the operator exits on SIGTERM");
        }
    }

    /// Starts the operator again with the same arguments.
    pub fn start_operator(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.op = Some(Operator::start_with(
            &self.plane,
            &self.ns.name,
            &self.test,
            &args,
        ));
    }

    pub fn engine(&self) -> EngineKind {
        self.broker.engine()
    }

    pub fn name_in_broker(&self, kind: &str, name: &str) -> String {
        format!("{kind}_{}_{name}", self.ns.name.replace('.', "_"))
    }

    pub async fn create_queue(&self, name: &str, spec: Value) {
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
    pub async fn wait_messages(&self, queue: &str, n: u64) {
        super::wait_for(&format!("{queue} to hold {n} message(s)"), T, || async {
            (self.broker.messages(false, queue).await == Some(n)).then_some(())
        })
        .await;
    }

    pub async fn gone(&self, name: &str) {
        super::wait_for(&format!("Queue {name} to be deleted"), T, || async {
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

pub fn merge(base: &mut Value, patch: Value) {
    if let (Some(b), Value::Object(p)) = (base.as_object_mut(), patch) {
        b.extend(p);
    }
}

pub async fn patch_spec<K>(api: &Api<K>, name: &str, spec: Value)
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

#[macro_export]
macro_rules! stream_env {
    ($engine:expr, $test:expr) => {
        $crate::stream_env!($engine, $test, &[])
    };
    ($engine:expr, $test:expr, $extra:expr) => {{
        let test = format!("{}-{}", $test, $engine.name());
        let (plane, ns) = setup!(&test);
        match common::streams::Env::start($engine, &test, plane, ns, $extra).await {
            Some(env) => env,
            None => return,
        }
    }};
}

/// Runs one test body (an `async fn(EngineKind)`) on both engines, as two tests; the test file
/// imports `EngineKind`.
#[macro_export]
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

/// Waits until the object `name` is gone (its finalizers done).
pub async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    super::wait_for(&format!("{name} to be deleted"), T, || async {
        api.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await;
}

/// Creates the Topic `orders` with the given event types, each with a small schema.
pub async fn create_orders_topic(env: &Env, types: &[&str]) {
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
