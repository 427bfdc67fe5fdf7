//! The configuration of a managed RabbitMQ broker, rendered as text: `rabbitmq.conf` (in the
//! ConfigMap, no secrets), `enabled_plugins`, and the default-user file that holds Conveyor's
//! own credentials (in the broker's Secret).

use std::fmt::Write;

/// Ports of a managed broker's nodes.
pub const AMQP_PORT: u16 = 5672;
pub const AMQPS_PORT: u16 = 5671;
pub const MANAGEMENT_PORT: u16 = 15672;
pub const MANAGEMENT_TLS_PORT: u16 = 15671;
pub const EPMD_PORT: u16 = 4369;
pub const DIST_PORT: u16 = 25672;

/// The plugins every node runs.
pub const ENABLED_PLUGINS: &str = "[rabbitmq_management,rabbitmq_peer_discovery_k8s].\n";

/// Where the Kubernetes peer-discovery backend finds the API server and its credentials
/// (overridable so that a test can boot a real node on the rendered configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerDiscovery {
    pub scheme: String,
    pub host: String,
    pub port: u16,
    pub token_path: Option<String>,
    pub cert_path: Option<String>,
    pub namespace_path: Option<String>,
}

impl Default for PeerDiscovery {
    fn default() -> Self {
        Self {
            scheme: "https".into(),
            host: "kubernetes.default.svc".into(),
            port: 443,
            token_path: None,
            cert_path: None,
            namespace_path: None,
        }
    }
}

/// Everything `rabbitmq.conf` depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigInput {
    /// The Broker's name: the cluster's name.
    pub cluster: String,
    /// The headless Service that names each node.
    pub nodes_service: String,
    pub namespace: String,
    pub replicas: i32,
    /// Free disk below which the node refuses publishes, in bytes.
    pub disk_free_limit: u64,
    /// Listen on TLS with the certificates under this directory (`tls.crt`, `tls.key`, `ca.crt`).
    pub tls_dir: Option<String>,
    pub amqp_port: u16,
    pub management_port: u16,
    pub peer_discovery: PeerDiscovery,
}

/// Renders `rabbitmq.conf`. Node names are long names (`rabbit@<pod>.<service>.<namespace>`),
/// set by the pod's environment; peer discovery asks the API server for the headless Service's
/// endpoints, so a new node joins the existing ones and the cluster forms from the first node.
pub fn render(c: &ConfigInput) -> String {
    let mut s = String::new();
    let mut line = |text: String| {
        s.push_str(&text);
        s.push('\n');
    };
    line(format!(
        "# Rendered by Conveyor for the Broker {:?}. Changes are overwritten.",
        c.cluster
    ));
    line(format!("cluster_name = {}", c.cluster));
    line("cluster_partition_handling = pause_minority".into());
    line("queue_master_locator = min-masters".into());
    line(format!("disk_free_limit.absolute = {}", c.disk_free_limit));
    line("loopback_users = none".into());
    // Queue figures a second old rather than five: the autoscaler reads them.
    line("collect_statistics_interval = 1000".into());
    line(format!("listeners.tcp.default = {}", c.amqp_port));
    line(format!("management.tcp.port = {}", c.management_port));
    let pd = &c.peer_discovery;
    line("cluster_formation.peer_discovery_backend = rabbit_peer_discovery_k8s".into());
    line(format!("cluster_formation.k8s.scheme = {}", pd.scheme));
    line(format!("cluster_formation.k8s.host = {}", pd.host));
    line(format!("cluster_formation.k8s.port = {}", pd.port));
    line("cluster_formation.k8s.address_type = hostname".into());
    line(format!(
        "cluster_formation.k8s.service_name = {}",
        c.nodes_service
    ));
    line(format!(
        "cluster_formation.k8s.hostname_suffix = .{}.{}",
        c.nodes_service, c.namespace
    ));
    for (key, value) in [
        ("token_path", &pd.token_path),
        ("cert_path", &pd.cert_path),
        ("namespace_path", &pd.namespace_path),
    ] {
        if let Some(v) = value {
            line(format!("cluster_formation.k8s.{key} = {v}"));
        }
    }
    line(format!(
        "cluster_formation.target_cluster_size_hint = {}",
        c.replicas
    ));
    if let Some(dir) = &c.tls_dir {
        line(format!("listeners.ssl.default = {AMQPS_PORT}"));
        line(format!("management.ssl.port = {MANAGEMENT_TLS_PORT}"));
        for prefix in ["ssl_options", "management.ssl"] {
            line(format!("{prefix}.cacertfile = {dir}/ca.crt"));
            line(format!("{prefix}.certfile = {dir}/tls.crt"));
            line(format!("{prefix}.keyfile = {dir}/tls.key"));
        }
    }
    s
}

/// The file in `conf.d` that creates Conveyor's administrator on a new cluster.
pub fn default_user(user: &str, password: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "default_user = {user}");
    let _ = writeln!(s, "default_pass = {password}");
    let _ = writeln!(s, "default_user_tags.administrator = true");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ConfigInput {
        ConfigInput {
            cluster: "events".into(),
            nodes_service: "events-rabbitmq-nodes".into(),
            namespace: "shop".into(),
            replicas: 3,
            disk_free_limit: 1 << 30,
            tls_dir: None,
            amqp_port: AMQP_PORT,
            management_port: MANAGEMENT_PORT,
            peer_discovery: PeerDiscovery::default(),
        }
    }

    #[test]
    fn peer_discovery_names_the_headless_service() {
        let text = render(&input());
        assert!(text.contains("cluster_name = events\n"), "{text}");
        assert!(text.contains("cluster_formation.k8s.service_name = events-rabbitmq-nodes\n"));
        assert!(
            text.contains("cluster_formation.k8s.hostname_suffix = .events-rabbitmq-nodes.shop\n")
        );
        assert!(text.contains("cluster_formation.target_cluster_size_hint = 3\n"));
        assert!(!text.contains("ssl"), "no TLS unless asked: {text}");
        assert!(!text.contains("token_path"));
    }

    #[test]
    fn tls_listens_on_both_tls_ports_with_the_mounted_files() {
        let text = render(&ConfigInput {
            tls_dir: Some("/etc/rabbitmq/tls".into()),
            ..input()
        });
        assert!(text.contains("listeners.ssl.default = 5671\n"), "{text}");
        assert!(text.contains("management.ssl.certfile = /etc/rabbitmq/tls/tls.crt\n"));
        assert!(text.contains("ssl_options.keyfile = /etc/rabbitmq/tls/tls.key\n"));
    }

    #[test]
    fn the_default_user_is_an_administrator() {
        let text = default_user("conveyor", "pw");
        assert_eq!(
            text,
            "default_user = conveyor\ndefault_pass = pw\ndefault_user_tags.administrator = true\n"
        );
    }
}
