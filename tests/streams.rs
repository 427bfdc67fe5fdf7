//! Queues and Topics on real brokers, with the operator as its own process, the same test body
//! on NATS (a nats-server of the test's own) and on RabbitMQ (a virtual host of the test's own
//! on the plane's rabbitmq-server): destinations created, updated in place and deleted under
//! each deletion policy; drift repaired or reported; foreign queues left alone; convergence
//! after the broker comes back; deletion that does not hang when the broker is gone; and 200
//! Queues applied at once. Engine-specific behaviour (subjects, routing keys, duplicate
//! detection) is tested in streams_nats.rs and streams_rabbitmq.rs.

mod common;

use std::time::{Duration, Instant};

use common::broker::{EngineKind, TestBroker};
use common::streams::{Env, T, patch_spec};
use common::wait_condition;
use futures::future::join_all;
use kube::api::DeleteParams;
use serde_json::{Value, json};

async fn queues_are_created_updated_and_deleted_under_each_policy(engine: EngineKind) {
    let env = stream_env!(
        engine,
        "queue-lifecycle",
        &["--stream-refresh-seconds", "2"]
    );
    for (name, policy) in [
        ("keep", "Retain"),
        ("drop", "Delete"),
        ("drain", "DeleteIfEmpty"),
    ] {
        env.create_queue(
            name,
            json!({"deletionPolicy": policy, "retention": {"maxAge": "1h"}}),
        )
        .await;
    }
    for name in ["keep", "drop", "drain"] {
        wait_condition(&env.queues, name, "Ready", "True", T).await;
        let queue = env.name_in_broker("queue", name);
        assert!(
            env.broker.exists(false, &queue).await,
            "{queue} is in the broker"
        );
        assert_eq!(
            env.broker.max_age(false, &queue).await,
            Some(Duration::from_secs(3600))
        );
        env.broker.publish_to_queue(&queue, 3).await;
        common::wait_for(&format!("{name} status to count 3 messages"), T, || async {
            let q = env.queues.get(name).await.ok()?;
            (q.status?.messages == Some(3)).then_some(())
        })
        .await;
        patch_spec(&env.queues, name, json!({"retention": {"maxAge": "2h"}})).await;
        common::wait_for("the update to reach the broker in place", T, || async {
            (env.broker.max_age(false, &queue).await? == Duration::from_secs(7200)).then_some(())
        })
        .await;
        env.wait_messages(&queue, 3).await;
    }

    // Retain: the resource goes, the queue and its messages stay.
    env.queues
        .delete("keep", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("keep").await;
    env.wait_messages(&env.name_in_broker("queue", "keep"), 3)
        .await;

    // Delete: the queue goes with the resource.
    env.queues
        .delete("drop", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("drop").await;
    assert!(
        !env.broker
            .exists(false, &env.name_in_broker("queue", "drop"))
            .await
    );

    // DeleteIfEmpty: refused while messages remain, done once the queue is empty.
    env.queues
        .delete("drain", &DeleteParams::default())
        .await
        .unwrap();
    let (_, message) = common::wait_for("DeleteIfEmpty to block", T, || async {
        let (s, reason, message) = common::condition(&env.queues, "drain", "Ready").await?;
        (s == "False" && reason == "DeletionBlocked").then_some(((), message))
    })
    .await;
    assert!(message.contains("3 message"), "{message}");
    let drain = env.name_in_broker("queue", "drain");
    env.wait_messages(&drain, 3).await;
    assert!(
        common::event_reasons(&env.plane, &env.ns.name, "drain")
            .await
            .iter()
            .any(|r| r == "DeletionBlocked")
    );
    env.broker.purge(&drain).await;
    env.gone("drain").await;
    assert!(!env.broker.exists(false, &drain).await);
}
on_both_engines!(queues_are_created_updated_and_deleted_under_each_policy);

async fn drift_is_repaired_or_only_reported(engine: EngineKind) {
    let env = stream_env!(engine, "stream-drift", &["--stream-refresh-seconds", "2"]);
    env.create_queue("repaired", json!({"retention": {"maxAge": "1h"}}))
        .await;
    env.create_queue(
        "reported",
        json!({"retention": {"maxAge": "1h"}, "driftPolicy": "Report"}),
    )
    .await;
    wait_condition(&env.queues, "repaired", "Ready", "True", T).await;
    wait_condition(&env.queues, "reported", "Ready", "True", T).await;
    let (repaired, reported) = (
        env.name_in_broker("queue", "repaired"),
        env.name_in_broker("queue", "reported"),
    );

    // Deleted outside Conveyor: recreated.
    env.broker.delete_outside(false, &repaired).await;
    common::wait_for("the deleted queue to be recreated", T, || async {
        env.broker.exists(false, &repaired).await.then_some(())
    })
    .await;

    // Edited outside Conveyor: set back, or reported and left.
    for q in [&repaired, &reported] {
        env.broker
            .edit_max_age(false, q, Duration::from_secs(600))
            .await;
    }
    common::wait_for("the edited queue to be set back", T, || async {
        (env.broker.max_age(false, &repaired).await? == Duration::from_secs(3600)).then_some(())
    })
    .await;
    let (reason, message) = wait_condition(&env.queues, "reported", "Synced", "False", T).await;
    assert_eq!(reason, "Drifted");
    assert!(message.contains("maxAge"), "{message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.broker.max_age(false, &reported).await,
        Some(Duration::from_secs(600)),
        "Report leaves the queue as it is"
    );

    let events = common::event_reasons(&env.plane, &env.ns.name, "repaired").await;
    // Repeated Events of one reason are kept as one series, so one entry covers both repairs.
    assert!(events.iter().any(|r| r == "DriftRepaired"), "{events:?}");
    assert!(
        common::event_reasons(&env.plane, &env.ns.name, "reported")
            .await
            .iter()
            .any(|r| r == "DriftDetected")
    );
}
on_both_engines!(drift_is_repaired_or_only_reported);

/// Idle Queues cost one broker listing per refresh, not a reconcile and a request each; a
/// change of figures in the broker reaches the status through that listing.
async fn idle_queues_are_refreshed_from_one_listing(engine: EngineKind) {
    let env = stream_env!(engine, "stream-listing", &["--stream-refresh-seconds", "1"]);
    let names: Vec<String> = (0..5).map(|i| format!("idle-{i}")).collect();
    for name in &names {
        env.create_queue(name, json!({})).await;
    }
    for name in &names {
        wait_condition(&env.queues, name, "Ready", "True", T).await;
    }
    let op = env.op.as_ref().unwrap();
    let sample = || async {
        (
            op.metric("conveyor_reconciliations_total", "kind=\"Queue\"")
                .await,
            op.metric("conveyor_destination_checks_total", "source=\"broker\"")
                .await,
            op.metric("conveyor_broker_listings_total", "outcome=\"success\"")
                .await,
        )
    };
    // Let the creation settle (finalizer, first status, first listings).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (reconciles, asked, listings) = sample().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (reconciles_after, asked_after, listings_after) = sample().await;
    eprintln!(
        "{engine:?} idle for 6 s with 5 Queues: {} reconciles, {} broker checks, {} listings",
        reconciles_after - reconciles,
        asked_after - asked,
        listings_after - listings
    );
    assert!(
        listings_after - listings >= 3.0,
        "the Broker is listed about once a second: {listings} -> {listings_after}"
    );
    assert!(
        reconciles_after - reconciles < 5.0,
        "idle Queues are not reconciled each refresh: {reconciles} -> {reconciles_after}"
    );
    assert_eq!(asked_after, asked, "idle Queues do not ask the broker");

    let queue = env.name_in_broker("queue", "idle-0");
    env.broker.publish_to_queue(&queue, 3).await;
    common::wait_for("the new depth to reach the status", T, || async {
        let q = env.queues.get("idle-0").await.ok()?;
        (q.status?.messages == Some(3)).then_some(())
    })
    .await;
    assert_eq!(
        op.metric("conveyor_destination_checks_total", "source=\"broker\"")
            .await,
        asked,
        "the depth came from the listing"
    );
    let others: Vec<_> = join_all(names[1..].iter().map(|n| env.queues.get(n))).await;
    for q in others {
        assert_eq!(q.unwrap().status.unwrap().messages, Some(0));
    }
    for name in &names {
        env.queues
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    for name in &names {
        env.gone(name).await;
    }
}
on_both_engines!(idle_queues_are_refreshed_from_one_listing);

async fn a_queue_conveyor_did_not_create_is_not_taken_over(engine: EngineKind) {
    let env = stream_env!(engine, "stream-conflict");
    let name = env.name_in_broker("queue", "taken");
    env.broker.create_foreign_queue(&name).await;
    env.create_queue("taken", json!({})).await;
    let (reason, message) = wait_condition(&env.queues, "taken", "Ready", "False", T).await;
    assert_eq!(reason, "Conflict");
    assert!(message.contains("not created by Conveyor"), "{message}");
    assert!(
        env.broker.foreign_queue_untouched(&name).await,
        "the foreign queue is untouched"
    );
    // Deleting the resource leaves the foreign queue too, whatever its policy.
    patch_spec(&env.queues, "taken", json!({"deletionPolicy": "Delete"})).await;
    env.queues
        .delete("taken", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("taken").await;
    assert!(env.broker.foreign_queue_untouched(&name).await);
}
on_both_engines!(a_queue_conveyor_did_not_create_is_not_taken_over);

async fn a_queue_created_while_the_broker_is_down_converges_when_it_returns(engine: EngineKind) {
    let mut env = stream_env!(engine, "stream-broker-down");
    env.broker.cut().await;
    wait_condition(&env.brokers, "events", "Reachable", "False", T).await;
    env.create_queue("patient", json!({})).await;
    let (reason, message) = wait_condition(&env.queues, "patient", "Ready", "False", T).await;
    assert_eq!(reason, "BrokerNotReady");
    assert!(message.contains("not reachable"), "{message}");
    env.broker.restore().await;
    let back = Instant::now();
    wait_condition(&env.queues, "patient", "Ready", "True", T).await;
    eprintln!(
        "{}: the Queue became Ready {:?} after the broker came back",
        env.engine().name(),
        back.elapsed()
    );
    assert!(
        env.broker
            .exists(false, &env.name_in_broker("queue", "patient"))
            .await
    );
}
on_both_engines!(a_queue_created_while_the_broker_is_down_converges_when_it_returns);

async fn deletion_does_not_hang_when_the_broker_is_gone(engine: EngineKind) {
    let mut env = stream_env!(engine, "stream-broker-gone");
    env.create_queue("orphan", json!({"deletionPolicy": "Delete"}))
        .await;
    env.create_queue("homeless", json!({"deletionPolicy": "Delete"}))
        .await;
    wait_condition(&env.queues, "orphan", "Ready", "True", T).await;
    wait_condition(&env.queues, "homeless", "Ready", "True", T).await;

    // The broker goes away for good: the deletion is retried for the grace period (3 s here),
    // then the resource goes and an Event says the queue was left behind.
    env.broker.cut().await;
    wait_condition(&env.brokers, "events", "Reachable", "False", T).await;
    let started = Instant::now();
    env.queues
        .delete("orphan", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("orphan").await;
    // The grace period runs from the deletion timestamp, which has whole seconds: up to one
    // second earlier than this test's clock.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "retried for the grace period first"
    );
    assert!(
        common::event_reasons(&env.plane, &env.ns.name, "orphan")
            .await
            .iter()
            .any(|r| r == "StreamLeftInBroker")
    );

    // The Broker resource itself is gone: nothing to wait for.
    env.brokers
        .delete("events", &DeleteParams::default())
        .await
        .unwrap();
    env.queues
        .delete("homeless", &DeleteParams::default())
        .await
        .unwrap();
    env.gone("homeless").await;
}
on_both_engines!(deletion_does_not_hang_when_the_broker_is_gone);

async fn two_hundred_queues_applied_at_once_all_become_ready(engine: EngineKind) {
    let env = stream_env!(engine, "stream-200");
    let started = Instant::now();
    let names: Vec<String> = (0..200).map(|i| format!("q{i:03}")).collect();
    join_all(names.iter().map(|n| env.create_queue(n, json!({})))).await;
    common::wait_for(
        "200 Queues to be Ready",
        Duration::from_secs(180),
        || async {
            let list = env.queues.list(&Default::default()).await.ok()?;
            let ready = list
                .items
                .iter()
                .filter(|q| {
                    q.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
                .count();
            (ready == 200).then_some(())
        },
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(env.broker.count_queues().await, 200);
    eprintln!(
        "{}: 200 Queues applied at once were all Ready after {elapsed:?}",
        env.engine().name()
    );
    refresh_cost(&env, &names).await;
}

/// What the 200 Queues cost the broker: a full check of each, as a resync does, one after
/// another; and one listing of the Broker, as each refresh does.
async fn refresh_cost(env: &Env, names: &[String]) {
    use conveyor::engine::registry::{Auth, ConnectRequest, Registry};
    use conveyor::engine::{DestinationKind, DestinationSpec, Discard, Engine, Storage, SyncMode};
    let (spec, _) = env.broker.broker_spec();
    let ext = &spec["external"];
    let text = |v: &Value| v.as_str().map(str::to_string);
    let (engine, auth) = match &env.broker {
        TestBroker::Nats { .. } => (Engine::Nats, Auth::None),
        TestBroker::Rabbitmq(r) => (
            Engine::Rabbitmq,
            Auth::UserPassword(r.plane.user.clone(), r.plane.password.clone()),
        ),
    };
    let req = ConnectRequest {
        engine,
        urls: vec![text(&ext["urls"][0]).unwrap()],
        management_url: text(&ext["rabbitmq"]["managementUrl"]),
        virtual_host: text(&ext["rabbitmq"]["virtualHost"]),
        auth,
        only_listed_urls: true,
        ..Default::default()
    };
    let registry = Registry::default();
    let conn = registry
        .connect(&("bench".into(), "events".into()), &req)
        .await
        .unwrap();
    let started = Instant::now();
    for n in names {
        let name = env.name_in_broker("queue", n);
        let wanted = DestinationSpec {
            kind: DestinationKind::Queue,
            owner: format!("Queue {}/{n}", env.ns.name),
            description: format!("Managed by Conveyor: Queue {}/{n}", env.ns.name),
            name,
            event_types: vec![],
            max_age: Duration::ZERO,
            max_messages: -1,
            max_bytes: -1,
            discard: Discard::Old,
            replicas: 1,
            storage: Storage::File,
            deduplication_window: None,
        };
        let mode = SyncMode {
            create: false,
            repair: false,
        };
        let outcome = conn.ensure(&wanted, mode).await.unwrap();
        assert!(
            matches!(outcome, conveyor::engine::SyncOutcome::Unchanged(_)),
            "{outcome:?}"
        );
    }
    let per_queue = match engine {
        Engine::Nats => 1,
        Engine::Rabbitmq => 2,
    };
    eprintln!(
        "{}: one full check of 200 Queues (each resync): {} broker requests (counted from the code path, not measured) in {:?}",
        env.engine().name(),
        per_queue * names.len(),
        started.elapsed()
    );
    let started = Instant::now();
    let listed = conn.list().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(
        listed.len(),
        200,
        "the listing shows every Queue Conveyor owns"
    );
    let requests = match engine {
        Engine::Nats => "1 request (one per 256 streams)",
        Engine::Rabbitmq => "4 requests (queues, bindings, policies, exchanges)",
    };
    eprintln!(
        "{}: one depth refresh of 200 Queues (the Broker listing): {requests} in {elapsed:?}",
        env.engine().name(),
    );
}
on_both_engines!(two_hundred_queues_applied_at_once_all_become_ready);

async fn deleting_the_namespace_deletes_what_the_policies_say(engine: EngineKind) {
    let env = stream_env!(engine, "namespace-delete");
    env.create_queue("gone", json!({"deletionPolicy": "Delete"}))
        .await;
    env.create_queue("kept", json!({"deletionPolicy": "Retain"}))
        .await;
    wait_condition(&env.queues, "gone", "Ready", "True", T).await;
    wait_condition(&env.queues, "kept", "Ready", "True", T).await;
    let (gone, kept) = (
        env.name_in_broker("queue", "gone"),
        env.name_in_broker("queue", "kept"),
    );
    delete_namespace_and_wait(&env).await;
    assert!(
        !env.broker.exists(false, &gone).await,
        "the Delete queue went with the namespace"
    );
    assert!(
        env.broker.exists(false, &kept).await,
        "the Retain queue stays in the broker"
    );
}
on_both_engines!(deleting_the_namespace_deletes_what_the_policies_say);

/// On RabbitMQ the Broker reads a credentials Secret, which the namespace deletion would take
/// first: it is held by a finalizer until the Broker's own finalizer is done.
async fn a_namespace_deleted_while_the_operator_is_down_still_deletes_its_queues(
    engine: EngineKind,
) {
    // The grace period counts from the deletion, so it must outlast the operator's downtime.
    // The Lease lives outside the namespace being deleted, as it does in a real installation.
    let lease = format!("namespace-delete-{}-{}", engine.name(), std::process::id());
    let mut env = stream_env!(
        engine,
        "namespace-delete-operator-down",
        &[
            "--unreachable-deletion-grace-seconds",
            "120",
            "--lease-namespace",
            "default",
            "--lease-name",
            &lease
        ]
    );
    env.create_queue("gone", json!({"deletionPolicy": "Delete"}))
        .await;
    wait_condition(&env.queues, "gone", "Ready", "True", T).await;
    let gone = env.name_in_broker("queue", "gone");
    if let Some((secret, _)) = env.broker.broker_spec().1 {
        use k8s_openapi::api::core::v1::Secret;
        let secrets: kube::Api<Secret> =
            kube::Api::namespaced(env.plane.client.clone(), &env.ns.name);
        common::wait_for("the credentials Secret to be held", T, || async {
            let s = secrets.get(&secret).await.ok()?;
            s.metadata
                .finalizers?
                .iter()
                .any(|f| f == "conveyor.dev/broker-secret")
                .then_some(())
        })
        .await;
    }
    env.stop_operator();
    env.ns
        .kubectl(&["delete", "namespace", &env.ns.name, "--wait=false"]);
    // Wait until the namespace controller has deleted the namespace's content (the Secret
    // first of all: nothing holds it but Conveyor's finalizer).
    let secret = env.broker.broker_spec().1.map(|(name, _)| name);
    common::wait_for("the namespace's content to be deleted", T, || async {
        let queue = env.queues.get("gone").await.ok()?;
        queue.metadata.deletion_timestamp.as_ref()?;
        if let Some(name) = &secret {
            use k8s_openapi::api::core::v1::Secret;
            let secrets: kube::Api<Secret> =
                kube::Api::namespaced(env.plane.client.clone(), &env.ns.name);
            if let Some(s) = secrets.get_opt(name).await.ok()? {
                s.metadata.deletion_timestamp.as_ref()?;
            }
        }
        Some(())
    })
    .await;
    assert!(
        env.broker.exists(false, &gone).await,
        "nothing is deleted while the operator is down"
    );
    env.start_operator();
    wait_namespace_gone(&env).await;
    assert!(!env.broker.exists(false, &gone).await);
    env.stop_operator();
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(env.plane.client.clone(), "default");
    let _ = leases.delete(&lease, &DeleteParams::default()).await;
}
on_both_engines!(a_namespace_deleted_while_the_operator_is_down_still_deletes_its_queues);

async fn delete_namespace_and_wait(env: &Env) {
    env.ns
        .kubectl(&["delete", "namespace", &env.ns.name, "--wait=false"]);
    wait_namespace_gone(env).await;
}

async fn wait_namespace_gone(env: &Env) {
    use k8s_openapi::api::core::v1::Namespace;
    let namespaces: kube::Api<Namespace> = kube::Api::all(env.plane.client.clone());
    common::wait_for(
        "the namespace to be deleted",
        Duration::from_secs(120),
        || async {
            namespaces
                .get_opt(&env.ns.name)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
}
