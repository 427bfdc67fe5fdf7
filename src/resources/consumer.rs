//! Pure builders of what an EventSubscription's consumer workload needs: the Secret with its
//! connection settings (documented keys, usable with `envFrom`) and, for `consumer.template`,
//! the Deployment Conveyor owns. Conveyor never sets the Deployment's `replicas`: the API
//! server starts it at 1 and the autoscaler (or the user) owns the count from then on.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{EnvFromSource, PodTemplateSpec, Secret, SecretEnvSource};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};

use super::labels::{MANAGED_BY, MANAGER};

/// `conveyor.dev/subscription`: the EventSubscription a workload or Secret belongs to.
pub const SUBSCRIPTION: &str = "conveyor.dev/subscription";

/// The keys of a subscription's Secret.
pub mod keys {
    /// `nats` or `rabbitmq`.
    pub const ENGINE: &str = "CONVEYOR_ENGINE";
    /// The broker's client URLs, comma-separated (`nats://…`, `amqp://…`).
    pub const URLS: &str = "CONVEYOR_URLS";
    /// RabbitMQ only: the virtual host.
    pub const VIRTUAL_HOST: &str = "CONVEYOR_VIRTUAL_HOST";
    /// The stream (NATS) or queue or exchange (RabbitMQ) the consumer reads from.
    pub const SOURCE: &str = "CONVEYOR_SOURCE";
    /// The durable consumer (NATS) or the queue to consume (RabbitMQ).
    pub const CONSUMER: &str = "CONVEYOR_CONSUMER";
    /// The event types received, comma-separated; empty: every type.
    pub const EVENT_TYPES: &str = "CONVEYOR_EVENT_TYPES";
    /// Messages in flight at once across all replicas (a RabbitMQ consumer's prefetch bound).
    pub const MAX_ACK_PENDING: &str = "CONVEYOR_MAX_ACK_PENDING";
    /// `namespace/name` of the EventSubscription.
    pub const SUBSCRIPTION: &str = "CONVEYOR_SUBSCRIPTION";
    /// With dead letters: the stream (NATS) or queue (RabbitMQ) that keeps them.
    pub const DEAD_LETTER: &str = "CONVEYOR_DEAD_LETTER";
    /// RabbitMQ: the subscription's own user, which may only consume from `CONVEYOR_CONSUMER`.
    pub const USERNAME: &str = "CONVEYOR_USERNAME";
    /// RabbitMQ: that user's password.
    pub const PASSWORD: &str = "CONVEYOR_PASSWORD";
    /// NATS: the creds file (user JWT and seed) of the subscription's own user.
    pub const CREDS: &str = "CONVEYOR_CREDS";
    /// NATS: the inbox prefix the client must use; the user receives replies there only.
    pub const INBOX_PREFIX: &str = "CONVEYOR_INBOX_PREFIX";
}

/// The Secret of the subscription `name`: `<name>-consumer`.
pub fn secret_name(subscription: &str) -> String {
    format!("{subscription}-consumer")
}

fn labels(subscription: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.into(), MANAGER.into()),
        (SUBSCRIPTION.into(), subscription.into()),
    ])
}

/// The Secret holding `settings` for the subscription `name` in `namespace`.
pub fn secret(
    name: &str,
    namespace: &str,
    owner: OwnerReference,
    settings: &BTreeMap<&'static str, String>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(name)),
            namespace: Some(namespace.into()),
            labels: Some(labels(name)),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: Some(
            settings
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// The Deployment made from the subscription's pod template: its labels and the selector
/// label added, and every container given the subscription's Secret as environment.
pub fn deployment(
    name: &str,
    namespace: &str,
    owner: OwnerReference,
    template: &PodTemplateSpec,
) -> Deployment {
    let selector = BTreeMap::from([(SUBSCRIPTION.to_string(), name.to_string())]);
    let mut template = template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(Default::default)
        .extend(selector.clone());
    let from_secret = EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: secret_name(name),
            optional: Some(false),
        }),
        ..Default::default()
    };
    if let Some(spec) = template.spec.as_mut() {
        for c in &mut spec.containers {
            let env_from = c.env_from.get_or_insert_with(Vec::new);
            if !env_from.contains(&from_secret) {
                env_from.push(from_secret.clone());
            }
        }
    }
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels(name)),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: DeploymentSpec {
            // Never set: see the module's doc.
            replicas: None,
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> PodTemplateSpec {
        serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "payment"}},
            "spec": {"containers": [
                {"name": "app", "image": "shop/payment:1"},
                {"name": "sidecar", "image": "shop/log:1", "envFrom": [{"configMapRef": {"name": "x"}}]}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn the_deployment_selects_its_pods_injects_the_secret_and_leaves_replicas_alone() {
        let d = deployment("payment", "shop", OwnerReference::default(), &template());
        let spec = d.spec;
        assert_eq!(spec.replicas, None);
        let selector = spec.selector.match_labels.unwrap();
        assert_eq!(selector[SUBSCRIPTION], "payment");
        let labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["app"], "payment", "the template's own labels stay");
        assert_eq!(labels[SUBSCRIPTION], "payment");
        for c in spec.template.spec.unwrap().containers {
            let env_from = c.env_from.unwrap();
            let secrets: Vec<_> = env_from
                .iter()
                .filter_map(|e| e.secret_ref.as_ref())
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(secrets, ["payment-consumer"], "{}", c.name);
        }
    }

    #[test]
    fn the_secret_carries_every_setting() {
        let settings = BTreeMap::from([(keys::ENGINE, "nats".to_string())]);
        let s = secret("payment", "shop", OwnerReference::default(), &settings);
        assert_eq!(s.metadata.name.as_deref(), Some("payment-consumer"));
        assert_eq!(s.data.unwrap()[keys::ENGINE].0, b"nats");
    }
}
