//! The label keys and values Conveyor puts on the objects it owns, defined once.

use std::collections::BTreeMap;

/// `app.kubernetes.io/name`: the software (`nats`).
pub const NAME: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the owning resource's name.
pub const INSTANCE: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/component`: the role (`broker`).
pub const COMPONENT: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/managed-by`: always `conveyor`.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// `conveyor.dev/broker`: the Broker an object belongs to.
pub const BROKER: &str = "conveyor.dev/broker";
/// The namespace-name label every namespace carries (used in NetworkPolicies).
pub const NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

/// The pod-template annotation holding the hash of a server configuration; a new value rolls the pods.
pub const CONFIG_HASH: &str = "conveyor.dev/config-hash";

/// Value of `app.kubernetes.io/managed-by`.
pub const MANAGER: &str = "conveyor";

/// The labels that select a managed broker's pods. Stable for the Broker's lifetime.
pub fn broker_selector(broker: &str) -> BTreeMap<String, String> {
    software_selector("nats", broker)
}

/// The labels that select the pods of a managed broker running `software` (`nats`, `rabbitmq`).
pub fn software_selector(software: &str, broker: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.into(), software.into()),
        (INSTANCE.into(), broker.into()),
        (BROKER.into(), broker.into()),
    ])
}

/// Every label of an object that belongs to a managed NATS broker.
pub fn broker_labels(broker: &str) -> BTreeMap<String, String> {
    software_labels("nats", broker)
}

/// Every label of an object that belongs to a managed broker running `software`.
pub fn software_labels(software: &str, broker: &str) -> BTreeMap<String, String> {
    let mut labels = software_selector(software, broker);
    labels.insert(COMPONENT.into(), "broker".into());
    labels.insert(MANAGED_BY.into(), MANAGER.into());
    labels
}
