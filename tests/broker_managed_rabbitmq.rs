//! Managed RabbitMQ Brokers on the local plane (kwok makes the nodes' pods Ready without
//! running them), in a namespace that enforces the restricted Pod Security Standard: the
//! objects Conveyor renders and owns, the broker's Secret kept apart from its configuration, a
//! change rolling the nodes, a refused unsafe scale-down, and the claims and Secret kept after
//! the Broker is deleted. What the rendered configuration does on a real node is in
//! tests/rabbitmq_config.rs.

mod common;

use std::time::Duration;

use common::managed::{Volumes, owned_by_broker, patch_managed, wait_ready};
use common::operator::Operator;
use conveyor::api::Broker;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

const T: Duration = Duration::from_secs(90);
const STS: &str = "events-rabbitmq";

#[tokio::test]
async fn a_managed_rabbitmq_renders_owns_rolls_and_keeps_its_data() {
    let (plane, ns) = setup!("broker-managed-rabbitmq");
    ns.enforce_restricted();
    common::install_crds(&plane).await;
    let volumes = Volumes::create(&plane.client, &ns, 5).await;
    let _op = Operator::start(&plane, &ns.name, "managed-rabbitmq");
    let c = &plane.client;
    let brokers: Api<Broker> = Api::namespaced(c.clone(), &ns.name);
    let sets: Api<StatefulSet> = Api::namespaced(c.clone(), &ns.name);
    let broker: Broker = serde_json::from_value(json!({
        "apiVersion": "conveyor.dev/v1alpha1", "kind": "Broker", "metadata": {"name": "events"},
        "spec": {"engine": "rabbitmq", "allowedNamespaces": ["billing"], "managed": {
            "replicas": 3, "storage": {"size": "1Gi", "storageClassName": volumes.class}
        }}
    }))
    .unwrap();
    brokers
        .create(&PostParams::default(), &broker)
        .await
        .unwrap();
    wait_ready(&brokers, &sets, STS, 3).await;
    let broker = brokers.get("events").await.unwrap();

    // The StatefulSet: long node names, peer discovery, restricted pods, retained volumes.
    let sts = sets.get(STS).await.unwrap();
    assert!(owned_by_broker(&sts.metadata, &broker));
    assert_eq!(
        sts.spec.service_name.as_deref(),
        Some("events-rabbitmq-nodes")
    );
    let pod = sts.spec.template.spec.clone().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(STS));
    let node = &pod.containers[0];
    assert_eq!(node.image.as_deref(), Some("rabbitmq:4.1.4"));
    let env: Vec<(String, String)> = node
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    assert!(env.contains(&(
        "RABBITMQ_NODENAME".into(),
        "rabbit@$(MY_POD_NAME).$(K8S_SERVICE_NAME).$(MY_POD_NAMESPACE)".into()
    )));
    let init = &pod.init_containers.clone().unwrap()[0];
    for c in [node, init] {
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    }
    assert_eq!(pod.security_context.unwrap().run_as_user, Some(999));
    let retention = sts
        .spec
        .persistent_volume_claim_retention_policy
        .clone()
        .unwrap();
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));

    // Configuration in the ConfigMap, secrets only in the Secret.
    let cm = Api::<ConfigMap>::namespaced(c.clone(), &ns.name)
        .get("events-rabbitmq-config")
        .await
        .unwrap();
    let data = cm.data.unwrap();
    let conf = &data["rabbitmq.conf"];
    assert!(
        conf.contains("cluster_formation.k8s.service_name = events-rabbitmq-nodes"),
        "{conf}"
    );
    assert!(
        conf.contains("cluster_formation.target_cluster_size_hint = 3"),
        "{conf}"
    );
    assert!(data["enabled_plugins"].contains("rabbitmq_peer_discovery_k8s"));
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns.name);
    let auth = secrets.get("events-rabbitmq-auth").await.unwrap();
    assert!(
        auth.metadata.owner_references.is_none(),
        "kept with the data"
    );
    let auth_data = auth.data.unwrap();
    let password = String::from_utf8_lossy(&auth_data["conveyor-password"].0).to_string();
    let cookie = String::from_utf8_lossy(&auth_data["erlang-cookie"].0).to_string();
    assert!(!conf.contains(&password) && !conf.contains(&cookie));

    // Services, identity, budget and network policy, all owned by the Broker.
    let svcs: Api<Service> = Api::namespaced(c.clone(), &ns.name);
    let nodes = svcs.get("events-rabbitmq-nodes").await.unwrap();
    assert_eq!(
        nodes.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("None")
    );
    assert!(owned_by_broker(
        &svcs.get(STS).await.unwrap().metadata,
        &broker
    ));
    let sa = Api::<ServiceAccount>::namespaced(c.clone(), &ns.name)
        .get(STS)
        .await
        .unwrap();
    assert!(owned_by_broker(&sa.metadata, &broker));
    let role = Api::<Role>::namespaced(c.clone(), &ns.name)
        .get(STS)
        .await
        .unwrap();
    let rule = &role.rules.unwrap()[0];
    assert_eq!(
        rule.resource_names,
        Some(vec!["events-rabbitmq-nodes".to_string()])
    );
    assert_eq!(rule.verbs, ["get"]);
    assert!(
        Api::<RoleBinding>::namespaced(c.clone(), &ns.name)
            .get(STS)
            .await
            .is_ok()
    );
    assert!(
        Api::<PodDisruptionBudget>::namespaced(c.clone(), &ns.name)
            .get(STS)
            .await
            .is_ok()
    );
    let np = Api::<NetworkPolicy>::namespaced(c.clone(), &ns.name)
        .get(STS)
        .await
        .unwrap();
    let npv = serde_json::to_value(&np).unwrap();
    assert_eq!(
        npv["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["billing", "conveyor-system", ns.name])
    );

    // Status: the AMQP endpoint, and an honest Reachable=False (no kubelet runs the nodes).
    let status = broker.status.clone().unwrap();
    assert_eq!(
        status.endpoint,
        Some(format!("amqp://events-rabbitmq.{}.svc:5672", ns.name))
    );
    let (reachable, _, _) = common::condition(&brokers, "events", "Reachable")
        .await
        .unwrap();
    assert_eq!(reachable, "False");

    // Scaling up changes the configuration (the cluster size hint) and rolls every node.
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns.name);
    let hash = |p: &Pod| p.annotations().get("conveyor.dev/config-hash").cloned();
    let before: Vec<_> = pods
        .list(&ListParams::default().labels("conveyor.dev/broker=events"))
        .await
        .unwrap()
        .items
        .iter()
        .map(hash)
        .collect();
    patch_managed(&brokers, json!({"replicas": 5})).await;
    wait_ready(&brokers, &sets, STS, 5).await;
    let after = pods
        .list(&ListParams::default().labels("conveyor.dev/broker=events"))
        .await
        .unwrap()
        .items;
    assert_eq!(after.len(), 5);
    assert!(
        after.iter().all(|p| !before.contains(&hash(p))),
        "every node rolled"
    );

    // Scaling down is refused: the operator cannot verify the quorum queues' members.
    patch_managed(&brokers, json!({"replicas": 3})).await;
    let why = common::wait_for("the scale-down to be refused", T, || async {
        let (s, reason, message) = common::condition(&brokers, "events", "Progressing").await?;
        (s == "False" && reason == "ScaleDownRefused").then_some(message)
    })
    .await;
    assert!(why.contains("allowUnsafeScaleDown"), "{why}");
    assert_eq!(sets.get(STS).await.unwrap().spec.replicas, Some(5));

    // Deleting the Broker keeps the claims and the Secret the data needs.
    brokers
        .delete("events", &DeleteParams::default())
        .await
        .unwrap();
    common::wait_for("the StatefulSet to be gone", T, || async {
        sets.get_opt(STS).await.unwrap().is_none().then_some(())
    })
    .await;
    let claims: Vec<String> = Api::<PersistentVolumeClaim>::namespaced(c.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert!(
        claims.contains(&"data-events-rabbitmq-0".to_string()),
        "{claims:?}"
    );
    assert!(
        secrets
            .get_opt("events-rabbitmq-auth")
            .await
            .unwrap()
            .is_some()
    );
}
