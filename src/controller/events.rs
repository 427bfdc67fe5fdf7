//! Kubernetes Events about Conveyor's objects. Through kube's recorder, which keeps repeated
//! Events as one series, unless the object's name is so long that the recorder's Event name
//! (`<object name>.<hex time>`) would pass the 253-character limit of a name; those Events are
//! written directly under a shortened name, so every object gets its Events. A failure to write
//! one is logged at warn, never fatal.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::events::{Event, EventType};

use super::context::{Context, FIELD_MANAGER};
use crate::resources::names::fnv1a;

/// Longest object name whose recorder Event name (`<name>.` plus up to 16 hex digits) fits.
const RECORDER_NAME_LIMIT: usize = 253 - 17;

/// The name of a directly written Event about `object`, at `now_nanos`: the object's name,
/// shortened with a hash of the whole name where needed, a dot and the time in hex. Still a
/// valid DNS subdomain (every part begins and ends with a letter or digit).
pub fn event_name(object: &str, now_nanos: i128) -> String {
    let short = if object.len() <= RECORDER_NAME_LIMIT {
        object.to_string()
    } else {
        let keep = object[..RECORDER_NAME_LIMIT - 17].trim_end_matches(['.', '-']);
        format!("{keep}-{:016x}", fnv1a(object))
    };
    format!("{short}.{now_nanos:x}")
}

/// Publishes `event` about `reference`.
pub async fn publish(ctx: &Context, event: &Event, reference: &ObjectReference) {
    let long = reference
        .name
        .as_ref()
        .is_some_and(|n| n.len() > RECORDER_NAME_LIMIT);
    // Normal Events report one-off actions (a stream created or deleted); they need no series,
    // and the recorder would keep each one in memory for minutes: 10,000 objects created at
    // once would hold 10,000 Events.
    let once = event.type_ == kube::runtime::events::EventType::Normal;
    let result = if long || once {
        create(ctx, event, reference).await
    } else {
        ctx.recorder.publish(event, reference).await
    };
    match result {
        // A namespace being deleted takes no new content, Events included: expected while a
        // namespace's Queues are cleaned up, and nothing to warn about.
        Err(kube::Error::Api(s)) if terminating(&s) => tracing::debug!(
            object = reference.name.as_deref(),
            namespace = reference.namespace.as_deref(),
            reason = %event.reason,
            "no Event: the namespace is being deleted"
        ),
        Err(e) => tracing::warn!(
            object = reference.name.as_deref(),
            namespace = reference.namespace.as_deref(),
            reason = %event.reason,
            error = %e,
            "writing an Event failed"
        ),
        Ok(()) => {}
    }
}

/// Whether the API server refused a write because the namespace is being deleted.
fn terminating(s: &kube::core::Status) -> bool {
    s.code == 403
        && s.details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}

async fn create(
    ctx: &Context,
    event: &Event,
    reference: &ObjectReference,
) -> Result<(), kube::Error> {
    let now = Timestamp::now();
    let ns = reference
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let k8s = K8sEvent {
        metadata: ObjectMeta {
            name: Some(event_name(
                reference.name.as_deref().unwrap_or_default(),
                now.as_nanosecond(),
            )),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        action: Some(event.action.clone()),
        reason: Some(event.reason.clone()),
        note: event.note.clone(),
        event_time: Some(MicroTime(now)),
        regarding: Some(reference.clone()),
        reporting_controller: Some(FIELD_MANAGER.into()),
        reporting_instance: Some(
            ctx.config
                .instance
                .clone()
                .unwrap_or_else(|| FIELD_MANAGER.into()),
        ),
        type_: Some(
            match event.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        ..Default::default()
    };
    let api: Api<K8sEvent> = Api::namespaced(ctx.client.clone(), &ns);
    api.create(&PostParams::default(), &k8s).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_fit_for_the_longest_object_names() {
        let longest = "n".repeat(253);
        let name = event_name(&longest, i128::from(u64::MAX));
        assert!(name.len() <= 253, "{}", name.len());
        assert_ne!(
            event_name(&"n".repeat(252), 1),
            event_name(&"m".repeat(252), 1),
            "distinct objects keep distinct Event names"
        );
        assert_eq!(event_name("short", 255), "short.ff");
        let dotted = format!("{}.{}", "a".repeat(218), "b".repeat(30));
        let name = event_name(&dotted, 1);
        assert!(!name.contains(".-") && !name.contains('_'), "{name}");
    }
}
