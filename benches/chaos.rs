//! Chaos: `CONVEYOR_CHAOS_TRIALS` (20) trials, each applying `CONVEYOR_CHAOS_OBJECTS` (1,000)
//! Queues and Topics on a NATS Broker of its own while the operator, run under a restart loop
//! as a Deployment would run it (same identity, restarted a second after it dies), is
//! SIGKILLed at a random moment. Every second trial also restarts the API server or stops the
//! broker for 10 s, at another random moment. A trial converges when every object is Ready,
//! the broker holds exactly the expected streams, and deleting the namespace completes and
//! leaves none. Prints each trial and converged/total with the times; fails if any trial did
//! not converge.
//!
//! Run with `hack/chaos.sh` (it starts the local plane if needed). Under `cargo test` (the test
//! suite) it makes a smoke run instead: one trial of 50 objects.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::broker::{EngineKind, TestBroker};
use common::streams::Env;
use futures::TryStreamExt;

/// How long a trial may take to converge before it counts as failed.
const CONVERGE_LIMIT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disruption {
    None,
    ApiServerRestart,
    BrokerStop,
}

struct Outcome {
    converged: bool,
    converge: Duration,
    deleted: Option<Duration>,
    exits: u32,
}

fn main() {
    support::block_on(run());
}

async fn run() {
    let trials = support::setting("CONVEYOR_CHAOS_TRIALS", 20, 1);
    let objects = support::setting("CONVEYOR_CHAOS_OBJECTS", 1000, 50) as usize;
    let mut rng = support::Rng::new();
    let mut outcomes = Vec::new();
    for i in 0..trials {
        let disruption = match i % 4 {
            1 => Disruption::ApiServerRestart,
            3 => Disruption::BrokerStop,
            _ => Disruption::None,
        };
        let Some(o) = trial(i, objects, disruption, &mut rng).await else {
            return;
        };
        println!(
            "chaos: trial {:2} ({disruption:?}): {} in {:.1} s, operator killed/exited {} time(s), namespace deleted {}",
            i + 1,
            if o.converged {
                "converged"
            } else {
                "DID NOT CONVERGE"
            },
            o.converge.as_secs_f64(),
            o.exits,
            o.deleted
                .map_or("never".into(), |d| format!("in {:.1} s", d.as_secs_f64())),
        );
        outcomes.push(o);
    }
    let converged = outcomes.iter().filter(|o| o.converged).count();
    println!(
        "chaos: {converged}/{} trials converged ({objects} Queues and Topics each); time to converge after the last object was applied: {}; namespace deletion: {}",
        outcomes.len(),
        support::spread(
            outcomes
                .iter()
                .filter(|o| o.converged)
                .map(|o| o.converge)
                .collect()
        ),
        support::spread(outcomes.iter().filter_map(|o| o.deleted).collect()),
    );
    assert_eq!(converged, outcomes.len(), "every trial must converge");
}

/// The streams the broker holds.
async fn stream_names(broker: &TestBroker) -> Option<BTreeSet<String>> {
    let TestBroker::Nats { js, .. } = broker else {
        unreachable!("the chaos bench runs on NATS")
    };
    js.stream_names().try_collect().await.ok()
}

fn restart_api_server() {
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new(format!("{root}/hack/cluster.sh"))
        .args(["restart", "kube-apiserver"])
        .status()
        .expect("running hack/cluster.sh restart");
    assert!(status.success(), "restarting the API server failed");
}

async fn trial(
    i: u64,
    objects: usize,
    disruption: Disruption,
    rng: &mut support::Rng,
) -> Option<Outcome> {
    let plane = common::plane().await?;
    let client = plane.client.clone();
    let ns = common::TestNamespace::create(&plane, &format!("chaos-{i}")).await;
    let ns_name = ns.name.clone();
    let lease = format!("conveyor-chaos-{}", std::process::id());
    let args = support::operator_args(&lease);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = Env::start(EngineKind::Nats, "chaos", plane, ns, &args).await?;
    let expected: BTreeSet<String> = (0..objects)
        .map(|j| {
            let kind = if j % 2 == 0 { "queue" } else { "topic" };
            env.name_in_broker(kind, &support::object_name(j))
        })
        .collect();

    let start = Instant::now();
    let kill_at = Duration::from_millis(rng.below(8_000));
    let disrupt_at = Duration::from_millis(rng.below(8_000));
    let mut killed = false;
    let mut disrupted = disruption == Disruption::None;
    let mut restore_broker_at: Option<Instant> = None;
    let mut died_at: Option<Instant> = None;
    let mut exits = 0;
    let apply = {
        let (client, ns) = (client.clone(), ns_name.clone());
        tokio::spawn(async move { support::create_objects(&client, &ns, objects).await })
    };
    let mut applied_at: Option<Instant> = None;
    let converged = loop {
        if applied_at.is_none() && apply.is_finished() {
            applied_at = Some(Instant::now());
        }
        if !killed && start.elapsed() >= kill_at {
            // It may have died already (a restarted API server can cost it its lease).
            if let Some(op) = env.op.as_mut() {
                let _ = op.child.kill();
                // Reaped at once, so that the restart loop below sees it dead in this round.
                let _ = op.child.wait();
            }
            killed = true;
        }
        if !disrupted && start.elapsed() >= disrupt_at {
            disrupted = true;
            match disruption {
                Disruption::ApiServerRestart => {
                    tokio::task::spawn_blocking(restart_api_server).await.ok();
                }
                Disruption::BrokerStop => {
                    env.broker.cut().await;
                    restore_broker_at = Some(Instant::now() + Duration::from_secs(10));
                }
                Disruption::None => {}
            }
        }
        if restore_broker_at.is_some_and(|t| Instant::now() >= t) {
            env.broker.restore().await;
            restore_broker_at = None;
        }
        // The restart loop: a dead operator is started again a second later.
        let dead = env
            .op
            .as_mut()
            .is_none_or(|op| op.child.try_wait().ok().flatten().is_some());
        match (dead, died_at) {
            (true, None) => {
                exits += 1;
                died_at = Some(Instant::now());
            }
            (true, Some(t)) if t.elapsed() >= Duration::from_secs(1) => {
                env.start_operator();
                died_at = None;
            }
            _ => {}
        }
        // A trial converges after its kill and its disruption, never before them.
        if let Some(applied) = applied_at
            && killed
            && disrupted
            && restore_broker_at.is_none()
            && died_at.is_none()
        {
            let ready = support::count_ready(&client, &ns_name).await;
            if ready == Some(objects) && stream_names(&env.broker).await.as_ref() == Some(&expected)
            {
                break Some(applied.elapsed());
            }
            if applied.elapsed() > CONVERGE_LIMIT {
                let streams = stream_names(&env.broker).await.map(|s| s.len());
                eprintln!(
                    "chaos: trial {} stuck: {ready:?}/{objects} Ready, broker holds {streams:?} streams",
                    i + 1
                );
                break None;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let deleted = support::delete_namespace(&client, &ns_name, CONVERGE_LIMIT).await;
    let left = stream_names(&env.broker).await.map(|s| s.len());
    if let Some(mut op) = env.op.take() {
        let _ = op.child.kill();
        let _ = op.child.wait();
    }
    support::delete_lease(&client, &lease).await;
    if left != Some(0) {
        eprintln!(
            "chaos: trial {}: {left:?} streams left after the namespace was deleted",
            i + 1
        );
    }
    Some(Outcome {
        converged: converged.is_some() && deleted.is_some() && left == Some(0),
        converge: converged.unwrap_or(CONVERGE_LIMIT),
        deleted,
        exits,
    })
}
