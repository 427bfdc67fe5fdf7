//! Resolving the references between Conveyor resources. A reference that cannot be used is not
//! an error: it becomes a `ResolvedRefs=False` condition that says what to fix.

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;

use super::context::Context;
use super::error::Result;
use crate::api::Broker;
use crate::api::common::BrokerReference;
use crate::api::conditions::{ConditionType, Desired, Reason};

/// A referenced object, or the condition explaining why it cannot be used.
pub type Resolved<T> = std::result::Result<T, Desired>;

fn unresolved(reason: Reason, message: String) -> Desired {
    Desired::is_false(ConditionType::ResolvedRefs, reason, message)
}

/// The condition stating that every reference resolved.
pub fn resolved() -> Desired {
    Desired::is_true(
        ConditionType::ResolvedRefs,
        Reason::Resolved,
        "all references resolved",
    )
}

/// The namespace and name a Broker reference points at, from a resource in `from_ns`.
pub fn broker_key<'a>(from_ns: &'a str, r: &'a BrokerReference) -> (&'a str, &'a str) {
    (r.namespace.as_deref().unwrap_or(from_ns), &r.name)
}

/// Whether `broker` may be used by resources in namespace `ns`.
pub fn broker_allows(broker: &Broker, broker_ns: &str, ns: &str) -> bool {
    crate::api::common::namespace_allowed(&broker.spec.allowed_namespaces, broker_ns, ns)
}

/// Looks up the Broker that a resource in `from_ns` refers to: in the Broker cache, or when it
/// is not there (yet), from the API server. A Broker outside the operator's namespaces has no
/// controller here, so it cannot be used.
pub async fn broker(ctx: &Context, from_ns: &str, r: &BrokerReference) -> Result<Resolved<Broker>> {
    let watched = &ctx.config.namespaces;
    let (ns, name) = broker_key(from_ns, r);
    if !watched.is_empty() && !watched.iter().any(|w| w == ns) {
        return Ok(Err(unresolved(
            Reason::RefNotPermitted,
            format!(
                "Broker {ns}/{name} is in a namespace this operator does not watch ({})",
                watched.join(", ")
            ),
        )));
    }
    let found = match ctx.broker_cache.get(ns, name) {
        Some(b) => Some(Broker::clone(&b)),
        None => {
            let api: Api<Broker> = Api::namespaced(ctx.client.clone(), ns);
            api.get_opt(name).await?
        }
    };
    Ok(match found {
        None => Err(unresolved(
            Reason::BrokerNotFound,
            format!("Broker {ns}/{name} does not exist"),
        )),
        Some(b) if !broker_allows(&b, ns, from_ns) => Err(unresolved(
            Reason::RefNotPermitted,
            format!(
                "Broker {ns}/{name} does not allow namespace {from_ns}: add it to the Broker's spec.allowedNamespaces"
            ),
        )),
        Some(b) => Ok(b),
    })
}

/// Checks that the Secret `name` in `ns` exists.
pub async fn secret(client: &Client, ns: &str, name: &str, field: &str) -> Result<Resolved<()>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    Ok(match api.get_metadata_opt(name).await? {
        Some(_) => Ok(()),
        None => Err(unresolved(
            Reason::SecretNotFound,
            format!("Secret {ns}/{name} named in {field} does not exist"),
        )),
    })
}

/// Turns a missing object into the condition naming it.
pub fn missing(reason: Reason, message: String) -> Desired {
    unresolved(reason, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BrokerSpec;
    use crate::api::broker::Engine;

    fn broker(allowed: &[&str]) -> Broker {
        Broker::new(
            "events",
            BrokerSpec {
                engine: Engine::Nats,
                managed: None,
                external: None,
                allowed_namespaces: allowed.iter().map(|s| s.to_string()).collect(),
            },
        )
    }

    #[test]
    fn own_namespace_is_always_allowed() {
        assert!(broker_allows(&broker(&[]), "shop", "shop"));
        assert!(!broker_allows(&broker(&[]), "shop", "billing"));
    }

    #[test]
    fn listed_or_wildcard_namespaces_are_allowed() {
        assert!(broker_allows(&broker(&["billing"]), "shop", "billing"));
        assert!(!broker_allows(&broker(&["billing"]), "shop", "other"));
        assert!(broker_allows(&broker(&["*"]), "shop", "other"));
    }

    #[test]
    fn reference_defaults_to_own_namespace() {
        let r = BrokerReference {
            name: "events".into(),
            namespace: None,
        };
        assert_eq!(broker_key("shop", &r), ("shop", "events"));
        let r = BrokerReference {
            name: "events".into(),
            namespace: Some("infra".into()),
        };
        assert_eq!(broker_key("shop", &r), ("infra", "events"));
    }
}
