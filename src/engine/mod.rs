//! The broker abstraction. Controllers speak only the engine-neutral model below: a Broker's
//! connection declares, checks, repairs and deletes Queues and Topics, reads their depth and
//! reports what the broker is. Each engine maps that model onto its broker's own objects (NATS:
//! streams and subjects; RabbitMQ: quorum queues, topic exchanges and policies) and keeps every
//! broker-specific name, client and setting to itself. Engines know nothing of Kubernetes
//! objects: reconcilers turn resources into the plain settings below and answers into status.
//!
//! [`BrokerConnection`] is object-safe, so the [`registry::Registry`] holds one connection per
//! Broker whatever its engine, and dispatch on `spec.engine` happens in exactly one place
//! ([`registry::open`]).

pub mod consumers;
pub mod destinations;
pub mod identities;
pub mod nats;
pub mod rabbitmq;
pub mod registry;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use crate::api::broker::Engine;
pub use consumers::{
    Arrivals, ConsumerDepth, ConsumerSpec, ConsumerState, ConsumerTarget, StartFrom,
};
pub use identities::{Credentials, Issued};

/// Consumers' figures by consumer name.
pub type ConsumerDepths = std::collections::HashMap<String, ConsumerDepth>;

/// A future an engine returns; boxed so that connections can be held as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a broker reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerInfo {
    /// The broker's product name as it reports it (`NATS`, `RabbitMQ`).
    pub product: String,
    /// The server version (`2.15.3`, `3.10.8`).
    pub version: String,
    /// The cluster name, when the broker has one.
    pub cluster: Option<String>,
    /// Servers in the cluster as far as the client can tell (1 for a single server).
    pub servers: usize,
    /// Names of the cluster's nodes, where the broker lists them (RabbitMQ).
    pub nodes: Vec<String>,
    /// What only this engine reports.
    pub facts: EngineFacts,
}

/// Figures that only one engine has, reported in the Broker's status block of that engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum EngineFacts {
    #[default]
    None,
    /// NATS: the JetStream limits of the account in use; -1 is unlimited.
    Nats { limits: AccountLimits },
    /// RabbitMQ: the management API's version and whether the AMQP listener answers.
    RabbitMq {
        management_version: String,
        /// `Ok` when the first AMQP URL answered the protocol handshake, else why not.
        amqp: Result<(), String>,
    },
}

/// Account limits of a broker; -1 is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountLimits {
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
    /// The broker answers but lacks something Conveyor needs (NATS without JetStream).
    #[error("the broker lacks a capability Conveyor needs: {0}")]
    MissingCapability(String),
    /// The broker refused Conveyor's credentials or their permissions.
    #[error("the broker refused the credentials: {0}")]
    Unauthorized(String),
    /// The broker refused or failed a request.
    #[error("broker request failed: {0}")]
    Request(String),
}

impl EngineError {
    /// A fixed string naming the kind of failure, for metric labels and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "broker-unreachable",
            Self::MissingCapability(_) => "broker-capability",
            Self::Unauthorized(_) => "broker-unauthorized",
            Self::Request(_) => "broker-request",
        }
    }
}

/// Whether a destination is a Queue or a Topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DestinationKind {
    /// Point to point: each message goes to exactly one consumer.
    Queue,
    /// Publish/subscribe: every subscription gets every event.
    Topic,
}

impl DestinationKind {
    /// The resource kind's name (`Queue`, `Topic`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queue => "Queue",
            Self::Topic => "Topic",
        }
    }
}

/// Where a destination keeps its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    File,
    Memory,
}

/// What to do when a limit is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    /// Drop the oldest messages to make room.
    Old,
    /// Refuse new messages.
    New,
}

/// A Queue or Topic as Conveyor wants it, in engine-neutral terms. Limits use -1 for
/// "unlimited" and a zero `max_age` for "forever".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationSpec {
    pub kind: DestinationKind,
    /// The name inside the broker.
    pub name: String,
    /// A Topic's declared event types; empty: any type.
    pub event_types: Vec<String>,
    pub max_age: Duration,
    pub max_messages: i64,
    pub max_bytes: i64,
    pub discard: Discard,
    pub replicas: usize,
    pub storage: Storage,
    /// Duplicate detection window asked for; `None`: the engine's default, if it has any.
    pub deduplication_window: Option<Duration>,
    /// Who owns the destination (`Queue shop/orders`); one with another owner, or none, is
    /// never taken over.
    pub owner: String,
    pub description: String,
}

/// What a destination holds. Figures an engine does not have are `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestinationState {
    /// Messages held (for a Topic on RabbitMQ: those no subscription took).
    pub messages: u64,
    pub bytes: Option<u64>,
    /// Consumers (NATS) or bound subscriptions (RabbitMQ Topic) of the destination.
    pub consumers: u64,
    pub first_sequence: Option<u64>,
    pub last_sequence: Option<u64>,
}

/// A destination as one listing of the whole broker shows it. Only destinations that record an
/// owner (those Conveyor created) are listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub kind: DestinationKind,
    pub name: String,
    /// The owner recorded in the broker (`Queue shop/orders`).
    pub owner: String,
    pub state: DestinationState,
    /// A digest of the settings the broker holds for it, figures left out: it changes when
    /// someone changes the destination, not when messages come and go.
    pub settings: u64,
}

/// The kind, namespace and name of the resource that `owner` (`Queue shop/orders`), recorded
/// on a destination of `kind`, names, if it names one of that kind.
pub fn owned_resource(kind: DestinationKind, owner: &str) -> Option<(DestinationKind, &str, &str)> {
    let kind = owner_kind(owner).filter(|k| *k == kind)?;
    let (ns, name) = owner.split_once(' ')?.1.split_once('/')?;
    Some((kind, ns, name))
}

/// The kind a recorded owner string (`Queue shop/orders`) names.
pub fn owner_kind(owner: &str) -> Option<DestinationKind> {
    let kind = owner.split_once(' ')?.0;
    [DestinationKind::Queue, DestinationKind::Topic]
        .into_iter()
        .find(|k| k.as_str() == kind)
}

/// A digest of anything hashable, stable within one process.
pub fn digest(value: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// What `ensure` found and did, with what the destination (or consumer) holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncOutcome<S = DestinationState> {
    /// The destination did not exist and was created.
    Created(S),
    /// The destination matched the spec.
    Unchanged(S),
    /// The destination differed in these settings and was set back to the spec.
    Updated(S, Vec<String>),
    /// The destination differs in these settings; left alone (report-only drift policy, or
    /// settings the broker cannot change in place).
    Drifted(S, Vec<String>),
    /// The destination does not exist and was not created (report-only drift policy).
    Missing,
    /// A destination of that name exists and belongs to someone else.
    Conflict(String),
}

/// Whether `ensure` may change the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncMode {
    /// Create the destination when it does not exist.
    pub create: bool,
    /// Set a differing destination back to the spec.
    pub repair: bool,
}

/// Which destination a deletion or a read is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub kind: DestinationKind,
    pub name: String,
    pub owner: String,
}

/// When a deletion may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteWhen {
    Always,
    /// Only when the destination holds no messages.
    Empty,
}

/// What `delete` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    /// There was no such destination.
    Absent,
    /// The destination belongs to someone else and was left alone.
    NotOwned(String),
    /// `DeleteWhen::Empty` and the destination holds this many messages (or cannot be shown
    /// empty yet); the message says what Conveyor waits for.
    NotEmpty(u64, String),
}

/// One Broker's connection, whatever its engine.
pub trait BrokerConnection: Send + Sync {
    /// The engine behind this connection.
    fn engine(&self) -> Engine;

    /// `Ok` while the broker is connected (or answering), else the reason it is not.
    fn require_connected(&self) -> Result<(), EngineError>;

    /// Checks that the broker answers and reports what it is.
    fn info(&self) -> BoxFuture<'_, Result<BrokerInfo, EngineError>>;

    /// The replica count of every replicated destination, for deciding whether a scale-down of
    /// a managed broker is safe.
    fn replicas(&self) -> BoxFuture<'_, Result<Vec<(String, usize)>, EngineError>>;

    /// Brings the destination in line with `spec` as far as `mode` allows.
    fn ensure<'a>(
        &'a self,
        spec: &'a DestinationSpec,
        mode: SyncMode,
    ) -> BoxFuture<'a, Result<SyncOutcome, EngineError>>;

    /// Deletes the destination if `target.owner` owns it (and, with `DeleteWhen::Empty`, only
    /// once it is empty).
    fn delete<'a>(
        &'a self,
        target: &'a Target,
        when: DeleteWhen,
    ) -> BoxFuture<'a, Result<Deletion, EngineError>>;

    /// What the destination holds, or `None` when it does not exist.
    fn state<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Option<DestinationState>, EngineError>>;

    /// Every destination Conveyor owns in the broker, with its figures, in as few requests as
    /// the broker allows (NATS: the paged stream listing; RabbitMQ: one listing each of the
    /// virtual host's queues, bindings, policies and exchanges).
    fn list(&self) -> BoxFuture<'_, Result<Vec<Listed>, EngineError>>;

    /// The settings of `spec` this engine cannot honour, each naming the field and saying
    /// what happens instead. Pure.
    fn unsupported(&self, spec: &DestinationSpec) -> Vec<String>;

    /// Brings an EventSubscription's consumer in line with `spec` as far as `mode` allows.
    fn ensure_consumer<'a>(
        &'a self,
        spec: &'a ConsumerSpec,
        mode: SyncMode,
    ) -> BoxFuture<'a, Result<SyncOutcome<ConsumerState>, EngineError>>;

    /// Deletes the consumer, and what it keeps in the broker, if `target.owner` owns it.
    fn delete_consumer<'a>(
        &'a self,
        target: &'a ConsumerTarget,
    ) -> BoxFuture<'a, Result<Deletion, EngineError>>;

    /// The settings of a consumer spec this engine cannot honour, each naming the field and
    /// saying what happens instead. Pure.
    fn unsupported_consumer(&self, spec: &ConsumerSpec) -> Vec<String>;

    /// The credentials the subscription's workload should connect with: `previous` (from its
    /// Secret) while they are still this consumer's, else new ones; or why the broker cannot
    /// give it an identity of its own. Pure: nothing is made in the broker yet.
    fn issue_identity(&self, spec: &ConsumerSpec, previous: Option<&Credentials>) -> Issued;

    /// Makes the broker accept `credentials` with exactly the consumer's rights (consume and
    /// acknowledge on its own consumer). `Conflict` when an identity of that name is not
    /// Conveyor's.
    fn ensure_identity<'a>(
        &'a self,
        spec: &'a ConsumerSpec,
        credentials: &'a Credentials,
    ) -> BoxFuture<'a, Result<SyncOutcome<()>, EngineError>>;

    /// Removes the identity of the consumer `consumer`: afterwards its credentials are
    /// refused. False when there was none of Conveyor's.
    fn revoke_identity<'a>(&'a self, consumer: &'a str)
    -> BoxFuture<'a, Result<bool, EngineError>>;

    /// The figures of every consumer reading from `sources` (names in the broker), keyed by
    /// consumer name, in as few requests as the broker allows: NATS lists each stream's
    /// consumers (paged); RabbitMQ lists the virtual host's queues once (figures as fresh as
    /// its statistics interval). A source that does not exist contributes nothing.
    fn consumer_depths<'a>(
        &'a self,
        sources: &'a [String],
    ) -> BoxFuture<'a, Result<ConsumerDepths, EngineError>>;

    /// A cheap, fresh sign of new work in `sources`, asked for the consumers (`consumers`)
    /// whose workloads are at zero replicas.
    fn arrivals<'a>(
        &'a self,
        sources: &'a [String],
        consumers: &'a [String],
    ) -> BoxFuture<'a, Result<Arrivals, EngineError>>;
}
