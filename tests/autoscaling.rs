//! Autoscaling on real brokers, with the operator as its own process, the same test body on
//! NATS and on RabbitMQ: a backlog scales the workload to the computed replicas in one write
//! and it returns to its minimum once the work is done; work in flight keeps a replica; an
//! unreachable broker and an operator restart hold the replicas.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::broker::EngineKind;
use common::streams::{Env, T, create_orders_topic, patch_spec};
use common::{condition, wait_condition, wait_for};
use conveyor::api::EventSubscription;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

/// Every replica count the Deployment `name` had, in order, as its watch shows them.
struct History {
    values: Arc<Mutex<Vec<i32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl History {
    fn start(api: &Api<Deployment>, name: &str) -> Self {
        let values = Arc::new(Mutex::new(Vec::new()));
        let seen = values.clone();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = watcher(api.clone(), config).applied_objects();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(d)) = stream.next().await {
                let n = d.spec.replicas.unwrap_or(1);
                let mut v = seen.lock().unwrap();
                if v.last() != Some(&n) {
                    v.push(n);
                }
            }
        });
        Self { values, task }
    }

    fn values(&self) -> Vec<i32> {
        self.values.lock().unwrap().clone()
    }

    /// The values since the `from`-th.
    fn since(&self, from: usize) -> Vec<i32> {
        self.values()[from.min(self.values().len())..].to_vec()
    }

    fn last(&self) -> Option<i32> {
        self.values().last().copied()
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Topic `orders`, a Deployment of the user's own at zero replicas, and the subscription
/// `payment` scaling it with `scaling`.
async fn scaled_subscription(env: &Env, scaling: Value, delivery: Value) -> Api<EventSubscription> {
    create_orders_topic(env, &["OrderPlaced"]).await;
    wait_condition(&env.topics, "orders", "Ready", "True", T).await;
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "payment"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "payment"}},
            "template": {
                "metadata": {"labels": {"app": "payment"}},
                "spec": {"containers": [{"name": "consumer", "image": "consumer:1"}]}
            }
        }
    }))
    .unwrap();
    deployments(env)
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let subs: Api<EventSubscription> = Api::namespaced(env.plane.client.clone(), &env.ns.name);
    let sub: EventSubscription = serde_json::from_value(json!({
        "apiVersion": "conveyor.dev/v1alpha1", "kind": "EventSubscription",
        "metadata": {"name": "payment"},
        "spec": {
            "topicRef": {"name": "orders"},
            "consumer": {"workloadRef": {"name": "payment"}},
            "delivery": delivery,
            "scaling": scaling,
        }
    }))
    .unwrap();
    subs.create(&PostParams::default(), &sub).await.unwrap();
    wait_condition(&subs, "payment", "Ready", "True", T).await;
    let paused = scaling["paused"] == json!(true);
    let (status, reason) = if paused {
        ("False", "ScalingPaused")
    } else {
        ("True", "BacklogObserved")
    };
    wait_condition(&subs, "payment", "Scaling", status, T).await;
    let (_, got, _) = condition(&subs, "payment", "Scaling").await.unwrap();
    assert_eq!(got, reason);
    subs
}

fn deployments(env: &Env) -> Api<Deployment> {
    Api::namespaced(env.plane.client.clone(), &env.ns.name)
}

async fn settings(env: &Env) -> std::collections::BTreeMap<String, String> {
    let secrets: Api<Secret> = Api::namespaced(env.plane.client.clone(), &env.ns.name);
    common::amqp::values(&secrets.get("payment-consumer").await.unwrap())
}

async fn wait_replicas(history: &History, n: i32, timeout: Duration) {
    wait_for(
        &format!("the workload at {n} replicas"),
        timeout,
        || async { (history.last() == Some(n)).then_some(()) },
    )
    .await;
}

fn topic(env: &Env) -> String {
    env.name_in_broker("topic", "orders")
}

async fn a_backlog_scales_up_in_one_write_and_back_to_min_when_done(engine: EngineKind) {
    let env = stream_env!(engine, "scale-backlog");
    let subs = scaled_subscription(
        &env,
        json!({"maxReplicas": 20, "targetBacklogPerReplica": 100, "cooldown": "3s", "scaleDownStabilization": "3s", "paused": true}),
        json!({}),
    )
    .await;
    let history = History::start(&deployments(&env), "payment");
    wait_replicas(&history, 0, T).await;

    // Paused: the backlog is observed and reported, the replicas are left alone.
    env.broker
        .publish_events(&topic(&env), "OrderPlaced", 1000)
        .await;
    wait_for("the paused status to show the backlog", T, || async {
        let s = subs.get("payment").await.unwrap().status?;
        (s.backlog == Some(1000)).then_some(())
    })
    .await;
    assert_eq!(history.values(), vec![0]);
    patch_spec(&subs, "payment", json!({"scaling": {"paused": false}})).await;
    wait_replicas(&history, 10, T).await;
    assert_eq!(history.values(), vec![0, 10], "0 -> 10 in one write");
    let op = env.op.as_ref().unwrap();
    wait_for("the scale write to be counted", T, || async {
        let up = op
            .metric("conveyor_scale_writes_total", "direction=\"up\"")
            .await;
        (up >= 1.0).then_some(up)
    })
    .await;
    assert_eq!(
        op.metric("conveyor_scale_writes_total", "direction=\"up\"")
            .await,
        1.0,
        "one write"
    );
    let status = wait_for("the status to show the backlog", T, || async {
        let s = subs.get("payment").await.unwrap().status?;
        (s.backlog == Some(1000) && s.replicas == Some(10)).then_some(s)
    })
    .await;
    assert_eq!(status.desired_replicas, Some(10));
    assert_eq!(status.pending, Some(1000));
    let reason = status.last_scale_reason.unwrap_or_default();
    assert!(reason.starts_with("0 to 10: a backlog of 1000"), "{reason}");
    assert!(status.last_scale_time.is_some());
    let d = deployments(&env).get("payment").await.unwrap();
    let managers: Vec<_> = d
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers
            .iter()
            .any(|m| m == conveyor::autoscale::FIELD_MANAGER),
        "the scale is written under the autoscaler's own field manager: {managers:?}"
    );

    // All the work done: down to the minimum after the window and the cooldown.
    let consumer = env.name_in_broker("sub", "payment");
    let drained = env.broker.drain_consumer(&topic(&env), &consumer).await;
    assert_eq!(drained.len(), 1000);
    wait_replicas(&history, 0, T).await;
    let values = history.values();
    assert!(
        values.windows(2).skip(1).all(|w| w[1] < w[0]),
        "only down after the drain, never up again: {values:?}"
    );
    let s = subs.get("payment").await.unwrap().status.unwrap();
    assert_eq!(s.backlog, Some(0));
}
on_both_engines!(a_backlog_scales_up_in_one_write_and_back_to_min_when_done);

async fn work_in_flight_is_never_scaled_to_zero(engine: EngineKind) {
    let env = stream_env!(engine, "scale-inflight");
    let subs = scaled_subscription(
        &env,
        json!({"cooldown": "2s", "scaleDownStabilization": "2s"}),
        json!({"ackWait": "5m"}),
    )
    .await;
    let history = History::start(&deployments(&env), "payment");
    env.broker
        .publish_events(&topic(&env), "OrderPlaced", 5)
        .await;
    wait_replicas(&history, 1, T).await;
    let held = env.broker.hold_in_flight(&settings(&env).await, 5).await;
    wait_for(
        "the status to show 5 in flight and none pending",
        T,
        || async {
            let s = subs.get("payment").await.unwrap().status?;
            (s.in_flight == Some(5) && s.pending == Some(0)).then_some(())
        },
    )
    .await;
    // Five times the cooldown with nothing pending: the replica stays for the work in flight.
    let from = history.values().len() - 1;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(history.since(from), vec![1], "{:?}", history.values());

    held.ack_all().await;
    wait_replicas(&history, 0, T).await;
}
on_both_engines!(work_in_flight_is_never_scaled_to_zero);

/// The subscription with `scaling`, scaled to 3 by a backlog of 300: its API, the workload's
/// history and the index of the 3 in it.
async fn at_three_replicas(env: &Env, scaling: Value) -> (Api<EventSubscription>, History, usize) {
    let subs = scaled_subscription(env, scaling, json!({})).await;
    let history = History::start(&deployments(env), "payment");
    env.broker
        .publish_events(&topic(env), "OrderPlaced", 300)
        .await;
    wait_replicas(&history, 3, T).await;
    let from = history.values().len() - 1;
    (subs, history, from)
}

async fn an_unreachable_broker_holds_the_replicas(engine: EngineKind) {
    let mut env = stream_env!(engine, "scale-unreachable");
    let (subs, history, from) = at_three_replicas(
        &env,
        json!({"cooldown": "2s", "scaleDownStabilization": "2s"}),
    )
    .await;

    env.broker.cut().await;
    wait_condition(&subs, "payment", "Scaling", "False", T).await;
    let (_, reason, message) = condition(&subs, "payment", "Scaling").await.unwrap();
    assert_eq!(reason, "BacklogUnknown", "{message}");
    assert!(message.contains("replicas held at 3"), "{message}");
    // Well past the cooldown and the window: unknown is not zero.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(history.since(from), vec![3]);

    env.broker.restore().await;
    wait_condition(&subs, "payment", "Scaling", "True", Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(history.since(from), vec![3], "back without flapping");
}
on_both_engines!(an_unreachable_broker_holds_the_replicas);

async fn an_operator_restart_does_not_scale_down_early(engine: EngineKind) {
    let mut env = stream_env!(engine, "scale-restart");
    let (_subs, history, from) = at_three_replicas(
        &env,
        json!({"cooldown": "1m", "scaleDownStabilization": "40s"}),
    )
    .await;
    // The work done: one replica is recommended from now on, but the window holds three.
    let consumer = env.name_in_broker("sub", "payment");
    env.broker.drain_consumer(&topic(&env), &consumer).await;
    env.stop_operator();
    env.start_operator();
    env.op.as_ref().unwrap().wait_ready().await;
    // Within the window, seen from the new process's start: no scale-down.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(history.since(from), vec![3], "{:?}", history.values());
}
on_both_engines!(an_operator_restart_does_not_scale_down_early);
