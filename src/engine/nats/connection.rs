//! The NATS engine's connection to one Broker: a reconnecting `async-nats` client.
//!
//! The client reconnects on its own with exponential backoff (100 ms doubling to 2 s, forever),
//! so nothing here loops. Every change of connection state goes to the registry's notifier, so
//! that the Broker's reconciler runs at once and its `Reachable` condition follows within
//! seconds.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{ConnectOptions, Event};
use futures::TryStreamExt;

use crate::engine::registry::{Auth, ConnectRequest, Notifier};
use crate::engine::{AccountLimits, BrokerInfo, EngineError, EngineFacts};

/// The reconnect delay after `attempts` failed attempts: 100 ms doubling to 2 s.
pub fn reconnect_delay(attempts: usize) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempts.min(5))).min(Duration::from_secs(2))
}

/// A live connection to one broker.
pub struct Connection {
    client: async_nats::Client,
    last_error: Arc<Mutex<Option<String>>>,
    /// The CA file handed to the client; removed when the connection goes.
    ca_file: Option<PathBuf>,
    /// The task that keeps dead letters, once a subscription asked for them; it stops with
    /// the connection.
    dead_letters: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The keys for subscriptions' identities (managed brokers).
    pub(super) issuer: Option<super::identities::Issuer>,
    pub(super) urls: Vec<String>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(path) = &self.ca_file {
            let _ = std::fs::remove_file(path);
        }
        if let Some(task) = self.dead_letters.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
}

impl Connection {
    /// The underlying client, for engine operations.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// A short-lived client of the system account on the same servers, for pushing account
    /// JWTs.
    pub(super) async fn system_client(
        &self,
        creds: &str,
    ) -> Result<async_nats::Client, EngineError> {
        let mut options = ConnectOptions::with_credentials(creds)
            .map_err(|e| EngineError::Request(format!("system credentials: {e}")))?
            .connection_timeout(Duration::from_secs(3))
            .name("conveyor (system account)");
        if let Some(path) = &self.ca_file {
            options = options.add_root_certificates(path.clone());
        }
        if self.urls.iter().any(|u| u.starts_with("tls://")) {
            options = options.require_tls(true);
        }
        options
            .connect(self.urls.clone())
            .await
            .map_err(|e| EngineError::Unreachable(e.to_string()))
    }

    /// Starts the dead-letter task with `start` unless it runs.
    pub(super) fn start_dead_letters(
        &self,
        start: impl FnOnce(async_nats::Client) -> tokio::task::JoinHandle<()>,
    ) {
        let mut task = self.dead_letters.lock().unwrap_or_else(|e| e.into_inner());
        if task.is_none() {
            *task = Some(start(self.client.clone()));
        }
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

impl Connection {
    pub(super) async fn broker_info(&self) -> Result<BrokerInfo, EngineError> {
        self.require_connected()?;
        if !self.client.server_info().jetstream {
            return Err(EngineError::MissingCapability(
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
                        EngineError::MissingCapability(msg)
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
            product: "NATS".into(),
            version: server.version.clone(),
            cluster: server.cluster.clone().filter(|c| !c.is_empty()),
            servers: urls.len().max(1),
            nodes: Vec::new(),
            facts: EngineFacts::Nats {
                limits: AccountLimits {
                    max_memory: l.max_memory.unwrap_or(-1),
                    max_storage: l.max_storage.unwrap_or(-1),
                    max_streams: l.max_streams.unwrap_or(-1),
                    max_consumers: l.max_consumers.unwrap_or(-1),
                },
            },
        })
    }

    pub(super) async fn stream_replicas(&self) -> Result<Vec<(String, usize)>, EngineError> {
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

/// Opens a connection for `spec`, waiting a moment for the first connect so that a reachable
/// broker is not first reported unreachable; an unreachable one is reported after at most
/// that wait, and the client keeps trying in the background.
pub async fn open(spec: &ConnectRequest, notifier: Notifier) -> Result<Connection, EngineError> {
    let conn = connect(spec, notifier).await?;
    let deadline = tokio::time::Instant::now() + FIRST_CONNECT_WAIT;
    while conn.client.connection_state() != State::Connected
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(conn)
}

async fn connect(spec: &ConnectRequest, notifier: Notifier) -> Result<Connection, EngineError> {
    let last_error: Arc<Mutex<Option<String>>> = Arc::default();
    let errors = last_error.clone();
    let broker = notifier.broker();
    let mut options = ConnectOptions::new()
        .name(format!("conveyor ({broker})"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(3))
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let (errors, notifier) = (errors.clone(), notifier.clone());
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
                tracing::debug!(broker = %notifier.broker(), %event, "broker connection event");
                if note {
                    notifier.notify();
                }
            }
        });
    options = match &spec.auth {
        Auth::None => options,
        Auth::UserPassword(u, p) => options.user_and_password(u.clone(), p.clone()),
        Auth::Token(t) => options.token(t.clone()),
        Auth::CredentialsFile(c) => options
            .credentials(c)
            .map_err(|e| EngineError::Request(format!("credentials: {e}")))?,
    };
    let ca_file = match &spec.ca_pem {
        Some(pem) => {
            let path = std::env::temp_dir().join(format!(
                "conveyor-ca-{}-{:x}.pem",
                broker.replace('/', "-"),
                spec.fingerprint()
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
        last_error,
        ca_file,
        dead_letters: Mutex::new(None),
        issuer: spec.issuer.clone(),
        urls: spec.urls.clone(),
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
}
