//! The `Broker` kind: a message broker that Queues and Topics live in, either run by Conveyor
//! (`managed`) or one that exists already (`external`).

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Conditions, SecretReference};

/// The broker software.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// NATS with JetStream.
    #[default]
    Nats,
    /// RabbitMQ with quorum queues, administered through its management API.
    Rabbitmq,
}

impl Engine {
    /// The name users know the broker by.
    pub fn product(self) -> &'static str {
        match self {
            Self::Nats => "NATS",
            Self::Rabbitmq => "RabbitMQ",
        }
    }
}

/// A message broker that Queues and Topics live in.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "conveyor.dev",
    version = "v1alpha1",
    kind = "Broker",
    namespaced,
    status = "BrokerStatus",
    shortname = "brk",
    category = "conveyor",
    printcolumn(name = "Engine", type_ = "string", json_path = ".spec.engine"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.serverVersion"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[kube(
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 40").message("a Broker's name must be at most 40 lowercase letters, digits and '-', starting with a letter: it prefixes the names of its StatefulSet, Services and pods")
)]
#[x_kube(
    validation = Rule::new("has(self.managed) != has(self.external)").message("set exactly one of spec.managed (Conveyor runs the broker) or spec.external (connect to a broker that exists already)"),
    validation = Rule::new("has(self.managed) == has(oldSelf.managed)").message("a Broker cannot switch between managed and external: create a new Broker instead"),
    validation = Rule::new("self.engine == 'nats' || !has(self.managed) || !has(self.managed.nats)").message("spec.managed.nats applies only to engine nats"),
    validation = Rule::new("!has(self.external) || (self.engine == 'nats' ? self.external.urls.all(u, u.startsWith('nats://') || u.startsWith('tls://')) : self.external.urls.all(u, u.startsWith('amqp://') || u.startsWith('amqps://')))").message("spec.external.urls must be nats:// or tls:// URLs for engine nats, amqp:// or amqps:// URLs for engine rabbitmq"),
    validation = Rule::new("!has(self.external) || self.engine != 'rabbitmq' || has(self.external.rabbitmq)").message("engine rabbitmq needs spec.external.rabbitmq.managementUrl: Conveyor declares queues and exchanges through the management API"),
    validation = Rule::new("!has(self.external) || self.engine == 'rabbitmq' || !has(self.external.rabbitmq)").message("spec.external.rabbitmq applies only to engine rabbitmq")
)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSpec {
    /// The broker software: `nats` (NATS JetStream) or `rabbitmq` (RabbitMQ 3.10 or newer).
    /// Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.engine is immutable: create a new Broker to change engine"))]
    pub engine: Engine,
    /// Conveyor runs the broker: a StatefulSet of servers with their Services, configuration,
    /// credentials and volumes. Exactly one of `managed` and `external` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedBroker>,
    /// A broker that exists already; Conveyor connects to it. Exactly one of `managed` and
    /// `external` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalBroker>,
    /// Namespaces, besides the Broker's own, whose Queues and Topics may use this Broker.
    /// `*` allows every namespace. Empty (the default): only the Broker's own namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub allowed_namespaces: Vec<String>,
}

/// A broker that Conveyor runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedBroker {
    /// Number of broker servers: 1, or an odd number up to 7 so that the cluster keeps a quorum.
    #[serde(default = "default_broker_replicas")]
    #[schemars(range(min = 1, max = 7))]
    #[x_kube(validation = Rule::new("self % 2 == 1").message("spec.managed.replicas must be odd (1, 3, 5 or 7) so that the cluster keeps a quorum"))]
    pub replicas: i32,
    /// Version of the broker server (`2.15.3` for NATS, `4.1.4` for RabbitMQ). Sets the
    /// image tag unless `image` is given. Defaults to the version this release of Conveyor is
    /// tested with for the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+$"))]
    pub version: Option<String>,
    /// Container image of the broker server; overrides the image derived from `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// The volumes that hold the broker's data.
    #[serde(default)]
    pub storage: BrokerStorage,
    /// Compute resources of each broker server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// TLS for client connections (NATS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ManagedTls>,
    /// Scale down even when Conveyor cannot verify that no stream would lose replicas (for
    /// example because the broker is unreachable). Streams with more replicas than the new size
    /// lose their quorum.
    #[serde(default)]
    pub allow_unsafe_scale_down: bool,
    /// Settings only NATS has. Only with engine `nats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<ManagedNats>,
}

/// Settings of a managed NATS broker that no other engine has.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedNats {
    /// How clients authenticate. `Jwt` (the default): NATS decentralized authentication; Conveyor
    /// keeps the operator and account keys in a Secret and mints a user per client. `None`: no
    /// authentication (development only).
    #[serde(default)]
    pub authentication: Authentication,
    /// Largest message the servers accept, in bytes (default 1048576, at most 67108864).
    #[serde(default = "default_max_payload")]
    #[schemars(range(min = 1024, max = 67108864))]
    pub max_payload: i64,
}

impl Default for ManagedNats {
    fn default() -> Self {
        Self {
            authentication: Authentication::Jwt,
            max_payload: default_max_payload(),
        }
    }
}

fn default_max_payload() -> i64 {
    1_048_576
}

/// How clients of a managed broker authenticate.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Authentication {
    /// NATS decentralized authentication with JWTs. The default.
    #[default]
    Jwt,
    /// No authentication: anyone who reaches the client port may do anything. Development only.
    None,
}

/// TLS for the client port of a managed broker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedTls {
    /// Secret in the Broker's namespace with `tls.crt`, `tls.key` and `ca.crt` (the layout
    /// cert-manager writes). The certificate must name the client Service `<broker>-nats`.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

fn default_broker_replicas() -> i32 {
    3
}

/// The persistent volumes of a managed broker.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName)").message("spec.managed.storage.storageClassName cannot be added or removed after creation"))]
#[serde(rename_all = "camelCase")]
pub struct BrokerStorage {
    /// Size of each server's volume (`10Gi`). Immutable: a StatefulSet's volume claims cannot
    /// be resized in place.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.managed.storage.size is immutable: the StatefulSet's volume claims cannot be resized in place"))]
    pub size: String,
    /// StorageClass of the volumes; the cluster's default when left out. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.managed.storage.storageClassName is immutable"))]
    pub storage_class_name: Option<String>,
    /// What happens to the volumes when the Broker is deleted: `Retain` (the default) keeps them
    /// and their messages, `Delete` removes them.
    #[serde(default)]
    pub deletion_policy: VolumeDeletionPolicy,
}

impl Default for BrokerStorage {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            deletion_policy: VolumeDeletionPolicy::Retain,
        }
    }
}

fn default_storage_size() -> String {
    "10Gi".into()
}

/// What happens to a managed broker's volumes when the Broker is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VolumeDeletionPolicy {
    /// Keep the volumes and the messages they hold. The default.
    #[default]
    Retain,
    /// Delete the volumes with the Broker.
    Delete,
}

/// A broker that exists already.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalBroker {
    /// Client URLs of the broker's servers, without credentials (they go in
    /// `credentialsSecretRef`, never in a URL that status would show) and without a path: NATS
    /// `nats://host:4222` or `tls://host:4222`; RabbitMQ `amqp://host:5672` or
    /// `amqps://host:5671` (the virtual host is `rabbitmq.virtualHost`).
    #[schemars(
        length(min = 1, max = 16),
        inner(
            regex(pattern = r"^(nats|tls|amqp|amqps)://[^\s/?#@]+$"),
            length(max = 512)
        )
    )]
    pub urls: Vec<String>,
    /// Secret in the Broker's namespace with the credentials Conveyor presents to the broker:
    /// `user` and `password` (both engines), or `token` or `creds` (a NATS credentials file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,
    /// TLS settings for `tls://` and `amqps://` URLs and an `https://` management URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ExternalTls>,
    /// Settings only RabbitMQ has. Required with engine `rabbitmq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<ExternalRabbitmq>,
}

/// How Conveyor administers an external RabbitMQ.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRabbitmq {
    /// Base URL of the management API (`http://rabbitmq.messaging.svc:15672`), without
    /// credentials. Checked against the operator's allowed destinations like the AMQP URLs.
    #[schemars(
        regex(pattern = r"^https?://[^\s/?#@]+(/[^\s?#@]*)?$"),
        length(max = 512)
    )]
    pub management_url: String,
    /// The virtual host that holds Conveyor's queues, exchanges and policies. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub virtual_host: Option<String>,
}

/// TLS settings for an external broker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalTls {
    /// Secret in the Broker's namespace whose `ca.crt` is the certificate authority that signed
    /// the broker's certificate. The system roots when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretReference>,
}

/// The observed state of a Broker.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStatus {
    /// The generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The state of the Broker: `Ready`, `Reachable`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
    /// Number of broker servers requested (managed brokers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Number of broker servers that are ready (managed brokers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// The URL clients use to reach the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The version the broker server reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Number of servers the broker reports in its cluster (1 for a single server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<i32>,
    /// Name of the broker's cluster, if it is clustered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Names of the broker's cluster nodes, where the broker lists them (RabbitMQ).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// What a NATS broker reports about itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsStatus>,
    /// What a RabbitMQ broker reports about itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<RabbitmqStatus>,
}

/// What a NATS broker reports about itself.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsStatus {
    /// The JetStream limits of the account Conveyor uses (-1: unlimited).
    pub jet_stream: JetStreamLimits,
}

/// What a RabbitMQ broker reports about itself.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RabbitmqStatus {
    /// Version of the management API that answered the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_version: Option<String>,
    /// Whether the management API answered the last check.
    pub management_api: bool,
    /// Whether the first AMQP URL answered the AMQP handshake at the last check.
    pub amqp: bool,
}

/// JetStream limits of an account, as the broker reports them. -1 means unlimited.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JetStreamLimits {
    /// Memory storage, in bytes.
    pub max_memory: i64,
    /// File storage, in bytes.
    pub max_storage: i64,
    /// Number of streams.
    pub max_streams: i64,
    /// Number of consumers.
    pub max_consumers: i64,
}
