//! The identities of a managed broker under NATS decentralized authentication: an operator,
//! a system account, one application account with JetStream, and Conveyor's own user. Pure:
//! keys are generated or read from a key-value source (the broker's auth Secret); the public
//! part becomes the server configuration, the rest stays secret.

use std::collections::BTreeMap;

use super::jwt::{self, AccountLimits, Permissions, Role};

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

/// The public configuration the servers need, and Conveyor's own credentials.
#[derive(Clone, Debug)]
pub struct Identities {
    pub config: AuthConfig,
    pub creds: String,
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
    fn a_missing_key_is_named() {
        let mut stored = generate("events", 1_800_000_000).unwrap();
        stored.remove(keys::ACCOUNT_JWT);
        let err = read(|k| stored.get(k).cloned()).unwrap_err();
        assert_eq!(err.to_string(), "account.jwt is missing");
    }
}
