//! Pure translation of an EventSubscription and its source into the engine-neutral consumer
//! the broker should hold.

use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::subscription::StartFrom as SpecStart;
use crate::api::{EventSubscription, Queue, Topic};
use crate::controller::stream::spec::duration;
use crate::controller::stream::{StreamKind, name_in_broker};
use crate::engine::{ConsumerSpec, DestinationKind, StartFrom};
use crate::resources::names::default_name_in_broker;

/// The Topic or Queue a subscription consumes.
pub enum Source {
    Topic(Topic),
    Queue(Queue),
}

impl Source {
    pub fn kind(&self) -> DestinationKind {
        match self {
            Self::Topic(_) => DestinationKind::Topic,
            Self::Queue(_) => DestinationKind::Queue,
        }
    }

    pub fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
        let status = match self {
            Self::Topic(t) => t.status.as_ref(),
            Self::Queue(q) => q.status.as_ref(),
        };
        status.map(|s| &s.conditions[..]).unwrap_or_default()
    }

    pub fn namespace(&self) -> String {
        match self {
            Self::Topic(t) => t.namespace(),
            Self::Queue(q) => q.namespace(),
        }
        .unwrap_or_default()
    }

    /// The namespaces, besides its own, whose subscriptions may consume it.
    pub fn allowed_namespaces(&self) -> &[String] {
        match self {
            Self::Topic(t) => &t.spec.allowed_namespaces,
            Self::Queue(q) => &q.spec.allowed_namespaces,
        }
    }

    /// The source's Broker, with its namespace spelled out.
    pub fn broker_ref(&self) -> crate::api::common::BrokerReference {
        let r = match self {
            Self::Topic(t) => t.broker_ref(),
            Self::Queue(q) => q.broker_ref(),
        };
        crate::api::common::BrokerReference {
            name: r.name.clone(),
            namespace: Some(r.namespace.clone().unwrap_or_else(|| self.namespace())),
        }
    }

    /// The source's name in the broker.
    pub fn name_in_broker(&self) -> String {
        match self {
            Self::Topic(t) => name_in_broker(t),
            Self::Queue(q) => name_in_broker(q),
        }
    }

    fn replicas(&self) -> usize {
        let s = match self {
            Self::Topic(t) => t.settings(),
            Self::Queue(q) => q.settings(),
        };
        s.replicas.max(1) as usize
    }
}

/// The consumer's name in the broker: the one recorded in status (it never changes), else
/// `sub_<namespace>_<name>`.
pub fn consumer_name(sub: &EventSubscription) -> String {
    sub.status
        .as_ref()
        .and_then(|s| s.consumer_name.clone())
        .unwrap_or_else(|| {
            default_name_in_broker("sub", &sub.namespace().unwrap_or_default(), &sub.name_any())
        })
}

/// The owner recorded on the consumer: kind, namespace and name.
pub fn owner(sub: &EventSubscription) -> String {
    format!(
        "EventSubscription {}/{}",
        sub.namespace().unwrap_or_default(),
        sub.name_any()
    )
}

fn start(sub: &EventSubscription) -> Result<StartFrom, String> {
    let d = &sub.spec.delivery;
    Ok(match d.start_from {
        SpecStart::All => StartFrom::All,
        SpecStart::New => StartFrom::New,
        SpecStart::Time => {
            let raw = d
                .start_time
                .as_deref()
                .ok_or("spec.delivery.startFrom is Time but spec.delivery.startTime is not set")?;
            let t: Timestamp = raw
                .parse()
                .map_err(|e| format!("spec.delivery.startTime {raw:?} is not a time: {e}"))?;
            let since_epoch = Duration::try_from(t.duration_since(Timestamp::UNIX_EPOCH))
                .map_err(|_| format!("spec.delivery.startTime {raw:?} is before 1970"))?;
            StartFrom::Time(SystemTime::UNIX_EPOCH + since_epoch)
        }
    })
}

/// The consumer a subscription asks for on `source`.
pub fn consumer_spec(sub: &EventSubscription, source: &Source) -> Result<ConsumerSpec, String> {
    let d = &sub.spec.delivery;
    let backoff = d
        .backoff
        .iter()
        .map(|b| duration(b))
        .collect::<Result<Vec<_>, _>>()?;
    let event_types = match (source, &sub.spec.filter) {
        (Source::Topic(_), Some(f)) => f.event_types.clone(),
        _ => Vec::new(),
    };
    Ok(ConsumerSpec {
        source_kind: source.kind(),
        source: source.name_in_broker(),
        name: consumer_name(sub),
        event_types,
        ack_wait: duration(&d.ack_wait)?,
        max_deliveries: i64::from(d.max_deliveries),
        backoff,
        max_ack_pending: i64::from(d.max_ack_pending),
        start: start(sub)?,
        dead_letter: d.dead_letter.enabled,
        replicas: source.replicas(),
        owner: owner(sub),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::{BrokerReference, SourceReference};
    use crate::api::subscription::{Consumer, Delivery, EventFilter, WorkloadReference};
    use crate::api::{EventSubscriptionSpec, QueueSpec, TopicSpec};

    fn subscription(delivery: Delivery, filter: Option<&[&str]>) -> EventSubscription {
        let mut s = EventSubscription::new(
            "payment",
            EventSubscriptionSpec {
                topic_ref: Some(SourceReference {
                    name: "orders".into(),
                    namespace: None,
                }),
                queue_ref: None,
                filter: filter.map(|f| EventFilter {
                    event_types: f.iter().map(|t| t.to_string()).collect(),
                }),
                delivery,
                consumer: Consumer {
                    template: None,
                    workload_ref: Some(WorkloadReference {
                        kind: "Deployment".into(),
                        name: "payment".into(),
                    }),
                },
                scaling: Default::default(),
            },
        );
        s.metadata.namespace = Some("shop".into());
        s
    }

    fn broker() -> BrokerReference {
        BrokerReference {
            name: "events".into(),
            namespace: None,
        }
    }

    fn topic() -> Source {
        let mut t = Topic::new(
            "orders",
            TopicSpec {
                broker_ref: broker(),
                name_in_broker: None,
                event_types: Vec::new(),
                allowed_namespaces: Vec::new(),
                stream: Default::default(),
            },
        );
        t.metadata.namespace = Some("shop".into());
        Source::Topic(t)
    }

    #[test]
    fn a_topic_subscription_becomes_a_filtered_consumer_with_its_delivery_settings() {
        let delivery = Delivery {
            backoff: vec!["1s".into(), "5s".into()],
            max_deliveries: 4,
            ..Default::default()
        };
        let spec =
            consumer_spec(&subscription(delivery, Some(&["OrderPlaced"])), &topic()).unwrap();
        assert_eq!(spec.source, "topic_shop_orders");
        assert_eq!(spec.name, "sub_shop_payment");
        assert_eq!(spec.event_types, ["OrderPlaced"]);
        assert_eq!(
            spec.backoff,
            [Duration::from_secs(1), Duration::from_secs(5)]
        );
        assert_eq!(spec.max_deliveries, 4);
        assert_eq!(spec.ack_wait, Duration::from_secs(30));
        assert_eq!(spec.start, StartFrom::All);
        assert_eq!(spec.owner, "EventSubscription shop/payment");
    }

    #[test]
    fn a_queue_subscription_takes_every_message() {
        let mut q = Queue::new(
            "work",
            QueueSpec {
                broker_ref: broker(),
                name_in_broker: Some("jobs".into()),
                allowed_namespaces: Vec::new(),
                stream: Default::default(),
            },
        );
        q.metadata.namespace = Some("shop".into());
        let spec =
            consumer_spec(&subscription(Delivery::default(), None), &Source::Queue(q)).unwrap();
        assert_eq!(spec.source_kind, DestinationKind::Queue);
        assert_eq!(spec.source, "jobs");
        assert!(spec.event_types.is_empty());
    }

    #[test]
    fn a_start_time_is_parsed_and_a_recorded_consumer_name_wins() {
        let delivery = Delivery {
            start_from: SpecStart::Time,
            start_time: Some("2026-12-01T00:00:00Z".into()),
            ..Default::default()
        };
        let mut sub = subscription(delivery, None);
        sub.status = Some(crate::api::EventSubscriptionStatus {
            consumer_name: Some("kept".into()),
            ..Default::default()
        });
        let spec = consumer_spec(&sub, &topic()).unwrap();
        let StartFrom::Time(t) = spec.start else {
            panic!("{:?}", spec.start)
        };
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_796_083_200
        );
        assert_eq!(spec.name, "kept");
    }
}
