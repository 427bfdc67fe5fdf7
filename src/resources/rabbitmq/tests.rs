use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

fn spec(extra: serde_json::Value) -> ManagedBroker {
    serde_json::from_value(extra).unwrap()
}

fn input<'a>(
    spec: &'a ManagedBroker,
    secret: Option<&'a BTreeMap<String, String>>,
) -> ManagedInput<'a> {
    ManagedInput {
        broker: "events",
        namespace: "shop",
        spec,
        replicas: 3,
        client_namespaces: vec!["billing".into()],
        owner: OwnerReference {
            name: "events".into(),
            uid: "u1".into(),
            controller: Some(true),
            ..Default::default()
        },
        secret,
        ca_pem: None,
    }
}

fn secret() -> BTreeMap<String, String> {
    RabbitmqManaged.new_secret("events", 0).unwrap()
}

#[test]
fn names_fit_dns_labels_for_the_longest_broker_name() {
    let n = Names::new(&"b".repeat(40));
    for name in [&n.servers, &n.nodes, &n.config, &n.auth] {
        assert!(name.len() <= 63, "{name}");
    }
}

#[test]
fn a_new_secret_holds_a_cookie_and_the_administrator() {
    let (a, b) = (secret(), secret());
    assert_eq!(a[keys::ERLANG_COOKIE].len(), 48);
    assert_ne!(a[keys::ERLANG_COOKIE], b[keys::ERLANG_COOKIE], "random");
    let password = &a[keys::PASSWORD];
    assert_eq!(password.len(), 32);
    assert!(a[keys::DEFAULT_USER_CONF].contains(&format!("default_pass = {password}\n")));
}

#[test]
fn conveyor_connects_to_the_client_service_as_its_administrator() {
    let s = spec(serde_json::json!({}));
    let secret = secret();
    let plan = RabbitmqManaged.plan(&input(&s, Some(&secret))).unwrap();
    assert_eq!(plan.endpoint, "amqp://events-rabbitmq.shop.svc:5672");
    assert_eq!(
        plan.connect.management_url.as_deref(),
        Some("http://events-rabbitmq.shop.svc:15672")
    );
    assert_eq!(
        plan.connect.auth,
        Auth::UserPassword("conveyor".into(), secret[keys::PASSWORD].clone())
    );
    let conf = &plan.objects.config_map.data.as_ref().unwrap()["rabbitmq.conf"];
    assert!(conf.contains("cluster_formation.k8s.service_name = events-rabbitmq-nodes"));
    assert!(
        !conf.contains(&secret[keys::PASSWORD]),
        "no secret in the ConfigMap"
    );
}

#[test]
fn a_secret_without_its_cookie_is_a_credentials_error() {
    let s = spec(serde_json::json!({}));
    let mut broken = secret();
    broken.remove(keys::ERLANG_COOKIE);
    let err = RabbitmqManaged.plan(&input(&s, Some(&broken))).unwrap_err();
    assert!(
        matches!(err, PlanError::Credentials(ref m) if m.contains("restore it")),
        "{err}"
    );
}

#[test]
fn the_statefulset_keeps_every_field_it_sets() {
    let s = spec(serde_json::json!({"storage": {"size": "5Gi"}}));
    let secret = secret();
    let plan = RabbitmqManaged.plan(&input(&s, Some(&secret))).unwrap();
    // Serialized back from the typed object: a misspelt field would have been dropped.
    let v = serde_json::to_value(&plan.objects.statefulset).unwrap();
    let pod = &v["spec"]["template"]["spec"];
    assert_eq!(v["spec"]["serviceName"], "events-rabbitmq-nodes");
    assert_eq!(v["spec"]["replicas"], 3);
    assert_eq!(pod["serviceAccountName"], "events-rabbitmq");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["initContainers"][0]["name"], "erlang-cookie");
    let node = &pod["containers"][0];
    assert_eq!(node["image"], "rabbitmq:4.1.4");
    assert_eq!(node["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(node["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(node["readinessProbe"]["tcpSocket"]["port"], "amqp");
    assert!(
        node["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "RABBITMQ_NODENAME")
    );
    let sources = &pod["volumes"][0]["projected"]["sources"];
    assert_eq!(sources.as_array().unwrap().len(), 2);
    assert_eq!(
        v["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "5Gi"
    );
    assert_eq!(
        v["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
        "Retain"
    );
    let hash = &v["spec"]["template"]["metadata"]["annotations"][labels::CONFIG_HASH];
    assert!(hash.is_string());
}

#[test]
fn tls_serves_amqps_and_https_and_conveyor_uses_them() {
    let s = spec(serde_json::json!({"tls": {"secretName": "events-tls"}}));
    let secret = secret();
    let plan = RabbitmqManaged.plan(&input(&s, Some(&secret))).unwrap();
    assert_eq!(plan.endpoint, "amqps://events-rabbitmq.shop.svc:5671");
    assert_eq!(
        plan.connect.management_url.as_deref(),
        Some("https://events-rabbitmq.shop.svc:15671")
    );
    let svc = serde_json::to_value(&plan.objects.services[1]).unwrap();
    let ports: Vec<&str> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["amqps", "management-tls"]);
}

#[test]
fn the_network_policy_admits_clients_and_peers_only() {
    let s = spec(serde_json::json!({}));
    let secret = secret();
    let plan = RabbitmqManaged.plan(&input(&s, Some(&secret))).unwrap();
    let np = serde_json::to_value(&plan.objects.network_policy).unwrap();
    let rules = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(
        rules[0]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        serde_json::json!(["billing", "shop"])
    );
    assert_eq!(rules[0]["ports"][0]["port"], 5672);
    assert_eq!(rules[1]["ports"][1]["port"], 25672);
    let role = serde_json::to_value(&plan.objects.peer_access.unwrap().role).unwrap();
    assert_eq!(
        role["rules"][0]["resourceNames"][0],
        "events-rabbitmq-nodes"
    );
}
