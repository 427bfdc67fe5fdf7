//! A subscription's workload: the Secret with its connection settings (always), and for
//! `consumer.template` the Deployment Conveyor owns. A `workloadRef` Deployment is only read
//! (for its replicas), never written.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Resource, ResourceExt};

use crate::api::broker::Engine;
use crate::api::{Broker, EventSubscription};
use crate::controller::apply::apply;
use crate::controller::context::Context;
use crate::controller::error::Result;
use crate::engine::{ConsumerSpec, DestinationKind, digest};
use crate::resources::consumer::{self, keys};

/// The settings a consumer needs, under the Secret's documented keys.
pub fn settings(
    sub: &EventSubscription,
    broker: &Broker,
    spec: &ConsumerSpec,
) -> BTreeMap<&'static str, String> {
    let engine = broker.spec.engine;
    let external = broker.spec.external.as_ref();
    let urls = external
        .map(|e| e.urls.join(","))
        .or_else(|| broker.status.as_ref().and_then(|s| s.endpoint.clone()))
        .unwrap_or_default();
    let mut m = BTreeMap::from([
        (
            keys::ENGINE,
            match engine {
                Engine::Nats => "nats",
                Engine::Rabbitmq => "rabbitmq",
            }
            .to_string(),
        ),
        (keys::URLS, urls),
        (keys::SOURCE, spec.source.clone()),
        // On RabbitMQ a Queue's subscription consumes the Queue's own queue.
        (
            keys::CONSUMER,
            if engine == Engine::Rabbitmq && spec.source_kind == DestinationKind::Queue {
                spec.source.clone()
            } else {
                spec.name.clone()
            },
        ),
        (keys::EVENT_TYPES, spec.event_types.join(",")),
        (keys::MAX_ACK_PENDING, spec.max_ack_pending.to_string()),
        (
            keys::SUBSCRIPTION,
            format!("{}/{}", sub.namespace().unwrap_or_default(), sub.name_any()),
        ),
    ]);
    if engine == Engine::Rabbitmq {
        let vhost = external
            .and_then(|e| e.rabbitmq.as_ref())
            .and_then(|r| r.virtual_host.clone())
            .unwrap_or_else(|| "/".into());
        m.insert(keys::VIRTUAL_HOST, vhost);
    }
    m
}

/// What applying the workload came to.
pub enum Workload {
    /// In place; the workload's replicas when it exists.
    Applied(Option<i32>),
    /// An object of that name exists and is not this subscription's: left alone.
    Conflict(String),
}

/// The annotation holding the digest of what Conveyor last applied to an object it owns: an
/// unchanged object is not written again (no API writes while nothing changes).
const APPLIED: &str = "conveyor.dev/applied";

/// Applies `obj` unless `existing` already holds it; `Err(why)` when `existing` belongs to
/// someone else.
async fn apply_owned<K>(
    ctx: &Context,
    ns: &str,
    sub: &EventSubscription,
    mut obj: K,
    existing: Option<K>,
) -> Result<std::result::Result<K, String>>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let wanted = digest(&serde_json::to_string(&obj).unwrap_or_default()).to_string();
    if let Some(existing) = existing {
        let ours = existing
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == sub.metadata.uid.as_ref());
        if !ours {
            return Ok(Err(format!(
                "{} {ns}/{} exists and does not belong to this EventSubscription; Conveyor does not take it over",
                K::kind(&()),
                existing.name_any()
            )));
        }
        if existing.annotations().get(APPLIED) == Some(&wanted) {
            return Ok(Ok(existing));
        }
    }
    obj.annotations_mut().insert(APPLIED.into(), wanted);
    Ok(Ok(apply(ctx, ns, &obj).await?))
}

/// Applies the Secret and, for a template, the Deployment, each only when it changed.
pub async fn apply_workload(
    sub: &EventSubscription,
    ctx: &Context,
    broker: &Broker,
    spec: &ConsumerSpec,
) -> Result<Workload> {
    let ns = sub.namespace().unwrap_or_default();
    let name = sub.name_any();
    let Some(owner) = sub.controller_owner_ref(&()) else {
        return Ok(Workload::Applied(None));
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = consumer::secret(&name, &ns, owner.clone(), &settings(sub, broker, spec));
    let existing = secrets.get_opt(&consumer::secret_name(&name)).await?;
    if let Err(why) = apply_owned(ctx, &ns, sub, secret, existing).await? {
        return Ok(Workload::Conflict(why));
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let deployment = match (&sub.spec.consumer.template, &sub.spec.consumer.workload_ref) {
        (Some(template), _) => {
            let d = consumer::deployment(&name, &ns, owner, template);
            let existing = deployments.get_opt(&name).await?;
            match apply_owned(ctx, &ns, sub, d, existing).await? {
                Ok(d) => Some(d),
                Err(why) => return Ok(Workload::Conflict(why)),
            }
        }
        (None, Some(w)) => deployments.get_opt(&w.name).await?,
        (None, None) => None,
    };
    Ok(Workload::Applied(deployment.and_then(|d| d.spec.replicas)))
}
