//! The context shared by every reconciler: the client, the configuration, the metrics, the
//! Event recorder and the per-object backoff of transient failures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use super::broker::cleanup::Progress;
use super::cache::BrokerCache;
use super::stream::refresh::Listings;
use crate::engine::destinations::Destinations;
use crate::engine::registry::Registry;
use crate::metrics::Metrics;

/// The field manager of every server-side apply Conveyor makes.
pub const FIELD_MANAGER: &str = "conveyor.dev/operator";

/// Operator settings that reconcilers read.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Namespaces to reconcile; empty means all.
    pub namespaces: Vec<String>,
    /// How often an object is reconciled when nothing changes.
    pub resync: Duration,
    /// How often a Queue's or Topic's depth in status is refreshed (and drift looked for).
    pub stream_refresh: Duration,
    /// How often a Queue or Topic is checked against the broker in full rather than from the
    /// Broker listing.
    pub full_check: Duration,
    /// This process's name in Events (the pod name in a cluster).
    pub instance: Option<String>,
    /// Where external Brokers may point.
    pub destinations: Destinations,
    /// The namespace the operator runs in; its pods may reach managed brokers.
    pub operator_namespace: String,
    /// How long a deletion that needs an unreachable broker is retried before the resource is
    /// let go and the broker-side object left in place.
    pub deletion_grace: Duration,
    /// Reconciles that may run at once, per kind and watched namespace.
    pub concurrency: u16,
}

impl Config {
    /// The watch scopes: each listed namespace, or the whole cluster.
    pub fn scopes(&self) -> Vec<Option<String>> {
        scopes(&self.namespaces)
    }
}

/// The watch scopes of a namespace list: each listed namespace, or the whole cluster.
pub fn scopes(namespaces: &[String]) -> Vec<Option<String>> {
    if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    }
}

/// A Topic (`topic: true`) or Queue that changed, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceChange {
    pub topic: bool,
    pub namespace: String,
    pub name: String,
}

/// Source changes a slow subscription controller may lag behind; beyond that it misses them
/// until its next resync.
const SOURCE_CHANGES: usize = 1024;

/// Shared state of the reconcilers.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// One connection per Broker, shared by every reconciler.
    pub brokers: Registry,
    /// Every watched Broker, for resolving references without asking the API server.
    pub broker_cache: BrokerCache,
    /// The latest listing of each Broker's destinations.
    pub listings: Listings,
    /// How the deletions of Brokers waiting for their users progress.
    pub broker_deletions: Progress,
    /// Topics and Queues whose spec, readiness or name in the broker changed, as each
    /// namespace's subscription controller sees them: for subscriptions in other namespaces.
    pub source_changes: tokio::sync::broadcast::Sender<SourceChange>,
    backoff: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, config: Config, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: config.instance.clone(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        let broker_cache = BrokerCache::start(&client, &config.scopes());
        Self {
            broker_cache,
            listings: Listings::default(),
            broker_deletions: Progress::default(),
            source_changes: tokio::sync::broadcast::channel(SOURCE_CHANGES).0,
            client,
            config,
            metrics,
            recorder,
            brokers: Registry::default(),
            backoff: Mutex::default(),
        }
    }

    /// Records one more consecutive failure of `key` and returns how long to wait before the
    /// next attempt: 1 s, doubling, at most 5 minutes.
    pub fn next_backoff(&self, key: &str) -> Duration {
        let mut map = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.to_string()).or_insert(0);
        *n = (*n + 1).min(16);
        backoff_delay(*n)
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn reset_backoff(&self, key: &str) {
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// The delay after `failures` consecutive failures.
pub fn backoff_delay(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::backoff_delay;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_delay(1), Duration::from_secs(1));
        assert_eq!(backoff_delay(2), Duration::from_secs(2));
        assert_eq!(backoff_delay(5), Duration::from_secs(16));
        assert_eq!(backoff_delay(10), Duration::from_secs(300));
        assert_eq!(backoff_delay(16), Duration::from_secs(300));
    }
}
