//! How Conveyor's model maps onto RabbitMQ's objects, as pure functions.
//!
//! - A Queue is a durable quorum queue named `<name>`; its replicas are the initial group size.
//! - A Topic is a durable topic exchange named `<name>` whose routing keys are the event types.
//!   Its alternate exchange `<name>.unrouted` (fanout) feeds the quorum queue
//!   `<name>.unrouted`, so that an event no subscription takes (an undeclared type among
//!   them) is kept there instead of vanishing.
//! - Retention (`maxAge`, `maxMessages`, `maxBytes`, `discard`) is a policy named
//!   `conveyor.<queue>` on exactly that queue (for a Topic, its unrouted queue), so that it
//!   changes in place: RabbitMQ fixes a queue's arguments at declaration.
//! - Ownership is the `x-conveyor-owner` argument of the queue or exchange; an object with
//!   another owner, or none, is never touched.

use serde_json::{Map, Value, json};

use super::management::{ExchangeInfo, Policy, QueueInfo};
use crate::engine::{DestinationSpec, Discard, Storage};

/// The argument that names the owning resource.
pub const OWNER_ARG: &str = "x-conveyor-owner";
/// The priority of Conveyor's policies: above the usual operator-wide defaults (0).
pub const POLICY_PRIORITY: i64 = 50;
/// The priority of the policy that blocks publishing while a `DeleteIfEmpty` queue drains.
pub const BLOCK_PRIORITY: i64 = 60;

/// The alternate exchange and queue of a Topic that keep its unrouted events.
pub fn unrouted(topic: &str) -> String {
    format!("{topic}.unrouted")
}

/// The name of the retention policy of `queue`.
pub fn policy_name(queue: &str) -> String {
    format!("conveyor.{queue}")
}

/// The name of the policy that blocks publishing to `queue` while it drains before deletion.
pub fn block_policy_name(queue: &str) -> String {
    format!("conveyor.block.{queue}")
}

/// A regular expression that matches exactly `name` (names in the broker are letters, digits,
/// `-`, `_` and `.`).
pub fn exact(name: &str) -> String {
    format!("^{}$", name.replace('.', "\\."))
}

/// The arguments of a Queue's (or a Topic's unrouted) quorum queue.
pub fn queue_arguments(spec: &DestinationSpec) -> Map<String, Value> {
    quorum_arguments(spec.replicas, &spec.owner)
}

/// The arguments of a quorum queue of `replicas` members owned by `owner`.
pub fn quorum_arguments(replicas: usize, owner: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("x-queue-type".into(), json!("quorum"));
    m.insert("x-quorum-initial-group-size".into(), json!(replicas.max(1)));
    m.insert(OWNER_ARG.into(), json!(owner));
    m
}

/// The arguments of a Topic's exchange.
pub fn exchange_arguments(spec: &DestinationSpec) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("alternate-exchange".into(), json!(unrouted(&spec.name)));
    m.insert(OWNER_ARG.into(), json!(spec.owner));
    m
}

/// The arguments of a Topic's alternate exchange.
pub fn unrouted_exchange_arguments(spec: &DestinationSpec) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(OWNER_ARG.into(), json!(spec.owner));
    m
}

/// The retention policy of the queue `queue` that holds `spec`'s messages.
pub fn retention_policy(spec: &DestinationSpec, queue: &str) -> Policy {
    let mut d = Map::new();
    if !spec.max_age.is_zero() {
        d.insert("message-ttl".into(), json!(spec.max_age.as_millis() as u64));
    }
    if spec.max_messages > 0 {
        d.insert("max-length".into(), json!(spec.max_messages));
    }
    if spec.max_bytes > 0 {
        d.insert("max-length-bytes".into(), json!(spec.max_bytes));
    }
    let overflow = match spec.discard {
        Discard::Old => "drop-head",
        Discard::New => "reject-publish",
    };
    d.insert("overflow".into(), json!(overflow));
    Policy {
        pattern: exact(queue),
        apply_to: "queues".into(),
        priority: POLICY_PRIORITY,
        definition: d,
    }
}

/// The policy that refuses new messages to `queue` while Conveyor waits for it to be empty.
pub fn block_policy(queue: &str) -> Policy {
    let mut d = Map::new();
    d.insert("max-length".into(), json!(0));
    d.insert("overflow".into(), json!("reject-publish"));
    Policy {
        pattern: exact(queue),
        apply_to: "queues".into(),
        priority: BLOCK_PRIORITY,
        definition: d,
    }
}

/// Why `owner` may not touch an object whose arguments are `args`, if it may not.
pub fn not_owned(what: &str, args: &Map<String, Value>, owner: &str) -> Option<String> {
    match args.get(OWNER_ARG).and_then(Value::as_str) {
        Some(o) if o == owner => None,
        Some(o) => Some(format!("{what} belongs to {o}")),
        None => Some(format!("{what} exists and was not created by Conveyor")),
    }
}

/// The settings in which a queue differs from what `spec` asks, by field name; the ones that
/// a policy sets can be repaired in place, a wrong queue type cannot.
pub fn queue_differences(
    queue: &QueueInfo,
    policy: Option<&Policy>,
    wanted: &Policy,
) -> Vec<String> {
    let mut out = Vec::new();
    if queue.queue_type.as_deref() != Some("quorum") {
        out.push("type (not a quorum queue)".to_string());
    }
    out.extend(policy_differences(policy, wanted));
    out
}

/// The retention fields in which a policy differs from the wanted one.
pub fn policy_differences(actual: Option<&Policy>, wanted: &Policy) -> Vec<String> {
    let Some(actual) = actual else {
        return vec!["retention (policy missing)".to_string()];
    };
    let mut out = Vec::new();
    let fields = [
        ("message-ttl", "maxAge"),
        ("max-length", "maxMessages"),
        ("max-length-bytes", "maxBytes"),
        ("overflow", "discard"),
    ];
    for (key, field) in fields {
        if actual.definition.get(key) != wanted.definition.get(key) {
            out.push(field.to_string());
        }
    }
    let extra = actual
        .definition
        .keys()
        .any(|k| !fields.iter().any(|(f, _)| f == k));
    if extra || actual.pattern != wanted.pattern || actual.priority != wanted.priority {
        out.push("retention policy".to_string());
    }
    out
}

/// The settings in which a Topic's exchange differs from the spec.
pub fn exchange_differences(exchange: &ExchangeInfo, spec: &DestinationSpec) -> Vec<String> {
    let mut out = Vec::new();
    if exchange.exchange_type != "topic" {
        out.push("type (not a topic exchange)".to_string());
    }
    if exchange.arguments.get("alternate-exchange") != Some(&json!(unrouted(&spec.name))) {
        out.push("alternate exchange".to_string());
    }
    out
}

/// What RabbitMQ cannot honour of `spec`, each naming the field.
pub fn unsupported(spec: &DestinationSpec) -> Vec<String> {
    let mut out = Vec::new();
    if spec.storage == Storage::Memory {
        out.push(
            "spec.storage: Memory is not available on RabbitMQ (quorum queues always keep messages on disk); the messages are kept on disk"
                .to_string(),
        );
    }
    if spec.deduplication_window.is_some() {
        out.push(
            "spec.deduplicationWindow: RabbitMQ has no duplicate detection in its core broker; a message published twice is stored twice"
                .to_string(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::DestinationKind;
    use std::time::Duration;

    fn spec() -> DestinationSpec {
        DestinationSpec {
            kind: DestinationKind::Queue,
            name: "queue_shop_work".into(),
            event_types: vec![],
            max_age: Duration::from_secs(60),
            max_messages: 100,
            max_bytes: -1,
            discard: Discard::New,
            replicas: 3,
            storage: Storage::File,
            deduplication_window: None,
            owner: "Queue shop/work".into(),
            description: String::new(),
        }
    }

    #[test]
    fn retention_becomes_a_policy_on_exactly_that_queue() {
        let p = retention_policy(&spec(), "queue_shop_work");
        assert_eq!(p.pattern, "^queue_shop_work$");
        assert_eq!(p.definition["message-ttl"], json!(60_000));
        assert_eq!(p.definition["max-length"], json!(100));
        assert_eq!(p.definition["overflow"], json!("reject-publish"));
        assert!(!p.definition.contains_key("max-length-bytes"));
        assert_eq!(exact("topic_a.unrouted"), "^topic_a\\.unrouted$");
    }

    #[test]
    fn policy_differences_name_the_fields() {
        let wanted = retention_policy(&spec(), "q");
        assert!(policy_differences(Some(&wanted), &wanted).is_empty());
        let mut edited = wanted.clone();
        edited.definition.insert("max-length".into(), json!(5));
        edited.definition.remove("message-ttl");
        assert_eq!(
            policy_differences(Some(&edited), &wanted),
            ["maxAge", "maxMessages"]
        );
        assert_eq!(
            policy_differences(None, &wanted),
            ["retention (policy missing)"]
        );
    }

    #[test]
    fn ownership_is_the_owner_argument() {
        let args = queue_arguments(&spec());
        assert_eq!(args["x-queue-type"], json!("quorum"));
        assert_eq!(args["x-quorum-initial-group-size"], json!(3));
        assert!(not_owned("queue q", &args, "Queue shop/work").is_none());
        assert!(
            not_owned("queue q", &args, "Queue shop/other")
                .is_some_and(|m| m.contains("belongs to Queue shop/work"))
        );
        assert!(not_owned("queue q", &Map::new(), "x").is_some_and(|m| m.contains("not created")));
    }

    #[test]
    fn memory_storage_and_dedup_are_reported_unsupported() {
        assert!(unsupported(&spec()).is_empty());
        let s = DestinationSpec {
            storage: Storage::Memory,
            deduplication_window: Some(Duration::from_secs(120)),
            ..spec()
        };
        let u = unsupported(&s);
        assert_eq!(u.len(), 2);
        assert!(u[0].starts_with("spec.storage") && u[1].starts_with("spec.deduplicationWindow"));
    }
}
