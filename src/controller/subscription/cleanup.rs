//! An EventSubscription's deletion: its consumer holds no data of its own, so it is deleted
//! (on RabbitMQ, for a Topic, with the subscription's queue). The Broker and the source's name
//! come from status, so the consumer goes even when the Topic or Queue went first. An
//! unreachable broker is retried for the deletion grace period, as for streams.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::api::EventSubscription;
use crate::controller::context::Context;
use crate::controller::driver::publish;
use crate::controller::error::Result;
use crate::controller::stream::cleanup::give_up_or_retry;
use crate::controller::stream::{Link, link};
use crate::engine::{ConsumerTarget, Deletion, DestinationKind};

use super::consumer::owner;

const LEFT: &str = "ConsumerLeftInBroker";

pub async fn delete_consumer(obj: Arc<EventSubscription>, ctx: Arc<Context>) -> Result<Action> {
    let status = obj.status.clone().unwrap_or_default();
    let (Some(name), Some(broker), Some(source)) =
        (status.consumer_name, status.broker, status.source_in_broker)
    else {
        // No consumer was ever made.
        return Ok(Action::await_change());
    };
    let Some((b_ns, b_name)) = broker.split_once('/') else {
        return Ok(Action::await_change());
    };
    let Some(broker) = ctx.broker_cache.get(b_ns, b_name) else {
        // The Broker is gone; a managed broker's consumers went with its servers.
        let note =
            format!("Broker {b_ns}/{b_name} no longer exists; consumer {name} was not deleted");
        publish(&ctx, &*obj, EventType::Warning, LEFT, note).await;
        return Ok(Action::await_change());
    };
    let conn = match link(&ctx, &broker) {
        Link::Connected(c) => c,
        Link::Connecting => {
            let why = "this operator is still connecting to the broker".to_string();
            return give_up_or_retry(&*obj, &ctx, &name, why, LEFT).await;
        }
        Link::Down(why) => return give_up_or_retry(&*obj, &ctx, &name, why.message, LEFT).await,
    };
    let source_kind = if obj.spec.queue_ref.is_some() {
        DestinationKind::Queue
    } else {
        DestinationKind::Topic
    };
    let target = ConsumerTarget {
        source_kind,
        source,
        name: name.clone(),
        owner: owner(&obj),
    };
    let (kind, reason, note) = match conn.delete_consumer(&target).await {
        Ok(Deletion::Deleted) => (
            EventType::Normal,
            "ConsumerDeleted",
            format!("deleted consumer {name}"),
        ),
        Ok(Deletion::Absent) => return Ok(Action::await_change()),
        Ok(Deletion::NotOwned(why)) => (EventType::Warning, LEFT, format!("{why}; not deleted")),
        Ok(Deletion::NotEmpty(_, why)) => (EventType::Warning, LEFT, why),
        Err(e) => return give_up_or_retry(&*obj, &ctx, &name, e.to_string(), LEFT).await,
    };
    publish(&ctx, &*obj, kind, reason, note).await;
    Ok(Action::await_change())
}
