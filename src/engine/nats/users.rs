//! Subscriptions' identities on a managed NATS broker (decentralized authentication): a user
//! JWT signed by the application account's key, allowed to fetch from and acknowledge on its
//! one consumer and to receive replies on an inbox prefix of its own; nothing else (not other
//! consumers, not publishing to streams, not the JetStream API beyond its consumer's info).
//!
//! The user's key is derived from the account seed and the consumer name, so that revoking it
//! needs nothing stored: Conveyor adds the key to the account JWT's revocations, signs it with
//! the operator key and pushes it through a system-account user (`$SYS.REQ.CLAIMS.UPDATE`);
//! the servers close the user's connections and refuse its JWT from then on. The servers'
//! resolver directory keeps the newest account JWT across restarts.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use super::connection::Connection;
use super::identities::{inbox_prefix, subscription_permissions};
use super::jwt;
use crate::engine::{ConsumerSpec, Credentials, EngineError, Issued};

/// What isolation a NATS subscription has when Conveyor cannot issue identities.
pub const UNISOLATED: &str = "Conveyor issues NATS identities only on the brokers it runs (it holds their account keys): the Secret carries no credentials, and the consumer connects with credentials of its own, isolated only as far as the NATS server's own configuration makes it";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn request(e: impl std::fmt::Display) -> EngineError {
    EngineError::Request(e.to_string())
}

/// The `nats` claims (permissions) of the user JWT in a creds file.
fn creds_claims(creds: &str) -> Option<serde_json::Value> {
    let token = creds.lines().find(|l| l.starts_with("ey"))?;
    jwt::claims(token)
}

impl Connection {
    /// `previous` while it is the consumer's user with the consumer's permissions, else new
    /// credentials; `Unavailable` without the account's keys.
    pub(super) fn issue_identity(
        &self,
        spec: &ConsumerSpec,
        previous: Option<&Credentials>,
    ) -> Issued {
        let Some(issuer) = &self.issuer else {
            return Issued::Unavailable(UNISOLATED.into());
        };
        let key = match issuer.subscription_key(&spec.name) {
            Ok(k) => k.public_key(),
            Err(e) => return Issued::Unavailable(format!("the account key is unusable: {e}")),
        };
        let permissions = subscription_permissions(&spec.source, &spec.name);
        let inbox = inbox_prefix(&spec.name);
        if let Some(
            c @ Credentials::NatsCreds {
                user,
                creds,
                inbox_prefix,
            },
        ) = previous
            && *user == key
            && *inbox_prefix == inbox
            && creds_claims(creds).is_some_and(|c| {
                c["nats"]["pub"]["allow"] == serde_json::json!(permissions.publish_allow)
                    && c["nats"]["sub"]["allow"] == serde_json::json!(permissions.subscribe_allow)
            })
        {
            return Issued::Credentials(c.clone());
        }
        match issuer.subscription_creds(&spec.name, &permissions, now()) {
            Ok(creds) => Issued::Credentials(Credentials::NatsCreds {
                user: key,
                creds,
                inbox_prefix: inbox,
            }),
            Err(e) => Issued::Unavailable(format!("minting the user JWT failed: {e}")),
        }
    }

    /// Adds the consumer's user to the account's revocations and pushes the account JWT.
    pub(super) async fn revoke_identity(&self, consumer: &str) -> Result<bool, EngineError> {
        let Some(issuer) = &self.issuer else {
            return Ok(false);
        };
        let key = issuer
            .subscription_key(consumer)
            .map_err(request)?
            .public_key();
        let account = issuer.account_public().map_err(request)?;
        let system = self
            .system_client(&issuer.system_creds(now()).map_err(request)?)
            .await?;
        let lookup = format!("$SYS.REQ.ACCOUNT.{account}.CLAIMS.LOOKUP");
        let current = system
            .request(lookup, Vec::new().into())
            .await
            .map_err(|e| request(format!("reading the account JWT: {e}")))?;
        let current = jwt::claims(&String::from_utf8_lossy(&current.payload)).unwrap_or_default();
        let mut revocations: BTreeMap<String, i64> =
            serde_json::from_value(current["nats"]["revocations"].clone()).unwrap_or_default();
        let at = now();
        revocations.insert(key, at);
        // The servers keep an account JWT only if it is not older than the one they hold.
        let iat = at.max(current["iat"].as_i64().unwrap_or(0) + 1);
        let updated = issuer.account_jwt(&revocations, iat).map_err(request)?;
        let reply = system
            .request("$SYS.REQ.CLAIMS.UPDATE", updated.into_bytes().into())
            .await
            .map_err(|e| request(format!("pushing the account JWT: {e}")))?;
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
        if let Some(error) = answer.get("error") {
            return Err(request(format!(
                "the servers refused the account JWT: {error}"
            )));
        }
        Ok(true)
    }
}
