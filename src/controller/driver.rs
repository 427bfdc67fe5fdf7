//! The one controller driver every kind runs through: a watch guarded by `DeserializeGuard`
//! (one malformed object never stops it), the finalizer helper for kinds with broker-side
//! cleanup, metrics, Events for failures and per-object exponential backoff.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::Api;
use kube::core::{DeserializeGuard, NamespaceResourceScope};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::Context;
use super::error::{Error, Result};
use crate::metrics::{KindCategory, KindLabel, KindOutcome};

/// A watched kind of Conveyor and how to reconcile it.
pub trait Reconcile:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The finalizer that guards broker-side cleanup, for kinds that have any.
    const FINALIZER: Option<&'static str> = None;

    /// Brings the world in line with the object. Idempotent; may be interrupted and re-run.
    fn apply(obj: Arc<Self>, ctx: Arc<Context>) -> impl Future<Output = Result<Action>> + Send;

    /// Undoes what `apply` did outside the object, before the finalizer is removed.
    fn cleanup(_obj: Arc<Self>, _ctx: Arc<Context>) -> impl Future<Output = Result<Action>> + Send {
        async { Ok(Action::await_change()) }
    }

    /// Adds the watches that re-trigger this kind when objects it depends on change.
    fn watches(
        controller: Controller<DeserializeGuard<Self>>,
        _ctx: &Context,
        _namespace: Option<&str>,
    ) -> Controller<DeserializeGuard<Self>> {
        controller
    }
}

fn kind<K: Reconcile>() -> &'static str {
    // Kinds are static for derived resources; leak-free because the string is a literal behind Cow.
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(s) => s,
        std::borrow::Cow::Owned(_) => "Unknown",
    }
}

fn key<K: Reconcile>(meta: &kube::core::ObjectMeta) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

fn object_ref<K: Reconcile>(meta: &kube::core::ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

fn meta_of<K: Reconcile>(guard: &DeserializeGuard<K>) -> &kube::core::ObjectMeta {
    match &guard.0 {
        Ok(obj) => obj.meta(),
        Err(invalid) => &invalid.metadata,
    }
}

async fn reconcile<K: Reconcile>(
    guard: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let obj = match &guard.0 {
        Ok(obj) => Arc::new(obj.clone()),
        Err(invalid) => return Err(Error::Malformed(invalid.error.clone())),
    };
    let started = Instant::now();
    let result = match K::FINALIZER {
        Some(name) => {
            let api: Api<K> =
                Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
            let ctx = ctx.clone();
            finalizer(&api, name, obj, |event| async move {
                match event {
                    finalizer::Event::Apply(o) => K::apply(o, ctx).await,
                    finalizer::Event::Cleanup(o) => K::cleanup(o, ctx).await,
                }
            })
            .await
            .or_else(already_gone)
        }
        None => K::apply(obj, ctx.clone()).await,
    };
    let kind = kind::<K>();
    ctx.metrics
        .duration
        .get_or_create(&KindLabel { kind })
        .observe(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "success" } else { "error" };
    ctx.metrics
        .reconciles
        .get_or_create(&KindOutcome { kind, outcome })
        .inc();
    if result.is_ok() {
        ctx.reset_backoff(&key::<K>(meta_of(&guard)));
    }
    result
}

/// A pass that started before its object was deleted for good finds nothing to update: done.
fn already_gone(err: finalizer::Error<Error>) -> Result<Action> {
    match err {
        finalizer::Error::AddFinalizer(kube::Error::Api(s))
        | finalizer::Error::RemoveFinalizer(kube::Error::Api(s))
            if s.code == 404 =>
        {
            Ok(Action::await_change())
        }
        other => Err(from_finalizer(other)),
    }
}

fn from_finalizer(err: finalizer::Error<Error>) -> Error {
    match err {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        // The finalizer list is patched with a JSON-patch test of its previous value; a 422
        // there means another writer (a previous operator process) changed it first.
        finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => {
            Error::FinalizerRace(e)
        }
        other => Error::Finalizer(other.to_string()),
    }
}

fn error_policy<K: Reconcile>(
    guard: Arc<DeserializeGuard<K>>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let meta = meta_of(&guard);
    let kind = kind::<K>();
    let category = err.category();
    ctx.metrics
        .errors
        .get_or_create(&KindCategory { kind, category })
        .inc();
    tracing::warn!(kind, name = meta.name.as_deref(), namespace = meta.namespace.as_deref(), category, error = %err, "reconcile failed");
    let event = Event {
        type_: EventType::Warning,
        reason: if err.is_permanent() {
            "InvalidObject"
        } else {
            "ReconcileFailed"
        }
        .into(),
        note: Some(truncate(&err.to_string(), 1024)),
        action: "Reconcile".into(),
        secondary: None,
    };
    let reference = object_ref::<K>(meta);
    let events_ctx = ctx.clone();
    tokio::spawn(async move { super::events::publish(&events_ctx, &event, &reference).await });
    if err.is_permanent() {
        Action::await_change()
    } else {
        Action::requeue(ctx.next_backoff(&key::<K>(meta)))
    }
}

/// Publishes an Event about `obj`; a failure to publish is logged at warn, never fatal.
pub async fn publish<K: Reconcile>(
    ctx: &Context,
    obj: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(&note, 1024)),
        action: "Reconcile".into(),
        secondary: None,
    };
    super::events::publish(ctx, &event, &object_ref::<K>(obj.meta())).await;
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Runs the controller of `K` over `namespace` (all namespaces when `None`) until `shutdown`
/// resolves. `synced` is called once the initial list of `K` has been read.
pub async fn run<K: Reconcile>(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    synced: impl FnOnce() + Send + 'static,
) {
    let api: Api<DeserializeGuard<K>> = scoped_api(&ctx.client, namespace.as_deref());
    // Only changes of the spec (generation, which deletion also bumps) and of the finalizers
    // start a reconcile (see `changes`): a status write, including the reconciler's own, does
    // not. Counters in status (depth) are refreshed from the Broker listings instead.
    let (reader, writer) = kube::runtime::reflector::store();
    let changes = kube::runtime::watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|guard| match &mut guard.0 {
            Ok(obj) => lean(obj.meta_mut()),
            Err(invalid) => lean(&mut invalid.metadata),
        })
        .reflect(writer);
    let changes = super::changes::reconcile_triggers(changes, |g: &DeserializeGuard<K>| g.meta());
    let controller = Controller::for_stream(changes, reader).with_config(
        kube::runtime::controller::Config::default().concurrency(ctx.config.concurrency),
    );
    let store = controller.store();
    let kind = kind::<K>();
    tokio::spawn(async move {
        // The store's readiness is a oneshot that wakes only its latest waiter, and the
        // controller waits on it too, so poll again at intervals instead of waiting once.
        loop {
            match tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready()).await {
                Ok(Ok(())) => {
                    tracing::debug!(kind, "initial list read");
                    synced();
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(kind, error = %e, "the watch stopped before its initial list");
                    return;
                }
                Err(_) => continue,
            }
        }
    });
    let controller = K::watches(controller, &ctx, namespace.as_deref());
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(kind, object = %obj, "reconciled"),
                Err(e) => tracing::debug!(kind, error = %e, "controller event"),
            }
        })
        .await;
}

/// Drops what no controller reads from a cached object: `managedFields` (often the larger part
/// of a small object) and the last-applied annotation `kubectl apply` leaves.
pub fn lean(meta: &mut kube::core::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// An Api of `K` in `namespace`, or across the cluster when `None`.
pub fn scoped_api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Maps each object of `K` in `store` that `depends` on the changed object to a reconcile request.
pub fn dependents<K: Reconcile>(
    store: &kube::runtime::reflector::Store<DeserializeGuard<K>>,
    depends: impl Fn(&K) -> bool,
) -> Vec<ObjectRef<DeserializeGuard<K>>> {
    store
        .state()
        .iter()
        .filter_map(|g| {
            g.0.as_ref()
                .ok()
                .filter(|o| depends(o))
                .map(|o| (o.name_any(), o.namespace()))
        })
        .map(|(name, ns)| ObjectRef::new(&name).within(ns.as_deref().unwrap_or_default()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
