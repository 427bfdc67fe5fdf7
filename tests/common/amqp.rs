//! A real AMQP client (lapin) connecting with what a subscription's Secret holds: the URL,
//! virtual host, user and password under their documented keys.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::uri::{AMQPAuthority, AMQPUri, AMQPUserInfo};
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// The Secret's values by key.
pub fn values(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8(v.0.clone()).unwrap()))
        .collect()
}

/// Connects as the Secret says.
pub async fn connect(settings: &BTreeMap<String, String>) -> lapin::Result<Connection> {
    let url = settings["CONVEYOR_URLS"].split(',').next().unwrap();
    let hostport = url.trim_start_matches("amqp://").trim_end_matches('/');
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let uri = AMQPUri {
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: settings["CONVEYOR_USERNAME"].clone(),
                password: settings["CONVEYOR_PASSWORD"].clone(),
            },
            host: host.to_string(),
            port: port.parse().unwrap(),
        },
        vhost: settings["CONVEYOR_VIRTUAL_HOST"].clone(),
        ..Default::default()
    };
    Connection::connect_uri(uri, ConnectionProperties::default()).await
}

/// Takes one message from `queue` and acknowledges it: its routing key, or `None` when the
/// queue is empty.
pub async fn take_one(conn: &Connection, queue: &str) -> lapin::Result<Option<String>> {
    let ch = conn.create_channel().await?;
    let Some(m) = ch.basic_get(queue, BasicGetOptions::default()).await? else {
        return Ok(None);
    };
    m.delivery.ack(BasicAckOptions::default()).await?;
    Ok(Some(m.delivery.routing_key.to_string()))
}

/// Publishes one message to `exchange` and waits for the broker's answer.
pub async fn publish(conn: &Connection, exchange: &str, key: &str) -> lapin::Result<()> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let confirm = ch
        .basic_publish(
            exchange,
            key,
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await?;
    confirm.await?;
    // A refused publish closes the channel; a round trip after it surfaces that.
    ch.basic_qos(1, Default::default()).await?;
    Ok(())
}

/// Takes every message of `queue` and returns it to the queue (`basic.nack` with requeue) until
/// none is left: the number of deliveries rejected.
pub async fn reject_all(conn: &Connection, queue: &str) -> lapin::Result<usize> {
    use lapin::options::BasicNackOptions;
    let ch = conn.create_channel().await?;
    let mut rejected = 0;
    let mut empty_since = std::time::Instant::now();
    while empty_since.elapsed() < std::time::Duration::from_secs(3) {
        match ch.basic_get(queue, BasicGetOptions::default()).await? {
            Some(m) => {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                m.delivery.nack(requeue).await?;
                rejected += 1;
                empty_since = std::time::Instant::now();
            }
            None => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    Ok(rejected)
}
