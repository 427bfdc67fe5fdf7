//! Pod pieces every managed broker's StatefulSet shares, whatever its engine: the image, the
//! configuration hash that rolls the pods, the `restricted` security contexts, the data volume
//! claim and its retention, and the spread across nodes and zones.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::names::fnv1a;
use crate::api::broker::{ManagedBroker, VolumeDeletionPolicy};

/// The image of a broker: the spec's `image`, else `<repository>:<version><suffix>` with the
/// spec's version or the engine's default.
pub fn image(
    spec: &ManagedBroker,
    repository: &str,
    suffix: &str,
    default_version: &str,
) -> String {
    spec.image.clone().unwrap_or_else(|| {
        let version = spec.version.as_deref().unwrap_or(default_version);
        format!("{repository}:{version}{suffix}")
    })
}

/// The hash of everything that needs a restart to take effect: the rendered configuration and
/// the TLS Secret's name.
pub fn config_hash(config: &str, spec: &ManagedBroker) -> String {
    let tls = spec
        .tls
        .as_ref()
        .map(|t| t.secret_name.as_str())
        .unwrap_or_default();
    format!("{:016x}", fnv1a(&format!("{config}\n{tls}")))
}

/// A container security context that passes the `restricted` Pod Security Standard.
pub fn restricted_container() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}
    })
}

/// A pod security context that passes the `restricted` Pod Security Standard, as `uid`.
pub fn restricted_pod(uid: i64) -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"}
    })
}

/// Whether the claims go with the StatefulSet (`storage.deletionPolicy`); never on scale-down.
pub fn claim_retention(spec: &ManagedBroker) -> Value {
    let when_deleted = match spec.storage.deletion_policy {
        VolumeDeletionPolicy::Retain => "Retain",
        VolumeDeletionPolicy::Delete => "Delete",
    };
    json!({"whenDeleted": when_deleted, "whenScaled": "Retain"})
}

/// The `data` volume claim template.
pub fn data_claim(spec: &ManagedBroker, selector: &BTreeMap<String, String>) -> Value {
    let mut claim_spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage.size}}
    });
    if let Some(class) = &spec.storage.storage_class_name {
        claim_spec["storageClassName"] = json!(class);
    }
    json!({"metadata": {"name": "data", "labels": selector}, "spec": claim_spec})
}

/// One server per node, spread across zones where the cluster has them.
pub fn spread(selector: &BTreeMap<String, String>) -> Value {
    let rule = |key: &str, when: &str| json!({"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": when, "labelSelector": {"matchLabels": selector}});
    json!([
        rule("kubernetes.io/hostname", "DoNotSchedule"),
        rule("topology.kubernetes.io/zone", "ScheduleAnyway")
    ])
}
