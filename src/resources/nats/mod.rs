//! Pure builders of the Kubernetes objects that make up a managed NATS broker: a StatefulSet
//! of servers clustered through a headless Service, a client Service, the configuration, a
//! PodDisruptionBudget and a NetworkPolicy. Names are deterministic and fit DNS labels because
//! a Broker's name is at most 40 characters (a CEL rule on the CRD).

pub mod config;
pub mod managed;
pub mod statefulset;

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;
use serde_json::json;

use self::config::{CLIENT_PORT, CLUSTER_PORT, MONITOR_PORT};
use super::labels::{self, broker_labels, broker_selector};

/// The names of everything a managed broker owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// StatefulSet, client Service, PodDisruptionBudget and NetworkPolicy.
    pub servers: String,
    /// The headless Service that gives each server a stable DNS name for routes.
    pub cluster: String,
    /// The ConfigMap with `nats.conf`.
    pub config: String,
    /// The Secret with the operator and account keys.
    pub auth: String,
}

impl Names {
    pub fn new(broker: &str) -> Self {
        Self {
            servers: format!("{broker}-nats"),
            cluster: format!("{broker}-nats-cluster"),
            config: format!("{broker}-nats-config"),
            auth: format!("{broker}-nats-auth"),
        }
    }

    /// The route URL of server `ordinal`.
    pub fn route(&self, namespace: &str, ordinal: i32) -> String {
        format!(
            "nats://{}-{ordinal}.{}.{namespace}.svc:{CLUSTER_PORT}",
            self.servers, self.cluster
        )
    }

    /// The URL clients in the cluster use.
    pub fn client_url(&self, namespace: &str, tls: bool) -> String {
        let scheme = if tls { "tls" } else { "nats" };
        format!("{scheme}://{}.{namespace}.svc:{CLIENT_PORT}", self.servers)
    }
}

/// What the builders need to know about one managed broker.
#[derive(Clone, Debug)]
pub struct Plan<'a> {
    pub broker: &'a str,
    pub namespace: &'a str,
    pub names: Names,
    pub spec: &'a crate::api::broker::ManagedBroker,
    /// Replicas to run; may differ from the spec while a scale-down is refused.
    pub replicas: i32,
    /// Namespaces whose pods may reach the client port, besides the Broker's own; `*` for all.
    pub client_namespaces: Vec<String>,
    /// The rendered `nats.conf`.
    pub config: String,
    pub owner: OwnerReference,
}

impl Plan<'_> {
    fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.to_string()),
            labels: Some(broker_labels(self.broker)),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
    }
}

/// The ConfigMap holding `nats.conf`.
pub fn config_map(p: &Plan) -> ConfigMap {
    ConfigMap {
        metadata: p.meta(&p.names.config),
        data: Some([("nats.conf".to_string(), p.config.clone())].into()),
        ..Default::default()
    }
}

fn service(p: &Plan, name: &str, headless: bool) -> Result<Service, serde_json::Error> {
    let mut ports = vec![
        json!({"name": "client", "port": CLIENT_PORT, "targetPort": "client", "appProtocol": "nats"}),
    ];
    if headless {
        ports.push(json!({"name": "cluster", "port": CLUSTER_PORT, "targetPort": "cluster"}));
        ports.push(json!({"name": "monitor", "port": MONITOR_PORT, "targetPort": "monitor", "appProtocol": "http"}));
    }
    let mut spec = json!({"selector": broker_selector(p.broker), "ports": ports});
    if headless {
        spec["clusterIP"] = json!("None");
        spec["publishNotReadyAddresses"] = json!(true);
    }
    let mut svc: Service = serde_json::from_value(json!({"spec": spec}))?;
    svc.metadata = p.meta(name);
    Ok(svc)
}

/// The Service clients connect to.
pub fn client_service(p: &Plan) -> Result<Service, serde_json::Error> {
    service(p, &p.names.servers, false)
}

/// The headless Service that names each server for cluster routes.
pub fn cluster_service(p: &Plan) -> Result<Service, serde_json::Error> {
    service(p, &p.names.cluster, true)
}

/// At most one server down at a time by voluntary disruption, so a 3- or 5-server cluster
/// keeps its quorum.
pub fn disruption_budget(p: &Plan) -> Result<PodDisruptionBudget, serde_json::Error> {
    let mut pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": broker_selector(p.broker)}}
    }))?;
    pdb.metadata = p.meta(&p.names.servers);
    Ok(pdb)
}

/// Admits the client port from the allowed namespaces only, and routes and monitoring from
/// the broker's own servers (probes come from the kubelet, which NetworkPolicies do not block).
pub fn network_policy(p: &Plan) -> Result<NetworkPolicy, serde_json::Error> {
    let clients = if p.client_namespaces.iter().any(|n| n == "*") {
        json!([{"namespaceSelector": {}}])
    } else {
        let mut names: Vec<&str> = p.client_namespaces.iter().map(String::as_str).collect();
        names.push(p.namespace);
        names.sort_unstable();
        names.dedup();
        json!([{"namespaceSelector": {"matchExpressions": [
            {"key": labels::NAMESPACE_NAME, "operator": "In", "values": names}
        ]}}])
    };
    let mut np: NetworkPolicy = serde_json::from_value(json!({
        "spec": {
            "podSelector": {"matchLabels": broker_selector(p.broker)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": clients, "ports": [{"protocol": "TCP", "port": CLIENT_PORT}]},
                {
                    "from": [{"podSelector": {"matchLabels": broker_selector(p.broker)}}],
                    "ports": [
                        {"protocol": "TCP", "port": CLIENT_PORT},
                        {"protocol": "TCP", "port": CLUSTER_PORT},
                        {"protocol": "TCP", "port": MONITOR_PORT}
                    ]
                }
            ]
        }
    }))?;
    np.metadata = p.meta(&p.names.servers);
    Ok(np)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::broker::ManagedBroker;

    pub fn spec() -> ManagedBroker {
        serde_json::from_value(json!({})).unwrap()
    }

    pub fn plan(spec: &ManagedBroker) -> Plan<'_> {
        Plan {
            broker: "events",
            namespace: "shop",
            names: Names::new("events"),
            spec,
            replicas: spec.replicas,
            client_namespaces: vec!["billing".into()],
            config: "listen: 4222\n".into(),
            owner: OwnerReference {
                name: "events".into(),
                uid: "u1".into(),
                controller: Some(true),
                ..Default::default()
            },
        }
    }

    #[test]
    fn names_fit_dns_labels_for_the_longest_broker_name() {
        let n = Names::new(&"b".repeat(40));
        for name in [&n.servers, &n.cluster, &n.config, &n.auth] {
            assert!(name.len() <= 63, "{name}");
        }
        // pod names are `<statefulset>-<ordinal>` and get a revision-hash label of about 11 more characters
        assert!(n.servers.len() + 11 <= 63);
        assert_eq!(
            Names::new("events").route("shop", 2),
            "nats://events-nats-2.events-nats-cluster.shop.svc:6222"
        );
    }

    #[test]
    fn headless_service_publishes_unready_servers_for_cluster_formation() {
        let s = spec();
        let svc = cluster_service(&plan(&s)).unwrap();
        let sp = svc.spec.unwrap();
        assert_eq!(sp.cluster_ip.as_deref(), Some("None"));
        assert_eq!(sp.publish_not_ready_addresses, Some(true));
        assert_eq!(sp.ports.unwrap().len(), 3);
        let client = client_service(&plan(&s)).unwrap();
        assert_eq!(client.spec.unwrap().cluster_ip, None);
        assert_eq!(client.metadata.owner_references.unwrap()[0].uid, "u1");
    }

    #[test]
    fn network_policy_admits_clients_only_from_allowed_namespaces() {
        let s = spec();
        let np = network_policy(&plan(&s)).unwrap();
        let v = serde_json::to_value(&np).unwrap();
        let values = &v["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"]
            [0]["values"];
        assert_eq!(values, &json!(["billing", "shop"]));
        let mut p = plan(&s);
        p.client_namespaces = vec!["*".into()];
        let v = serde_json::to_value(network_policy(&p).unwrap()).unwrap();
        assert_eq!(
            v["spec"]["ingress"][0]["from"][0]["namespaceSelector"],
            json!({})
        );
    }

    #[test]
    fn disruption_budget_allows_one_server_down() {
        let s = spec();
        let pdb = disruption_budget(&plan(&s)).unwrap();
        let v = serde_json::to_value(&pdb).unwrap();
        assert_eq!(v["spec"]["maxUnavailable"], json!(1));
    }
}
