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

/// Where a stream keeps its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    File,
    Memory,
}

/// How a stream retains messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Every consumer sees every message (a Topic).
    Limits,
    /// A message is removed once one consumer acknowledged it (a Queue).
    WorkQueue,
}

/// What to do when a stream limit is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    Old,
    New,
}

/// A stream as Conveyor wants it, in broker terms. Limits use -1 for "unlimited" and a zero
/// `max_age` for "forever".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: String,
    pub subjects: Vec<String>,
    pub retention: Retention,
    pub max_age: std::time::Duration,
    pub max_messages: i64,
    pub max_bytes: i64,
    pub discard: Discard,
    pub replicas: usize,
    pub storage: Storage,
    pub duplicate_window: std::time::Duration,
    /// Who owns the stream (`Queue shop/orders uid=...`); a stream with another owner, or none,
    /// is never taken over.
    pub owner: String,
    pub description: String,
}

/// The contents of a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamState {
    pub messages: u64,
    pub bytes: u64,
    pub consumers: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
}

/// What `ensure_stream` found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamSync {
    /// The stream did not exist and was created.
    Created(StreamState),
    /// The stream matched the spec.
    Unchanged(StreamState),
    /// The stream differed in these settings and was set back to the spec.
    Updated(StreamState, Vec<String>),
    /// The stream differs in these settings; left alone (report-only drift policy).
    Drifted(StreamState, Vec<String>),
    /// The stream does not exist and was not created (report-only drift policy).
    Missing,
    /// A stream of that name exists and belongs to someone else.
    Conflict(String),
}

/// What `delete_stream` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    /// There was no such stream.
    Absent,
    /// The stream belongs to someone else and was left alone.
    NotOwned(String),
}

/// Whether `ensure_stream` may change the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncMode {
    /// Create the stream when it does not exist.
    pub create: bool,
    /// Set a differing stream back to the spec.
    pub repair: bool,
}

/// Streams: declare, keep, read, delete.
pub trait Streams: Send + Sync {
    /// Brings the stream in line with `spec` as far as `mode` allows.
    fn ensure_stream(
        &self,
        spec: &StreamSpec,
        mode: SyncMode,
    ) -> impl Future<Output = Result<StreamSync, EngineError>> + Send;

    /// Deletes the stream if `owner` owns it.
    fn delete_stream(
        &self,
        name: &str,
        owner: &str,
    ) -> impl Future<Output = Result<Deletion, EngineError>> + Send;

    /// The stream's contents, or `None` when it does not exist.
    fn stream_state(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<StreamState>, EngineError>> + Send;
}
