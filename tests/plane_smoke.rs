//! Smoke tests proving the local test plane is real: controllers, scheduler, fake nodes,
//! garbage collection, namespace deletion, RBAC and JetStream.

mod common;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Client, Config};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn meta(name: &str, ns: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn deployment_becomes_available_on_fake_nodes() {
    let (plane, ns) = setup!("deployment-available");
    let api: Api<Deployment> = Api::namespaced(plane.client.clone(), &ns.name);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]}
            }
        }
    }))
    .unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
    common::wait_for(
        "Deployment web to be Available with 2 ready replicas",
        T,
        || async {
            let d = api.get("web").await.ok()?;
            let st = d.status?;
            let available = st.conditions?.iter().any(|c| {
                c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("True")
            });
            (available && st.ready_replicas == Some(2)).then_some(())
        },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(plane.client.clone(), &ns.name);
    let list = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 2);
    for p in list.items {
        let node = p.spec.and_then(|s| s.node_name).unwrap_or_default();
        assert!(node.starts_with("kwok-node-"), "pod scheduled on {node:?}");
        let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
        assert_eq!(phase, "Running");
    }
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_dependents() {
    let (plane, ns) = setup!("garbage-collection");
    let api: Api<ConfigMap> = Api::namespaced(plane.client.clone(), &ns.name);
    let owner = api
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: meta("owner", &ns.name),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut dependent = ConfigMap {
        metadata: meta("dependent", &ns.name),
        ..Default::default()
    };
    dependent.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().unwrap(),
        ..Default::default()
    }]);
    api.create(&PostParams::default(), &dependent)
        .await
        .unwrap();
    api.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    common::wait_for(
        "the dependent ConfigMap to be garbage-collected",
        T,
        || async {
            api.get_opt("dependent")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn deleting_a_namespace_completes() {
    let (plane, ns) = setup!("namespace-deletion");
    let victim = format!("{}-victim", ns.name);
    let namespaces: Api<Namespace> = Api::all(plane.client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: meta(&victim, ""),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(plane.client.clone(), &victim);
    cms.create(
        &PostParams::default(),
        &ConfigMap {
            metadata: meta("data", &victim),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    namespaces
        .delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    common::wait_for("the namespace to be deleted", T, || async {
        namespaces
            .get_opt(&victim)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

/// A client that authenticates as the ServiceAccount `sa` with a fresh token.
async fn client_as(plane: &common::Plane, ns: &str, sa: &str) -> Client {
    let sas: Api<ServiceAccount> = Api::namespaced(plane.client.clone(), ns);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = sas
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .unwrap();
    let token = token
        .status
        .and_then(|s| s.token)
        .expect("a token in the TokenRequest status");
    let mut config: Config = plane.config.clone();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    Client::try_from(config).unwrap()
}

#[tokio::test]
async fn authorization_is_enforced_for_service_accounts() {
    let (plane, ns) = setup!("rbac");
    let sas: Api<ServiceAccount> = Api::namespaced(plane.client.clone(), &ns.name);
    sas.create(
        &PostParams::default(),
        &ServiceAccount {
            metadata: meta("reader", &ns.name),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let reader = client_as(&plane, &ns.name, "reader").await;
    let pods: Api<Pod> = Api::namespaced(reader, &ns.name);
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "expected Forbidden, got {s:?}"),
        other => panic!("listing pods without a RoleBinding must be forbidden, got {other:?}"),
    }

    let roles: Api<Role> = Api::namespaced(plane.client.clone(), &ns.name);
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    }))
    .unwrap();
    roles.create(&PostParams::default(), &role).await.unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(plane.client.clone(), &ns.name);
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "reader-reads-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns.name}]
    }))
    .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    common::wait_for("the RoleBinding to allow listing pods", T, || async {
        pods.list(&ListParams::default()).await.ok().map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn nats_answers_a_jetstream_account_info_request() {
    let Some(plane) = common::plane().await else {
        return;
    };
    let client = async_nats::connect(&plane.nats_url)
        .await
        .expect("connecting to the test NATS server");
    let js = async_nats::jetstream::new(client);
    let account = js.query_account().await.expect("JetStream account info");
    // A server without JetStream answers this request with an error; with it, the default
    // account reports unlimited (-1) acknowledgements pending and a JetStream API level.
    assert_eq!(
        account.limits.max_ack_pending, -1,
        "JetStream account: {account:?}"
    );
    assert!(
        account.requests.level >= 1,
        "JetStream API level: {account:?}"
    );
}
