//! Whether a managed broker may shrink: the pure decision, from the current and wanted sizes
//! and what the broker says about its streams.

use crate::engine::EngineError;

/// The replica count to apply, and why a wanted scale-down is held back.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Apply this many replicas.
    Apply(i32),
    /// Keep `keep` replicas; `why` says what blocks the scale-down.
    Refuse { keep: i32, why: String },
}

/// Decides the replica count. `streams` is asked only for a scale-down: each stream's name and
/// replica count, or why they could not be read.
pub fn decide(
    current: Option<i32>,
    wanted: i32,
    allow_unsafe: bool,
    streams: impl FnOnce() -> Result<Vec<(String, usize)>, EngineError>,
) -> Decision {
    let Some(current) = current.filter(|c| *c > wanted) else {
        return Decision::Apply(wanted);
    };
    if allow_unsafe {
        return Decision::Apply(wanted);
    }
    match streams() {
        Err(e) => Decision::Refuse {
            keep: current,
            why: format!(
                "scale-down from {current} to {wanted} servers refused: cannot verify that no stream would lose replicas ({e}); set spec.managed.allowUnsafeScaleDown to force it"
            ),
        },
        Ok(list) => {
            let mut at_risk: Vec<String> = list
                .into_iter()
                .filter(|(_, r)| *r > wanted as usize)
                .map(|(n, r)| format!("{n} (R{r})"))
                .collect();
            if at_risk.is_empty() {
                return Decision::Apply(wanted);
            }
            at_risk.sort();
            Decision::Refuse {
                keep: current,
                why: format!(
                    "scale-down from {current} to {wanted} servers refused: streams {} have more replicas than {wanted} servers can hold; lower their replicas first or set spec.managed.allowUnsafeScaleDown",
                    at_risk.join(", ")
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> Result<Vec<(String, usize)>, EngineError> {
        panic!("streams are asked only for a scale-down")
    }

    #[test]
    fn growth_and_creation_apply_without_asking_the_broker() {
        assert_eq!(decide(None, 3, false, never), Decision::Apply(3));
        assert_eq!(decide(Some(3), 5, false, never), Decision::Apply(5));
        assert_eq!(decide(Some(3), 3, false, never), Decision::Apply(3));
    }

    #[test]
    fn shrinking_is_refused_when_streams_cannot_be_read() {
        let d = decide(Some(5), 3, false, || {
            Err(EngineError::Unreachable("down".into()))
        });
        assert!(
            matches!(d, Decision::Refuse { keep: 5, ref why } if why.contains("cannot verify"))
        );
    }

    #[test]
    fn shrinking_is_refused_when_a_stream_would_lose_replicas() {
        let d = decide(Some(5), 3, false, || {
            Ok(vec![("orders".into(), 5), ("small".into(), 1)])
        });
        match d {
            Decision::Refuse { keep, why } => {
                assert_eq!(keep, 5);
                assert!(
                    why.contains("orders (R5)") && !why.contains("small"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shrinking_is_allowed_when_safe_or_forced() {
        assert_eq!(
            decide(Some(5), 3, false, || Ok(vec![("orders".into(), 3)])),
            Decision::Apply(3)
        );
        assert_eq!(decide(Some(5), 3, true, never), Decision::Apply(3));
    }
}
