//! Subscriptions' identities on RabbitMQ: one user per subscription, `<consumer>@<vhost>` (user
//! names are server-wide, consumers only unique in their virtual host), tagged as Conveyor's,
//! with no management tag and, in the virtual host, the right to read (consume from and
//! acknowledge on) the one queue it consumes: nothing to configure, nothing to publish to.
//! Deleting the user closes its connections and refuses its password from then on.

use super::RabbitConnection;
use super::management::{ManagementClient, ManagementError, Permissions};
use super::topology as t;
use crate::engine::identities::{Credentials, Issued, random_secret};
use crate::engine::{ConsumerSpec, DestinationKind, EngineError, SyncOutcome};

/// The tag that marks the users Conveyor made for subscriptions. It grants nothing.
pub const TAG: &str = "conveyor-consumer";

/// Bytes of randomness in a password (256 bits).
const PASSWORD_BYTES: usize = 32;

/// The user of the consumer `consumer` in `vhost`.
pub fn user_name(consumer: &str, vhost: &str) -> String {
    format!("{consumer}@{vhost}")
}

/// The queue a subscription consumes: its own on a Topic, the Queue's on a Queue.
pub fn consumed_queue(spec: &ConsumerSpec) -> &str {
    match spec.source_kind {
        DestinationKind::Topic => &spec.name,
        DestinationKind::Queue => &spec.source,
    }
}

/// What the subscription's user may do in the virtual host.
pub fn permissions(spec: &ConsumerSpec) -> Permissions {
    Permissions {
        configure: "^$".into(),
        write: "^$".into(),
        read: t::exact(consumed_queue(spec)),
    }
}

/// `previous` when it is this consumer's user, else a new password for it.
pub fn issue(spec: &ConsumerSpec, vhost: &str, previous: Option<&Credentials>) -> Issued {
    let user = user_name(&spec.name, vhost);
    match previous {
        Some(c @ Credentials::UserPassword { user: u, .. }) if *u == user => {
            Issued::Credentials(c.clone())
        }
        _ => Issued::Credentials(Credentials::UserPassword {
            user,
            password: random_secret(PASSWORD_BYTES),
        }),
    }
}

/// Creates or resets the user; a refusal says which right the Broker's own user lacks.
async fn put_user(api: &ManagementClient, user: &str, password: &str) -> Result<(), EngineError> {
    match api.put_user(user, password, &[TAG]).await {
        Ok(_) => Ok(()),
        Err(ManagementError::Unauthorized(m)) => Err(EngineError::Unauthorized(format!(
            "{m}: making a user for each subscription needs the administrator tag on the Broker's RabbitMQ user"
        ))),
        Err(e) => Err(e.into()),
    }
}

impl RabbitConnection {
    /// Makes the user exist with this password, the tag and the consumer's permissions;
    /// a user of that name that Conveyor did not tag is left alone (`Conflict`).
    pub(super) async fn ensure_identity(
        &self,
        spec: &ConsumerSpec,
        credentials: &Credentials,
    ) -> Result<SyncOutcome<()>, EngineError> {
        let Credentials::UserPassword { user, password } = credentials else {
            return Err(EngineError::Request(
                "RabbitMQ takes a user name and password".into(),
            ));
        };
        let api = &self.api;
        let wanted = permissions(spec);
        let mut changed = Vec::new();
        match api.user(user).await? {
            Some(u) if !u.tags.iter().any(|t| t == TAG) => {
                return Ok(SyncOutcome::Conflict(format!(
                    "RabbitMQ user {user} exists and was not made by Conveyor"
                )));
            }
            Some(u) if u.has_password(password) == Some(true) && u.tags == [TAG] => {}
            Some(_) => {
                put_user(api, user, password).await?;
                changed.push("password".to_string());
            }
            None => {
                put_user(api, user, password).await?;
                api.put_permissions(&self.vhost, user, &wanted).await?;
                return Ok(SyncOutcome::Created(()));
            }
        }
        if api.permissions(&self.vhost, user).await?.as_ref() != Some(&wanted) {
            api.put_permissions(&self.vhost, user, &wanted).await?;
            changed.push("permissions".to_string());
        }
        Ok(if changed.is_empty() {
            SyncOutcome::Unchanged(())
        } else {
            SyncOutcome::Updated((), changed)
        })
    }

    /// Deletes the consumer's user if Conveyor made it; false when there was none of ours.
    pub(super) async fn revoke_identity(&self, consumer: &str) -> Result<bool, EngineError> {
        let user = user_name(consumer, &self.vhost);
        match self.api.user(&user).await? {
            Some(u) if u.tags.iter().any(|t| t == TAG) => Ok(self.api.delete_user(&user).await?),
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::StartFrom;
    use std::time::Duration;

    fn spec(kind: DestinationKind) -> ConsumerSpec {
        ConsumerSpec {
            source_kind: kind,
            source: "topic_shop_orders".into(),
            name: "sub_shop_payment".into(),
            event_types: vec![],
            ack_wait: Duration::from_secs(30),
            max_deliveries: 5,
            backoff: vec![],
            max_ack_pending: 100,
            start: StartFrom::New,
            dead_letter: false,
            replicas: 1,
            owner: "EventSubscription shop/payment".into(),
        }
    }

    #[test]
    fn a_user_reads_only_the_queue_it_consumes() {
        let p = permissions(&spec(DestinationKind::Topic));
        assert_eq!((p.configure.as_str(), p.write.as_str()), ("^$", "^$"));
        assert_eq!(p.read, "^sub_shop_payment$");
        assert_eq!(
            permissions(&spec(DestinationKind::Queue)).read,
            "^topic_shop_orders$"
        );
    }

    #[test]
    fn previous_credentials_are_kept_only_for_the_same_user() {
        let s = spec(DestinationKind::Topic);
        let Issued::Credentials(first) = issue(&s, "prod", None) else {
            panic!()
        };
        assert_eq!(
            issue(&s, "prod", Some(&first)),
            Issued::Credentials(first.clone())
        );
        let Issued::Credentials(other) = issue(&s, "staging", Some(&first)) else {
            panic!()
        };
        assert_ne!(
            other, first,
            "another virtual host's user gets its own password"
        );
    }
}
