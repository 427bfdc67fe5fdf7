//! Pure translation of a Queue or Topic into the stream the broker should hold, and the
//! checks that need no broker: replicas against the broker's size, Topic event schemas.

use std::time::Duration;

use crate::api::common::{DiscardPolicy, StorageType, StreamSettings};
use crate::api::topic::EventType;
use crate::engine::{Discard, Retention, Storage, StreamSpec};

/// The duplicate-detection window when the spec sets none (the broker's own default).
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Parses a duration the CRD schema already checked (`168h`, `1h30m`, `500ms`).
pub fn duration(s: &str) -> Result<Duration, String> {
    let d: kube::core::Duration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration: {e}"))?;
    Ok(d.into())
}

/// Subjects of a Queue's stream: its name, and anything below it.
pub fn queue_subjects(stream: &str) -> Vec<String> {
    vec![stream.to_string(), format!("{stream}.>")]
}

/// Subjects of a Topic's stream: `<stream>.<EventType>` for each declared type, or every
/// subject below the stream name when the Topic declares none.
pub fn topic_subjects(stream: &str, types: &[EventType]) -> Vec<String> {
    if types.is_empty() {
        return vec![format!("{stream}.>")];
    }
    types
        .iter()
        .map(|t| format!("{stream}.{}", t.type_))
        .collect()
}

/// The stream a resource asks for.
pub fn stream_spec(
    name: &str,
    subjects: Vec<String>,
    retention: Retention,
    s: &StreamSettings,
    owner: &str,
) -> Result<StreamSpec, String> {
    let r = s.retention.clone().unwrap_or_default();
    let max_age = r
        .max_age
        .as_deref()
        .map(duration)
        .transpose()?
        .unwrap_or_default();
    Ok(StreamSpec {
        name: name.to_string(),
        subjects,
        retention,
        max_age,
        max_messages: r.max_messages.unwrap_or(-1),
        max_bytes: r.max_bytes.unwrap_or(-1),
        discard: match r.discard {
            DiscardPolicy::Old => Discard::Old,
            DiscardPolicy::New => Discard::New,
        },
        replicas: s.replicas.max(1) as usize,
        storage: match s.storage {
            StorageType::File => Storage::File,
            StorageType::Memory => Storage::Memory,
        },
        duplicate_window: match s
            .deduplication_window
            .as_deref()
            .map(duration)
            .transpose()?
        {
            Some(window) => window,
            // The broker refuses a window longer than the maximum age.
            None if max_age > Duration::ZERO => DEFAULT_DUPLICATE_WINDOW.min(max_age),
            None => DEFAULT_DUPLICATE_WINDOW,
        },
        owner: owner.to_string(),
        description: format!("Managed by Conveyor: {owner}"),
    })
}

/// Checks every event type's JSON Schema; returns the problems, one per bad schema.
pub fn schema_problems(types: &[EventType]) -> Vec<String> {
    types
        .iter()
        .filter_map(|t| {
            let schema = t.schema.as_ref()?;
            jsonschema::validator_for(schema)
                .err()
                .map(|e| format!("eventTypes[{}].schema: {e}", t.type_))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::Retention as ApiRetention;
    use serde_json::json;

    fn event(t: &str, schema: serde_json::Value) -> EventType {
        EventType {
            type_: t.into(),
            description: None,
            schema: Some(schema),
        }
    }

    #[test]
    fn settings_map_onto_the_stream() {
        let s = StreamSettings {
            retention: Some(ApiRetention {
                max_age: Some("168h".into()),
                max_messages: Some(1000),
                max_bytes: None,
                discard: DiscardPolicy::New,
            }),
            replicas: 3,
            storage: StorageType::Memory,
            deduplication_window: Some("2m".into()),
            ..Default::default()
        };
        let spec = stream_spec(
            "queue_shop_work",
            queue_subjects("queue_shop_work"),
            Retention::WorkQueue,
            &s,
            "Queue shop/work",
        )
        .unwrap();
        assert_eq!(spec.max_age, Duration::from_secs(168 * 3600));
        assert_eq!((spec.max_messages, spec.max_bytes), (1000, -1));
        assert_eq!(spec.discard, Discard::New);
        assert_eq!((spec.replicas, spec.storage), (3, Storage::Memory));
        assert_eq!(spec.duplicate_window, Duration::from_secs(120));
        assert_eq!(spec.subjects, ["queue_shop_work", "queue_shop_work.>"]);
    }

    #[test]
    fn defaults_are_unlimited_with_the_default_dedup_window() {
        let spec = stream_spec(
            "t",
            vec![],
            Retention::Limits,
            &StreamSettings::default(),
            "o",
        )
        .unwrap();
        assert_eq!(spec.max_age, Duration::ZERO);
        assert_eq!((spec.max_messages, spec.max_bytes), (-1, -1));
        assert_eq!(spec.duplicate_window, DEFAULT_DUPLICATE_WINDOW);
    }

    #[test]
    fn a_short_max_age_shortens_the_default_dedup_window() {
        let s: StreamSettings =
            serde_json::from_value(json!({"retention": {"maxAge": "30s"}})).unwrap();
        let spec = stream_spec("q", vec![], Retention::WorkQueue, &s, "o").unwrap();
        assert_eq!(spec.duplicate_window, Duration::from_secs(30));
    }

    #[test]
    fn event_types_become_subjects() {
        let types = [
            event("OrderPlaced", json!({})),
            event("OrderShipped", json!({})),
        ];
        assert_eq!(
            topic_subjects("topic_shop_orders", &types),
            [
                "topic_shop_orders.OrderPlaced",
                "topic_shop_orders.OrderShipped"
            ]
        );
        assert_eq!(
            topic_subjects("topic_shop_orders", &[]),
            ["topic_shop_orders.>"]
        );
    }

    #[test]
    fn invalid_schemas_are_reported_by_event_type() {
        let good = event(
            "OrderPlaced",
            json!({"type": "object", "required": ["orderId"]}),
        );
        let bad = event("OrderShipped", json!({"type": "objekt"}));
        assert!(schema_problems(std::slice::from_ref(&good)).is_empty());
        let problems = schema_problems(&[good, bad]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("eventTypes[OrderShipped].schema"),
            "{problems:?}"
        );
    }

    #[test]
    fn remote_references_are_not_fetched() {
        let remote = event(
            "X",
            json!({"$ref": "http://169.254.169.254/latest/meta-data"}),
        );
        assert_eq!(
            schema_problems(&[remote]).len(),
            1,
            "a schema that needs a remote document is refused, not fetched"
        );
    }
}
