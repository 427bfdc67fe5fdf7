use super::*;

#[test]
fn paths_encode_every_reserved_byte() {
    assert_eq!(
        api_path(&["queues", "/", "orders"]),
        "/api/queues/%2F/orders"
    );
    assert_eq!(
        api_path(&["queues", "v h/x", "a/b c+%"]),
        "/api/queues/v%20h%2Fx/a%2Fb%20c%2B%25"
    );
    assert_eq!(
        api_path(&["exchanges", "/", "amq.topic-1_~"]),
        "/api/exchanges/%2F/amq.topic-1_~"
    );
    assert_eq!(
        api_path(&["queues", "/", "zähler?#"]),
        "/api/queues/%2F/z%C3%A4hler%3F%23"
    );
    // A properties key as RabbitMQ gives it is itself encoded once more.
    assert_eq!(
        binding_path("/", "ex", "q", "q", Some("a+b%2Fc")),
        "/api/bindings/%2F/e/ex/q/q/a%2Bb%252Fc"
    );
    assert_eq!(exchange_segment(""), "amq.default");
    assert_eq!(exchange_segment("events"), "events");
}

#[test]
fn statuses_map_to_errors() {
    assert_eq!(check(StatusCode::CREATED, b""), Ok(()));
    assert_eq!(check(StatusCode::NO_CONTENT, b""), Ok(()));
    assert_eq!(
        check(
            StatusCode::UNAUTHORIZED,
            br#"{"error":"not_authorized","reason":"Login failed"}"#
        ),
        Err(ManagementError::Unauthorized("Login failed".into()))
    );
    assert!(
        matches!(check(StatusCode::FORBIDDEN, b""), Err(ManagementError::Unauthorized(r)) if r == "Forbidden")
    );
    assert_eq!(
        check(
            StatusCode::NOT_FOUND,
            br#"{"error":"Object Not Found","reason":"Not Found"}"#
        ),
        Err(ManagementError::Status {
            code: 404,
            reason: "Not Found".into()
        })
    );
    let escaped = br#"{"error":"bad_request","reason":"Validation failed\n\n[{&lt;&lt;\"max-lengthx\"&gt;&gt;,5}] are not recognised"}"#;
    assert_eq!(
        check(StatusCode::BAD_REQUEST, escaped),
        Err(ManagementError::Status {
            code: 400,
            reason: "Validation failed\n\n[{<<\"max-lengthx\">>,5}] are not recognised".into()
        })
    );
    assert_eq!(
        check(StatusCode::BAD_GATEWAY, b"<html>upstream down</html>"),
        Err(ManagementError::Status {
            code: 502,
            reason: "<html>upstream down</html>".into()
        })
    );
    assert_eq!(
        check(StatusCode::INTERNAL_SERVER_ERROR, br#"{"error":"oops"}"#),
        Err(ManagementError::Status {
            code: 500,
            reason: "oops".into()
        })
    );
}

#[test]
fn answers_decode() {
    let q: QueueInfo = serde_json::from_str(
        r#"{"arguments":{"x-queue-type":"quorum"},"consumers":0,"durable":true,"message_bytes":5,
            "messages":1,"messages_ready":1,"messages_unacknowledged":0,"name":"q1","policy":null,"type":"quorum"}"#,
    )
    .unwrap();
    assert_eq!(
        (q.queue_type.as_deref(), q.messages, q.policy),
        (Some("quorum"), Some(1), None)
    );
    // A fresh classic queue has no figures yet; an old server no `type`.
    let q =
        serde_json::from_str::<QueueInfo>(r#"{"name":"c","arguments":{"x-queue-type":"classic"}}"#)
            .unwrap()
            .fill_type();
    assert_eq!(
        (q.queue_type.as_deref(), q.messages, q.durable),
        (Some("classic"), None, false)
    );
    let p: Policy = serde_json::from_str(
        r#"{"vhost":"/","name":"p2","pattern":"^q1$","apply-to":"all","definition":{"max-length":5},"priority":0}"#,
    )
    .unwrap();
    assert_eq!(serde_json::to_value(&p).unwrap()["apply-to"], "all");
    let m: Message = serde_json::from_str(
        r#"{"payload_bytes":2,"redelivered":false,"exchange":"x","routing_key":"k","message_count":0,
            "properties":{},"payload":"AP8=","payload_encoding":"base64"}"#,
    )
    .unwrap();
    assert_eq!(m.payload_bytes(), Ok(vec![0, 255]));
}

#[test]
fn settings_are_checked() {
    for bad in [
        "ftp://h",
        "localhost:15672",
        "http://",
        "http://h/?x=1",
        "http://u:p@h",
    ] {
        assert!(
            matches!(
                ManagementClient::new(bad, "u", "p", None),
                Err(ManagementError::Config(_))
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        ManagementClient::new("https://h", "u", "p", Some("not a pem")),
        Err(ManagementError::Config(_))
    ));
    let client = ManagementClient::new("http://127.0.0.1:15672/", "u", "p", None).unwrap();
    assert_eq!(client.base, "http://127.0.0.1:15672");
    assert_eq!(client.auth.to_str().unwrap(), "Basic dTpw");
}

#[test]
fn queue_depths_read_message_stats_as_an_object_or_an_empty_list() {
    let listed: Vec<QueueDepth> = serde_json::from_str(
        r#"[{"message_stats":[],"messages_ready":3,"messages_unacknowledged":0,"name":"a"},
            {"message_stats":{"ack":7,"ack_details":{"rate":0.0}},"messages_ready":0,"messages_unacknowledged":2,"name":"b"},
            {"name":"c"}]"#,
    )
    .unwrap();
    let acked: Vec<_> = listed.iter().map(QueueDepth::acknowledged).collect();
    assert_eq!(acked, [None, Some(7), None]);
    assert_eq!(listed[0].messages_ready, Some(3));
}
