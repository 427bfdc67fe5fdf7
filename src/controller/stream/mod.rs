//! The reconciler that Queue and Topic share: both are a destination inside a Broker, whatever
//! its engine. One generic pipeline (resolve the Broker -> check its size -> connect -> build
//! the destination spec -> sync it in the broker -> status, and a deletion policy on the
//! finalizer) with a small per-kind strategy, `StreamKind`.

pub mod cleanup;
pub mod refresh;
pub mod spec;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType as EventKind;
use kube::runtime::reflector::ObjectRef;

use super::context::Context;
use super::driver::{Reconcile, dependents, publish};
use super::error::{Error, Result};
use super::refs;
use super::status::{api_for, apply_status};
use crate::api::common::{BrokerReference, DriftPolicy, StreamSettings};
use crate::api::conditions::{self, ConditionType, Desired, Reason, merge};
use crate::api::topic::EventType;
use crate::api::{Broker, Queue, StreamStatus, Topic};
use crate::engine::{
    BrokerConnection, DestinationKind, DestinationSpec, DestinationState, SyncMode, SyncOutcome,
    Target, digest,
};
use crate::metrics::KindSource;
use crate::resources::names::default_name_in_broker;

/// The finalizer that applies a Queue's or Topic's deletion policy.
pub const STREAM_FINALIZER: &str = "conveyor.dev/stream";

/// How soon a resource that waits on something outside it looks again.
const RETRY: Duration = Duration::from_secs(15);

/// What the shared pipeline needs to know of a kind.
pub trait StreamKind: Reconcile {
    /// Queue or Topic.
    const KIND: DestinationKind;
    /// Prefix of the derived name in the broker (`queue`, `topic`).
    const PREFIX: &'static str;
    fn broker_ref(&self) -> &BrokerReference;
    fn spec_name_in_broker(&self) -> Option<&str>;
    fn settings(&self) -> &StreamSettings;
    /// The declared event types (none for a Queue).
    fn event_types(&self) -> &[EventType];
    /// Problems the broker cannot catch (a Topic's event schemas).
    fn problems(&self) -> Vec<String>;
    fn stream_status(&self) -> Option<&StreamStatus>;
}

impl StreamKind for Queue {
    const KIND: DestinationKind = DestinationKind::Queue;
    const PREFIX: &'static str = "queue";
    fn broker_ref(&self) -> &BrokerReference {
        &self.spec.broker_ref
    }
    fn spec_name_in_broker(&self) -> Option<&str> {
        self.spec.name_in_broker.as_deref()
    }
    fn settings(&self) -> &StreamSettings {
        &self.spec.stream
    }
    fn event_types(&self) -> &[EventType] {
        &[]
    }
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
    fn stream_status(&self) -> Option<&StreamStatus> {
        self.status.as_ref()
    }
}

impl StreamKind for Topic {
    const KIND: DestinationKind = DestinationKind::Topic;
    const PREFIX: &'static str = "topic";
    fn broker_ref(&self) -> &BrokerReference {
        &self.spec.broker_ref
    }
    fn spec_name_in_broker(&self) -> Option<&str> {
        self.spec.name_in_broker.as_deref()
    }
    fn settings(&self) -> &StreamSettings {
        &self.spec.stream
    }
    fn event_types(&self) -> &[EventType] {
        &self.spec.event_types
    }
    fn problems(&self) -> Vec<String> {
        spec::schema_problems(&self.spec.event_types)
    }
    fn stream_status(&self) -> Option<&StreamStatus> {
        self.status.as_ref()
    }
}

/// The name inside the broker: the one recorded in status wins (it never changes), then the
/// spec's, then the derived default.
pub fn name_in_broker<K: StreamKind>(obj: &K) -> String {
    obj.stream_status()
        .and_then(|s| s.name_in_broker.clone())
        .or_else(|| obj.spec_name_in_broker().map(str::to_string))
        .unwrap_or_else(|| {
            default_name_in_broker(
                K::PREFIX,
                &obj.namespace().unwrap_or_default(),
                &obj.name_any(),
            )
        })
}

/// Whether Conveyor has created this resource's destination (or found its own) in the broker.
pub fn declared<K: StreamKind>(obj: &K) -> bool {
    obj.stream_status()
        .and_then(|s| s.declared)
        .unwrap_or(false)
}

/// The owner recorded in the broker: kind, namespace and name (not the uid, so that a resource
/// re-created after a `Retain` deletion picks its destination up again).
pub fn owner<K: StreamKind>(obj: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// The destination a deletion or read is about.
pub fn target<K: StreamKind>(obj: &K) -> Target {
    Target {
        kind: K::KIND,
        name: name_in_broker(obj),
        owner: owner(obj),
    }
}

/// The state of a Broker's connection as seen from a resource that uses it.
pub enum Link {
    Connected(Arc<dyn BrokerConnection>),
    /// The Broker is reachable but this process has no connection yet (it just started, or
    /// took over): the Broker's own reconcile is about to make one.
    Connecting,
    /// Not usable; the condition says why.
    Down(Desired),
}

/// The Broker's shared connection, or why there is none.
pub fn link(ctx: &Context, broker: &Broker) -> Link {
    let key = (broker.namespace().unwrap_or_default(), broker.name_any());
    let reachable = broker
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, ConditionType::Reachable));
    let not_ready = |m: String| Desired::is_false(ConditionType::Ready, Reason::BrokerNotReady, m);
    match (ctx.brokers.get(&key), reachable) {
        (Some(conn), Some(c)) if conditions::is_true_condition(c) => Link::Connected(conn),
        (None, Some(c)) if conditions::is_true_condition(c) => Link::Connecting,
        (_, Some(c)) => Link::Down(not_ready(format!(
            "Broker {} is not reachable: {}",
            key.1, c.message
        ))),
        _ => Link::Down(not_ready(format!("Broker {} has not connected yet", key.1))),
    }
}

/// What one pass decided, before it becomes status.
struct Pass {
    conditions: Vec<Desired>,
    state: Option<DestinationState>,
    /// When to look again; `None`: at the next resync.
    requeue: Option<Duration>,
    /// The destination is in the broker and ours.
    declared: bool,
    /// The destination matches the spec, and the Broker listings now watch it.
    verified: bool,
    /// A broker failure: written to status, then returned so that it is counted and backs off.
    error: Option<Error>,
}

impl Pass {
    fn waiting(conditions: Vec<Desired>, requeue: Duration) -> Self {
        Self {
            conditions,
            state: None,
            requeue: Some(requeue),
            declared: false,
            verified: false,
            error: None,
        }
    }

    fn unresolved(missing: Desired) -> Self {
        let ready = missing.as_not_ready();
        Self::waiting(vec![missing, ready], RETRY)
    }

    fn not_ready(ready: Desired) -> Self {
        Self::waiting(vec![refs::resolved(), ready], RETRY)
    }
}

async fn apply_stream<K: StreamKind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let mut pass = sync_stream(&*obj, &ctx).await?;
    write_status(&*obj, &ctx, &pass).await?;
    if let Some(e) = pass.error.take() {
        return Err(e);
    }
    // A verified destination holds no timer: the Broker listing re-triggers it when its
    // figures or settings change, when its verification expires (the full check) and, while
    // the Broker cannot be listed, once per resync. Anything else looks again at the resync.
    Ok(match pass.requeue {
        Some(after) => Action::requeue(after),
        None if pass.verified => Action::await_change(),
        None => Action::requeue(ctx.config.resync),
    })
}

/// Resolve -> check size -> connect -> build -> sync, as conditions and the destination's state.
async fn sync_stream<K: StreamKind>(obj: &K, ctx: &Context) -> Result<Pass> {
    let ns = obj.namespace().unwrap_or_default();
    let broker = match refs::broker(ctx, &ns, obj.broker_ref()).await? {
        Ok(b) => b,
        Err(missing) => return Ok(Pass::unresolved(missing)),
    };
    if let Some(too_few) = insufficient_servers(obj.settings(), &broker) {
        return Ok(Pass::not_ready(too_few));
    }
    let conn = match link(ctx, &broker) {
        Link::Connected(c) => c,
        // Keep the status as it is and look again in a moment, rather than report a blip.
        Link::Connecting => return Ok(Pass::waiting(Vec::new(), Duration::from_secs(1))),
        Link::Down(why) => return Ok(Pass::not_ready(why)),
    };
    let name = name_in_broker(obj);
    let wanted = match build(obj, &name) {
        Ok(w) => w,
        Err(e) => {
            let invalid = Desired::is_false(ConditionType::Ready, Reason::InvalidSpec, e);
            return Ok(Pass::not_ready(invalid));
        }
    };
    let mode = sync_mode(obj);
    let broker_key = (broker.namespace().unwrap_or_default(), broker.name_any());
    let owner = owner(obj);
    let lookup = refresh::Lookup {
        broker: &broker_key,
        resource: (K::KIND, ns.clone(), obj.name_any()),
        name_in_broker: &name,
        owner: &owner,
        spec: digest(&(format!("{wanted:?}"), mode.create, mode.repair)),
    };
    let fresh = ctx.config.stream_refresh * 2 + Duration::from_secs(5);
    let vouched = ctx.listings.vouched(&lookup, ctx.config.full_check, fresh);
    let source = if vouched.is_some() {
        "listing"
    } else {
        "broker"
    };
    ctx.metrics
        .destination_checks
        .get_or_create(&KindSource {
            kind: K::KIND.as_str(),
            source,
        })
        .inc();
    let outcome = match vouched {
        Some(state) => SyncOutcome::Unchanged(state),
        None => match conn.ensure(&wanted, mode).await {
            Ok(o) => {
                ctx.listings.record(&lookup, &o);
                o
            }
            Err(e) => return Ok(failed(&name, e)),
        },
    };
    report(obj, ctx, &name, &outcome, declared(obj)).await;
    Ok(synced(obj, &name, &outcome, conn.unsupported(&wanted)))
}

/// `Ready=False InsufficientServers` when the spec asks for more replicas than the Broker has
/// servers (its spec for managed brokers, its report for external ones).
fn insufficient_servers(settings: &StreamSettings, b: &Broker) -> Option<Desired> {
    let servers = b
        .spec
        .managed
        .as_ref()
        .map(|m| m.replicas)
        .or_else(|| b.status.as_ref().and_then(|s| s.servers))?;
    (settings.replicas > servers).then(|| {
        Desired::is_false(
            ConditionType::Ready,
            Reason::InsufficientServers,
            format!(
                "spec.replicas is {} but Broker {} has {servers} server(s)",
                settings.replicas,
                b.name_any()
            ),
        )
    })
}

fn build<K: StreamKind>(obj: &K, name: &str) -> std::result::Result<DestinationSpec, String> {
    spec::destination_spec(
        K::KIND,
        name,
        obj.event_types(),
        obj.settings(),
        &owner(obj),
    )
}

/// Create when repairing or never declared before; repair only under `driftPolicy: Repair`.
fn sync_mode<K: StreamKind>(obj: &K) -> SyncMode {
    let repair = obj.settings().drift_policy == DriftPolicy::Repair;
    SyncMode {
        create: repair || !declared(obj),
        repair,
    }
}

/// A broker request that failed: conditions that say so, and the error for backoff.
fn failed(name: &str, e: crate::engine::EngineError) -> Pass {
    let msg = format!("{name}: {e}");
    Pass {
        conditions: vec![
            refs::resolved(),
            Desired::is_false(ConditionType::Synced, Reason::UpdateRejected, msg.clone()),
            Desired::is_false(ConditionType::Ready, Reason::UpdateRejected, msg),
        ],
        state: None,
        requeue: None,
        declared: false,
        verified: false,
        error: Some(Error::Engine(e)),
    }
}

/// The conditions after a sync that reached the broker.
fn synced<K: StreamKind>(
    obj: &K,
    name: &str,
    outcome: &SyncOutcome,
    unsupported: Vec<String>,
) -> Pass {
    let (synced, state) = synced_condition(name, outcome);
    let problems = obj.problems();
    let ready = if !problems.is_empty() {
        Desired::is_false(
            ConditionType::Ready,
            Reason::InvalidEventSchema,
            problems.join("; "),
        )
    } else if synced.status || matches!(outcome, SyncOutcome::Drifted(..)) {
        Desired::is_true(
            ConditionType::Ready,
            Reason::Declared,
            format!("{name} is in the broker"),
        )
    } else {
        synced.as_not_ready()
    };
    let supported = conditions::supported(&unsupported);
    let declared = matches!(
        outcome,
        SyncOutcome::Created(_)
            | SyncOutcome::Unchanged(_)
            | SyncOutcome::Updated(..)
            | SyncOutcome::Drifted(..)
    );
    let verified = matches!(
        outcome,
        SyncOutcome::Created(_) | SyncOutcome::Unchanged(_) | SyncOutcome::Updated(..)
    );
    Pass {
        conditions: vec![refs::resolved(), synced, ready, supported],
        state,
        requeue: None,
        declared,
        verified,
        error: None,
    }
}

async fn write_status<K: StreamKind>(obj: &K, ctx: &Context, pass: &Pass) -> Result<()> {
    let old = obj.stream_status();
    let generation = obj.meta().generation;
    let prev = old.cloned().unwrap_or_default();
    let state = pass.state;
    let figure = |f: fn(&DestinationState) -> Option<u64>, prev: Option<i64>| match state {
        Some(s) => f(&s).map(|v| v as i64),
        None => prev,
    };
    let new = StreamStatus {
        observed_generation: generation,
        conditions: merge(
            old.map(|s| &s.conditions[..]).unwrap_or_default(),
            &pass.conditions,
            generation,
            Timestamp::now(),
        ),
        name_in_broker: Some(name_in_broker(obj)),
        messages: figure(|s| Some(s.messages), prev.messages),
        bytes: figure(|s| s.bytes, prev.bytes),
        consumers: figure(|s| Some(s.consumers), prev.consumers),
        first_sequence: figure(|s| s.first_sequence, prev.first_sequence),
        last_sequence: figure(|s| s.last_sequence, prev.last_sequence),
        declared: if pass.declared {
            Some(true)
        } else {
            prev.declared
        },
    };
    apply_status(&api_for(&ctx.client, obj), obj, old, &new).await?;
    Ok(())
}

fn synced_condition(name: &str, outcome: &SyncOutcome) -> (Desired, Option<DestinationState>) {
    let t = ConditionType::Synced;
    match outcome {
        SyncOutcome::Created(s) | SyncOutcome::Unchanged(s) | SyncOutcome::Updated(s, _) => (
            Desired::is_true(t, Reason::InSync, format!("{name} matches the spec")),
            Some(*s),
        ),
        SyncOutcome::Drifted(s, changed) => (
            Desired::is_false(
                t,
                Reason::Drifted,
                format!(
                    "{name} differs from the spec in {} (driftPolicy: Report leaves it)",
                    changed.join(", ")
                ),
            ),
            Some(*s),
        ),
        SyncOutcome::Missing => (
            Desired::is_false(
                t,
                Reason::MissingInBroker,
                format!(
                    "{name} was deleted outside Conveyor (driftPolicy: Report does not recreate it)"
                ),
            ),
            None,
        ),
        SyncOutcome::Conflict(why) => (
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
    outcome: &SyncOutcome,
    synced_before: bool,
) {
    let before = obj
        .stream_status()
        .and_then(|s| conditions::find(&s.conditions, ConditionType::Synced))
        .map(|c| c.reason.clone());
    let first = |reason: Reason| before.as_deref() != Some(reason.as_str());
    let (kind, reason, note) = match outcome {
        SyncOutcome::Created(_) if synced_before => (
            EventKind::Warning,
            "DriftRepaired",
            format!("{name} was deleted outside Conveyor and has been recreated"),
        ),
        SyncOutcome::Created(_) => (
            EventKind::Normal,
            "StreamCreated",
            format!("created {name}"),
        ),
        SyncOutcome::Updated(_, changed) if synced_before => (
            EventKind::Warning,
            "DriftRepaired",
            format!("{name}: set {} back to the spec", changed.join(", ")),
        ),
        SyncOutcome::Updated(_, changed) => (
            EventKind::Normal,
            "StreamUpdated",
            format!("{name}: updated {}", changed.join(", ")),
        ),
        SyncOutcome::Drifted(_, changed) if first(Reason::Drifted) => (
            EventKind::Warning,
            "DriftDetected",
            format!("{name} differs from the spec in {}", changed.join(", ")),
        ),
        SyncOutcome::Missing if first(Reason::MissingInBroker) => (
            EventKind::Warning,
            "DriftDetected",
            format!("{name} was deleted outside Conveyor"),
        ),
        SyncOutcome::Conflict(why) if first(Reason::Conflict) => {
            (EventKind::Warning, "StreamConflict", why.clone())
        }
        _ => return,
    };
    publish(ctx, obj, kind, reason, note).await;
}

/// Re-reconciles the Queues or Topics that use a Broker when the Broker changes (its connection comes
/// back, its size changes), from the Broker cache that `refs::broker` reads; and those whose
/// destination changed in the broker, from the Broker listings.
fn watch_brokers<K: StreamKind>(
    controller: Controller<DeserializeGuard<K>>,
    ctx: &Context,
    namespace: Option<&str>,
) -> Controller<DeserializeGuard<K>> {
    let Some(changes) = ctx.broker_cache.subscribe(namespace) else {
        tracing::error!(kind = %K::kind(&()), "no Broker subscription left; Broker changes will not re-trigger");
        return controller;
    };
    let refreshed = refresh::triggers(
        ctx.listings.changes(),
        K::KIND,
        namespace.map(str::to_string),
    )
    .map(|(ns, name)| ObjectRef::new(&name).within(&ns));
    let store = controller.store();
    controller
        .reconcile_on(refreshed)
        .watches_shared_stream(changes, move |broker: Arc<Broker>| {
            let (b_ns, b_name) = (broker.namespace().unwrap_or_default(), broker.name_any());
            dependents(&store, |s: &K| {
                let own = s.namespace().unwrap_or_default();
                refs::broker_key(&own, s.broker_ref()) == (b_ns.as_str(), b_name.as_str())
            })
        })
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
