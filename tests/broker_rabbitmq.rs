//! External RabbitMQ Brokers against the plane's real rabbitmq-server, with the operator as its
//! own process: Ready with the real version, the cluster's nodes, the management API and the
//! AMQP listener in status; `Reachable` following the broker away and back; wrong credentials,
//! a missing Secret and a destination outside the allow-list each named in a condition.

mod common;

use std::time::{Duration, Instant};

use common::broker::{EngineKind, TestBroker};
use common::operator::Operator;
use common::wait_condition;
use conveyor::api::Broker;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

async fn create(api: &Api<Broker>, name: &str, spec: Value) {
    let b: Broker = serde_json::from_value(json!({
        "apiVersion": "conveyor.dev/v1alpha1", "kind": "Broker",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap();
    api.create(&PostParams::default(), &b).await.unwrap();
}

async fn secret(plane: &common::Plane, ns: &str, name: &str, data: Value) {
    let s: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data
    }))
    .unwrap();
    let api: Api<Secret> = Api::namespaced(plane.client.clone(), ns);
    api.create(&PostParams::default(), &s).await.unwrap();
}

#[tokio::test]
async fn an_external_rabbitmq_reports_itself_and_follows_the_broker() {
    let (plane, ns) = setup!("broker-rabbitmq");
    let Some(mut broker) = TestBroker::start(EngineKind::Rabbitmq, &ns.name).await else {
        return;
    };
    common::install_crds(&plane).await;
    let _op = Operator::start_with(
        &plane,
        &ns.name,
        "rabbitmq",
        &["--allowed-broker-destinations", "127.0.0.1/32"],
    );
    let api: Api<Broker> = Api::namespaced(plane.client.clone(), &ns.name);
    let (spec, creds) = broker.broker_spec();
    let (secret_name, data) = creds.expect("RabbitMQ takes credentials");
    secret(&plane, &ns.name, &secret_name, data.clone()).await;
    create(&api, "events", spec.clone()).await;

    let (_, message) = wait_condition(&api, "events", "Ready", "True", T).await;
    let TestBroker::Rabbitmq(r) = &broker else {
        unreachable!()
    };
    let overview = r.api.overview().await.unwrap();
    let version = overview.rabbitmq_version.unwrap();
    assert!(message.contains(&version), "{message}");
    let status = api.get("events").await.unwrap().status.unwrap();
    assert_eq!(status.server_version.as_deref(), Some(version.as_str()));
    let node = overview.node.unwrap();
    assert_eq!(status.nodes, [node], "the cluster's nodes");
    let rabbit = status.rabbitmq.expect("RabbitMQ status");
    assert!(rabbit.management_api && rabbit.amqp, "{rabbit:?}");
    assert!(status.nats.is_none());

    // The broker goes away and comes back: Reachable follows within seconds.
    broker.cut().await;
    let cut = Instant::now();
    let (reason, message) = wait_condition(&api, "events", "Reachable", "False", T).await;
    let went_down = cut.elapsed();
    assert_eq!(reason, "Unreachable");
    assert!(message.contains("127.0.0.1"), "{message}");
    broker.restore().await;
    let restored = Instant::now();
    wait_condition(&api, "events", "Ready", "True", T).await;
    eprintln!(
        "RabbitMQ: Reachable=False {went_down:?} after the cut, Ready {:?} after the way back opened",
        restored.elapsed()
    );

    // Wrong credentials: named, not retried in a hot loop.
    let mut wrong = data.clone();
    wrong["password"] = json!("not-the-password");
    secret(&plane, &ns.name, "wrong", wrong).await;
    let mut bad = spec.clone();
    bad["external"]["credentialsSecretRef"]["name"] = json!("wrong");
    create(&api, "refused", bad).await;
    let (reason, message) = wait_condition(&api, "refused", "Ready", "False", T).await;
    assert_eq!(reason, "Unauthorized", "{message}");

    // A Secret without the keys RabbitMQ needs.
    secret(&plane, &ns.name, "token-only", json!({"token": "t"})).await;
    let mut token = spec.clone();
    token["external"]["credentialsSecretRef"]["name"] = json!("token-only");
    create(&api, "token", token).await;
    let (reason, message) = wait_condition(&api, "token", "ResolvedRefs", "False", T).await;
    assert_eq!(reason, "SecretNotFound");
    assert!(
        message.contains("user (or username) and password"),
        "{message}"
    );

    // A management URL outside the allow-list: no connection is made.
    let mut outside = spec;
    outside["external"]["rabbitmq"]["managementUrl"] = json!("http://10.255.0.1:15672");
    create(&api, "outside", outside).await;
    let (reason, message) = wait_condition(&api, "outside", "Reachable", "False", T).await;
    assert_eq!(reason, "DestinationNotAllowed");
    assert!(message.contains("10.255.0.1"), "{message}");
}

#[tokio::test]
async fn an_external_rabbitmq_over_tls_trusts_only_the_given_ca() {
    let (plane, ns) = setup!("broker-rabbitmq-tls");
    let Some(rabbit) = common::broker::RabbitPlane::from_env() else {
        return;
    };
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(https), Some(amqps), Some(ca_file)) = (
        var("CONVEYOR_TEST_RABBITMQ_TLS_MANAGEMENT_URL"),
        var("CONVEYOR_TEST_RABBITMQ_AMQPS_URL"),
        var("CONVEYOR_TEST_RABBITMQ_CA_FILE"),
    ) else {
        common::skip("the plane's RabbitMQ has no TLS listeners: run `hack/cluster.sh up`");
        return;
    };
    let ca = std::fs::read_to_string(ca_file).unwrap();
    common::install_crds(&plane).await;
    let _op = Operator::start_with(
        &plane,
        &ns.name,
        "rabbitmq-tls",
        &["--allowed-broker-destinations", "127.0.0.1/32"],
    );
    let api: Api<Broker> = Api::namespaced(plane.client.clone(), &ns.name);
    secret(
        &plane,
        &ns.name,
        "creds",
        json!({"user": rabbit.user, "password": rabbit.password}),
    )
    .await;
    secret(&plane, &ns.name, "ca", json!({"ca.crt": ca})).await;
    let spec = |tls: Value| {
        json!({"engine": "rabbitmq", "external": {
            "urls": [amqps], "credentialsSecretRef": {"name": "creds"}, "tls": tls,
            "rabbitmq": {"managementUrl": https}
        }})
    };
    create(
        &api,
        "trusted",
        spec(json!({"caSecretRef": {"name": "ca"}})),
    )
    .await;
    wait_condition(&api, "trusted", "Ready", "True", T).await;
    let status = api.get("trusted").await.unwrap().status.unwrap();
    let rabbit_status = status.rabbitmq.unwrap();
    assert!(
        rabbit_status.management_api && rabbit_status.amqp,
        "{rabbit_status:?}"
    );

    // Without the CA the system roots do not know the plane's CA: refused, and said so.
    create(&api, "untrusted", spec(json!({}))).await;
    let (reason, message) = wait_condition(&api, "untrusted", "Reachable", "False", T).await;
    assert_eq!(reason, "Unreachable");
    assert!(message.to_lowercase().contains("certificate"), "{message}");
}
