//! A subscription's workload: the Secret with its connection settings (always), and for
//! `consumer.template` the Deployment Conveyor owns. A `workloadRef` Deployment is only read
//! (for its replicas), never written.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::{Resource, ResourceExt};

use crate::api::broker::Engine;
use crate::api::{Broker, EventSubscription};
use crate::controller::apply::apply;
use crate::controller::context::Context;
use crate::controller::error::Result;
use crate::engine::ConsumerSpec;
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
        (keys::CONSUMER, spec.name.clone()),
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

/// Applies the Secret and, for a template, the Deployment; returns the workload's replicas
/// when it exists.
pub async fn apply_workload(
    sub: &EventSubscription,
    ctx: &Context,
    broker: &Broker,
    spec: &ConsumerSpec,
) -> Result<Option<i32>> {
    let ns = sub.namespace().unwrap_or_default();
    let name = sub.name_any();
    let Some(owner) = sub.controller_owner_ref(&()) else {
        return Ok(None);
    };
    let secret = consumer::secret(&name, &ns, owner.clone(), &settings(sub, broker, spec));
    apply(ctx, &ns, &secret).await?;
    let deployment = match (&sub.spec.consumer.template, &sub.spec.consumer.workload_ref) {
        (Some(template), _) => {
            let d = consumer::deployment(&name, &ns, owner, template);
            Some(apply(ctx, &ns, &d).await?)
        }
        (None, Some(w)) => {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
            api.get_opt(&w.name).await?
        }
        (None, None) => None,
    };
    Ok(deployment.and_then(|d| d.spec.replicas))
}
