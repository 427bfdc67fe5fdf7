//! External Brokers: check the URLs against the destinations the operator may reach, read the
//! Broker's own credentials Secret (never the operator's), then connect and report.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};

use super::{Observed, probe, secret_text};
use crate::api::Broker;
use crate::api::broker::ExternalBroker;
use crate::api::conditions::{ConditionType, Desired, Reason};
use crate::controller::context::Context;
use crate::controller::error::Result;
use crate::controller::refs;
use crate::engine::destinations::{Refused, system_resolve};
use crate::engine::nats::connection::{Auth, ConnectSpec};

pub async fn reconcile(obj: &Broker, ctx: &Context) -> Result<Observed> {
    let Some(ext) = &obj.spec.external else {
        return Ok(Observed::default());
    };
    let ns = obj.namespace().unwrap_or_default();
    let endpoint = Some(ext.urls.join(","));
    if let Err(refused) = check_destinations(ctx, &ext.urls).await {
        let msg = refused.to_string();
        ctx.connections.remove(&super::key(obj));
        return Ok(Observed {
            conditions: vec![
                refs::resolved(),
                Desired::is_false(
                    ConditionType::Reachable,
                    Reason::DestinationNotAllowed,
                    msg.clone(),
                ),
                Desired::is_false(ConditionType::Ready, Reason::DestinationNotAllowed, msg),
            ],
            endpoint,
            ..Default::default()
        });
    }
    let spec = match connect_spec(&ctx.client, &ns, ext).await? {
        Ok(spec) => spec,
        Err(missing) => {
            let ready = missing.as_not_ready();
            return Ok(Observed {
                conditions: vec![missing, ready],
                endpoint,
                ..Default::default()
            });
        }
    };
    let (reachable, verdict) = probe(ctx, &super::key(obj), &spec).await;
    let ready = match &verdict {
        Ok(info) => Desired::is_true(
            ConditionType::Ready,
            Reason::Connected,
            format!(
                "NATS {} with JetStream, {} server(s)",
                info.version, info.servers
            ),
        ),
        Err(not_ready) => not_ready.clone(),
    };
    Ok(Observed {
        conditions: vec![refs::resolved(), reachable, ready],
        endpoint,
        info: verdict.ok(),
        ..Default::default()
    })
}

/// Checks every URL; host names are resolved off the async runtime.
async fn check_destinations(ctx: &Context, urls: &[String]) -> std::result::Result<(), Refused> {
    let destinations = ctx.config.destinations.clone();
    let urls = urls.to_vec();
    tokio::task::spawn_blocking(move || {
        urls.iter()
            .try_for_each(|u| destinations.check(u, system_resolve))
    })
    .await
    .unwrap_or_else(|e| Err(Refused::BadUrl(format!("checking the URLs failed: {e}"))))
}

/// The connection settings from the Broker's own Secrets, or the condition naming what is missing.
async fn connect_spec(
    client: &Client,
    ns: &str,
    ext: &ExternalBroker,
) -> Result<std::result::Result<ConnectSpec, Desired>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let missing = |name: &str, what: &str| {
        refs::missing(
            Reason::SecretNotFound,
            format!("Secret {ns}/{name} named in {what} does not exist or lacks the keys it needs"),
        )
    };
    let mut auth = Auth::None;
    if let Some(r) = &ext.credentials_secret_ref {
        let Some(secret) = secrets.get_opt(&r.name).await? else {
            return Ok(Err(missing(&r.name, "spec.external.credentialsSecretRef")));
        };
        auth = match (
            secret_text(&secret, "creds"),
            secret_text(&secret, "token"),
            secret_text(&secret, "user"),
            secret_text(&secret, "password"),
        ) {
            (Some(creds), _, _, _) => Auth::Creds(creds),
            (_, Some(token), _, _) => Auth::Token(token),
            (_, _, Some(user), Some(password)) => Auth::UserPassword(user, password),
            _ => {
                return Ok(Err(missing(
                    &r.name,
                    "spec.external.credentialsSecretRef (keys: creds, token, or user and password)",
                )));
            }
        };
    }
    let mut ca_pem = None;
    if let Some(r) = ext.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        let ca = secrets
            .get_opt(&r.name)
            .await?
            .and_then(|s| secret_text(&s, "ca.crt"));
        let Some(ca) = ca else {
            return Ok(Err(missing(
                &r.name,
                "spec.external.tls.caSecretRef (key ca.crt)",
            )));
        };
        ca_pem = Some(ca);
    }
    Ok(Ok(ConnectSpec {
        urls: ext.urls.clone(),
        auth,
        ca_pem,
        only_listed_urls: true,
    }))
}
