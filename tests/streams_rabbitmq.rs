//! Queues and Topics on RabbitMQ only: routing keys per event type, unrouted events kept, a
//! Topic's exchange and unrouted queue repaired, foreign exchanges left alone, and settings
//! RabbitMQ cannot honour named in a condition.

mod common;

use common::broker::{EngineKind, TestBroker};
use common::streams::{T, create_orders_topic};
use common::wait_condition;
use conveyor::api::Topic;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn topic_events_are_routed_by_type_and_none_vanish_on_rabbitmq() {
    let env = stream_env!(EngineKind::Rabbitmq, "topic-routing");
    let TestBroker::Rabbitmq(r) = &env.broker else {
        unreachable!()
    };
    create_orders_topic(&env, &["OrderPlaced", "OrderCancelled"]).await;
    wait_condition(&env.topics, "orders", "Ready", "True", T).await;
    let exchange = env.name_in_broker("topic", "orders");
    let info = r.api.exchange(&r.vhost, &exchange).await.unwrap().unwrap();
    assert_eq!(info.exchange_type, "topic");

    // A subscriber's queue bound for OrderPlaced only (as an EventSubscription will be).
    let args = json!({"x-queue-type": "quorum"});
    let payment = "payment";
    r.api
        .declare_queue(&r.vhost, payment, true, args.as_object().unwrap())
        .await
        .unwrap();
    r.api
        .bind_queue(&r.vhost, &exchange, payment, "OrderPlaced")
        .await
        .unwrap();
    let no_headers = serde_json::Map::new();
    for (event, routed) in [
        ("OrderPlaced", true),
        ("OrderCancelled", true),
        ("Unknown", true),
    ] {
        let got = r
            .api
            .publish(
                &r.vhost,
                &exchange,
                event,
                r#"{"orderId":"42"}"#,
                &no_headers,
            )
            .await
            .unwrap();
        assert_eq!(got, routed, "{event} is routed somewhere, never dropped");
    }
    let placed = r
        .api
        .get_messages(&r.vhost, payment, 10, false)
        .await
        .unwrap();
    assert_eq!(
        placed
            .iter()
            .map(|m| m.routing_key.as_str())
            .collect::<Vec<_>>(),
        ["OrderPlaced"],
        "the bound queue gets OrderPlaced and nothing else"
    );
    let unrouted = format!("{exchange}.unrouted");
    let kept = r
        .api
        .get_messages(&r.vhost, &unrouted, 10, true)
        .await
        .unwrap();
    let mut keys: Vec<&str> = kept.iter().map(|m| m.routing_key.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["OrderCancelled", "Unknown"],
        "events no subscription took are kept in the Topic's unrouted queue"
    );
    common::wait_for("the Topic to count its 2 unrouted events", T, || async {
        let t = env.topics.get("orders").await.ok()?;
        let s = t.status?;
        (s.messages == Some(2) && s.consumers == Some(1)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_topic_is_repaired_on_rabbitmq_and_a_foreign_exchange_left_alone() {
    let env = stream_env!(
        EngineKind::Rabbitmq,
        "topic-drift",
        &["--stream-refresh-seconds", "2"]
    );
    let TestBroker::Rabbitmq(r) = &env.broker else {
        unreachable!()
    };
    create_orders_topic(&env, &["OrderPlaced"]).await;
    wait_condition(&env.topics, "orders", "Ready", "True", T).await;
    let exchange = env.name_in_broker("topic", "orders");
    let unrouted = format!("{exchange}.unrouted");

    // The unrouted-event queue and the exchange deleted outside Conveyor: both come back.
    r.api.delete_queue(&r.vhost, &unrouted).await.unwrap();
    common::wait_for("the unrouted queue to be recreated", T, || async {
        r.api.queue(&r.vhost, &unrouted).await.ok()?.map(|_| ())
    })
    .await;
    env.broker.delete_outside(true, &exchange).await;
    common::wait_for("the exchange to be recreated", T, || async {
        let e = r.api.exchange(&r.vhost, &exchange).await.ok()??;
        (e.exchange_type == "topic").then_some(())
    })
    .await;
    assert!(
        common::event_reasons(&env.plane, &env.ns.name, "orders")
            .await
            .iter()
            .any(|e| e == "DriftRepaired")
    );

    // A topic exchange of the same name that Conveyor did not make is not taken over.
    let foreign = env.name_in_broker("topic", "foreign");
    r.api
        .declare_exchange(&r.vhost, &foreign, "topic", true, &serde_json::Map::new())
        .await
        .unwrap();
    let topic: Topic = serde_json::from_value(json!({
        "apiVersion": "conveyor.dev/v1alpha1", "kind": "Topic", "metadata": {"name": "foreign"},
        "spec": {"brokerRef": {"name": "events"}, "deletionPolicy": "Delete"}
    }))
    .unwrap();
    env.topics
        .create(&PostParams::default(), &topic)
        .await
        .unwrap();
    let (reason, message) = wait_condition(&env.topics, "foreign", "Ready", "False", T).await;
    assert_eq!(reason, "Conflict");
    assert!(message.contains("not created by Conveyor"), "{message}");
    env.topics
        .delete("foreign", &DeleteParams::default())
        .await
        .unwrap();
    common::wait_for("the Topic to be deleted", T, || async {
        env.topics
            .get_opt("foreign")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let kept = r.api.exchange(&r.vhost, &foreign).await.unwrap();
    assert!(
        kept.is_some_and(|e| !e.arguments.contains_key("x-conveyor-owner")),
        "the foreign exchange is untouched"
    );
}

#[tokio::test]
async fn settings_rabbitmq_cannot_honour_are_named_in_a_condition() {
    let env = stream_env!(EngineKind::Rabbitmq, "stream-unsupported");
    env.create_queue(
        "orders",
        json!({"deduplicationWindow": "1m", "storage": "Memory"}),
    )
    .await;
    wait_condition(&env.queues, "orders", "Ready", "True", T).await;
    let (reason, message) = wait_condition(&env.queues, "orders", "Supported", "False", T).await;
    assert_eq!(reason, "SettingNotSupported");
    assert!(
        message.contains("spec.deduplicationWindow") && message.contains("spec.storage"),
        "{message}"
    );
    let TestBroker::Rabbitmq(r) = &env.broker else {
        unreachable!()
    };
    let q = r
        .api
        .queue(&r.vhost, &env.name_in_broker("queue", "orders"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        q.queue_type.as_deref(),
        Some("quorum"),
        "kept on disk as a quorum queue"
    );
}
