//! NATS decentralized authentication ("operator mode") for managed brokers.
//!
//! In operator mode a NATS server does not hold a list of users. It trusts one *operator* key
//! and verifies chains of signed JSON Web Tokens (JWTs):
//!
//! ```text
//! operator (self-signed JWT, names the system account)
//!   └─ account JWT, signed by the operator   (limits: connections, JetStream, ...)
//!        └─ user JWT, signed by the account   (publish/subscribe permissions)
//! ```
//!
//! The server is configured with the operator JWT and the account JWTs (for example
//! `resolver: MEMORY` with `resolver_preload`). A client presents a user JWT and proves it
//! holds the user's private key by signing the server's nonce. The server checks that the
//! user JWT was signed by an account it knows and that the account JWT was signed by the
//! operator. New users can therefore be minted at any time, by whoever holds the account
//! key, without touching or reloading the servers.
//!
//! Every identity is an ed25519 *nkey*: a public key such as `O...` (operator), `A...`
//! (account) or `U...` (user), and a secret seed `SO...`, `SA...` or `SU...`. Keys are made
//! with [`generate_key`], restored with [`key_from_seed`]; [`KeyPair::public_key`] gives the
//! public key and [`seed`] the seed.
//!
//! # Token format
//!
//! The tokens follow what the reference Go library (`github.com/nats-io/jwt/v2`) writes:
//!
//! * header `{"typ":"JWT","alg":"ed25519-nkey"}`;
//! * header, claims and signature each base64url-encoded without padding, joined by `.`;
//! * signature: the issuer nkey's ed25519 signature over `<header_b64>.<claims_b64>`;
//! * claims: `jti`, `iat`, `iss` (issuer public key), `name`, `sub` (subject public key) and
//!   `nats`, the type specific part, which carries `type` (`operator`, `account` or `user`)
//!   and `version: 2`;
//! * `jti` is the unpadded base32 of the SHA-512/256 hash of the JSON of the standard claims
//!   alone (`iat`, `iss`, `name`, `sub`; `jti` empty, hence absent), as the Go library does.
//!
//! JSON is written in the Go library's field order, with Go's escaping of `<`, `>` and `&`,
//! so a token carries the same bytes `nsc` would write for the same claims and issue time.
//! The issue time is a parameter so that every function here is deterministic and free of
//! I/O; callers pass the current Unix time.
//!
//! Users' credentials reach clients as a *creds file* ([`creds_file`]), the format read by
//! `nats` CLI and client libraries (`async_nats::ConnectOptions::with_credentials`).

use std::collections::BTreeMap;

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use serde::Serialize;
use sha2::{Digest, Sha512_256};

/// An nkey pair (or a public key alone), re-exported from the `nkeys` crate.
pub use nkeys::KeyPair;

/// The value NATS reads as "no limit" in every numeric limit.
pub const NO_LIMIT: i64 = -1;

/// The JOSE header of every token, before base64url encoding.
const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// The claims format version NATS 2.x expects in `nats.version`.
const CLAIMS_VERSION: u8 = 2;

/// Errors minting tokens and credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `nkeys` crate rejected a key or seed, or could not sign.
    #[error("nkey: {0}")]
    Nkey(#[from] nkeys::error::Error),
    /// A key or seed of the wrong role (for example an account seed where a user seed is
    /// expected).
    #[error("{what} must be {expected} key, not a key of type {actual}")]
    WrongRole {
        /// What the key was given for, e.g. "issuer of a user JWT".
        what: &'static str,
        /// The role the key must have.
        expected: Role,
        /// The role it has.
        actual: String,
    },
    /// Claims could not be serialized (not expected to happen).
    #[error("serializing claims: {0}")]
    Json(#[from] serde_json::Error),
    /// JetStream limits that would not enable JetStream or are out of range.
    #[error("invalid account limits: {0}")]
    InvalidLimits(&'static str),
    /// A permission subject that NATS would refuse.
    #[error("invalid permission subject {subject:?}: {reason}")]
    InvalidSubject {
        /// The offending subject.
        subject: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Not a well-formed NATS JWT.
    #[error("malformed JWT: {0}")]
    Malformed(&'static str),
    /// The signature of a JWT does not verify against its issuer (`iss`).
    #[error("JWT signature does not verify against its issuer")]
    BadSignature,
}

/// The role of an nkey in the trust chain, which is also the `nats.type` of the JWT that
/// describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The root of trust; signs account JWTs. Public keys start with `O`.
    Operator,
    /// A tenant; signs user JWTs. Public keys start with `A`.
    Account,
    /// A client identity. Public keys start with `U`.
    User,
}

impl Role {
    /// The claim type as written in `nats.type`: `operator`, `account` or `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Account => "account",
            Role::User => "user",
        }
    }

    fn key_type(self) -> nkeys::KeyPairType {
        match self {
            Role::Operator => nkeys::KeyPairType::Operator,
            Role::Account => nkeys::KeyPairType::Account,
            Role::User => nkeys::KeyPairType::User,
        }
    }

    fn article(self) -> &'static str {
        match self {
            Role::Operator | Role::Account => "an",
            Role::User => "a",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.article(), self.as_str())
    }
}

/// Generates a fresh random key pair for `role`.
pub fn generate_key(role: Role) -> KeyPair {
    KeyPair::new(role.key_type())
}

/// Restores a key pair from its seed (`SO...`, `SA...` or `SU...`), checking it has `role`.
pub fn key_from_seed(role: Role, seed: &str) -> Result<KeyPair, Error> {
    let kp = KeyPair::from_seed(seed.trim())?;
    require_role(&kp, role, "seed")?;
    Ok(kp)
}

/// The seed (secret) of a key pair. Fails for a key pair made from a public key alone.
pub fn seed(kp: &KeyPair) -> Result<String, Error> {
    Ok(kp.seed()?)
}

/// Limits written into an account JWT.
///
/// The core NATS limits (subscriptions, data, payload, imports, exports, connections, leaf
/// node connections) are always unlimited and wildcard exports are allowed; only JetStream
/// is configurable. The system account must not have JetStream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountLimits {
    /// JetStream limits; `None` leaves JetStream disabled for the account.
    pub jetstream: Option<JetStreamLimits>,
}

impl AccountLimits {
    /// No JetStream (what the system account needs).
    pub fn without_jetstream() -> Self {
        Self { jetstream: None }
    }

    /// JetStream enabled without limits.
    pub fn with_unlimited_jetstream() -> Self {
        Self {
            jetstream: Some(JetStreamLimits::UNLIMITED),
        }
    }
}

/// JetStream limits of an account; each is a count or a number of bytes, or [`NO_LIMIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JetStreamLimits {
    /// Bytes of memory storage across the account's streams (`mem_storage`).
    pub mem_storage: i64,
    /// Bytes of file storage across the account's streams (`disk_storage`).
    pub disk_storage: i64,
    /// Number of streams (`streams`).
    pub streams: i64,
    /// Number of consumers (`consumer`).
    pub consumer: i64,
}

impl JetStreamLimits {
    /// Every JetStream limit set to [`NO_LIMIT`].
    pub const UNLIMITED: Self = Self {
        mem_storage: NO_LIMIT,
        disk_storage: NO_LIMIT,
        streams: NO_LIMIT,
        consumer: NO_LIMIT,
    };

    fn validate(&self) -> Result<(), Error> {
        let all = [
            self.mem_storage,
            self.disk_storage,
            self.streams,
            self.consumer,
        ];
        if all.iter().any(|v| *v < NO_LIMIT) {
            return Err(Error::InvalidLimits(
                "JetStream limits must be -1 (unlimited) or non-negative",
            ));
        }
        // NATS reads zero memory and zero disk storage as "JetStream disabled".
        if self.mem_storage == 0 && self.disk_storage == 0 {
            return Err(Error::InvalidLimits(
                "JetStream needs memory or disk storage (0 and 0 would disable it)",
            ));
        }
        Ok(())
    }
}

/// Publish and subscribe permissions written into a user JWT. An empty list allows every
/// subject.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    /// Subjects (wildcards allowed) the user may publish to (`nats.pub.allow`).
    pub publish_allow: Vec<String>,
    /// Subjects (wildcards allowed, optionally followed by a space and a queue group) the
    /// user may subscribe to (`nats.sub.allow`).
    pub subscribe_allow: Vec<String>,
}

/// Mints the operator JWT: self-signed by `operator`, naming `system_account` (an account
/// public key) as the system account.
pub fn operator_jwt(
    operator: &KeyPair,
    name: &str,
    system_account: &str,
    iat: i64,
) -> Result<String, Error> {
    require_role(operator, Role::Operator, "operator key")?;
    require_public(system_account, Role::Account, "system account")?;
    let nats = OperatorNats {
        system_account,
        kind: Role::Operator.as_str(),
        version: CLAIMS_VERSION,
    };
    encode(operator, &operator.public_key(), name, iat, nats)
}

/// Mints an account JWT for `account_public`, signed by `operator`.
pub fn account_jwt(
    operator: &KeyPair,
    account_public: &str,
    name: &str,
    limits: AccountLimits,
    iat: i64,
) -> Result<String, Error> {
    account_jwt_revoking(
        operator,
        account_public,
        name,
        limits,
        &BTreeMap::new(),
        iat,
    )
}

/// Mints an account JWT that refuses the user JWTs in `revocations` (user public key to the
/// Unix time at or before which its JWTs were issued).
pub fn account_jwt_revoking(
    operator: &KeyPair,
    account_public: &str,
    name: &str,
    limits: AccountLimits,
    revocations: &BTreeMap<String, i64>,
    iat: i64,
) -> Result<String, Error> {
    require_role(operator, Role::Operator, "issuer of an account JWT")?;
    require_public(account_public, Role::Account, "subject of an account JWT")?;
    let js = match limits.jetstream {
        Some(js) => {
            js.validate()?;
            js
        }
        None => JetStreamLimits {
            mem_storage: 0,
            disk_storage: 0,
            streams: 0,
            consumer: 0,
        },
    };
    let nats = AccountNats {
        limits: OperatorLimitsJson {
            subs: NO_LIMIT,
            data: NO_LIMIT,
            payload: NO_LIMIT,
            imports: NO_LIMIT,
            exports: NO_LIMIT,
            wildcards: true,
            conn: NO_LIMIT,
            leaf: NO_LIMIT,
            mem_storage: js.mem_storage,
            disk_storage: js.disk_storage,
            streams: js.streams,
            consumer: js.consumer,
        },
        default_permissions: PermissionsJson::default(),
        authorization: Empty {},
        revocations,
        kind: Role::Account.as_str(),
        version: CLAIMS_VERSION,
    };
    encode(operator, account_public, name, iat, nats)
}

/// Mints a user JWT for `user_public`, signed by `account` (the account the user belongs
/// to), with `permissions` and otherwise unlimited subscriptions, data and payload.
pub fn user_jwt(
    account: &KeyPair,
    user_public: &str,
    name: &str,
    permissions: &Permissions,
    iat: i64,
) -> Result<String, Error> {
    require_role(account, Role::Account, "issuer of a user JWT")?;
    require_public(user_public, Role::User, "subject of a user JWT")?;
    for subject in &permissions.publish_allow {
        validate_subject(subject, false)?;
    }
    for subject in &permissions.subscribe_allow {
        validate_subject(subject, true)?;
    }
    let nats = UserNats {
        permissions: PermissionsJson {
            publish: PermissionJson {
                allow: &permissions.publish_allow,
            },
            subscribe: PermissionJson {
                allow: &permissions.subscribe_allow,
            },
        },
        subs: NO_LIMIT,
        data: NO_LIMIT,
        payload: NO_LIMIT,
        kind: Role::User.as_str(),
        version: CLAIMS_VERSION,
    };
    encode(account, user_public, name, iat, nats)
}

/// Formats a user's credentials (its JWT and its seed) as a NATS creds file, the format
/// that `nats` clients read (`nsc` writes the same text).
///
/// Fails unless `user_seed` is a user seed (`SU...`) and `user_jwt` has the shape of a JWT,
/// so that no other secret ends up in a file handed to a client.
pub fn creds_file(user_jwt: &str, user_seed: &str) -> Result<String, Error> {
    let user_seed = user_seed.trim();
    key_from_seed(Role::User, user_seed)?;
    let user_jwt = user_jwt.trim();
    split_jwt(user_jwt)?;
    Ok(format!(
        "-----BEGIN NATS USER JWT-----\n\
         {user_jwt}\n\
         ------END NATS USER JWT------\n\
         \n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\
         \n\
         -----BEGIN USER NKEY SEED-----\n\
         {user_seed}\n\
         ------END USER NKEY SEED------\n\
         \n\
         *************************************************************\n"
    ))
}

/// Decodes a JWT and verifies its signature against its issuer (`iss`), returning its
/// claims. This proves who signed the token, not that the issuer is trusted: callers compare
/// `iss` with the key they expect.
pub fn decode_verified(jwt: &str) -> Result<serde_json::Value, Error> {
    let (header_b64, claims_b64, signature_b64) = split_jwt(jwt)?;
    let header: serde_json::Value = serde_json::from_slice(&decode_b64(header_b64)?)
        .map_err(|_| Error::Malformed("header is not JSON"))?;
    let typ = header["typ"].as_str().map(str::to_ascii_uppercase);
    let alg = header["alg"].as_str().map(str::to_ascii_lowercase);
    if typ.as_deref() != Some("JWT") || alg.as_deref() != Some("ed25519-nkey") {
        return Err(Error::Malformed("not an ed25519-nkey JWT"));
    }
    let claims: serde_json::Value = serde_json::from_slice(&decode_b64(claims_b64)?)
        .map_err(|_| Error::Malformed("claims are not JSON"))?;
    let issuer = claims["iss"]
        .as_str()
        .ok_or(Error::Malformed("claims have no issuer"))?;
    let issuer = KeyPair::from_public_key(issuer)?;
    let signed = &jwt[..header_b64.len() + 1 + claims_b64.len()];
    issuer
        .verify(signed.as_bytes(), &decode_b64(signature_b64)?)
        .map_err(|_| Error::BadSignature)?;
    Ok(claims)
}

// ---------------------------------------------------------------------------------------------
// Encoding.

/// The standard claims, in the Go library's field order (`aud`, `exp`, `jti`, `iat`, `iss`,
/// `name`, `nbf`, `sub`; the unused ones omitted).
#[derive(Serialize)]
struct ClaimsData<'a> {
    #[serde(skip_serializing_if = "String::is_empty")]
    jti: String,
    #[serde(skip_serializing_if = "is_zero")]
    iat: i64,
    iss: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    sub: &'a str,
}

#[derive(Serialize)]
struct Claims<'a, N> {
    #[serde(flatten)]
    data: ClaimsData<'a>,
    nats: N,
}

#[derive(Serialize)]
struct OperatorNats<'a> {
    system_account: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    version: u8,
}

#[derive(Serialize)]
struct AccountNats<'a> {
    limits: OperatorLimitsJson,
    default_permissions: PermissionsJson<'a>,
    authorization: Empty,
    /// User public keys whose JWTs issued at or before the time (Unix seconds) are refused.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    revocations: &'a BTreeMap<String, i64>,
    #[serde(rename = "type")]
    kind: &'static str,
    version: u8,
}

/// `OperatorLimits` of the Go library: NATS, account and JetStream limits, flattened.
#[derive(Serialize)]
struct OperatorLimitsJson {
    subs: i64,
    data: i64,
    payload: i64,
    imports: i64,
    exports: i64,
    wildcards: bool,
    conn: i64,
    leaf: i64,
    #[serde(skip_serializing_if = "is_zero")]
    mem_storage: i64,
    #[serde(skip_serializing_if = "is_zero")]
    disk_storage: i64,
    #[serde(skip_serializing_if = "is_zero")]
    streams: i64,
    #[serde(skip_serializing_if = "is_zero")]
    consumer: i64,
}

#[derive(Serialize)]
struct UserNats<'a> {
    #[serde(flatten)]
    permissions: PermissionsJson<'a>,
    subs: i64,
    data: i64,
    payload: i64,
    #[serde(rename = "type")]
    kind: &'static str,
    version: u8,
}

#[derive(Serialize, Default)]
struct PermissionsJson<'a> {
    #[serde(rename = "pub")]
    publish: PermissionJson<'a>,
    #[serde(rename = "sub")]
    subscribe: PermissionJson<'a>,
}

#[derive(Serialize, Default)]
struct PermissionJson<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    allow: &'a [String],
}

#[derive(Serialize)]
struct Empty {}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// The claims of a JWT, without checking its signature: for reading back what Conveyor (or the
/// server, which checked it) holds.
pub fn claims(jwt: &str) -> Option<serde_json::Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = BASE64URL_NOPAD.decode(payload.as_bytes()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Signs claims about `subject` with `issuer`, computing `jti` as the Go library does.
fn encode<N: Serialize>(
    issuer: &KeyPair,
    subject: &str,
    name: &str,
    iat: i64,
    nats: N,
) -> Result<String, Error> {
    let mut data = ClaimsData {
        jti: String::new(),
        iat,
        iss: issuer.public_key(),
        name,
        sub: subject,
    };
    data.jti = BASE32_NOPAD.encode(&Sha512_256::digest(go_json(&data)?));
    let claims = go_json(&Claims { data, nats })?;
    let signing_input = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(HEADER.as_bytes()),
        BASE64URL_NOPAD.encode(&claims)
    );
    let signature = issuer.sign(signing_input.as_bytes())?;
    Ok(format!(
        "{signing_input}.{}",
        BASE64URL_NOPAD.encode(&signature)
    ))
}

/// JSON as Go's `encoding/json` writes it: compact, with `<`, `>`, `&`, U+2028 and U+2029
/// escaped. Those characters can only occur inside strings in `serde_json`'s output, where
/// the escape denotes the same character.
fn go_json<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    let json = serde_json::to_string(value)?;
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    Ok(out.into_bytes())
}

// ---------------------------------------------------------------------------------------------
// Checks.

fn require_role(kp: &KeyPair, role: Role, what: &'static str) -> Result<(), Error> {
    let actual = kp.key_pair_type();
    if actual == role.key_type() {
        Ok(())
    } else {
        Err(Error::WrongRole {
            what,
            expected: role,
            actual: format!("{actual:?}").to_lowercase(),
        })
    }
}

fn require_public(key: &str, role: Role, what: &'static str) -> Result<(), Error> {
    require_role(&KeyPair::from_public_key(key)?, role, what)
}

/// The checks the Go library applies to permission subjects.
fn validate_subject(subject: &str, queue_allowed: bool) -> Result<(), Error> {
    let invalid = |reason| Error::InvalidSubject {
        subject: subject.to_string(),
        reason,
    };
    let tokens: Vec<&str> = subject.split(' ').collect();
    match tokens.len() {
        1 => {}
        2 if queue_allowed => {}
        2 => return Err(invalid("a publish permission cannot name a queue group")),
        _ => return Err(invalid("too many spaces")),
    }
    for token in tokens {
        if token.is_empty() {
            return Err(invalid("empty subject"));
        }
        if token.starts_with('.') || token.ends_with('.') {
            return Err(invalid("starts or ends with '.'"));
        }
        if token.contains("..") {
            return Err(invalid("contains consecutive '.'"));
        }
        if token.chars().any(char::is_whitespace) {
            return Err(invalid("contains whitespace"));
        }
    }
    Ok(())
}

fn split_jwt(jwt: &str) -> Result<(&str, &str, &str), Error> {
    let mut parts = jwt.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Malformed("expected three '.'-separated parts"));
    };
    let b64url = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !(b64url(header) && b64url(claims) && b64url(signature)) {
        return Err(Error::Malformed("parts must be unpadded base64url"));
    }
    Ok((header, claims, signature))
}

fn decode_b64(part: &str) -> Result<Vec<u8>, Error> {
    BASE64URL_NOPAD
        .decode(part.as_bytes())
        .map_err(|_| Error::Malformed("invalid base64url"))
}

#[cfg(test)]
mod tests;
