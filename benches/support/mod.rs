//! What the scale and chaos benches share: creating many Queues and Topics, counting how many
//! are Ready, a process's CPU time and resident memory, and deleting a namespace to the end.
//! Each bench uses part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use conveyor::api::{Queue, Topic};
use futures::FutureExt;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

/// Objects created at once.
const IN_FLIGHT: usize = 32;

/// The name of the `i`-th object: even ones are Queues, odd ones Topics.
pub fn object_name(i: usize) -> String {
    format!("obj-{i:05}")
}

/// Creates `n` objects (half Queues, half Topics, `deletionPolicy: Delete`) on the Broker
/// `events`, retrying each until the API server takes it (it may be restarting).
pub async fn create_objects(client: &kube::Client, ns: &str, n: usize) {
    let queues: Api<Queue> = Api::namespaced(client.clone(), ns);
    let topics: Api<Topic> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(0..n)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let (queues, topics) = (queues.clone(), topics.clone());
            async move {
                let name = object_name(i);
                let spec = json!({"brokerRef": {"name": "events"}, "deletionPolicy": "Delete"});
                loop {
                    let result = if i % 2 == 0 {
                        let q: Queue = serde_json::from_value(json!({
                            "apiVersion": "conveyor.dev/v1alpha1", "kind": "Queue",
                            "metadata": {"name": name}, "spec": spec
                        }))
                        .unwrap();
                        queues.create(&PostParams::default(), &q).await.map(|_| ())
                    } else {
                        let t: Topic = serde_json::from_value(json!({
                            "apiVersion": "conveyor.dev/v1alpha1", "kind": "Topic",
                            "metadata": {"name": name}, "spec": spec
                        }))
                        .unwrap();
                        topics.create(&PostParams::default(), &t).await.map(|_| ())
                    };
                    match result {
                        Ok(()) => return,
                        Err(kube::Error::Api(s)) if s.code == 409 => return,
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            }
        })
        .await;
}

fn ready(conditions: &conveyor::api::common::Conditions) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// How many objects of `api` are Ready, page by page; `None` when the API server did not answer.
async fn count_ready_of<K>(
    api: Api<K>,
    status: impl Fn(&K) -> Option<&conveyor::api::StreamStatus>,
) -> Option<usize>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut n = 0;
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(1000);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.ok()?;
        n += page
            .items
            .iter()
            .filter(|o| status(o).is_some_and(|s| ready(&s.conditions)))
            .count();
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Some(n);
        }
    }
}

/// How many Queues and Topics in `ns` are Ready; `None` when the API server did not answer.
pub async fn count_ready(client: &kube::Client, ns: &str) -> Option<usize> {
    let queues: Api<Queue> = Api::namespaced(client.clone(), ns);
    let topics: Api<Topic> = Api::namespaced(client.clone(), ns);
    let q = count_ready_of(queues, |q: &Queue| q.status.as_ref()).await?;
    let t = count_ready_of(topics, |t: &Topic| t.status.as_ref()).await?;
    Some(q + t)
}

/// Counts Ready Queues and Topics in a namespace from watches, so that counting costs the API
/// server only the change events rather than a full list each time (at 10,000 objects a list
/// a second is a large part of the API server's work).
pub struct ReadyWatch {
    queues: Store<Queue>,
    topics: Store<Topic>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ReadyWatch {
    pub async fn start(client: &kube::Client, ns: &str) -> Self {
        let (queues, q_task) = watch(Api::<Queue>::namespaced(client.clone(), ns));
        let (topics, t_task) = watch(Api::<Topic>::namespaced(client.clone(), ns));
        for store in [
            queues.wait_until_ready().boxed(),
            topics.wait_until_ready().boxed(),
        ] {
            store.await.expect("the watch reads its initial list");
        }
        Self {
            queues,
            topics,
            tasks: vec![q_task, t_task],
        }
    }

    /// How many are Ready now, as far as the watches have seen.
    pub fn count(&self) -> usize {
        ready_in(&self.queues, |q| q.status.as_ref())
            + ready_in(&self.topics, |t| t.status.as_ref())
    }
}

fn ready_in<K>(
    store: &Store<K>,
    status: impl Fn(&K) -> Option<&conveyor::api::StreamStatus>,
) -> usize
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .iter()
        .filter(|o| status(o).is_some_and(|s| ready(&s.conditions)))
        .count()
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn watch<K>(api: Api<K>) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let task = tokio::spawn(async move { stream.for_each(|_| async {}).await });
    (reader, task)
}

/// The operator's arguments in the benches: its production defaults, except a Lease in
/// `default` (outside the namespace the bench deletes, as in a real installation).
pub fn operator_args(lease: &str) -> Vec<String> {
    [
        "--lease-namespace",
        "default",
        "--lease-name",
        lease,
        "--lease-duration-seconds",
        "15",
        "--resync-seconds",
        "300",
        "--unreachable-deletion-grace-seconds",
        "300",
    ]
    .map(String::from)
    .to_vec()
}

/// A process's CPU time (user + system) so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

/// A process's resident memory: the total, its anonymous part (heap, stacks) and its file part
/// (mostly the mapped binary), from `/proc/<pid>/status`.
pub struct Resident {
    pub total: f64,
    pub anon: f64,
    pub file: f64,
}

impl std::fmt::Display for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} MiB ({:.1} MiB anonymous, {:.1} MiB mapped files)",
            self.total, self.anon, self.file
        )
    }
}

/// A process's resident memory in MiB; NaN where it cannot be read (the process is gone).
pub fn resident(pid: u32) -> Resident {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    Resident {
        total: mib("VmRSS:"),
        anon: mib("RssAnon:"),
        file: mib("RssFile:"),
    }
}

/// Deletes `ns` and waits until it is gone; returns how long that took, or `None` after
/// `timeout`.
pub async fn delete_namespace(
    client: &kube::Client,
    ns: &str,
    timeout: Duration,
) -> Option<Duration> {
    let api: Api<Namespace> = Api::all(client.clone());
    let start = Instant::now();
    while start.elapsed() < timeout {
        match api.delete(ns, &DeleteParams::default()).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 404 => return Some(start.elapsed()),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    while start.elapsed() < timeout {
        if let Ok(None) = api.get_opt(ns).await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// A small pseudo-random sequence (xorshift), seeded from the clock unless
/// `CONVEYOR_BENCH_SEED` is set, so that a run can be repeated.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Self {
        let seed = std::env::var("CONVEYOR_BENCH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("bench: seed {seed} (set CONVEYOR_BENCH_SEED to repeat)");
        Self(seed | 1)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Min, median and max of some durations, in seconds.
pub fn spread(mut d: Vec<Duration>) -> String {
    if d.is_empty() {
        return "none".into();
    }
    d.sort();
    let s = |x: Duration| format!("{:.1}", x.as_secs_f64());
    format!(
        "min {} s, median {} s, max {} s",
        s(d[0]),
        s(d[d.len() / 2]),
        s(d[d.len() - 1])
    )
}

/// An environment variable as a number, or `default`.
/// A bench setting from the environment, else `full` under `cargo bench` and `smoke` under
/// `cargo test`, which runs a bench binary without `--bench`: the test suite then checks that
/// the bench still works, in seconds rather than the bench's minutes.
pub fn setting(name: &str, full: u64, smoke: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benchmarking() { full } else { smoke })
}

/// Whether `cargo bench` started this binary (it passes `--bench`).
pub fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The operator's API requests that write (anything but GET), from its own metric.
pub async fn api_writes(op: &super::common::operator::Operator) -> f64 {
    let mut total = 0.0;
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        total += op
            .metric(
                "conveyor_kube_api_requests_total",
                &format!("method=\"{method}\""),
            )
            .await;
    }
    total
}

/// Deletes the bench's Lease in `default`.
pub async fn delete_lease(client: &kube::Client, name: &str) {
    let api: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "default");
    let _ = api.delete(name, &DeleteParams::default()).await;
}

/// Runs a bench's body on a multi-threaded runtime.
pub fn block_on(body: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(body);
}

/// Creates `obj` with `api`, retrying until the API server takes it (an existing one counts).
pub async fn create<K>(api: &Api<K>, obj: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).unwrap();
    loop {
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// A Deployment of the user's own at zero replicas, whose pods never start (no image).
pub fn deployment_at_zero(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "consumer:1"}]}
            }
        }
    })
}

/// Creates the Topics `topic-0` .. `topic-{count-1}` on the Broker `events` with these event
/// types (`deletionPolicy: Delete`) and waits until every one is Ready.
pub async fn create_topics(topics: &Api<Topic>, count: usize, types: &[String]) {
    let types: Vec<_> = types.iter().map(|t| json!({"type": t})).collect();
    for t in 0..count {
        create(
            topics,
            json!({
                "apiVersion": "conveyor.dev/v1alpha1", "kind": "Topic",
                "metadata": {"name": format!("topic-{t}")},
                "spec": {"brokerRef": {"name": "events"}, "eventTypes": types, "deletionPolicy": "Delete"}
            }),
        )
        .await;
    }
    for t in 0..count {
        let name = format!("topic-{t}");
        super::common::wait_condition(topics, &name, "Ready", "True", Duration::from_secs(120))
            .await;
    }
}
