//! Pure translation of a Queue or Topic into the engine-neutral destination the broker should
//! hold, and the checks that need no broker: Topic event schemas.

use std::time::Duration;

use crate::api::common::{DiscardPolicy, StorageType, StreamSettings};
use crate::api::topic::EventType;
use crate::engine::{DestinationKind, DestinationSpec, Discard, Storage};

/// Parses a duration the CRD schema already checked (`168h`, `1h30m`, `500ms`).
pub fn duration(s: &str) -> Result<Duration, String> {
    let d: kube::core::Duration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration: {e}"))?;
    Ok(d.into())
}

/// The destination a resource asks for.
pub fn destination_spec(
    kind: DestinationKind,
    name: &str,
    event_types: &[EventType],
    s: &StreamSettings,
    owner: &str,
) -> Result<DestinationSpec, String> {
    let r = s.retention.clone().unwrap_or_default();
    let max_age = r
        .max_age
        .as_deref()
        .map(duration)
        .transpose()?
        .unwrap_or_default();
    Ok(DestinationSpec {
        kind,
        name: name.to_string(),
        event_types: event_types.iter().map(|t| t.type_.clone()).collect(),
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
        deduplication_window: s
            .deduplication_window
            .as_deref()
            .map(duration)
            .transpose()?,
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
    fn settings_map_onto_the_destination() {
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
        let types = [event("OrderPlaced", json!({}))];
        let spec =
            destination_spec(DestinationKind::Topic, "t", &types, &s, "Topic shop/t").unwrap();
        assert_eq!(spec.max_age, Duration::from_secs(168 * 3600));
        assert_eq!((spec.max_messages, spec.max_bytes), (1000, -1));
        assert_eq!(spec.discard, Discard::New);
        assert_eq!((spec.replicas, spec.storage), (3, Storage::Memory));
        assert_eq!(spec.deduplication_window, Some(Duration::from_secs(120)));
        assert_eq!(spec.event_types, ["OrderPlaced"]);
    }

    #[test]
    fn defaults_are_unlimited_and_leave_the_dedup_window_to_the_engine() {
        let spec = destination_spec(
            DestinationKind::Queue,
            "q",
            &[],
            &StreamSettings::default(),
            "o",
        )
        .unwrap();
        assert_eq!(spec.max_age, Duration::ZERO);
        assert_eq!((spec.max_messages, spec.max_bytes), (-1, -1));
        assert_eq!(spec.deduplication_window, None);
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
