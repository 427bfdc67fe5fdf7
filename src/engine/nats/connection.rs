//! One shared, reconnecting NATS connection per Broker, used by every reconciler.
//!
//! A connection is created on first use and kept while its settings (URLs, credentials, CA)
//! stay the same; new settings replace it. The client reconnects on its own with exponential
//! backoff (100 ms doubling to 2 s, forever), so nothing here loops. Every change of
//! connection state is sent on a broadcast channel so that the Broker's reconciler runs at once
//! and its `Reachable` condition follows within seconds.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{ConnectOptions, Event};
use futures::TryStreamExt;
use tokio::sync::broadcast;

use crate::engine::{BrokerInfo, Engine, EngineError, Limits};

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
    Creds(String),
}

/// Everything a connection depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectSpec {
    pub urls: Vec<String>,
    pub auth: Auth,
    /// PEM of the certificate authority that signed the servers' certificates.
    pub ca_pem: Option<String>,
    /// Connect only to `urls`, never to servers the broker advertises (its cluster peers): a
    /// broker could otherwise steer the operator, with these credentials, past the allow-list.
    pub only_listed_urls: bool,
}

impl ConnectSpec {
    fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

/// The reconnect delay after `attempts` failed attempts: 100 ms doubling to 2 s.
pub fn reconnect_delay(attempts: usize) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempts.min(5))).min(Duration::from_secs(2))
}

/// A live connection to one broker.
pub struct Connection {
    client: async_nats::Client,
    fingerprint: u64,
    last_error: Arc<Mutex<Option<String>>>,
    /// The CA file handed to the client; removed when the connection goes.
    ca_file: Option<PathBuf>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(path) = &self.ca_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Connection {
    /// The underlying client, for engine operations.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn unreachable(&self) -> EngineError {
        let why = self.last_error.lock().ok().and_then(|e| e.clone());
        EngineError::Unreachable(why.unwrap_or_else(|| "not connected yet".into()))
    }

    /// `Ok` while the client is connected, else the reason it is not.
    pub fn require_connected(&self) -> Result<(), EngineError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            _ => Err(self.unreachable()),
        }
    }
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(2);

impl Engine for Connection {
    async fn info(&self) -> Result<BrokerInfo, EngineError> {
        self.require_connected()?;
        if !self.client.server_info().jetstream {
            return Err(EngineError::JetStreamDisabled(
                "the server runs without JetStream (start it with -js)".into(),
            ));
        }
        let js = async_nats::jetstream::new(self.client.clone());
        let account = match tokio::time::timeout(REQUEST_TIMEOUT, js.query_account()).await {
            Err(_) => {
                return Err(EngineError::Unreachable(
                    "JetStream did not answer within 3 s".into(),
                ));
            }
            Ok(Err(e)) => {
                let msg = e.to_string();
                return Err(
                    if msg.contains("not enabled")
                        || msg.contains("503")
                        || msg.contains("no responders")
                    {
                        EngineError::JetStreamDisabled(msg)
                    } else {
                        EngineError::Request(msg)
                    },
                );
            }
            Ok(Ok(a)) => a,
        };
        let server = self.client.server_info();
        let mut urls = server.connect_urls.clone();
        urls.sort();
        urls.dedup();
        let l = &account.limits;
        Ok(BrokerInfo {
            version: server.version.clone(),
            cluster: server.cluster.clone().filter(|c| !c.is_empty()),
            servers: urls.len().max(1),
            limits: Limits {
                max_memory: l.max_memory.unwrap_or(-1),
                max_storage: l.max_storage.unwrap_or(-1),
                max_streams: l.max_streams.unwrap_or(-1),
                max_consumers: l.max_consumers.unwrap_or(-1),
            },
        })
    }

    async fn stream_replicas(&self) -> Result<Vec<(String, usize)>, EngineError> {
        self.require_connected()?;
        let js = async_nats::jetstream::new(self.client.clone());
        let list = async {
            js.streams()
                .map_ok(|info| (info.config.name.clone(), info.config.num_replicas))
                .try_collect::<Vec<_>>()
                .await
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, list).await {
            Err(_) => Err(EngineError::Unreachable(
                "listing streams took longer than 3 s".into(),
            )),
            Ok(Err(e)) => Err(EngineError::Request(e.to_string())),
            Ok(Ok(v)) => Ok(v),
        }
    }
}

/// The registry of connections, one per Broker.
pub struct Connections {
    inner: Mutex<HashMap<BrokerKey, Arc<Connection>>>,
    changes: broadcast::Sender<BrokerKey>,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            changes: broadcast::channel(1024).0,
        }
    }
}

impl Connections {
    /// Receives the key of a Broker whenever its connection state changes.
    pub fn subscribe(&self) -> broadcast::Receiver<BrokerKey> {
        self.changes.subscribe()
    }

    /// The connection of `key` for `spec`: the existing one when its settings match, else a
    /// new one (the old one closes when its last user drops it).
    pub async fn connect(
        &self,
        key: &BrokerKey,
        spec: &ConnectSpec,
    ) -> Result<Arc<Connection>, EngineError> {
        let fingerprint = spec.fingerprint();
        if let Some(c) = self
            .lock()
            .get(key)
            .filter(|c| c.fingerprint == fingerprint)
        {
            return Ok(c.clone());
        }
        let conn = Arc::new(open(key, spec, fingerprint, self.changes.clone()).await?);
        self.lock().insert(key.clone(), conn.clone());
        // Give a fresh connection a moment, so that a reachable broker is not first reported
        // unreachable; an unreachable one is reported after at most this wait.
        let deadline = tokio::time::Instant::now() + FIRST_CONNECT_WAIT;
        while conn.client.connection_state() != State::Connected
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(conn)
    }

    /// Forgets the connection of a Broker that is gone.
    pub fn remove(&self, key: &BrokerKey) {
        self.lock().remove(key);
    }

    /// Keeps only the connections whose Broker `keep` says still exists.
    pub fn retain(&self, keep: impl Fn(&BrokerKey) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }

    /// The current connection of a Broker, if any.
    pub fn get(&self, key: &BrokerKey) -> Option<Arc<Connection>> {
        self.lock().get(key).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BrokerKey, Arc<Connection>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn open(
    key: &BrokerKey,
    spec: &ConnectSpec,
    fingerprint: u64,
    changes: broadcast::Sender<BrokerKey>,
) -> Result<Connection, EngineError> {
    let last_error: Arc<Mutex<Option<String>>> = Arc::default();
    let (errors, event_key) = (last_error.clone(), key.clone());
    let mut options = ConnectOptions::new()
        .name(format!("conveyor ({}/{})", key.0, key.1))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(3))
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let (errors, changes, key) = (errors.clone(), changes.clone(), event_key.clone());
            async move {
                let note = match &event {
                    Event::Connected => {
                        *errors.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        true
                    }
                    Event::Disconnected | Event::Closed => true,
                    Event::ClientError(e) => {
                        *errors.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                        false
                    }
                    Event::ServerError(e) => {
                        *errors.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                        true
                    }
                    _ => false,
                };
                tracing::debug!(broker = %format!("{}/{}", key.0, key.1), %event, "broker connection event");
                if note {
                    let _ = changes.send(key);
                }
            }
        });
    options = match &spec.auth {
        Auth::None => options,
        Auth::UserPassword(u, p) => options.user_and_password(u.clone(), p.clone()),
        Auth::Token(t) => options.token(t.clone()),
        Auth::Creds(c) => options
            .credentials(c)
            .map_err(|e| EngineError::Request(format!("credentials: {e}")))?,
    };
    let ca_file = match &spec.ca_pem {
        Some(pem) => {
            let path = std::env::temp_dir().join(format!(
                "conveyor-ca-{}-{}-{fingerprint:x}.pem",
                key.0, key.1
            ));
            std::fs::write(&path, pem)
                .map_err(|e| EngineError::Request(format!("writing the CA: {e}")))?;
            options = options.add_root_certificates(path.clone());
            Some(path)
        }
        None => None,
    };
    if spec.only_listed_urls {
        options = options.ignore_discovered_servers();
    }
    if spec.urls.iter().any(|u| u.starts_with("tls://")) {
        options = options.require_tls(true);
    }
    let client = options
        .connect(spec.urls.clone())
        .await
        .map_err(|e| EngineError::Unreachable(e.to_string()))?;
    Ok(Connection {
        client,
        fingerprint,
        last_error,
        ca_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_backs_off_to_two_seconds() {
        assert_eq!(reconnect_delay(0), Duration::from_millis(100));
        assert_eq!(reconnect_delay(1), Duration::from_millis(200));
        assert_eq!(reconnect_delay(4), Duration::from_millis(1600));
        assert_eq!(reconnect_delay(5), Duration::from_secs(2));
        assert_eq!(reconnect_delay(500), Duration::from_secs(2));
    }

    #[test]
    fn fingerprint_follows_every_setting() {
        let a = ConnectSpec {
            urls: vec!["nats://a:4222".into()],
            ..Default::default()
        };
        let mut b = a.clone();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.auth = Auth::Token("t".into());
        assert_ne!(a.fingerprint(), b.fingerprint());
        let changed = [
            ConnectSpec {
                urls: vec!["nats://b:4222".into()],
                ..a.clone()
            },
            ConnectSpec {
                ca_pem: Some("pem".into()),
                ..a.clone()
            },
            ConnectSpec {
                only_listed_urls: true,
                ..a.clone()
            },
        ];
        for c in changed {
            assert_ne!(a.fingerprint(), c.fingerprint(), "{c:?}");
        }
    }
}
