//! Managed Brokers, whatever the engine: read the TLS CA, keep the broker's Secret, decide the
//! replica count (a scale-down that could lose data is refused), let the engine's strategy
//! build every object, apply them, connect, and read the servers' state back from the
//! StatefulSet.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};

use super::scale::{self, Decision};
use super::{Observed, probe, secret_text, secret_value};
use crate::api::Broker;
use crate::api::broker::{ManagedBroker, VolumeDeletionPolicy};
use crate::api::conditions::{self, ConditionType, Desired, Reason};
use crate::controller::apply::apply;
use crate::controller::context::Context;
use crate::controller::error::{Error, Result};
use crate::controller::refs;
use crate::engine::registry::ConnectRequest;
use crate::resources::labels::broker_labels;
use crate::resources::managed::{
    self, ManagedEngine, ManagedInput, ManagedObjects, ManagedPlan, PlanError,
};

pub async fn reconcile(obj: &Broker, ctx: &Context) -> Result<Observed> {
    let Some(spec) = &obj.spec.managed else {
        return Ok(Observed::default());
    };
    let engine = managed::for_engine(obj.spec.engine);
    let ns = obj.namespace().unwrap_or_default();
    let ca_pem = match tls_ca(ctx, &ns, engine, spec).await? {
        Ok(ca) => ca,
        Err(missing) => return Ok(Observed::unresolved(missing)),
    };
    let secret = broker_secret(obj, ctx, engine, spec).await?;
    let name = obj.name_any();
    let input = ManagedInput {
        broker: &name,
        namespace: &ns,
        spec,
        replicas: spec.replicas,
        client_namespaces: client_namespaces(obj, ctx),
        owner: obj
            .controller_owner_ref(&())
            .ok_or_else(|| Error::Malformed("the Broker has no uid".into()))?,
        secret: secret.as_ref(),
        ca_pem,
    };
    let (plan, decision) = plan_replicas(ctx, obj, engine, &input).await?;
    let sts = apply_objects(ctx, &ns, &plan.objects).await?;
    let probed = probe(ctx, &super::key(obj), &plan.connect).await;
    Ok(observed(obj, &plan, &sts, probed, &decision))
}

/// The plan for the spec's replicas, or for the current ones while a scale-down is refused.
async fn plan_replicas(
    ctx: &Context,
    obj: &Broker,
    engine: &dyn ManagedEngine,
    input: &ManagedInput<'_>,
) -> Result<(ManagedPlan, Decision)> {
    let wanted = engine.plan(input).map_err(plan_error)?;
    let sts = engine.statefulset_name(input.broker);
    let current = current_replicas(ctx, input.namespace, &sts).await?;
    let decision = decide_replicas(ctx, obj, input.spec, current, &wanted.connect).await;
    let plan = match &decision {
        Decision::Refuse { keep, .. } if *keep != input.spec.replicas => engine
            .plan(&ManagedInput {
                replicas: *keep,
                ..input.clone()
            })
            .map_err(plan_error)?,
        _ => wanted,
    };
    Ok((plan, decision))
}

/// What the pass found: the connection's verdict and the servers' state.
fn observed(
    obj: &Broker,
    plan: &ManagedPlan,
    sts: &StatefulSet,
    probed: super::Probe,
    decision: &Decision,
) -> Observed {
    let replicas = plan.objects.statefulset.spec.replicas.unwrap_or(1);
    let mut conditions = vec![refs::resolved(), probed.reachable];
    conditions.extend(server_conditions(
        sts,
        replicas,
        was_available(obj),
        decision,
    ));
    let ready = sts.status.as_ref().and_then(|s| s.ready_replicas);
    Observed {
        conditions,
        replicas: Some(replicas),
        ready_replicas: Some(ready.unwrap_or(0)),
        endpoint: Some(plan.endpoint.clone()),
        info: probed.info,
    }
}

fn plan_error(e: PlanError) -> Error {
    match e {
        PlanError::Credentials(m) => Error::Credentials(m),
        PlanError::Build { what, source } => Error::Serialize { what, source },
    }
}

/// The CA of the broker's TLS Secret, or the condition naming what is missing.
async fn tls_ca(
    ctx: &Context,
    ns: &str,
    engine: &dyn ManagedEngine,
    spec: &ManagedBroker,
) -> Result<refs::Resolved<Option<String>>> {
    let Some(name) = engine.tls_secret(spec) else {
        return Ok(Ok(None));
    };
    Ok(match secret_value(&ctx.client, ns, name, "ca.crt").await? {
        Some(ca) => Ok(Some(ca)),
        None => Err(refs::missing(
            Reason::SecretNotFound,
            format!(
                "Secret {ns}/{name} named in spec.managed.tls.secretName does not exist or lacks ca.crt"
            ),
        )),
    })
}

async fn current_replicas(ctx: &Context, ns: &str, name: &str) -> Result<Option<i32>> {
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    Ok(sets.get_opt(name).await?.and_then(|s| s.spec.replicas))
}

/// Degraded needs the Broker to have been available: Ready before, or Degraded already.
fn was_available(obj: &Broker) -> bool {
    obj.status.as_ref().is_some_and(|s| {
        conditions::is_true(&s.conditions, ConditionType::Ready)
            || conditions::is_true(&s.conditions, ConditionType::Degraded)
    })
}

/// Asks the broker about its replicated destinations only when the spec shrinks the cluster.
async fn decide_replicas(
    ctx: &Context,
    obj: &Broker,
    spec: &ManagedBroker,
    current: Option<i32>,
    conn: &ConnectRequest,
) -> Decision {
    let shrinking = current.is_some_and(|c| c > spec.replicas) && !spec.allow_unsafe_scale_down;
    let replicated = if shrinking {
        match ctx.brokers.connect(&super::key(obj), conn).await {
            Ok(c) => c.replicas().await,
            Err(e) => Err(e),
        }
    } else {
        Ok(Vec::new())
    };
    scale::decide(current, spec.replicas, spec.allow_unsafe_scale_down, || {
        replicated
    })
}

/// Ready, Progressing and Degraded from the StatefulSet's status.
fn server_conditions(
    sts: &StatefulSet,
    replicas: i32,
    was_ready: bool,
    decision: &Decision,
) -> Vec<Desired> {
    let s = sts.status.clone().unwrap_or_default();
    let generation_seen = s.observed_generation >= sts.metadata.generation;
    rollout_conditions(&s, replicas, generation_seen, was_ready, decision)
}

fn rollout_conditions(
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

/// Applies every object of the broker; returns the StatefulSet as the API server has it.
async fn apply_objects(ctx: &Context, ns: &str, o: &ManagedObjects) -> Result<StatefulSet> {
    apply(ctx, ns, &o.config_map).await?;
    for service in &o.services {
        apply(ctx, ns, service).await?;
    }
    apply(ctx, ns, &o.disruption_budget).await?;
    apply(ctx, ns, &o.network_policy).await?;
    if let Some(access) = &o.peer_access {
        apply(ctx, ns, &access.service_account).await?;
        apply(ctx, ns, &access.role).await?;
        apply(ctx, ns, &access.role_binding).await?;
    }
    apply(ctx, ns, &o.statefulset).await
}

/// Reads the broker's Secret, creating it (new keys) when it does not exist; `None` when the
/// spec needs none. The Secret is owned by the Broker only when its volumes are deleted with
/// it: with `Retain`, the keys outlive the Broker so that a new Broker of the same name can use
/// the retained data.
async fn broker_secret(
    obj: &Broker,
    ctx: &Context,
    engine: &dyn ManagedEngine,
    spec: &ManagedBroker,
) -> Result<Option<BTreeMap<String, String>>> {
    if !engine.keeps_secret(spec) {
        return Ok(None);
    }
    let ns = obj.namespace().unwrap_or_default();
    let name = engine.secret_name(&obj.name_any());
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let owner = match spec.storage.deletion_policy {
        VolumeDeletionPolicy::Delete => obj.controller_owner_ref(&()).map(|o| vec![o]),
        VolumeDeletionPolicy::Retain => None,
    };
    let secret = match api.get_opt(&name).await? {
        Some(s)
            if s.metadata
                .owner_references
                .as_ref()
                .filter(|o| !o.is_empty())
                != owner.as_ref() =>
        {
            let patch = serde_json::json!({"metadata": {"ownerReferences": owner}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await?
        }
        Some(s) => s,
        None => {
            let iat = k8s_openapi::jiff::Timestamp::now().as_second();
            let data = engine
                .new_secret(&obj.name_any(), iat)
                .map_err(plan_error)?;
            let s = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(broker_labels(&obj.name_any())),
                    owner_references: owner,
                    ..Default::default()
                },
                string_data: Some(data),
                type_: Some("Opaque".into()),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &s).await {
                Ok(created) => created,
                Err(kube::Error::Api(e)) if e.code == 409 => api.get(&name).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let keys = secret.data.iter().flat_map(|d| d.keys());
    Ok(Some(
        keys.filter_map(|k| Some((k.clone(), secret_text(&secret, k)?)))
            .collect(),
    ))
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
        let c = rollout_conditions(&status(3, 3, 3, true), 3, true, false, &Decision::Apply(3));
        assert!(find(&c, ConditionType::Ready).status);
        assert_eq!(
            find(&c, ConditionType::Progressing).reason,
            Reason::Complete
        );
        assert!(!find(&c, ConditionType::Degraded).status);
    }

    #[test]
    fn a_rollout_is_progressing_not_degraded() {
        let c = rollout_conditions(&status(2, 1, 3, false), 3, true, true, &Decision::Apply(3));
        assert!(!find(&c, ConditionType::Ready).status);
        assert_eq!(
            find(&c, ConditionType::Progressing).reason,
            Reason::RollingUpdate
        );
        assert!(!find(&c, ConditionType::Degraded).status);
    }

    #[test]
    fn a_lost_server_after_being_ready_is_degraded() {
        let c = rollout_conditions(&status(2, 3, 3, true), 3, true, true, &Decision::Apply(3));
        assert!(find(&c, ConditionType::Degraded).status);
        let first_start =
            rollout_conditions(&status(2, 3, 3, true), 3, true, false, &Decision::Apply(3));
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
        let c = rollout_conditions(&status(5, 5, 5, true), 5, true, true, &d);
        let p = find(&c, ConditionType::Progressing);
        assert_eq!((p.status, p.reason), (false, Reason::ScaleDownRefused));
        assert!(p.message.contains("orders"));
    }
}
