//! External Brokers, whatever the engine: check every URL against the destinations the
//! operator may reach, read the Broker's own credentials Secret (never the operator's), then
//! connect and report.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};

use super::{Observed, probe, secret_text};
use crate::api::Broker;
use crate::api::broker::{Engine, ExternalBroker};
use crate::api::conditions::{ConditionType, Desired, Reason};
use crate::controller::context::Context;
use crate::controller::error::Result;
use crate::controller::refs::{self, Resolved};
use crate::engine::destinations::{Refused, system_resolve};
use crate::engine::registry::{Auth, ConnectRequest};

pub async fn reconcile(obj: &Broker, ctx: &Context) -> Result<Observed> {
    let Some(ext) = &obj.spec.external else {
        return Ok(Observed::default());
    };
    let ns = obj.namespace().unwrap_or_default();
    let endpoint = Some(ext.urls.join(","));
    if let Err(refused) = check_destinations(ctx, &urls(ext)).await {
        ctx.brokers.remove(&super::key(obj));
        return Ok(Observed {
            endpoint,
            ..refused_destination(refused.to_string())
        });
    }
    let req = match connect_request(&ctx.client, &ns, obj.spec.engine, ext).await? {
        Ok(req) => req,
        Err(missing) => {
            return Ok(Observed {
                endpoint,
                ..Observed::unresolved(missing)
            });
        }
    };
    // Keep the Secrets readable until the Broker is gone (see `credentials`); a failure here
    // does not stop the Broker from connecting.
    if let Err(e) = super::credentials::hold(ctx, obj).await {
        tracing::warn!(broker = %obj.name_any(), error = %e, "could not hold the Broker's Secrets for its deletion");
    }
    let probed = probe(ctx, &super::key(obj), &req).await;
    let ready = match (&probed.not_ready, &probed.info) {
        (Some(not_ready), _) => not_ready.clone(),
        (None, Some(info)) => Desired::is_true(
            ConditionType::Ready,
            Reason::Connected,
            format!(
                "{} {}, {} server(s)",
                obj.spec.engine.product(),
                info.version,
                info.servers
            ),
        ),
        (None, None) => Desired::is_false(
            ConditionType::Ready,
            Reason::Unreachable,
            "the broker did not report itself",
        ),
    };
    Ok(Observed {
        conditions: vec![refs::resolved(), probed.reachable, ready],
        endpoint,
        info: probed.info,
        ..Default::default()
    })
}

/// Every URL the operator would connect to: the client URLs and the management API.
fn urls(ext: &ExternalBroker) -> Vec<String> {
    let mut v = ext.urls.clone();
    v.extend(ext.rabbitmq.iter().map(|r| r.management_url.clone()));
    v
}

fn refused_destination(msg: String) -> Observed {
    Observed {
        conditions: vec![
            refs::resolved(),
            Desired::is_false(
                ConditionType::Reachable,
                Reason::DestinationNotAllowed,
                msg.clone(),
            ),
            Desired::is_false(ConditionType::Ready, Reason::DestinationNotAllowed, msg),
        ],
        ..Default::default()
    }
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

/// The credentials in the Broker's Secret: a NATS credentials file, a token, or a user and
/// password (`user`, or `username` as RabbitMQ's tools write it).
fn credentials(secret: &Secret) -> Option<Auth> {
    let text = |k: &str| secret_text(secret, k);
    if let Some(creds) = text("creds") {
        return Some(Auth::CredentialsFile(creds));
    }
    if let Some(token) = text("token") {
        return Some(Auth::Token(token));
    }
    let user = text("user").or_else(|| text("username"))?;
    Some(Auth::UserPassword(user, text("password")?))
}

/// The connection settings from the Broker's own Secrets, or the condition naming what is missing.
async fn connect_request(
    client: &Client,
    ns: &str,
    engine: Engine,
    ext: &ExternalBroker,
) -> Result<Resolved<ConnectRequest>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let missing = |name: &str, what: &str| {
        refs::missing(
            Reason::SecretNotFound,
            format!("Secret {ns}/{name} named in {what} does not exist or lacks the keys it needs"),
        )
    };
    let mut auth = Auth::None;
    if let Some(r) = &ext.credentials_secret_ref {
        let keys = match engine {
            Engine::Nats => "keys: creds, or token, or user and password",
            Engine::Rabbitmq => "keys: user (or username) and password",
        };
        let found = secrets
            .get_opt(&r.name)
            .await?
            .and_then(|s| credentials(&s));
        auth = match found {
            Some(Auth::UserPassword(u, p)) => Auth::UserPassword(u, p),
            Some(other) if engine == Engine::Nats => other,
            _ => {
                let what = format!("spec.external.credentialsSecretRef ({keys})");
                return Ok(Err(missing(&r.name, &what)));
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
    Ok(Ok(ConnectRequest {
        engine,
        urls: ext.urls.clone(),
        management_url: ext.rabbitmq.as_ref().map(|r| r.management_url.clone()),
        virtual_host: ext.rabbitmq.as_ref().and_then(|r| r.virtual_host.clone()),
        auth,
        ca_pem,
        only_listed_urls: true,
        issuer: None,
    }))
}
