//! EventSubscriptions' consumers on NATS JetStream: a durable pull consumer on the source's
//! stream, filtered on the subjects of the selected event types (a Queue's consumer takes the
//! whole work queue), with explicit acknowledgement. Ownership is recorded in the consumer's
//! metadata, as on streams. Where it starts (`deliver_policy`) is fixed at creation; the rest
//! changes in place.

use std::time::UNIX_EPOCH;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::ConsumerErrorKind;

use super::connection::Connection;
use super::dead_letters::DEAD_LETTER_KEY;
use super::streams::{OWNER_KEY, timed};
use crate::engine::consumers::{
    ConsumerSpec, ConsumerState, ConsumerTarget, StartFrom, dead_letter_name,
};
use crate::engine::{Deletion, DestinationKind, EngineError, SyncMode, SyncOutcome};

/// The server's answer when a second unfiltered consumer is put on a work-queue stream.
const WORK_QUEUE_TAKEN: ErrorCode = ErrorCode(10099);
/// The server's answer when consumers of a work-queue stream would share subjects.
const WORK_QUEUE_OVERLAP: ErrorCode = ErrorCode(10100);

/// The subjects a consumer is filtered on: those of its event types on a Topic; none (every
/// message) on a Queue or for all of a Topic's types.
pub fn filter_subjects(spec: &ConsumerSpec) -> Vec<String> {
    match spec.source_kind {
        DestinationKind::Queue => Vec::new(),
        DestinationKind::Topic => {
            // The server refuses overlapping filters: each type once.
            let mut subjects: Vec<String> = spec
                .event_types
                .iter()
                .map(|t| format!("{}.{t}", spec.source))
                .collect();
            subjects.sort();
            subjects.dedup();
            subjects
        }
    }
}

fn deliver_policy(start: StartFrom) -> Result<DeliverPolicy, EngineError> {
    Ok(match start {
        StartFrom::All => DeliverPolicy::All,
        StartFrom::New => DeliverPolicy::New,
        StartFrom::Time(t) => {
            let nanos = t
                .duration_since(UNIX_EPOCH)
                .map_err(|_| EngineError::Request("a start time before 1970".into()))?
                .as_nanos() as i128;
            DeliverPolicy::ByStartTime {
                start_time: async_nats::datetime::from_nanos(nanos)
                    .map_err(|e| EngineError::Request(e.to_string()))?,
            }
        }
    })
}

/// The JetStream configuration of a consumer spec. With a backoff, the server waits the first
/// backoff delay for the first acknowledgement instead of `ack_wait`; the configuration says so
/// itself, so that the server's answer compares equal.
pub fn config(spec: &ConsumerSpec) -> Result<consumer::Config, EngineError> {
    Ok(consumer::Config {
        durable_name: Some(spec.name.clone()),
        name: Some(spec.name.clone()),
        description: Some(spec.owner.clone()),
        deliver_policy: deliver_policy(spec.start)?,
        ack_policy: AckPolicy::Explicit,
        ack_wait: spec.backoff.first().copied().unwrap_or(spec.ack_wait),
        max_deliver: spec.max_deliveries,
        backoff: spec.backoff.clone(),
        max_ack_pending: spec.max_ack_pending,
        filter_subjects: filter_subjects(spec),
        metadata: metadata(spec),
        ..Default::default()
    })
}

/// The owner, and the dead-letter stream when the subscription keeps dead letters.
fn metadata(spec: &ConsumerSpec) -> std::collections::HashMap<String, String> {
    let mut m = std::collections::HashMap::from([(OWNER_KEY.to_string(), spec.owner.clone())]);
    if spec.dead_letter {
        m.insert(DEAD_LETTER_KEY.into(), dead_letter_name(&spec.name));
    }
    m
}

/// The settings in which `actual` differs from `wanted`, by name, split into those the server
/// changes in place and those it cannot change.
pub fn differences(
    wanted: &consumer::Config,
    actual: &consumer::Config,
) -> (Vec<String>, Vec<String>) {
    let mut in_place = Vec::new();
    let mut fixed = Vec::new();
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    // A single filter comes back in `filter_subject`.
    let filters = |c: &consumer::Config| {
        let mut f = c.filter_subjects.clone();
        if !c.filter_subject.is_empty() {
            f.push(c.filter_subject.clone());
        }
        sorted(&f)
    };
    for (name, same) in [
        ("filter", filters(wanted) == filters(actual)),
        ("ackWait", wanted.ack_wait == actual.ack_wait),
        ("maxDeliveries", wanted.max_deliver == actual.max_deliver),
        ("backoff", wanted.backoff == actual.backoff),
        (
            "maxAckPending",
            wanted.max_ack_pending == actual.max_ack_pending,
        ),
        (
            "deadLetter",
            wanted.metadata.get(DEAD_LETTER_KEY) == actual.metadata.get(DEAD_LETTER_KEY),
        ),
    ] {
        if !same {
            in_place.push(name.to_string());
        }
    }
    if wanted.deliver_policy != actual.deliver_policy {
        fixed.push("startFrom".to_string());
    }
    if wanted.ack_policy != actual.ack_policy {
        fixed.push("ackPolicy".to_string());
    }
    if actual.deliver_subject.is_some() {
        fixed.push("deliverSubject".to_string());
    }
    (in_place, fixed)
}

fn state(info: &consumer::Info, dead_letters: Option<u64>) -> ConsumerState {
    ConsumerState {
        pending: info.num_pending,
        in_flight: info.num_ack_pending as u64,
        dead_letters,
    }
}

/// Why `owner` does not own the consumer configured as `actual`, if it does not.
fn not_owned(name: &str, actual: &consumer::Config, owner: &str) -> Option<String> {
    match actual.metadata.get(OWNER_KEY) {
        Some(o) if o == owner => None,
        Some(o) => Some(format!("consumer {name} belongs to {o}")),
        None => Some(format!(
            "consumer {name} exists and was not created by Conveyor"
        )),
    }
}

fn request(e: impl std::fmt::Display) -> EngineError {
    EngineError::Request(e.to_string())
}

/// The server's JetStream error code in a consumer error, if it carries one.
fn code(kind: &ConsumerErrorKind) -> Option<ErrorCode> {
    match kind {
        ConsumerErrorKind::JetStream(j) => Some(j.error_code()),
        _ => None,
    }
}

impl Connection {
    /// The consumer's info, or `None` when it (or its stream) does not exist.
    async fn consumer_info(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<Option<consumer::Info>, EngineError> {
        self.require_connected()?;
        let js = async_nats::jetstream::new(self.client().clone());
        match js
            .get_consumer_from_stream::<consumer::Config, _, _>(name, stream)
            .await
        {
            Ok(c) => Ok(Some(c.cached_info().clone())),
            Err(e)
                if matches!(
                    code(&e.kind()),
                    Some(ErrorCode::CONSUMER_NOT_FOUND | ErrorCode::STREAM_NOT_FOUND)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(request(e)),
        }
    }

    pub(super) async fn ensure_consumer(
        &self,
        spec: &ConsumerSpec,
        mode: SyncMode,
    ) -> Result<SyncOutcome<ConsumerState>, EngineError> {
        timed(async {
            let wanted = config(spec)?;
            let js = async_nats::jetstream::new(self.client().clone());
            // The dead-letter stream first: the consumer names it.
            let dead = match spec.dead_letter {
                true => match self.ensure_dead_letters(spec, mode).await? {
                    Ok(d) => d,
                    Err(why) => return Ok(SyncOutcome::Conflict(why)),
                },
                false => None,
            };
            let state = |info: &consumer::Info| state(info, dead);
            let Some(info) = self.consumer_info(&spec.source, &spec.name).await? else {
                if !mode.create {
                    return Ok(SyncOutcome::Missing);
                }
                return match js
                    .create_consumer_on_stream(wanted, spec.source.as_str())
                    .await
                {
                    Ok(c) => Ok(SyncOutcome::Created(state(c.cached_info()))),
                    Err(e) => match code(&e.kind()) {
                        Some(WORK_QUEUE_TAKEN | WORK_QUEUE_OVERLAP) => {
                            Ok(SyncOutcome::Conflict(format!(
                                "the work-queue stream {} already has a consumer: a Queue \
                                 hands each message to one EventSubscription only (use a \
                                 Topic to give every subscription every event)",
                                spec.source
                            )))
                        }
                        _ => Err(request(e)),
                    },
                };
            };
            if let Some(why) = not_owned(&spec.name, &info.config, &spec.owner) {
                return Ok(SyncOutcome::Conflict(why));
            }
            let (in_place, fixed) = differences(&wanted, &info.config);
            if in_place.is_empty() && fixed.is_empty() {
                return Ok(SyncOutcome::Unchanged(state(&info)));
            }
            // An update must carry what the server cannot change as it is; a consumer that
            // differs in more than its start position is only reported.
            let unfixable = fixed.iter().any(|f| f != "startFrom");
            if !mode.repair || in_place.is_empty() || unfixable {
                let all = in_place.into_iter().chain(fixed).collect();
                return Ok(SyncOutcome::Drifted(state(&info), all));
            }
            // What the server cannot change stays as it is and is still reported.
            let mut keep = wanted;
            keep.deliver_policy = info.config.deliver_policy;
            let updated = js
                .update_consumer_on_stream(keep, spec.source.as_str())
                .await
                .map_err(request)?;
            let state = state(updated.cached_info());
            if fixed.is_empty() {
                Ok(SyncOutcome::Updated(state, in_place))
            } else {
                Ok(SyncOutcome::Drifted(state, fixed))
            }
        })
        .await
    }

    pub(super) async fn delete_consumer(
        &self,
        target: &ConsumerTarget,
    ) -> Result<Deletion, EngineError> {
        timed(async {
            let Some(info) = self.consumer_info(&target.source, &target.name).await? else {
                self.delete_dead_letters_if_empty(target).await?;
                return Ok(Deletion::Absent);
            };
            if let Some(why) = not_owned(&target.name, &info.config, &target.owner) {
                return Ok(Deletion::NotOwned(why));
            }
            if self.advisories_waiting(target).await? {
                let why = format!("consumer {} has dead letters still being kept", target.name);
                return Ok(Deletion::NotEmpty(0, why));
            }
            let js = async_nats::jetstream::new(self.client().clone());
            match js
                .delete_consumer_from_stream(&target.name, &target.source)
                .await
            {
                Ok(_) => {
                    self.delete_dead_letters_if_empty(target).await?;
                    Ok(Deletion::Deleted)
                }
                Err(e)
                    if matches!(
                        code(&e.kind()),
                        Some(ErrorCode::CONSUMER_NOT_FOUND | ErrorCode::STREAM_NOT_FOUND)
                    ) =>
                {
                    Ok(Deletion::Absent)
                }
                Err(e) => Err(request(e)),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec() -> ConsumerSpec {
        ConsumerSpec {
            source_kind: DestinationKind::Topic,
            source: "topic_shop_orders".into(),
            name: "sub_shop_payment".into(),
            event_types: vec!["OrderPlaced".into()],
            ack_wait: Duration::from_secs(30),
            max_deliveries: 5,
            backoff: Vec::new(),
            max_ack_pending: 1000,
            start: StartFrom::All,
            dead_letter: false,
            replicas: 1,
            owner: "EventSubscription shop/payment".into(),
        }
    }

    #[test]
    fn a_topic_consumer_is_filtered_on_its_event_types_and_a_queue_consumer_takes_all() {
        let c = config(&spec()).unwrap();
        assert_eq!(c.filter_subjects, ["topic_shop_orders.OrderPlaced"]);
        assert_eq!(c.ack_policy, AckPolicy::Explicit);
        assert_eq!(c.durable_name.as_deref(), Some("sub_shop_payment"));
        let queue = ConsumerSpec {
            source_kind: DestinationKind::Queue,
            event_types: vec!["ignored".into()],
            ..spec()
        };
        assert!(filter_subjects(&queue).is_empty());
        let all = ConsumerSpec {
            event_types: Vec::new(),
            ..spec()
        };
        assert!(filter_subjects(&all).is_empty());
    }

    #[test]
    fn the_first_backoff_delay_is_the_ack_wait() {
        let s = ConsumerSpec {
            backoff: vec![Duration::from_secs(1), Duration::from_secs(5)],
            ..spec()
        };
        assert_eq!(config(&s).unwrap().ack_wait, Duration::from_secs(1));
    }

    #[test]
    fn differences_split_what_changes_in_place_from_what_cannot() {
        let wanted = config(&spec()).unwrap();
        let mut actual = wanted.clone();
        // The server returns a single filter in `filter_subject`.
        actual.filter_subject = actual.filter_subjects.remove(0);
        assert_eq!(differences(&wanted, &actual), (vec![], vec![]));
        actual.max_deliver = 9;
        actual.deliver_policy = DeliverPolicy::New;
        assert_eq!(
            differences(&wanted, &actual),
            (
                vec!["maxDeliveries".to_string()],
                vec!["startFrom".to_string()]
            )
        );
    }
}
