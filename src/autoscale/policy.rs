//! The scaling policy: a pure function from what was observed, the subscription's scaling
//! settings and what the policy remembers to the replicas the workload should have.
//!
//! - backlog = pending + in flight; the recommendation is `ceil(backlog / target per replica)`,
//!   or, with a drain target and a measured consume rate, the replicas that drain the backlog
//!   in time at the rate one replica achieves, whichever is larger;
//! - bounded by the parallelism ceiling (what the broker lets be in flight at once divided by
//!   what one replica takes), then by `minReplicas` and `maxReplicas`;
//! - from zero only above `activationBacklog`; to zero only when pending and in flight were
//!   both zero for the whole cooldown (and never while anything is in flight);
//! - up at once to the recommendation; down through the stabilization window: the highest
//!   recommendation within the window wins;
//! - unknown depth or `paused`: the current replicas, unchanged.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A subscription's scaling settings, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub min: u32,
    pub max: u32,
    /// Backlog one replica is expected to handle; at least 1.
    pub target_backlog: u64,
    /// Replicas enough to drain the backlog within this time at the measured rate.
    pub target_drain: Option<Duration>,
    /// Backlog above which a workload at zero is started.
    pub activation: u64,
    /// How long the backlog must stay empty before scaling to zero.
    pub cooldown: Duration,
    /// How long scale-down recommendations are remembered; the highest wins.
    pub stabilization: Duration,
    /// Most messages the broker lets be in flight at once across replicas, where the engine
    /// enforces such a limit (NATS `maxAckPending`).
    pub max_in_flight: Option<u64>,
    pub paused: bool,
}

/// What the broker showed of the consumer at one observation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Depth {
    Known {
        pending: u64,
        in_flight: u64,
        /// Acknowledgements per second across all replicas, when measured.
        rate: Option<f64>,
    },
    /// The broker could not be asked or did not answer in time.
    Unknown,
}

/// What the policy remembers of one subscription between observations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Memory {
    /// Recommendations within the stabilization window, oldest first.
    window: VecDeque<(Instant, u32)>,
    /// Since when pending and in flight have both been zero.
    idle_since: Option<Instant>,
    /// The most one replica was seen to hold in flight at once.
    per_replica_in_flight: u64,
}

impl Memory {
    /// The memory of a process that starts observing a workload at `current` replicas: as if
    /// `current` had just been recommended, so that nothing scales down before a whole
    /// stabilization window has passed.
    pub fn resumed(current: u32, now: Instant) -> Self {
        Self {
            window: VecDeque::from([(now, current)]),
            ..Self::default()
        }
    }
}

/// Why the policy chose what it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `paused`: nothing changes.
    Paused,
    /// The depth is unknown: the current replicas are held.
    UnknownDepth,
    /// The recommendation for this backlog; the replicas it asks for.
    Backlog { backlog: u64, replicas: u32 },
    /// At zero with a backlog at or below `activationBacklog`.
    BelowActivation { backlog: u64 },
    /// Nothing to do, waiting for the cooldown to pass before scaling to zero.
    CoolingDown,
    /// Nothing to do for the whole cooldown.
    Idle,
    /// A higher recommendation within the stabilization window holds the replicas.
    Stabilizing { recommended: u32 },
}

/// The replicas the workload should have, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub replicas: u32,
    pub reason: Reason,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Paused => write!(f, "scaling is paused"),
            Self::UnknownDepth => write!(f, "the backlog is unknown; replicas held"),
            Self::Backlog { backlog, replicas } => {
                write!(f, "a backlog of {backlog} asks for {replicas} replicas")
            }
            Self::BelowActivation { backlog } => {
                write!(f, "a backlog of {backlog} is not above activationBacklog")
            }
            Self::CoolingDown => write!(f, "no backlog; waiting for the cooldown"),
            Self::Idle => write!(f, "no backlog for the whole cooldown"),
            Self::Stabilizing { recommended } => write!(
                f,
                "{recommended} replicas recommended within the stabilization window"
            ),
        }
    }
}

/// Decides the replicas for one observation at `now`, updating `memory`.
pub fn decide(
    policy: &Policy,
    depth: Depth,
    current: u32,
    memory: &mut Memory,
    now: Instant,
) -> Decision {
    let hold = |reason| Decision {
        replicas: current,
        reason,
    };
    if policy.paused {
        return hold(Reason::Paused);
    }
    let Depth::Known {
        pending,
        in_flight,
        rate,
    } = depth
    else {
        // Nothing is known about the backlog meanwhile: the cooldown starts again.
        memory.idle_since = None;
        return hold(Reason::UnknownDepth);
    };
    let backlog = pending.saturating_add(in_flight);
    if backlog == 0 {
        memory.idle_since.get_or_insert(now);
    } else {
        memory.idle_since = None;
    }
    if current > 0 && in_flight > 0 {
        let held = in_flight.div_ceil(u64::from(current));
        memory.per_replica_in_flight = memory.per_replica_in_flight.max(held);
    }
    let (mut recommended, mut reason) = recommend(policy, backlog, rate, current, memory, now);
    recommended = recommended.clamp(policy.min, policy.max.max(policy.min));
    if in_flight > 0 {
        // Work in flight is never left without a replica.
        recommended = recommended.max(1);
    }
    let cutoff = now.checked_sub(policy.stabilization);
    memory
        .window
        .retain(|(at, _)| cutoff.is_none_or(|c| *at >= c));
    memory.window.push_back((now, recommended));
    if recommended >= current || recommended == 0 {
        // Up at once; to zero only by the cooldown, which is a window of its own.
        return Decision {
            replicas: recommended,
            reason,
        };
    }
    let highest = memory.window.iter().map(|(_, r)| *r).max().unwrap_or(0);
    let replicas = highest.min(current).max(recommended);
    if replicas > recommended {
        reason = Reason::Stabilizing {
            recommended: replicas,
        };
    }
    Decision { replicas, reason }
}

/// The replicas this backlog asks for before the bounds and the window.
fn recommend(
    policy: &Policy,
    backlog: u64,
    rate: Option<f64>,
    current: u32,
    memory: &Memory,
    now: Instant,
) -> (u32, Reason) {
    if backlog == 0 {
        if current == 0 {
            return (0, Reason::BelowActivation { backlog });
        }
        let idle_for = memory
            .idle_since
            .map(|s| now.saturating_duration_since(s))
            .unwrap_or_default();
        return if idle_for >= policy.cooldown {
            (0, Reason::Idle)
        } else {
            (1, Reason::CoolingDown)
        };
    }
    if current == 0 && backlog <= policy.activation {
        return (0, Reason::BelowActivation { backlog });
    }
    let mut replicas = backlog.div_ceil(policy.target_backlog.max(1));
    if let (Some(drain), Some(rate)) = (policy.target_drain, rate)
        && current > 0
        && rate > 0.0
    {
        let per_replica = rate / f64::from(current);
        let needed = (backlog as f64 / (per_replica * drain.as_secs_f64())).ceil();
        replicas = replicas.max(needed.min(f64::from(u32::MAX)) as u64);
    }
    if let Some(limit) = policy.max_in_flight {
        let ceiling = (limit / memory.per_replica_in_flight.max(1)).max(1);
        replicas = replicas.min(ceiling);
    }
    let replicas = u32::try_from(replicas).unwrap_or(u32::MAX).max(1);
    (replicas, Reason::Backlog { backlog, replicas })
}

#[cfg(test)]
mod tests;
