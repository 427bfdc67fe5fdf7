//! A nats-server process of a test's own (JetStream on, a free loopback port, a private store),
//! stopped by its pid. Tests that stop and start a broker use their own server so that they
//! never disturb the plane's shared one.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::operator::free_port;

pub struct NatsServer {
    child: Option<Child>,
    bin: PathBuf,
    args: Vec<String>,
    dir: tempfile::TempDir,
    pub port: u16,
    pub url: String,
    /// The monitoring endpoint (`/varz`, `/jsz`), which KEDA's NATS trigger polls.
    pub monitor_url: String,
}

impl NatsServer {
    /// Starts a server with JetStream and `extra` arguments; `None` (after the skip line) when
    /// the plane's binaries are not built.
    pub fn start(extra: &[&str]) -> Option<Self> {
        let Some(bin) = super::testbin("nats-server") else {
            super::skip("no nats-server binary: run `hack/testbin.sh` or `hack/cluster.sh up`");
            return None;
        };
        let dir = tempfile::TempDir::new().unwrap();
        let (port, monitor) = (free_port(), free_port());
        let mut args: Vec<String> = [
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-m",
            &monitor.to_string(),
            "-sd",
        ]
        .map(String::from)
        .to_vec();
        args.push(dir.path().join("js").display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Self {
            child: None,
            bin,
            args,
            dir,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            monitor_url: format!("http://127.0.0.1:{monitor}"),
        };
        s.spawn();
        Some(s)
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "nats-server exited with {status}:\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server by its pid and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The version the binary reports (`2.15.3`).
    pub fn version(&self) -> String {
        let out = Command::new(&self.bin).arg("--version").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split_whitespace()
            .last()
            .unwrap_or_default()
            .trim_start_matches('v')
            .to_string()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
