//! An EventSubscription's deletion: its consumer holds no data of its own, so it is deleted
//! (on RabbitMQ, for a Topic, with the subscription's queue). The Broker and the source's name
//! come from status, so the consumer goes even when the Topic or Queue went first. An
//! unreachable broker is retried for the deletion grace period, as for streams.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::api::EventSubscription;
use crate::api::conditions::{self, ConditionType, Desired, Reason};
use crate::controller::context::Context;
use crate::controller::driver::publish;
use crate::controller::error::Result;
use crate::controller::stream::cleanup::give_up_or_retry;
use crate::controller::stream::{Link, link};
use crate::engine::{ConsumerTarget, Deletion, DestinationKind};

use super::consumer::{consumer_name, owner};
use crate::api::common::BrokerReference;
use crate::controller::refs;

const LEFT: &str = "ConsumerLeftInBroker";

/// Where the consumer is: from status, else (a consumer created by a pass whose status write
/// did not happen) from the source as the spec names it.
async fn placement(
    obj: &EventSubscription,
    ctx: &Context,
) -> Result<Option<(String, BrokerReference, String)>> {
    let status = obj.status.clone().unwrap_or_default();
    if let (Some(broker), Some(source)) = (status.broker, status.source_in_broker)
        && let Some((ns, name)) = broker.split_once('/')
    {
        let r = BrokerReference {
            name: name.into(),
            namespace: Some(ns.into()),
        };
        let consumer = status.consumer_name.unwrap_or_else(|| consumer_name(obj));
        return Ok(Some((consumer, r, source)));
    }
    Ok(super::source_of(obj, &ctx.client).await?.map(|source| {
        (
            consumer_name(obj),
            source.broker_ref(),
            source.name_in_broker(),
        )
    }))
}

/// When the source no longer admits the subscription's namespace, its broker identity is
/// revoked (its consumer and what it holds stay): `Isolated=False reason=RefNotPermitted`
/// once done, `None` when there was nothing to revoke or the broker cannot be reached now.
pub async fn revoke_withdrawn(obj: &EventSubscription, ctx: &Context) -> Result<Option<Desired>> {
    let status = obj.status.as_ref();
    let isolated = status
        .map(|s| conditions::is_true(&s.conditions, ConditionType::Isolated))
        .unwrap_or(false);
    if !isolated {
        return Ok(None);
    }
    let Some((name, broker_ref, _)) = placement(obj, ctx).await? else {
        return Ok(None);
    };
    let ns = broker_ref.namespace.clone().unwrap_or_default();
    let Ok(broker) = refs::broker(ctx, &ns, &broker_ref).await? else {
        return Ok(None);
    };
    let Link::Connected(conn) = link(ctx, &broker) else {
        return Ok(None);
    };
    conn.revoke_identity(&name).await?;
    let note = format!(
        "the source no longer admits this namespace: revoked the broker identity of consumer {name}"
    );
    publish(ctx, obj, EventType::Normal, "IdentityRevoked", note.clone()).await;
    Ok(Some(Desired::is_false(
        ConditionType::Isolated,
        Reason::RefNotPermitted,
        note,
    )))
}

pub async fn delete_consumer(obj: Arc<EventSubscription>, ctx: Arc<Context>) -> Result<Action> {
    let Some((name, broker_ref, source)) = placement(&obj, &ctx).await? else {
        // Neither recorded nor findable: no consumer can have been made for it.
        return Ok(Action::await_change());
    };
    // Placements name the Broker's namespace; its allow-list does not stand in the way of
    // removing what was made.
    let ns = broker_ref.namespace.clone().unwrap_or_default();
    let broker = match refs::broker(&ctx, &ns, &broker_ref).await? {
        Ok(b) => b,
        Err(missing) => {
            // The Broker is gone; a managed broker's consumers went with its servers.
            let note = format!("{}; consumer {name} was not deleted", missing.message);
            publish(&ctx, &*obj, EventType::Warning, LEFT, note).await;
            return Ok(Action::await_change());
        }
    };
    let conn = match link(&ctx, &broker) {
        Link::Connected(c) => c,
        Link::Connecting => {
            let why = "this operator is still connecting to the broker".to_string();
            return give_up_or_retry(&*obj, &ctx, &name, why, LEFT).await;
        }
        Link::Down(why) => return give_up_or_retry(&*obj, &ctx, &name, why.message, LEFT).await,
    };
    // The identity goes first: from then on the old credentials are refused.
    match conn.revoke_identity(&name).await {
        Ok(true) => {
            let note = format!("revoked the broker identity of consumer {name}");
            publish(&ctx, &*obj, EventType::Normal, "IdentityRevoked", note).await;
        }
        Ok(false) => {}
        Err(e) => {
            let why = format!("revoking the identity of consumer {name}: {e}");
            return give_up_or_retry(&*obj, &ctx, &name, why, LEFT).await;
        }
    }
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
        // Dead letters still on their way: the consumer stays until they are kept.
        Ok(Deletion::NotEmpty(_, why)) => {
            return give_up_or_retry(&*obj, &ctx, &name, why, LEFT).await;
        }
        Err(e) => return give_up_or_retry(&*obj, &ctx, &name, e.to_string(), LEFT).await,
    };
    publish(&ctx, &*obj, kind, reason, note).await;
    let status = obj.status.as_ref();
    if let (Some(n @ 1..), Some(dest)) = (
        status.and_then(|s| s.dead_letters),
        status.and_then(|s| s.dead_letter_destination.as_ref()),
    ) {
        let note = format!("{n} dead letters are kept in {dest}, which stays in the broker");
        publish(&ctx, &*obj, EventType::Normal, "DeadLettersKept", note).await;
    }
    Ok(Action::await_change())
}
