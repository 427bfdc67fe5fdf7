//! Autoscaling, measured side by side with KEDA on the same plane and the same nats-server.
//!
//! 1,000 EventSubscriptions (`CONVEYOR_AUTOSCALE_COUNT`) over 10 Topics, each filtered on an
//! event type of its own and scaling a Deployment of its own (`workloadRef`, starting at zero).
//! Conveyor, with its production defaults:
//! - broker load with everything idle (nats-server CPU, the autoscaler's broker requests);
//! - reaction: a burst of 500 events to one subscription at zero, from the last publish
//!   acknowledgement to the Deployment's replica change seen by a watch, and the value it
//!   went to (`CONVEYOR_AUTOSCALE_TRIALS` trials, p50 and p99);
//! - many at once: one event to each of 100 and then all subscriptions in the same second, until
//!   every workload is scaled; broker load with that backlog;
//! - the operator's resident memory.
//!
//! Then, with Conveyor's operator stopped and the same consumers, KEDA's keda-operator
//! (`CONVEYOR_KEDA_BIN`, from `hack/keda.sh build`; skipped when unset) with one ScaledObject per
//! subscription for the first `CONVEYOR_AUTOSCALE_KEDA_COUNT` (100) of them, on their own
//! Deployments: a baseline with no autoscaler, its broker load at a 1 s and a 30 s polling
//! interval, its reaction at both intervals (`CONVEYOR_AUTOSCALE_KEDA_TRIALS`,
//! `CONVEYOR_AUTOSCALE_KEDA_SLOW_TRIALS`), 100 activated at once at 1 s, and its memory.
//!
//! Run with `hack/bench-autoscale.sh`. Under `cargo test` it makes a smoke run: 20
//! subscriptions, 3 trials, short windows, no KEDA.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "autoscale/keda.rs"]
mod keda;
mod support;

use support::create;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::broker::EngineKind;
use common::streams::Env;
use conveyor::api::EventSubscription;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

const TOPICS: usize = 10;
const IN_FLIGHT: usize = 32;
/// Events in one reaction trial's burst: 500 at 100 per replica asks for 5 replicas.
const BURST: usize = 500;

fn main() {
    support::block_on(run());
}

/// Every replica change of every Deployment in the namespace, stamped when the watch saw it.
#[derive(Clone, Default)]
struct Replicas(Arc<Mutex<HashMap<String, Changes>>>);

/// When a Deployment's replicas changed, and to what.
type Changes = Vec<(Instant, i32)>;

impl Replicas {
    fn watch(&self, api: Api<Deployment>) -> tokio::task::JoinHandle<()> {
        let seen = self.clone();
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(d)) = stream.next().await {
                let now = Instant::now();
                let name = d.metadata.name.clone().unwrap_or_default();
                let n = d.spec.replicas.unwrap_or(1);
                let mut all = seen.0.lock().unwrap();
                let changes = all.entry(name).or_default();
                if changes.last().map(|(_, v)| *v) != Some(n) {
                    changes.push((now, n));
                }
            }
        })
    }

    fn current(&self, name: &str) -> Option<i32> {
        let all = self.0.lock().unwrap();
        all.get(name).and_then(|c| c.last()).map(|(_, v)| *v)
    }

    /// The first change of `name` above zero after `since`, if any.
    fn first_change_after(&self, name: &str, since: Instant) -> Option<(Instant, i32)> {
        let all = self.0.lock().unwrap();
        all.get(name)?
            .iter()
            .find(|(at, v)| *at > since && *v > 0)
            .copied()
    }

    fn changes_after(&self, name: &str, since: Instant) -> usize {
        let all = self.0.lock().unwrap();
        all.get(name)
            .map_or(0, |c| c.iter().filter(|(at, _)| *at > since).count())
    }

    async fn wait(&self, names: &[String], timeout: Duration, ok: impl Fn(i32) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if names.iter().all(|n| self.current(n).is_some_and(&ok)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

fn event_type(i: usize) -> String {
    format!("S{:03}", i / TOPICS)
}

/// The NATS subject that only subscription `i` takes.
fn subject(env: &Env, i: usize) -> String {
    format!(
        "{}.{}",
        env.name_in_broker("topic", &format!("topic-{}", i % TOPICS)),
        event_type(i)
    )
}

fn stream_of(env: &Env, i: usize) -> String {
    env.name_in_broker("topic", &format!("topic-{}", i % TOPICS))
}

fn consumer_of(env: &Env, i: usize) -> String {
    env.name_in_broker("sub", &format!("sub-{i:04}"))
}

/// Publishes `count` events to each subject at once and waits for every acknowledgement: the
/// time after the last.
async fn publish(js: &jetstream::Context, subjects: &[String], count: usize) -> Instant {
    let mut acks = Vec::new();
    for s in subjects {
        for _ in 0..count {
            acks.push(js.publish(s.clone(), "{}".into()).await.unwrap());
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    Instant::now()
}

/// Takes and acknowledges every message of the consumers (as their workloads would).
async fn drain(js: &jetstream::Context, consumers: &[(String, String)]) {
    futures::stream::iter(consumers)
        .for_each_concurrent(IN_FLIGHT, |(stream, name)| async move {
            let c: jetstream::consumer::PullConsumer =
                js.get_consumer_from_stream(name, stream).await.unwrap();
            loop {
                let info = c.get_info().await.unwrap();
                if info.num_pending == 0 && info.num_ack_pending == 0 {
                    return;
                }
                let mut batch = c
                    .fetch()
                    .max_messages(1000)
                    .expires(Duration::from_millis(500))
                    .messages()
                    .await
                    .unwrap();
                while let Some(Ok(m)) = batch.next().await {
                    m.double_ack().await.unwrap();
                }
            }
        })
        .await;
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Reaction trials on `workload(i)` for subscriptions `0, 7, 14, ...`: seconds from the last
/// publish acknowledgement to the replica change, and the values it went to.
#[allow(clippy::too_many_arguments)]
async fn reaction(
    env: &Env,
    js: &jetstream::Context,
    replicas: &Replicas,
    workload: impl Fn(usize) -> String,
    count: usize,
    trials: usize,
    burst: usize,
    back_to_zero: Duration,
) -> (Vec<f64>, Vec<i32>, usize) {
    let mut latencies = Vec::new();
    let mut values = Vec::new();
    let mut extra_writes = 0;
    for t in 0..trials {
        let i = (t * 7) % count;
        let w = workload(i);
        if !replicas
            .wait(std::slice::from_ref(&w), back_to_zero, |n| n == 0)
            .await
        {
            eprintln!("autoscale: {w} did not return to zero; trial skipped");
            continue;
        }
        // Off any tick of the autoscaler under test.
        let jitter = Duration::from_millis(((t * 397) % 1000) as u64);
        tokio::time::sleep(jitter).await;
        let before = Instant::now();
        let acked = publish(js, &[subject(env, i)], burst).await;
        let change = loop {
            if let Some(c) = replicas.first_change_after(&w, before) {
                break Some(c);
            }
            if acked.elapsed() > Duration::from_secs(120) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let Some(change) = change else {
            // Counted as a trial that never scaled: its latency is infinite.
            latencies.push(f64::INFINITY);
            drain(js, &[(stream_of(env, i), consumer_of(env, i))]).await;
            continue;
        };
        latencies.push(change.0.saturating_duration_since(acked).as_secs_f64());
        // Hold the backlog a moment: a stepwise scaler would take further steps now.
        tokio::time::sleep(Duration::from_secs(2)).await;
        values.push(replicas.current(&w).unwrap_or(0));
        extra_writes += replicas.changes_after(&w, before).saturating_sub(1);
        drain(js, &[(stream_of(env, i), consumer_of(env, i))]).await;
    }
    latencies.sort_by(f64::total_cmp);
    (latencies, values, extra_writes)
}

/// One event to each of the first `m` subscriptions at once: seconds until every workload is
/// above zero (or how many were after `timeout`).
async fn many_at_once(
    env: &Env,
    js: &jetstream::Context,
    replicas: &Replicas,
    workload: &impl Fn(usize) -> String,
    m: usize,
    timeout: Duration,
) -> Result<f64, usize> {
    let names: Vec<String> = (0..m).map(workload).collect();
    let subjects: Vec<String> = (0..m).map(|i| subject(env, i)).collect();
    let before = Instant::now();
    let acked = publish(js, &subjects, 1).await;
    if replicas.wait(&names, timeout, |n| n > 0).await {
        let last = names
            .iter()
            .filter_map(|n| replicas.first_change_after(n, before))
            .map(|(at, _)| at)
            .max()
            .unwrap();
        Ok(last.saturating_duration_since(acked).as_secs_f64())
    } else {
        Err(names
            .iter()
            .filter(|n| replicas.current(n).is_some_and(|v| v > 0))
            .count())
    }
}

/// The CPU share of a core a process used over `window`.
async fn cpu_share(pids: &[u32], window: Duration) -> Vec<f64> {
    let before: Vec<_> = pids.iter().map(|p| support::cpu_time(*p)).collect();
    tokio::time::sleep(window).await;
    pids.iter()
        .zip(before)
        .map(|(p, b)| match (b, support::cpu_time(*p)) {
            (Some(b), Some(a)) => 100.0 * (a - b).as_secs_f64() / window.as_secs_f64(),
            _ => f64::NAN,
        })
        .collect()
}

async fn run() {
    let n = support::setting("CONVEYOR_AUTOSCALE_COUNT", 1000, 20) as usize;
    let trials = support::setting("CONVEYOR_AUTOSCALE_TRIALS", 50, 3) as usize;
    let window = Duration::from_secs(support::setting("CONVEYOR_AUTOSCALE_WINDOW_SECONDS", 60, 3));
    let keda_count = support::setting("CONVEYOR_AUTOSCALE_KEDA_COUNT", 100, 0) as usize;
    let keda_trials = support::setting("CONVEYOR_AUTOSCALE_KEDA_TRIALS", 50, 0) as usize;
    let keda_slow_trials = support::setting("CONVEYOR_AUTOSCALE_KEDA_SLOW_TRIALS", 50, 0) as usize;
    let Some(plane) = common::plane().await else {
        return;
    };
    let client = plane.client.clone();
    let ns = common::TestNamespace::create(&plane, "autoscale-bench").await;
    let ns_name = ns.name.clone();
    let lease = format!("conveyor-autoscale-{}", std::process::id());
    let args = support::operator_args(&lease);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let Some(mut env) = Env::start(EngineKind::Nats, "autoscale-bench", plane, ns, &args).await
    else {
        return;
    };
    let (server, js) = env.broker.nats().expect("a NATS broker");
    let (nats_pid, monitor, js) = (
        server.pid().unwrap(),
        server.monitor_url.clone(),
        js.clone(),
    );

    let per_topic = n.div_ceil(TOPICS);
    let types: Vec<String> = (0..per_topic).map(|k| format!("S{k:03}")).collect();
    support::create_topics(&env.topics, TOPICS, &types).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns_name);
    let replicas = Replicas::default();
    let watch = replicas.watch(deployments.clone());
    futures::stream::iter(0..n)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let (deployments, d) = (
                deployments.clone(),
                support::deployment_at_zero(&format!("consumer-{i:04}")),
            );
            async move { create(&deployments, d).await }
        })
        .await;
    let subs: Api<EventSubscription> = Api::namespaced(client.clone(), &ns_name);
    futures::stream::iter(0..n)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let subs = subs.clone();
            async move {
                create(
                    &subs,
                    json!({
                        "apiVersion": "conveyor.dev/v1alpha1", "kind": "EventSubscription",
                        "metadata": {"name": format!("sub-{i:04}")},
                        "spec": {
                            "topicRef": {"name": format!("topic-{}", i % TOPICS)},
                            "filter": {"eventTypes": [event_type(i)]},
                            "consumer": {"workloadRef": {"name": format!("consumer-{i:04}")}},
                            "scaling": {"maxReplicas": 10, "targetBacklogPerReplica": 100,
                                        "cooldown": "2s", "scaleDownStabilization": "2s"}
                        }
                    }),
                )
                .await;
            }
        })
        .await;
    let started = Instant::now();
    loop {
        let list = subs.list(&Default::default()).await.unwrap();
        let scaling = list
            .items
            .iter()
            .filter(|s| {
                s.status.as_ref().is_some_and(|st| {
                    st.conditions
                        .iter()
                        .any(|c| c.type_ == "Scaling" && c.status == "True")
                })
            })
            .count();
        if scaling == n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "{scaling}/{n} subscriptions scaling after 30 minutes"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "autoscale: {n} subscriptions over {TOPICS} streams, all scaling {:.1} s after applying",
        started.elapsed().as_secs_f64()
    );

    let op = env.op.as_ref().expect("operator");
    let op_pid = op.child.id();
    // Conveyor alone, everything idle.
    let listings = op
        .metric("conveyor_autoscaler_broker_requests_total", "listing")
        .await;
    let arrivals = op
        .metric("conveyor_autoscaler_broker_requests_total", "arrivals")
        .await;
    let writes = support::api_writes(op).await;
    let cpu = cpu_share(&[nats_pid, op_pid], window).await;
    let secs = window.as_secs_f64();
    let listings = (op
        .metric("conveyor_autoscaler_broker_requests_total", "listing")
        .await
        - listings)
        / secs;
    let arrivals = (op
        .metric("conveyor_autoscaler_broker_requests_total", "arrivals")
        .await
        - arrivals)
        / secs;
    let writes = support::api_writes(op).await - writes;
    println!(
        "autoscale: Conveyor, {n} idle subscriptions, {} s: nats-server {:.2} % of a core, operator {:.2} %; broker requests {listings:.1} listings/s and {arrivals:.1} stream infos/s; API writes {writes}",
        window.as_secs(),
        cpu[0],
        cpu[1]
    );

    let conveyor_workload = |i: usize| format!("consumer-{i:04}");
    let (lat, values, extra) = reaction(
        &env,
        &js,
        &replicas,
        conveyor_workload,
        n,
        trials,
        BURST,
        Duration::from_secs(60),
    )
    .await;
    println!(
        "autoscale: Conveyor reaction, {trials} trials of {BURST} events at zero with {n} subscriptions: p50 {:.3} s, p99 {:.3} s, max {:.3} s; went to {:?} replicas; further writes while the backlog stood: {extra}",
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(f64::NAN),
        values
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
    );
    for m in [100.min(n), n] {
        replicas
            .wait(
                &(0..m).map(conveyor_workload).collect::<Vec<_>>(),
                Duration::from_secs(120),
                |v| v == 0,
            )
            .await;
        let r = many_at_once(
            &env,
            &js,
            &replicas,
            &conveyor_workload,
            m,
            Duration::from_secs(120),
        )
        .await;
        let load = if m == n {
            let cpu = cpu_share(&[nats_pid, op_pid], window).await;
            format!(
                "; with that backlog standing, nats-server {:.2} % of a core, operator {:.2} %",
                cpu[0], cpu[1]
            )
        } else {
            String::new()
        };
        match r {
            Ok(s) => println!(
                "autoscale: Conveyor, one event to each of {m} subscriptions at once: all scaled {s:.3} s after the last acknowledgement{load}"
            ),
            Err(k) => println!(
                "autoscale: Conveyor, one event to each of {m} subscriptions at once: {k} of {m} scaled within 120 s{load}"
            ),
        }
        let consumers: Vec<_> = (0..m)
            .map(|i| (stream_of(&env, i), consumer_of(&env, i)))
            .collect();
        drain(&js, &consumers).await;
    }
    println!(
        "autoscale: Conveyor operator resident memory {}",
        support::resident(op_pid)
    );

    if keda_count > 0 {
        match std::env::var("CONVEYOR_KEDA_BIN") {
            Ok(_) => {
                keda::run(
                    &mut env,
                    &js,
                    &replicas,
                    nats_pid,
                    &monitor,
                    keda_count.min(n),
                    keda_trials,
                    keda_slow_trials,
                    window,
                )
                .await
            }
            Err(_) => println!(
                "autoscale: KEDA skipped: CONVEYOR_KEDA_BIN is unset (hack/bench-autoscale.sh sets it)"
            ),
        }
    }

    watch.abort();
    let deleted = support::delete_namespace(&client, &ns_name, Duration::from_secs(1800)).await;
    drop(env);
    support::delete_lease(&client, &lease).await;
    assert!(deleted.is_some(), "the namespace was not deleted");
}
