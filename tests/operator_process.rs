//! The operator as its own process against the local plane: readiness, metrics, SIGTERM,
//! leader election between two operators, and a lease taken away from a busy leader.

mod common;

use std::time::{Duration, Instant};

use conveyor::api::Queue;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use common::operator::{LEASE, Operator};

async fn holder(api: &Api<Lease>) -> Option<String> {
    api.get_opt(LEASE).await.ok()??.spec?.holder_identity
}

fn queue(name: &str) -> Queue {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "conveyor.dev/v1alpha1", "kind": "Queue",
        "metadata": {"name": name},
        "spec": {"brokerRef": {"name": "missing-broker"}}
    }))
    .unwrap()
}

/// Waits until the operator has written the Queue's status (it reports the missing Broker).
async fn wait_reconciled(api: &Api<Queue>, name: &str) {
    common::wait_for(
        &format!("Queue {name} to get a status"),
        Duration::from_secs(30),
        || async {
            let q = api.get(name).await.ok()?;
            let c = q
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "ResolvedRefs")?;
            (c.reason == "BrokerNotFound").then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn operator_becomes_ready_serves_metrics_and_exits_cleanly_on_sigterm() {
    let (plane, ns) = setup!("operator-sigterm");
    common::install_crds(&plane).await;
    let mut op = Operator::start(&plane, &ns.name, "solo");
    op.wait_ready().await;
    assert_eq!(op.get("/healthz").await.map(|r| r.0), Some(200));
    // Ready as a standby first, then as the leader once the lease is taken.
    common::wait_for("the operator to lead", Duration::from_secs(30), || async {
        (op.metric("conveyor_leader", "").await == 1.0).then_some(())
    })
    .await;
    op.wait_ready().await;

    let queues: Api<Queue> = Api::namespaced(plane.client.clone(), &ns.name);
    queues
        .create(&PostParams::default(), &queue("work"))
        .await
        .unwrap();
    wait_reconciled(&queues, "work").await;
    assert!(
        op.metric("conveyor_reconciliations_total", "kind=\"Queue\"")
            .await
            >= 1.0
    );

    let started = Instant::now();
    op.signal("-TERM");
    let status = op
        .wait_exit(Duration::from_secs(10))
        .expect("the operator exits within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    eprintln!("operator exited {:?} after SIGTERM", started.elapsed());
    let leases: Api<Lease> = Api::namespaced(plane.client.clone(), &ns.name);
    assert_eq!(
        holder(&leases).await,
        None,
        "the lease is released on shutdown"
    );
}

#[tokio::test]
async fn exactly_one_of_two_operators_reconciles_and_the_standby_takes_over() {
    let (plane, ns) = setup!("operator-lease");
    common::install_crds(&plane).await;
    let a = Operator::start(&plane, &ns.name, "operator-a");
    let b = Operator::start(&plane, &ns.name, "operator-b");
    a.wait_ready().await;
    b.wait_ready().await;
    let leases: Api<Lease> = Api::namespaced(plane.client.clone(), &ns.name);
    let first = common::wait_for("a lease holder", Duration::from_secs(30), || {
        holder(&leases)
    })
    .await;
    let (mut leader, standby) = if first == a.identity { (a, b) } else { (b, a) };
    assert_eq!(first, leader.identity);

    let queues: Api<Queue> = Api::namespaced(plane.client.clone(), &ns.name);
    queues
        .create(&PostParams::default(), &queue("before"))
        .await
        .unwrap();
    wait_reconciled(&queues, "before").await;
    assert_eq!(leader.metric("conveyor_leader", "").await, 1.0);
    assert_eq!(standby.metric("conveyor_leader", "").await, 0.0);
    assert!(leader.metric("conveyor_reconciliations_total", "").await >= 1.0);
    assert_eq!(
        standby.metric("conveyor_reconciliations_total", "").await,
        0.0,
        "the standby must not reconcile"
    );

    let killed = Instant::now();
    leader.signal("-KILL");
    leader
        .wait_exit(Duration::from_secs(5))
        .expect("the killed leader exits");
    let standby_id = standby.identity.clone();
    common::wait_for(
        "the standby to take the lease",
        Duration::from_secs(20),
        || async { (holder(&leases).await.as_deref() == Some(standby_id.as_str())).then_some(()) },
    )
    .await;
    eprintln!(
        "the standby took over {:?} after the leader was killed (lease duration 3 s)",
        killed.elapsed()
    );
    queues
        .create(&PostParams::default(), &queue("after"))
        .await
        .unwrap();
    wait_reconciled(&queues, "after").await;
    assert_eq!(standby.metric("conveyor_leader", "").await, 1.0);
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_exits_at_once_and_without_a_panic() {
    let (plane, ns) = setup!("operator-lease-lost");
    common::install_crds(&plane).await;
    let mut op = Operator::start(&plane, &ns.name, "operator-a");
    op.wait_ready().await;
    let leases: Api<Lease> = Api::namespaced(plane.client.clone(), &ns.name);
    common::wait_for("the lease holder", Duration::from_secs(30), || async {
        (holder(&leases).await.as_deref() == Some("operator-a")).then_some(())
    })
    .await;
    // Work in flight: Queues whose Broker is missing keep retrying.
    let queues: Api<Queue> = Api::namespaced(plane.client.clone(), &ns.name);
    for i in 0..20 {
        queues
            .create(&PostParams::default(), &queue(&format!("busy-{i}")))
            .await
            .unwrap();
    }
    wait_reconciled(&queues, "busy-19").await;

    // Another candidate takes the Lease over (as one would after a partition). The leader
    // renews every second, so a takeover may meet a newer version: read it again and retry.
    loop {
        let mut lease = leases.get(LEASE).await.unwrap();
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some("usurper".into());
        spec.lease_duration_seconds = Some(60);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match leases.replace(LEASE, &PostParams::default(), &lease).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("taking the lease over failed: {e}"),
        }
    }
    let taken = Instant::now();
    let status = op
        .wait_exit(Duration::from_secs(20))
        .expect("the operator exits once its lease is taken");
    eprintln!("exited {:?} after the lease was taken", taken.elapsed());
    let log = op.log_text();
    assert_eq!(
        status.code(),
        Some(1),
        "exit status {status:?}; log:\n{log}"
    );
    assert!(log.contains("the leader lease was taken over"), "{log}");
    assert!(!log.contains("panicked"), "no panic on the way out:\n{log}");
    assert_eq!(
        holder(&leases).await.as_deref(),
        Some("usurper"),
        "the lost lease is not released over its new holder"
    );
}
