//! A Queue's or Topic's deletion policy, run on its finalizer, whatever the engine.
//!
//! - `Retain`: the destination and its messages stay in the broker; the resource goes at once.
//! - `Delete`: the destination is deleted (only if this resource owns it).
//! - `DeleteIfEmpty`: deleted when it holds no messages; otherwise the resource stays, with a
//!   `DeletionBlocked` condition and Event, and Conveyor looks again with backoff.
//!
//! When the broker is gone for good the deletion must not hang: a Broker that no longer exists
//! leaves nothing to do, and an unreachable one is retried for the operator's deletion grace
//! period (`--unreachable-deletion-grace-seconds`, 5 minutes by default), after which the
//! resource goes and an Event says that the destination was left in the broker.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::{Link, StreamKind, link, target};
use crate::api::StreamStatus;
use crate::api::common::DeletionPolicy;
use crate::api::conditions::{self, ConditionType, Desired, Reason, merge};
use crate::controller::context::Context;
use crate::controller::driver::{Reconcile, publish};
use crate::controller::error::{Error, Result};
use crate::controller::refs;
use crate::controller::status::{api_for, apply_status};
use crate::engine::{DeleteWhen, Deletion};

/// The reason of the Event that says a stream was left in the broker.
const LEFT: &str = "StreamLeftInBroker";

pub async fn cleanup_stream<K: StreamKind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let target = target(&*obj);
    let name = &target.name;
    let policy = obj.settings().deletion_policy;
    let declared = super::declared(&*obj);
    if policy == DeletionPolicy::Retain || !declared {
        if declared {
            let note = format!("deletionPolicy Retain: {name} and its messages stay in the broker");
            publish(&ctx, &*obj, EventType::Normal, "StreamRetained", note).await;
        }
        return Ok(Action::await_change());
    }
    let ns = obj.namespace().unwrap_or_default();
    let broker = match refs::broker(&ctx, &ns, obj.broker_ref()).await? {
        Ok(b) => b,
        Err(missing) => {
            let note = format!("{}; {name} was not deleted", missing.message);
            publish(&ctx, &*obj, EventType::Warning, "StreamLeftInBroker", note).await;
            return Ok(Action::await_change());
        }
    };
    let conn = match link(&ctx, &broker) {
        Link::Connected(c) => c,
        Link::Connecting => {
            let why = "this operator is still connecting to the broker".to_string();
            return give_up_or_retry(&*obj, &ctx, name, why, LEFT).await;
        }
        Link::Down(why) => return give_up_or_retry(&*obj, &ctx, name, why.message, LEFT).await,
    };
    let when = match policy {
        DeletionPolicy::DeleteIfEmpty => DeleteWhen::Empty,
        _ => DeleteWhen::Always,
    };
    let (kind, reason, note) = match conn.delete(&target, when).await {
        Ok(Deletion::Deleted) => (
            EventType::Normal,
            "StreamDeleted",
            format!("deleted {name}"),
        ),
        Ok(Deletion::Absent) => return Ok(Action::await_change()),
        Ok(Deletion::NotOwned(why)) => (
            EventType::Warning,
            "StreamLeftInBroker",
            format!("{why}; not deleted"),
        ),
        Ok(Deletion::NotEmpty(messages, why)) => {
            return blocked(&*obj, &ctx, messages, why).await;
        }
        Err(e) => return give_up_or_retry(&*obj, &ctx, name, e.to_string(), LEFT).await,
    };
    publish(&ctx, &*obj, kind, reason, note).await;
    Ok(Action::await_change())
}

/// Retries while the deletion is younger than the grace period, then lets the resource go with
/// a Warning Event of reason `left` saying that `name` stays in the broker.
pub async fn give_up_or_retry<K: Reconcile>(
    obj: &K,
    ctx: &Context,
    name: &str,
    why: String,
    left: &str,
) -> Result<Action> {
    let since = obj
        .meta()
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now);
    let waited = Timestamp::now().duration_since(since).unsigned_abs();
    let grace = ctx.config.deletion_grace;
    if waited < grace {
        return Err(Error::Broker(format!("cannot delete {name} yet: {why}")));
    }
    let note = format!(
        "the broker stayed unavailable for {}s ({why}); {name} was left in the broker",
        grace.as_secs()
    );
    publish(ctx, obj, EventType::Warning, left, note).await;
    Ok(Action::await_change())
}

/// Keeps a `DeleteIfEmpty` resource while its destination holds messages, and says so.
async fn blocked<K: StreamKind>(
    obj: &K,
    ctx: &Context,
    messages: u64,
    why: String,
) -> Result<Action> {
    let msg = format!("deletionPolicy DeleteIfEmpty: {why}; it is deleted once empty");
    let old = obj.stream_status();
    let first = old
        .and_then(|s| conditions::find(&s.conditions, ConditionType::Ready))
        .is_none_or(|c| c.reason != Reason::DeletionBlocked.as_str());
    let generation = obj.meta().generation;
    let ready = Desired::is_false(ConditionType::Ready, Reason::DeletionBlocked, msg.clone());
    let new = StreamStatus {
        conditions: merge(
            old.map(|s| &s.conditions[..]).unwrap_or_default(),
            &[ready],
            generation,
            Timestamp::now(),
        ),
        messages: Some(messages as i64),
        ..old.cloned().unwrap_or_default()
    };
    apply_status(&api_for(&ctx.client, obj), obj, old, &new).await?;
    if first {
        publish(ctx, obj, EventType::Warning, "DeletionBlocked", msg.clone()).await;
    }
    Err(Error::DeletionBlocked(msg))
}
