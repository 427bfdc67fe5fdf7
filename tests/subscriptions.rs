//! EventSubscriptions on real brokers, with the operator as its own process, the same test
//! body on NATS and on RabbitMQ: the durable consumer is created in the broker, receives exactly
//! the event types its filter selects, reports its backlog, follows a filter change in place,
//! and is deleted with the subscription while the Topic and its events stay.

mod common;

use common::broker::EngineKind;
use common::streams::{Env, T, create_orders_topic, patch_spec, wait_gone};
use common::{TestNamespace, condition, wait_condition, wait_for};
use conveyor::api::EventSubscription;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

/// A Deployment of the user's own with no replicas, for `consumer.workloadRef`.
async fn workload(env: &Env, name: &str) {
    workload_in(env, &env.ns.name, name).await;
}

async fn workload_in(env: &Env, ns: &str, name: &str) {
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "consumer", "image": "consumer:1"}]}
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(env.plane.client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
}

async fn create_subscription(api: &Api<EventSubscription>, name: &str, spec: Value) {
    let sub: EventSubscription = serde_json::from_value(json!({
        "apiVersion": "conveyor.dev/v1alpha1", "kind": "EventSubscription",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap();
    api.create(&PostParams::default(), &sub).await.unwrap();
}

async fn a_filtered_subscription_receives_exactly_its_event_types(engine: EngineKind) {
    let env = stream_env!(engine, "sub-filter");
    create_orders_topic(&env, &["OrderPlaced", "OrderCancelled"]).await;
    wait_condition(&env.topics, "orders", "Ready", "True", T).await;
    workload(&env, "payment").await;
    let subs: Api<EventSubscription> = Api::namespaced(env.plane.client.clone(), &env.ns.name);
    create_subscription(
        &subs,
        "payment",
        json!({
            "topicRef": {"name": "orders"},
            "filter": {"eventTypes": ["OrderPlaced"]},
            "consumer": {"workloadRef": {"name": "payment"}},
            // Paused: not even the scale is written, so the Deployment stays as it was.
            "scaling": {"paused": true}
        }),
    )
    .await;
    wait_condition(&subs, "payment", "ConsumerReady", "True", T).await;
    wait_condition(&subs, "payment", "Ready", "True", T).await;
    let deployments: Api<Deployment> = Api::namespaced(env.plane.client.clone(), &env.ns.name);
    let before = deployments.get("payment").await.unwrap();
    let sub = subs.get("payment").await.unwrap();
    let status = sub.status.clone().unwrap();
    let consumer = env.name_in_broker("sub", "payment");
    let topic = env.name_in_broker("topic", "orders");
    assert_eq!(status.consumer_name.as_deref(), Some(consumer.as_str()));
    assert_eq!(status.source_in_broker.as_deref(), Some(topic.as_str()));
    assert_eq!(status.source.as_deref(), Some("topic/orders"));
    assert!(env.broker.consumer_exists(&topic, &consumer).await);

    env.broker.publish_events(&topic, "OrderPlaced", 1000).await;
    env.broker
        .publish_events(&topic, "OrderCancelled", 1000)
        .await;
    let got = env.broker.drain_consumer(&topic, &consumer).await;
    assert_eq!(got.len(), 1000, "exactly the 1,000 OrderPlaced events");
    assert!(got.iter().all(|t| t == "OrderPlaced"), "only OrderPlaced");

    // A filter change is applied in place: the consumer stays and takes the new type.
    patch_spec(
        &subs,
        "payment",
        json!({"filter": {"eventTypes": ["OrderPlaced", "OrderCancelled"]}}),
    )
    .await;
    wait_for("the filter change to reach the broker", T, || async {
        let s = subs.get("payment").await.unwrap();
        (s.status.and_then(|s| s.observed_generation) == s.metadata.generation).then_some(())
    })
    .await;
    env.broker
        .publish_events(&topic, "OrderCancelled", 10)
        .await;
    let got = env.broker.drain_consumer(&topic, &consumer).await;
    assert_eq!(got, vec!["OrderCancelled".to_string(); 10]);
    let after = deployments.get("payment").await.unwrap();
    // The plane's Deployment controller writes its status; Conveyor writes nothing.
    assert_eq!(
        after.spec, before.spec,
        "a workloadRef Deployment is never written"
    );
    assert_eq!(after.metadata.labels, before.metadata.labels);
    assert_eq!(after.metadata.annotations, before.metadata.annotations);
    let managers: Vec<_> = after
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        !managers
            .iter()
            .any(|m| m == conveyor::controller::FIELD_MANAGER
                || m == conveyor::autoscale::FIELD_MANAGER),
        "{managers:?}"
    );
    assert!(
        after.metadata.owner_references.is_none(),
        "nor adopted: {:?}",
        after.metadata.owner_references
    );

    // Deleting the subscription deletes its consumer; the Topic keeps its events.
    subs.delete("payment", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&subs, "payment").await;
    assert!(!env.broker.consumer_exists(&topic, &consumer).await);
    assert!(env.broker.exists(true, &topic).await);
}
on_both_engines!(a_filtered_subscription_receives_exactly_its_event_types);

async fn a_subscription_waits_for_its_source_and_says_why(engine: EngineKind) {
    let env = stream_env!(engine, "sub-source");
    workload(&env, "shipping").await;
    let subs: Api<EventSubscription> = Api::namespaced(env.plane.client.clone(), &env.ns.name);
    create_subscription(
        &subs,
        "shipping",
        json!({"topicRef": {"name": "orders"}, "consumer": {"workloadRef": {"name": "shipping"}}}),
    )
    .await;
    let (reason, _) = wait_condition(&subs, "shipping", "ResolvedRefs", "False", T).await;
    assert_eq!(reason, "TopicNotFound");
    let (reason, message) = wait_condition(&subs, "shipping", "ConsumerReady", "False", T).await;
    assert_eq!(reason, "TopicNotFound", "{message}");
    // The Topic appears: the subscription follows without being touched.
    create_orders_topic(&env, &["OrderPlaced"]).await;
    wait_condition(&subs, "shipping", "Ready", "True", T).await;
    let topic = env.name_in_broker("topic", "orders");
    let consumer = env.name_in_broker("sub", "shipping");
    assert!(env.broker.consumer_exists(&topic, &consumer).await);
}
on_both_engines!(a_subscription_waits_for_its_source_and_says_why);

async fn a_queue_subscription_takes_the_queues_work(engine: EngineKind) {
    let env = stream_env!(engine, "sub-queue");
    env.create_queue("work", json!({})).await;
    wait_condition(&env.queues, "work", "Ready", "True", T).await;
    workload(&env, "worker").await;
    let subs: Api<EventSubscription> = Api::namespaced(env.plane.client.clone(), &env.ns.name);
    let spec =
        json!({"queueRef": {"name": "work"}, "consumer": {"workloadRef": {"name": "worker"}}});
    create_subscription(&subs, "worker", spec.clone()).await;
    wait_condition(&subs, "worker", "Ready", "True", T).await;
    let queue = env.name_in_broker("queue", "work");
    let consumer = match engine {
        EngineKind::Nats => env.name_in_broker("sub", "worker"),
        // On RabbitMQ the consumer is the Queue's own queue.
        EngineKind::Rabbitmq => queue.clone(),
    };
    env.broker.publish_to_queue(&queue, 50).await;
    assert_eq!(env.broker.drain_consumer(&queue, &consumer).await.len(), 50);

    // A second subscription on the same Queue.
    create_subscription(&subs, "second", spec).await;
    match engine {
        EngineKind::Nats => {
            let (reason, message) =
                wait_condition(&subs, "second", "ConsumerReady", "False", T).await;
            assert_eq!(reason, "Conflict", "{message}");
            assert!(message.contains("one EventSubscription"), "{message}");
        }
        // Competing consumers of one quorum queue.
        EngineKind::Rabbitmq => {
            wait_condition(&subs, "second", "Ready", "True", T).await;
        }
    }

    // Deleting a subscription leaves the Queue and its messages.
    env.broker.publish_to_queue(&queue, 5).await;
    subs.delete("worker", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&subs, "worker").await;
    assert!(env.broker.exists(false, &queue).await);
    wait_for("the Queue to keep its 5 messages", T, || async {
        (env.broker.messages(false, &queue).await == Some(5)).then_some(())
    })
    .await;
}
on_both_engines!(a_queue_subscription_takes_the_queues_work);

async fn a_subscription_deleted_after_its_topic_still_deletes_its_consumer(engine: EngineKind) {
    let env = stream_env!(engine, "sub-after-topic");
    // A Retain Topic keeps its stream (or exchange) in the broker when the Topic goes.
    create_orders_topic(&env, &["OrderPlaced"]).await;
    wait_condition(&env.topics, "orders", "Ready", "True", T).await;
    workload(&env, "audit").await;
    let subs: Api<EventSubscription> = Api::namespaced(env.plane.client.clone(), &env.ns.name);
    create_subscription(
        &subs,
        "audit",
        json!({"topicRef": {"name": "orders"}, "consumer": {"workloadRef": {"name": "audit"}}}),
    )
    .await;
    wait_condition(&subs, "audit", "Ready", "True", T).await;
    let topic = env.name_in_broker("topic", "orders");
    let consumer = env.name_in_broker("sub", "audit");
    env.topics
        .delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    let (reason, _) = wait_condition(&subs, "audit", "ResolvedRefs", "False", T).await;
    assert_eq!(reason, "TopicNotFound");
    assert!(
        env.broker.consumer_exists(&topic, &consumer).await,
        "a missing source does not delete the consumer"
    );
    subs.delete("audit", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&subs, "audit").await;
    assert!(!env.broker.consumer_exists(&topic, &consumer).await);
    assert!(
        env.broker.exists(true, &topic).await,
        "the retained Topic stays"
    );
}
on_both_engines!(a_subscription_deleted_after_its_topic_still_deletes_its_consumer);

async fn a_template_subscription_gets_a_deployment_and_a_secret_that_work(engine: EngineKind) {
    let env = stream_env!(engine, "sub-template");
    create_orders_topic(&env, &["OrderPlaced"]).await;
    wait_condition(&env.topics, "orders", "Ready", "True", T).await;
    let subs: Api<EventSubscription> = Api::namespaced(env.plane.client.clone(), &env.ns.name);
    create_subscription(
        &subs,
        "payment",
        json!({
            "topicRef": {"name": "orders"},
            "consumer": {"template": {
                "metadata": {"labels": {"app": "payment"}},
                "spec": {"containers": [{"name": "app", "image": "shop/payment:1"}]}
            }}
        }),
    )
    .await;
    wait_condition(&subs, "payment", "Ready", "True", T).await;
    let deployments: Api<Deployment> = Api::namespaced(env.plane.client.clone(), &env.ns.name);
    let secrets: Api<Secret> = Api::namespaced(env.plane.client.clone(), &env.ns.name);
    let d = wait_for("the consumer Deployment", T, || async {
        deployments.get_opt("payment").await.unwrap()
    })
    .await;
    let sub = subs.get("payment").await.unwrap();
    let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.uid, sub.metadata.uid.clone().unwrap());
    assert_eq!(owner.controller, Some(true));
    let pod = d.spec.template.clone();
    assert_eq!(pod.metadata.unwrap().labels.unwrap()["app"], "payment");
    let env_from = pod.spec.unwrap().containers[0].env_from.clone().unwrap();
    assert_eq!(
        env_from[0].secret_ref.as_ref().unwrap().name,
        "payment-consumer"
    );

    let secret = secrets.get("payment-consumer").await.unwrap();
    let data = secret.data.unwrap();
    let value = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    let topic = env.name_in_broker("topic", "orders");
    let consumer = env.name_in_broker("sub", "payment");
    assert_eq!(value("CONVEYOR_ENGINE"), engine.name());
    assert_eq!(value("CONVEYOR_SOURCE"), topic);
    assert_eq!(value("CONVEYOR_CONSUMER"), consumer);
    assert_eq!(
        value("CONVEYOR_SUBSCRIPTION"),
        format!("{}/payment", env.ns.name)
    );
    assert!(!value("CONVEYOR_URLS").is_empty());
    if engine == EngineKind::Nats {
        // A real client with nothing but the Secret's settings receives an event.
        env.broker.publish_events(&topic, "OrderPlaced", 1).await;
        let client = async_nats::connect(value("CONVEYOR_URLS")).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let c: async_nats::jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream(value("CONVEYOR_CONSUMER"), value("CONVEYOR_SOURCE"))
            .await
            .unwrap();
        let mut batch = c.fetch().max_messages(1).messages().await.unwrap();
        use futures::StreamExt;
        let m = batch.next().await.unwrap().unwrap();
        assert!(m.subject.ends_with(".OrderPlaced"));
        m.ack().await.unwrap();
    } else {
        assert_eq!(value("CONVEYOR_VIRTUAL_HOST"), env.broker.vhost().unwrap());
        // A real AMQP client with nothing but the Secret's settings receives an event.
        env.broker.publish_events(&topic, "OrderPlaced", 1).await;
        let settings = common::amqp::values(&secrets.get("payment-consumer").await.unwrap());
        let conn = common::amqp::connect(&settings).await.unwrap();
        let got = wait_for("an event for the Secret's user", T, || async {
            common::amqp::take_one(&conn, &value("CONVEYOR_CONSUMER"))
                .await
                .unwrap()
        })
        .await;
        assert_eq!(got, "OrderPlaced");
    }

    // The replica count belongs to whoever scales: a later reconcile leaves it.
    deployments
        .patch_scale(
            "payment",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    patch_spec(&subs, "payment", json!({"delivery": {"maxDeliveries": 7}})).await;
    wait_for("the change to be reconciled", T, || async {
        let s = subs.get("payment").await.unwrap();
        (s.status.and_then(|s| s.observed_generation) == s.metadata.generation).then_some(())
    })
    .await;
    let d = deployments.get("payment").await.unwrap();
    assert_eq!(d.spec.replicas, Some(3));

    // A deleted Deployment is made again.
    deployments
        .delete("payment", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the Deployment to be made again", T, || async {
        deployments
            .get_opt("payment")
            .await
            .unwrap()
            .filter(|n| n.metadata.uid != d.metadata.uid)
    })
    .await;
}
on_both_engines!(a_template_subscription_gets_a_deployment_and_a_secret_that_work);

async fn a_topic_in_another_namespace_admits_only_the_namespaces_it_lists(engine: EngineKind) {
    let test = format!("sub-xns-{}", engine.name());
    let (plane, ns) = setup!(&test);
    // The subscriber's namespace, watched by the same operator.
    let other = TestNamespace::create(&plane, &format!("{test}-b")).await;
    let extra = ["--namespaces", other.name.as_str()];
    let Some(env) = Env::start(engine, &test, plane, ns, &extra).await else {
        return;
    };
    create_orders_topic(&env, &["OrderPlaced"]).await;
    wait_condition(&env.topics, "orders", "Ready", "True", T).await;
    workload_in(&env, &other.name, "billing").await;
    let subs: Api<EventSubscription> = Api::namespaced(env.plane.client.clone(), &other.name);
    create_subscription(
        &subs,
        "billing",
        json!({
            "topicRef": {"name": "orders", "namespace": env.ns.name},
            "consumer": {"workloadRef": {"name": "billing"}}
        }),
    )
    .await;
    let topic = env.name_in_broker("topic", "orders");
    let consumer = format!("sub_{}_billing", other.name.replace('.', "_"));
    let secrets: Api<Secret> = Api::namespaced(env.plane.client.clone(), &other.name);

    // Not listed: refused, and nothing is made for it.
    let (reason, message) = wait_condition(&subs, "billing", "ResolvedRefs", "False", T).await;
    assert_eq!(reason, "RefNotPermitted", "{message}");
    assert!(
        message.contains("spec.allowedNamespaces") && message.contains(&other.name),
        "{message}"
    );
    let (ready, _, _) = condition(&subs, "billing", "Ready").await.unwrap();
    assert_eq!(ready, "False");
    assert!(!env.broker.consumer_exists(&topic, &consumer).await);
    assert!(secrets.get_opt("billing-consumer").await.unwrap().is_none());

    // Listed: the subscription gets its consumer and its events.
    patch_spec(
        &env.topics,
        "orders",
        json!({"allowedNamespaces": [other.name]}),
    )
    .await;
    wait_condition(&subs, "billing", "Ready", "True", T).await;
    let status = subs.get("billing").await.unwrap().status.unwrap();
    assert_eq!(
        status.source.as_deref(),
        Some(format!("topic/{}/orders", env.ns.name).as_str())
    );
    assert_eq!(status.consumer_name.as_deref(), Some(consumer.as_str()));
    assert!(secrets.get_opt("billing-consumer").await.unwrap().is_some());
    env.broker.publish_events(&topic, "OrderPlaced", 10).await;
    let got = env.broker.drain_consumer(&topic, &consumer).await;
    assert_eq!(got.len(), 10);

    // Unlisted again: refused again, and on RabbitMQ its credentials are revoked (the
    // consumer and its queue stay); listed once more, it gets working credentials back.
    patch_spec(&env.topics, "orders", json!({"allowedNamespaces": null})).await;
    let (reason, _) = wait_condition(&subs, "billing", "ResolvedRefs", "False", T).await;
    assert_eq!(reason, "RefNotPermitted");
    if engine == EngineKind::Rabbitmq {
        let (reason, _) = wait_condition(&subs, "billing", "Isolated", "False", T).await;
        assert_eq!(reason, "RefNotPermitted");
        let settings = common::amqp::values(&secrets.get("billing-consumer").await.unwrap());
        assert!(common::amqp::connect(&settings).await.is_err());
        assert!(env.broker.consumer_exists(&topic, &consumer).await);
        patch_spec(
            &env.topics,
            "orders",
            json!({"allowedNamespaces": [other.name]}),
        )
        .await;
        wait_condition(&subs, "billing", "Isolated", "True", T).await;
        let settings = common::amqp::values(&secrets.get("billing-consumer").await.unwrap());
        common::amqp::connect(&settings).await.unwrap();
    }
    subs.delete("billing", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&subs, "billing").await;
    assert!(!env.broker.consumer_exists(&topic, &consumer).await);
}
on_both_engines!(a_topic_in_another_namespace_admits_only_the_namespaces_it_lists);

async fn each_subscription_consumes_with_an_identity_of_its_own(engine: EngineKind) {
    use common::amqp;
    let env = stream_env!(engine, "sub-identity");
    create_orders_topic(&env, &["OrderPlaced"]).await;
    wait_condition(&env.topics, "orders", "Ready", "True", T).await;
    let subs: Api<EventSubscription> = Api::namespaced(env.plane.client.clone(), &env.ns.name);
    for name in ["payment", "shipping"] {
        workload(&env, name).await;
        create_subscription(
            &subs,
            name,
            json!({"topicRef": {"name": "orders"}, "consumer": {"workloadRef": {"name": name}}}),
        )
        .await;
    }
    for name in ["payment", "shipping"] {
        wait_condition(&subs, name, "Ready", "True", T).await;
    }
    let secrets: Api<Secret> = Api::namespaced(env.plane.client.clone(), &env.ns.name);
    let settings = amqp::values(&secrets.get("payment-consumer").await.unwrap());
    if engine == EngineKind::Nats {
        // No NATS identities yet: the condition and the Secret say so.
        let (reason, message) = wait_condition(&subs, "payment", "Isolated", "False", T).await;
        assert_eq!(reason, "IdentityUnavailable");
        assert!(message.contains("credentials of its own"), "{message}");
        assert!(!settings.contains_key("CONVEYOR_USERNAME"), "{settings:?}");
        return;
    }
    let (reason, message) = wait_condition(&subs, "payment", "Isolated", "True", T).await;
    assert_eq!(reason, "OwnIdentity", "{message}");
    let topic = env.name_in_broker("topic", "orders");
    let own = env.name_in_broker("sub", "payment");
    let other = env.name_in_broker("sub", "shipping");
    let shipping = amqp::values(&secrets.get("shipping-consumer").await.unwrap());
    assert_ne!(settings["CONVEYOR_USERNAME"], shipping["CONVEYOR_USERNAME"]);
    assert_ne!(settings["CONVEYOR_PASSWORD"], shipping["CONVEYOR_PASSWORD"]);

    // Its own queue: consumed and acknowledged with nothing but the Secret.
    env.broker.publish_events(&topic, "OrderPlaced", 2).await;
    let conn = amqp::connect(&settings).await.unwrap();
    let got = wait_for("an event on the subscription's own queue", T, || async {
        amqp::take_one(&conn, &own).await.unwrap()
    })
    .await;
    assert_eq!(got, "OrderPlaced");
    // Not another subscription's queue, not publishing to the Topic, not the management API.
    let refused = amqp::take_one(&conn, &other).await;
    assert!(
        format!("{refused:?}").contains("ACCESS_REFUSED"),
        "{refused:?}"
    );
    let refused = amqp::publish(&conn, &topic, "OrderPlaced").await;
    assert!(
        format!("{refused:?}").contains("ACCESS_REFUSED"),
        "{refused:?}"
    );
    let Some(vhost) = env.broker.vhost() else {
        unreachable!()
    };
    let plane = common::broker::RabbitPlane::from_env().unwrap();
    let management = conveyor::engine::rabbitmq::management::ManagementClient::new(
        &plane.management_url,
        &settings["CONVEYOR_USERNAME"],
        &settings["CONVEYOR_PASSWORD"],
        None,
    )
    .unwrap();
    let refused = management.queues(vhost).await;
    assert!(
        matches!(
            refused,
            Err(conveyor::engine::rabbitmq::management::ManagementError::Unauthorized(_))
        ),
        "{refused:?}"
    );

    // Deleted: the identity is revoked, its connection closed and its password refused.
    subs.delete("payment", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&subs, "payment").await;
    wait_for("the old connection to be closed", T, || async {
        (!conn.status().connected()).then_some(())
    })
    .await;
    let refused = amqp::connect(&settings).await;
    assert!(
        refused.is_err(),
        "the deleted subscription's credentials still work"
    );
    // The other subscription is untouched.
    let conn = amqp::connect(&shipping).await.unwrap();
    assert_eq!(
        amqp::take_one(&conn, &other).await.unwrap().as_deref(),
        Some("OrderPlaced")
    );
}
on_both_engines!(each_subscription_consumes_with_an_identity_of_its_own);

async fn a_message_rejected_on_every_delivery_becomes_a_dead_letter_once(engine: EngineKind) {
    let mut env = stream_env!(engine, "sub-dead");
    create_orders_topic(&env, &["OrderPlaced"]).await;
    wait_condition(&env.topics, "orders", "Ready", "True", T).await;
    workload(&env, "payment").await;
    let subs: Api<EventSubscription> = Api::namespaced(env.plane.client.clone(), &env.ns.name);
    create_subscription(
        &subs,
        "payment",
        json!({
            "topicRef": {"name": "orders"},
            "delivery": {"maxDeliveries": 3, "backoff": ["1s", "2s"], "deadLetter": {"enabled": true}},
            "consumer": {"workloadRef": {"name": "payment"}}
        }),
    )
    .await;
    wait_condition(&subs, "payment", "Ready", "True", T).await;
    let topic = env.name_in_broker("topic", "orders");
    let consumer = env.name_in_broker("sub", "payment");
    let dead = format!("{consumer}_dead");
    let status = subs.get("payment").await.unwrap().status.unwrap();
    assert_eq!(
        status.dead_letter_destination.as_deref(),
        Some(dead.as_str())
    );
    assert_eq!(status.dead_letters, Some(0));
    let secrets: Api<Secret> = Api::namespaced(env.plane.client.clone(), &env.ns.name);
    let settings = common::amqp::values(&secrets.get("payment-consumer").await.unwrap());
    assert_eq!(settings["CONVEYOR_DEAD_LETTER"], dead);

    // The rejections happen while the operator is down.
    env.stop_operator();
    env.broker.publish_events(&topic, "OrderPlaced", 1).await;
    let deliveries = env.broker.reject_every_delivery(&settings).await;
    assert_eq!(deliveries, 3, "maxDeliveries deliveries, then no more");
    env.start_operator();

    let headers = env.broker.wait_dead_letter(&dead).await;
    eprintln!("dead letter headers: {headers}");
    let text = headers.to_string();
    assert!(text.contains(&consumer), "names the consumer: {text}");
    assert!(text.contains(&topic), "names the source: {text}");
    if engine == EngineKind::Nats {
        assert_eq!(headers["Conveyor-Deliveries"], "3", "{text}");
        assert_eq!(headers["Conveyor-Source-Sequence"], "1", "{text}");
        assert_eq!(
            headers["Conveyor-Source-Subject"],
            format!("{topic}.OrderPlaced"),
            "{text}"
        );
        assert!(
            headers["Conveyor-Dead-At"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        );
    } else {
        // RabbitMQ dead-letters after exactly maxDeliveries deliveries, and says so in x-death.
        assert_eq!(headers["x-first-death-reason"], "delivery_limit", "{text}");
        assert_eq!(
            headers["x-death"][0]["routing-keys"][0], "OrderPlaced",
            "{text}"
        );
        assert!(headers["x-death"][0]["time"].is_number(), "{text}");
    }
    // Exactly once, also after the operator's restart.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(env.broker.messages(false, &dead).await, Some(1));

    // Status counts it (a spec change makes the next pass now rather than at the resync).
    patch_spec(&subs, "payment", json!({"delivery": {"maxAckPending": 10}})).await;
    wait_for("status to count the dead letter", T, || async {
        let s = subs.get("payment").await.unwrap().status?;
        (s.dead_letters == Some(1)).then_some(())
    })
    .await;
    // Deleting the subscription keeps its dead letters.
    subs.delete("payment", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&subs, "payment").await;
    assert!(!env.broker.consumer_exists(&topic, &consumer).await);
    assert_eq!(env.broker.messages(false, &dead).await, Some(1));
}
on_both_engines!(a_message_rejected_on_every_delivery_becomes_a_dead_letter_once);
