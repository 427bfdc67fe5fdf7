//! Scale: 10,000 Queues and Topics (half each, `CONVEYOR_SCALE_OBJECTS`) created on one NATS
//! Broker while the operator is stopped, then the operator started. Prints the time until all
//! are Ready, the operator's resident memory, and over the next idle period
//! (`CONVEYOR_SCALE_IDLE_SECONDS`, 300) the operator's and nats-server's CPU and the operator's
//! API writes, and nats-server's CPU with the operator stopped for comparison; then the time
//! to delete the namespace with all of them, and what was left in the broker. The operator runs
//! with its production defaults (`CONVEYOR_KUBE_API_QPS` and `CONVEYOR_KUBE_API_BURST` override
//! its client-side rate limit). Figures, not pass/fail: it fails only when something does not converge.
//!
//! Run with `hack/scale.sh` (it starts the local plane if needed). Under `cargo test` (the test
//! suite) it makes a smoke run instead: 50 objects and 2 idle seconds.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::broker::{EngineKind, TestBroker};
use common::streams::Env;

fn main() {
    support::block_on(run());
}

/// The sum of one of the operator's metrics.
async fn metric(env: &Env, name: &str) -> f64 {
    env.op.as_ref().expect("operator").metric(name, "").await
}

async fn api_writes(env: &Env) -> f64 {
    support::api_writes(env.op.as_ref().expect("operator")).await
}

async fn run() {
    let n = support::setting("CONVEYOR_SCALE_OBJECTS", 10_000, 50) as usize;
    let idle = Duration::from_secs(support::setting("CONVEYOR_SCALE_IDLE_SECONDS", 300, 2));
    let Some(plane) = common::plane().await else {
        return;
    };
    let client = plane.client.clone();
    let ns = common::TestNamespace::create(&plane, "scale").await;
    let ns_name = ns.name.clone();
    // The operator's own defaults, except the namespace it watches (tests pass a 3 s lease and
    // a 60 s resync).
    let lease = format!("conveyor-scale-{}", std::process::id());
    let mut args = support::operator_args(&lease);
    for (flag, var, default) in [
        ("--kube-api-qps", "CONVEYOR_KUBE_API_QPS", "500"),
        ("--kube-api-burst", "CONVEYOR_KUBE_API_BURST", "1000"),
    ] {
        args.push(flag.into());
        args.push(std::env::var(var).unwrap_or_else(|_| default.into()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let Some(mut env) = Env::start(EngineKind::Nats, "scale", plane, ns, &args).await else {
        return;
    };
    let TestBroker::Nats { server, .. } = &env.broker else {
        unreachable!("the scale bench runs on NATS")
    };
    let nats_pid = server.pid().expect("nats-server runs");
    env.stop_operator();

    let created = Instant::now();
    support::create_objects(&client, &ns_name, n).await;
    println!(
        "scale: created {n} Queues and Topics in {:.1} s with the operator stopped",
        created.elapsed().as_secs_f64()
    );

    let counter = support::ReadyWatch::start(&client, &ns_name).await;
    env.start_operator();
    let started = Instant::now();
    let mut restarts = 0;
    let mut last_report = Instant::now();
    loop {
        let op = env.op.as_mut().expect("operator");
        if op.child.try_wait().ok().flatten().is_some() {
            restarts += 1;
            eprintln!("scale: the operator exited; restarting it as a Deployment would");
            env.start_operator();
        }
        let ready = counter.count();
        if ready == n {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "scale: {ready}/{n} Ready after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "not all Ready after 30 minutes: {ready}/{n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let to_ready = started.elapsed();
    drop(counter);
    let writes_to_ready = api_writes(&env).await;
    let op_pid = env.op.as_ref().expect("operator").child.id();
    let rss_ready = support::resident(op_pid);
    println!(
        "scale: all {n} Ready {:.1} s after the operator started (goal 60 s); operator exits meanwhile: {restarts}; resident memory {rss_ready} (goal < 50 MiB)",
        to_ready.as_secs_f64()
    );
    println!(
        "scale: API writes until Ready {writes_to_ready} ({:.2} per object; the last operator life only)",
        writes_to_ready / n as f64
    );

    // Idle: nothing changes; only the refresh runs.
    let (op_cpu, nats_cpu) = (support::cpu_time(op_pid), support::cpu_time(nats_pid));
    let writes = api_writes(&env).await;
    let listings = metric(&env, "conveyor_broker_listings_total").await;
    let reconciles = metric(&env, "conveyor_reconciliations_total").await;
    tokio::time::sleep(idle).await;
    let pct = |before: Option<Duration>, after: Option<Duration>| match (before, after) {
        (Some(b), Some(a)) => 100.0 * (a - b).as_secs_f64() / idle.as_secs_f64(),
        _ => f64::NAN,
    };
    let exited = env
        .op
        .as_mut()
        .unwrap()
        .child
        .try_wait()
        .ok()
        .flatten()
        .is_some();
    let op = if exited { None } else { Some(op_pid) };
    let op_pct = pct(op_cpu, op.and_then(support::cpu_time));
    let nats_pct = pct(nats_cpu, support::cpu_time(nats_pid));
    let writes_idle = api_writes(&env).await - writes;
    let listings_idle = metric(&env, "conveyor_broker_listings_total").await - listings;
    let reconciles_idle = metric(&env, "conveyor_reconciliations_total").await - reconciles;
    let rss_idle = support::resident(op_pid);
    println!(
        "scale: idle {} s with {n} objects: operator CPU {op_pct:.2} % of a core, nats-server CPU {nats_pct:.2} % (goal < 1 % each); operator API writes {writes_idle} (goal 0); {listings_idle} broker listings, {reconciles_idle} reconciles; resident memory {rss_idle}",
        idle.as_secs()
    );

    // What nats-server costs with these streams and no operator at all, for comparison.
    env.stop_operator();
    let baseline = Duration::from_secs(60).min(idle);
    let before = support::cpu_time(nats_pid);
    tokio::time::sleep(baseline).await;
    let nats_alone = match (before, support::cpu_time(nats_pid)) {
        (Some(b), Some(a)) => 100.0 * (a - b).as_secs_f64() / baseline.as_secs_f64(),
        _ => f64::NAN,
    };
    println!(
        "scale: nats-server alone with the same streams and the operator stopped: {nats_alone:.2} % of a core over {} s",
        baseline.as_secs()
    );
    env.start_operator();

    let streams = env.broker.count_queues().await;
    let deleted = support::delete_namespace(&client, &ns_name, Duration::from_secs(1800)).await;
    let left = env.broker.count_queues().await;
    println!(
        "scale: namespace with {n} objects ({streams} streams) deleted in {}; streams left in the broker: {left}",
        deleted.map_or("more than 30 minutes".into(), |d| format!(
            "{:.1} s",
            d.as_secs_f64()
        ))
    );
    env.stop_operator();
    support::delete_lease(&client, &lease).await;
    assert!(deleted.is_some(), "the namespace was not deleted");
}
