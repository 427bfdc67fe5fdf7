//! The RabbitMQ management client and AMQP probe against a real RabbitMQ (3.10 or later).
//!
//! Needs `CONVEYOR_TEST_RABBITMQ_MANAGEMENT_URL` (`http://127.0.0.1:15672`),
//! `CONVEYOR_TEST_RABBITMQ_AMQP_URL` (`amqp://127.0.0.1:5672`) and an administrator in
//! `CONVEYOR_TEST_RABBITMQ_USER`/`CONVEYOR_TEST_RABBITMQ_PASSWORD` (default `guest`/`guest`).
//! `CONVEYOR_TEST_RABBITMQ_CA_FILE` is the CA for `https://`/`amqps://` URLs (else the system
//! roots). Without the management URL the test skips with one line, unless `CONVEYOR_REQUIRE_CLUSTER=1`.
//! Everything it declares lives in vhost `/` under a random prefix and is deleted at the end.

use std::io::Write;
use std::time::{Duration, Instant};

use conveyor::engine::rabbitmq::amqp::{self, ProbeError};
use conveyor::engine::rabbitmq::management::{ManagementClient, ManagementError, Policy};
use serde_json::{Map, Value, json};

const VHOST: &str = "/";

struct Server {
    management_url: String,
    amqp_url: String,
    user: String,
    password: String,
    /// The PEM of `CONVEYOR_TEST_RABBITMQ_CA_FILE`, for `https://` and `amqps://` URLs.
    ca: Option<String>,
}

fn server() -> Option<Server> {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    let Some(management_url) = var("CONVEYOR_TEST_RABBITMQ_MANAGEMENT_URL") else {
        if std::env::var("CONVEYOR_REQUIRE_CLUSTER").is_ok_and(|v| v == "1") {
            panic!(
                "CONVEYOR_REQUIRE_CLUSTER=1 but CONVEYOR_TEST_RABBITMQ_MANAGEMENT_URL is not set"
            );
        }
        // To the stderr handle, not eprintln!, so the harness does not capture the line.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no RabbitMQ (set CONVEYOR_TEST_RABBITMQ_MANAGEMENT_URL)"
        );
        return None;
    };
    Some(Server {
        management_url,
        amqp_url: var("CONVEYOR_TEST_RABBITMQ_AMQP_URL")
            .expect("CONVEYOR_TEST_RABBITMQ_AMQP_URL must accompany the management URL"),
        user: var("CONVEYOR_TEST_RABBITMQ_USER").unwrap_or_else(|| "guest".into()),
        password: var("CONVEYOR_TEST_RABBITMQ_PASSWORD").unwrap_or_else(|| "guest".into()),
        ca: var("CONVEYOR_TEST_RABBITMQ_CA_FILE")
            .map(|path| std::fs::read_to_string(path).expect("CONVEYOR_TEST_RABBITMQ_CA_FILE")),
    })
}

/// A suffix unique to this run, from the clock and the process id.
fn suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}{:x}", std::process::id(), nanos % 0xffff_ffff)
}

fn map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// Polls `check` until it returns `Some` or 20 s pass (queue figures lag the truth).
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn management_api_and_amqp_probe() {
    let Some(server) = server() else { return };
    // Quorum-queue calls can take seconds on a loaded machine, and a declare cut off by the
    // client leaves a broken queue behind (3.10.8), so this client waits longer than 5 s.
    let client = ManagementClient::new(
        &server.management_url,
        &server.user,
        &server.password,
        server.ca.as_deref(),
    )
    .expect("client")
    .with_timeout(Duration::from_secs(30));
    let id = suffix();
    let queue = format!("conveyor-test-{id}/order placed");
    let exchange = format!("conveyor-test-{id}.events");
    let policy_name = format!("conveyor-test-{id}-maxlen");

    // In a task of its own, so that a failed assertion still gets to the clean-up below.
    let run = tokio::spawn({
        let (client, queue, exchange, policy) = (
            client.clone(),
            queue.clone(),
            exchange.clone(),
            policy_name.clone(),
        );
        async move { exercise(&client, &server, &queue, &exchange, &policy).await }
    })
    .await;

    // Clean up whatever the run got to, then report.
    let cleanup = (
        client.delete_policy(VHOST, &policy_name).await,
        client.delete_exchange(VHOST, &exchange).await,
        client.delete_queue(VHOST, &queue).await,
    );
    match run {
        Ok(result) => result.expect("management call"),
        Err(panic) => std::panic::resume_unwind(panic.into_panic()),
    }
    assert!(
        matches!(cleanup, (Ok(true), Ok(true), Ok(true))),
        "cleanup: {cleanup:?}"
    );
    assert_eq!(client.queue(VHOST, &queue).await, Ok(None));
    assert_eq!(client.exchange(VHOST, &exchange).await, Ok(None));
    assert_eq!(client.policy(VHOST, &policy_name).await, Ok(None));
    assert_eq!(client.delete_queue(VHOST, &queue).await, Ok(false));
}

async fn exercise(
    client: &ManagementClient,
    server: &Server,
    queue: &str,
    exchange: &str,
    policy_name: &str,
) -> Result<(), ManagementError> {
    let overview = client.overview().await?;
    println!("overview: {overview:?}");
    let version = overview.rabbitmq_version.clone().expect("rabbitmq_version");
    assert!(version.split('.').count() >= 3, "{version}");
    assert!(overview.management_version.is_some() && overview.cluster_name.is_some());
    let nodes = client.nodes().await?;
    assert!(
        !nodes.is_empty() && nodes.iter().all(|n| n.running),
        "{nodes:?}"
    );

    // Absent objects.
    assert_eq!(client.queue(VHOST, queue).await?, None);
    assert_eq!(client.exchange(VHOST, exchange).await?, None);
    assert_eq!(client.policy(VHOST, policy_name).await?, None);
    assert_eq!(client.queue("conveyor-no-such-vhost", "q").await?, None);
    assert!(!client.delete_exchange(VHOST, exchange).await?);
    assert!(!client.delete_policy(VHOST, policy_name).await?);

    // A quorum queue and a topic exchange; declaring again is idempotent.
    let arguments = map(json!({"x-queue-type": "quorum", "x-delivery-limit": 3}));
    assert!(client.declare_queue(VHOST, queue, true, &arguments).await?);
    assert!(!client.declare_queue(VHOST, queue, true, &arguments).await?);
    let classic = map(json!({"x-queue-type": "classic"}));
    match client.declare_queue(VHOST, queue, true, &classic).await {
        Err(ManagementError::Status { code: 400, reason }) => {
            assert!(
                reason.contains("inequivalent arg 'x-queue-type'"),
                "{reason}"
            )
        }
        other => panic!("redeclaring as classic: {other:?}"),
    }
    assert!(
        client
            .declare_exchange(VHOST, exchange, "topic", true, &Map::new())
            .await?
    );
    assert!(
        !client
            .declare_exchange(VHOST, exchange, "topic", true, &Map::new())
            .await?
    );
    let info = client.exchange(VHOST, exchange).await?.expect("exchange");
    assert_eq!(
        (
            info.name.as_str(),
            info.exchange_type.as_str(),
            info.durable
        ),
        (exchange, "topic", true)
    );
    let default = client.exchange(VHOST, "").await?.expect("default exchange");
    assert_eq!(default.exchange_type, "direct");

    // Binding with OrderPlaced, twice: one binding.
    client
        .bind_queue(VHOST, exchange, queue, "OrderPlaced")
        .await?;
    client
        .bind_queue(VHOST, exchange, queue, "OrderPlaced")
        .await?;
    let bindings = client
        .bindings_from_exchange_to_queue(VHOST, exchange, queue)
        .await?;
    assert_eq!(bindings.len(), 1, "{bindings:?}");
    assert_eq!(
        (
            bindings[0].routing_key.as_str(),
            bindings[0].destination_type.as_str()
        ),
        ("OrderPlaced", "queue")
    );
    // A key with reserved characters round-trips through its properties_key.
    client.bind_queue(VHOST, exchange, queue, "a b/c%d").await?;
    let odd = client
        .bindings_from_exchange_to_queue(VHOST, exchange, queue)
        .await?;
    let odd = odd
        .iter()
        .find(|b| b.routing_key == "a b/c%d")
        .expect("odd binding")
        .clone();
    assert!(
        client
            .unbind_queue(VHOST, exchange, queue, &odd.properties_key)
            .await?
    );
    assert!(
        !client
            .unbind_queue(VHOST, exchange, queue, &odd.properties_key)
            .await?
    );
    assert_eq!(
        client
            .bindings_from_exchange_to_queue(VHOST, exchange, queue)
            .await?
            .len(),
        1
    );

    // Exchange-to-exchange bindings.
    client
        .bind_exchange(VHOST, exchange, "amq.fanout", "Order.#")
        .await?;
    let e2e = client
        .bindings_between_exchanges(VHOST, exchange, "amq.fanout")
        .await?;
    assert_eq!(e2e.len(), 1);
    assert_eq!(
        (
            e2e[0].routing_key.as_str(),
            e2e[0].destination_type.as_str()
        ),
        ("Order.#", "exchange")
    );
    assert!(
        client
            .unbind_exchange(VHOST, exchange, "amq.fanout", &e2e[0].properties_key)
            .await?
    );
    assert!(
        client
            .bindings_between_exchanges(VHOST, exchange, "amq.fanout")
            .await?
            .is_empty()
    );

    // Publishing: routed by key, arrives with its headers.
    let headers = map(json!({"source": "conveyor-test"}));
    assert!(
        client
            .publish(VHOST, exchange, "OrderPlaced", "order 1 placed", &headers)
            .await?
    );
    assert!(
        !client
            .publish(
                VHOST,
                exchange,
                "OrderCancelled",
                "order 1 cancelled",
                &headers
            )
            .await?
    );
    let info = eventually("the queue to count the message", || async {
        client
            .queue(VHOST, queue)
            .await
            .ok()
            .flatten()
            .filter(|q| q.messages == Some(1) && q.state.as_deref() == Some("running"))
    })
    .await;
    assert_eq!(info.queue_type.as_deref(), Some("quorum"));
    assert!(info.durable);
    assert_eq!(info.arguments.get("x-delivery-limit"), Some(&json!(3)));
    assert_eq!(
        (
            info.messages_ready,
            info.messages_unacknowledged,
            info.consumers
        ),
        (Some(1), Some(0), Some(0))
    );
    assert_eq!(info.message_bytes, Some("order 1 placed".len() as u64));
    let listed = client.queues(VHOST).await?;
    let listed = listed
        .iter()
        .find(|q| q.name == queue)
        .expect("queue in the listing");
    assert_eq!(listed.queue_type.as_deref(), Some("quorum"));

    // get with requeue leaves it there; without, takes it.
    let peeked = client.get_messages(VHOST, queue, 10, true).await?;
    assert_eq!(peeked.len(), 1, "{peeked:?}");
    assert_eq!(
        (peeked[0].payload.as_str(), peeked[0].routing_key.as_str()),
        ("order 1 placed", "OrderPlaced")
    );
    assert_eq!(peeked[0].payload_bytes()?, b"order 1 placed");
    assert_eq!(peeked[0].properties["headers"]["source"], "conveyor-test");
    let taken = client.get_messages(VHOST, queue, 10, false).await?;
    assert_eq!(taken.len(), 1);
    assert!(
        taken[0].redelivered,
        "the requeued message comes back redelivered"
    );
    assert!(
        client
            .get_messages(VHOST, queue, 10, false)
            .await?
            .is_empty()
    );

    // A policy: written, read back, applied to the queue; rejected when invalid.
    let policy = Policy {
        pattern: format!("^{}$", regex_escape(queue)),
        apply_to: "queues".into(),
        priority: 7,
        definition: map(json!({"max-length": 2, "overflow": "drop-head"})),
    };
    assert!(client.put_policy(VHOST, policy_name, &policy).await?);
    assert!(!client.put_policy(VHOST, policy_name, &policy).await?);
    assert_eq!(
        client.policy(VHOST, policy_name).await?,
        Some(policy.clone())
    );
    eventually("the policy to apply", || async {
        client
            .queue(VHOST, queue)
            .await
            .ok()
            .flatten()
            .filter(|q| q.policy.as_deref() == Some(policy_name))
    })
    .await;
    let bad = Policy {
        definition: map(json!({"max-length": "two"})),
        ..policy.clone()
    };
    match client.put_policy(VHOST, policy_name, &bad).await {
        Err(ManagementError::Status { code: 400, reason }) => {
            assert!(reason.contains("max"), "{reason}")
        }
        other => panic!("invalid policy: {other:?}"),
    }

    // Wrong password, nothing listening.
    let wrong = ManagementClient::new(
        &server.management_url,
        &server.user,
        "wrong-password",
        server.ca.as_deref(),
    )
    .expect("client");
    match wrong.overview().await {
        Err(ManagementError::Unauthorized(reason)) => assert!(!reason.is_empty()),
        other => panic!("wrong password: {other:?}"),
    }
    let port = free_port();
    let nowhere =
        ManagementClient::new(&format!("http://127.0.0.1:{port}"), "u", "p", None).expect("client");
    assert!(matches!(
        nowhere.overview().await,
        Err(ManagementError::Unreachable(_))
    ));
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let silent_url = format!("http://{}", silent.local_addr().expect("address"));
    let slow = ManagementClient::new(&silent_url, "u", "p", None)
        .expect("client")
        .with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    match slow.overview().await {
        Err(ManagementError::Unreachable(reason)) => {
            assert!(reason.contains("no answer within"), "{reason}")
        }
        other => panic!("silent server: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));

    // The AMQP listener.
    let start = amqp::probe(
        &server.amqp_url,
        server.ca.as_deref(),
        Duration::from_secs(5),
    )
    .await
    .expect("probe");
    println!("connection.start: {start:?}");
    assert_eq!(start.product.as_deref(), Some("RabbitMQ"));
    assert_eq!(start.version.as_deref(), Some(version.as_str()));
    assert_eq!(start.cluster_name, overview.cluster_name);
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    assert!(
        start.mechanisms.iter().any(|m| m == "PLAIN"),
        "{:?}",
        start.mechanisms
    );
    let refused = amqp::probe(
        &format!("amqp://127.0.0.1:{port}"),
        None,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        matches!(refused, Err(ProbeError::Unreachable(_))),
        "{refused:?}"
    );
    let not_amqp = amqp::probe(
        &silent_url.replace("http", "amqp"),
        None,
        Duration::from_millis(300),
    )
    .await;
    assert!(
        matches!(not_amqp, Err(ProbeError::Unreachable(_))),
        "{not_amqp:?}"
    );
    Ok(())
}

/// A port nothing listens on (bound, read, released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.local_addr().expect("address").port()
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == ' ' || c == '/' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

/// The TLS paths, when a TLS-enabled server is given: `CONVEYOR_TEST_RABBITMQ_TLS_MANAGEMENT_URL`
/// (`https://...`), `CONVEYOR_TEST_RABBITMQ_AMQPS_URL` and `CONVEYOR_TEST_RABBITMQ_CA_FILE`,
/// the PEM of the private CA that issued the server certificate, all written by
/// `hack/cluster.sh up`. Skips without them, unless `CONVEYOR_REQUIRE_CLUSTER=1`.
#[tokio::test]
async fn tls_endpoints_trust_only_the_given_ca() {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    let (Some(https), Some(amqps), Some(ca_file)) = (
        var("CONVEYOR_TEST_RABBITMQ_TLS_MANAGEMENT_URL"),
        var("CONVEYOR_TEST_RABBITMQ_AMQPS_URL"),
        var("CONVEYOR_TEST_RABBITMQ_CA_FILE"),
    ) else {
        if std::env::var("CONVEYOR_REQUIRE_CLUSTER").is_ok_and(|v| v == "1") {
            panic!(
                "CONVEYOR_REQUIRE_CLUSTER=1 but the plane's RabbitMQ has no TLS listeners (CONVEYOR_TEST_RABBITMQ_TLS_MANAGEMENT_URL is not set)"
            );
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no TLS RabbitMQ (set CONVEYOR_TEST_RABBITMQ_TLS_MANAGEMENT_URL)"
        );
        return;
    };
    let ca = std::fs::read_to_string(&ca_file).expect("CA file");
    let user = var("CONVEYOR_TEST_RABBITMQ_USER").unwrap_or_else(|| "guest".into());
    let password = var("CONVEYOR_TEST_RABBITMQ_PASSWORD").unwrap_or_else(|| "guest".into());

    let trusted = ManagementClient::new(&https, &user, &password, Some(&ca)).expect("client");
    let overview = trusted.overview().await.expect("overview over https");
    assert_eq!(overview.product_name.as_deref(), Some("RabbitMQ"));
    // The system roots do not know the private CA.
    let system = ManagementClient::new(&https, &user, &password, None).expect("client");
    match system.overview().await {
        Err(ManagementError::Unreachable(why)) => {
            println!("system roots: {why}");
            assert!(why.contains("certificate"), "{why}")
        }
        other => panic!("https with the system roots: {other:?}"),
    }

    let start = amqp::probe(&amqps, Some(&ca), Duration::from_secs(5))
        .await
        .expect("amqps probe");
    assert_eq!(start.product.as_deref(), Some("RabbitMQ"));
    assert_eq!(start.version, overview.rabbitmq_version);
    let untrusted = amqp::probe(&amqps, None, Duration::from_secs(5)).await;
    assert!(
        matches!(&untrusted, Err(ProbeError::Tls(why)) if why.contains("certificate")),
        "{untrusted:?}"
    );
}
