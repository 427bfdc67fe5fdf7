//! Shared support for Conveyor's integration tests: finding the local test plane, one namespace
//! per test (deleted afterwards), waiting with a timeout, and diagnostics when a test fails.
//!
//! The plane is found through the environment (`KUBECONFIG`, `CONVEYOR_TEST_NATS_URL`) or the
//! `.cluster/env` file that `hack/cluster.sh up` writes. Without it a test skips with one line
//! saying how to start it, unless `CONVEYOR_REQUIRE_CLUSTER=1`, which turns the skip into a
//! failure (the test command and CI set it).
#![allow(dead_code)]

pub mod amqp;
pub mod broker;
pub mod managed;
pub mod nats;
pub mod operator;
pub mod proxy;
pub mod streams;

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// What a test needs to reach the local plane.
pub struct Plane {
    pub kubeconfig: PathBuf,
    pub nats_url: String,
    pub cluster_dir: Option<PathBuf>,
    /// The kubectl built with the plane (or the one on PATH).
    pub kubectl: PathBuf,
    pub client: Client,
    pub config: Config,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reads the `export NAME=value` lines of `.cluster/env`.
fn env_file() -> HashMap<String, String> {
    let path = std::env::var_os("CONVEYOR_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cluster"))
        .join("env");
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn setting(file: &HashMap<String, String>, name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| file.get(name).cloned())
}

/// A binary of the test plane (`nats-server`, `kubectl`...), from `CONVEYOR_TESTBIN`.
pub fn testbin(name: &str) -> Option<PathBuf> {
    let dir = setting(&env_file(), "CONVEYOR_TESTBIN")?;
    Some(PathBuf::from(dir).join(name)).filter(|p| p.is_file())
}

/// Prints the one line that says a test skipped and how to run it, or fails when
/// `CONVEYOR_REQUIRE_CLUSTER=1`.
pub fn skip(why: &str) {
    if std::env::var("CONVEYOR_REQUIRE_CLUSTER").is_ok_and(|v| v == "1") {
        panic!("CONVEYOR_REQUIRE_CLUSTER=1 but {why}");
    }
    // Written to the stderr handle, not with eprintln!, so that the test harness does not
    // capture it and the skip is visible in every run.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {}: {why}",
        std::thread::current().name().unwrap_or("test")
    );
}

/// The local plane, or `None` (after printing why) when it is not running.
pub async fn plane() -> Option<Plane> {
    let file = env_file();
    let nats_url = setting(&file, "CONVEYOR_TEST_NATS_URL");
    // A KUBECONFIG alone may point at a real cluster; only the plane's own env file or an
    // explicit CONVEYOR_TEST_NATS_URL says the test plane is up.
    let kubeconfig = if nats_url.is_some() {
        setting(&file, "KUBECONFIG")
    } else {
        None
    };
    let (Some(kubeconfig), Some(nats_url)) = (kubeconfig, nats_url) else {
        skip("no local test plane: run `hack/cluster.sh up` (or `hack/test.sh`, which starts it)");
        return None;
    };
    let kubeconfig = PathBuf::from(kubeconfig);
    let kc = Kubeconfig::read_from(&kubeconfig).expect("reading the test plane's kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    let client = Client::try_from(config.clone()).expect("client");
    let cluster_dir = setting(&file, "CONVEYOR_CLUSTER_DIR").map(PathBuf::from);
    let kubectl = setting(&file, "CONVEYOR_TESTBIN")
        .map(|d| PathBuf::from(d).join("kubectl"))
        .unwrap_or_else(|| PathBuf::from("kubectl"));
    Some(Plane {
        kubeconfig,
        nats_url,
        cluster_dir,
        kubectl,
        client,
        config,
    })
}

/// Starts a test: the plane and a fresh namespace, or returns from the test when there is no plane.
#[macro_export]
macro_rules! setup {
    ($name:expr) => {
        match common::plane().await {
            Some(plane) => {
                let ns = common::TestNamespace::create(&plane, $name).await;
                (plane, ns)
            }
            None => return,
        }
    };
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace that exists for one test. Dropping it deletes it; when the test is failing
/// (panicking), diagnostics of the namespace and the plane are printed first.
pub struct TestNamespace {
    pub name: String,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    cluster_dir: Option<PathBuf>,
}

impl TestNamespace {
    pub async fn create(plane: &Plane, test: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let slug: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let slug = slug
            .chars()
            .take(40)
            .collect::<String>()
            .trim_matches('-')
            .to_string();
        let name = format!("t-{slug}-{}-{n}", std::process::id());
        let api: Api<Namespace> = Api::all(plane.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("conveyor.dev/test".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .expect("creating the test namespace");
        Self {
            name,
            kubeconfig: plane.kubeconfig.clone(),
            kubectl: plane.kubectl.clone(),
            cluster_dir: plane.cluster_dir.clone(),
        }
    }

    /// Makes the namespace enforce the `restricted` Pod Security Standard, so that every pod a
    /// test makes Conveyor create must pass it.
    pub fn enforce_restricted(&self) {
        let labeled = self.kubectl(&[
            "label",
            "namespace",
            &self.name,
            "pod-security.kubernetes.io/enforce=restricted",
        ]);
        assert!(labeled.contains("labeled"), "{labeled}");
    }

    /// Runs kubectl against the plane and returns what it printed.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            });
        out.unwrap_or_else(|e| format!("(kubectl could not run: {e})"))
    }

    fn diagnostics(&self) {
        eprintln!("===== diagnostics for namespace {} =====", self.name);
        eprintln!(
            "--- events\n{}",
            self.kubectl(&[
                "get",
                "events",
                "-n",
                &self.name,
                "--sort-by=.lastTimestamp"
            ])
        );
        eprintln!(
            "--- objects\n{}",
            self.kubectl(&[
                "get",
                "all,configmaps,serviceaccounts,roles,rolebindings",
                "-n",
                &self.name,
                "-o",
                "yaml"
            ])
        );
        if let Some(dir) = &self.cluster_dir {
            tail_logs(&dir.join("logs"));
        }
    }
}

fn tail_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        eprintln!("--- last lines of {}\n{tail}", entry.path().display());
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.diagnostics();
        }
        self.kubectl(&[
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]);
        // The test's operator is usually stopped by now, so nobody would remove the finalizers
        // of its objects and the namespace would stay Terminating: remove them here.
        let objects = self.kubectl(&[
            "get",
            "brokers,queues,topics,eventsubscriptions",
            "-n",
            &self.name,
            "-o",
            "name",
        ]);
        // Secrets held for Brokers carry Conveyor's finalizer too.
        let held = self.kubectl(&[
            "get",
            "secrets",
            "-n",
            &self.name,
            "-l",
            "conveyor.dev/broker-secret=true",
            "-o",
            "name",
        ]);
        let objects = format!("{objects}\n{held}");
        for object in objects
            .lines()
            .filter(|l| l.contains(".conveyor.dev/") || l.starts_with("secret/"))
        {
            self.kubectl(&[
                "patch",
                object,
                "-n",
                &self.name,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Installs Conveyor's CRDs from `crds/` with server-side apply and waits until each is
/// Established (and, when a schema changed, until the API server serves it). Idempotent, so
/// every test that needs them calls it.
pub async fn install_crds(plane: &Plane) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let api: Api<CustomResourceDefinition> = Api::all(plane.client.clone());
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("crds"))
        .expect("reading crds/")
        .map(|e| e.expect("a crds/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        4,
        "expected 4 CRD files under crds/: {files:?}"
    );
    let (mut names, mut changed) = (Vec::new(), false);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("reading a CRD file");
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
        let name = crd.metadata.name.clone().expect("a CRD name");
        let before = api
            .get_opt(&name)
            .await
            .expect("reading a CRD")
            .and_then(|c| c.metadata.generation);
        let applied = api
            .patch(
                &name,
                &PatchParams::apply("conveyor-test").force(),
                &Patch::Apply(&crd),
            )
            .await
            .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        changed |= applied.metadata.generation != before;
        names.push(name);
    }
    for name in names {
        wait_for(
            &format!("CRD {name} to be Established"),
            Duration::from_secs(30),
            || async {
                let crd = api.get(&name).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            },
        )
        .await;
    }
    if changed {
        // An Established CRD whose schema just changed is served with the new schema a moment
        // later; give the API server that moment.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// The condition `type_` of any Conveyor object as (status, reason, message).
pub async fn condition<K>(api: &Api<K>, name: &str, type_: &str) -> Option<(String, String, String)>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj = serde_json::to_value(api.get(name).await.ok()?).ok()?;
    let c = obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

/// Waits until condition `type_` of `name` has `status`; returns its (reason, message).
pub async fn wait_condition<K>(
    api: &Api<K>,
    name: &str,
    type_: &str,
    status: &str,
    timeout: Duration,
) -> (String, String)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    wait_for(&format!("{name}: {type_}={status}"), timeout, || async {
        let (s, reason, message) = condition(api, name, type_).await?;
        (s == status).then_some((reason, message))
    })
    .await
}

/// The reasons of the Events about object `name` in `ns`.
pub async fn event_reasons(plane: &Plane, ns: &str, name: &str) -> Vec<String> {
    use k8s_openapi::api::events::v1::Event;
    let api: Api<Event> = Api::namespaced(plane.client.clone(), ns);
    let list = api
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}
