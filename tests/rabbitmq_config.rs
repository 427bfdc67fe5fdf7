//! The configuration Conveyor renders for a managed RabbitMQ broker boots a real
//! rabbitmq-server (Debian's package, run as a plain process with its own port mapper): every
//! key passes the server's own validation, peer discovery asks the Kubernetes API for the
//! headless Service's endpoints (a small local stub answers, as the API server would for the
//! first node), the cluster takes the Broker's name, and Conveyor's administrator from the
//! broker's Secret can use the management API. Outside a cluster the peer-discovery backend
//! needs an API to ask; the stub stands in for it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::operator::free_port;
use conveyor::api::broker::ManagedBroker;
use conveyor::engine::rabbitmq::management::ManagementClient;
use conveyor::resources::managed::ManagedEngine;
use conveyor::resources::rabbitmq::config::{self, ConfigInput, PeerDiscovery};
use conveyor::resources::rabbitmq::{Names, RabbitmqManaged, keys};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A stand-in for the API server's endpoints answer; records the requests it gets.
async fn api_stub() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let line = head.lines().next().unwrap_or_default().to_string();
                let bearer = head
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                    .unwrap_or_default()
                    .to_string();
                log.lock().unwrap().push(format!("{line} | {bearer}"));
                // The Service's one address: this node, as a pod's hostname.
                let body = r#"{"kind":"Endpoints","apiVersion":"v1","subsets":[{"addresses":[{"hostname":"localhost","ip":"127.0.0.1"}]}]}"#;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, seen)
}

/// A rabbitmq-server node and its port mapper, stopped by their pids.
struct Node {
    epmd: Child,
    server: Child,
    epmd_port: u16,
    dir: tempfile::TempDir,
}

impl Node {
    fn env(dir: &Path, epmd_port: u16) -> Vec<(String, String)> {
        let d = |p: &str| dir.join(p).display().to_string();
        let ctl = free_port();
        [
            ("HOME", d("home")),
            (
                "RABBITMQ_NODENAME",
                format!("conveyor-config-{}@localhost", std::process::id()),
            ),
            ("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf")),
            ("RABBITMQ_CONFIG_FILES", d("conf.d")),
            ("RABBITMQ_CONFIG_FILE", d("none.conf")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
            ("RABBITMQ_MNESIA_BASE", d("data")),
            ("RABBITMQ_LOG_BASE", d("log")),
            ("RABBITMQ_LOGS", d("log/rabbit.log")),
            ("RABBITMQ_PID_FILE", d("beam.pid")),
            ("RABBITMQ_DIST_PORT", free_port().to_string()),
            ("RABBITMQ_CTL_DIST_PORT_MIN", ctl.to_string()),
            ("RABBITMQ_CTL_DIST_PORT_MAX", ctl.to_string()),
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".into(),
            ),
            ("ERL_EPMD_PORT", epmd_port.to_string()),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            ("ERL_CRASH_DUMP", d("log/erl_crash.dump")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Starts a node whose `conf.d` holds `files`.
    fn start(files: &BTreeMap<&str, String>) -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        for sub in ["home", "data", "log", "conf.d"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let cookie = dir.path().join("home/.erlang.cookie");
        std::fs::write(&cookie, "conveyorconfigtestcookie").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).unwrap();
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "").unwrap();
        let epmd_port = free_port();
        let epmd = Command::new("epmd")
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting epmd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", epmd_port)).is_err() {
            assert!(Instant::now() < deadline, "epmd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::File::create(dir.path().join("log/stdout")).unwrap();
        let server = Command::new(SERVER)
            .envs(Self::env(dir.path(), epmd_port))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting rabbitmq-server");
        Self {
            epmd,
            server,
            epmd_port,
            dir,
        }
    }

    fn log(&self) -> String {
        let read = |p: &str| std::fs::read_to_string(self.dir.path().join(p)).unwrap_or_default();
        format!("{}\n{}", read("log/stdout"), read("log/rabbit.log"))
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.server.try_wait().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The wrapper forwards TERM to the node; throwaway data needs no graceful stop, so
        // kill the node's own pid too once the wrapper is gone.
        let _ = Command::new("kill")
            .arg(self.server.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.server.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("beam.pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = self.epmd.kill();
        let _ = self.epmd.wait();
        let _ = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-kill"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn fake_service_account(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let token = dir.join("token");
    let ca = dir.join("ca.crt");
    let namespace = dir.join("namespace");
    std::fs::write(&token, "conveyor-test-token").unwrap();
    std::fs::write(&ca, "").unwrap();
    std::fs::write(&namespace, "shop").unwrap();
    (token, ca, namespace)
}

#[tokio::test]
async fn the_rendered_configuration_boots_a_real_node() {
    if !Path::new(SERVER).is_file() {
        common::skip("no rabbitmq-server: run `hack/prereqs.sh` (installs Debian's package)");
        return;
    }
    let (stub_port, seen) = api_stub().await;
    let sa = tempfile::TempDir::new().unwrap();
    let (token, ca, namespace) = fake_service_account(sa.path());
    let (amqp, management) = (free_port(), free_port());
    let names = Names::new("events");
    let rendered = config::render(&ConfigInput {
        cluster: "events".into(),
        nodes_service: names.nodes.clone(),
        namespace: "shop".into(),
        replicas: 3,
        disk_free_limit: 50_000_000,
        tls_dir: None,
        amqp_port: amqp,
        management_port: management,
        peer_discovery: PeerDiscovery {
            scheme: "http".into(),
            host: "127.0.0.1".into(),
            port: stub_port,
            token_path: Some(token.display().to_string()),
            cert_path: Some(ca.display().to_string()),
            namespace_path: Some(namespace.display().to_string()),
        },
    });
    // Listen on loopback only: the pod listens on every interface.
    let rendered = rendered
        .replace(
            &format!("listeners.tcp.default = {amqp}"),
            &format!("listeners.tcp.default = 127.0.0.1:{amqp}"),
        )
        .replace(
            &format!("management.tcp.port = {management}"),
            &format!("management.tcp.port = {management}\nmanagement.tcp.ip = 127.0.0.1"),
        );
    let spec: ManagedBroker = serde_json::from_value(serde_json::json!({})).unwrap();
    assert!(RabbitmqManaged.keeps_secret(&spec));
    let secret = RabbitmqManaged.new_secret("events", 0).unwrap();
    let files = BTreeMap::from([
        ("conf.d/10-conveyor.conf", rendered),
        (
            "conf.d/90-default-user.conf",
            secret[keys::DEFAULT_USER_CONF].clone(),
        ),
        ("enabled_plugins", config::ENABLED_PLUGINS.to_string()),
    ]);
    let started = Instant::now();
    let mut node = Node::start(&files);
    let api = ManagementClient::new(
        &format!("http://127.0.0.1:{management}"),
        "conveyor",
        &secret[keys::PASSWORD],
        None,
    )
    .unwrap();
    let overview = loop {
        if let Some(status) = node.exited() {
            panic!("rabbitmq-server exited with {status}:\n{}", node.log());
        }
        if let Ok(o) = api.overview().await {
            break o;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the node did not boot:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "a node on the rendered configuration booted in {:?}",
        started.elapsed()
    );
    assert_eq!(overview.cluster_name.as_deref(), Some("events"));
    let requests = seen.lock().unwrap().clone();
    assert!(
        requests.iter().any(|r| r.starts_with(&format!(
            "GET /api/v1/namespaces/shop/endpoints/{} ",
            names.nodes
        )) && r.contains("Bearer conveyor-test-token")),
        "peer discovery asked for the headless Service's endpoints: {requests:?}"
    );
    // Conveyor's administrator can declare what Queues and Topics need.
    let args = serde_json::json!({"x-queue-type": "quorum"});
    assert!(
        api.declare_queue("/", "probe", true, args.as_object().unwrap())
            .await
            .unwrap()
    );
    let guest = ManagementClient::new(
        &format!("http://127.0.0.1:{management}"),
        "guest",
        "guest",
        None,
    )
    .unwrap();
    assert!(
        guest.overview().await.is_err(),
        "no guest user on a managed broker"
    );
}
