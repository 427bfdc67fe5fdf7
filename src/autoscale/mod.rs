//! The autoscaler: on the leader, in a loop of its own (not the reconcile's resync), every
//! `TICK` it observes each Broker's consumers in batches (`observe`), runs the pure policy
//! (`policy`) for each subscription whose figures are fresh, writes a workload's `scale`
//! subresource when the replicas change, and reports figures, replicas and the `Scaling`
//! condition in status under a field manager of its own.
//!
//! Subscriptions and Deployments come from watches of their own (Deployments stripped to
//! what scaling needs); nothing here asks the API server per tick.

pub mod policy;
pub mod schedule;
pub mod target;

mod observe;
mod tracked;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::future::join_all;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::api::{EventSubscription, EventSubscriptionStatus};
use crate::controller::context::Context;
use crate::controller::driver::{lean, scoped_api};
use crate::metrics::DirectionLabel;
use observe::{Observed, Watched};
use target::{Key, Target};
use tracked::{Report, Tracked};

/// The field manager of the autoscaler's scale and status writes.
pub const FIELD_MANAGER: &str = "conveyor.dev/autoscaler";

/// Between observations.
pub const TICK: Duration = Duration::from_millis(250);

/// Scale and status writes in flight at once.
const PARALLEL_WRITES: usize = 64;

/// The watched subscriptions and Deployments of one scope.
struct Scope {
    subscriptions: Store<DeserializeGuard<EventSubscription>>,
    deployments: Store<Deployment>,
}

/// Runs the autoscaler until the task is aborted. `client` is its own, so that a burst of
/// scale writes does not wait behind the reconcilers' requests.
pub async fn run(ctx: Arc<Context>, client: Client) {
    let mut scopes = Vec::new();
    for ns in ctx.config.scopes() {
        scopes.push(watch(&client, ns));
    }
    for s in &scopes {
        let _ = s.subscriptions.wait_until_ready().await;
        let _ = s.deployments.wait_until_ready().await;
    }
    tracing::info!("autoscaler started");
    let mut scaler = Autoscaler::default();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        scaler.tick(&ctx, &client, &scopes).boxed().await;
    }
}

/// Starts the watches of one scope; they run as long as the process.
fn watch(client: &Client, ns: Option<String>) -> Scope {
    let subs: Api<DeserializeGuard<EventSubscription>> = scoped_api(client, ns.as_deref());
    let (subscriptions, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(subs, watcher::Config::default().any_semantic()).default_backoff(),
    );
    tokio::spawn(stream.for_each(|_| async {}));
    let deps: Api<Deployment> = scoped_api(client, ns.as_deref());
    let (deployments, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(deps, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(strip),
    );
    tokio::spawn(stream.for_each(|_| async {}));
    Scope {
        subscriptions,
        deployments,
    }
}

/// A Deployment reduced to its name and replicas.
fn strip(d: &mut Deployment) {
    lean(&mut d.metadata);
    d.metadata.annotations = None;
    d.metadata.labels = None;
    d.status = None;
    d.spec.template = Default::default();
    d.spec.selector = Default::default();
    d.spec.strategy = None;
}

#[derive(Default)]
struct Autoscaler {
    tracked: HashMap<Key, Tracked>,
    sources: HashMap<(crate::engine::registry::BrokerKey, String), schedule::SourceState>,
    /// The status writes under way: one batch at a time, so that one subscription's writes
    /// land in order, and off the ticks, so that a thousand of them never delay a scale write.
    writing: Option<tokio::task::JoinHandle<Vec<(Key, EventSubscriptionStatus)>>>,
}

/// One subscription's outcome of a tick, before it is written.
struct Step {
    target: Target,
    old: EventSubscriptionStatus,
    observed: Observed,
    current: u32,
    decision: policy::Decision,
}

impl Autoscaler {
    async fn tick(&mut self, ctx: &Context, client: &Client, scopes: &[Scope]) {
        self.collect_written().await;
        let now = Instant::now();
        // Every subscription with a consumer in a broker, with its workload's replicas.
        let mut targets = Vec::new();
        let mut missing_workloads = Vec::new();
        for scope in scopes {
            for guard in scope.subscriptions.state() {
                let Ok(sub) = &guard.0 else { continue };
                let Some(t) = target::target(sub) else {
                    continue;
                };
                let old = sub
                    .status
                    .as_ref()
                    .map(EventSubscriptionStatus::autoscaler_fields)
                    .unwrap_or_default();
                let key = ObjectRef::new(&t.workload).within(&t.namespace);
                match scope.deployments.get(&key) {
                    Some(d) => {
                        let cached = d.spec.replicas.unwrap_or(1);
                        let tracked = self.tracked.entry(t.key()).or_default();
                        let replicas = tracked.replicas(cached.max(0) as u32, now);
                        targets.push((t, old, replicas));
                    }
                    None => missing_workloads.push((t, old)),
                }
            }
        }
        let live: std::collections::HashSet<Key> = targets
            .iter()
            .map(|(t, _, _)| t.key())
            .chain(missing_workloads.iter().map(|(t, _)| t.key()))
            .collect();
        self.tracked.retain(|k, _| live.contains(k));

        let observed = self.observe(ctx, &targets).await;
        let mut steps = Vec::new();
        for (target, old, current) in targets {
            let Some(observed) = observed.get(&target.key()).cloned() else {
                continue;
            };
            let engine = ctx.brokers.get(&target.broker).map(|c| c.engine());
            let policy = match engine {
                Some(e) => target.policy_on(e),
                None => target.policy.clone(),
            };
            let tracked = self.tracked.entry(target.key()).or_default();
            let decision = tracked.decide(&policy, &observed, current, now);
            if matches!(observed, Observed::Unknown(_) | Observed::Missing) {
                ctx.metrics.backlog_unknown.inc();
            }
            steps.push(Step {
                target,
                old,
                observed,
                current,
                decision,
            });
        }
        let scaled = self.scale(ctx, client, &steps).await;
        if self.writing.is_some() {
            // The previous statuses are still being written; these go with a later tick.
            return;
        }
        let mut writes = Vec::new();
        for (step, scale) in steps.iter().zip(scaled) {
            let tracked = self.tracked.entry(step.target.key()).or_default();
            let old = tracked.base(&step.old);
            let (replicas, error) = match &scale {
                Some(Ok(_)) => (step.decision.replicas, None),
                Some(Err(e)) => (step.current, Some(e.as_str())),
                None => (step.current, None),
            };
            let report = Report {
                depth: tracked.depth,
                rate: tracked.rate(),
                replicas: Some(replicas),
                desired: Some(step.decision.replicas),
                scaled: tracked.last_scale.clone(),
                condition: tracked::condition(&step.target, &step.observed, replicas, error),
                generation: step.target.generation,
                old: &old,
            };
            let new = tracked::status(report);
            if let Some(w) = status_write(tracked, new, now) {
                writes.push((step.target.clone(), w));
            }
        }
        for (target, store_old) in missing_workloads {
            let tracked = self.tracked.entry(target.key()).or_default();
            let old = tracked.base(&store_old);
            let report = Report {
                depth: None,
                rate: None,
                replicas: None,
                desired: None,
                scaled: None,
                condition: tracked::no_workload(&target),
                generation: target.generation,
                old: &old,
            };
            let new = tracked::status(report);
            if let Some(w) = status_write(tracked, new, now) {
                writes.push((target, w));
            }
        }
        if !writes.is_empty() {
            let client = client.clone();
            self.writing = Some(tokio::spawn(async move {
                write_statuses(&client, writes).await
            }));
        }
    }

    /// Takes in the statuses a finished batch wrote.
    async fn collect_written(&mut self) {
        if !self.writing.as_ref().is_some_and(|h| h.is_finished()) {
            return;
        }
        let Some(handle) = self.writing.take() else {
            return;
        };
        for (key, written) in handle.await.unwrap_or_default() {
            if let Some(t) = self.tracked.get_mut(&key) {
                t.last_status = Some(written);
            }
        }
    }

    /// Observes every Broker that holds a target's consumer, concurrently.
    async fn observe(
        &mut self,
        ctx: &Context,
        targets: &[(Target, EventSubscriptionStatus, u32)],
    ) -> HashMap<Key, Observed> {
        let mut by_broker: HashMap<_, Vec<Watched<'_>>> = HashMap::new();
        for (t, _, replicas) in targets {
            by_broker
                .entry(t.broker.clone())
                .or_default()
                .push(Watched {
                    target: t,
                    replicas: *replicas,
                });
        }
        // Each Broker's observation gets the schedule of its own sources.
        let mut work = Vec::new();
        for (key, watched) in by_broker {
            let mut sources: HashMap<_, _> = self
                .sources
                .iter()
                .filter(|((b, _), _)| *b == key)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let conn = ctx.brokers.get(&key);
            let metrics = ctx.metrics.clone();
            work.push(
                async move {
                    let out = observe::broker(&key, conn, &watched, &mut sources, &metrics).await;
                    (out, sources)
                }
                .boxed(),
            );
        }
        let mut all = HashMap::new();
        for (out, sources) in join_all(work).await {
            all.extend(out);
            self.sources.extend(sources);
        }
        all
    }

    /// Writes the scale of every workload whose replicas change: done, or why the write
    /// failed, per step (`None`: no change).
    async fn scale(
        &mut self,
        ctx: &Context,
        client: &Client,
        steps: &[Step],
    ) -> Vec<Option<Result<(), String>>> {
        let writes: Vec<BoxFuture<'_, Option<Result<(), String>>>> =
            steps.iter().map(|s| scale_one(client, s).boxed()).collect();
        let results: Vec<_> = futures::stream::iter(writes)
            .buffered(PARALLEL_WRITES)
            .collect()
            .await;
        let now = Instant::now();
        for (s, r) in steps.iter().zip(&results) {
            self.record(ctx, s, r, now);
        }
        results
    }

    fn record(&mut self, ctx: &Context, s: &Step, r: &Option<Result<(), String>>, now: Instant) {
        match r {
            Some(Ok(_)) => {
                let direction = if s.decision.replicas > s.current {
                    "up"
                } else {
                    "down"
                };
                ctx.metrics
                    .scale_decisions
                    .get_or_create(&DirectionLabel { direction })
                    .inc();
                tracing::info!(
                    namespace = %s.target.namespace,
                    subscription = %s.target.name,
                    from = s.current,
                    to = s.decision.replicas,
                    reason = %s.decision.reason,
                    "scaled"
                );
                let reason = format!(
                    "{} to {}: {}",
                    s.current, s.decision.replicas, s.decision.reason
                );
                self.tracked
                    .entry(s.target.key())
                    .or_default()
                    .record_scale(s.decision.replicas, reason, now);
            }
            Some(Err(e)) => tracing::warn!(
                namespace = %s.target.namespace,
                subscription = %s.target.name,
                error = %e,
                "writing the scale failed"
            ),
            None => {}
        }
    }
}

/// Writes the step's replicas to its workload's scale when they change: done, or why the
/// write failed (`None`: no change).
async fn scale_one(client: &Client, s: &Step) -> Option<Result<(), String>> {
    let to = s.decision.replicas;
    if to == s.current || s.target.policy.paused {
        return None;
    }
    let api: Api<Deployment> = Api::namespaced(client.clone(), &s.target.namespace);
    let patch = json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": s.target.workload, "namespace": s.target.namespace},
        "spec": {"replicas": to},
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Some(
        match api
            .patch_scale(&s.target.workload, &params, &Patch::Apply(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
    )
}

/// The status to write, if any (`tracked::write_due`).
fn status_write(
    tracked: &mut Tracked,
    new: EventSubscriptionStatus,
    now: Instant,
) -> Option<EventSubscriptionStatus> {
    let since = tracked
        .status_written
        .map(|at| now.saturating_duration_since(at));
    if !tracked::write_due(tracked.last_status.as_ref(), &new, since) {
        return None;
    }
    tracked.status_written = Some(now);
    Some(new)
}

/// Writes the statuses; returns those written.
async fn write_statuses(
    client: &Client,
    writes: Vec<(Target, EventSubscriptionStatus)>,
) -> Vec<(Key, EventSubscriptionStatus)> {
    let writes = writes.into_iter().map(|(t, status)| {
        async move {
        let api: Api<EventSubscription> = Api::namespaced(client.clone(), &t.namespace);
        let patch = json!({
            "apiVersion": "conveyor.dev/v1alpha1",
            "kind": "EventSubscription",
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(&t.name, &params, &Patch::Apply(patch))
            .await
        {
            Ok(_) => Some((t.key(), status)),
            Err(e) => {
                tracing::debug!(namespace = %t.namespace, subscription = %t.name, error = %e, "status write failed");
                None
            }
        }
        }
        .boxed()
    });
    futures::stream::iter(writes)
        .buffer_unordered(PARALLEL_WRITES)
        .filter_map(|w| async move { w })
        .collect()
        .await
}
