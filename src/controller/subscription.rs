//! The EventSubscription reconciler: resolve the Topic or Queue and the consumer workload ->
//! validate the filter against the Topic's event types -> status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use super::context::Context;
use super::driver::{Reconcile, dependents, scoped_api};
use super::error::Result;
use super::refs::{self, Resolved};
use super::status::{api_for, apply_status};
use crate::api::conditions::{self, ConditionType, Desired, Reason, merge};
use crate::api::{EventSubscription, EventSubscriptionStatus, Queue, Topic};

const MISSING_REF_RETRY: Duration = Duration::from_secs(30);

/// The Topic or Queue a subscription consumes.
enum Source {
    Topic(Topic),
    Queue(Queue),
}

impl Source {
    fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
        let status = match self {
            Self::Topic(t) => t.status.as_ref(),
            Self::Queue(q) => q.status.as_ref(),
        };
        status.map(|s| &s.conditions[..]).unwrap_or_default()
    }
}

/// `topic/<name>` or `queue/<name>`: what the subscription consumes, for status and printing.
pub fn source_label(sub: &EventSubscription) -> Option<String> {
    match (&sub.spec.topic_ref, &sub.spec.queue_ref) {
        (Some(t), _) => Some(format!("topic/{}", t.name)),
        (_, Some(q)) => Some(format!("queue/{}", q.name)),
        _ => None,
    }
}

impl Reconcile for EventSubscription {
    async fn apply(obj: Arc<Self>, ctx: Arc<Context>) -> Result<Action> {
        let resolved = resolve(&obj, &ctx.client).await?;
        let (refs_cond, ready) = match &resolved {
            Err(c) => (c.clone(), c.as_not_ready()),
            Ok(source) => (refs::resolved(), ready_for(source)),
        };
        let old = obj.status.as_ref();
        let generation = obj.metadata.generation;
        let new = EventSubscriptionStatus {
            observed_generation: generation,
            conditions: merge(
                old.map(|s| &s.conditions[..]).unwrap_or_default(),
                &[refs_cond, ready],
                generation,
                Timestamp::now(),
            ),
            source: source_label(&obj),
            ..old.cloned().unwrap_or_default()
        };
        apply_status(&api_for(&ctx.client, &*obj), &*obj, old, &new).await?;
        Ok(Action::requeue(if resolved.is_err() {
            MISSING_REF_RETRY
        } else {
            ctx.config.resync
        }))
    }

    fn watches(
        controller: Controller<DeserializeGuard<Self>>,
        ctx: &Context,
        ns: Option<&str>,
    ) -> Controller<DeserializeGuard<Self>> {
        let (topics, queues): (Api<PartialObjectMeta<Topic>>, Api<PartialObjectMeta<Queue>>) =
            (scoped_api(&ctx.client, ns), scoped_api(&ctx.client, ns));
        let (s1, s2) = (controller.store(), controller.store());
        // Only the name of a changed Topic or Queue is read: metadata watches.
        let config = || watcher::Config::default().any_semantic();
        let topics = watcher(topics, config())
            .default_backoff()
            .touched_objects();
        let queues = watcher(queues, config())
            .default_backoff()
            .touched_objects();
        controller
            .watches_stream(topics, move |t: PartialObjectMeta<Topic>| {
                dependents(&s1, |s: &EventSubscription| {
                    s.namespace() == t.namespace()
                        && s.spec
                            .topic_ref
                            .as_ref()
                            .is_some_and(|r| r.name == t.name_any())
                })
            })
            .watches_stream(queues, move |q: PartialObjectMeta<Queue>| {
                dependents(&s2, |s: &EventSubscription| {
                    s.namespace() == q.namespace()
                        && s.spec
                            .queue_ref
                            .as_ref()
                            .is_some_and(|r| r.name == q.name_any())
                })
            })
    }
}

/// Finds the source and the workload, and checks the filter against the Topic.
async fn resolve(obj: &EventSubscription, client: &Client) -> Result<Resolved<Source>> {
    let ns = obj.namespace().unwrap_or_default();
    let source = if let Some(t) = &obj.spec.topic_ref {
        match Api::<Topic>::namespaced(client.clone(), &ns)
            .get_opt(&t.name)
            .await?
        {
            None => {
                return Ok(Err(refs::missing(
                    Reason::TopicNotFound,
                    format!("Topic {ns}/{} does not exist", t.name),
                )));
            }
            Some(topic) => Source::Topic(topic),
        }
    } else if let Some(q) = &obj.spec.queue_ref {
        match Api::<Queue>::namespaced(client.clone(), &ns)
            .get_opt(&q.name)
            .await?
        {
            None => {
                return Ok(Err(refs::missing(
                    Reason::QueueNotFound,
                    format!("Queue {ns}/{} does not exist", q.name),
                )));
            }
            Some(queue) => Source::Queue(queue),
        }
    } else {
        return Ok(Err(refs::missing(
            Reason::ResolutionFailed,
            "neither spec.topicRef nor spec.queueRef is set".into(),
        )));
    };
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

fn ready_for(source: &Source) -> Desired {
    let conditions = source.conditions();
    if conditions::is_true(conditions, ConditionType::Ready) {
        Desired::is_false(
            ConditionType::Ready,
            Reason::NotSupported,
            "this build of Conveyor does not create consumers yet",
        )
    } else {
        let why = conditions::find(conditions, ConditionType::Ready)
            .map(|c| c.message.as_str())
            .unwrap_or("no status yet");
        Desired::is_false(
            ConditionType::Ready,
            Reason::SourceNotReady,
            format!("the source is not Ready: {why}"),
        )
    }
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
