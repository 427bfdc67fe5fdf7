//! The reconciler that Queue and Topic share: both are a stream inside a Broker. One generic
//! pipeline (resolve the Broker -> status) with a small per-kind strategy, `StreamKind`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

use super::context::Context;
use super::driver::{Reconcile, dependents};
use super::error::Result;
use super::refs;
use super::status::{api_for, apply_status};
use crate::api::common::BrokerReference;
use crate::api::conditions::{self, ConditionType, Desired, Reason, merge};
use crate::api::{Broker, Queue, StreamStatus, Topic};
use crate::resources::names::default_stream_name;

/// The finalizer that guards a stream's deletion policy.
pub const STREAM_FINALIZER: &str = "conveyor.dev/stream";

/// How soon a resource whose reference is missing looks again.
const MISSING_REF_RETRY: Duration = Duration::from_secs(30);

/// What the shared stream pipeline needs to know of a kind.
pub trait StreamKind: Reconcile {
    /// Prefix of the derived stream name (`queue`, `topic`).
    const PREFIX: &'static str;
    fn broker_ref(&self) -> &BrokerReference;
    fn spec_stream_name(&self) -> Option<&str>;
    fn stream_status(&self) -> Option<&StreamStatus>;
}

impl StreamKind for Queue {
    const PREFIX: &'static str = "queue";
    fn broker_ref(&self) -> &BrokerReference {
        &self.spec.broker_ref
    }
    fn spec_stream_name(&self) -> Option<&str> {
        self.spec.stream_name.as_deref()
    }
    fn stream_status(&self) -> Option<&StreamStatus> {
        self.status.as_ref()
    }
}

impl StreamKind for Topic {
    const PREFIX: &'static str = "topic";
    fn broker_ref(&self) -> &BrokerReference {
        &self.spec.broker_ref
    }
    fn spec_stream_name(&self) -> Option<&str> {
        self.spec.stream_name.as_deref()
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

async fn apply_stream<K: StreamKind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let ns = obj.namespace().unwrap_or_default();
    let broker = refs::broker(&ctx.client, &ns, obj.broker_ref()).await?;
    let (refs_cond, ready) = match &broker {
        Err(c) => (
            c.clone(),
            Desired::is_false(ConditionType::Ready, c.reason, c.message.clone()),
        ),
        Ok(b) => (refs::resolved(), ready_for(b)),
    };
    let old = obj.stream_status();
    let generation = obj.meta().generation;
    let new = StreamStatus {
        observed_generation: generation,
        conditions: merge(
            old.map(|s| &s.conditions[..]).unwrap_or_default(),
            &[refs_cond, ready],
            generation,
            Timestamp::now(),
        ),
        stream_name: Some(stream_name(&*obj)),
        ..old.cloned().unwrap_or_default()
    };
    apply_status(&api_for(&ctx.client, &*obj), &*obj, old, &new).await?;
    Ok(Action::requeue(if broker.is_err() {
        MISSING_REF_RETRY
    } else {
        ctx.config.resync
    }))
}

fn ready_for(broker: &Broker) -> Desired {
    let conditions = broker
        .status
        .as_ref()
        .map(|s| &s.conditions[..])
        .unwrap_or_default();
    if conditions::is_true(conditions, ConditionType::Ready) {
        Desired::is_false(
            ConditionType::Ready,
            Reason::NotSupported,
            "this build of Conveyor does not declare streams in the broker yet",
        )
    } else {
        let why = conditions::find(conditions, ConditionType::Ready)
            .map(|c| c.message.as_str())
            .unwrap_or("no status yet");
        Desired::is_false(
            ConditionType::Ready,
            Reason::BrokerNotReady,
            format!("Broker {} is not Ready: {why}", broker.name_any()),
        )
    }
}

/// Nothing is declared inside the broker yet, so deleting the resource leaves nothing behind
/// whatever its deletion policy.
async fn cleanup_stream<K: StreamKind>(obj: Arc<K>, _ctx: Arc<Context>) -> Result<Action> {
    tracing::info!(kind = %K::kind(&()), name = %obj.name_any(), "no stream was declared in the broker; nothing to clean up");
    Ok(Action::await_change())
}

/// Re-reconciles the streams that use a Broker when the Broker changes.
fn watch_brokers<K: StreamKind>(
    controller: Controller<DeserializeGuard<K>>,
    ctx: &Context,
    namespace: Option<&str>,
) -> Controller<DeserializeGuard<K>> {
    let api: Api<Broker> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
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
                cleanup_stream(obj, ctx).await
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
