//! The engine-specific half of the managed-broker pipeline, as a pure strategy: which Secret a
//! broker keeps (and how to fill it the first time), and, from the spec and that Secret, every
//! Kubernetes object of the broker and how Conveyor connects to it. The controller does the IO
//! (reading and creating Secrets, deciding the replica count, applying, probing) the same way
//! for every engine; a new engine adds a module beside `nats` and an arm in [`for_engine`].

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::api::broker::{Engine, ManagedBroker};
use crate::engine::registry::ConnectRequest;

/// What a managed broker's objects depend on.
#[derive(Clone, Debug)]
pub struct ManagedInput<'a> {
    pub broker: &'a str,
    pub namespace: &'a str,
    pub spec: &'a ManagedBroker,
    /// Replicas to run; may differ from the spec while a scale-down is refused.
    pub replicas: i32,
    /// Namespaces whose pods may reach the client port, besides the Broker's own; `*` for all.
    pub client_namespaces: Vec<String>,
    pub owner: OwnerReference,
    /// The broker's Secret (see [`ManagedEngine::secret_name`]) as text, when it has one.
    pub secret: Option<&'a BTreeMap<String, String>>,
    /// The CA of the broker's TLS certificate, when it serves TLS.
    pub ca_pem: Option<String>,
}

/// The pod identity a broker's servers need to ask the API server about their peers.
#[derive(Clone, Debug)]
pub struct PeerAccess {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
}

/// Every object of a managed broker, in the order they are applied (the StatefulSet last).
#[derive(Clone, Debug)]
pub struct ManagedObjects {
    pub config_map: ConfigMap,
    pub services: Vec<Service>,
    pub disruption_budget: PodDisruptionBudget,
    pub network_policy: NetworkPolicy,
    pub peer_access: Option<PeerAccess>,
    pub statefulset: StatefulSet,
}

/// What the pure half decided for one pass.
#[derive(Clone, Debug)]
pub struct ManagedPlan {
    pub objects: ManagedObjects,
    /// How Conveyor connects to the servers.
    pub connect: ConnectRequest,
    /// The URL clients in the cluster use (`status.endpoint`).
    pub endpoint: String,
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The broker's Secret lacks or has a broken key; new keys would lock out existing data.
    #[error("{0}")]
    Credentials(String),
    /// An object could not be built.
    #[error("building {what}: {source}")]
    Build {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// One engine's managed-broker strategy.
pub trait ManagedEngine: Sync {
    /// The StatefulSet of the servers.
    fn statefulset_name(&self, broker: &str) -> String;
    /// The Secret that holds what the broker's data depends on (keys, cookies, passwords).
    fn secret_name(&self, broker: &str) -> String;
    /// Whether a broker of this spec keeps a Secret.
    fn keeps_secret(&self, spec: &ManagedBroker) -> bool;
    /// The contents of a new Secret for `broker`, issued at `iat` (Unix seconds).
    fn new_secret(&self, broker: &str, iat: i64) -> Result<BTreeMap<String, String>, PlanError>;
    /// The TLS Secret whose `ca.crt` Conveyor trusts, when the spec asks for TLS.
    fn tls_secret<'a>(&self, spec: &'a ManagedBroker) -> Option<&'a str>;
    /// Every object and the connection, from the input.
    fn plan(&self, input: &ManagedInput) -> Result<ManagedPlan, PlanError>;
}

/// The strategy of `engine`.
pub fn for_engine(engine: Engine) -> &'static dyn ManagedEngine {
    match engine {
        Engine::Nats => &super::nats::managed::NatsManaged,
        Engine::Rabbitmq => &super::rabbitmq::RabbitmqManaged,
    }
}

/// Serialization failures of builders, named.
pub fn built<T>(what: &'static str, r: Result<T, serde_json::Error>) -> Result<T, PlanError> {
    r.map_err(|source| PlanError::Build { what, source })
}
