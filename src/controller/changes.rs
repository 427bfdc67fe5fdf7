//! The watch events that start a reconcile: an object seen for the first time, or one whose
//! generation (which deletion also bumps) or finalizers changed. A status write, including the
//! reconciler's own, does not start one.
//!
//! kube's `predicate_filter` does the same but keeps each object's name, namespace and uid as
//! strings (at 10,000 objects 2.3 MB); this keeps one pair of digests per object, and forgets
//! objects when they are deleted or missing from a relist.

use std::collections::{HashMap, HashSet};

use futures::{Stream, StreamExt};
use kube::runtime::watcher::{self, Event};

use crate::engine::digest;

/// What is remembered of the objects seen: a digest of each uid and of what starts a reconcile.
#[derive(Default)]
struct Seen {
    last: HashMap<u64, u64>,
    /// The uids of a relist in progress: what it lacks was deleted meanwhile.
    relist: Option<HashSet<u64>>,
}

impl Seen {
    /// Whether the object with `meta`, whose watched state digests to `wanted`, changed since
    /// it was last seen, remembering it.
    fn admit(&mut self, meta: &kube::core::ObjectMeta, wanted: u64) -> bool {
        let uid = digest(&meta.uid);
        if let Some(relist) = self.relist.as_mut() {
            relist.insert(uid);
        }
        self.last.insert(uid, wanted) != Some(wanted)
    }

    fn forget(&mut self, meta: &kube::core::ObjectMeta) {
        self.last.remove(&digest(&meta.uid));
    }

    fn relist_done(&mut self) {
        if let Some(present) = self.relist.take() {
            self.last.retain(|uid, _| present.contains(uid));
        }
    }
}

/// The objects of `events` (after the reflector has seen them) that need a reconcile; `meta`
/// gives an object's metadata.
pub fn reconcile_triggers<K, S>(
    events: S,
    meta: impl Fn(&K) -> &kube::core::ObjectMeta + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Send + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    // A deleted object has nothing left to reconcile.
    changed_objects(events, false, move |obj: &K| {
        let m = meta(obj);
        (m, digest(&(m.generation, &m.finalizers)))
    })
}

/// The objects of `events` whose watched state changed, and with `deletions` those deleted:
/// `watched` gives an object's metadata and a digest of the state that matters (for a
/// subscription's source: its spec and readiness, not its depth).
pub fn changed_objects<K, S, F>(
    events: S,
    deletions: bool,
    watched: F,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Send + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
    F: Fn(&K) -> (&kube::core::ObjectMeta, u64) + Send + 'static,
{
    let mut seen = Seen::default();
    events.filter_map(move |event| {
        let out = match event {
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => {
                let (meta, wanted) = watched(&obj);
                seen.admit(meta, wanted).then_some(Ok(obj))
            }
            Ok(Event::Delete(obj)) => {
                seen.forget(watched(&obj).0);
                deletions.then_some(Ok(obj))
            }
            Ok(Event::Init) => {
                seen.relist = Some(HashSet::new());
                None
            }
            Ok(Event::InitDone) => {
                seen.relist_done();
                None
            }
            Err(e) => Some(Err(e)),
        };
        std::future::ready(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::ObjectMeta;

    fn meta(uid: &str, generation: i64, finalizers: &[&str]) -> ObjectMeta {
        ObjectMeta {
            uid: Some(uid.into()),
            generation: Some(generation),
            finalizers: Some(finalizers.iter().map(|f| f.to_string()).collect()),
            ..Default::default()
        }
    }

    async fn admitted(events: Vec<Event<ObjectMeta>>) -> Vec<(String, i64)> {
        let stream = futures::stream::iter(events.into_iter().map(Ok));
        reconcile_triggers(stream, |m: &ObjectMeta| m)
            .map(|m| {
                let m = m.unwrap();
                (m.uid.unwrap(), m.generation.unwrap())
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn only_new_objects_and_changed_generations_or_finalizers_pass() {
        let got = admitted(vec![
            Event::Init,
            Event::InitApply(meta("a", 1, &[])),
            Event::InitApply(meta("b", 1, &[])),
            Event::InitDone,
            // A status write: same generation and finalizers.
            Event::Apply(meta("a", 1, &[])),
            Event::Apply(meta("a", 1, &["conveyor.dev/cleanup"])),
            Event::Apply(meta("b", 2, &[])),
            Event::Apply(meta("b", 2, &[])),
        ])
        .await;
        assert_eq!(
            got,
            vec![
                ("a".into(), 1),
                ("b".into(), 1),
                ("a".into(), 1),
                ("b".into(), 2)
            ]
        );
    }

    #[tokio::test]
    async fn a_relist_forgets_what_it_lacks_and_passes_what_changed_meanwhile() {
        let got = admitted(vec![
            Event::Apply(meta("a", 1, &[])),
            Event::Apply(meta("b", 1, &[])),
            Event::Apply(meta("c", 1, &[])),
            Event::Delete(meta("c", 1, &[])),
            // The watch broke; on the relist "b" is gone and "a" moved on.
            Event::Init,
            Event::InitApply(meta("a", 2, &[])),
            Event::InitDone,
            // Seen again once forgotten, they pass.
            Event::Apply(meta("b", 1, &[])),
            Event::Apply(meta("c", 1, &[])),
        ])
        .await;
        let uids: Vec<_> = got.iter().map(|(u, g)| format!("{u}{g}")).collect();
        assert_eq!(uids, ["a1", "b1", "c1", "a2", "b1", "c1"]);
    }
}
