//! The one cache of Brokers that Queues and Topics resolve their `brokerRef` from: a reconcile
//! reads the Broker from memory instead of asking the API server, and Queue and Topic controllers
//! are triggered from the same cache, so what they read is never older than what woke them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};

use super::driver::{lean, scoped_api};
use crate::api::Broker;

/// Events a slow subscriber may lag behind before the cache waits for it.
const BUFFER: usize = 1024;

/// The controllers that follow Broker changes: Queue and Topic. Every subscription must be
/// taken and polled, since the cache waits for its slowest subscriber.
pub const SUBSCRIBERS: usize = 2;

/// The Brokers of every watched scope (a namespace, or `None` for the whole cluster).
#[derive(Default)]
pub struct BrokerCache {
    stores: HashMap<Option<String>, Store<Broker>>,
    subscriptions: Mutex<HashMap<Option<String>, Vec<ReflectHandle<Broker>>>>,
}

impl BrokerCache {
    /// Starts one Broker watch per scope; each runs until the process ends.
    pub fn start(client: &kube::Client, scopes: &[Option<String>]) -> Self {
        let mut stores = HashMap::new();
        let mut subscriptions = HashMap::new();
        for scope in scopes {
            let (store, writer) = reflector::store_shared(BUFFER);
            let handles: Vec<_> = (0..SUBSCRIBERS)
                .filter_map(|_| writer.subscribe())
                .collect();
            let api: Api<Broker> = scoped_api(client, scope.as_deref());
            let stream = watcher(api, watcher::Config::default().any_semantic())
                .default_backoff()
                .modify(|b| lean(&mut b.metadata))
                .reflect_shared(writer);
            tokio::spawn(stream.for_each(|_| async {}));
            stores.insert(scope.clone(), store);
            subscriptions.insert(scope.clone(), handles);
        }
        Self {
            stores,
            subscriptions: Mutex::new(subscriptions),
        }
    }

    /// The cached Broker `ns/name`, if its scope is watched and it was seen.
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<Broker>> {
        let store = self
            .stores
            .get(&Some(ns.to_string()))
            .or_else(|| self.stores.get(&None))?;
        store.get(&ObjectRef::new(name).within(ns))
    }

    /// Takes one of the `SUBSCRIBERS` streams of Broker changes in `scope`, for triggering the
    /// resources that use them.
    pub fn subscribe(&self, scope: Option<&str>) -> Option<ReflectHandle<Broker>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&scope.map(str::to_string))?
            .pop()
    }
}
