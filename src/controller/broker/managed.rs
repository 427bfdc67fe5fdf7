//! Managed Brokers: ensure the auth Secret, decide the replica count (a scale-down that could
//! lose data is refused), render the configuration, apply every object with server-side apply,
//! connect, and read the servers' state back from the StatefulSet.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::scale::{self, Decision};
use super::{Observed, probe, secret_value};
use crate::api::Broker;
use crate::api::broker::{Authentication, ManagedBroker, VolumeDeletionPolicy};
use crate::api::conditions::{self, ConditionType, Desired, Reason};
use crate::controller::context::{Context, FIELD_MANAGER};
use crate::controller::error::{Error, Result};
use crate::controller::refs;
use crate::engine::Engine;
use crate::engine::nats::connection::{Auth, ConnectSpec};
use crate::engine::nats::identities::{self, Identities};
use crate::resources::labels::broker_labels;
use crate::resources::nats::config::{self, AuthConfig, ConfigInput, Paths};
use crate::resources::nats::{self as objects, Names, Plan, statefulset};
use crate::resources::quantity;

pub async fn reconcile(obj: &Broker, ctx: &Context) -> Result<Observed> {
    let Some(spec) = &obj.spec.managed else {
        return Ok(Observed::default());
    };
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let names = Names::new(&name);
    let endpoint = Some(names.client_url(&ns, spec.tls.is_some()));

    let ca_pem = match &spec.tls {
        Some(tls) => match secret_value(&ctx.client, &ns, &tls.secret_name, "ca.crt").await? {
            Some(ca) => Some(ca),
            None => {
                let missing = refs::missing(
                    Reason::SecretNotFound,
                    format!(
                        "Secret {ns}/{} named in spec.managed.tls.secretName does not exist or lacks ca.crt",
                        tls.secret_name
                    ),
                );
                let ready = missing.as_not_ready();
                return Ok(Observed {
                    conditions: vec![missing, ready],
                    endpoint,
                    ..Default::default()
                });
            }
        },
        None => None,
    };
    let auth = match spec.authentication {
        Authentication::Jwt => Some(auth_material(obj, ctx, &names, spec).await?),
        Authentication::None => None,
    };
    let conn_spec = ConnectSpec {
        urls: vec![names.client_url(&ns, spec.tls.is_some())],
        auth: auth
            .as_ref()
            .map_or(Auth::None, |a| Auth::Creds(a.creds.clone())),
        ca_pem,
        // The servers are ours and advertise only their own pods.
        only_listed_urls: false,
    };

    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let current = sets
        .get_opt(&names.servers)
        .await?
        .and_then(|s| s.spec.replicas);
    let decision = decide_replicas(ctx, obj, spec, current, &conn_spec).await;
    let replicas = match &decision {
        Decision::Apply(n) => *n,
        Decision::Refuse { keep, .. } => *keep,
    };
    let plan = Plan {
        broker: &name,
        namespace: &ns,
        config: render_config(&name, &ns, &names, spec, replicas, auth.map(|a| a.config)),
        names,
        spec,
        replicas,
        client_namespaces: client_namespaces(obj, ctx),
        owner: obj
            .controller_owner_ref(&())
            .ok_or_else(|| Error::Malformed("the Broker has no uid".into()))?,
    };
    let sts = apply_objects(ctx, &plan).await?;

    let (reachable, verdict) = probe(ctx, &super::key(obj), &conn_spec).await;
    // Degraded needs the Broker to have been available: Ready before, or Degraded already.
    let was_ready = obj.status.as_ref().is_some_and(|s| {
        conditions::is_true(&s.conditions, ConditionType::Ready)
            || conditions::is_true(&s.conditions, ConditionType::Degraded)
    });
    let status = sts.status.unwrap_or_default();
    let generation_seen = status.observed_generation >= sts.metadata.generation;
    let mut conds = vec![refs::resolved(), reachable];
    conds.extend(server_conditions(
        &status,
        replicas,
        generation_seen,
        was_ready,
        &decision,
    ));
    Ok(Observed {
        conditions: conds,
        replicas: Some(replicas),
        ready_replicas: Some(status.ready_replicas.unwrap_or(0)),
        endpoint,
        info: verdict.ok(),
    })
}

/// Asks the broker about its streams only when the spec shrinks the cluster.
async fn decide_replicas(
    ctx: &Context,
    obj: &Broker,
    spec: &ManagedBroker,
    current: Option<i32>,
    conn: &ConnectSpec,
) -> Decision {
    let shrinking = current.is_some_and(|c| c > spec.replicas) && !spec.allow_unsafe_scale_down;
    let streams = if shrinking {
        match ctx.connections.connect(&super::key(obj), conn).await {
            Ok(c) => c.stream_replicas().await,
            Err(e) => Err(e),
        }
    } else {
        Ok(Vec::new())
    };
    scale::decide(current, spec.replicas, spec.allow_unsafe_scale_down, || {
        streams
    })
}

/// Ready, Progressing and Degraded from the StatefulSet's status.
fn server_conditions(
    s: &StatefulSetStatus,
    replicas: i32,
    generation_seen: bool,
    was_ready: bool,
    decision: &Decision,
) -> Vec<Desired> {
    let ready = s.ready_replicas.unwrap_or(0);
    let updated = s.updated_replicas.unwrap_or(0);
    let rolling = !generation_seen
        || s.update_revision != s.current_revision
        || updated < replicas
        || s.replicas != replicas;
    let counts = format!("{ready}/{replicas} servers ready, {updated} up to date");
    let available = ready >= replicas && !rolling;
    let mut out = vec![if available {
        Desired::is_true(ConditionType::Ready, Reason::Available, counts.clone())
    } else {
        Desired::is_false(ConditionType::Ready, Reason::NotAvailable, counts.clone())
    }];
    out.push(match decision {
        Decision::Refuse { why, .. } => Desired::is_false(
            ConditionType::Progressing,
            Reason::ScaleDownRefused,
            why.clone(),
        ),
        Decision::Apply(_) if rolling => Desired::is_true(
            ConditionType::Progressing,
            Reason::RollingUpdate,
            counts.clone(),
        ),
        Decision::Apply(_) => {
            Desired::is_false(ConditionType::Progressing, Reason::Complete, counts.clone())
        }
    });
    out.push(if was_ready && !rolling && ready < replicas {
        Desired::is_true(ConditionType::Degraded, Reason::ServersNotReady, counts)
    } else {
        Desired::is_false(ConditionType::Degraded, Reason::AllServersReady, counts)
    });
    out
}

/// The namespaces whose pods may reach the client port: the Broker's allowed namespaces and
/// the operator's own.
fn client_namespaces(obj: &Broker, ctx: &Context) -> Vec<String> {
    let mut v = obj.spec.allowed_namespaces.clone();
    v.push(ctx.config.operator_namespace.clone());
    v
}

fn render_config(
    name: &str,
    ns: &str,
    names: &Names,
    spec: &ManagedBroker,
    replicas: i32,
    auth: Option<AuthConfig>,
) -> String {
    // Leave a tenth of the volume for the filesystem and compaction.
    let store = quantity::bytes(&spec.storage.size).unwrap_or(1 << 30) / 10 * 9;
    config::render(&ConfigInput {
        cluster: name.to_string(),
        routes: (0..replicas).map(|i| names.route(ns, i)).collect(),
        client_port: config::CLIENT_PORT,
        cluster_port: config::CLUSTER_PORT,
        monitor_port: config::MONITOR_PORT,
        max_payload: spec.max_payload,
        max_file_store: store,
        tls: spec.tls.is_some(),
        auth,
        paths: Paths::default(),
    })
}

async fn apply<K>(ctx: &Context, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let mut body = serde_json::to_value(obj).map_err(|source| Error::Serialize {
        what: "object",
        source,
    })?;
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
    Ok(api
        .patch(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?)
}

fn built<T>(r: std::result::Result<T, serde_json::Error>) -> Result<T> {
    r.map_err(|source| Error::Serialize {
        what: "a managed broker object",
        source,
    })
}

/// Applies every object of the broker; returns the StatefulSet as the API server has it.
async fn apply_objects(ctx: &Context, p: &Plan<'_>) -> Result<StatefulSet> {
    let ns = p.namespace;
    apply(ctx, ns, &objects::config_map(p)).await?;
    apply(ctx, ns, &built(objects::cluster_service(p))?).await?;
    apply(ctx, ns, &built(objects::client_service(p))?).await?;
    apply(ctx, ns, &built(objects::disruption_budget(p))?).await?;
    apply(ctx, ns, &built(objects::network_policy(p))?).await?;
    apply(ctx, ns, &built(statefulset::statefulset(p))?).await
}

/// Reads the broker's auth Secret, creating it (new keys) when it does not exist. The Secret
/// is owned by the Broker only when its volumes are deleted with it: with `Retain`, the keys
/// outlive the Broker so that a new Broker of the same name can use the retained data.
async fn auth_material(
    obj: &Broker,
    ctx: &Context,
    names: &Names,
    spec: &ManagedBroker,
) -> Result<Identities> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    // Owned by the Broker (and so deleted with it) exactly when its volumes are.
    let owner = match spec.storage.deletion_policy {
        VolumeDeletionPolicy::Delete => obj.controller_owner_ref(&()).map(|o| vec![o]),
        VolumeDeletionPolicy::Retain => None,
    };
    let secret = match api.get_opt(&names.auth).await? {
        Some(s)
            if s.metadata
                .owner_references
                .as_ref()
                .filter(|o| !o.is_empty())
                != owner.as_ref() =>
        {
            let patch = serde_json::json!({"metadata": {"ownerReferences": owner}});
            api.patch(&names.auth, &PatchParams::default(), &Patch::Merge(patch))
                .await?
        }
        Some(s) => s,
        None => {
            let mut s = new_auth_secret(&obj.name_any(), &names.auth, &ns)?;
            s.metadata.owner_references = owner;
            match api.create(&PostParams::default(), &s).await {
                Ok(created) => created,
                Err(kube::Error::Api(e)) if e.code == 409 => api.get(&names.auth).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    identities::read(|key| super::secret_text(&secret, key)).map_err(|e| {
        Error::Credentials(format!(
            "Secret {ns}/{}: {e}; restore it from a backup (new keys would lock out existing clients and data)",
            names.auth
        ))
    })
}

/// A Secret holding new identities for the broker.
fn new_auth_secret(broker: &str, name: &str, ns: &str) -> Result<Secret> {
    let iat = k8s_openapi::jiff::Timestamp::now().as_second();
    let data = identities::generate(broker, iat).map_err(|e| Error::Credentials(e.to_string()))?;
    Ok(Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some(broker_labels(broker)),
            ..Default::default()
        },
        string_data: Some(data.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        type_: Some("Opaque".into()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(ready: i32, updated: i32, replicas: i32, same_revision: bool) -> StatefulSetStatus {
        StatefulSetStatus {
            replicas,
            ready_replicas: Some(ready),
            updated_replicas: Some(updated),
            current_revision: Some("a".into()),
            update_revision: Some(if same_revision { "a" } else { "b" }.into()),
            ..Default::default()
        }
    }

    fn find(c: &[Desired], t: ConditionType) -> &Desired {
        c.iter().find(|d| d.type_ == t).unwrap()
    }

    #[test]
    fn all_servers_ready_and_current_is_ready_and_complete() {
        let c = server_conditions(&status(3, 3, 3, true), 3, true, false, &Decision::Apply(3));
        assert!(find(&c, ConditionType::Ready).status);
        assert_eq!(
            find(&c, ConditionType::Progressing).reason,
            Reason::Complete
        );
        assert!(!find(&c, ConditionType::Degraded).status);
    }

    #[test]
    fn a_rollout_is_progressing_not_degraded() {
        let c = server_conditions(&status(2, 1, 3, false), 3, true, true, &Decision::Apply(3));
        assert!(!find(&c, ConditionType::Ready).status);
        assert_eq!(
            find(&c, ConditionType::Progressing).reason,
            Reason::RollingUpdate
        );
        assert!(!find(&c, ConditionType::Degraded).status);
    }

    #[test]
    fn a_lost_server_after_being_ready_is_degraded() {
        let c = server_conditions(&status(2, 3, 3, true), 3, true, true, &Decision::Apply(3));
        assert!(find(&c, ConditionType::Degraded).status);
        let first_start =
            server_conditions(&status(2, 3, 3, true), 3, true, false, &Decision::Apply(3));
        assert!(
            !find(&first_start, ConditionType::Degraded).status,
            "starting up is not degraded"
        );
    }

    #[test]
    fn a_refused_scale_down_says_why() {
        let d = Decision::Refuse {
            keep: 5,
            why: "streams orders (R5)".into(),
        };
        let c = server_conditions(&status(5, 5, 5, true), 5, true, true, &d);
        let p = find(&c, ConditionType::Progressing);
        assert_eq!((p.status, p.reason), (false, Reason::ScaleDownRefused));
        assert!(p.message.contains("orders"));
    }
}
