//! The reconciler that Queue and Topic share: both are a stream inside a Broker. One generic
//! pipeline (resolve the Broker -> validate -> build the stream spec -> sync it in the broker ->
//! status, and a deletion policy on the finalizer) with a small per-kind strategy, `StreamKind`.

pub mod cleanup;
pub mod spec;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;

use super::context::Context;
use super::driver::{Reconcile, dependents, publish, scoped_api};
use super::error::Result;
use super::refs;
use super::status::{api_for, apply_status};
use crate::api::common::{BrokerReference, DriftPolicy, StreamSettings};
use crate::api::conditions::{self, ConditionType, Desired, Reason, merge};
use crate::api::{Broker, Queue, StreamStatus, Topic};
use crate::engine::nats::connection::Connection;
use crate::engine::{Retention, StreamState, StreamSync, Streams, SyncMode};
use crate::resources::names::default_stream_name;

/// The finalizer that applies a stream's deletion policy.
pub const STREAM_FINALIZER: &str = "conveyor.dev/stream";

/// How soon a resource that waits on something outside it looks again.
const RETRY: Duration = Duration::from_secs(15);

/// What the shared stream pipeline needs to know of a kind.
pub trait StreamKind: Reconcile {
    /// Prefix of the derived stream name (`queue`, `topic`).
    const PREFIX: &'static str;
    /// How the stream retains messages.
    const RETENTION: Retention;
    fn broker_ref(&self) -> &BrokerReference;
    fn spec_stream_name(&self) -> Option<&str>;
    fn settings(&self) -> &StreamSettings;
    /// The subjects of the stream called `stream`.
    fn subjects(&self, stream: &str) -> Vec<String>;
    /// Problems the broker cannot catch (a Topic's event schemas).
    fn problems(&self) -> Vec<String>;
    fn stream_status(&self) -> Option<&StreamStatus>;
}

impl StreamKind for Queue {
    const PREFIX: &'static str = "queue";
    const RETENTION: Retention = Retention::WorkQueue;
    fn broker_ref(&self) -> &BrokerReference {
        &self.spec.broker_ref
    }
    fn spec_stream_name(&self) -> Option<&str> {
        self.spec.stream_name.as_deref()
    }
    fn settings(&self) -> &StreamSettings {
        &self.spec.stream
    }
    fn subjects(&self, stream: &str) -> Vec<String> {
        spec::queue_subjects(stream)
    }
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
    fn stream_status(&self) -> Option<&StreamStatus> {
        self.status.as_ref()
    }
}

impl StreamKind for Topic {
    const PREFIX: &'static str = "topic";
    const RETENTION: Retention = Retention::Limits;
    fn broker_ref(&self) -> &BrokerReference {
        &self.spec.broker_ref
    }
    fn spec_stream_name(&self) -> Option<&str> {
        self.spec.stream_name.as_deref()
    }
    fn settings(&self) -> &StreamSettings {
        &self.spec.stream
    }
    fn subjects(&self, stream: &str) -> Vec<String> {
        spec::topic_subjects(stream, &self.spec.event_types)
    }
    fn problems(&self) -> Vec<String> {
        spec::schema_problems(&self.spec.event_types)
    }
    fn stream_status(&self) -> Option<&StreamStatus> {
        self.status.as_ref()
    }
}

/// The broker-side name of a stream: the one recorded in status wins (it never changes), then
/// the spec's, then the derived default.
pub fn stream_name<K: StreamKind>(obj: &K) -> String {
    obj.stream_status()
        .and_then(|s| s.stream_name.clone())
        .or_else(|| obj.spec_stream_name().map(str::to_string))
        .unwrap_or_else(|| {
            default_stream_name(
                K::PREFIX,
                &obj.namespace().unwrap_or_default(),
                &obj.name_any(),
            )
        })
}

/// Whether Conveyor has created this resource's stream (or found its own) in the broker.
pub fn declared<K: StreamKind>(obj: &K) -> bool {
    obj.stream_status()
        .and_then(|s| s.declared)
        .unwrap_or(false)
}

/// The owner recorded in the stream's metadata: kind, namespace and name (not the uid, so that
/// a resource re-created after a `Retain` deletion picks its stream up again).
pub fn owner<K: StreamKind>(obj: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// The Broker's shared connection, or the condition saying why there is none.
pub fn connection(ctx: &Context, broker: &Broker) -> std::result::Result<Arc<Connection>, Desired> {
    let key = (broker.namespace().unwrap_or_default(), broker.name_any());
    let reachable = broker
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, ConditionType::Reachable));
    match (ctx.connections.get(&key), reachable) {
        (Some(conn), Some(c)) if c.status == "True" => Ok(conn),
        // Reachable, but this process has no connection yet (it just started, or took over):
        // the Broker's own reconcile is about to make one.
        (None, Some(c)) if c.status == "True" => Err(Desired::is_false(
            ConditionType::Ready,
            Reason::BrokerNotReady,
            format!("waiting for this operator's connection to Broker {}", key.1),
        )),
        (_, Some(c)) => Err(Desired::is_false(
            ConditionType::Ready,
            Reason::BrokerNotReady,
            format!("Broker {} is not reachable: {}", key.1, c.message),
        )),
        _ => Err(Desired::is_false(
            ConditionType::Ready,
            Reason::BrokerNotReady,
            format!("Broker {} has not connected yet", key.1),
        )),
    }
}

/// Whether the Broker says it is reachable although this process has no connection to it yet.
fn connecting(ctx: &Context, broker: &Broker) -> bool {
    let key = (broker.namespace().unwrap_or_default(), broker.name_any());
    let reachable = broker
        .status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, ConditionType::Reachable));
    reachable && ctx.connections.get(&key).is_none()
}

/// What one pass decided, before it becomes status.
struct Pass {
    conditions: Vec<Desired>,
    state: Option<StreamState>,
    /// When to look again; `None`: at the next resync.
    requeue: Option<Duration>,
    /// The stream is in the broker and ours.
    declared: bool,
}

impl Pass {
    fn waiting(refs: Desired, ready: Desired) -> Self {
        Self {
            conditions: vec![refs, ready],
            state: None,
            requeue: Some(RETRY),
            declared: false,
        }
    }
}

async fn apply_stream<K: StreamKind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let pass = sync_stream(&*obj, &ctx).await?;
    let old = obj.stream_status();
    let generation = obj.meta().generation;
    let prev = old.cloned().unwrap_or_default();
    let new = StreamStatus {
        observed_generation: generation,
        conditions: merge(
            old.map(|s| &s.conditions[..]).unwrap_or_default(),
            &pass.conditions,
            generation,
            Timestamp::now(),
        ),
        stream_name: Some(stream_name(&*obj)),
        messages: pass.state.map(|s| s.messages as i64).or(prev.messages),
        bytes: pass.state.map(|s| s.bytes as i64).or(prev.bytes),
        consumers: pass.state.map(|s| s.consumers as i64).or(prev.consumers),
        first_sequence: pass
            .state
            .map(|s| s.first_sequence as i64)
            .or(prev.first_sequence),
        last_sequence: pass
            .state
            .map(|s| s.last_sequence as i64)
            .or(prev.last_sequence),
        declared: if pass.declared {
            Some(true)
        } else {
            prev.declared
        },
    };
    apply_status(&api_for(&ctx.client, &*obj), &*obj, old, &new).await?;
    Ok(Action::requeue(
        pass.requeue.unwrap_or(ctx.config.stream_refresh),
    ))
}

/// Resolve -> validate -> sync, as conditions and the stream's state.
async fn sync_stream<K: StreamKind>(obj: &K, ctx: &Context) -> Result<Pass> {
    let ns = obj.namespace().unwrap_or_default();
    let broker =
        match refs::broker(&ctx.client, &ctx.config.namespaces, &ns, obj.broker_ref()).await? {
            Err(missing) => {
                let ready = missing.as_not_ready();
                return Ok(Pass::waiting(missing, ready));
            }
            Ok(b) => b,
        };
    let settings = obj.settings();
    if let Some(servers) = broker_size(&broker).filter(|n| settings.replicas > *n) {
        let msg = format!(
            "spec.replicas is {} but Broker {} has {servers} server(s)",
            settings.replicas,
            broker.name_any()
        );
        return Ok(Pass::waiting(
            refs::resolved(),
            Desired::is_false(ConditionType::Ready, Reason::InsufficientServers, msg),
        ));
    }
    if connecting(ctx, &broker) {
        // Keep the status as it is and look again in a moment, rather than report a blip.
        return Ok(Pass {
            conditions: Vec::new(),
            state: None,
            requeue: Some(Duration::from_secs(1)),
            declared: false,
        });
    }
    let conn = match connection(ctx, &broker) {
        Ok(c) => c,
        Err(why) => return Ok(Pass::waiting(refs::resolved(), why)),
    };
    let name = stream_name(obj);
    let wanted = match spec::stream_spec(
        &name,
        obj.subjects(&name),
        K::RETENTION,
        settings,
        &owner(obj),
    ) {
        Ok(w) => w,
        Err(e) => {
            return Ok(Pass::waiting(
                refs::resolved(),
                Desired::is_false(ConditionType::Ready, Reason::InvalidSpec, e),
            ));
        }
    };
    let synced_before = declared(obj);
    let repair = settings.drift_policy == DriftPolicy::Repair;
    let mode = SyncMode {
        create: repair || !synced_before,
        repair,
    };
    let outcome = match conn.ensure_stream(&wanted, mode).await {
        Ok(o) => o,
        Err(e) => {
            let msg = format!("stream {name}: {e}");
            let synced =
                Desired::is_false(ConditionType::Synced, Reason::UpdateRejected, msg.clone());
            return Ok(Pass {
                conditions: vec![
                    refs::resolved(),
                    synced,
                    Desired::is_false(ConditionType::Ready, Reason::UpdateRejected, msg),
                ],
                state: None,
                requeue: Some(RETRY),
                declared: false,
            });
        }
    };
    report(obj, ctx, &name, &outcome, synced_before).await;
    let (synced, state) = synced_condition(&name, &outcome);
    let problems = obj.problems();
    let ready = if !problems.is_empty() {
        Desired::is_false(
            ConditionType::Ready,
            Reason::InvalidEventSchema,
            problems.join("; "),
        )
    } else if synced.status || matches!(outcome, StreamSync::Drifted(..)) {
        Desired::is_true(
            ConditionType::Ready,
            Reason::StreamReady,
            format!("stream {name} is in the broker"),
        )
    } else {
        synced.as_not_ready()
    };
    let declared = matches!(
        outcome,
        StreamSync::Created(_)
            | StreamSync::Unchanged(_)
            | StreamSync::Updated(..)
            | StreamSync::Drifted(..)
    );
    Ok(Pass {
        conditions: vec![refs::resolved(), synced, ready],
        state,
        requeue: None,
        declared,
    })
}

/// The Broker's size when known: its spec for managed brokers, its report for external ones.
fn broker_size(b: &Broker) -> Option<i32> {
    b.spec
        .managed
        .as_ref()
        .map(|m| m.replicas)
        .or_else(|| b.status.as_ref().and_then(|s| s.servers))
}

fn synced_condition(name: &str, outcome: &StreamSync) -> (Desired, Option<StreamState>) {
    let t = ConditionType::Synced;
    match outcome {
        StreamSync::Created(s) | StreamSync::Unchanged(s) | StreamSync::Updated(s, _) => (
            Desired::is_true(t, Reason::InSync, format!("stream {name} matches the spec")),
            Some(*s),
        ),
        StreamSync::Drifted(s, changed) => (
            Desired::is_false(
                t,
                Reason::Drifted,
                format!(
                    "stream {name} differs from the spec in {} (driftPolicy: Report leaves it)",
                    changed.join(", ")
                ),
            ),
            Some(*s),
        ),
        StreamSync::Missing => (
            Desired::is_false(
                t,
                Reason::StreamMissing,
                format!(
                    "stream {name} was deleted outside Conveyor (driftPolicy: Report does not recreate it)"
                ),
            ),
            None,
        ),
        StreamSync::Conflict(why) => (
            Desired::is_false(
                t,
                Reason::Conflict,
                format!("{why}; Conveyor does not take it over"),
            ),
            None,
        ),
    }
}

/// Events for what the pass did to the broker, or found there. Repairs are actions and always
/// reported; lasting states (drift left alone, a conflict) only when they first appear.
async fn report<K: StreamKind>(
    obj: &K,
    ctx: &Context,
    name: &str,
    outcome: &StreamSync,
    synced_before: bool,
) {
    let before = obj
        .stream_status()
        .and_then(|s| conditions::find(&s.conditions, ConditionType::Synced))
        .map(|c| c.reason.clone());
    let first = |reason: Reason| before.as_deref() != Some(reason.as_str());
    let (kind, reason, note) = match outcome {
        StreamSync::Created(_) if synced_before => (
            EventType::Warning,
            "DriftRepaired",
            format!("stream {name} was deleted outside Conveyor and has been recreated"),
        ),
        StreamSync::Created(_) => (
            EventType::Normal,
            "StreamCreated",
            format!("created stream {name}"),
        ),
        StreamSync::Updated(_, changed) if synced_before => (
            EventType::Warning,
            "DriftRepaired",
            format!("stream {name}: set {} back to the spec", changed.join(", ")),
        ),
        StreamSync::Updated(_, changed) => (
            EventType::Normal,
            "StreamUpdated",
            format!("stream {name}: updated {}", changed.join(", ")),
        ),
        StreamSync::Drifted(_, changed) if first(Reason::Drifted) => (
            EventType::Warning,
            "DriftDetected",
            format!(
                "stream {name} differs from the spec in {}",
                changed.join(", ")
            ),
        ),
        StreamSync::Missing if first(Reason::StreamMissing) => (
            EventType::Warning,
            "DriftDetected",
            format!("stream {name} was deleted outside Conveyor"),
        ),
        StreamSync::Conflict(why) if first(Reason::Conflict) => {
            (EventType::Warning, "StreamConflict", why.clone())
        }
        _ => return,
    };
    publish(ctx, obj, kind, reason, note).await;
}

/// Re-reconciles the streams that use a Broker when the Broker changes (its connection comes
/// back, its size changes).
fn watch_brokers<K: StreamKind>(
    controller: Controller<DeserializeGuard<K>>,
    ctx: &Context,
    namespace: Option<&str>,
) -> Controller<DeserializeGuard<K>> {
    let api: Api<Broker> = scoped_api(&ctx.client, namespace);
    let store = controller.store();
    controller.watches(
        api,
        watcher::Config::default().any_semantic(),
        move |broker: Broker| {
            let (b_ns, b_name) = (broker.namespace().unwrap_or_default(), broker.name_any());
            dependents(&store, |s: &K| {
                let own = s.namespace().unwrap_or_default();
                refs::broker_key(&own, s.broker_ref()) == (b_ns.as_str(), b_name.as_str())
            })
        },
    )
}

macro_rules! stream_reconciler {
    ($kind:ty) => {
        impl Reconcile for $kind {
            const FINALIZER: Option<&'static str> = Some(STREAM_FINALIZER);
            async fn apply(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
                apply_stream(obj, ctx).await
            }
            async fn cleanup(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
                cleanup::cleanup_stream(obj, ctx).await
            }
            fn watches(
                c: Controller<DeserializeGuard<Self>>,
                ctx: &Context,
                ns: Option<&str>,
            ) -> Controller<DeserializeGuard<Self>> {
                watch_brokers(c, ctx, ns)
            }
        }
    };
}

stream_reconciler!(Queue);
stream_reconciler!(Topic);
