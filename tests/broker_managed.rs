//! Managed Brokers on the local plane (kwok makes the servers' pods Ready without running
//! them): the objects Conveyor renders, readiness, a configuration change rolling the pods,
//! scaling up, a refused unsafe scale-down, and volumes kept after the Broker is deleted.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::managed::{Volumes, owned_by_broker, patch_managed, wait_ready};
use common::operator::Operator;
use conveyor::api::Broker;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

const T: Duration = Duration::from_secs(90);

fn managed(name: &str, class: &str, replicas: i32) -> Broker {
    serde_json::from_value(json!({
        "apiVersion": "conveyor.dev/v1alpha1", "kind": "Broker",
        "metadata": {"name": name},
        "spec": {
            "engine": "nats",
            "allowedNamespaces": ["billing"],
            "managed": {"replicas": replicas, "storage": {"size": "1Gi", "storageClassName": class}}
        }
    }))
    .unwrap()
}

async fn pods_hash(pods: &Api<Pod>) -> Vec<String> {
    let list = pods
        .list(&ListParams::default().labels("conveyor.dev/broker=events"))
        .await
        .unwrap();
    list.items
        .iter()
        .map(|p| {
            p.annotations()
                .get("conveyor.dev/config-hash")
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn managed_broker_renders_rolls_scales_and_keeps_its_volumes() {
    let (plane, ns) = setup!("broker-managed");
    // Enforce the restricted Pod Security Standard here: the servers' pods must pass it.
    ns.enforce_restricted();
    common::install_crds(&plane).await;
    let volumes = Volumes::create(&plane.client, &ns, 7).await;
    let _op = Operator::start(&plane, &ns.name, "managed");
    let c = &plane.client;
    let brokers: Api<Broker> = Api::namespaced(c.clone(), &ns.name);
    let sets: Api<StatefulSet> = Api::namespaced(c.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns.name);
    brokers
        .create(
            &PostParams::default(),
            &managed("events", &volumes.class, 3),
        )
        .await
        .unwrap();
    wait_ready(&brokers, &sets, "events-nats", 3).await;
    let broker = brokers.get("events").await.unwrap();

    // The StatefulSet: stable, clustered, restricted, with retained volumes.
    let sts = sets.get("events-nats").await.unwrap();
    assert!(owned_by_broker(&sts.metadata, &broker));
    let spec = &sts.spec;
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("events-nats-cluster"));
    let retention = spec
        .persistent_volume_claim_retention_policy
        .clone()
        .unwrap();
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
    let pod = spec.template.spec.clone().unwrap();
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("nats:2.15.3-alpine"));
    let sc = container.security_context.clone().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    let probe = container.readiness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!(probe.path.as_deref(), Some("/healthz?js-enabled-only=true"));
    assert!(
        pod.topology_spread_constraints
            .unwrap()
            .iter()
            .any(|t| t.topology_key == "kubernetes.io/hostname")
    );
    let claim = &spec.volume_claim_templates.clone().unwrap()[0];
    assert_eq!(
        claim.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some(volumes.class.as_str())
    );

    // The configuration clusters the three servers with JetStream and decentralized auth.
    let cm: Api<ConfigMap> = Api::namespaced(c.clone(), &ns.name);
    let conf = cm.get("events-nats-config").await.unwrap().data.unwrap()["nats.conf"].clone();
    for i in 0..3 {
        assert!(
            conf.contains(&format!(
                "nats://events-nats-{i}.events-nats-cluster.{}.svc:6222",
                ns.name
            )),
            "{conf}"
        );
    }
    assert!(
        conf.contains("jetstream {") && conf.contains("operator: \"eyJ"),
        "{conf}"
    );

    // The keys live in a Secret that outlives the Broker (its volumes are retained).
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns.name);
    let auth = secrets.get("events-nats-auth").await.unwrap();
    let keys: Vec<&String> = auth.data.as_ref().unwrap().keys().collect();
    for k in [
        "operator.seed",
        "account.seed",
        "account.jwt",
        "conveyor.creds",
    ] {
        assert!(keys.iter().any(|x| *x == k), "{k} in {keys:?}");
    }
    assert!(auth.metadata.owner_references.is_none());
    for (key, value) in auth.data.as_ref().unwrap() {
        let value = String::from_utf8_lossy(&value.0);
        if key.ends_with(".seed") {
            assert!(
                !conf.contains(value.trim()),
                "the seed {key} must not appear in the ConfigMap"
            );
        }
    }

    // Services, budget and network policy.
    let svcs: Api<Service> = Api::namespaced(c.clone(), &ns.name);
    let headless = svcs.get("events-nats-cluster").await.unwrap().spec.unwrap();
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert_eq!(headless.publish_not_ready_addresses, Some(true));
    assert!(svcs.get("events-nats").await.is_ok());
    let pdb = Api::<PodDisruptionBudget>::namespaced(c.clone(), &ns.name)
        .get("events-nats")
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(pdb.spec.unwrap().max_unavailable).unwrap(),
        json!(1)
    );
    let np = Api::<NetworkPolicy>::namespaced(c.clone(), &ns.name)
        .get("events-nats")
        .await
        .unwrap();
    let npv = serde_json::to_value(&np).unwrap();
    let allowed =
        &npv["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"];
    assert_eq!(allowed, &json!(["billing", "conveyor-system", ns.name]));

    // Status: the endpoint, and an honest Reachable=False (no kubelet runs the servers here).
    let status = broker.status.clone().unwrap();
    assert_eq!(
        status.endpoint,
        Some(format!("nats://events-nats.{}.svc:4222", ns.name))
    );
    let (reachable, reason, _) = common::condition(&brokers, "events", "Reachable")
        .await
        .unwrap();
    assert_eq!(
        (reachable.as_str(), reason.as_str()),
        ("False", "Unreachable")
    );

    // A configuration change rolls every pod onto the new configuration.
    let before = pods_hash(&pods).await;
    patch_managed(&brokers, json!({"nats": {"maxPayload": 2097152}})).await;
    common::wait_for("every pod to run the new configuration", T, || async {
        let hashes = pods_hash(&pods).await;
        (hashes.len() == 3 && hashes.iter().all(|h| !before.contains(h))).then_some(())
    })
    .await;
    wait_ready(&brokers, &sets, "events-nats", 3).await;

    // Scaling up works.
    patch_managed(&brokers, json!({"replicas": 5})).await;
    wait_ready(&brokers, &sets, "events-nats", 5).await;

    // Scaling down is refused: the operator cannot verify that no stream would lose replicas.
    patch_managed(&brokers, json!({"replicas": 3})).await;
    let why = common::wait_for("the scale-down to be refused", T, || async {
        let (s, reason, message) = common::condition(&brokers, "events", "Progressing").await?;
        (s == "False" && reason == "ScaleDownRefused").then_some(message)
    })
    .await;
    assert!(why.contains("allowUnsafeScaleDown"), "{why}");
    assert_eq!(
        sets.get("events-nats").await.unwrap().spec.replicas,
        Some(5),
        "the servers are kept"
    );

    // The explicit override lets it through.
    patch_managed(&brokers, json!({"allowUnsafeScaleDown": true})).await;
    wait_ready(&brokers, &sets, "events-nats", 3).await;

    // Deleting the Broker removes its servers but keeps the claims and the keys.
    brokers
        .delete("events", &DeleteParams::default())
        .await
        .unwrap();
    common::wait_for("the Broker and its StatefulSet to be gone", T, || async {
        let gone = brokers.get_opt("events").await.unwrap().is_none()
            && sets.get_opt("events-nats").await.unwrap().is_none();
        gone.then_some(())
    })
    .await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), &ns.name);
    let names: BTreeMap<String, ()> = claims
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| (c.name_any(), ()))
        .collect();
    for i in 0..5 {
        assert!(
            names.contains_key(&format!("data-events-nats-{i}")),
            "claim {i} kept: {names:?}"
        );
    }
    let kept = secrets
        .get_opt("events-nats-auth")
        .await
        .unwrap()
        .expect("the keys are kept with the data");
    let operator_jwt = String::from_utf8_lossy(&kept.data.unwrap()["operator.jwt"].0).into_owned();

    // A new Broker of the same name picks up the kept claims and keys.
    let claims_before: Vec<String> = claims
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.uid().unwrap())
        .collect();
    brokers
        .create(
            &PostParams::default(),
            &managed("events", &volumes.class, 3),
        )
        .await
        .unwrap();
    wait_ready(&brokers, &sets, "events-nats", 3).await;
    let conf = cm.get("events-nats-config").await.unwrap().data.unwrap()["nats.conf"].clone();
    assert!(
        conf.contains(&format!("operator: {operator_jwt:?}")),
        "the same operator key is trusted again"
    );
    let claims_after: Vec<String> = claims
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.uid().unwrap())
        .collect();
    assert_eq!(
        claims_before, claims_after,
        "the same claims, with their data, are used again"
    );
}

#[tokio::test]
async fn a_broker_with_delete_policy_takes_its_claims_and_keys_along() {
    let (plane, ns) = setup!("broker-managed-delete");
    common::install_crds(&plane).await;
    let volumes = Volumes::create(&plane.client, &ns, 1).await;
    let _op = Operator::start(&plane, &ns.name, "managed-delete");
    let c = &plane.client;
    let brokers: Api<Broker> = Api::namespaced(c.clone(), &ns.name);
    let sets: Api<StatefulSet> = Api::namespaced(c.clone(), &ns.name);
    let mut broker = managed("events", &volumes.class, 1);
    broker
        .spec
        .managed
        .as_mut()
        .unwrap()
        .storage
        .deletion_policy = conveyor::api::broker::VolumeDeletionPolicy::Delete;
    brokers
        .create(&PostParams::default(), &broker)
        .await
        .unwrap();
    wait_ready(&brokers, &sets, "events-nats", 1).await;
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns.name);
    let created = brokers.get("events").await.unwrap();
    assert!(owned_by_broker(
        &secrets.get("events-nats-auth").await.unwrap().metadata,
        &created
    ));

    brokers
        .delete("events", &DeleteParams::default())
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), &ns.name);
    common::wait_for(
        "the claim and the keys to be deleted with the Broker",
        T,
        || async {
            let claim_gone = claims
                .get_opt("data-events-nats-0")
                .await
                .unwrap()
                .is_none();
            let keys_gone = secrets.get_opt("events-nats-auth").await.unwrap().is_none();
            (claim_gone && keys_gone).then_some(())
        },
    )
    .await;
}
