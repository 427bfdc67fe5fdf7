//! The answers and bodies of the management API, as typed values.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{ManagementError, Result};

/// What `/api/overview` says about the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Overview {
    pub rabbitmq_version: Option<String>,
    pub management_version: Option<String>,
    pub cluster_name: Option<String>,
    pub product_name: Option<String>,
    pub erlang_version: Option<String>,
    /// The node that answered.
    pub node: Option<String>,
}

/// A cluster node and whether it runs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Node {
    pub name: String,
    #[serde(default)]
    pub running: bool,
}

/// A queue. The figures are `None` while the management agent has not sampled the queue yet
/// (a fresh classic queue has none) and lag the truth by the statistics interval.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    /// `classic`, `quorum` or `stream`: the API's `type`, else the `x-queue-type` argument.
    #[serde(rename = "type")]
    pub queue_type: Option<String>,
    #[serde(default)]
    pub durable: bool,
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// The policy in force, if any.
    pub policy: Option<String>,
    /// `running` (from the statistics, so `None` until the first sample, even when the figures
    /// are already there). A quorum queue whose declare was cut off by a client timeout stays
    /// `None` for good and is unusable: `get` blocks, redeclaring answers 204 (3.10.8). It
    /// must be deleted (which takes the server about 5 s) and declared again.
    pub state: Option<String>,
    pub messages: Option<u64>,
    pub messages_ready: Option<u64>,
    pub messages_unacknowledged: Option<u64>,
    pub message_bytes: Option<u64>,
    pub consumers: Option<u64>,
    /// The nodes holding a quorum queue's replicas.
    pub members: Option<Vec<String>>,
}

/// A queue's depth figures, as `queue_depths` lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct QueueDepth {
    pub name: String,
    pub messages_ready: Option<u64>,
    pub messages_unacknowledged: Option<u64>,
    /// Cumulative counters; RabbitMQ 3.10 sends `[]` rather than an object before the first
    /// acknowledgement, so it is read as any value.
    #[serde(default)]
    pub message_stats: Option<Value>,
}

impl QueueDepth {
    /// Deliveries acknowledged since the queue was declared, once there were any.
    pub fn acknowledged(&self) -> Option<u64> {
        self.message_stats.as_ref()?.get("ack")?.as_u64()
    }
}

impl QueueInfo {
    pub(super) fn fill_type(mut self) -> Self {
        if self.queue_type.is_none() {
            self.queue_type = self
                .arguments
                .get("x-queue-type")
                .and_then(Value::as_str)
                .map(String::from);
        }
        self
    }
}

/// An exchange.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ExchangeInfo {
    pub name: String,
    /// `direct`, `fanout`, `topic`, `headers`, ...
    #[serde(rename = "type")]
    pub exchange_type: String,
    #[serde(default)]
    pub durable: bool,
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// A binding. `properties_key` names it for `unbind_*`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Binding {
    pub source: String,
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    pub routing_key: String,
    pub properties_key: String,
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// A policy. `apply_to` is `queues`, `exchanges` or `all` (3.10 knows no `quorum_queues`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub pattern: String,
    #[serde(rename = "apply-to", default = "all")]
    pub apply_to: String,
    #[serde(default)]
    pub priority: i64,
    pub definition: Map<String, Value>,
}

/// A policy with its name, as a vhost's policy listing shows it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct NamedPolicy {
    pub name: String,
    #[serde(flatten)]
    pub policy: Policy,
}

fn all() -> String {
    "all".into()
}

/// A message fetched with `get_messages`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    #[serde(default)]
    pub redelivered: bool,
    /// The payload as the API gives it: text, or base64 when `payload_encoding` is `base64`.
    pub payload: String,
    pub payload_encoding: String,
    /// The message's AMQP properties (`headers`, `content_type`, ...).
    #[serde(default)]
    pub properties: Map<String, Value>,
}

impl Message {
    /// The raw payload bytes.
    pub fn payload_bytes(&self) -> Result<Vec<u8>> {
        match self.payload_encoding.as_str() {
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(&self.payload)
                .map_err(|e| ManagementError::Decode(format!("payload: {e}"))),
            _ => Ok(self.payload.clone().into_bytes()),
        }
    }
}

#[derive(Deserialize)]
pub(super) struct Routed {
    pub(super) routed: bool,
}

/// A user as the management API shows it (never its password).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct User {
    pub name: String,
    /// Base64 of a 4-byte salt followed by the hash of salt and password.
    #[serde(default)]
    pub password_hash: String,
    /// `rabbit_password_hashing_sha256` (the default) or `rabbit_password_hashing_sha512`.
    #[serde(default)]
    pub hashing_algorithm: String,
    /// A list from 3.9 on, a comma-separated string before.
    #[serde(default, deserialize_with = "tags")]
    pub tags: Vec<String>,
}

fn tags<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(a) => a
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    })
}

impl User {
    /// Whether the stored hash is that of `password`. `None` for a hashing algorithm this
    /// client does not know (then only a reset can make sure).
    pub fn has_password(&self, password: &str) -> Option<bool> {
        use sha2::Digest;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&self.password_hash)
            .ok()?;
        let (salt, hash) = raw.split_at_checked(4)?;
        let salted = [salt, password.as_bytes()].concat();
        let computed = match self.hashing_algorithm.as_str() {
            "" | "rabbit_password_hashing_sha256" => sha2::Sha256::digest(&salted).to_vec(),
            "rabbit_password_hashing_sha512" => sha2::Sha512::digest(&salted).to_vec(),
            _ => return None,
        };
        Some(computed == hash)
    }
}

/// A user's permissions in one virtual host: regular expressions over resource names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}
