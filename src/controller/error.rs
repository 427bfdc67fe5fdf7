//! The error type of every reconciler: a fixed, low-cardinality `category()` for metrics and
//! Events, and `is_permanent()` to tell a spec that waits for the user from a transient failure
//! that backs off and retries.

/// What went wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object could not be serialized for an apply.
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The object in the cluster is malformed (it did not deserialize).
    #[error("malformed object: {0}")]
    Malformed(String),
    /// Adding or removing the finalizer failed: a lost JSON-patch race (another writer changed
    /// the list first) or another API error. Retried.
    #[error("updating the finalizer: {0}")]
    FinalizerRace(kube::Error),
    /// The finalizer machinery failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// A broker request failed.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The broker could not do what was asked (yet).
    #[error("broker: {0}")]
    Broker(String),
    /// A deletion waits for a condition (a stream to be empty).
    #[error("{0}")]
    DeletionBlocked(String),
    /// Generating or reading broker credentials failed.
    #[error("broker credentials: {0}")]
    Credentials(String),
}

impl Error {
    /// A fixed string naming the kind of failure, for metric labels and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Self::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Self::Kube(kube::Error::Api(s)) if s.code == 422 => "invalid",
            Self::Kube(_) => "kubernetes",
            Self::Serialize { .. } => "serialize",
            Self::Malformed(_) => "malformed",
            Self::FinalizerRace(kube::Error::Api(s)) if s.code == 422 || s.code == 409 => {
                "conflict"
            }
            Self::FinalizerRace(_) => "kubernetes",
            Self::Finalizer(_) => "finalizer",
            Self::Credentials(_) => "credentials",
            Self::Engine(e) => e.category(),
            Self::Broker(_) => "broker",
            Self::DeletionBlocked(_) => "deletion-blocked",
        }
    }

    /// True when retrying cannot help until the object changes. A 422 from the API server is
    /// not permanent: a JSON-patch precondition that lost a race (the finalizer helper's) also
    /// answers 422, and a retry succeeds.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Malformed(_) | Self::Serialize { .. })
    }
}

/// The result of a reconcile step.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Error {
        let status = kube::core::Status::failure("test", "Test").with_code(code);
        Error::Kube(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn categories_are_fixed_strings() {
        assert_eq!(api(409).category(), "conflict");
        assert_eq!(api(403).category(), "forbidden");
        assert_eq!(api(500).category(), "kubernetes");
        assert_eq!(Error::Malformed("x".into()).category(), "malformed");
        let down = crate::engine::EngineError::Unreachable("x".into());
        assert_eq!(Error::Engine(down).category(), "broker-unreachable");
    }

    #[test]
    fn a_lost_finalizer_patch_is_a_conflict_not_bad_input() {
        let status = kube::core::Status::failure("test failed", "Invalid").with_code(422);
        let lost = Error::FinalizerRace(kube::Error::Api(Box::new(status)));
        assert_eq!(lost.category(), "conflict");
        assert!(!lost.is_permanent());
    }

    #[test]
    fn only_spec_problems_are_permanent() {
        assert!(Error::Malformed("x".into()).is_permanent());
        assert!(
            !api(422).is_permanent(),
            "a lost JSON-patch test answers 422 and must be retried"
        );
        assert!(!api(500).is_permanent());
        assert!(!api(409).is_permanent());
    }
}
