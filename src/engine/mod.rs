//! The broker abstraction. An engine talks to one kind of broker through its own protocol;
//! NATS JetStream is the first. Engines know nothing of Kubernetes objects: reconcilers turn
//! resources into the plain settings below and engine answers into status.

pub mod destinations;
pub mod nats;

use std::future::Future;

/// What a broker reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerInfo {
    /// The server version (`2.15.3`).
    pub version: String,
    /// The cluster name, when the server is clustered.
    pub cluster: Option<String>,
    /// Servers in the cluster as far as the client can tell (1 for a single server).
    pub servers: usize,
    /// JetStream limits of the account in use; -1 is unlimited.
    pub limits: Limits,
}

/// JetStream account limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_memory: i64,
    pub max_storage: i64,
    pub max_streams: i64,
    pub max_consumers: i64,
}

/// Why a broker request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The broker cannot be reached (or has not been reached yet).
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    /// The broker answers but JetStream is not enabled for the account.
    #[error("JetStream is not enabled: {0}")]
    JetStreamDisabled(String),
    /// The broker refused or failed a request.
    #[error("broker request failed: {0}")]
    Request(String),
}

/// The operations every engine provides.
pub trait Engine: Send + Sync {
    /// Checks that the broker answers and reports what it is.
    fn info(&self) -> impl Future<Output = Result<BrokerInfo, EngineError>> + Send;

    /// The replica count of every stream, for deciding whether a scale-down is safe.
    fn stream_replicas(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, usize)>, EngineError>> + Send;
}
