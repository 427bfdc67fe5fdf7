//! The NATS server configuration of a managed broker, rendered as text.
//!
//! Secrets never appear here: the configuration holds only public material (the operator JWT,
//! account public keys and JWTs); signing keys stay in the broker's auth Secret.

use std::fmt::Write;

pub use crate::engine::nats::identities::AuthConfig;

/// Where files live inside the server's container (overridable so that tests can run a real
/// server on the rendered configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub store_dir: String,
    pub resolver_dir: String,
    pub tls_dir: String,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            store_dir: "/data/jetstream".into(),
            resolver_dir: "/data/jwt".into(),
            tls_dir: "/etc/nats/tls".into(),
        }
    }
}

/// Ports of a managed broker's servers.
pub const CLIENT_PORT: u16 = 4222;
pub const CLUSTER_PORT: u16 = 6222;
pub const MONITOR_PORT: u16 = 8222;

/// Everything the configuration depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigInput {
    /// Cluster name (the Broker's name).
    pub cluster: String,
    /// Route URLs of every server (one per replica); no cluster block when there is one server.
    pub routes: Vec<String>,
    pub client_port: u16,
    pub cluster_port: u16,
    pub monitor_port: u16,
    pub max_payload: i64,
    /// JetStream file storage limit in bytes.
    pub max_file_store: u64,
    pub tls: bool,
    pub auth: Option<AuthConfig>,
    pub paths: Paths,
}

/// Renders `nats.conf`. `$POD_NAME` is resolved by the server from its environment, so every
/// pod gets a stable, unique `server_name`.
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
    line("server_name: $POD_NAME".into());
    line(format!("listen: \"0.0.0.0:{}\"", c.client_port));
    line(format!("http: \"0.0.0.0:{}\"", c.monitor_port));
    line(format!("max_payload: {}", c.max_payload));
    line("lame_duck_duration: \"30s\"".into());
    line("lame_duck_grace_period: \"10s\"".into());
    line(format!(
        "jetstream {{\n  store_dir: {:?}\n  max_file_store: {}\n}}",
        c.paths.store_dir, c.max_file_store
    ));
    if c.routes.len() > 1 {
        let mut routes = String::new();
        for r in &c.routes {
            let _ = writeln!(routes, "    {r:?}");
        }
        line(format!(
            "cluster {{\n  name: {:?}\n  listen: \"0.0.0.0:{}\"\n  routes: [\n{routes}  ]\n}}",
            c.cluster, c.cluster_port
        ));
    }
    if c.tls {
        let d = &c.paths.tls_dir;
        line(format!(
            "tls {{\n  cert_file: \"{d}/tls.crt\"\n  key_file: \"{d}/tls.key\"\n  ca_file: \"{d}/ca.crt\"\n}}"
        ));
    }
    if let Some(a) = &c.auth {
        line(format!("operator: {:?}", a.operator_jwt));
        line(format!("system_account: {:?}", a.system_account));
        line(format!(
            "resolver {{\n  type: full\n  dir: {:?}\n  allow_delete: false\n  interval: \"2m\"\n}}",
            c.paths.resolver_dir
        ));
        let mut preload = String::new();
        for (public, jwt) in &a.accounts {
            let _ = writeln!(preload, "  {public}: {jwt:?}");
        }
        line(format!("resolver_preload {{\n{preload}}}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(replicas: usize, tls: bool, auth: bool) -> ConfigInput {
        ConfigInput {
            cluster: "events".into(),
            routes: (0..replicas)
                .map(|i| format!("nats://events-nats-{i}.events-nats-cluster.shop.svc:6222"))
                .collect(),
            client_port: CLIENT_PORT,
            cluster_port: CLUSTER_PORT,
            monitor_port: MONITOR_PORT,
            max_payload: 1_048_576,
            max_file_store: 1 << 30,
            tls,
            auth: auth.then(|| AuthConfig {
                operator_jwt: "eyJop".into(),
                system_account: "ASYS".into(),
                accounts: vec![
                    ("ASYS".into(), "eyJsys".into()),
                    ("AAPP".into(), "eyJapp".into()),
                ],
            }),
            paths: Paths::default(),
        }
    }

    #[test]
    fn single_server_has_no_cluster_block() {
        let text = render(&input(1, false, false));
        assert!(!text.contains("cluster {"));
        assert!(text.contains("jetstream {"));
        assert!(text.contains("server_name: $POD_NAME"));
    }

    #[test]
    fn three_servers_route_to_each_other() {
        let text = render(&input(3, false, false));
        assert!(text.contains("cluster {\n  name: \"events\""));
        for i in 0..3 {
            assert!(text.contains(&format!(
                "events-nats-{i}.events-nats-cluster.shop.svc:6222"
            )));
        }
    }

    #[test]
    // That no seed reaches the configuration is tested where seeds exist: engine::nats::identities.
    fn tls_and_auth_blocks_reference_files_and_public_material() {
        let text = render(&input(3, true, true));
        assert!(text.contains("cert_file: \"/etc/nats/tls/tls.crt\""));
        assert!(text.contains("operator: \"eyJop\""));
        assert!(text.contains("AAPP: \"eyJapp\""));
    }

    #[test]
    fn rendering_is_deterministic() {
        assert_eq!(render(&input(5, true, true)), render(&input(5, true, true)));
    }
}
