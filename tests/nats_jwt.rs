//! NATS decentralized authentication against a real `nats-server`: the operator, account and
//! user JWTs minted by `conveyor::engine::nats::jwt` must be accepted by the server, enforce
//! the permissions they carry, and a user vouched for by an account the server does not know
//! (or a forged token) must be refused.
//!
//! The server binary comes from `$CONVEYOR_TESTBIN/nats-server`, where `CONVEYOR_TESTBIN` is
//! taken from the environment or from the `.cluster/env` file `hack/cluster.sh up` writes.
//! Without it each test skips with one line on stderr, unless `CONVEYOR_REQUIRE_CLUSTER=1`.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::{ConnectErrorKind, ConnectOptions, Event, ServerError};
use conveyor::engine::nats::jwt::{
    self, AccountLimits, KeyPair, Permissions, Role, account_jwt, creds_file, operator_jwt,
    user_jwt,
};
use data_encoding::BASE64URL_NOPAD;
use futures::StreamExt;
use tokio::sync::mpsc;

/// Upper bound for anything the server or client should do "at once".
const DEADLINE: Duration = Duration::from_secs(10);

/// The `nats-server` binary, or `None` after printing a skip line.
fn nats_server(_test: &str) -> Option<PathBuf> {
    let bin = common::testbin("nats-server");
    if bin.is_none() {
        common::skip("no nats-server; run hack/cluster.sh up");
    }
    bin
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Mints a user of `account` and returns its creds file.
fn mint_user(account: &KeyPair, name: &str, permissions: &Permissions) -> String {
    let key = jwt::generate_key(Role::User);
    let token = user_jwt(account, &key.public_key(), name, permissions, now()).unwrap();
    creds_file(&token, &jwt::seed(&key).unwrap()).unwrap()
}

/// A `nats-server` in operator mode, with a system account and one JetStream-enabled
/// application account, killed (by pid) and reaped when dropped.
struct Server {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
    app_account: KeyPair,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Writes the config, checks it with `nats-server -t`, starts the server and waits until
    /// its client port accepts connections.
    fn start(bin: &Path) -> Server {
        let iat = now();
        let operator = jwt::generate_key(Role::Operator);
        let system = jwt::generate_key(Role::Account);
        let app = jwt::generate_key(Role::Account);
        let operator_token = operator_jwt(&operator, "conveyor-test", &system.public_key(), iat)
            .expect("operator JWT");
        let system_token = account_jwt(
            &operator,
            &system.public_key(),
            "SYS",
            AccountLimits::without_jetstream(),
            iat,
        )
        .expect("system account JWT");
        let app_token = account_jwt(
            &operator,
            &app.public_key(),
            "app",
            AccountLimits::with_unlimited_jetstream(),
            iat,
        )
        .expect("app account JWT");

        let dir = tempfile::TempDir::new().unwrap();
        // A port that was free a moment ago; the server reports failure if it was taken since.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "listen: 127.0.0.1:{port}\n\
             operator: \"{operator_token}\"\n\
             system_account: \"{sys}\"\n\
             resolver: MEMORY\n\
             resolver_preload: {{\n  \
               {sys}: \"{system_token}\"\n  \
               {app_pub}: \"{app_token}\"\n\
             }}\n\
             jetstream: {{store_dir: \"{js}\"}}\n",
            sys = system.public_key(),
            app_pub = app.public_key(),
            js = dir.path().join("js").display(),
        );
        let conf = dir.path().join("server.conf");
        std::fs::write(&conf, &config).unwrap();

        let check = Command::new(bin)
            .arg("-t")
            .arg("-c")
            .arg(&conf)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "nats-server -t rejected the config:\n{config}\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );

        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            dir,
            app_account: app,
        };

        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("nats-server exited with {status}:\n{}", server.log());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {port}:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn connect(&self, creds: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
        let options = ConnectOptions::with_credentials(creds).expect("creds parse");
        self.connect_with(options).await
    }

    async fn connect_with(
        &self,
        options: ConnectOptions,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        let options = options.connection_timeout(Duration::from_secs(5));
        tokio::time::timeout(DEADLINE, options.connect(&self.url))
            .await
            .expect("connect did not finish")
    }
}

#[tokio::test]
async fn user_with_full_access_uses_jetstream() {
    let Some(bin) = nats_server("user_with_full_access_uses_jetstream") else {
        return;
    };
    let server = Server::start(&bin);
    let user = mint_user(&server.app_account, "full", &Permissions::default());
    let client = server
        .connect(&user)
        .await
        .unwrap_or_else(|e| panic!("user with a valid JWT was refused: {e}\n{}", server.log()));

    let js = async_nats::jetstream::new(client);
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS".to_string(),
            subjects: vec!["orders.>".to_string()],
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "JetStream not enabled for the account: {e}\n{}",
                server.log()
            )
        });
    let ack = js
        .publish("orders.1", "hello".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, "ORDERS");

    let stored = stream.get_raw_message(ack.sequence).await.unwrap();
    assert_eq!(stored.subject.as_str(), "orders.1");
    assert_eq!(stored.payload.as_ref(), b"hello");
}

#[tokio::test]
async fn publish_permissions_are_enforced() {
    let Some(bin) = nats_server("publish_permissions_are_enforced") else {
        return;
    };
    let server = Server::start(&bin);
    let observer = mint_user(&server.app_account, "observer", &Permissions::default());
    let limited = mint_user(
        &server.app_account,
        "orders-only",
        &Permissions {
            publish_allow: vec!["orders.>".to_string()],
            subscribe_allow: vec![],
        },
    );

    let observer = server.connect(&observer).await.unwrap();
    let mut seen = observer.subscribe("*.x").await.unwrap();
    observer.flush().await.unwrap();

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let options = ConnectOptions::with_credentials(&limited)
        .unwrap()
        .event_callback(move |event| {
            let events_tx = events_tx.clone();
            async move {
                let _ = events_tx.send(event);
            }
        });
    let client = server.connect_with(options).await.unwrap();

    // The denied publish goes first: the server handles one connection's messages in order,
    // so if it were delivered, the observer would receive it before the allowed one.
    client.publish("other.x", "denied".into()).await.unwrap();
    client.publish("orders.x", "allowed".into()).await.unwrap();
    client.flush().await.unwrap();

    let first = tokio::time::timeout(DEADLINE, seen.next())
        .await
        .expect("the allowed publish was not delivered")
        .unwrap();
    assert_eq!(first.subject.as_str(), "orders.x");
    assert_eq!(first.payload.as_ref(), b"allowed");

    let violation = tokio::time::timeout(DEADLINE, async {
        loop {
            match events.recv().await.expect("event channel closed") {
                Event::ServerError(ServerError::Other(message)) => return message,
                Event::ServerError(other) => panic!("unexpected server error: {other}"),
                _ => continue,
            }
        }
    })
    .await
    .expect("no permissions violation reported");
    let lower = violation.to_lowercase();
    assert!(
        lower.contains("permissions violation") && violation.contains("other.x"),
        "unexpected server error: {violation}"
    );
    // The connection stays usable after a denied publish.
    client.publish("orders.x", "again".into()).await.unwrap();
    client.flush().await.unwrap();
    let next = tokio::time::timeout(DEADLINE, seen.next())
        .await
        .expect("publish after the violation was not delivered")
        .unwrap();
    assert_eq!(next.payload.as_ref(), b"again");
}

#[tokio::test]
async fn user_signed_by_a_foreign_account_is_rejected() {
    let Some(bin) = nats_server("user_signed_by_a_foreign_account_is_rejected") else {
        return;
    };
    let server = Server::start(&bin);

    // Control: a user of the trusted account gets in.
    let trusted = mint_user(&server.app_account, "trusted", &Permissions::default());
    server.connect(&trusted).await.unwrap();

    // A user vouched for by an account the operator never signed.
    let foreign_account = jwt::generate_key(Role::Account);
    let foreign = mint_user(&foreign_account, "foreign", &Permissions::default());
    let err = server
        .connect(&foreign)
        .await
        .expect_err("a user of an unknown account was let in");
    assert_eq!(
        err.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );

    // A user JWT naming the trusted account as issuer, but signed with another key.
    let key = jwt::generate_key(Role::User);
    let genuine = user_jwt(
        &server.app_account,
        &key.public_key(),
        "forged",
        &Permissions::default(),
        now(),
    )
    .unwrap();
    let signed = &genuine[..genuine.rfind('.').unwrap()];
    let signature = foreign_account.sign(signed.as_bytes()).unwrap();
    let forged = format!("{signed}.{}", BASE64URL_NOPAD.encode(&signature));
    assert!(jwt::decode_verified(&forged).is_err());
    let creds = creds_file(&forged, &jwt::seed(&key).unwrap()).unwrap();
    let err = server
        .connect(&creds)
        .await
        .expect_err("a forged user JWT was let in");
    assert_eq!(
        err.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
}
