//! External Brokers against a real nats-server, with the operator as its own process: Ready
//! with the real version, `Reachable` following the server down and up again without hot
//! loops, credentials from the Broker's own Secret, and destinations outside the allow-list
//! refused.

mod common;

use std::time::{Duration, Instant};

use common::nats::NatsServer;
use common::operator::Operator;
use common::wait_condition;
use conveyor::api::Broker;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

fn broker(name: &str, url: &str, secret: Option<&str>) -> Broker {
    let mut external = json!({"urls": [url]});
    if let Some(s) = secret {
        external["credentialsSecretRef"] = json!({"name": s});
    }
    serde_json::from_value(json!({
        "apiVersion": "conveyor.dev/v1alpha1", "kind": "Broker",
        "metadata": {"name": name},
        "spec": {"engine": "nats", "external": external}
    }))
    .unwrap()
}

fn operator(plane: &common::Plane, ns: &str) -> Operator {
    Operator::start_with(
        plane,
        ns,
        "external",
        &["--allowed-broker-destinations", "127.0.0.1/32"],
    )
}

#[tokio::test]
async fn external_broker_follows_the_server_going_away_and_coming_back() {
    let (plane, ns) = setup!("broker-external");
    let Some(mut server) = NatsServer::start(&[]) else {
        return;
    };
    common::install_crds(&plane).await;
    let op = operator(&plane, &ns.name);
    let api: Api<Broker> = Api::namespaced(plane.client.clone(), &ns.name);
    api.create(&PostParams::default(), &broker("events", &server.url, None))
        .await
        .unwrap();

    wait_condition(&api, "events", "Ready", "True", T).await;
    let status = api.get("events").await.unwrap().status.unwrap();
    assert_eq!(
        status.server_version.as_deref(),
        Some(server.version().as_str())
    );
    assert_eq!(status.servers, Some(1));
    assert_eq!(status.endpoint.as_deref(), Some(server.url.as_str()));
    let js = status.nats.expect("NATS status").jet_stream;
    assert_eq!(
        (js.max_memory, js.max_streams),
        (-1, -1),
        "the test server has no account limits"
    );

    let before = op
        .metric("conveyor_reconciliations_total", "kind=\"Broker\"")
        .await;
    server.stop();
    let stopped = Instant::now();
    let (reason, message) = wait_condition(&api, "events", "Reachable", "False", T).await;
    let went_down = stopped.elapsed();
    assert_eq!(reason, "Unreachable");
    assert!(
        message.contains(&server.url),
        "the message names the endpoint: {message}"
    );
    let (ready_reason, _) = wait_condition(&api, "events", "Ready", "False", T).await;
    assert_eq!(ready_reason, "Unreachable");

    // While the server is down the operator retries with backoff, not in a hot loop.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = op
        .metric("conveyor_reconciliations_total", "kind=\"Broker\"")
        .await
        - before;
    assert!(
        during <= 6.0,
        "{during} Broker reconciles while the server was down for ~5 s"
    );

    server.restart();
    let restarted = Instant::now();
    wait_condition(&api, "events", "Ready", "True", T).await;
    let came_back = restarted.elapsed();
    let (reason, _) = wait_condition(&api, "events", "Reachable", "True", T).await;
    assert_eq!(reason, "Connected");
    eprintln!(
        "Reachable went False {went_down:?} after the server stopped; Ready came back {came_back:?} after it restarted"
    );
}

#[tokio::test]
async fn credentials_come_from_the_brokers_own_secret() {
    let (plane, ns) = setup!("broker-credentials");
    let Some(_server) = NatsServer::start(&["--auth", "s3cret-token"]) else {
        return;
    };
    let url = _server.url.clone();
    common::install_crds(&plane).await;
    let _op = operator(&plane, &ns.name);
    let api: Api<Broker> = Api::namespaced(plane.client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &broker("secured", &url, Some("nats-credentials")),
    )
    .await
    .unwrap();

    let (reason, message) = wait_condition(&api, "secured", "ResolvedRefs", "False", T).await;
    assert_eq!(reason, "SecretNotFound");
    assert!(message.contains("nats-credentials"), "{message}");

    let secrets: Api<Secret> = Api::namespaced(plane.client.clone(), &ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "nats-credentials"},
        "stringData": {"token": "s3cret-token"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    wait_condition(&api, "secured", "Ready", "True", T).await;

    // Without credentials the same server refuses the operator.
    api.create(&PostParams::default(), &broker("anonymous", &url, None))
        .await
        .unwrap();
    let (reason, _) = wait_condition(&api, "anonymous", "Reachable", "False", T).await;
    assert_eq!(reason, "Unreachable");
}

#[tokio::test]
async fn destinations_outside_the_allow_list_are_refused() {
    let (plane, ns) = setup!("broker-destination");
    let Some(server) = NatsServer::start(&[]) else {
        return;
    };
    common::install_crds(&plane).await;
    let _op = operator(&plane, &ns.name);
    let api: Api<Broker> = Api::namespaced(plane.client.clone(), &ns.name);
    // 127.0.0.2 is loopback too, so even a wrong decision would not leave this machine; the
    // operator allows only 127.0.0.1/32.
    let denied = format!("nats://127.0.0.2:{}", server.port);
    api.create(&PostParams::default(), &broker("elsewhere", &denied, None))
        .await
        .unwrap();
    let (reason, message) = wait_condition(&api, "elsewhere", "Reachable", "False", T).await;
    assert_eq!(reason, "DestinationNotAllowed");
    assert!(
        message.contains("127.0.0.2") && message.contains("--allowed-broker-destinations"),
        "{message}"
    );
    let (ready_reason, _) = wait_condition(&api, "elsewhere", "Ready", "False", T).await;
    assert_eq!(ready_reason, "DestinationNotAllowed");
}
