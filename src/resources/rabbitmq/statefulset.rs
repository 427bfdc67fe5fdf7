//! The StatefulSet of a managed RabbitMQ broker's nodes.

use k8s_openapi::api::apps::v1::StatefulSet;
use serde_json::{Value, json};

use super::config::{
    AMQP_PORT, AMQPS_PORT, DIST_PORT, EPMD_PORT, MANAGEMENT_PORT, MANAGEMENT_TLS_PORT,
};
use super::{DEFAULT_VERSION, Plan, SOFTWARE, keys};
use crate::api::broker::ManagedBroker;
use crate::resources::labels::{self, software_labels};
use crate::resources::pods;

/// Mount points inside the node's container.
pub const CONF_DIR: &str = "/etc/rabbitmq/conf.d";
pub const PLUGINS_DIR: &str = "/etc/conveyor";
pub const HOME_DIR: &str = "/var/lib/rabbitmq";
pub const DATA_DIR: &str = "/var/lib/rabbitmq/mnesia";
pub const TLS_DIR: &str = "/etc/rabbitmq/tls";
const COOKIE_DIR: &str = "/etc/conveyor-cookie";

/// The user and group of the official image's `rabbitmq` account.
const RABBITMQ_UID: i64 = 999;

/// The container image of a managed broker.
pub fn image(spec: &ManagedBroker) -> String {
    pods::image(spec, "rabbitmq", "", DEFAULT_VERSION)
}

fn ports(p: &Plan) -> Vec<Value> {
    let mut v = vec![
        json!({"name": "epmd", "containerPort": EPMD_PORT}),
        json!({"name": "cluster-rpc", "containerPort": DIST_PORT}),
        json!({"name": "amqp", "containerPort": AMQP_PORT}),
        json!({"name": "management", "containerPort": MANAGEMENT_PORT}),
    ];
    if p.tls() {
        v.push(json!({"name": "amqps", "containerPort": AMQPS_PORT}));
        v.push(json!({"name": "management-tls", "containerPort": MANAGEMENT_TLS_PORT}));
    }
    v
}

fn volumes(p: &Plan) -> Vec<Value> {
    let mut v = vec![
        json!({"name": "conf", "projected": {"sources": [
            {"configMap": {"name": p.names.config, "items": [{"key": "rabbitmq.conf", "path": "10-conveyor.conf"}]}},
            {"secret": {"name": p.names.auth, "items": [{"key": keys::DEFAULT_USER_CONF, "path": "90-default-user.conf"}]}}
        ]}}),
        json!({"name": "plugins", "configMap": {"name": p.names.config, "items": [{"key": "enabled_plugins", "path": "enabled_plugins"}]}}),
        json!({"name": "cookie", "secret": {"secretName": p.names.auth, "items": [{"key": keys::ERLANG_COOKIE, "path": ".erlang.cookie"}]}}),
        json!({"name": "home", "emptyDir": {}}),
    ];
    if let Some(tls) = &p.input.spec.tls {
        v.push(json!({"name": "tls", "secret": {"secretName": tls.secret_name}}));
    }
    v
}

fn node_container(p: &Plan) -> Result<Value, serde_json::Error> {
    let env = |name: &str, value: &str| json!({"name": name, "value": value});
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let mut mounts = vec![
        json!({"name": "conf", "mountPath": CONF_DIR, "readOnly": true}),
        json!({"name": "plugins", "mountPath": PLUGINS_DIR, "readOnly": true}),
        json!({"name": "home", "mountPath": HOME_DIR}),
        json!({"name": "data", "mountPath": DATA_DIR}),
    ];
    if p.tls() {
        mounts.push(json!({"name": "tls", "mountPath": TLS_DIR, "readOnly": true}));
    }
    let mut container = json!({
        "name": SOFTWARE,
        "image": image(p.input.spec),
        "env": [
            field("MY_POD_NAME", "metadata.name"),
            field("MY_POD_NAMESPACE", "metadata.namespace"),
            env("K8S_SERVICE_NAME", &p.names.nodes),
            env("RABBITMQ_USE_LONGNAME", "true"),
            env("RABBITMQ_NODENAME", "rabbit@$(MY_POD_NAME).$(K8S_SERVICE_NAME).$(MY_POD_NAMESPACE)"),
            env("K8S_HOSTNAME_SUFFIX", ".$(K8S_SERVICE_NAME).$(MY_POD_NAMESPACE)"),
            env("RABBITMQ_CONFIG_FILES", CONF_DIR),
            env("RABBITMQ_ENABLED_PLUGINS_FILE", &format!("{PLUGINS_DIR}/enabled_plugins")),
            env("RABBITMQ_MNESIA_BASE", DATA_DIR)
        ],
        "ports": ports(p),
        "volumeMounts": mounts,
        "readinessProbe": {"tcpSocket": {"port": "amqp"}, "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        // Hand quorum queue leadership and clients over before the node stops, and never stop
        // a node whose quorum queues would lose their majority.
        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c",
            "rabbitmq-upgrade await_online_quorum_plus_one -t 3000; rabbitmq-upgrade drain -t 3000"]}}},
        "securityContext": pods::restricted_container()
    });
    if let Some(resources) = &p.input.spec.resources {
        container["resources"] = serde_json::to_value(resources)?;
    }
    Ok(container)
}

/// The Erlang cookie must be a file only its owner can read; a Secret volume cannot give it
/// that mode for a non-root user, so a first container copies it into the node's home.
fn cookie_container(p: &Plan) -> Value {
    json!({
        "name": "erlang-cookie",
        "image": image(p.input.spec),
        "command": ["/bin/sh", "-c", format!(
            "cp {COOKIE_DIR}/.erlang.cookie {HOME_DIR}/.erlang.cookie && chmod 600 {HOME_DIR}/.erlang.cookie"
        )],
        "volumeMounts": [
            {"name": "cookie", "mountPath": COOKIE_DIR, "readOnly": true},
            {"name": "home", "mountPath": HOME_DIR}
        ],
        "securityContext": pods::restricted_container()
    })
}

/// The nodes: stable long names, data volumes, peer discovery through their ServiceAccount,
/// spread across nodes, and a security context that passes the `restricted` Pod Security
/// Standard.
pub fn statefulset(p: &Plan) -> Result<StatefulSet, serde_json::Error> {
    let selector = p.selector();
    let mut pod_labels = software_labels(SOFTWARE, p.input.broker);
    pod_labels.extend(selector.clone());
    let spec = p.input.spec;
    let mut sts: StatefulSet = serde_json::from_value(json!({
        "spec": {
            "replicas": p.input.replicas,
            "serviceName": p.names.nodes,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": selector},
            "persistentVolumeClaimRetentionPolicy": pods::claim_retention(spec),
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {labels::CONFIG_HASH: pods::config_hash(&p.config, spec)}},
                "spec": {
                    "serviceAccountName": p.names.servers,
                    "initContainers": [cookie_container(p)],
                    "containers": [node_container(p)?],
                    "volumes": volumes(p),
                    "terminationGracePeriodSeconds": 3600,
                    "enableServiceLinks": false,
                    "securityContext": pods::restricted_pod(RABBITMQ_UID),
                    "topologySpreadConstraints": pods::spread(&selector)
                }
            },
            "volumeClaimTemplates": [pods::data_claim(spec, &selector)]
        }
    }))?;
    sts.metadata = p.meta(&p.names.servers);
    Ok(sts)
}
