//! A test's own broker of either engine, behind one set of operations, so that the Queue and
//! Topic tests run the same body on NATS and on RabbitMQ.
//!
//! - NATS: a nats-server of the test's own (`nats::NatsServer`).
//! - RabbitMQ: a virtual host of the test's own on the plane's rabbitmq-server, removed when the
//!   test ends; the Broker reaches the server through a `proxy::Proxy` that the test can cut
//!   to make the broker unreachable without disturbing other tests.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use conveyor::engine::rabbitmq::management::{ManagementClient, Policy};
use serde_json::{Map, Value, json};

use super::nats::NatsServer;
use super::proxy::Proxy;

/// Which engine a test body runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Nats,
    Rabbitmq,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Nats => "nats",
            Self::Rabbitmq => "rabbitmq",
        }
    }
}

/// The plane's RabbitMQ, from `.cluster/env`.
#[derive(Clone, Debug)]
pub struct RabbitPlane {
    pub management_url: String,
    pub amqp_url: String,
    pub user: String,
    pub password: String,
}

impl RabbitPlane {
    /// The plane's RabbitMQ, or `None` after the skip line when the plane has none.
    pub fn from_env() -> Option<Self> {
        let file = super::env_file();
        let var = |k: &str| super::setting(&file, k);
        match (
            var("CONVEYOR_TEST_RABBITMQ_MANAGEMENT_URL"),
            var("CONVEYOR_TEST_RABBITMQ_AMQP_URL"),
            var("CONVEYOR_TEST_RABBITMQ_USER"),
            var("CONVEYOR_TEST_RABBITMQ_PASSWORD"),
        ) {
            (Some(management_url), Some(amqp_url), Some(user), Some(password)) => Some(Self {
                management_url,
                amqp_url,
                user,
                password,
            }),
            _ => {
                super::skip(
                    "no RabbitMQ on the plane (CONVEYOR_TEST_RABBITMQ_* unset): run `hack/cluster.sh up` and `source .cluster/env`",
                );
                None
            }
        }
    }

    pub fn client(&self) -> ManagementClient {
        ManagementClient::new(&self.management_url, &self.user, &self.password, None).unwrap()
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("a URL with a port")
}

/// A RabbitMQ virtual host of one test's own.
pub struct RabbitVhost {
    pub plane: RabbitPlane,
    pub api: ManagementClient,
    pub vhost: String,
    /// The Broker's way in: AMQP and management through proxies the test can cut.
    pub amqp: Proxy,
    pub management: Proxy,
}

impl Drop for RabbitVhost {
    fn drop(&mut self) {
        // Drop cannot await; a blocking client call on a thread of its own does it.
        let (api, vhost) = (self.api.clone(), self.vhost.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = rt.block_on(api.delete_vhost(&vhost));
        })
        .join();
    }
}

/// A test's broker.
pub enum TestBroker {
    Nats {
        server: NatsServer,
        js: jetstream::Context,
    },
    Rabbitmq(RabbitVhost),
}

impl TestBroker {
    /// Starts (or carves out) a broker of `engine` for the test `test`; `None` after the skip
    /// line when the plane lacks it.
    pub async fn start(engine: EngineKind, test: &str) -> Option<Self> {
        match engine {
            EngineKind::Nats => {
                let server = NatsServer::start(&[])?;
                let client = async_nats::connect(&server.url).await.unwrap();
                Some(Self::Nats {
                    server,
                    js: jetstream::new(client),
                })
            }
            EngineKind::Rabbitmq => {
                let plane = RabbitPlane::from_env()?;
                let api = plane.client();
                let vhost = format!("test-{test}-{}", std::process::id());
                api.put_vhost(&vhost, &plane.user).await.unwrap();
                let amqp = Proxy::start(port_of(&plane.amqp_url)).await;
                let management = Proxy::start(port_of(&plane.management_url)).await;
                Some(Self::Rabbitmq(RabbitVhost {
                    plane,
                    api,
                    vhost,
                    amqp,
                    management,
                }))
            }
        }
    }

    /// The test's virtual host on RabbitMQ.
    pub fn vhost(&self) -> Option<&str> {
        match self {
            Self::Nats { .. } => None,
            Self::Rabbitmq(r) => Some(&r.vhost),
        }
    }

    /// The NATS server and an admin JetStream context, on NATS.
    pub fn nats(&self) -> Option<(&NatsServer, &jetstream::Context)> {
        match self {
            Self::Nats { server, js } => Some((server, js)),
            Self::Rabbitmq(_) => None,
        }
    }

    pub fn engine(&self) -> EngineKind {
        match self {
            Self::Nats { .. } => EngineKind::Nats,
            Self::Rabbitmq(_) => EngineKind::Rabbitmq,
        }
    }

    /// The `spec` of an external Broker pointing at this broker, and the Secret it needs.
    pub fn broker_spec(&self) -> (Value, Option<(String, Value)>) {
        match self {
            Self::Nats { server, .. } => (
                json!({"engine": "nats", "external": {"urls": [server.url]}}),
                None,
            ),
            Self::Rabbitmq(r) => (
                json!({"engine": "rabbitmq", "external": {
                    "urls": [format!("amqp://127.0.0.1:{}", r.amqp.port)],
                    "credentialsSecretRef": {"name": "rabbitmq-credentials"},
                    "rabbitmq": {
                        "managementUrl": format!("http://127.0.0.1:{}", r.management.port),
                        "virtualHost": r.vhost
                    }
                }}),
                Some((
                    "rabbitmq-credentials".into(),
                    json!({"user": r.plane.user, "password": r.plane.password}),
                )),
            ),
        }
    }

    /// Makes the broker unreachable for the operator.
    pub async fn cut(&mut self) {
        match self {
            Self::Nats { server, .. } => server.stop(),
            Self::Rabbitmq(r) => {
                r.amqp.cut().await;
                r.management.cut().await;
            }
        }
    }

    /// Makes it reachable again.
    pub async fn restore(&mut self) {
        match self {
            Self::Nats { server, js } => {
                server.restart();
                let client = async_nats::connect(&server.url).await.unwrap();
                *js = jetstream::new(client);
            }
            Self::Rabbitmq(r) => {
                r.amqp.restore().await;
                r.management.restore().await;
            }
        }
    }

    /// The queue that holds a Topic's messages on RabbitMQ, or the destination itself.
    fn holding(&self, topic: bool, name: &str) -> String {
        if topic && self.engine() == EngineKind::Rabbitmq {
            format!("{name}.unrouted")
        } else {
            name.to_string()
        }
    }

    /// Whether the Queue (`topic: false`) or Topic named `name` exists in the broker.
    pub async fn exists(&self, topic: bool, name: &str) -> bool {
        match self {
            Self::Nats { js, .. } => js.get_stream(name).await.is_ok(),
            Self::Rabbitmq(r) if topic => r.api.exchange(&r.vhost, name).await.unwrap().is_some(),
            Self::Rabbitmq(r) => r.api.queue(&r.vhost, name).await.unwrap().is_some(),
        }
    }

    /// Messages held; `None` when the destination does not exist. RabbitMQ's figure lags by
    /// about two seconds: wait for it rather than read it once.
    pub async fn messages(&self, topic: bool, name: &str) -> Option<u64> {
        match self {
            Self::Nats { js, .. } => {
                let mut s = js.get_stream(name).await.ok()?;
                Some(s.info().await.ok()?.state.messages)
            }
            Self::Rabbitmq(r) => {
                let q = r
                    .api
                    .queue(&r.vhost, &self.holding(topic, name))
                    .await
                    .ok()??;
                Some(q.messages.unwrap_or(0))
            }
        }
    }

    /// Publishes `n` messages to a Queue.
    pub async fn publish_to_queue(&self, name: &str, n: usize) {
        for i in 0..n {
            match self {
                Self::Nats { js, .. } => {
                    js.publish(name.to_string(), format!("m{i}").into())
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                }
                Self::Rabbitmq(r) => {
                    let routed = r
                        .api
                        .publish(&r.vhost, "", name, &format!("m{i}"), &Map::new())
                        .await
                        .unwrap();
                    assert!(routed, "the message reached queue {name}");
                }
            }
        }
    }

    /// The maximum age the broker applies to the destination's messages.
    pub async fn max_age(&self, topic: bool, name: &str) -> Option<Duration> {
        match self {
            Self::Nats { js, .. } => {
                Some(js.get_stream(name).await.ok()?.cached_info().config.max_age)
            }
            Self::Rabbitmq(r) => {
                let p = self.policy(r, topic, name).await?;
                let ms = p.definition.get("message-ttl")?.as_u64()?;
                Some(Duration::from_millis(ms))
            }
        }
    }

    async fn policy(&self, r: &RabbitVhost, topic: bool, name: &str) -> Option<Policy> {
        let queue = self.holding(topic, name);
        r.api
            .policy(&r.vhost, &format!("conveyor.{queue}"))
            .await
            .unwrap()
    }

    /// Changes the maximum age behind Conveyor's back.
    pub async fn edit_max_age(&self, topic: bool, name: &str, age: Duration) {
        match self {
            Self::Nats { js, .. } => {
                let mut s = js.get_stream(name).await.unwrap();
                let mut c: stream::Config = s.info().await.unwrap().config.clone();
                c.max_age = age;
                js.update_stream(&c).await.unwrap();
            }
            Self::Rabbitmq(r) => {
                let queue = self.holding(topic, name);
                let mut p = self.policy(r, topic, name).await.expect("the policy");
                p.definition
                    .insert("message-ttl".into(), json!(age.as_millis() as u64));
                r.api
                    .put_policy(&r.vhost, &format!("conveyor.{queue}"), &p)
                    .await
                    .unwrap();
            }
        }
    }

    /// Deletes the destination behind Conveyor's back.
    pub async fn delete_outside(&self, topic: bool, name: &str) {
        match self {
            Self::Nats { js, .. } => {
                js.delete_stream(name).await.unwrap();
            }
            Self::Rabbitmq(r) if topic => {
                r.api.delete_exchange(&r.vhost, name).await.unwrap();
            }
            Self::Rabbitmq(r) => {
                r.api.delete_queue(&r.vhost, name).await.unwrap();
            }
        }
    }

    /// Removes every message of a Queue.
    pub async fn purge(&self, name: &str) {
        match self {
            Self::Nats { js, .. } => {
                js.get_stream(name).await.unwrap().purge().await.unwrap();
            }
            Self::Rabbitmq(r) => {
                r.api.purge_queue(&r.vhost, name).await.unwrap();
            }
        }
    }

    /// Creates a queue of `name` that Conveyor did not create.
    pub async fn create_foreign_queue(&self, name: &str) {
        match self {
            Self::Nats { js, .. } => {
                js.create_stream(stream::Config {
                    name: name.to_string(),
                    subjects: vec!["elsewhere.>".into()],
                    ..Default::default()
                })
                .await
                .unwrap();
            }
            Self::Rabbitmq(r) => {
                let args = json!({"x-queue-type": "classic"});
                r.api
                    .declare_queue(&r.vhost, name, true, args.as_object().unwrap())
                    .await
                    .unwrap();
            }
        }
    }

    /// Whether the foreign queue is as the test created it.
    pub async fn foreign_queue_untouched(&self, name: &str) -> bool {
        match self {
            Self::Nats { js, .. } => {
                let mut s = js.get_stream(name).await.unwrap();
                let c = s.info().await.unwrap().config.clone();
                c.subjects == ["elsewhere.>"] && !c.metadata.contains_key("conveyor.dev/owner")
            }
            Self::Rabbitmq(r) => {
                let q = r.api.queue(&r.vhost, name).await.unwrap().unwrap();
                q.queue_type.as_deref() == Some("classic")
                    && !q.arguments.contains_key("x-conveyor-owner")
                    && r.api
                        .policy(&r.vhost, &format!("conveyor.{name}"))
                        .await
                        .unwrap()
                        .is_none()
            }
        }
    }

    /// How many destinations the broker holds.
    pub async fn count_queues(&self) -> usize {
        match self {
            Self::Nats { js, .. } => js.query_account().await.unwrap().streams,
            Self::Rabbitmq(r) => r.api.queues(&r.vhost).await.unwrap().len(),
        }
    }

    /// Publishes `n` events of `event_type` to the Topic whose name in the broker is `topic`.
    pub async fn publish_events(&self, topic: &str, event_type: &str, n: usize) {
        for i in 0..n {
            let body = format!(r#"{{"orderId":"{event_type}-{i}"}}"#);
            match self {
                Self::Nats { js, .. } => {
                    js.publish(format!("{topic}.{event_type}"), body.into())
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                }
                Self::Rabbitmq(r) => {
                    r.api
                        .publish(&r.vhost, topic, event_type, &body, &Map::new())
                        .await
                        .unwrap();
                }
            }
        }
    }

    /// Whether the consumer `name` on `source` exists in the broker (on RabbitMQ, a Topic
    /// subscription's queue).
    pub async fn consumer_exists(&self, source: &str, name: &str) -> bool {
        match self {
            Self::Nats { js, .. } => js
                .get_consumer_from_stream::<jetstream::consumer::Config, _, _>(name, source)
                .await
                .is_ok(),
            Self::Rabbitmq(r) => r.api.queue(&r.vhost, name).await.unwrap().is_some(),
        }
    }

    /// Takes every message the consumer `name` on `source` has now, acknowledging each, and
    /// returns their event types (the subject's last token on NATS, the routing key on
    /// RabbitMQ). Stops once nothing arrives for two seconds.
    pub async fn drain_consumer(&self, source: &str, name: &str) -> Vec<String> {
        use futures::StreamExt;
        let mut types = Vec::new();
        match self {
            Self::Nats { js, .. } => {
                let consumer: jetstream::consumer::PullConsumer =
                    js.get_consumer_from_stream(name, source).await.unwrap();
                loop {
                    let mut batch = consumer
                        .fetch()
                        .max_messages(500)
                        .expires(Duration::from_secs(2))
                        .messages()
                        .await
                        .unwrap();
                    let mut got = 0;
                    while let Some(m) = batch.next().await {
                        let m = m.unwrap();
                        let subject = m.subject.to_string();
                        types.push(subject.rsplit('.').next().unwrap().to_string());
                        m.ack().await.unwrap();
                        got += 1;
                    }
                    if got == 0 {
                        break;
                    }
                }
            }
            Self::Rabbitmq(r) => {
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                loop {
                    let batch = r
                        .api
                        .get_messages(&r.vhost, name, 500, false)
                        .await
                        .unwrap();
                    if batch.is_empty() && std::time::Instant::now() > deadline {
                        break;
                    }
                    if batch.is_empty() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    types.extend(batch.into_iter().map(|m| m.routing_key));
                }
            }
        }
        types
    }

    /// Rejects every delivery of the subscription whose Secret holds `settings`, as its own
    /// client would (NATS: a negative acknowledgement; RabbitMQ: `basic.nack` with requeue),
    /// until nothing is delivered for six seconds: the number of deliveries.
    pub async fn reject_every_delivery(&self, settings: &BTreeMap<String, String>) -> usize {
        use futures::StreamExt;
        match self {
            Self::Nats { .. } => {
                let consumer = subscription_consumer(settings).await;
                let mut deliveries = 0;
                let mut quiet = std::time::Instant::now();
                while quiet.elapsed() < Duration::from_secs(6) {
                    let mut batch = consumer
                        .fetch()
                        .max_messages(1)
                        .expires(Duration::from_secs(1))
                        .messages()
                        .await
                        .unwrap();
                    while let Some(m) = batch.next().await {
                        let m = m.unwrap();
                        m.ack_with(jetstream::AckKind::Nak(None)).await.unwrap();
                        deliveries += 1;
                        quiet = std::time::Instant::now();
                    }
                }
                deliveries
            }
            Self::Rabbitmq(_) => {
                let conn = super::amqp::connect(settings).await.unwrap();
                super::amqp::reject_all(&conn, &settings["CONVEYOR_CONSUMER"])
                    .await
                    .unwrap()
            }
        }
    }

    /// Waits for the first message in the dead-letter destination `dead` and returns its
    /// headers as a JSON object.
    pub async fn wait_dead_letter(&self, dead: &str) -> Value {
        super::wait_for("a dead letter", Duration::from_secs(45), || async {
            match self {
                Self::Nats { js, .. } => {
                    let stream = js.get_stream(dead).await.ok()?;
                    let m = stream.get_raw_message(1).await.ok()?;
                    let headers: Map<String, Value> = m
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            let v: Vec<String> = v.iter().map(|v| v.to_string()).collect();
                            (k.to_string(), json!(v.join(",")))
                        })
                        .collect();
                    Some(Value::Object(headers))
                }
                Self::Rabbitmq(r) => {
                    let m = r.api.get_messages(&r.vhost, dead, 1, true).await.ok()?;
                    let m = m.into_iter().next()?;
                    Some(m.properties.get("headers").cloned().unwrap_or_default())
                }
            }
        })
        .await
    }
}

/// Messages taken from a consumer and not acknowledged: in flight until `ack_all`.
pub enum Held {
    Nats(Vec<jetstream::Message>),
    /// The connection and channel the deliveries came on stay open while they are held.
    Rabbitmq(
        Box<(lapin::Connection, lapin::Channel)>,
        Vec<lapin::message::Delivery>,
    ),
}

impl Held {
    /// Acknowledges every held message.
    pub async fn ack_all(self) {
        match self {
            Self::Nats(messages) => {
                // Acknowledged and confirmed by the server before the client goes away.
                for m in messages {
                    m.double_ack().await.unwrap();
                }
            }
            Self::Rabbitmq(_channel, deliveries) => {
                for d in deliveries {
                    d.ack(lapin::options::BasicAckOptions::default())
                        .await
                        .unwrap();
                }
            }
        }
    }
}

impl TestBroker {
    /// Takes `n` messages with the subscription's own credentials (its Secret's `settings`)
    /// and holds them unacknowledged, as a busy consumer would.
    pub async fn hold_in_flight(&self, settings: &BTreeMap<String, String>, n: usize) -> Held {
        use futures::StreamExt;
        match self {
            Self::Nats { .. } => {
                let consumer = subscription_consumer(settings).await;
                let mut held = Vec::new();
                while held.len() < n {
                    let mut batch = consumer
                        .fetch()
                        .max_messages(n - held.len())
                        .expires(Duration::from_secs(2))
                        .messages()
                        .await
                        .unwrap();
                    while let Some(m) = batch.next().await {
                        held.push(m.unwrap());
                    }
                }
                Held::Nats(held)
            }
            Self::Rabbitmq(_) => {
                let conn = super::amqp::connect(settings).await.unwrap();
                let ch = conn.create_channel().await.unwrap();
                ch.basic_qos(n as u16, Default::default()).await.unwrap();
                let mut consumer = ch
                    .basic_consume(
                        &settings["CONVEYOR_CONSUMER"],
                        "held",
                        Default::default(),
                        Default::default(),
                    )
                    .await
                    .unwrap();
                let mut held = Vec::new();
                while held.len() < n {
                    held.push(consumer.next().await.unwrap().unwrap());
                }
                Held::Rabbitmq(Box::new((conn, ch)), held)
            }
        }
    }
}

/// The NATS consumer named in a subscription's Secret (`settings`), as its workload connects.
async fn subscription_consumer(
    settings: &BTreeMap<String, String>,
) -> jetstream::consumer::PullConsumer {
    let client = async_nats::connect(&settings["CONVEYOR_URLS"])
        .await
        .unwrap();
    jetstream::new(client)
        .get_consumer_from_stream(&settings["CONVEYOR_CONSUMER"], &settings["CONVEYOR_SOURCE"])
        .await
        .unwrap()
}
