//! A subscription's workload: the Secret with its connection settings (always), and for
//! `consumer.template` the Deployment Conveyor owns. A `workloadRef` Deployment is never
//! written here (the autoscaler writes only its scale).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Resource, ResourceExt};

use crate::api::broker::Engine;
use crate::api::conditions::{self, ConditionType, Reason};
use crate::api::{Broker, EventSubscription};
use crate::controller::apply::apply;
use crate::controller::context::Context;
use crate::controller::error::Result;
use crate::engine::consumers::dead_letter_name;
use crate::engine::nats::jwt;
use crate::engine::{BrokerConnection, ConsumerSpec, Credentials, DestinationKind, Issued, digest};
use crate::resources::consumer::{self, keys};

/// The settings a consumer needs, under the Secret's documented keys.
pub fn settings(
    sub: &EventSubscription,
    broker: &Broker,
    spec: &ConsumerSpec,
    credentials: Option<&Credentials>,
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
    if spec.dead_letter {
        m.insert(keys::DEAD_LETTER, dead_letter_name(&spec.name));
    }
    match credentials {
        Some(Credentials::UserPassword { user, password }) => {
            m.insert(keys::USERNAME, user.clone());
            m.insert(keys::PASSWORD, password.clone());
        }
        Some(Credentials::NatsCreds {
            creds,
            inbox_prefix,
            ..
        }) => {
            m.insert(keys::CREDS, creds.clone());
            m.insert(keys::INBOX_PREFIX, inbox_prefix.clone());
        }
        None => {}
    }
    m
}

/// The credentials held in the subscription's Secret, if any.
fn previous_credentials(secret: &Secret) -> Option<Credentials> {
    let data = secret.data.as_ref()?;
    let value = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    if let Some(creds) = value(keys::CREDS) {
        let user = jwt::claims(creds.lines().find(|l| l.starts_with("ey"))?)?["sub"]
            .as_str()?
            .to_string();
        return Some(Credentials::NatsCreds {
            user,
            creds,
            inbox_prefix: value(keys::INBOX_PREFIX)?,
        });
    }
    Some(Credentials::UserPassword {
        user: value(keys::USERNAME)?,
        password: value(keys::PASSWORD)?,
    })
}

/// What applying the workload came to.
pub enum Workload {
    /// In place, with the subscription's credentials (or why it has none) in its Secret.
    Applied(Issued),
    /// An object of that name exists and is not this subscription's: left alone.
    Conflict(String),
}

/// Whether `sub` is the controlling owner of `obj`.
fn controlled_by(obj: &impl Resource, sub: &EventSubscription) -> bool {
    obj.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == sub.metadata.uid.as_ref())
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
        if !controlled_by(&existing, sub) {
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

/// Applies the Secret, with the credentials the broker issues (kept from the Secret while they
/// stay valid), and for a template the Deployment, each only when it changed.
pub async fn apply_workload(
    sub: &EventSubscription,
    ctx: &Context,
    broker: &Broker,
    conn: &dyn BrokerConnection,
    spec: &ConsumerSpec,
) -> Result<Workload> {
    let ns = sub.namespace().unwrap_or_default();
    let name = sub.name_any();
    let Some(owner) = sub.controller_owner_ref(&()) else {
        return Ok(Workload::Conflict("the subscription has no uid yet".into()));
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets.get_opt(&consumer::secret_name(&name)).await?;
    // Credentials revoked when the source stopped admitting this namespace are issued anew.
    let revoked = sub
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, ConditionType::Isolated))
        .is_some_and(|c| c.reason == Reason::RefNotPermitted.as_str());
    let previous = existing
        .as_ref()
        .filter(|s| controlled_by(*s, sub) && !revoked)
        .and_then(previous_credentials);
    let issued = conn.issue_identity(spec, previous.as_ref());
    let credentials = match &issued {
        Issued::Credentials(c) => Some(c),
        Issued::Unavailable(_) => None,
    };
    let settings = settings(sub, broker, spec, credentials);
    let secret = consumer::secret(&name, &ns, owner.clone(), &settings);
    if let Err(why) = apply_owned(ctx, &ns, sub, secret, existing).await? {
        return Ok(Workload::Conflict(why));
    }
    if let Some(template) = &sub.spec.consumer.template {
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let d = consumer::deployment(&name, &ns, owner, template);
        let existing = deployments.get_opt(&name).await?;
        if let Err(why) = apply_owned(ctx, &ns, sub, d, existing).await? {
            return Ok(Workload::Conflict(why));
        }
    }
    Ok(Workload::Applied(issued))
}
