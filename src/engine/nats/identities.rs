//! The identities of a managed broker under NATS decentralized authentication: an operator,
//! a system account, one application account with JetStream, and Conveyor's own user. Pure:
//! keys are generated or read from a key-value source (the broker's auth Secret); the public
//! part becomes the server configuration, the rest stays secret.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::jwt::{self, AccountLimits, KeyPair, Permissions, Role};

/// The keys under which the identities are stored.
pub mod keys {
    pub const OPERATOR_SEED: &str = "operator.seed";
    pub const OPERATOR_JWT: &str = "operator.jwt";
    pub const SYSTEM_ACCOUNT_SEED: &str = "system-account.seed";
    pub const SYSTEM_ACCOUNT_JWT: &str = "system-account.jwt";
    pub const ACCOUNT_SEED: &str = "account.seed";
    pub const ACCOUNT_JWT: &str = "account.jwt";
    /// The credentials Conveyor itself connects with.
    pub const CONVEYOR_CREDS: &str = "conveyor.creds";
}

/// Why identities could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Jwt(#[from] jwt::Error),
    #[error("{0} is missing")]
    Missing(&'static str),
}

/// Public authentication material for NATS decentralized authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// The operator JWT the servers trust.
    pub operator_jwt: String,
    /// Public key of the system account.
    pub system_account: String,
    /// Account public keys and JWTs the servers load at start.
    pub accounts: Vec<(String, String)>,
}

/// The public configuration the servers need, Conveyor's own credentials, and the keys with
/// which it issues and revokes subscriptions' identities.
#[derive(Clone, Debug)]
pub struct Identities {
    pub config: AuthConfig,
    pub creds: String,
    pub issuer: Issuer,
}

/// The keys that sign subscriptions' user JWTs (the application account's) and the account JWT
/// that revokes them (the operator's), and the system account's, whose users may push an
/// account JWT to the servers.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Issuer {
    /// The application account's name in its JWT (the Broker's name).
    pub account_name: String,
    pub account_seed: String,
    pub operator_seed: String,
    pub system_account_seed: String,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("account_name", &self.account_name)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    fn account(&self) -> Result<KeyPair, Error> {
        Ok(jwt::key_from_seed(Role::Account, &self.account_seed)?)
    }

    /// The user key of the consumer `consumer`: derived from the account's seed, so that it
    /// can be revoked without having been stored anywhere.
    pub fn subscription_key(&self, consumer: &str) -> Result<KeyPair, Error> {
        let mut h = Sha256::new();
        h.update(b"conveyor subscription user\0");
        h.update(self.account_seed.as_bytes());
        h.update(b"\0");
        h.update(consumer.as_bytes());
        let raw: [u8; 32] = h.finalize().into();
        KeyPair::new_from_raw(nkeys::KeyPairType::User, raw)
            .map_err(|e| Error::Jwt(jwt::Error::from(e)))
    }

    /// A creds file for the consumer's user with `permissions`, issued at `iat`.
    pub fn subscription_creds(
        &self,
        consumer: &str,
        permissions: &Permissions,
        iat: i64,
    ) -> Result<String, Error> {
        let user = self.subscription_key(consumer)?;
        let token = jwt::user_jwt(
            &self.account()?,
            &user.public_key(),
            consumer,
            permissions,
            iat,
        )?;
        Ok(jwt::creds_file(&token, &jwt::seed(&user)?)?)
    }

    /// The application account's JWT refusing the users in `revocations`, issued at `iat`.
    pub fn account_jwt(
        &self,
        revocations: &BTreeMap<String, i64>,
        iat: i64,
    ) -> Result<String, Error> {
        let operator = jwt::key_from_seed(Role::Operator, &self.operator_seed)?;
        Ok(jwt::account_jwt_revoking(
            &operator,
            &self.account()?.public_key(),
            &self.account_name,
            AccountLimits::with_unlimited_jetstream(),
            revocations,
            iat,
        )?)
    }

    pub fn account_public(&self) -> Result<String, Error> {
        Ok(self.account()?.public_key())
    }

    /// Credentials of a system-account user, for pushing account JWTs.
    pub fn system_creds(&self, iat: i64) -> Result<String, Error> {
        let system = jwt::key_from_seed(Role::Account, &self.system_account_seed)?;
        let user = jwt::generate_key(Role::User);
        let token = jwt::user_jwt(
            &system,
            &user.public_key(),
            "conveyor-system",
            &Permissions::default(),
            iat,
        )?;
        Ok(jwt::creds_file(&token, &jwt::seed(&user)?)?)
    }
}

/// What a subscription's NATS user may do: fetch from and acknowledge on its one consumer, read
/// that consumer's info, and receive replies on an inbox prefix of its own.
pub fn subscription_permissions(stream: &str, consumer: &str) -> Permissions {
    Permissions {
        publish_allow: vec![
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
            format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
            format!("$JS.ACK.{stream}.{consumer}.>"),
        ],
        subscribe_allow: vec![format!("{}.>", inbox_prefix(consumer))],
    }
}

/// The inbox prefix a subscription's client must use (its replies arrive there only).
pub fn inbox_prefix(consumer: &str) -> String {
    format!("_INBOX_{consumer}")
}

/// New identities for the broker `broker`, issued at `iat` (Unix seconds), as stored key-values.
pub fn generate(broker: &str, iat: i64) -> Result<BTreeMap<&'static str, String>, Error> {
    let operator = jwt::generate_key(Role::Operator);
    let system = jwt::generate_key(Role::Account);
    let account = jwt::generate_key(Role::Account);
    let user = jwt::generate_key(Role::User);
    let operator_jwt = jwt::operator_jwt(&operator, broker, &system.public_key(), iat)?;
    let system_jwt = jwt::account_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        AccountLimits::without_jetstream(),
        iat,
    )?;
    let account_jwt = jwt::account_jwt(
        &operator,
        &account.public_key(),
        broker,
        AccountLimits::with_unlimited_jetstream(),
        iat,
    )?;
    let user_jwt = jwt::user_jwt(
        &account,
        &user.public_key(),
        "conveyor",
        &Permissions::default(),
        iat,
    )?;
    Ok(BTreeMap::from([
        (keys::OPERATOR_SEED, jwt::seed(&operator)?),
        (keys::OPERATOR_JWT, operator_jwt),
        (keys::SYSTEM_ACCOUNT_SEED, jwt::seed(&system)?),
        (keys::SYSTEM_ACCOUNT_JWT, system_jwt),
        (keys::ACCOUNT_SEED, jwt::seed(&account)?),
        (keys::ACCOUNT_JWT, account_jwt),
        (
            keys::CONVEYOR_CREDS,
            jwt::creds_file(&user_jwt, &jwt::seed(&user)?)?,
        ),
    ]))
}

/// Reads stored identities through `get`.
pub fn read(get: impl Fn(&'static str) -> Option<String>) -> Result<Identities, Error> {
    let value = |key: &'static str| get(key).ok_or(Error::Missing(key));
    let system_account =
        jwt::key_from_seed(Role::Account, &value(keys::SYSTEM_ACCOUNT_SEED)?)?.public_key();
    let account = jwt::key_from_seed(Role::Account, &value(keys::ACCOUNT_SEED)?)?.public_key();
    Ok(Identities {
        config: AuthConfig {
            operator_jwt: value(keys::OPERATOR_JWT)?,
            system_account: system_account.clone(),
            accounts: vec![
                (system_account, value(keys::SYSTEM_ACCOUNT_JWT)?),
                (account, value(keys::ACCOUNT_JWT)?),
            ],
        },
        creds: value(keys::CONVEYOR_CREDS)?,
        issuer: Issuer {
            account_name: jwt::claims(&value(keys::ACCOUNT_JWT)?)
                .and_then(|c| c["name"].as_str().map(str::to_string))
                .ok_or(Error::Missing(keys::ACCOUNT_JWT))?,
            account_seed: value(keys::ACCOUNT_SEED)?,
            operator_seed: value(keys::OPERATOR_SEED)?,
            system_account_seed: value(keys::SYSTEM_ACCOUNT_SEED)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identities_read_back_and_keep_seeds_out_of_the_config() {
        let stored = generate("events", 1_800_000_000).unwrap();
        let ids = read(|k| stored.get(k).cloned()).unwrap();
        assert_eq!(ids.config.accounts.len(), 2);
        assert_eq!(ids.config.operator_jwt, stored[keys::OPERATOR_JWT]);
        let public = format!("{:?}", ids.config);
        for seed in [
            keys::OPERATOR_SEED,
            keys::SYSTEM_ACCOUNT_SEED,
            keys::ACCOUNT_SEED,
        ] {
            assert!(
                !public.contains(stored[seed].as_str()),
                "{seed} must not reach the configuration"
            );
        }
    }

    #[test]
    fn a_subscriptions_user_is_derived_and_limited_to_its_consumer() {
        let stored = generate("events", 1_800_000_000).unwrap();
        let issuer = read(|k| stored.get(k).cloned()).unwrap().issuer;
        assert_eq!(issuer.account_name, "events");
        let a = issuer.subscription_key("sub_shop_a").unwrap().public_key();
        assert_eq!(
            a,
            issuer.subscription_key("sub_shop_a").unwrap().public_key()
        );
        assert_ne!(
            a,
            issuer.subscription_key("sub_shop_b").unwrap().public_key()
        );
        assert!(a.starts_with('U'));
        let p = subscription_permissions("topic_shop_orders", "sub_shop_a");
        assert!(
            p.publish_allow
                .iter()
                .all(|s| s.contains("topic_shop_orders.sub_shop_a"))
        );
        assert_eq!(p.subscribe_allow, ["_INBOX_sub_shop_a.>"]);
        assert!(!format!("{issuer:?}").contains(&issuer.account_seed));
    }

    #[test]
    fn a_missing_key_is_named() {
        let mut stored = generate("events", 1_800_000_000).unwrap();
        stored.remove(keys::ACCOUNT_JWT);
        let err = read(|k| stored.get(k).cloned()).unwrap_err();
        assert_eq!(err.to_string(), "account.jwt is missing");
    }
}
