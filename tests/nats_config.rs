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
