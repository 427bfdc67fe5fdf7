//! The Broker reconciler. A managed Broker's objects are built and applied (`managed`), an
//! external Broker's destination and credentials are checked (`external`); then both connect
//! through the shared per-Broker connection and report what the broker says about itself.

pub mod external;
pub mod managed;
pub mod scale;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use super::context::Context;
use super::driver::{Reconcile, scoped_api};
use super::error::Result;
use super::status::{api_for, apply_status};
use crate::api::broker::JetStreamLimits;
use crate::api::conditions::{ConditionType, Desired, Reason, merge};
use crate::api::{Broker, BrokerStatus};
use crate::engine::nats::connection::{BrokerKey, ConnectSpec};
use crate::engine::{BrokerInfo, Engine, EngineError};
use crate::resources::labels;

/// How soon a Broker that is not Ready is looked at again (connection events come sooner).
const NOT_READY_RETRY: Duration = Duration::from_secs(10);

/// What one pass found, before it becomes status.
#[derive(Debug, Default)]
pub struct Observed {
    pub conditions: Vec<Desired>,
    pub replicas: Option<i32>,
    pub ready_replicas: Option<i32>,
    pub endpoint: Option<String>,
    pub info: Option<BrokerInfo>,
}

impl Observed {
    fn ready(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == ConditionType::Ready && c.status)
    }
}

/// The namespace and name of a Broker, as the connection registry knows it.
pub fn key(obj: &Broker) -> BrokerKey {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Brokers have no finalizer: nothing outside the cluster needs undoing when one goes (its
/// objects are garbage-collected through owner references), and the connection of a deleted
/// Broker is dropped by `drop_stale_connections`.
impl Reconcile for Broker {
    async fn apply(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        let observed = if obj.spec.managed.is_some() {
            managed::reconcile(&obj, &ctx).await?
        } else {
            external::reconcile(&obj, &ctx).await?
        };
        let ready = observed.ready();
        write_status(&obj, &ctx, observed).await?;
        Ok(Action::requeue(if ready {
            ctx.config.resync
        } else {
            NOT_READY_RETRY
        }))
    }

    fn watches(
        controller: Controller<DeserializeGuard<Self>>,
        ctx: &Context,
        ns: Option<&str>,
    ) -> Controller<DeserializeGuard<Self>> {
        let sets: Api<StatefulSet> = scoped_api(&ctx.client, ns);
        let owned = watcher::Config::default().labels(&format!(
            "{}={}",
            labels::MANAGED_BY,
            labels::MANAGER
        ));
        let scope = ns.map(str::to_string);
        let changes = futures::stream::unfold(ctx.connections.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(key) => return Some((key, rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .filter(move |(ns, _)| futures::future::ready(scope.as_ref().is_none_or(|s| s == ns)))
        .map(|(ns, name)| ObjectRef::new(&name).within(&ns));
        controller.owns(sets, owned).reconcile_on(changes)
    }
}

/// Closes the connections of Brokers that no longer exist, every `period`; runs until aborted.
pub async fn drop_stale_connections(
    ctx: Arc<Context>,
    namespaces: Vec<Option<String>>,
    period: Duration,
) {
    loop {
        tokio::time::sleep(period).await;
        let mut live = std::collections::HashSet::new();
        let mut complete = true;
        for ns in &namespaces {
            let api: Api<Broker> = scoped_api(&ctx.client, ns.as_deref());
            match api.list_metadata(&Default::default()).await {
                Ok(list) => live.extend(
                    list.items
                        .iter()
                        .map(|b| (b.namespace().unwrap_or_default(), b.name_any())),
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "listing Brokers for connection cleanup failed");
                    complete = false;
                }
            }
        }
        // A partial list would close live connections: keep them all until a full one.
        if complete {
            ctx.connections.retain(|k| live.contains(k));
        }
    }
}

/// Connects (or reuses the connection) and asks the broker what it is. Returns the
/// `Reachable` condition, the `Ready` verdict of the broker itself, and what it reported.
pub async fn probe(
    ctx: &Context,
    key: &BrokerKey,
    spec: &ConnectSpec,
) -> (Desired, Result<BrokerInfo, Desired>) {
    let endpoint = spec.urls.join(", ");
    let result = match ctx.connections.connect(key, spec).await {
        Ok(conn) => conn.info().await,
        Err(e) => Err(e),
    };
    let unreachable =
        |m: String| Desired::is_false(ConditionType::Reachable, Reason::Unreachable, m);
    match result {
        Ok(info) => (
            Desired::is_true(
                ConditionType::Reachable,
                Reason::Connected,
                format!("connected to NATS {} at {endpoint}", info.version),
            ),
            Ok(info),
        ),
        Err(EngineError::JetStreamDisabled(m)) => (
            Desired::is_true(
                ConditionType::Reachable,
                Reason::Connected,
                format!("connected to {endpoint}"),
            ),
            Err(Desired::is_false(
                ConditionType::Ready,
                Reason::JetStreamDisabled,
                format!("the broker runs without JetStream: {m}"),
            )),
        ),
        Err(e) => {
            let msg = format!("cannot reach {endpoint}: {e}");
            (
                unreachable(msg.clone()),
                Err(Desired::is_false(
                    ConditionType::Ready,
                    Reason::Unreachable,
                    msg,
                )),
            )
        }
    }
}

/// The value of `key` in `secret` as text, without surrounding whitespace (values written
/// with `echo` end in a newline).
pub fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let value = secret.data.as_ref()?.get(key)?;
    Some(String::from_utf8_lossy(&value.0).trim().to_string())
}

/// Reads `key` of Secret `name` in `ns` as text; `Ok(None)` when the Secret or key is missing.
pub async fn secret_value(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
) -> Result<Option<String>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    Ok(api.get_opt(name).await?.and_then(|s| secret_text(&s, key)))
}

async fn write_status(obj: &Broker, ctx: &Context, o: Observed) -> Result<()> {
    let old = obj.status.as_ref();
    let generation = obj.metadata.generation;
    let prev = old.cloned().unwrap_or_default();
    let new = BrokerStatus {
        observed_generation: generation,
        conditions: merge(
            old.map(|s| &s.conditions[..]).unwrap_or_default(),
            &o.conditions,
            generation,
            Timestamp::now(),
        ),
        replicas: o.replicas,
        ready_replicas: o.ready_replicas,
        endpoint: o.endpoint,
        // What the broker last said about itself stays while it is unreachable.
        server_version: o
            .info
            .as_ref()
            .map(|i| i.version.clone())
            .or(prev.server_version),
        servers: o.info.as_ref().map(|i| i.servers as i32).or(prev.servers),
        cluster: o.info.as_ref().map_or(prev.cluster, |i| i.cluster.clone()),
        jet_stream: o
            .info
            .as_ref()
            .map(|i| JetStreamLimits {
                max_memory: i.limits.max_memory,
                max_storage: i.limits.max_storage,
                max_streams: i.limits.max_streams,
                max_consumers: i.limits.max_consumers,
            })
            .or(prev.jet_stream),
    };
    apply_status(&api_for(&ctx.client, obj), obj, old, &new).await?;
    Ok(())
}
