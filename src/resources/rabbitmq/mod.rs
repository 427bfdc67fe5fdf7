//! Pure builders of the Kubernetes objects that make up a managed RabbitMQ broker, and its
//! managed-broker strategy: a StatefulSet of nodes named through a headless Service and
//! clustered by Kubernetes peer discovery, a client Service, `rabbitmq.conf` and
//! `enabled_plugins` in a ConfigMap, the Erlang cookie and Conveyor's administrator in the
//! broker's Secret, the pod identity peer discovery needs, a PodDisruptionBudget and a
//! NetworkPolicy. Names fit DNS labels because a Broker's name is at most 40 characters.

pub mod config;
mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::ObjectMeta;
use serde_json::json;

use self::config::{
    AMQP_PORT, AMQPS_PORT, ConfigInput, DIST_PORT, EPMD_PORT, MANAGEMENT_PORT, MANAGEMENT_TLS_PORT,
    PeerDiscovery,
};
use super::labels::{self, software_labels, software_selector};
use super::managed::{
    ManagedEngine, ManagedInput, ManagedObjects, ManagedPlan, PeerAccess, PlanError, built,
};
use super::quantity;
use crate::api::broker::ManagedBroker;
use crate::engine::Engine;
use crate::engine::registry::{Auth, ConnectRequest};

/// The software label of RabbitMQ brokers' objects.
pub const SOFTWARE: &str = "rabbitmq";
/// The RabbitMQ version a managed broker runs when the spec names none.
pub const DEFAULT_VERSION: &str = "4.1.4";
/// The user Conveyor administers the broker as.
pub const CONVEYOR_USER: &str = "conveyor";

/// The keys of the broker's Secret.
pub mod keys {
    pub const ERLANG_COOKIE: &str = "erlang-cookie";
    pub const PASSWORD: &str = "conveyor-password";
    /// `conf.d` file that creates Conveyor's administrator on a new cluster.
    pub const DEFAULT_USER_CONF: &str = "default_user.conf";
}

/// The names of everything a managed RabbitMQ broker owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// StatefulSet, client Service, PodDisruptionBudget, NetworkPolicy, ServiceAccount, Role.
    pub servers: String,
    /// The headless Service that names each node.
    pub nodes: String,
    /// The ConfigMap with `rabbitmq.conf` and `enabled_plugins`.
    pub config: String,
    /// The Secret with the Erlang cookie and Conveyor's credentials.
    pub auth: String,
}

impl Names {
    pub fn new(broker: &str) -> Self {
        Self {
            servers: format!("{broker}-rabbitmq"),
            nodes: format!("{broker}-rabbitmq-nodes"),
            config: format!("{broker}-rabbitmq-config"),
            auth: format!("{broker}-rabbitmq-auth"),
        }
    }

    /// The client Service's host name.
    pub fn host(&self, namespace: &str) -> String {
        format!("{}.{namespace}.svc", self.servers)
    }
}

/// What the builders need to know about one managed RabbitMQ broker.
pub struct Plan<'a> {
    pub input: &'a ManagedInput<'a>,
    pub names: Names,
    /// The rendered `rabbitmq.conf`.
    pub config: String,
}

impl Plan<'_> {
    fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.input.namespace.to_string()),
            labels: Some(software_labels(SOFTWARE, self.input.broker)),
            owner_references: Some(vec![self.input.owner.clone()]),
            ..Default::default()
        }
    }

    fn selector(&self) -> BTreeMap<String, String> {
        software_selector(SOFTWARE, self.input.broker)
    }

    fn tls(&self) -> bool {
        self.input.spec.tls.is_some()
    }
}

/// A random string of `len` letters and digits.
fn random_text(len: usize) -> Result<String, PlanError> {
    use ring::rand::{SecureRandom, SystemRandom};
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PlanError::Credentials("the system random generator failed".into()))?;
    // 62 letters: the bias of `% 62` on a byte is below 1 %, irrelevant for a 48-character secret.
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}

/// Managed RabbitMQ brokers.
pub struct RabbitmqManaged;

impl ManagedEngine for RabbitmqManaged {
    fn statefulset_name(&self, broker: &str) -> String {
        Names::new(broker).servers
    }

    fn secret_name(&self, broker: &str) -> String {
        Names::new(broker).auth
    }

    fn keeps_secret(&self, _spec: &ManagedBroker) -> bool {
        true
    }

    fn new_secret(&self, _broker: &str, _iat: i64) -> Result<BTreeMap<String, String>, PlanError> {
        let password = random_text(32)?;
        Ok(BTreeMap::from([
            (keys::ERLANG_COOKIE.to_string(), random_text(48)?),
            (
                keys::DEFAULT_USER_CONF.to_string(),
                config::default_user(CONVEYOR_USER, &password),
            ),
            (keys::PASSWORD.to_string(), password),
        ]))
    }

    fn tls_secret<'a>(&self, spec: &'a ManagedBroker) -> Option<&'a str> {
        spec.tls.as_ref().map(|t| t.secret_name.as_str())
    }

    fn plan(&self, input: &ManagedInput) -> Result<ManagedPlan, PlanError> {
        let names = Names::new(input.broker);
        let password = input
            .secret
            .and_then(|s| s.get(keys::PASSWORD))
            .filter(|_| input.secret.is_some_and(|s| s.contains_key(keys::ERLANG_COOKIE)))
            .ok_or_else(|| {
                PlanError::Credentials(format!(
                    "Secret {}/{} lacks {} or {}; restore it from a backup (a new cookie would split the cluster from its data)",
                    input.namespace,
                    names.auth,
                    keys::PASSWORD,
                    keys::ERLANG_COOKIE
                ))
            })?;
        let plan = Plan {
            config: config::render(&config_input(input, &names)),
            input,
            names,
        };
        let host = plan.names.host(input.namespace);
        let (amqp, management) = if plan.tls() {
            (
                format!("amqps://{host}:{AMQPS_PORT}"),
                format!("https://{host}:{MANAGEMENT_TLS_PORT}"),
            )
        } else {
            (
                format!("amqp://{host}:{AMQP_PORT}"),
                format!("http://{host}:{MANAGEMENT_PORT}"),
            )
        };
        let connect = ConnectRequest {
            engine: Engine::Rabbitmq,
            urls: vec![amqp.clone()],
            management_url: Some(management),
            virtual_host: None,
            auth: Auth::UserPassword(CONVEYOR_USER.into(), password.clone()),
            ca_pem: input.ca_pem.clone(),
            only_listed_urls: true,
            issuer: None,
        };
        let objects = ManagedObjects {
            config_map: config_map(&plan),
            services: vec![
                built("the nodes Service", nodes_service(&plan))?,
                built("the client Service", client_service(&plan))?,
            ],
            disruption_budget: built("the PodDisruptionBudget", disruption_budget(&plan))?,
            network_policy: built("the NetworkPolicy", network_policy(&plan))?,
            peer_access: Some(built("the peer-discovery identity", peer_access(&plan))?),
            statefulset: built("the StatefulSet", statefulset::statefulset(&plan))?,
        };
        Ok(ManagedPlan {
            objects,
            connect,
            endpoint: amqp,
        })
    }
}

fn config_input(input: &ManagedInput, names: &Names) -> ConfigInput {
    let volume = quantity::bytes(&input.spec.storage.size).unwrap_or(1 << 30);
    ConfigInput {
        cluster: input.broker.to_string(),
        nodes_service: names.nodes.clone(),
        namespace: input.namespace.to_string(),
        replicas: input.replicas,
        // A tenth of the volume, at most 2 GB: the node refuses publishes before it fills up.
        disk_free_limit: (volume / 10).min(2_000_000_000),
        tls_dir: input
            .spec
            .tls
            .as_ref()
            .map(|_| statefulset::TLS_DIR.to_string()),
        amqp_port: AMQP_PORT,
        management_port: MANAGEMENT_PORT,
        peer_discovery: PeerDiscovery::default(),
    }
}

/// The ConfigMap holding `rabbitmq.conf` and `enabled_plugins`.
pub fn config_map(p: &Plan) -> ConfigMap {
    ConfigMap {
        metadata: p.meta(&p.names.config),
        data: Some(
            [
                ("rabbitmq.conf".to_string(), p.config.clone()),
                (
                    "enabled_plugins".to_string(),
                    config::ENABLED_PLUGINS.to_string(),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

fn client_ports(p: &Plan) -> Vec<serde_json::Value> {
    if p.tls() {
        vec![
            json!({"name": "amqps", "port": AMQPS_PORT, "targetPort": "amqps", "appProtocol": "amqps"}),
            json!({"name": "management-tls", "port": MANAGEMENT_TLS_PORT, "targetPort": "management-tls", "appProtocol": "https"}),
        ]
    } else {
        vec![
            json!({"name": "amqp", "port": AMQP_PORT, "targetPort": "amqp", "appProtocol": "amqp"}),
            json!({"name": "management", "port": MANAGEMENT_PORT, "targetPort": "management", "appProtocol": "http"}),
        ]
    }
}

/// The Service clients and Conveyor connect to.
pub fn client_service(p: &Plan) -> Result<Service, serde_json::Error> {
    let mut svc: Service = serde_json::from_value(json!({
        "spec": {"selector": p.selector(), "ports": client_ports(p)}
    }))?;
    svc.metadata = p.meta(&p.names.servers);
    Ok(svc)
}

/// The headless Service that gives each node its stable name, published before the node is
/// ready so that peers find each other while they form the cluster.
pub fn nodes_service(p: &Plan) -> Result<Service, serde_json::Error> {
    let mut svc: Service = serde_json::from_value(json!({
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": p.selector(),
            "ports": [
                {"name": "epmd", "port": EPMD_PORT, "targetPort": "epmd"},
                {"name": "cluster-rpc", "port": DIST_PORT, "targetPort": "cluster-rpc"}
            ]
        }
    }))?;
    svc.metadata = p.meta(&p.names.nodes);
    Ok(svc)
}

/// At most one node down at a time by voluntary disruption, so quorum queues keep a majority.
pub fn disruption_budget(p: &Plan) -> Result<PodDisruptionBudget, serde_json::Error> {
    let mut pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": p.selector()}}
    }))?;
    pdb.metadata = p.meta(&p.names.servers);
    Ok(pdb)
}

/// Admits AMQP and the management API from the allowed namespaces, and clustering traffic
/// (epmd, Erlang distribution, the CLI tools' ports) only from the broker's own nodes.
pub fn network_policy(p: &Plan) -> Result<NetworkPolicy, serde_json::Error> {
    let clients = if p.input.client_namespaces.iter().any(|n| n == "*") {
        json!([{"namespaceSelector": {}}])
    } else {
        let mut names: Vec<&str> = p
            .input
            .client_namespaces
            .iter()
            .map(String::as_str)
            .collect();
        names.push(p.input.namespace);
        names.sort_unstable();
        names.dedup();
        json!([{"namespaceSelector": {"matchExpressions": [
            {"key": labels::NAMESPACE_NAME, "operator": "In", "values": names}
        ]}}])
    };
    let client_ports: Vec<serde_json::Value> = client_ports(p)
        .iter()
        .map(|port| json!({"protocol": "TCP", "port": port["port"]}))
        .collect();
    let mut np: NetworkPolicy = serde_json::from_value(json!({
        "spec": {
            "podSelector": {"matchLabels": p.selector()},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": clients, "ports": client_ports},
                {
                    "from": [{"podSelector": {"matchLabels": p.selector()}}],
                    "ports": [
                        {"protocol": "TCP", "port": EPMD_PORT},
                        {"protocol": "TCP", "port": DIST_PORT},
                        {"protocol": "TCP", "port": 35672, "endPort": 35682}
                    ]
                }
            ]
        }
    }))?;
    np.metadata = p.meta(&p.names.servers);
    Ok(np)
}

/// The ServiceAccount of the nodes, allowed to read their own Service's endpoints (peer
/// discovery) and to record Events, in the Broker's namespace only.
pub fn peer_access(p: &Plan) -> Result<PeerAccess, serde_json::Error> {
    let name = &p.names.servers;
    let mut service_account: ServiceAccount = serde_json::from_value(json!({}))?;
    service_account.metadata = p.meta(name);
    let mut role: Role = serde_json::from_value(json!({
        "rules": [
            {"apiGroups": [""], "resources": ["endpoints"], "resourceNames": [p.names.nodes], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}
        ]
    }))?;
    role.metadata = p.meta(name);
    let mut role_binding: RoleBinding = serde_json::from_value(json!({
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": p.input.namespace}]
    }))?;
    role_binding.metadata = p.meta(name);
    Ok(PeerAccess {
        service_account,
        role,
        role_binding,
    })
}

#[cfg(test)]
mod tests;
