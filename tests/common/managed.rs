//! Support for managed-broker tests: volumes for the claims (a StorageClass without a
//! provisioner and pre-made PersistentVolumes, so that claims bind and the scheduler places the
//! pods), waiting for a Broker to be Ready, patching it, and checking ownership.

use std::time::Duration;

use conveyor::api::Broker;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const T: Duration = Duration::from_secs(90);

/// Waits until the Broker `events` is Ready with `n` ready servers and its StatefulSet `sts`
/// has finished rolling.
pub async fn wait_ready(brokers: &Api<Broker>, sets: &Api<StatefulSet>, sts: &str, n: i32) {
    super::wait_for(&format!("Broker Ready with {n} servers"), T, || async {
        let s = brokers.get("events").await.ok()?.status?;
        let ready = s
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let set = sets.get(sts).await.ok()?.status?;
        (ready && s.ready_replicas == Some(n) && set.current_revision == set.update_revision)
            .then_some(())
    })
    .await;
}

/// Merge-patches `spec.managed` of the Broker `events`.
pub async fn patch_managed(brokers: &Api<Broker>, managed: serde_json::Value) {
    let patch = json!({"spec": {"managed": managed}});
    brokers
        .patch("events", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// Whether `broker` is the controlling owner of the object with `meta`.
pub fn owned_by_broker(meta: &kube::api::ObjectMeta, broker: &Broker) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == broker.uid().unwrap() && o.controller == Some(true))
}

/// A StorageClass without a provisioner and enough pre-made volumes for the test's claims, so
/// that the claims bind and the scheduler places the pods. Cluster-scoped, so removed on drop.
pub struct Volumes<'a> {
    ns: &'a super::TestNamespace,
    pub class: String,
    names: Vec<String>,
}

impl<'a> Volumes<'a> {
    pub async fn create(client: &Client, ns: &'a super::TestNamespace, count: usize) -> Self {
        let class = format!("conveyor-{}", ns.name);
        let classes: Api<StorageClass> = Api::all(client.clone());
        let sc: StorageClass = serde_json::from_value(json!({
            "metadata": {"name": class},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
            "reclaimPolicy": "Retain"
        }))
        .unwrap();
        classes.create(&PostParams::default(), &sc).await.unwrap();
        let pvs: Api<PersistentVolume> = Api::all(client.clone());
        let mut names = Vec::new();
        for i in 0..count {
            let name = format!("{class}-{i}");
            let pv: PersistentVolume = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": class,
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": format!("/nonexistent/conveyor-test/{name}")}
                }
            }))
            .unwrap();
            pvs.create(&PostParams::default(), &pv).await.unwrap();
            names.push(name);
        }
        Self { ns, class, names }
    }
}

impl Drop for Volumes<'_> {
    fn drop(&mut self) {
        // Drop cannot await, and the client belongs to the test's runtime: use kubectl.
        let mut args = vec![
            "delete",
            "--wait=false",
            "--ignore-not-found",
            "persistentvolume",
        ];
        args.extend(self.names.iter().map(String::as_str));
        self.ns.kubectl(&args);
        self.ns.kubectl(&[
            "delete",
            "--wait=false",
            "--ignore-not-found",
            "storageclass",
            &self.class,
        ]);
    }
}
