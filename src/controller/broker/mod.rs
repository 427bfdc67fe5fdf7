//! The Broker reconciler, the same for every engine. A managed Broker's objects are built by
//! its engine's strategy and applied (`managed`), an external Broker's destinations and
//! credentials are checked (`external`); then both connect through the shared per-Broker
//! connection and report what the broker says about itself.

pub mod cleanup;
pub mod credentials;
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
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use super::context::Context;
use super::driver::{Reconcile, dependents, scoped_api};
use super::error::Result;
use super::status::{api_for, apply_status};
use crate::api::broker::{JetStreamLimits, NatsStatus, RabbitmqStatus};
use crate::api::common::BrokerReference;
use crate::api::conditions::{ConditionType, Desired, Reason, merge};
use crate::api::{Broker, BrokerStatus, Queue, Topic};
use crate::engine::registry::{BrokerKey, ConnectRequest};
use crate::engine::{BrokerInfo, EngineError, EngineFacts};
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
    /// A Broker whose reference (a Secret) does not resolve.
    pub fn unresolved(missing: Desired) -> Self {
        let ready = missing.as_not_ready();
        Self {
            conditions: vec![missing, ready],
            ..Default::default()
        }
    }

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

/// A Broker's own objects are garbage-collected through owner references; its finalizer
/// (`cleanup`) keeps it, and its connection, until the Queues and Topics that use it have
/// deleted what their policy says to delete in the broker.
impl Reconcile for Broker {
    const FINALIZER: Option<&'static str> = Some(cleanup::BROKER_FINALIZER);

    async fn cleanup(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        // A process that starts while the Broker is being deleted has no connection yet; an
        // external broker's is made as usual so that its users can delete their objects.
        if obj.spec.external.is_some() && ctx.brokers.get(&key(&obj)).is_none() {
            let _ = external::reconcile(&obj, &ctx).await;
        }
        cleanup::cleanup_broker(obj, ctx).await
    }

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
        let sets: Api<PartialObjectMeta<StatefulSet>> = scoped_api(&ctx.client, ns);
        let owned = watcher::Config::default().labels(&format!(
            "{}={}",
            labels::MANAGED_BY,
            labels::MANAGER
        ));
        let scope = ns.map(str::to_string);
        let changes = futures::stream::unfold(ctx.brokers.subscribe(), |mut rx| async move {
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
        let queues: Api<Queue> = scoped_api(&ctx.client, ns);
        let topics: Api<Topic> = scoped_api(&ctx.client, ns);
        // Only the owner references of the StatefulSets are read: a metadata watch.
        let sets = watcher(sets, owned).default_backoff().touched_objects();
        // Only the Secrets held for Brokers, and only their metadata: a change (rotation,
        // deletion) re-reconciles the Brokers that read them.
        let secrets: Api<PartialObjectMeta<Secret>> = scoped_api(&ctx.client, ns);
        let held =
            watcher::Config::default().labels(&format!("{}=true", credentials::SECRET_LABEL));
        let secrets = watcher(secrets, held).default_backoff().touched_objects();
        let store = controller.store();
        controller
            .owns_stream(sets)
            .watches(queues, watcher::Config::default(), |q: Queue| {
                broker_of(&q.metadata, &q.spec.broker_ref)
            })
            .watches(topics, watcher::Config::default(), |t: Topic| {
                broker_of(&t.metadata, &t.spec.broker_ref)
            })
            .watches_stream(secrets, move |secret: PartialObjectMeta<Secret>| {
                let (ns, name) = (secret.namespace(), secret.name_any());
                dependents(&store, |b: &Broker| {
                    b.namespace() == ns && credentials::secrets_of(b).contains(&name)
                })
            })
            .reconcile_on(changes)
    }
}

/// The Broker a Queue or Topic that is being deleted uses, so that a Broker waiting in its
/// finalizer looks again as soon as they go. Other changes of Queues and Topics do not concern
/// the Broker.
fn broker_of(
    meta: &kube::api::ObjectMeta,
    r: &BrokerReference,
) -> Option<ObjectRef<DeserializeGuard<Broker>>> {
    meta.deletion_timestamp.as_ref()?;
    let ns = meta.namespace.as_deref().unwrap_or_default();
    let (b_ns, b_name) = super::refs::broker_key(ns, r);
    Some(ObjectRef::new(b_name).within(b_ns))
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
            ctx.brokers.retain(|k| live.contains(k));
        }
    }
}

/// What a probe of the broker found.
pub struct Probe {
    pub reachable: Desired,
    /// What the broker reported, when it answered.
    pub info: Option<BrokerInfo>,
    /// Why the broker itself is not Ready, if it is not.
    pub not_ready: Option<Desired>,
}

/// Connects (or reuses the connection) and asks the broker what it is.
pub async fn probe(ctx: &Context, key: &BrokerKey, req: &ConnectRequest) -> Probe {
    let endpoint = req
        .management_url
        .iter()
        .chain(&req.urls)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let result = match ctx.brokers.connect(key, req).await {
        Ok(conn) => conn.info().await,
        Err(e) => Err(e),
    };
    let product = req.engine.product();
    let reachable = |status: bool, reason: Reason, m: String| {
        Desired::new(ConditionType::Reachable, status, reason, m)
    };
    let not_ready = |reason: Reason, m: String| Desired::is_false(ConditionType::Ready, reason, m);
    let failed = |reachable: Desired, not_ready: Desired| Probe {
        reachable,
        info: None,
        not_ready: Some(not_ready),
    };
    match result {
        Ok(info) => {
            let connected = format!("connected to {product} {} at {endpoint}", info.version);
            let not_ready = match &info.facts {
                EngineFacts::RabbitMq { amqp: Err(why), .. } => Some(not_ready(
                    Reason::AmqpUnreachable,
                    format!("the management API answers but AMQP does not: {why}"),
                )),
                _ => None,
            };
            Probe {
                reachable: reachable(true, Reason::Connected, connected),
                info: Some(info),
                not_ready,
            }
        }
        Err(EngineError::MissingCapability(m)) => failed(
            reachable(true, Reason::Connected, format!("connected to {endpoint}")),
            not_ready(Reason::MissingCapability, m),
        ),
        Err(EngineError::Unauthorized(m)) => {
            let msg = format!("{endpoint} refused Conveyor's credentials: {m}");
            failed(
                reachable(false, Reason::Unauthorized, msg.clone()),
                not_ready(Reason::Unauthorized, msg),
            )
        }
        Err(e) => {
            let msg = format!("cannot reach {endpoint}: {e}");
            failed(
                reachable(false, Reason::Unreachable, msg.clone()),
                not_ready(Reason::Unreachable, msg),
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

/// What a RabbitMQ broker said about its management API and AMQP listener; when it did not
/// answer at all, the management API is reported down and the rest kept.
fn rabbitmq_status(o: &Observed, prev: Option<RabbitmqStatus>) -> Option<RabbitmqStatus> {
    match o.info.as_ref().map(|i| &i.facts) {
        Some(EngineFacts::RabbitMq {
            management_version,
            amqp,
        }) => Some(RabbitmqStatus {
            management_version: Some(management_version.clone()),
            management_api: true,
            amqp: amqp.is_ok(),
        }),
        _ => prev.map(|p| RabbitmqStatus {
            management_api: false,
            ..p
        }),
    }
}

async fn write_status(obj: &Broker, ctx: &Context, o: Observed) -> Result<()> {
    let old = obj.status.as_ref();
    let rabbitmq = rabbitmq_status(&o, old.and_then(|s| s.rabbitmq.clone()));
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
        nodes: o.info.as_ref().map_or(prev.nodes, |i| i.nodes.clone()),
        nats: match o.info.as_ref().map(|i| &i.facts) {
            Some(EngineFacts::Nats { limits: l }) => Some(NatsStatus {
                jet_stream: JetStreamLimits {
                    max_memory: l.max_memory,
                    max_storage: l.max_storage,
                    max_streams: l.max_streams,
                    max_consumers: l.max_consumers,
                },
            }),
            _ => prev.nats,
        },
        rabbitmq,
    };
    apply_status(&api_for(&ctx.client, obj), obj, old, &new).await?;
    Ok(())
}
