//! The EventSubscription reconciler: resolve the Topic or Queue and the consumer workload ->
//! validate the filter against the Topic's event types -> build the consumer -> sync it in the
//! source's broker -> status. Deleting a subscription deletes its consumer (`cleanup`).

mod cleanup;
pub mod consumer;
mod identity;
mod workload;

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::broadcast::error::RecvError;

use super::changes::changed_objects;
use super::context::{Context, SourceChange};
use super::driver::{Reconcile, dependents, lean, publish, scoped_api};
use super::error::{Error, Result};
use super::refs::{self, Resolved};
use super::status::{api_for, apply_status};
use super::stream::{Link, StreamKind, link};
use crate::api::common::namespace_allowed;
use crate::api::conditions::{self, ConditionType, Desired, Reason, merge};
use crate::api::{EventSubscription, EventSubscriptionStatus, Queue, Topic};
use crate::engine::consumers::dead_letter_name;
use crate::engine::{ConsumerState, SyncMode, SyncOutcome, digest};
use crate::resources::consumer::SUBSCRIPTION as SUBSCRIPTION_LABEL;
use consumer::{Source, consumer_name, consumer_spec};

/// The finalizer that guards the deletion of a subscription's consumer.
pub const CONSUMER_FINALIZER: &str = "conveyor.dev/consumer";

const MISSING_REF_RETRY: Duration = Duration::from_secs(30);
const RETRY: Duration = Duration::from_secs(10);

/// `topic/<name>` or `queue/<name>` (`topic/<namespace>/<name>` from another namespace): what
/// the subscription consumes, for status and printing.
pub fn source_label(sub: &EventSubscription) -> Option<String> {
    let (topic, ns, name) = source_ref(sub)?;
    let kind = if topic { "topic" } else { "queue" };
    Some(if Some(&ns) == sub.namespace().as_ref() {
        format!("{kind}/{name}")
    } else {
        format!("{kind}/{ns}/{name}")
    })
}

/// `deployment/<name>`: the consumer workload, for status and printing.
fn workload_label(sub: &EventSubscription) -> Option<String> {
    let c = &sub.spec.consumer;
    let name = match (&c.template, &c.workload_ref) {
        (Some(_), _) => sub.name_any(),
        (None, Some(w)) => w.name.clone(),
        (None, None) => return None,
    };
    Some(format!("deployment/{name}"))
}

/// What one pass decided, before it becomes status.
struct Pass {
    conditions: Vec<Desired>,
    state: Option<ConsumerState>,
    /// The Broker (`namespace/name`) and source name in it, once the consumer is in the broker.
    placed: Option<(String, String)>,
    requeue: Duration,
    /// A broker failure: written to status, then returned so that it is counted and backs off.
    error: Option<Error>,
}

impl Pass {
    fn waiting(conditions: Vec<Desired>, requeue: Duration) -> Self {
        Self {
            conditions,
            state: None,
            placed: None,
            requeue,
            error: None,
        }
    }

    /// The subscription cannot have its consumer yet: `why` on ConsumerReady and Ready.
    fn blocked(resolved: Desired, why: Desired, requeue: Duration) -> Self {
        let consumer = Desired::is_false(
            ConditionType::ConsumerReady,
            why.reason,
            why.message.clone(),
        );
        Self::waiting(vec![resolved, consumer, why.as_not_ready()], requeue)
    }
}

impl Reconcile for EventSubscription {
    const FINALIZER: Option<&'static str> = Some(CONSUMER_FINALIZER);

    async fn apply(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        let mut pass = sync(&obj, &ctx).await?;
        write_status(&obj, &ctx, &pass).await?;
        if let Some(e) = pass.error.take() {
            return Err(e);
        }
        Ok(Action::requeue(pass.requeue))
    }

    async fn cleanup(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        cleanup::delete_consumer(obj, ctx).await
    }

    fn watches(
        controller: Controller<DeserializeGuard<Self>>,
        ctx: &Context,
        ns: Option<&str>,
    ) -> Controller<DeserializeGuard<Self>> {
        let (topics, queues): (Api<Topic>, Api<Queue>) =
            (scoped_api(&ctx.client, ns), scoped_api(&ctx.client, ns));
        let (s1, s2, s3) = (controller.store(), controller.store(), controller.store());
        // A source's depth changing in its status re-runs nothing: only its spec, its readiness
        // and its name in the broker concern its subscriptions (and its deletion). Each change
        // is also told to the other namespaces' controllers, whose subscriptions may use it.
        let config = || watcher::Config::default().any_semantic();
        let told = ctx.source_changes.clone();
        let tell = move |topic: bool, namespace: Option<String>, name: String| {
            let namespace = namespace.unwrap_or_default();
            let _ = told.send(SourceChange {
                topic,
                namespace,
                name,
            });
        };
        let tell2 = tell.clone();
        let topics = changed_objects(
            watcher(topics, config())
                .default_backoff()
                .modify(|t| lean(&mut t.metadata)),
            true,
            |t: &Topic| (&t.metadata, source_digest(t)),
        )
        .inspect_ok(move |t| tell(true, t.namespace(), t.name_any()));
        let queues = changed_objects(
            watcher(queues, config())
                .default_backoff()
                .modify(|q| lean(&mut q.metadata)),
            true,
            |q: &Queue| (&q.metadata, source_digest(q)),
        )
        .inspect_ok(move |q| tell2(false, q.namespace(), q.name_any()));
        // Sources in other namespaces, as their own namespace's controller saw them change.
        let elsewhere = source_changes(ctx).flat_map(move |c| {
            futures::stream::iter(dependents(&s3, |s: &EventSubscription| {
                s.namespace().as_deref() != Some(c.namespace.as_str())
                    && source_ref(s).is_some_and(|(t, ns, name)| {
                        t == c.topic && ns == c.namespace && name == c.name
                    })
            }))
        });
        // The Deployments and Secrets Conveyor made for subscriptions: a deleted or edited one
        // is put back. Metadata only, and only those labelled as a subscription's.
        let owned = || {
            watcher::Config::default()
                .any_semantic()
                .labels(SUBSCRIPTION_LABEL)
        };
        let deployments: Api<PartialObjectMeta<Deployment>> = scoped_api(&ctx.client, ns);
        let secrets: Api<PartialObjectMeta<Secret>> = scoped_api(&ctx.client, ns);
        let deployments = watcher(deployments, owned())
            .default_backoff()
            .touched_objects();
        let secrets = watcher(secrets, owned())
            .default_backoff()
            .touched_objects();
        controller
            .owns_stream(deployments)
            .owns_stream(secrets)
            .reconcile_on(elsewhere)
            .watches_stream(topics, move |t: Topic| {
                dependents(&s1, |s: &EventSubscription| refers_to(s, true, &t))
            })
            .watches_stream(queues, move |q: Queue| {
                dependents(&s2, |s: &EventSubscription| refers_to(s, false, &q))
            })
    }
}

/// The changes of sources told by every namespace's controller; a lagging reader skips what it
/// missed (its subscriptions catch up at their resync).
fn source_changes(ctx: &Context) -> impl futures::Stream<Item = SourceChange> + Send + 'static {
    futures::stream::unfold(ctx.source_changes.subscribe(), |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(c) => return Some((c, rx)),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "subscription triggers lagged behind source changes"
                    );
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

/// What of a Topic or Queue its subscriptions depend on: its spec (generation), whether it is
/// Ready, and its name in the broker.
fn source_digest<K: StreamKind>(obj: &K) -> u64 {
    let status = obj.stream_status();
    let ready = status
        .and_then(|s| conditions::find(&s.conditions, ConditionType::Ready))
        .map(|c| c.status.clone());
    let name = status.and_then(|s| s.name_in_broker.clone());
    digest(&(obj.meta().generation, ready, name))
}

/// Resolve -> check the source -> connect -> build -> sync, as conditions and the consumer's
/// state.
async fn sync(obj: &EventSubscription, ctx: &Context) -> Result<Pass> {
    let source = match resolve(obj, ctx).await? {
        Ok(s) => s,
        Err(missing) => {
            let ready = missing.as_not_ready();
            let consumer = Desired::is_false(
                ConditionType::ConsumerReady,
                missing.reason,
                missing.message.clone(),
            );
            let mut conditions = vec![missing, consumer, ready];
            if conditions[0].reason == Reason::RefNotPermitted
                && let Some(revoked) = cleanup::revoke_withdrawn(obj, ctx).await?
            {
                conditions.push(revoked);
            }
            return Ok(Pass::waiting(conditions, MISSING_REF_RETRY));
        }
    };
    if let Some(not_ready) = source_not_ready(&source) {
        return Ok(Pass::blocked(refs::resolved(), not_ready, RETRY));
    }
    let broker = match refs::broker(ctx, &source.namespace(), &source.broker_ref()).await? {
        Ok(b) => b,
        Err(missing) => return Ok(Pass::blocked(refs::resolved(), missing, MISSING_REF_RETRY)),
    };
    let conn = match link(ctx, &broker) {
        Link::Connected(c) => c,
        Link::Connecting => return Ok(Pass::waiting(Vec::new(), Duration::from_secs(1))),
        Link::Down(why) => return Ok(Pass::blocked(refs::resolved(), why, RETRY)),
    };
    let wanted = match consumer_spec(obj, &source) {
        Ok(w) => w,
        Err(e) => {
            let invalid = Desired::is_false(ConditionType::Ready, Reason::InvalidSpec, e);
            return Ok(Pass::blocked(refs::resolved(), invalid, ctx.config.resync));
        }
    };
    let name = &wanted.name;
    let placed = Some((
        format!(
            "{}/{}",
            broker.namespace().unwrap_or_default(),
            broker.name_any()
        ),
        wanted.source.clone(),
    ));
    let mode = SyncMode {
        create: true,
        repair: true,
    };
    let outcome = match conn.ensure_consumer(&wanted, mode).await {
        Ok(o) => o,
        Err(e) => {
            let msg = format!("consumer {name}: {e}");
            let failed =
                Desired::is_false(ConditionType::ConsumerReady, Reason::UpdateRejected, msg);
            let mut pass = Pass::blocked(refs::resolved(), failed, RETRY);
            pass.error = Some(Error::Engine(e));
            return Ok(pass);
        }
    };
    report(obj, ctx, name, &outcome).await;
    let (consumer, state) = consumer_condition(name, &wanted.source, &outcome);
    let ready = if consumer.status {
        Desired::is_true(
            ConditionType::Ready,
            Reason::Declared,
            format!("consumer {name} on {} is in the broker", wanted.source),
        )
    } else {
        consumer.as_not_ready()
    };
    let unsupported = conn.unsupported_consumer(&wanted);
    let supported = conditions::supported(&unsupported);
    let placed = state.is_some().then_some(placed).flatten();
    // The workload's Secret names the consumer: only once the consumer is there. A failure
    // is returned after the status (which records the consumer) is written.
    let mut conditions = vec![refs::resolved(), consumer, ready, supported];
    let error = match state {
        Some(_) => match workload::apply_workload(obj, ctx, &broker, &*conn, &wanted).await {
            Ok(workload::Workload::Applied(issued)) => {
                let isolation = identity::ensure(obj, ctx, &*conn, &wanted, &issued).await;
                conditions.push(isolation.condition);
                if let Some(not_ready) = isolation.not_ready {
                    conditions[2] = not_ready;
                }
                isolation.error
            }
            Ok(workload::Workload::Conflict(why)) => {
                conditions[2] = Desired::is_false(ConditionType::Ready, Reason::Conflict, why);
                None
            }
            Err(e) => Some(e),
        },
        None => None,
    };
    Ok(Pass {
        conditions,
        state,
        placed,
        requeue: ctx.config.resync,
        error,
    })
}

/// `Ready=False SourceNotReady` while the Topic or Queue is not Ready.
fn source_not_ready(source: &Source) -> Option<Desired> {
    let conditions = source.conditions();
    if conditions::is_true(conditions, ConditionType::Ready) {
        return None;
    }
    let why = conditions::find(conditions, ConditionType::Ready)
        .map(|c| c.message.as_str())
        .unwrap_or("no status yet");
    Some(Desired::is_false(
        ConditionType::Ready,
        Reason::SourceNotReady,
        format!("the source is not Ready: {why}"),
    ))
}

/// ConsumerReady from what the sync found, and the consumer's figures when it exists.
fn consumer_condition(
    name: &str,
    source: &str,
    outcome: &SyncOutcome<ConsumerState>,
) -> (Desired, Option<ConsumerState>) {
    let t = ConditionType::ConsumerReady;
    match outcome {
        SyncOutcome::Created(s) | SyncOutcome::Unchanged(s) | SyncOutcome::Updated(s, _) => (
            Desired::is_true(
                t,
                Reason::InSync,
                format!("consumer {name} on {source} matches the spec"),
            ),
            Some(*s),
        ),
        // Only what the broker cannot change in place is left drifted.
        SyncOutcome::Drifted(s, changed) => (
            Desired::is_true(
                t,
                Reason::Drifted,
                format!(
                    "consumer {name} differs from the spec in {}, which the broker cannot change in place",
                    changed.join(", ")
                ),
            ),
            Some(*s),
        ),
        SyncOutcome::Missing => (
            Desired::is_false(
                t,
                Reason::MissingInBroker,
                format!("{source} is not in the broker"),
            ),
            None,
        ),
        SyncOutcome::Conflict(why) => (
            Desired::is_false(
                t,
                Reason::Conflict,
                format!("{why}; Conveyor does not take it over"),
            ),
            None,
        ),
    }
}

/// Events for what the pass did in the broker; a conflict only when it first appears.
async fn report(
    obj: &EventSubscription,
    ctx: &Context,
    name: &str,
    outcome: &SyncOutcome<ConsumerState>,
) {
    let before = obj
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, ConditionType::ConsumerReady))
        .map(|c| c.reason.clone());
    let (kind, reason, note) = match outcome {
        SyncOutcome::Created(_) => (
            EventType::Normal,
            "ConsumerCreated",
            format!("created consumer {name}"),
        ),
        SyncOutcome::Updated(_, changed) => (
            EventType::Normal,
            "ConsumerUpdated",
            format!("consumer {name}: updated {}", changed.join(", ")),
        ),
        SyncOutcome::Conflict(why) if before.as_deref() != Some(Reason::Conflict.as_str()) => {
            (EventType::Warning, "ConsumerConflict", why.clone())
        }
        _ => return,
    };
    publish(ctx, obj, kind, reason, note).await;
}

/// Writes the reconciler's part of the status. The figures (pending, in flight, backlog), the
/// replicas and the `Scaling` condition are the autoscaler's: it reads them from the broker
/// far more often, under a field manager of its own.
async fn write_status(obj: &EventSubscription, ctx: &Context, pass: &Pass) -> Result<()> {
    let old = obj
        .status
        .as_ref()
        .map(EventSubscriptionStatus::without_autoscaler_fields);
    let prev = old.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let (broker, source_in_broker) = match &pass.placed {
        Some((b, s)) => (Some(b.clone()), Some(s.clone())),
        None => (prev.broker.clone(), prev.source_in_broker.clone()),
    };
    let new = EventSubscriptionStatus {
        observed_generation: generation,
        conditions: merge(
            &prev.conditions,
            &pass.conditions,
            generation,
            Timestamp::now(),
        ),
        source: source_label(obj),
        consumer_name: match pass.placed {
            Some(_) => Some(consumer_name(obj)),
            None => prev.consumer_name.clone(),
        },
        broker,
        source_in_broker,
        dead_letters: match pass.state {
            Some(s) => s.dead_letters.map(|n| n as i64),
            None => prev.dead_letters,
        },
        dead_letter_destination: match pass.state {
            Some(s) => s
                .dead_letters
                .map(|_| dead_letter_name(&consumer_name(obj))),
            None => prev.dead_letter_destination.clone(),
        },
        workload: workload_label(obj),
        ..Default::default()
    };
    apply_status(&api_for(&ctx.client, obj), obj, old.as_ref(), &new).await?;
    Ok(())
}

/// Whether the spec names a Topic (else a Queue), and its namespace and name.
fn source_ref(obj: &EventSubscription) -> Option<(bool, String, &str)> {
    let own = || obj.namespace().unwrap_or_default();
    match (&obj.spec.topic_ref, &obj.spec.queue_ref) {
        (Some(r), _) => Some((true, r.namespace.clone().unwrap_or_else(own), &r.name)),
        (_, Some(r)) => Some((false, r.namespace.clone().unwrap_or_else(own), &r.name)),
        _ => None,
    }
}

/// Whether the subscription names the Topic (`topic`) or Queue `src`.
fn refers_to(s: &EventSubscription, topic: bool, src: &impl ResourceExt) -> bool {
    source_ref(s).is_some_and(|(t, ns, name)| {
        t == topic && Some(ns) == src.namespace() && name == src.name_any()
    })
}

/// The Topic or Queue the spec names, if it exists.
async fn source_of(obj: &EventSubscription, client: &Client) -> Result<Option<Source>> {
    Ok(match source_ref(obj) {
        Some((true, ns, name)) => Api::<Topic>::namespaced(client.clone(), &ns)
            .get_opt(name)
            .await?
            .map(Source::Topic),
        Some((false, ns, name)) => Api::<Queue>::namespaced(client.clone(), &ns)
            .get_opt(name)
            .await?
            .map(Source::Queue),
        None => None,
    })
}

/// Finds the source and the workload, checks that the source admits the subscription's
/// namespace, and checks the filter against the Topic.
async fn resolve(obj: &EventSubscription, ctx: &Context) -> Result<Resolved<Source>> {
    let client = &ctx.client;
    let ns = obj.namespace().unwrap_or_default();
    let missing = |reason, message| Ok(Err(refs::missing(reason, message)));
    let Some((topic, src_ns, src_name)) = source_ref(obj) else {
        return missing(
            Reason::ResolutionFailed,
            "neither spec.topicRef nor spec.queueRef is set".into(),
        );
    };
    let kind = if topic { "Topic" } else { "Queue" };
    let watched = &ctx.config.namespaces;
    if !watched.is_empty() && !watched.contains(&src_ns) {
        return missing(
            Reason::RefNotPermitted,
            format!(
                "{kind} {src_ns}/{src_name} is in a namespace this operator does not watch ({})",
                watched.join(", ")
            ),
        );
    }
    let source = match source_of(obj, client).await? {
        Some(s) => s,
        None => {
            let reason = if topic {
                Reason::TopicNotFound
            } else {
                Reason::QueueNotFound
            };
            return missing(reason, format!("{kind} {src_ns}/{src_name} does not exist"));
        }
    };
    if !namespace_allowed(source.allowed_namespaces(), &src_ns, &ns) {
        return missing(
            Reason::RefNotPermitted,
            format!(
                "{kind} {src_ns}/{src_name} does not allow subscriptions from namespace {ns}: add {ns} to its spec.allowedNamespaces"
            ),
        );
    }
    if let (Source::Topic(topic), Some(filter)) = (&source, &obj.spec.filter)
        && let Some(c) = unknown_event_types(topic, &filter.event_types)
    {
        return Ok(Err(c));
    }
    if let Some(w) = &obj.spec.consumer.workload_ref {
        let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        if api.get_metadata_opt(&w.name).await?.is_none() {
            return Ok(Err(refs::missing(
                Reason::WorkloadNotFound,
                format!(
                    "Deployment {ns}/{} named in spec.consumer.workloadRef does not exist",
                    w.name
                ),
            )));
        }
    }
    Ok(Ok(source))
}

/// The condition naming the filter's event types that the Topic does not declare, if any.
fn unknown_event_types(topic: &Topic, wanted: &[String]) -> Option<Desired> {
    let unknown: Vec<&str> = wanted
        .iter()
        .filter(|w| !topic.spec.event_types.iter().any(|e| &e.type_ == *w))
        .map(String::as_str)
        .collect();
    (!unknown.is_empty()).then(|| {
        refs::missing(
            Reason::UnknownEventType,
            format!("Topic {} does not declare the event types {}: add them to its spec.eventTypes or fix spec.filter", topic.name_any(), unknown.join(", ")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TopicSpec;
    use crate::api::common::BrokerReference;
    use crate::api::topic::EventType;

    fn topic(types: &[&str]) -> Topic {
        Topic::new(
            "orders",
            TopicSpec {
                broker_ref: BrokerReference {
                    name: "events".into(),
                    namespace: None,
                },
                name_in_broker: None,
                event_types: types
                    .iter()
                    .map(|t| EventType {
                        type_: t.to_string(),
                        description: None,
                        schema: None,
                    })
                    .collect(),
                allowed_namespaces: Vec::new(),
                stream: Default::default(),
            },
        )
    }

    #[test]
    fn filter_on_declared_types_passes() {
        assert!(unknown_event_types(&topic(&["OrderPlaced"]), &["OrderPlaced".into()]).is_none());
    }

    #[test]
    fn filter_on_undeclared_types_names_them() {
        let c = unknown_event_types(
            &topic(&["OrderPlaced"]),
            &["OrderPlaced".into(), "OrderShipped".into()],
        )
        .unwrap();
        assert_eq!(c.reason, Reason::UnknownEventType);
        assert!(
            c.message.contains("OrderShipped") && !c.message.contains("OrderPlaced,"),
            "{}",
            c.message
        );
    }
}
