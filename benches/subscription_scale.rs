//! Subscriptions at scale: 1,000 EventSubscriptions (`CONVEYOR_SUBS_COUNT`) over 10 Topics on
//! one Broker (`CONVEYOR_SUBS_ENGINE`: `nats`, the default, or `rabbitmq`), applied at once with
//! the operator running. Prints the time until all are Ready, the operator's API writes until
//! then and over the next idle period (`CONVEYOR_SUBS_IDLE_SECONDS`, 300; the goal is zero),
//! its reconciles and CPU meanwhile, its resident memory, and the time to delete the namespace
//! with every consumer. Each subscription names a Deployment of its own with no replicas
//! (`consumer.workloadRef`), made before, so that the plane runs no pods for them. The operator
//! runs with its production defaults. Figures, not pass/fail: it fails only when something
//! does not converge.
//!
//! Run with `hack/bench-subscriptions.sh`. Under `cargo test` (the test suite) it makes a smoke
//! run instead: 20 subscriptions and 2 idle seconds.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use support::create;

use std::time::{Duration, Instant};

use common::broker::EngineKind;
use common::streams::Env;
use conveyor::api::EventSubscription;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

const TOPICS: usize = 10;
const IN_FLIGHT: usize = 32;

fn main() {
    support::block_on(run());
}

fn ready(sub: &EventSubscription) -> bool {
    sub.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

async fn run() {
    let n = support::setting("CONVEYOR_SUBS_COUNT", 1000, 20) as usize;
    let idle = Duration::from_secs(support::setting("CONVEYOR_SUBS_IDLE_SECONDS", 300, 2));
    let engine = match std::env::var("CONVEYOR_SUBS_ENGINE").as_deref() {
        Ok("rabbitmq") => EngineKind::Rabbitmq,
        _ => EngineKind::Nats,
    };
    let Some(plane) = common::plane().await else {
        return;
    };
    let client = plane.client.clone();
    let ns = common::TestNamespace::create(&plane, "subs-bench").await;
    let ns_name = ns.name.clone();
    let lease = format!("conveyor-subs-{}", std::process::id());
    let args = support::operator_args(&lease);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let Some(env) = Env::start(engine, "subs-bench", plane, ns, &args).await else {
        return;
    };
    let types = ["OrderPlaced".to_string(), "OrderCancelled".to_string()];
    support::create_topics(&env.topics, TOPICS, &types).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns_name);
    futures::stream::iter(0..n)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let deployments = deployments.clone();
            async move {
                let name = format!("consumer-{i:04}");
                create(&deployments, support::deployment_at_zero(&name)).await;
            }
        })
        .await;

    let subs: Api<EventSubscription> = Api::namespaced(client.clone(), &ns_name);
    let (store, writer): (Store<EventSubscription>, _) = reflector::store();
    let watch = tokio::spawn(
        watcher(subs.clone(), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .for_each(|_| async {}),
    );
    store.wait_until_ready().await.unwrap();
    let op = env.op.as_ref().expect("operator");
    let writes_before = support::api_writes(op).await;
    let started = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let subs = subs.clone();
            async move {
                let filter = if i % 2 == 0 {
                    json!({"eventTypes": ["OrderPlaced"]})
                } else {
                    json!(null)
                };
                create(
                    &subs,
                    json!({
                        "apiVersion": "conveyor.dev/v1alpha1", "kind": "EventSubscription",
                        "metadata": {"name": format!("sub-{i:04}")},
                        "spec": {
                            "topicRef": {"name": format!("topic-{}", i % TOPICS)},
                            "filter": filter,
                            "consumer": {"workloadRef": {"name": format!("consumer-{i:04}")}}
                        }
                    }),
                )
                .await;
            }
        })
        .await;
    let applied = started.elapsed();
    let mut last_report = Instant::now();
    loop {
        let ready_now = store.state().iter().filter(|s| ready(s)).count();
        if ready_now == n {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "subscriptions: {ready_now}/{n} Ready after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "not all Ready after 30 minutes: {ready_now}/{n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let to_ready = started.elapsed();
    watch.abort();
    let op_pid = op.child.id();
    let writes_to_ready = support::api_writes(op).await - writes_before;
    println!(
        "subscriptions ({}): {n} applied in {:.1} s, all Ready {:.1} s after the first was applied; API writes until Ready {writes_to_ready} ({:.2} per subscription); resident memory {}",
        engine.name(),
        applied.as_secs_f64(),
        to_ready.as_secs_f64(),
        writes_to_ready / n as f64,
        support::resident(op_pid)
    );

    // Idle: nothing changes.
    let cpu = support::cpu_time(op_pid);
    let writes = support::api_writes(op).await;
    let reconciles = op.metric("conveyor_reconciliations_total", "").await;
    let gets = op
        .metric("conveyor_kube_api_requests_total", "method=\"GET\"")
        .await;
    tokio::time::sleep(idle).await;
    let cpu_pct = match (cpu, support::cpu_time(op_pid)) {
        (Some(b), Some(a)) => 100.0 * (a - b).as_secs_f64() / idle.as_secs_f64(),
        _ => f64::NAN,
    };
    let writes_idle = support::api_writes(op).await - writes;
    let reconciles_idle = op.metric("conveyor_reconciliations_total", "").await - reconciles;
    let gets_idle = op
        .metric("conveyor_kube_api_requests_total", "method=\"GET\"")
        .await
        - gets;
    println!(
        "subscriptions ({}): idle {} s with {n} subscriptions: API writes {writes_idle} (goal 0), {reconciles_idle} reconciles, {gets_idle} API reads, operator CPU {cpu_pct:.2} % of a core; resident memory {}",
        engine.name(),
        idle.as_secs(),
        support::resident(op_pid)
    );

    let deleted = support::delete_namespace(&client, &ns_name, Duration::from_secs(1800)).await;
    println!(
        "subscriptions ({}): namespace with {n} subscriptions and {TOPICS} Topics deleted in {}",
        engine.name(),
        deleted.map_or("more than 30 minutes".into(), |d| format!(
            "{:.1} s",
            d.as_secs_f64()
        ))
    );
    drop(env);
    support::delete_lease(&client, &lease).await;
    assert!(deleted.is_some(), "the namespace was not deleted");
}
