//! The status that Queue and Topic share: both are a stream inside the broker.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::common::Conditions;

/// The regular expression a broker-side stream name must match.
pub const STREAM_NAME_PATTERN: &str = r"^[A-Za-z0-9_-]{1,64}$";

/// The observed state of a Queue or a Topic and of its stream inside the broker.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    /// The generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The state of the resource: `Ready`, `ResolvedRefs`, `Synced`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
    /// True once Conveyor has created the stream (or found its own) in the broker: from then on
    /// a missing stream is drift, and deletion applies the deletion policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared: Option<bool>,
    /// Name of the stream inside the broker. Set once; never changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_name: Option<String>,
    /// Messages in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<i64>,
    /// Bytes in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// Consumers of the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<i64>,
    /// Sequence number of the oldest message in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_sequence: Option<i64>,
    /// Sequence number of the newest message in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sequence: Option<i64>,
}
