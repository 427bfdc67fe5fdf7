//! Keeping an external Broker's Secrets (credentials, CA) readable for as long as the Broker is:
//! when a namespace is deleted, its Secrets would otherwise go before the Broker's finalizer has
//! let its Queues and Topics delete their objects in the broker, and an operator that restarts
//! meanwhile could not connect to do it.
//!
//! Each Secret a Broker reads carries the finalizer `conveyor.dev/broker-secret` and the label
//! `conveyor.dev/broker-secret: "true"` (the Broker controller watches Secrets with that label
//! only). The finalizer goes when the last Broker of the namespace that reads the Secret has
//! finished its own finalizer, or when someone deletes the Secret while its Brokers stay: that
//! deletion is theirs to make, and the Broker then reports the Secret missing.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

use super::cleanup::BROKER_FINALIZER;
use crate::api::Broker;
use crate::controller::context::Context;
use crate::controller::error::Result;

/// The finalizer that keeps a Secret while a Broker needs it.
pub const SECRET_FINALIZER: &str = "conveyor.dev/broker-secret";
/// The label that marks the Secrets held for Brokers (and selects the Broker controller's watch).
pub const SECRET_LABEL: &str = "conveyor.dev/broker-secret";

/// The Secrets an external Broker reads.
pub fn secrets_of(b: &Broker) -> BTreeSet<String> {
    let Some(ext) = &b.spec.external else {
        return BTreeSet::new();
    };
    let credentials = ext.credentials_secret_ref.iter().map(|r| r.name.clone());
    let ca = ext
        .tls
        .as_ref()
        .and_then(|t| t.ca_secret_ref.as_ref())
        .map(|r| r.name.clone());
    credentials.chain(ca).collect()
}

/// The finalizer list and label of a held (`true`) or released Secret, guarded by its
/// resourceVersion.
fn patch(meta: &ObjectMeta, hold: bool) -> Patch<serde_json::Value> {
    let mut finalizers: Vec<String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != SECRET_FINALIZER)
        .cloned()
        .collect();
    if hold {
        finalizers.push(SECRET_FINALIZER.into());
    }
    let label = hold.then_some("true");
    Patch::Merge(serde_json::json!({
        "metadata": {
            "resourceVersion": meta.resource_version,
            "finalizers": finalizers,
            "labels": {SECRET_LABEL: label},
        }
    }))
}

fn holds(meta: &ObjectMeta) -> bool {
    meta.finalizers
        .iter()
        .flatten()
        .any(|f| f == SECRET_FINALIZER)
}

/// Holds every Secret the Broker reads; lets go of one that is being deleted while the Broker
/// is not. Writes only when something changes.
pub async fn hold(ctx: &Context, b: &Broker) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
    let broker_going = b.metadata.deletion_timestamp.is_some();
    for name in secrets_of(b) {
        let Some(meta) = api.get_metadata_opt(&name).await? else {
            continue;
        };
        let meta = meta.metadata;
        let wanted = broker_going || meta.deletion_timestamp.is_none();
        if holds(&meta) != wanted {
            api.patch_metadata(&name, &PatchParams::default(), &patch(&meta, wanted))
                .await?;
        }
    }
    Ok(())
}

/// Lets go of the Secrets of a Broker whose finalizer is done, except those another Broker of
/// the namespace still reads and still stands for.
pub async fn release(ctx: &Context, b: &Broker) -> Result<()> {
    let ns = b.namespace().unwrap_or_default();
    let mine = secrets_of(b);
    if mine.is_empty() {
        return Ok(());
    }
    let brokers: Api<Broker> = Api::namespaced(ctx.client.clone(), &ns);
    let others = brokers.list(&Default::default()).await?.items;
    // Another Broker still needs a Secret while it stands, and while it is being deleted
    // without a connection of this process (it must read the Secret to connect). One being
    // deleted with a connection needs it no more: were it to count, two Brokers deleted
    // together would each keep the Secret for the other.
    let needs = |o: &Broker| {
        o.name_any() != b.name_any()
            && o.finalizers().iter().any(|f| f == BROKER_FINALIZER)
            && (o.metadata.deletion_timestamp.is_none()
                || ctx.brokers.get(&super::key(o)).is_none())
    };
    let kept: BTreeSet<String> = others
        .iter()
        .filter(|o| needs(o))
        .flat_map(secrets_of)
        .collect();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    for name in mine.difference(&kept) {
        let Some(meta) = api.get_metadata_opt(name).await? else {
            continue;
        };
        if holds(&meta.metadata) {
            api.patch_metadata(name, &PatchParams::default(), &patch(&meta.metadata, false))
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holding_adds_the_finalizer_once_and_releasing_keeps_the_others() {
        let meta = ObjectMeta {
            finalizers: Some(vec!["example.com/keep".into(), SECRET_FINALIZER.into()]),
            resource_version: Some("7".into()),
            ..Default::default()
        };
        let Patch::Merge(held) = patch(&meta, true) else {
            unreachable!()
        };
        assert_eq!(
            held["metadata"]["finalizers"],
            serde_json::json!(["example.com/keep", SECRET_FINALIZER])
        );
        assert_eq!(held["metadata"]["labels"][SECRET_LABEL], "true");
        assert_eq!(held["metadata"]["resourceVersion"], "7");
        let Patch::Merge(released) = patch(&meta, false) else {
            unreachable!()
        };
        assert_eq!(
            released["metadata"]["finalizers"],
            serde_json::json!(["example.com/keep"])
        );
        assert!(released["metadata"]["labels"][SECRET_LABEL].is_null());
    }
}
