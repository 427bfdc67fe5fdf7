//! The registry of broker connections: one per Broker, whatever its engine, shared by every
//! reconciler.
//!
//! A connection is opened on first use and kept while its settings (engine, URLs, credentials,
//! CA) stay the same; new settings replace it, and the old one closes when its last user drops
//! it. Every change of a connection's state is sent on a broadcast channel, so that the
//! Broker's reconciler runs at once and its `Reachable` condition follows within seconds.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::{BrokerConnection, Engine, EngineError, nats, rabbitmq};

/// A Broker's identity: namespace and name.
pub type BrokerKey = (String, String);

/// How to authenticate to a broker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Auth {
    #[default]
    None,
    UserPassword(String, String),
    Token(String),
    /// A NATS credentials file (user JWT and seed).
    CredentialsFile(String),
}

/// Everything a connection depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectRequest {
    pub engine: Engine,
    /// The broker's client URLs (`nats://`, `tls://`, `amqp://`, `amqps://`).
    pub urls: Vec<String>,
    /// The management API's base URL, for engines that are administered over HTTP (RabbitMQ).
    pub management_url: Option<String>,
    /// The virtual host Conveyor's objects live in (RabbitMQ); `/` when left out.
    pub virtual_host: Option<String>,
    pub auth: Auth,
    /// PEM of the certificate authority that signed the servers' certificates.
    pub ca_pem: Option<String>,
    /// The keys with which Conveyor issues and revokes subscriptions' NATS identities (managed
    /// NATS brokers only).
    pub issuer: Option<super::nats::identities::Issuer>,
    /// Connect only to `urls`, never to servers the broker advertises (its cluster peers): a
    /// broker could otherwise steer the operator, with these credentials, past the allow-list.
    pub only_listed_urls: bool,
}

impl ConnectRequest {
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

/// Tells the Broker's reconciler that its connection changed state.
#[derive(Clone, Debug)]
pub struct Notifier {
    key: BrokerKey,
    changes: broadcast::Sender<BrokerKey>,
}

impl Notifier {
    pub fn notify(&self) {
        let _ = self.changes.send(self.key.clone());
    }

    /// The Broker this notifier speaks for, as `namespace/name`.
    pub fn broker(&self) -> String {
        format!("{}/{}", self.key.0, self.key.1)
    }
}

/// Opens a connection for `req`: the one place that dispatches on the engine.
pub async fn open(
    req: &ConnectRequest,
    notifier: Notifier,
) -> Result<Arc<dyn BrokerConnection>, EngineError> {
    Ok(match req.engine {
        Engine::Nats => Arc::new(nats::connection::open(req, notifier).await?),
        Engine::Rabbitmq => Arc::new(rabbitmq::RabbitConnection::open(req, notifier).await?),
    })
}

struct Entry {
    fingerprint: u64,
    connection: Arc<dyn BrokerConnection>,
}

/// One connection per Broker.
pub struct Registry {
    inner: Mutex<HashMap<BrokerKey, Entry>>,
    changes: broadcast::Sender<BrokerKey>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            changes: broadcast::channel(1024).0,
        }
    }
}

impl Registry {
    /// Receives the key of a Broker whenever its connection state changes.
    pub fn subscribe(&self) -> broadcast::Receiver<BrokerKey> {
        self.changes.subscribe()
    }

    /// The connection of `key` for `req`: the existing one when its settings match, else a new
    /// one.
    pub async fn connect(
        &self,
        key: &BrokerKey,
        req: &ConnectRequest,
    ) -> Result<Arc<dyn BrokerConnection>, EngineError> {
        let fingerprint = req.fingerprint();
        if let Some(e) = self
            .lock()
            .get(key)
            .filter(|e| e.fingerprint == fingerprint)
        {
            return Ok(e.connection.clone());
        }
        let notifier = Notifier {
            key: key.clone(),
            changes: self.changes.clone(),
        };
        let connection = open(req, notifier).await?;
        self.lock().insert(
            key.clone(),
            Entry {
                fingerprint,
                connection: connection.clone(),
            },
        );
        Ok(connection)
    }

    /// Forgets the connection of a Broker that is gone.
    pub fn remove(&self, key: &BrokerKey) {
        self.lock().remove(key);
    }

    /// Keeps only the connections whose Broker `keep` says still exists.
    pub fn retain(&self, keep: impl Fn(&BrokerKey) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }

    /// Every open connection.
    pub fn all(&self) -> Vec<(BrokerKey, Arc<dyn BrokerConnection>)> {
        self.lock()
            .iter()
            .map(|(k, e)| (k.clone(), e.connection.clone()))
            .collect()
    }

    /// The current connection of a Broker, if any.
    pub fn get(&self, key: &BrokerKey) -> Option<Arc<dyn BrokerConnection>> {
        self.lock().get(key).map(|e| e.connection.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BrokerKey, Entry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_follows_every_setting() {
        let a = ConnectRequest {
            urls: vec!["nats://a:4222".into()],
            ..Default::default()
        };
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        let changed = [
            ConnectRequest {
                urls: vec!["nats://b:4222".into()],
                ..a.clone()
            },
            ConnectRequest {
                engine: Engine::Rabbitmq,
                ..a.clone()
            },
            ConnectRequest {
                management_url: Some("http://a:15672".into()),
                ..a.clone()
            },
            ConnectRequest {
                virtual_host: Some("shop".into()),
                ..a.clone()
            },
            ConnectRequest {
                auth: Auth::Token("t".into()),
                ..a.clone()
            },
            ConnectRequest {
                ca_pem: Some("pem".into()),
                ..a.clone()
            },
            ConnectRequest {
                only_listed_urls: true,
                ..a.clone()
            },
        ];
        for c in changed {
            assert_ne!(a.fingerprint(), c.fingerprint(), "{c:?}");
        }
    }
}
