//! A `conveyor run` process for tests: started with the plane's kubeconfig, limited to the
//! test's namespace, killed when dropped, its log printed when the test fails.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Plane;

/// The Lease the test operators compete for (in the test namespace).
pub const LEASE: &str = "conveyor-test-leader";

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `conveyor run` child process, killed when dropped; its log is printed if the test fails.
pub struct Operator {
    pub child: Child,
    pub port: u16,
    pub identity: String,
    log: tempfile::NamedTempFile,
}

impl Operator {
    /// Starts an operator for namespace `ns` with a 3 s lease.
    pub fn start(plane: &Plane, ns: &str, identity: &str) -> Self {
        Self::start_with(plane, ns, identity, &[])
    }

    /// Like `start`, with extra `conveyor run` arguments (a `--lease-duration-seconds` among
    /// them replaces the 3 s).
    pub fn start_with(plane: &Plane, ns: &str, identity: &str, extra: &[&str]) -> Self {
        let lease_flag = "--lease-duration-seconds";
        let lease: &[&str] = if extra.contains(&lease_flag) {
            &[]
        } else {
            &[lease_flag, "3"]
        };
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_conveyor"))
            .args([
                "run",
                "--probe-addr",
                &format!("127.0.0.1:{port}"),
                "--namespaces",
                ns,
            ])
            .args(["--lease-namespace", ns, "--lease-name", LEASE])
            .args(lease)
            .args(["--identity", identity, "--resync-seconds", "60"])
            .args(extra)
            .env("KUBECONFIG", &plane.kubeconfig)
            // Debug by default, for the tests' failure output; the benches run at the level
            // of a production install.
            .env(
                "CONVEYOR_LOG",
                std::env::var("CONVEYOR_LOG").unwrap_or_else(|_| "info,conveyor=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("starting conveyor run");
        Self {
            child,
            port,
            identity: identity.into(),
            log,
        }
    }

    /// A plain HTTP GET on the probe server: (status code, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let code = buf.split_whitespace().nth(1)?.parse().ok()?;
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    }

    pub async fn wait_ready(&self) {
        super::wait_for(
            &format!("{} to answer /readyz with 200", self.identity),
            Duration::from_secs(60),
            || async { matches!(self.get("/readyz").await, Some((200, _))).then_some(()) },
        )
        .await;
    }

    /// The value of an unlabelled metric, or the sum of a labelled family whose labels contain `filter`.
    pub async fn metric(&self, name: &str, filter: &str) -> f64 {
        let (_, body) = self.get("/metrics").await.expect("metrics");
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#') && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// What the operator has logged so far.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        let _ = self
            .log
            .reopen()
            .and_then(|mut f| f.read_to_string(&mut text));
        text
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} failed");
    }

    /// Waits up to `timeout` for the process to exit; returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let mut text = String::new();
            let _ = self
                .log
                .reopen()
                .and_then(|mut f| f.read_to_string(&mut text));
            eprintln!("===== log of operator {} =====\n{text}", self.identity);
        }
    }
}
