//! Dead letters on NATS, which has no dead-letter queue of its own.
//!
//! - The server publishes an advisory when a message used up a consumer's `max_deliver`
//!   (`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`). A work-queue stream of
//!   Conveyor's, `conveyor_advisories`, captures them, so that none is lost while the operator is
//!   down.
//! - A subscription that keeps dead letters has a stream of its own, `<consumer>_dead`, named in
//!   its consumer's metadata (`conveyor.dev/dead-letter`).
//! - The operator takes each advisory, copies the message by sequence into that stream with
//!   where it came from (headers `Conveyor-Source-Stream`, `-Source-Sequence`, `-Source-Subject`,
//!   `Conveyor-Consumer`, `Conveyor-Deliveries`, `Conveyor-Dead-At`), waits for the server's
//!   acknowledgement, then removes the message from a Queue's work-queue stream, and only then
//!   acknowledges the advisory. A copy repeated after a crash carries the same `Nats-Msg-Id`,
//!   which the dead-letter stream's duplicate window drops: each dead letter arrives once.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures::StreamExt;
use serde::Deserialize;

use super::connection::Connection;
use super::streams::OWNER_KEY;
use crate::engine::consumers::{ConsumerSpec, ConsumerTarget, dead_letter_name};
use crate::engine::{EngineError, SyncMode};

/// The stream that captures max-deliveries advisories.
pub const ADVISORIES: &str = "conveyor_advisories";
const ADVISORY_SUBJECTS: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>";
/// The owner recorded on the advisories stream.
const ADVISORIES_OWNER: &str = "Conveyor dead letters";
/// The durable consumer through which the operator takes advisories.
const PROCESSOR: &str = "conveyor";
/// The consumer-metadata key naming a consumer's dead-letter stream.
pub const DEAD_LETTER_KEY: &str = "conveyor.dev/dead-letter";
/// How long a repeated copy is recognised as one: longer than an operator restart.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(2 * 3600);
/// How long advisories wait for an operator.
const ADVISORY_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The dead-letter stream of a consumer spec.
pub fn stream_config(spec: &ConsumerSpec) -> stream::Config {
    let name = dead_letter_name(&spec.name);
    stream::Config {
        subjects: vec![name.clone()],
        name,
        description: Some(format!("dead letters of {}", spec.owner)),
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: spec.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        metadata: [(OWNER_KEY.to_string(), spec.owner.clone())].into(),
        ..Default::default()
    }
}

fn advisories_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: ADVISORIES.into(),
        description: Some(
            "max-deliveries advisories, until Conveyor has kept their dead letters".into(),
        ),
        subjects: vec![ADVISORY_SUBJECTS.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_age: ADVISORY_MAX_AGE,
        metadata: [(OWNER_KEY.to_string(), ADVISORIES_OWNER.to_string())].into(),
        ..Default::default()
    }
}

/// What the server says when a consumer gives a message up.
#[derive(Debug, Deserialize)]
pub struct Advisory {
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    pub deliveries: u64,
    #[serde(default)]
    pub timestamp: String,
}

fn request(e: impl std::fmt::Display) -> EngineError {
    EngineError::Request(e.to_string())
}

impl Connection {
    /// Makes the advisories stream and the spec's dead-letter stream exist and starts taking
    /// advisories. The dead letters held, or `Err(why)` when a stream of that name is not the
    /// subscription's; `None` when it may not be created.
    pub(super) async fn ensure_dead_letters(
        &self,
        spec: &ConsumerSpec,
        mode: SyncMode,
    ) -> Result<Result<Option<u64>, String>, EngineError> {
        let js = jetstream::new(self.client().clone());
        let wanted = stream_config(spec);
        let held = match js.get_stream(&wanted.name).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(request)?;
                if info.config.metadata.get(OWNER_KEY) != Some(&spec.owner) {
                    return Ok(Err(format!(
                        "dead-letter stream {} exists and was not created by Conveyor for {}",
                        wanted.name, spec.owner
                    )));
                }
                Some(info.state.messages)
            }
            Err(_) if mode.create => {
                js.create_stream(wanted).await.map_err(request)?;
                Some(0)
            }
            Err(_) => None,
        };
        if held.is_some() {
            js.get_or_create_stream(advisories_config(spec.replicas))
                .await
                .map_err(request)?;
            self.start_dead_letters(|client| tokio::spawn(take_advisories(client)));
        }
        Ok(Ok(held))
    }

    /// Whether an advisory about the consumer still waits to be kept: its consumer must stay
    /// until then, or the dead letter would be dropped.
    pub(super) async fn advisories_waiting(
        &self,
        target: &ConsumerTarget,
    ) -> Result<bool, EngineError> {
        let js = jetstream::new(self.client().clone());
        let Ok(stream) = js.get_stream(ADVISORIES).await else {
            return Ok(false);
        };
        let subject = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
            target.source, target.name
        );
        Ok(stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .is_ok())
    }

    /// Deletes the subscription's dead-letter stream if it is the subscription's and empty.
    pub(super) async fn delete_dead_letters_if_empty(
        &self,
        target: &ConsumerTarget,
    ) -> Result<(), EngineError> {
        let js = jetstream::new(self.client().clone());
        let name = dead_letter_name(&target.name);
        let Ok(mut s) = js.get_stream(&name).await else {
            return Ok(());
        };
        let info = s.info().await.map_err(request)?;
        if info.config.metadata.get(OWNER_KEY) == Some(&target.owner) && info.state.messages == 0 {
            js.delete_stream(&name).await.map_err(request)?;
        }
        Ok(())
    }
}

/// Takes advisories until the connection goes; a failure waits and starts again.
async fn take_advisories(client: async_nats::Client) {
    loop {
        if let Err(e) = take_some(&client).await {
            tracing::warn!(error = %e, "taking max-deliveries advisories failed; retrying");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn take_some(client: &async_nats::Client) -> Result<(), String> {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(ADVISORIES).await.map_err(|e| e.to_string())?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            PROCESSOR,
            consumer::pull::Config {
                durable_name: Some(PROCESSOR.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| e.to_string())?;
        match keep(&js, &m.payload).await {
            Ok(()) => m.double_ack().await.map_err(|e| e.to_string())?,
            Err(e) => {
                tracing::warn!(error = %e, "a dead letter could not be kept yet; retrying");
                let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await;
            }
        }
    }
    Ok(())
}

/// Keeps the dead letter an advisory is about, if its consumer keeps dead letters.
async fn keep(js: &jetstream::Context, payload: &[u8]) -> Result<(), String> {
    let adv: Advisory = match serde_json::from_slice(payload) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "an advisory Conveyor cannot read is dropped");
            return Ok(());
        }
    };
    let info = match js
        .get_consumer_from_stream::<consumer::Config, _, _>(&adv.consumer, &adv.stream)
        .await
    {
        Ok(c) => c.cached_info().clone(),
        // The consumer (its subscription) is gone: nobody waits for this dead letter.
        Err(_) => return Ok(()),
    };
    let Some(dead) = info.config.metadata.get(DEAD_LETTER_KEY) else {
        return Ok(());
    };
    let source = js
        .get_stream(&adv.stream)
        .await
        .map_err(|e| e.to_string())?;
    let msg = match source.get_raw_message(adv.stream_seq).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(stream = %adv.stream, sequence = adv.stream_seq, error = %e,
                "the message of a max-deliveries advisory is no longer in its stream");
            return Ok(());
        }
    };
    let mut headers = msg.headers.clone();
    let id = format!("{}/{}/{}", adv.stream, adv.stream_seq, adv.consumer);
    for (k, v) in [
        ("Nats-Msg-Id", id),
        ("Conveyor-Source-Stream", adv.stream.clone()),
        ("Conveyor-Source-Sequence", adv.stream_seq.to_string()),
        ("Conveyor-Source-Subject", msg.subject.to_string()),
        ("Conveyor-Consumer", adv.consumer.clone()),
        ("Conveyor-Deliveries", adv.deliveries.to_string()),
        ("Conveyor-Dead-At", adv.timestamp.clone()),
    ] {
        headers.insert(k, v.as_str());
    }
    js.publish_with_headers(dead.clone(), headers, msg.payload.clone())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let work_queue = source.cached_info().config.retention == stream::RetentionPolicy::WorkQueue;
    if work_queue {
        // Copied and acknowledged: it may leave the work queue now.
        let _ = source.delete_message(adv.stream_seq).await;
    }
    tracing::info!(stream = %adv.stream, sequence = adv.stream_seq, consumer = %adv.consumer,
        dead_letters = %dead, "kept a dead letter");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{DestinationKind, StartFrom};

    #[test]
    fn a_dead_letter_stream_is_the_subscriptions_and_drops_repeated_copies() {
        let spec = ConsumerSpec {
            source_kind: DestinationKind::Queue,
            source: "queue_shop_work".into(),
            name: "sub_shop_worker".into(),
            event_types: vec![],
            ack_wait: Duration::from_secs(30),
            max_deliveries: 3,
            backoff: vec![],
            max_ack_pending: 10,
            start: StartFrom::All,
            dead_letter: true,
            replicas: 3,
            owner: "EventSubscription shop/worker".into(),
        };
        let c = stream_config(&spec);
        assert_eq!(c.name, "sub_shop_worker_dead");
        assert_eq!(c.subjects, ["sub_shop_worker_dead"]);
        assert_eq!(c.num_replicas, 3);
        assert_eq!(c.metadata[OWNER_KEY], "EventSubscription shop/worker");
        assert!(c.duplicate_window >= Duration::from_secs(3600));
        let a = advisories_config(1);
        assert_eq!(a.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(a.subjects, [ADVISORY_SUBJECTS]);
    }

    #[test]
    fn an_advisory_reads_as_the_server_writes_it() {
        let raw = br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x","timestamp":"2026-12-04T05:00:00Z","stream":"topic_shop_orders","consumer":"sub_shop_payment","stream_seq":7,"deliveries":3}"#;
        let a: Advisory = serde_json::from_slice(raw).unwrap();
        assert_eq!((a.stream_seq, a.deliveries), (7, 3));
        assert_eq!(a.consumer, "sub_shop_payment");
    }
}
