//! Queues and Topics on NATS only: event types as subjects, duplicate detection, and Events for
//! objects with the longest names.

mod common;

use async_nats::jetstream::stream;
use common::broker::{EngineKind, TestBroker};
use common::streams::{T, create_orders_topic, patch_spec};
use common::wait_condition;
use serde_json::json;

#[tokio::test]
async fn topic_event_types_are_subjects_and_schemas_are_checked() {
    let env = stream_env!(EngineKind::Nats, "topic-event-types");
    let TestBroker::Nats { js, .. } = &env.broker else {
        unreachable!()
    };
    create_orders_topic(&env, &["OrderPlaced"]).await;
    wait_condition(&env.topics, "orders", "Ready", "True", T).await;
    let stream = env.name_in_broker("topic", "orders");
    let c = js
        .get_stream(&stream)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(c.retention, stream::RetentionPolicy::Limits);
    assert_eq!(c.subjects, [format!("{stream}.OrderPlaced")]);
    js.publish(format!("{stream}.OrderPlaced"), "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let undeclared = js
        .publish(format!("{stream}.Unknown"), "x".into())
        .await
        .unwrap()
        .await;
    assert!(
        undeclared.is_err(),
        "an undeclared event type has no stream to land in: the publisher gets an error"
    );

    patch_spec(
        &env.topics,
        "orders",
        json!({"eventTypes": [
            {"type": "OrderPlaced", "schema": {"type": "object"}},
            {"type": "OrderShipped", "schema": {"type": "object"}}
        ]}),
    )
    .await;
    common::wait_for("the new event type's subject", T, || async {
        let mut s = js.get_stream(&stream).await.ok()?;
        let c = s.info().await.ok()?.config.clone();
        (c.subjects.len() == 2 && c.subjects.contains(&format!("{stream}.OrderShipped")))
            .then_some(())
    })
    .await;
    assert_eq!(env.broker.messages(true, &stream).await, Some(1));

    patch_spec(
        &env.topics,
        "orders",
        json!({"eventTypes": [
            {"type": "OrderPlaced", "schema": {"type": "object"}},
            {"type": "OrderShipped", "schema": {"type": "objekt"}}
        ]}),
    )
    .await;
    let (reason, message) = wait_condition(&env.topics, "orders", "Ready", "False", T).await;
    assert_eq!(reason, "InvalidEventSchema");
    assert!(
        message.contains("eventTypes[OrderShipped].schema"),
        "{message}"
    );
}

#[tokio::test]
async fn a_message_id_published_twice_in_the_window_is_stored_once() {
    let env = stream_env!(EngineKind::Nats, "stream-dedup");
    let TestBroker::Nats { js, .. } = &env.broker else {
        unreachable!()
    };
    env.create_queue("orders", json!({"deduplicationWindow": "1m"}))
        .await;
    wait_condition(&env.queues, "orders", "Ready", "True", T).await;
    let (_, message) = wait_condition(&env.queues, "orders", "Supported", "True", T).await;
    assert!(message.contains("every setting"), "{message}");
    let stream = env.name_in_broker("queue", "orders");
    let mut acks = Vec::new();
    for _ in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "order-42");
        acks.push(
            js.publish_with_headers(stream.clone(), headers, "placed".into())
                .await
                .unwrap()
                .await
                .unwrap(),
        );
    }
    assert!(
        !acks[0].duplicate && acks[1].duplicate,
        "the broker flags the second publish as a duplicate"
    );
    assert_eq!(env.broker.messages(false, &stream).await, Some(1));
}

#[tokio::test]
async fn an_object_with_the_longest_name_still_gets_its_events() {
    let env = stream_env!(EngineKind::Nats, "stream-long-name");
    // 253 characters: the longest name Kubernetes allows, in dotted parts of at most 63.
    let part = "a".repeat(62);
    let name = format!("{part}.{part}.{part}.{part}.q");
    assert_eq!(name.len(), 253);
    env.create_queue(&name, json!({})).await;
    wait_condition(&env.queues, &name, "Ready", "True", T).await;
    let reasons = common::wait_for("the Queue's StreamCreated Event", T, || async {
        let reasons = common::event_reasons(&env.plane, &env.ns.name, &name).await;
        reasons
            .iter()
            .any(|r| r == "StreamCreated")
            .then_some(reasons)
    })
    .await;
    assert!(reasons.iter().any(|r| r == "StreamCreated"), "{reasons:?}");
}
