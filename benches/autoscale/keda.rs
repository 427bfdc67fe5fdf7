//! The autoscaling bench's peer: KEDA's keda-operator on the same consumers, with Conveyor's
//! operator stopped (see the bench's own documentation).

use std::time::{Duration, Instant};

use super::common::streams::Env;
use async_nats::jetstream;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::support::{self, create};
use super::{
    BURST, IN_FLIGHT, Replicas, consumer_of, cpu_share, drain, many_at_once, percentile, reaction,
    stream_of,
};
use futures::StreamExt;

/// KEDA on the same consumers, with Conveyor's operator stopped.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    env: &mut Env,
    js: &jetstream::Context,
    replicas: &Replicas,
    nats_pid: u32,
    monitor: &str,
    k: usize,
    trials: usize,
    slow_trials: usize,
    window: Duration,
) {
    let client = env.plane.client.clone();
    let ns = env.ns.name.clone();
    env.stop_operator();
    let cpu = cpu_share(&[nats_pid], window).await;
    println!(
        "autoscale: baseline, no autoscaler, {} s: nats-server {:.2} % of a core",
        window.as_secs(),
        cpu[0]
    );

    let dir = tempfile::TempDir::new().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/keda.sh");
    let started = std::process::Command::new(script)
        .args(["start", &dir.path().display().to_string()])
        .status()
        .unwrap();
    assert!(started.success(), "keda-operator did not start");
    let keda_pid: u32 = std::fs::read_to_string(dir.path().join("keda-operator.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let metrics_port = std::fs::read_to_string(dir.path().join("metrics.port")).unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let scaled: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource {
            group: "keda.sh".into(),
            version: "v1alpha1".into(),
            api_version: "keda.sh/v1alpha1".into(),
            kind: "ScaledObject".into(),
            plural: "scaledobjects".into(),
        },
    );
    let endpoint = monitor.trim_start_matches("http://").to_string();
    let so = |i: usize, poll: u32| {
        json!({
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": format!("so-{i:04}")},
            "spec": {
                "scaleTargetRef": {"name": format!("keda-{i:04}")},
                "pollingInterval": poll, "cooldownPeriod": 10,
                "minReplicaCount": 0, "maxReplicaCount": 10,
                "triggers": [{"type": "nats-jetstream", "metadata": {
                    "natsServerMonitoringEndpoint": endpoint, "account": "$G",
                    "stream": stream_of(env, i), "consumer": consumer_of(env, i),
                    "lagThreshold": "100", "activationLagThreshold": "0"}}]
            }
        })
    };
    futures::stream::iter(0..k)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let deployments = deployments.clone();
            let d = support::deployment_at_zero(&format!("keda-{i:04}"));
            async move { create(&deployments, d).await }
        })
        .await;
    futures::stream::iter(0..k)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let (scaled, obj) = (scaled.clone(), so(i, 1));
            async move { create(&scaled, obj).await }
        })
        .await;
    // KEDA may never get them all Ready (at a 1 s interval each /jsz answer covers every
    // consumer of the account): report how many were, and go on.
    let ready = Instant::now();
    let count_ready = || async {
        let list = scaled.list(&Default::default()).await.unwrap();
        list.items
            .iter()
            .filter(|o| {
                o.data["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .count()
    };
    let mut got = count_ready().await;
    while got < k && ready.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        got = count_ready().await;
    }
    println!(
        "autoscale: KEDA: {got} of {k} ScaledObjects Ready {:.1} s after applying",
        ready.elapsed().as_secs_f64()
    );
    let keda_workload = |i: usize| format!("keda-{i:04}");
    for (poll, trials) in [(1u32, trials), (30, slow_trials)] {
        if poll == 30 {
            futures::stream::iter(0..k)
                .for_each_concurrent(IN_FLIGHT, |i| {
                    let scaled = scaled.clone();
                    async move {
                        let _ = scaled
                            .patch(
                                &format!("so-{i:04}"),
                                &PatchParams::default(),
                                &Patch::Merge(json!({"spec": {"pollingInterval": 30}})),
                            )
                            .await;
                    }
                })
                .await;
            tokio::time::sleep(Duration::from_secs(20)).await;
        } else {
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
        let jsz = varz_jsz_requests(monitor);
        let cpu = cpu_share(&[nats_pid, keda_pid], window).await;
        let jsz = (varz_jsz_requests(monitor) - jsz) / window.as_secs_f64();
        println!(
            "autoscale: KEDA, {k} idle ScaledObjects at pollingInterval {poll} s, {} s: nats-server {:.2} % of a core, keda-operator {:.2} %; {jsz:.1} /jsz requests/s",
            window.as_secs(),
            cpu[0],
            cpu[1]
        );
        if poll == 1 && k >= 100 {
            match many_at_once(
                env,
                js,
                replicas,
                &keda_workload,
                100,
                Duration::from_secs(120),
            )
            .await
            {
                Ok(s) => println!(
                    "autoscale: KEDA (pollingInterval 1 s), one event to each of 100 at once: all scaled {s:.3} s after the last acknowledgement"
                ),
                Err(got) => println!(
                    "autoscale: KEDA (pollingInterval 1 s), one event to each of 100 at once: {got} of 100 scaled within 120 s"
                ),
            }
            let consumers: Vec<_> = (0..100)
                .map(|i| (stream_of(env, i), consumer_of(env, i)))
                .collect();
            drain(js, &consumers).await;
        }
        if trials > 0 {
            let (lat, values, _) = reaction(
                env,
                js,
                replicas,
                keda_workload,
                k,
                trials,
                BURST,
                Duration::from_secs(120),
            )
            .await;
            println!(
                "autoscale: KEDA reaction (pollingInterval {poll} s), {trials} trials of {BURST} events at zero: p50 {:.3} s, p99 {:.3} s, max {:.3} s; went to {:?} replicas",
                percentile(&lat, 50.0),
                percentile(&lat, 99.0),
                lat.last().copied().unwrap_or(f64::NAN),
                values
                    .iter()
                    .copied()
                    .collect::<std::collections::BTreeSet<_>>()
            );
        }
    }
    println!(
        "autoscale: keda-operator resident memory {}",
        support::resident(keda_pid)
    );
    let _ = metrics_port;
    // ScaledObjects carry KEDA's finalizer: deleted while it runs, then it stops.
    let _ = scaled
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await;
    let gone = Instant::now();
    while gone.elapsed() < Duration::from_secs(300) {
        if scaled
            .list(&Default::default())
            .await
            .map(|l| l.items.is_empty())
            .unwrap_or(false)
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = std::process::Command::new(script)
        .args(["stop", &dir.path().display().to_string()])
        .status();
    env.start_operator();
}

fn varz_jsz_requests(monitor: &str) -> f64 {
    let Ok(out) = std::process::Command::new("curl")
        .args(["-fsS", &format!("{monitor}/varz")])
        .output()
    else {
        return f64::NAN;
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["http_req_stats"]["/jsz"].as_f64().unwrap_or(0.0)
}
