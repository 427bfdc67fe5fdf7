//! Batched refresh of Queues and Topics. Instead of every resource asking the broker about its
//! destination on a timer, one task lists each connected Broker's destinations once per
//! refresh interval and re-triggers only the resources whose figures or settings changed.
//!
//! A reconcile may then skip the broker altogether: when its destination was verified against
//! the spec by a full `ensure` within the full-check interval, and a listing taken after that
//! shows it with the settings it had then, the listing's figures are the answer. Anything else (a
//! spec change, settings changed in the broker, a destination gone, a listing too old) takes
//! the full path.
//!
//! The listing also schedules the periodic checks, so that a settled resource holds no timer
//! of its own (at 10,000 resources the per-object requeues were a fifth of the operator's heap):
//! a verification older than the full-check interval is announced, which makes its resource
//! check in full; when a Broker cannot be listed, resources last checked more than a resync
//! ago are announced instead, and check against the broker directly.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::Stream;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use crate::controller::context::Context;
use crate::engine::registry::BrokerKey;
use crate::engine::{
    DestinationKind, DestinationState, Listed, SyncOutcome, digest, owned_resource,
};
use crate::metrics::OutcomeLabel;

/// Brokers listed at once.
const PARALLEL_LISTINGS: usize = 4;

/// A resource whose destination changed in the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    pub kind: DestinationKind,
    pub namespace: String,
    pub name: String,
}

/// The kind, namespace and name of a Queue or Topic.
pub type ResourceKey = (DestinationKind, String, String);

/// The destinations of one listing, by kind and name in the broker. Kept compact (at 10,000
/// destinations the listings were a sixth of the operator's heap): no name is held twice.
type Entries = HashMap<(DestinationKind, String), Entry>;

struct Snapshot {
    /// When the listing was requested: it shows nothing older than this.
    started: Instant,
    entries: Entries,
}

/// A listed destination, less the name it is keyed by.
#[derive(PartialEq, Eq)]
struct Entry {
    owner: Box<str>,
    state: DestinationState,
    settings: u64,
}

/// A full `ensure` that found the destination as the spec wants it. Brokers and names are
/// held as digests: a verification only ever compares them.
struct Verified {
    /// Digest of the wanted spec and sync mode it was checked against.
    spec: u64,
    at: Instant,
    /// Digest of the Broker's key.
    broker: u64,
    /// Digest of the destination's kind and name in the broker.
    name: u64,
    /// The destination's settings in the first listing taken after `at`.
    settings: Option<u64>,
}

/// The latest listing of every Broker and the verifications they vouch for.
#[derive(Default)]
pub struct Listings {
    snapshots: Mutex<HashMap<BrokerKey, Snapshot>>,
    verified: Mutex<HashMap<ResourceKey, Verified>>,
    /// One channel per controller. Unbounded, because an announcement is the only thing that
    /// will look at a settled resource again: none may be dropped. They are short-lived (a
    /// controller takes them as fast as it can queue them).
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Changed>>>,
}

/// What the fast path needs to know of one reconcile.
pub struct Lookup<'a> {
    pub broker: &'a BrokerKey,
    pub resource: ResourceKey,
    pub name_in_broker: &'a str,
    pub owner: &'a str,
    /// Digest of the wanted spec and sync mode.
    pub spec: u64,
}

impl Listings {
    /// The destination's figures from the latest listing, when that listing vouches for a
    /// full `ensure` of the same spec made within `full_check`, and is itself younger than
    /// `fresh`.
    pub fn vouched(
        &self,
        l: &Lookup<'_>,
        full_check: Duration,
        fresh: Duration,
    ) -> Option<DestinationState> {
        let mut verified = lock(&self.verified);
        let v = verified.get_mut(&l.resource)?;
        if v.spec != l.spec || v.at.elapsed() > full_check || v.broker != digest(l.broker) {
            return None;
        }
        let snapshots = lock(&self.snapshots);
        let snap = snapshots.get(l.broker)?;
        if snap.started < v.at || snap.started.elapsed() > fresh {
            return None;
        }
        let entry = snap
            .entries
            .get(&(l.resource.0, l.name_in_broker.to_string()))?;
        if &*entry.owner != l.owner {
            return None;
        }
        match v.settings {
            None => v.settings = Some(entry.settings),
            Some(s) if s != entry.settings => return None,
            Some(_) => {}
        }
        Some(entry.state)
    }

    /// Records what a full `ensure` found: a destination in line with the spec is verified,
    /// anything else must be looked at in full again next time.
    pub fn record(&self, l: &Lookup<'_>, outcome: &SyncOutcome) {
        let mut verified = lock(&self.verified);
        match outcome {
            SyncOutcome::Created(_) | SyncOutcome::Unchanged(_) | SyncOutcome::Updated(..) => {
                verified.insert(
                    l.resource.clone(),
                    Verified {
                        spec: l.spec,
                        at: Instant::now(),
                        broker: digest(l.broker),
                        name: digest(&(l.resource.0, l.name_in_broker)),
                        settings: None,
                    },
                );
            }
            _ => {
                verified.remove(&l.resource);
            }
        }
    }

    /// The resources whose destinations change, for the controllers to re-trigger.
    pub fn changes(&self) -> mpsc::UnboundedReceiver<Changed> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.subscribers).push(tx);
        rx
    }

    fn announce(&self, changes: Vec<Changed>) {
        let mut subscribers = lock(&self.subscribers);
        for changed in changes {
            // A controller that has stopped no longer listens.
            subscribers.retain(|tx| tx.send(changed.clone()).is_ok());
        }
    }

    /// Stores a fresh listing of `broker` and announces what changed since the previous one;
    /// the first listing of a Broker announces every destination in it (its figures may have
    /// moved since its resource was reconciled). Resources verified before the listing whose
    /// destination it lacks are announced too, and so are those whose verification is older
    /// than `full_check` (they are no longer verified, so their reconcile checks in full).
    fn store(
        &self,
        broker: BrokerKey,
        started: Instant,
        listed: Vec<Listed>,
        full_check: Duration,
    ) -> usize {
        let entries: Entries = listed
            .into_iter()
            .map(|l| {
                let entry = Entry {
                    owner: l.owner.into_boxed_str(),
                    state: l.state,
                    settings: l.settings,
                };
                ((l.kind, l.name), entry)
            })
            .collect();
        let broker_digest = digest(&broker);
        let (mut changes, present, resettled) = {
            let mut snapshots = lock(&self.snapshots);
            let previous = snapshots.insert(broker.clone(), Snapshot { started, entries });
            let current = &snapshots[&broker].entries;
            let (changes, resettled) = match previous {
                Some(previous) => (
                    differences(&previous.entries, current),
                    resettled(&previous.entries, current),
                ),
                None => (differences(&HashMap::new(), current), Vec::new()),
            };
            let present: std::collections::HashSet<u64> = current
                .keys()
                .map(|(kind, name)| digest(&(*kind, name.as_str())))
                .collect();
            (changes, present, resettled)
        };
        // Settings that changed (or a destination that appeared) since the last listing are
        // no longer vouched for: the resource is checked in full.
        {
            let mut verified = lock(&self.verified);
            for key in resettled {
                verified.remove(&key);
            }
        }
        let announced: std::collections::HashSet<_> = changes
            .iter()
            .map(|c| (c.kind, c.namespace.clone(), c.name.clone()))
            .collect();
        lock(&self.verified).retain(|key, v| {
            if v.broker != broker_digest {
                return true;
            }
            let gone = v.at < started && !present.contains(&v.name);
            let expired = v.at.elapsed() > full_check;
            if (gone || expired) && !announced.contains(key) {
                changes.push(Changed {
                    kind: key.0,
                    namespace: key.1.clone(),
                    name: key.2.clone(),
                });
            }
            !expired
        });
        let n = changes.len();
        self.announce(changes);
        n
    }

    /// A listing of `broker` failed: its snapshot grows stale, so reconciles ask the broker
    /// directly. Announces the resources last checked more than `resync` ago, so that each is
    /// still looked at once per resync.
    fn listing_failed(&self, broker: &BrokerKey, resync: Duration) -> usize {
        let broker = digest(broker);
        let due: Vec<Changed> = lock(&self.verified)
            .iter()
            .filter(|(_, v)| v.broker == broker && v.at.elapsed() > resync)
            .map(|(key, _)| Changed {
                kind: key.0,
                namespace: key.1.clone(),
                name: key.2.clone(),
            })
            .collect();
        let n = due.len();
        self.announce(due);
        n
    }

    /// Drops the listings and verifications of Brokers that have no connection any more (their
    /// resources are re-triggered by the Broker's own change).
    fn prune(&self, live: &[BrokerKey]) {
        lock(&self.snapshots).retain(|k, _| live.contains(k));
        let live: Vec<u64> = live.iter().map(digest).collect();
        lock(&self.verified).retain(|_, v| live.contains(&v.broker));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The resources whose destination appeared, went, or changed figures or settings between two
/// listings.
fn differences(before: &Entries, after: &Entries) -> Vec<Changed> {
    let changed = after.iter().filter(|(k, e)| before.get(*k) != Some(*e));
    let gone = before.iter().filter(|(k, _)| !after.contains_key(*k));
    changed
        .chain(gone)
        .filter_map(|((kind, _), e)| owned_resource(*kind, &e.owner))
        .map(|(kind, ns, name)| Changed {
            kind,
            namespace: ns.to_string(),
            name: name.to_string(),
        })
        .collect()
}

/// The resources whose destination's settings differ between two listings, or that appeared.
fn resettled(before: &Entries, after: &Entries) -> Vec<ResourceKey> {
    after
        .iter()
        .filter(|(k, e)| before.get(*k).map(|b| b.settings) != Some(e.settings))
        .filter_map(|((kind, _), e)| owned_resource(*kind, &e.owner))
        .map(|(kind, ns, name)| (kind, ns.to_string(), name.to_string()))
        .collect()
}

/// Lists every connected Broker once per `ctx.config.stream_refresh`, forever.
pub async fn run(ctx: std::sync::Arc<Context>) {
    let period = ctx.config.stream_refresh;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let connections = ctx.brokers.all();
        let live: Vec<BrokerKey> = connections.iter().map(|(k, _)| k.clone()).collect();
        ctx.listings.prune(&live);
        let mut listings: FuturesUnordered<_> = FuturesUnordered::new();
        let mut pending = connections.into_iter();
        loop {
            while listings.len() < PARALLEL_LISTINGS {
                let Some((key, conn)) = pending.next() else {
                    break;
                };
                if conn.require_connected().is_err() {
                    continue;
                }
                listings.push(async move {
                    let started = Instant::now();
                    (key, started, conn.list().await)
                });
            }
            let Some((key, started, result)) = listings.next().await else {
                break;
            };
            let outcome = if result.is_ok() { "success" } else { "error" };
            ctx.metrics
                .broker_listings
                .get_or_create(&OutcomeLabel { outcome })
                .inc();
            match result {
                Ok(listed) => {
                    let n = listed.len();
                    let announced =
                        ctx.listings
                            .store(key.clone(), started, listed, ctx.config.full_check);
                    tracing::debug!(broker = %format!("{}/{}", key.0, key.1), destinations = n, announced, took_ms = started.elapsed().as_millis() as u64, "listed the broker");
                }
                Err(e) => {
                    let due = ctx.listings.listing_failed(&key, ctx.config.resync);
                    tracing::debug!(broker = %format!("{}/{}", key.0, key.1), error = %e, due, "listing the broker failed");
                }
            }
        }
    }
}

/// The changes that concern `kind` in `scope` (a namespace, or `None` for all), as a stream of
/// (namespace, name).
pub fn triggers(
    changes: mpsc::UnboundedReceiver<Changed>,
    kind: DestinationKind,
    scope: Option<String>,
) -> impl Stream<Item = (String, String)> + Send + 'static {
    futures::stream::unfold(changes, move |mut rx| {
        let scope = scope.clone();
        async move {
            loop {
                let c = rx.recv().await?;
                if c.kind == kind && scope.as_ref().is_none_or(|s| *s == c.namespace) {
                    return Some(((c.namespace, c.name), rx));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(kind: DestinationKind, name: &str, messages: u64, settings: u64) -> Listed {
        Listed {
            kind,
            name: name.into(),
            owner: format!("{} shop/{name}", kind.as_str()),
            state: DestinationState {
                messages,
                ..Default::default()
            },
            settings,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// The lookup of the Queue `shop/<name>` on `broker`.
    fn queue<'a>(
        broker: &'a BrokerKey,
        name: &'a str,
        in_broker: &'a str,
        spec: u64,
    ) -> Lookup<'a> {
        Lookup {
            broker,
            resource: (DestinationKind::Queue, "shop".into(), name.into()),
            name_in_broker: in_broker,
            owner: "Queue shop/a",
            spec,
        }
    }

    fn key() -> BrokerKey {
        ("shop".into(), "events".into())
    }

    #[test]
    fn only_changed_appeared_and_gone_destinations_are_announced() {
        let l = Listings::default();
        let mut rx = l.changes();
        let start = Instant::now();
        let q = DestinationKind::Queue;
        let first = vec![
            listed(q, "a", 0, 1),
            listed(q, "b", 0, 1),
            listed(q, "c", 0, 1),
        ];
        assert_eq!(
            l.store(key(), start, first, HOUR),
            3,
            "the first listing announces everything"
        );
        while rx.try_recv().is_ok() {}
        let second = vec![
            listed(q, "a", 0, 1),
            listed(q, "b", 5, 1),
            listed(DestinationKind::Topic, "d", 0, 1),
        ];
        assert_eq!(
            l.store(key(), start + Duration::from_secs(1), second, HOUR),
            3
        );
        let mut names = Vec::new();
        while let Ok(c) = rx.try_recv() {
            names.push((c.kind, c.name));
        }
        names.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            names,
            vec![
                (q, "b".to_string()),
                (q, "c".to_string()),
                (DestinationKind::Topic, "d".to_string())
            ]
        );
    }

    #[test]
    fn a_verified_destination_missing_from_a_listing_is_announced() {
        let l = Listings::default();
        let broker = key();
        let lookup = queue(&broker, "a", "queue_shop_a", 1);
        l.record(&lookup, &SyncOutcome::Created(DestinationState::default()));
        let mut rx = l.changes();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(l.store(broker.clone(), Instant::now(), vec![], HOUR), 1);
        assert_eq!(rx.try_recv().unwrap().name, "a");
    }

    #[test]
    fn a_listing_vouches_only_for_a_verified_spec_with_unchanged_settings() {
        let l = Listings::default();
        let broker = key();
        let lookup = |spec| queue(&broker, "a", "a", spec);
        let (resync, fresh) = (Duration::from_secs(300), Duration::from_secs(60));
        let q = DestinationKind::Queue;
        l.store(
            broker.clone(),
            Instant::now(),
            vec![listed(q, "a", 1, 7)],
            HOUR,
        );
        assert_eq!(
            l.vouched(&lookup(9), resync, fresh),
            None,
            "nothing verified yet"
        );
        l.record(
            &lookup(9),
            &SyncOutcome::Unchanged(DestinationState::default()),
        );
        assert_eq!(
            l.vouched(&lookup(9), resync, fresh),
            None,
            "a listing older than the verification vouches for nothing"
        );
        l.store(
            broker.clone(),
            Instant::now(),
            vec![listed(q, "a", 2, 7)],
            HOUR,
        );
        assert_eq!(
            l.vouched(&lookup(9), resync, fresh).map(|s| s.messages),
            Some(2)
        );
        assert_eq!(l.vouched(&lookup(8), resync, fresh), None, "another spec");
        l.store(
            broker.clone(),
            Instant::now(),
            vec![listed(q, "a", 2, 6)],
            HOUR,
        );
        assert_eq!(
            l.vouched(&lookup(9), resync, fresh),
            None,
            "settings changed"
        );
        l.record(
            &lookup(9),
            &SyncOutcome::Drifted(DestinationState::default(), vec![]),
        );
        l.store(
            broker.clone(),
            Instant::now(),
            vec![listed(q, "a", 2, 6)],
            HOUR,
        );
        assert_eq!(
            l.vouched(&lookup(9), resync, fresh),
            None,
            "drift is never vouched for"
        );
    }

    #[test]
    fn an_expired_verification_is_announced_once_and_checked_in_full() {
        let l = Listings::default();
        let broker = key();
        let lookup = queue(&broker, "a", "a", 1);
        let q = DestinationKind::Queue;
        let fresh = Duration::from_secs(60);
        l.store(
            broker.clone(),
            Instant::now(),
            vec![listed(q, "a", 0, 7)],
            HOUR,
        );
        l.record(&lookup, &SyncOutcome::Created(DestinationState::default()));
        let mut rx = l.changes();
        std::thread::sleep(Duration::from_millis(5));
        let full_check = Duration::from_millis(1);
        assert_eq!(
            l.store(
                broker.clone(),
                Instant::now(),
                vec![listed(q, "a", 0, 7)],
                full_check
            ),
            1
        );
        assert_eq!(rx.try_recv().unwrap().name, "a");
        assert_eq!(l.vouched(&lookup, HOUR, fresh), None, "checked in full");
        assert_eq!(
            l.store(
                broker.clone(),
                Instant::now(),
                vec![listed(q, "a", 0, 7)],
                full_check
            ),
            0,
            "announced once"
        );
    }

    #[test]
    fn a_failed_listing_announces_what_is_due_for_a_resync() {
        let l = Listings::default();
        let broker = key();
        let lookup = |name: &'static str| queue(&broker, name, name, 1);
        l.record(
            &lookup("old"),
            &SyncOutcome::Unchanged(DestinationState::default()),
        );
        std::thread::sleep(Duration::from_millis(20));
        l.record(
            &lookup("new"),
            &SyncOutcome::Unchanged(DestinationState::default()),
        );
        let mut rx = l.changes();
        assert_eq!(l.listing_failed(&broker, Duration::from_millis(10)), 1);
        assert_eq!(rx.try_recv().unwrap().name, "old");
        assert_eq!(
            l.listing_failed(&("other".into(), "b".into()), Duration::ZERO),
            0
        );
    }
}
