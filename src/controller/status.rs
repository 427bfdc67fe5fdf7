//! Writing status: server-side apply of the whole status under Conveyor's field manager, skipped
//! when the new status equals the old one (conditions keep their timestamps unless they change,
//! see `api::conditions::merge`, so equality means "nothing but time changed").

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::FIELD_MANAGER;
use super::error::{Error, Result};

/// Applies `new` as the status of `obj` unless it equals `old`. Returns whether it wrote.
pub async fn apply_status<K, S>(api: &Api<K>, obj: &K, old: Option<&S>, new: &S) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if old == Some(new) {
        return Ok(false);
    }
    let status = serde_json::to_value(new).map_err(|source| Error::Serialize {
        what: "status",
        source,
    })?;
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(true)
}

/// The Api of `obj`'s kind in `obj`'s namespace.
pub fn api_for<K>(client: &kube::Client, obj: &K) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
{
    Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default())
}
