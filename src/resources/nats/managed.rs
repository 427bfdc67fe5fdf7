//! The managed-broker strategy of NATS: decentralized-auth identities in the broker's auth
//! Secret, `nats.conf` rendered from the spec, and the objects of `super`.

use std::collections::BTreeMap;

use super::config::{self, AuthConfig, ConfigInput, Paths};
use super::{Names, Plan, statefulset};
use crate::api::broker::{Authentication, ManagedBroker, ManagedNats};
use crate::engine::Engine;
use crate::engine::nats::identities;
use crate::engine::registry::{Auth, ConnectRequest};
use crate::resources::managed::{
    ManagedEngine, ManagedInput, ManagedObjects, ManagedPlan, PlanError, built,
};
use crate::resources::quantity;

/// Managed NATS brokers.
pub struct NatsManaged;

fn nats_settings(spec: &ManagedBroker) -> ManagedNats {
    spec.nats.clone().unwrap_or_default()
}

impl ManagedEngine for NatsManaged {
    fn statefulset_name(&self, broker: &str) -> String {
        Names::new(broker).servers
    }

    fn secret_name(&self, broker: &str) -> String {
        Names::new(broker).auth
    }

    fn keeps_secret(&self, spec: &ManagedBroker) -> bool {
        nats_settings(spec).authentication == Authentication::Jwt
    }

    fn new_secret(&self, broker: &str, iat: i64) -> Result<BTreeMap<String, String>, PlanError> {
        let keys =
            identities::generate(broker, iat).map_err(|e| PlanError::Credentials(e.to_string()))?;
        Ok(keys.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    fn tls_secret<'a>(&self, spec: &'a ManagedBroker) -> Option<&'a str> {
        spec.tls.as_ref().map(|t| t.secret_name.as_str())
    }

    fn plan(&self, input: &ManagedInput) -> Result<ManagedPlan, PlanError> {
        let names = Names::new(input.broker);
        let tls = input.spec.tls.is_some();
        let endpoint = names.client_url(input.namespace, tls);
        let ids = match input.secret {
            Some(secret) => Some(identities::read(|k| secret.get(k).cloned()).map_err(|e| {
                PlanError::Credentials(format!(
                    "Secret {}/{}: {e}; restore it from a backup (new keys would lock out existing clients and data)",
                    input.namespace, names.auth
                ))
            })?),
            None => None,
        };
        let connect = ConnectRequest {
            engine: Engine::Nats,
            urls: vec![endpoint.clone()],
            auth: ids
                .as_ref()
                .map_or(Auth::None, |i| Auth::CredentialsFile(i.creds.clone())),
            issuer: ids.as_ref().map(|i| i.issuer.clone()),
            ca_pem: input.ca_pem.clone(),
            // The servers are ours and advertise only their own pods.
            only_listed_urls: false,
            ..Default::default()
        };
        let plan = Plan {
            broker: input.broker,
            namespace: input.namespace,
            config: render_config(input, &names, ids.map(|i| i.config)),
            names,
            spec: input.spec,
            replicas: input.replicas,
            client_namespaces: input.client_namespaces.clone(),
            owner: input.owner.clone(),
        };
        let objects = ManagedObjects {
            config_map: super::config_map(&plan),
            services: vec![
                built("the cluster Service", super::cluster_service(&plan))?,
                built("the client Service", super::client_service(&plan))?,
            ],
            disruption_budget: built("the PodDisruptionBudget", super::disruption_budget(&plan))?,
            network_policy: built("the NetworkPolicy", super::network_policy(&plan))?,
            peer_access: None,
            statefulset: built("the StatefulSet", statefulset::statefulset(&plan))?,
        };
        Ok(ManagedPlan {
            objects,
            connect,
            endpoint,
        })
    }
}

fn render_config(input: &ManagedInput, names: &Names, auth: Option<AuthConfig>) -> String {
    // Leave a tenth of the volume for the filesystem and compaction.
    let store = quantity::bytes(&input.spec.storage.size).unwrap_or(1 << 30) / 10 * 9;
    config::render(&ConfigInput {
        cluster: input.broker.to_string(),
        routes: (0..input.replicas)
            .map(|i| names.route(input.namespace, i))
            .collect(),
        client_port: config::CLIENT_PORT,
        cluster_port: config::CLUSTER_PORT,
        monitor_port: config::MONITOR_PORT,
        max_payload: nats_settings(input.spec).max_payload,
        max_file_store: store,
        tls: input.spec.tls.is_some(),
        auth,
        paths: Paths::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn input<'a>(
        spec: &'a ManagedBroker,
        secret: Option<&'a BTreeMap<String, String>>,
    ) -> ManagedInput<'a> {
        ManagedInput {
            broker: "events",
            namespace: "shop",
            spec,
            replicas: 3,
            client_namespaces: vec![],
            owner: OwnerReference::default(),
            secret,
            ca_pem: None,
        }
    }

    #[test]
    fn jwt_brokers_connect_with_the_minted_credentials() {
        let spec: ManagedBroker = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(
            NatsManaged.keeps_secret(&spec),
            "JWT authentication keeps keys"
        );
        let secret = NatsManaged.new_secret("events", 1_800_000_000).unwrap();
        let plan = NatsManaged.plan(&input(&spec, Some(&secret))).unwrap();
        assert!(matches!(plan.connect.auth, Auth::CredentialsFile(_)));
        assert_eq!(plan.endpoint, "nats://events-nats.shop.svc:4222");
        assert_eq!(plan.objects.services.len(), 2);
        let conf = &plan.objects.config_map.data.as_ref().unwrap()["nats.conf"];
        assert!(conf.contains("operator:"), "{conf}");
    }

    #[test]
    fn a_broken_secret_is_a_credentials_error_not_new_keys() {
        let spec: ManagedBroker = serde_json::from_value(serde_json::json!({})).unwrap();
        let empty = BTreeMap::new();
        let err = NatsManaged.plan(&input(&spec, Some(&empty))).unwrap_err();
        assert!(
            matches!(err, PlanError::Credentials(ref m) if m.contains("restore it")),
            "{err}"
        );
    }

    #[test]
    fn brokers_without_authentication_keep_no_secret() {
        let spec: ManagedBroker =
            serde_json::from_value(serde_json::json!({"nats": {"authentication": "None"}}))
                .unwrap();
        assert!(!NatsManaged.keeps_secret(&spec));
        let plan = NatsManaged.plan(&input(&spec, None)).unwrap();
        assert_eq!(plan.connect.auth, Auth::None);
    }
}
