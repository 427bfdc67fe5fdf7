//! A Broker's finalizer: the Broker stays, and with it its connection, until every Queue and
//! Topic that uses it and still has something to delete in the broker (`deletionPolicy`
//! `Delete` or `DeleteIfEmpty`, declared there), and every EventSubscription with a consumer
//! there, is gone. So deleting a namespace deletes its
//! `Delete` queues in the broker instead of finding the Broker gone first, and keeps `Retain`
//! ones. A wait that goes nowhere (the broker unreachable, or no user finishing) is bounded by
//! the operator's deletion grace period, after which the Broker goes and an Event names the
//! resources it left behind.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::api::common::{BrokerReference, DeletionPolicy};
use crate::api::conditions::{ConditionType, Desired, Reason, merge};
use crate::api::{Broker, EventSubscription, Queue, StreamStatus, Topic};
use crate::controller::context::Context;
use crate::controller::driver::{publish, scoped_api};
use crate::controller::error::{Error, Result};
use crate::controller::refs;
use crate::controller::status::{api_for, apply_status};
use crate::controller::stream::StreamKind;
use crate::engine::registry::BrokerKey;

/// The finalizer that keeps a Broker until its users' broker-side objects are deleted.
pub const BROKER_FINALIZER: &str = "conveyor.dev/broker";

/// Whether a Queue or Topic in `ns` with these settings still needs the Broker `key` to
/// delete something.
fn waits_for(
    key: (&str, &str),
    ns: &str,
    broker_ref: &BrokerReference,
    policy: DeletionPolicy,
    status: Option<&StreamStatus>,
) -> bool {
    refs::broker_key(ns, broker_ref) == key
        && policy != DeletionPolicy::Retain
        && status.and_then(|s| s.declared).unwrap_or(false)
}

/// The objects of kind `K` in `scope` that still need the Broker `key`, as `Kind ns/name`.
async fn users_of_kind<K: StreamKind>(
    ctx: &Context,
    scope: Option<&str>,
    key: (&str, &str),
) -> Result<Vec<String>> {
    let api: Api<K> = scoped_api(&ctx.client, scope);
    // From the API server's watch cache: this runs again as each user goes.
    let list = api.list(&ListParams::default().match_any()).await?.items;
    Ok(list
        .iter()
        .filter(|o| {
            let ns = o.namespace().unwrap_or_default();
            let policy = o.settings().deletion_policy;
            waits_for(key, &ns, o.broker_ref(), policy, o.stream_status())
        })
        .map(|o| {
            format!(
                "{} {}/{}",
                K::kind(&()),
                o.namespace().unwrap_or_default(),
                o.name_any()
            )
        })
        .collect())
}

/// The EventSubscriptions in `scope` with a consumer on the Broker `key`: deleting one deletes
/// its consumer (on RabbitMQ a queue with the events it holds), which needs the Broker.
async fn subscription_users(
    ctx: &Context,
    scope: Option<&str>,
    key: (&str, &str),
) -> Result<Vec<String>> {
    let api: Api<EventSubscription> = scoped_api(&ctx.client, scope);
    let on = format!("{}/{}", key.0, key.1);
    let list = api.list(&ListParams::default().match_any()).await?.items;
    Ok(list
        .iter()
        .filter(|s| {
            s.status.as_ref().is_some_and(|st| {
                st.consumer_name.is_some() && st.broker.as_deref() == Some(on.as_str())
            })
        })
        .map(|s| {
            format!(
                "EventSubscription {}/{}",
                s.namespace().unwrap_or_default(),
                s.name_any()
            )
        })
        .collect())
}

/// The Queues, Topics and EventSubscriptions that still need the Broker, as
/// `Kind namespace/name`.
async fn users(ctx: &Context, broker: &Broker) -> Result<Vec<String>> {
    let (b_ns, b_name) = (broker.namespace().unwrap_or_default(), broker.name_any());
    let key = (b_ns.as_str(), b_name.as_str());
    // A Broker that admits no other namespace has users only in its own.
    let scopes: Vec<Option<&str>> = if broker.spec.allowed_namespaces.is_empty() {
        vec![Some(b_ns.as_str())]
    } else if ctx.config.namespaces.is_empty() {
        vec![None]
    } else {
        ctx.config
            .namespaces
            .iter()
            .map(|n| Some(n.as_str()))
            .collect()
    };
    let mut out = Vec::new();
    for scope in scopes {
        out.extend(users_of_kind::<Queue>(ctx, scope, key).await?);
        out.extend(users_of_kind::<Topic>(ctx, scope, key).await?);
        out.extend(subscription_users(ctx, scope, key).await?);
    }
    out.sort();
    Ok(out)
}

/// How Brokers' deletions progress: when each last saw its count of waiting users fall.
#[derive(Default)]
pub struct Progress {
    seen: std::sync::Mutex<std::collections::HashMap<BrokerKey, (usize, std::time::Instant)>>,
}

impl Progress {
    /// Records that `key` waits for `waiting` users; returns how long that count has not fallen
    /// (zero the first time this process sees it).
    pub fn stalled_for(&self, key: &BrokerKey, waiting: usize) -> std::time::Duration {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let entry = seen.entry(key.clone()).or_insert((waiting, now));
        if waiting < entry.0 {
            *entry = (waiting, now);
        }
        now - entry.1
    }

    pub fn forget(&self, key: &BrokerKey) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// The first few names of a list and how many more there are.
fn summary(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut out = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        out.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    out
}

pub async fn cleanup_broker(obj: Arc<Broker>, ctx: Arc<Context>) -> Result<Action> {
    let waiting = users(&ctx, &obj).await?;
    if waiting.is_empty() {
        super::credentials::release(&ctx, &obj).await?;
        ctx.brokers.remove(&super::key(&obj));
        return Ok(Action::await_change());
    }
    let since = obj
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now);
    let waited = Timestamp::now().duration_since(since).unsigned_abs();
    let list = summary(&waiting);
    // The grace bounds a wait that goes nowhere: on an unreachable broker, or on users that
    // delete nothing (a DeleteIfEmpty queue that keeps its messages). While the broker answers
    // and users keep going, however many there are, the Broker waits for them.
    let key = super::key(&obj);
    let connected = ctx
        .brokers
        .get(&key)
        .is_some_and(|c| c.require_connected().is_ok());
    let stalled = ctx.broker_deletions.stalled_for(&key, waiting.len());
    let grace = ctx.config.deletion_grace;
    if waited >= grace && (!connected || stalled >= grace) {
        let note = format!(
            "deleted after waiting {}s for {list} to delete their objects in the broker; they stay there",
            ctx.config.deletion_grace.as_secs()
        );
        publish(&ctx, &*obj, EventType::Warning, "UsersLeftInBroker", note).await;
        super::credentials::release(&ctx, &obj).await?;
        ctx.broker_deletions.forget(&key);
        ctx.brokers.remove(&key);
        return Ok(Action::await_change());
    }
    let msg = format!(
        "the Broker is kept until {list} have deleted their objects in the broker (deletionPolicy Delete or DeleteIfEmpty)"
    );
    let old = obj.status.as_ref();
    let ready = Desired::is_false(ConditionType::Ready, Reason::DeletionBlocked, msg.clone());
    let generation = obj.metadata.generation;
    let new = crate::api::BrokerStatus {
        conditions: merge(
            old.map(|s| &s.conditions[..]).unwrap_or_default(),
            &[ready],
            generation,
            Timestamp::now(),
        ),
        ..old.cloned().unwrap_or_default()
    };
    apply_status(&api_for(&ctx.client, &*obj), &*obj, old, &new).await?;
    Err(Error::DeletionBlocked(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, ns: Option<&str>) -> BrokerReference {
        BrokerReference {
            name: name.into(),
            namespace: ns.map(str::to_string),
        }
    }

    fn declared() -> StreamStatus {
        StreamStatus {
            declared: Some(true),
            ..Default::default()
        }
    }

    #[test]
    fn progress_restarts_the_stall_clock_only_when_fewer_users_wait() {
        let p = Progress::default();
        let key = ("shop".to_string(), "events".to_string());
        assert_eq!(p.stalled_for(&key, 10), std::time::Duration::ZERO);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(p.stalled_for(&key, 10) >= std::time::Duration::from_millis(20));
        assert!(p.stalled_for(&key, 9) < std::time::Duration::from_millis(20));
        p.forget(&key);
        assert_eq!(p.stalled_for(&key, 9), std::time::Duration::ZERO);
    }

    #[test]
    fn long_lists_of_users_are_summarised() {
        let names: Vec<String> = (0..8).map(|i| format!("Queue shop/q{i}")).collect();
        assert_eq!(
            summary(&names),
            "Queue shop/q0, Queue shop/q1, Queue shop/q2, Queue shop/q3, Queue shop/q4 and 3 more"
        );
        assert_eq!(summary(&names[..1]), "Queue shop/q0");
    }

    #[test]
    fn only_declared_users_that_delete_keep_the_broker() {
        let key = ("shop", "events");
        let d = Some(&declared());
        let delete = DeletionPolicy::Delete;
        assert!(waits_for(key, "shop", &r("events", None), delete, d));
        assert!(waits_for(
            key,
            "billing",
            &r("events", Some("shop")),
            DeletionPolicy::DeleteIfEmpty,
            d
        ));
        assert!(!waits_for(
            key,
            "shop",
            &r("events", None),
            DeletionPolicy::Retain,
            d
        ));
        assert!(
            !waits_for(key, "shop", &r("events", None), delete, None),
            "never declared"
        );
        assert!(!waits_for(key, "shop", &r("other", None), delete, d));
        assert!(
            !waits_for(key, "billing", &r("events", None), delete, d),
            "another namespace's Broker"
        );
    }
}
