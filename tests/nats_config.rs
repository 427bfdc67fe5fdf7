//! The configuration Conveyor renders for managed brokers, checked by a real nats-server: its
//! config-test mode for 1, 3 and 5 servers with and without TLS and authentication, and a
//! running server on the rendered configuration that Conveyor's own credentials can use.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::operator::free_port;
use conveyor::engine::nats::identities;
use conveyor::resources::nats::Names;
use conveyor::resources::nats::config::{AuthConfig, ConfigInput, Paths, render};

/// Auth material exactly as the operator generates and reads it, and Conveyor's creds.
fn auth() -> (AuthConfig, String) {
    let stored = identities::generate("events", 1_800_000_000).unwrap();
    let ids = identities::read(|k| stored.get(k).cloned()).unwrap();
    (ids.config, ids.creds)
}

/// A CA and a server certificate for 127.0.0.1 in `dir` (tls.crt, tls.key, ca.crt), made with openssl.
fn certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        "/CN=events-nats",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
}

fn input(
    dir: &Path,
    replicas: i32,
    tls: bool,
    auth: Option<AuthConfig>,
    client_port: u16,
) -> ConfigInput {
    let names = Names::new("events");
    ConfigInput {
        cluster: "events".into(),
        routes: (0..replicas).map(|i| names.route("shop", i)).collect(),
        client_port,
        cluster_port: free_port(),
        monitor_port: free_port(),
        max_payload: 1_048_576,
        max_file_store: 1 << 30,
        tls,
        auth,
        paths: Paths {
            store_dir: dir.join("js").display().to_string(),
            resolver_dir: dir.join("jwt").display().to_string(),
            tls_dir: dir.display().to_string(),
        },
    }
}

#[test]
fn rendered_configurations_pass_the_servers_config_test() {
    let Some(bin) = common::testbin("nats-server") else {
        common::skip("no nats-server binary: run `hack/testbin.sh`");
        return;
    };
    let dir = tempfile::TempDir::new().unwrap();
    certificates(dir.path());
    let mut checked = 0;
    for replicas in [1, 3, 5] {
        for tls in [false, true] {
            for with_auth in [false, true] {
                let config = render(&input(
                    dir.path(),
                    replicas,
                    tls,
                    with_auth.then(|| auth().0),
                    4222,
                ));
                let file = dir
                    .path()
                    .join(format!("nats-{replicas}-{tls}-{with_auth}.conf"));
                std::fs::write(&file, &config).unwrap();
                let out = Command::new(&bin)
                    .arg("-t")
                    .arg("-c")
                    .arg(&file)
                    .env("POD_NAME", "events-nats-0")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "nats-server -t rejected the configuration for {replicas} servers, tls={tls}, auth={with_auth}:\n{config}\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 12);
}

#[tokio::test]
async fn a_server_on_the_rendered_configuration_serves_conveyors_credentials_over_tls() {
    let Some(bin) = common::testbin("nats-server") else {
        common::skip("no nats-server binary: run `hack/testbin.sh`");
        return;
    };
    let dir = tempfile::TempDir::new().unwrap();
    certificates(dir.path());
    let port = free_port();
    let (auth, creds) = auth();
    let config =
        render(&input(dir.path(), 1, true, Some(auth), port)).replace("0.0.0.0", "127.0.0.1");
    let file = dir.path().join("nats.conf");
    std::fs::write(&file, &config).unwrap();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let mut child = Command::new(&bin)
        .arg("-c")
        .arg(&file)
        .env("POD_NAME", "events-nats-0")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut child);

    let url = format!("tls://127.0.0.1:{port}");
    let connect = || async {
        async_nats::ConnectOptions::with_credentials(&creds)
            .unwrap()
            .add_root_certificates(dir.path().join("ca.crt"))
            .require_tls(true)
            .connection_timeout(Duration::from_secs(2))
            .connect(&url)
            .await
            .ok()
    };
    let client = common::wait_for(
        "Conveyor's credentials to connect over TLS",
        Duration::from_secs(15),
        connect,
    )
    .await;
    let js = async_nats::jetstream::new(client);
    let account = js
        .query_account()
        .await
        .expect("JetStream for the application account");
    assert_eq!(account.limits.max_ack_pending, -1);
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "probe".into(),
            subjects: vec!["probe.>".into()],
            ..Default::default()
        })
        .await
        .expect("creating a stream");
    js.publish("probe.x", "hello".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut stream = stream;
    assert_eq!(stream.info().await.unwrap().state.messages, 1);

    // Without credentials the server refuses.
    let anonymous = async_nats::ConnectOptions::new()
        .add_root_certificates(dir.path().join("ca.crt"))
        .require_tls(true)
        .connection_timeout(Duration::from_secs(2))
        .connect(&url)
        .await;
    assert!(anonymous.is_err(), "an anonymous client must be refused");
}

/// Subscriptions' identities on a server running Conveyor's managed configuration: a user
/// issued for consumer A fetches and acknowledges on A only; it cannot fetch from B, publish to
/// the stream, or create streams; after revocation the server closes its connection and refuses
/// it, while B's user still works.
#[tokio::test]
async fn a_subscriptions_nats_user_may_consume_only_its_own_consumer_until_revoked() {
    use async_nats::jetstream::{self, consumer, stream};
    use conveyor::engine::registry::{Auth, ConnectRequest, Registry};
    use conveyor::engine::{ConsumerSpec, Credentials, DestinationKind, Engine, Issued, StartFrom};
    use futures::StreamExt;

    let Some(bin) = common::testbin("nats-server") else {
        common::skip("no nats-server binary: run `hack/testbin.sh`");
        return;
    };
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let stored = identities::generate("events", 1_800_000_000).unwrap();
    let ids = identities::read(|k| stored.get(k).cloned()).unwrap();
    let config = render(&input(dir.path(), 1, false, Some(ids.config.clone()), port))
        .replace("0.0.0.0", "127.0.0.1");
    let file = dir.path().join("nats.conf");
    std::fs::write(&file, &config).unwrap();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let mut child = Command::new(&bin)
        .arg("-c")
        .arg(&file)
        .env("POD_NAME", "events-nats-0")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut child);
    let url = format!("nats://127.0.0.1:{port}");

    // Conveyor's connection, with the keys a managed Broker's plan hands it.
    let req = ConnectRequest {
        engine: Engine::Nats,
        urls: vec![url.clone()],
        auth: Auth::CredentialsFile(ids.creds.clone()),
        issuer: Some(ids.issuer.clone()),
        ..Default::default()
    };
    let registry = Registry::default();
    let conn = common::wait_for("Conveyor to connect", Duration::from_secs(15), || async {
        let c = registry
            .connect(&("shop".into(), "events".into()), &req)
            .await
            .ok()?;
        c.require_connected().ok().map(|_| c)
    })
    .await;
    let admin = async_nats::ConnectOptions::with_credentials(&ids.creds)
        .unwrap()
        .connect(&url)
        .await
        .unwrap();
    let js = jetstream::new(admin);
    js.create_stream(stream::Config {
        name: "topic_shop_orders".into(),
        subjects: vec!["topic_shop_orders.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let spec = |name: &str| ConsumerSpec {
        source_kind: DestinationKind::Topic,
        source: "topic_shop_orders".into(),
        name: name.into(),
        event_types: vec![],
        ack_wait: Duration::from_secs(30),
        max_deliveries: 5,
        backoff: vec![],
        max_ack_pending: 100,
        start: StartFrom::All,
        dead_letter: false,
        replicas: 1,
        owner: format!("EventSubscription shop/{name}"),
    };
    let mut creds = Vec::new();
    for name in ["sub_shop_payment", "sub_shop_shipping"] {
        js.create_consumer_on_stream(
            consumer::pull::Config {
                durable_name: Some(name.into()),
                ..Default::default()
            },
            "topic_shop_orders",
        )
        .await
        .unwrap();
        let Issued::Credentials(c) = conn.issue_identity(&spec(name), None) else {
            panic!("a managed broker's connection issues identities")
        };
        // Kept while it stays right: no new JWT each pass.
        assert_eq!(
            conn.issue_identity(&spec(name), Some(&c)),
            Issued::Credentials(c.clone())
        );
        creds.push(c);
    }
    js.publish("topic_shop_orders.OrderPlaced", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let client_of = |c: &Credentials| {
        let Credentials::NatsCreds {
            creds,
            inbox_prefix,
            ..
        } = c.clone()
        else {
            panic!("NATS credentials")
        };
        let url = url.clone();
        async move {
            async_nats::ConnectOptions::with_credentials(&creds)
                .unwrap()
                .custom_inbox_prefix(inbox_prefix)
                .connection_timeout(Duration::from_secs(2))
                .connect(url)
                .await
        }
    };
    let fetch_one = |client: async_nats::Client, name: &'static str| async move {
        let js = jetstream::new(client);
        let c: consumer::PullConsumer = js
            .get_consumer_from_stream(name, "topic_shop_orders")
            .await
            .map_err(|e| e.to_string())?;
        let mut batch = c
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let m = batch
            .next()
            .await
            .ok_or("nothing delivered")?
            .map_err(|e| e.to_string())?;
        m.ack().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(m.subject.to_string())
    };

    let payment = client_of(&creds[0]).await.unwrap();
    assert_eq!(
        fetch_one(payment.clone(), "sub_shop_payment")
            .await
            .unwrap(),
        "topic_shop_orders.OrderPlaced"
    );
    let refused = fetch_one(payment.clone(), "sub_shop_shipping").await;
    assert!(refused.is_err(), "A fetched from B's consumer: {refused:?}");
    let js_a = jetstream::new(payment.clone());
    let publish = js_a
        .publish("topic_shop_orders.OrderPlaced", "{}".into())
        .await;
    let acked = match publish {
        Ok(ack) => tokio::time::timeout(Duration::from_secs(3), ack)
            .await
            .ok()
            .and_then(|a| a.ok()),
        Err(_) => None,
    };
    assert!(acked.is_none(), "A published to the stream");
    let created = js_a
        .create_stream(stream::Config {
            name: "stolen".into(),
            subjects: vec!["stolen".into()],
            ..Default::default()
        })
        .await;
    assert!(created.is_err(), "A created a stream");

    // Revoked: the open connection closes and the credentials are refused from then on.
    assert!(conn.revoke_identity("sub_shop_payment").await.unwrap());
    common::wait_for(
        "A's connection to be closed",
        Duration::from_secs(10),
        || async {
            (payment.connection_state() != async_nats::connection::State::Connected).then_some(())
        },
    )
    .await;
    let again = client_of(&creds[0]).await;
    assert!(again.is_err(), "revoked credentials still connect");
    // B is untouched, also after a second revocation pushed on top of the first.
    let shipping = client_of(&creds[1]).await.unwrap();
    assert_eq!(
        fetch_one(shipping, "sub_shop_shipping").await.unwrap(),
        "topic_shop_orders.OrderPlaced"
    );
    assert!(conn.revoke_identity("sub_shop_shipping").await.unwrap());
    assert!(client_of(&creds[1]).await.is_err());
    assert!(
        client_of(&creds[0]).await.is_err(),
        "the first revocation stays"
    );
}
