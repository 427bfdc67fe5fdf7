//! The StatefulSet of a managed broker's servers.

use k8s_openapi::api::apps::v1::StatefulSet;
use serde_json::{Value, json};

use super::Plan;
use super::config::{CLIENT_PORT, CLUSTER_PORT, MONITOR_PORT};
use crate::resources::labels::{self, broker_selector};
use crate::resources::pods;

/// Mount points inside the server container.
pub const CONFIG_DIR: &str = "/etc/nats";
pub const DATA_DIR: &str = "/data";
pub const TLS_DIR: &str = "/etc/nats/tls";

/// The NATS version a managed broker runs when the spec names none.
pub const DEFAULT_VERSION: &str = "2.15.3";

/// The container image of a managed broker.
pub fn image(spec: &crate::api::broker::ManagedBroker) -> String {
    pods::image(spec, "nats", "-alpine", DEFAULT_VERSION)
}

/// The hash of everything in the configuration that needs a restart to take effect.
pub fn config_hash(p: &Plan) -> String {
    pods::config_hash(&p.config, p.spec)
}

fn probe(path: &str, period: i32, failures: i32) -> Value {
    json!({
        "httpGet": {"path": path, "port": "monitor"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures
    })
}

/// The servers: stable names, JetStream volumes, probes on the health endpoint, spread across
/// nodes, and a security context that passes the `restricted` Pod Security Standard.
pub fn statefulset(p: &Plan) -> Result<StatefulSet, serde_json::Error> {
    let selector = broker_selector(p.broker);
    let mut pod_labels = labels::broker_labels(p.broker);
    pod_labels.extend(selector.clone());
    let mut mounts = vec![
        json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}),
        json!({"name": "data", "mountPath": DATA_DIR}),
    ];
    let mut volumes = vec![json!({"name": "config", "configMap": {"name": p.names.config}})];
    if let Some(tls) = &p.spec.tls {
        mounts.push(json!({"name": "tls", "mountPath": TLS_DIR, "readOnly": true}));
        volumes.push(json!({"name": "tls", "secret": {"secretName": tls.secret_name}}));
    }
    let mut container = json!({
        "name": "nats",
        "image": image(p.spec),
        "args": ["--config", format!("{CONFIG_DIR}/nats.conf")],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [
            {"name": "client", "containerPort": CLIENT_PORT},
            {"name": "cluster", "containerPort": CLUSTER_PORT},
            {"name": "monitor", "containerPort": MONITOR_PORT}
        ],
        "volumeMounts": mounts,
        "startupProbe": probe("/healthz", 5, 120),
        "livenessProbe": probe("/healthz?js-enabled-only=true", 30, 3),
        "readinessProbe": probe("/healthz?js-enabled-only=true", 10, 3),
        // The image's entrypoint execs nats-server, so it is PID 1: lame-duck mode hands the
        // clients over to the other servers before the pod stops.
        "lifecycle": {"preStop": {"exec": {"command": ["nats-server", "--signal", "ldm=1"]}}},
        "securityContext": pods::restricted_container()
    });
    container["securityContext"]["readOnlyRootFilesystem"] = json!(true);
    if let Some(resources) = &p.spec.resources {
        container["resources"] = serde_json::to_value(resources)?;
    }
    let mut sts: StatefulSet = serde_json::from_value(json!({
        "spec": {
            "replicas": p.replicas,
            "serviceName": p.names.cluster,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": selector},
            "persistentVolumeClaimRetentionPolicy": pods::claim_retention(p.spec),
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {labels::CONFIG_HASH: config_hash(p)}},
                "spec": {
                    "containers": [container],
                    "volumes": volumes,
                    "terminationGracePeriodSeconds": 60,
                    "enableServiceLinks": false,
                    "automountServiceAccountToken": false,
                    "securityContext": pods::restricted_pod(1000),
                    "topologySpreadConstraints": pods::spread(&selector)
                }
            },
            "volumeClaimTemplates": [pods::data_claim(p.spec, &selector)]
        }
    }))?;
    sts.metadata = p.meta(&p.names.servers);
    Ok(sts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::nats::tests::{plan, spec};

    #[test]
    fn servers_are_stable_spread_and_restricted() {
        let s = spec();
        let sts = statefulset(&plan(&s)).unwrap();
        let v = serde_json::to_value(&sts).unwrap();
        let spec = &v["spec"];
        assert_eq!(spec["replicas"], json!(3));
        assert_eq!(spec["serviceName"], json!("events-nats-cluster"));
        assert_eq!(
            spec["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
            json!("Retain")
        );
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], json!(true));
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            json!("RuntimeDefault")
        );
        let c = &pod["containers"][0];
        assert_eq!(c["image"], json!("nats:2.15.3-alpine"));
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"],
            json!(false)
        );
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"],
            json!("/healthz?js-enabled-only=true")
        );
        assert_eq!(
            pod["topologySpreadConstraints"][0]["topologyKey"],
            json!("kubernetes.io/hostname")
        );
        assert_eq!(
            spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            json!("10Gi")
        );
        assert!(
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v.get("hostPath").is_none())
        );
    }

    #[test]
    fn config_changes_change_the_pod_template() {
        let s = spec();
        let mut a = plan(&s);
        let before = config_hash(&a);
        a.config.push_str("max_payload: 2048\n");
        assert_ne!(before, config_hash(&a));
    }

    #[test]
    fn delete_policy_and_tls_are_honoured() {
        let s: crate::api::broker::ManagedBroker = serde_json::from_value(
            json!({"storage": {"deletionPolicy": "Delete"}, "tls": {"secretName": "events-tls"}}),
        )
        .unwrap();
        let v = serde_json::to_value(statefulset(&plan(&s)).unwrap()).unwrap();
        assert_eq!(
            v["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
            json!("Delete")
        );
        let volumes = v["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
        assert!(
            volumes
                .iter()
                .any(|v| v["secret"]["secretName"] == json!("events-tls"))
        );
    }
}
