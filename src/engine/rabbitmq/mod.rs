//! The RabbitMQ engine: Queues as quorum queues, Topics as topic exchanges (see `topology`),
//! administered through the management HTTP API (`management`); the AMQP listener is checked
//! with a handshake (`amqp`).
//!
//! The management API is plain request/response, so a connection here is a client plus a
//! watcher task that asks `/api/overview` every few seconds and tells the registry when the
//! answer flips, so that `Reachable` follows the broker as it does for NATS.

pub mod amqp;
pub mod consumers;
pub mod depth;
pub mod destinations;
pub mod identities;
pub mod management;
pub mod topology;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use management::{ManagementClient, ManagementError};

use super::registry::{Auth, ConnectRequest, Notifier};
use super::{
    Arrivals, BoxFuture, BrokerConnection, BrokerInfo, ConsumerDepths, ConsumerSpec, ConsumerState,
    ConsumerTarget, Credentials, DeleteWhen, Deletion, DestinationSpec, DestinationState, Engine,
    EngineError, EngineFacts, Issued, Listed, SyncMode, SyncOutcome, Target,
};

/// How often the watcher asks whether the management API answers.
const WATCH_PERIOD: Duration = Duration::from_secs(3);
/// How long an AMQP handshake may take.
const AMQP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a management request may take. Generous: RabbitMQ 3.10 leaves a quorum queue
/// unusable when its declare is cut off by the client, and a declare on a busy node can take
/// several seconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the watcher's health check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// One Broker's RabbitMQ: the management client, the virtual host, and what the watcher saw.
pub struct RabbitConnection {
    api: ManagementClient,
    vhost: String,
    amqp_url: Option<String>,
    ca_pem: Option<String>,
    /// `Ok` while the management API answers, else why it does not.
    health: Arc<Mutex<Result<(), String>>>,
    watcher: tokio::task::JoinHandle<()>,
    /// When Conveyor blocked publishing to a draining `DeleteIfEmpty` queue, by queue name.
    blocked: Mutex<HashMap<String, Instant>>,
}

impl Drop for RabbitConnection {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl From<ManagementError> for EngineError {
    fn from(e: ManagementError) -> Self {
        match e {
            ManagementError::Unreachable(m) => Self::Unreachable(m),
            ManagementError::Unauthorized(m) => Self::Unauthorized(m),
            other => Self::Request(other.to_string()),
        }
    }
}

impl RabbitConnection {
    /// A client for `req`; the first health check runs before this returns.
    pub async fn open(req: &ConnectRequest, notifier: Notifier) -> Result<Self, EngineError> {
        let url = req.management_url.as_deref().ok_or_else(|| {
            EngineError::Request("a RabbitMQ Broker needs a management API URL".into())
        })?;
        let (user, password) = match &req.auth {
            Auth::UserPassword(u, p) => (u.as_str(), p.as_str()),
            Auth::None => ("guest", "guest"),
            _ => {
                return Err(EngineError::Unauthorized(
                    "RabbitMQ takes a user and a password".into(),
                ));
            }
        };
        let api = ManagementClient::new(url, user, password, req.ca_pem.as_deref())?
            .with_timeout(REQUEST_TIMEOUT);
        let checker = api.clone().with_timeout(CHECK_TIMEOUT);
        let health = Arc::new(Mutex::new(check(&checker).await));
        let watcher = tokio::spawn(watch(checker, health.clone(), notifier));
        Ok(Self {
            api,
            vhost: req.virtual_host.clone().unwrap_or_else(|| "/".into()),
            amqp_url: req.urls.first().cloned(),
            ca_pem: req.ca_pem.clone(),
            health,
            watcher,
            blocked: Mutex::default(),
        })
    }

    async fn broker_info(&self) -> Result<BrokerInfo, EngineError> {
        let overview = self.api.overview().await?;
        let nodes = self.api.nodes().await?;
        let amqp = match &self.amqp_url {
            Some(url) => amqp::probe(url, self.ca_pem.as_deref(), AMQP_TIMEOUT)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Err("no AMQP URL".into()),
        };
        let running: Vec<String> = nodes
            .iter()
            .filter(|n| n.running)
            .map(|n| n.name.clone())
            .collect();
        Ok(BrokerInfo {
            product: overview
                .product_name
                .clone()
                .unwrap_or_else(|| "RabbitMQ".into()),
            version: overview.rabbitmq_version.clone().unwrap_or_default(),
            cluster: overview.cluster_name.clone(),
            servers: running.len().max(1),
            nodes: nodes.into_iter().map(|n| n.name).collect(),
            facts: EngineFacts::RabbitMq {
                management_version: overview.management_version.unwrap_or_default(),
                amqp,
            },
        })
    }

    /// Every quorum queue and its number of members.
    async fn quorum_members(&self) -> Result<Vec<(String, usize)>, EngineError> {
        let queues = self.api.queues(&self.vhost).await?;
        Ok(queues
            .into_iter()
            .filter(|q| q.queue_type.as_deref() == Some("quorum"))
            .map(|q| {
                let members = q.members.as_ref().map_or(1, Vec::len);
                (q.name, members)
            })
            .collect())
    }

    /// Remembers (or recalls) when publishing to `queue` was blocked.
    fn blocked_since(&self, queue: &str) -> Instant {
        let mut map = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(queue.to_string()).or_insert_with(Instant::now)
    }

    fn forget_block(&self, queue: &str) {
        self.blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(queue);
    }
}

/// Whether the management API answers.
async fn check(api: &ManagementClient) -> Result<(), String> {
    api.overview().await.map(|_| ()).map_err(|e| e.to_string())
}

async fn watch(api: ManagementClient, health: Arc<Mutex<Result<(), String>>>, notifier: Notifier) {
    loop {
        tokio::time::sleep(WATCH_PERIOD).await;
        let now = check(&api).await;
        let flipped = {
            let mut h = health.lock().unwrap_or_else(|e| e.into_inner());
            let flipped = h.is_ok() != now.is_ok();
            *h = now;
            flipped
        };
        if flipped {
            tracing::debug!(broker = %notifier.broker(), "RabbitMQ management API state changed");
            notifier.notify();
        }
    }
}

impl BrokerConnection for RabbitConnection {
    fn engine(&self) -> Engine {
        Engine::Rabbitmq
    }

    fn require_connected(&self) -> Result<(), EngineError> {
        let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.clone().map_err(EngineError::Unreachable)
    }

    fn info(&self) -> BoxFuture<'_, Result<BrokerInfo, EngineError>> {
        Box::pin(self.broker_info())
    }

    fn replicas(&self) -> BoxFuture<'_, Result<Vec<(String, usize)>, EngineError>> {
        Box::pin(self.quorum_members())
    }

    fn ensure<'a>(
        &'a self,
        spec: &'a DestinationSpec,
        mode: SyncMode,
    ) -> BoxFuture<'a, Result<SyncOutcome, EngineError>> {
        Box::pin(self.ensure_destination(spec, mode))
    }

    fn delete<'a>(
        &'a self,
        target: &'a Target,
        when: DeleteWhen,
    ) -> BoxFuture<'a, Result<Deletion, EngineError>> {
        Box::pin(self.delete_destination(target, when))
    }

    fn state<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Option<DestinationState>, EngineError>> {
        Box::pin(self.destination_state(target))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Listed>, EngineError>> {
        Box::pin(self.list_destinations())
    }

    fn unsupported(&self, spec: &DestinationSpec) -> Vec<String> {
        topology::unsupported(spec)
    }

    fn ensure_consumer<'a>(
        &'a self,
        spec: &'a ConsumerSpec,
        mode: SyncMode,
    ) -> BoxFuture<'a, Result<SyncOutcome<ConsumerState>, EngineError>> {
        Box::pin(RabbitConnection::ensure_consumer(self, spec, mode))
    }

    fn delete_consumer<'a>(
        &'a self,
        target: &'a ConsumerTarget,
    ) -> BoxFuture<'a, Result<Deletion, EngineError>> {
        Box::pin(RabbitConnection::delete_consumer(self, target))
    }

    fn unsupported_consumer(&self, spec: &ConsumerSpec) -> Vec<String> {
        consumers::unsupported(spec)
    }

    fn issue_identity(&self, spec: &ConsumerSpec, previous: Option<&Credentials>) -> Issued {
        identities::issue(spec, &self.vhost, previous)
    }

    fn ensure_identity<'a>(
        &'a self,
        spec: &'a ConsumerSpec,
        credentials: &'a Credentials,
    ) -> BoxFuture<'a, Result<SyncOutcome<()>, EngineError>> {
        Box::pin(RabbitConnection::ensure_identity(self, spec, credentials))
    }

    fn revoke_identity<'a>(
        &'a self,
        consumer: &'a str,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(RabbitConnection::revoke_identity(self, consumer))
    }

    fn consumer_depths<'a>(
        &'a self,
        _sources: &'a [String],
    ) -> BoxFuture<'a, Result<ConsumerDepths, EngineError>> {
        Box::pin(RabbitConnection::consumer_depths(self))
    }

    fn arrivals<'a>(
        &'a self,
        _sources: &'a [String],
        _consumers: &'a [String],
    ) -> BoxFuture<'a, Result<Arrivals, EngineError>> {
        Box::pin(RabbitConnection::arrivals(self))
    }
}
