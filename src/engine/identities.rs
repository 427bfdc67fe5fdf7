//! A subscription's own identity in the broker: credentials that may consume and acknowledge on
//! its consumer and nothing else (not other subscriptions' consumers, not publishing, not the
//! broker's management). Conveyor picks the credentials first and keeps them in the
//! subscription's Secret, then makes the broker accept them, so that a pass interrupted between
//! the two never leaves an identity whose secret is lost.

/// What a consumer's workload authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password (RabbitMQ).
    UserPassword { user: String, password: String },
    /// A NATS creds file (user JWT and seed) and the inbox prefix the client must use.
    NatsCreds {
        user: String,
        creds: String,
        inbox_prefix: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .finish_non_exhaustive(),
            Self::NatsCreds { user, .. } => f
                .debug_struct("NatsCreds")
                .field("user", user)
                .finish_non_exhaustive(),
        }
    }
}

impl Credentials {
    /// Who the credentials authenticate as.
    pub fn user(&self) -> &str {
        match self {
            Self::UserPassword { user, .. } | Self::NatsCreds { user, .. } => user,
        }
    }
}

/// The credentials a subscription should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Issued {
    Credentials(Credentials),
    /// The broker cannot give the subscription an identity of its own: why, and what
    /// isolation there is instead.
    Unavailable(String),
}

/// `n` random bytes as unpadded base64url: a password.
pub fn random_secret(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    data_encoding::BASE64URL_NOPAD.encode(&bytes)
}
