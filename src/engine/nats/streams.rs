//! Queues and Topics on NATS JetStream. A Queue is a stream with work-queue retention on the
//! subjects `<stream>` and `<stream>.>`; a Topic is a stream with limits retention and one
//! subject per declared event type (`<stream>.<EventType>`), or `<stream>.>` when it declares
//! none. This module holds the spec as a JetStream configuration, the comparison that finds
//! drift, and the calls that create, update, read and delete.
//!
//! Ownership is recorded in the stream's metadata (`conveyor.dev/owner`), so a stream that
//! Conveyor did not create is never taken over, whatever its name.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{self, Config};

use super::connection::Connection;
use futures::TryStreamExt;

use crate::engine::{
    DeleteWhen, Deletion, DestinationKind, DestinationSpec, DestinationState, Discard, EngineError,
    Listed, Storage, SyncMode, SyncOutcome, digest, owner_kind,
};

/// The stream-metadata key that names the owning resource.
pub const OWNER_KEY: &str = "conveyor.dev/owner";

const TIMEOUT: Duration = Duration::from_secs(5);

/// How long listing every stream may take (the server answers in pages of 256).
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// The duplicate-detection window when the spec sets none (the server's own default).
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The subjects of a destination's stream.
pub fn subjects(spec: &DestinationSpec) -> Vec<String> {
    let stream = &spec.name;
    match spec.kind {
        DestinationKind::Queue => vec![stream.clone(), format!("{stream}.>")],
        DestinationKind::Topic if spec.event_types.is_empty() => vec![format!("{stream}.>")],
        DestinationKind::Topic => spec
            .event_types
            .iter()
            .map(|t| format!("{stream}.{t}"))
            .collect(),
    }
}

/// The duplicate window of a spec: its own, else the server's default shortened to the
/// maximum age (the server refuses a window longer than that).
fn duplicate_window(spec: &DestinationSpec) -> Duration {
    match spec.deduplication_window {
        Some(window) => window,
        None if spec.max_age > Duration::ZERO => DEFAULT_DUPLICATE_WINDOW.min(spec.max_age),
        None => DEFAULT_DUPLICATE_WINDOW,
    }
}

/// The JetStream configuration of a spec.
pub fn config(spec: &DestinationSpec) -> Config {
    Config {
        name: spec.name.clone(),
        description: Some(spec.description.clone()),
        subjects: subjects(spec),
        retention: match spec.kind {
            DestinationKind::Topic => stream::RetentionPolicy::Limits,
            DestinationKind::Queue => stream::RetentionPolicy::WorkQueue,
        },
        max_age: spec.max_age,
        max_messages: spec.max_messages,
        max_bytes: spec.max_bytes,
        discard: match spec.discard {
            Discard::Old => stream::DiscardPolicy::Old,
            Discard::New => stream::DiscardPolicy::New,
        },
        num_replicas: spec.replicas,
        storage: match spec.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        duplicate_window: duplicate_window(spec),
        metadata: [(OWNER_KEY.to_string(), spec.owner.clone())].into(),
        ..Default::default()
    }
}

/// The settings in which `actual` differs from `wanted`, by name.
pub fn differences(wanted: &Config, actual: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff = |name: &str, same: bool| {
        if !same {
            out.push(name.to_string());
        }
    };
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    diff(
        "subjects",
        sorted(&wanted.subjects) == sorted(&actual.subjects),
    );
    diff("retention", wanted.retention == actual.retention);
    diff("maxAge", wanted.max_age == actual.max_age);
    diff("maxMessages", wanted.max_messages == actual.max_messages);
    diff("maxBytes", wanted.max_bytes == actual.max_bytes);
    diff("discard", wanted.discard == actual.discard);
    diff("replicas", wanted.num_replicas == actual.num_replicas);
    diff("storage", wanted.storage == actual.storage);
    diff(
        "deduplicationWindow",
        wanted.duplicate_window == actual.duplicate_window,
    );
    diff("description", wanted.description == actual.description);
    out
}

/// Why `owner` does not own the stream configured as `actual`, if it does not.
fn not_owned(name: &str, actual: &Config, owner: &str) -> Option<String> {
    match actual.metadata.get(OWNER_KEY) {
        Some(o) if o == owner => None,
        Some(o) => Some(format!("stream {name} belongs to {o}")),
        None => Some(format!(
            "stream {name} exists and was not created by Conveyor"
        )),
    }
}

fn state(info: &stream::Info) -> DestinationState {
    DestinationState {
        messages: info.state.messages,
        bytes: Some(info.state.bytes),
        consumers: info.state.consumer_count as u64,
        first_sequence: Some(info.state.first_sequence),
        last_sequence: Some(info.state.last_sequence),
    }
}

/// A listed stream, if Conveyor owns it.
fn listed(info: &stream::Info) -> Option<Listed> {
    let owner = info.config.metadata.get(OWNER_KEY)?;
    // The metadata map comes back in any order: digest it sorted.
    let mut config = info.config.clone();
    let metadata: std::collections::BTreeMap<_, _> = config.metadata.drain().collect();
    let settings = (serde_json::to_string(&config).unwrap_or_default(), metadata);
    Some(Listed {
        kind: owner_kind(owner)?,
        name: info.config.name.clone(),
        owner: owner.clone(),
        state: state(info),
        settings: digest(&settings),
    })
}

fn request(e: impl std::fmt::Display) -> EngineError {
    EngineError::Request(e.to_string())
}

/// `f`, or `Unreachable` when JetStream does not answer within 5 s.
pub(super) async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    tokio::time::timeout(TIMEOUT, f).await.unwrap_or_else(|_| {
        Err(EngineError::Unreachable(
            "JetStream did not answer within 5 s".into(),
        ))
    })
}

impl Connection {
    fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().clone())
    }

    /// The stream's info, or `None` when it does not exist.
    pub(super) async fn info_of(&self, name: &str) -> Result<Option<stream::Info>, EngineError> {
        self.require_connected()?;
        match self.js().get_stream(name).await {
            // get_stream already answered with the info: one request, not two.
            Ok(s) => Ok(Some(s.cached_info().clone())),
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(request(e)),
            },
        }
    }
}

impl Connection {
    pub(super) async fn ensure_stream(
        &self,
        spec: &DestinationSpec,
        mode: SyncMode,
    ) -> Result<SyncOutcome, EngineError> {
        timed(async {
            let wanted = config(spec);
            let Some(info) = self.info_of(&spec.name).await? else {
                if !mode.create {
                    return Ok(SyncOutcome::Missing);
                }
                // The create response already holds the new stream's info.
                let created = self.js().create_stream(wanted).await.map_err(request)?;
                return Ok(SyncOutcome::Created(state(created.cached_info())));
            };
            if let Some(why) = not_owned(&spec.name, &info.config, &spec.owner) {
                return Ok(SyncOutcome::Conflict(why));
            }
            let changed = differences(&wanted, &info.config);
            if changed.is_empty() {
                return Ok(SyncOutcome::Unchanged(state(&info)));
            }
            if !mode.repair {
                return Ok(SyncOutcome::Drifted(state(&info), changed));
            }
            let updated = self.js().update_stream(wanted).await.map_err(request)?;
            Ok(SyncOutcome::Updated(state(&updated), changed))
        })
        .await
    }

    /// Deletes the stream if `owner` owns it. With `DeleteWhen::Empty` the depth is checked
    /// first, in a separate call: a message published in between goes with the stream.
    pub(super) async fn delete_stream(
        &self,
        name: &str,
        owner: &str,
        when: DeleteWhen,
    ) -> Result<Deletion, EngineError> {
        timed(async {
            let Some(info) = self.info_of(name).await? else {
                return Ok(Deletion::Absent);
            };
            if let Some(why) = not_owned(name, &info.config, owner) {
                return Ok(Deletion::NotOwned(why));
            }
            if when == DeleteWhen::Empty && info.state.messages > 0 {
                let n = info.state.messages;
                return Ok(Deletion::NotEmpty(
                    n,
                    format!("stream {name} still holds {n} message(s)"),
                ));
            }
            match self.js().delete_stream(name).await {
                Ok(_) => Ok(Deletion::Deleted),
                Err(e) => match e.kind() {
                    GetStreamErrorKind::JetStream(j)
                        if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                    {
                        Ok(Deletion::Absent)
                    }
                    _ => Err(request(e)),
                },
            }
        })
        .await
    }

    /// Every stream Conveyor owns, from the paged stream listing: one request per 256 streams.
    pub(super) async fn list_streams(&self) -> Result<Vec<Listed>, EngineError> {
        self.require_connected()?;
        let list = self
            .js()
            .streams()
            .try_filter_map(|info| async move { Ok(listed(&info)) })
            .try_collect::<Vec<_>>();
        match tokio::time::timeout(LIST_TIMEOUT, list).await {
            Err(_) => Err(EngineError::Unreachable(format!(
                "listing streams took longer than {} s",
                LIST_TIMEOUT.as_secs()
            ))),
            Ok(r) => r.map_err(request),
        }
    }

    pub(super) async fn stream_state(
        &self,
        name: &str,
    ) -> Result<Option<DestinationState>, EngineError> {
        timed(async { Ok(self.info_of(name).await?.map(|i| state(&i))) }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DestinationSpec {
        DestinationSpec {
            kind: DestinationKind::Queue,
            name: "queue_shop_work".into(),
            event_types: Vec::new(),
            max_age: Duration::from_secs(30),
            max_messages: -1,
            max_bytes: -1,
            discard: Discard::Old,
            replicas: 1,
            storage: Storage::File,
            deduplication_window: None,
            owner: "Queue shop/work".into(),
            description: "Queue shop/work".into(),
        }
    }

    #[test]
    fn config_carries_every_setting_and_the_owner() {
        let c = config(&spec());
        assert_eq!(c.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(
            c.metadata.get(OWNER_KEY).map(String::as_str),
            Some("Queue shop/work")
        );
        assert_eq!(c.duplicate_window, Duration::from_secs(30));
        assert!(differences(&c, &c).is_empty());
        assert_eq!(c.subjects, ["queue_shop_work", "queue_shop_work.>"]);
    }

    #[test]
    fn event_types_become_subjects() {
        let mut topic = DestinationSpec {
            kind: DestinationKind::Topic,
            name: "topic_shop_orders".into(),
            event_types: vec!["OrderPlaced".into(), "OrderShipped".into()],
            ..spec()
        };
        assert_eq!(
            subjects(&topic),
            [
                "topic_shop_orders.OrderPlaced",
                "topic_shop_orders.OrderShipped"
            ]
        );
        topic.event_types.clear();
        assert_eq!(subjects(&topic), ["topic_shop_orders.>"]);
        assert_eq!(config(&topic).retention, stream::RetentionPolicy::Limits);
    }

    #[test]
    fn the_default_dedup_window_fits_within_max_age() {
        let mut s = spec();
        assert_eq!(duplicate_window(&s), Duration::from_secs(30));
        s.max_age = Duration::ZERO;
        assert_eq!(duplicate_window(&s), DEFAULT_DUPLICATE_WINDOW);
        s.deduplication_window = Some(Duration::from_secs(5));
        assert_eq!(duplicate_window(&s), Duration::from_secs(5));
    }

    #[test]
    fn differences_name_each_changed_setting_and_ignore_subject_order() {
        let wanted = config(&spec());
        let mut actual = wanted.clone();
        actual.subjects.reverse();
        assert!(differences(&wanted, &actual).is_empty());
        actual.max_age = Duration::from_secs(60);
        actual.num_replicas = 3;
        assert_eq!(differences(&wanted, &actual), ["maxAge", "replicas"]);
    }
}
