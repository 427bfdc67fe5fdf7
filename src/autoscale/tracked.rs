//! What the autoscaler remembers of one subscription between ticks, and the status it
//! reports for it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;

use super::observe::Observed;
use super::policy::{self, Decision, Depth, Memory, Policy};
use super::target::Target;
use crate::api::EventSubscriptionStatus;
use crate::api::conditions::{ConditionType, Desired, Reason, merge};
use crate::engine::ConsumerDepth;

/// The consume rate is measured over about this long.
const RATE_SPAN: Duration = Duration::from_secs(30);
/// Figures alone (pending, in flight, rate) are written to status at most this often.
pub const FIGURES_EVERY: Duration = Duration::from_secs(10);
/// A scale written this recently wins over a Deployment cache that has not caught up.
const SCALE_SETTLES: Duration = Duration::from_secs(10);

/// One subscription's state in the autoscaler.
#[derive(Default)]
pub struct Tracked {
    memory: Option<Memory>,
    /// Acknowledgement counter samples, oldest first.
    acked: VecDeque<(Instant, u64)>,
    /// The latest figures from the broker.
    pub depth: Option<ConsumerDepth>,
    /// The replicas this process last wrote, and when.
    wrote: Option<(u32, Instant)>,
    /// When this process last wrote the subscription's status.
    pub status_written: Option<Instant>,
    /// What this process last wrote: newer than a cache that has not caught up.
    pub last_status: Option<EventSubscriptionStatus>,
    /// When this process last changed the replicas (RFC 3339) and why, for status.
    pub last_scale: Option<(String, String)>,
}

impl Tracked {
    /// The autoscaler's status to build on: what this process last wrote, else what the
    /// cache shows.
    pub fn base(&mut self, cached: &EventSubscriptionStatus) -> EventSubscriptionStatus {
        self.last_status
            .get_or_insert_with(|| cached.clone())
            .clone()
    }

    /// The workload's replicas: the cache's, unless a write of this process is newer than
    /// what the cache shows.
    pub fn replicas(&self, cached: u32, now: Instant) -> u32 {
        match self.wrote {
            Some((n, at)) if now.saturating_duration_since(at) < SCALE_SETTLES => n,
            _ => cached,
        }
    }

    pub fn record_scale(&mut self, replicas: u32, reason: String, now: Instant) {
        self.wrote = Some((replicas, now));
        self.last_scale = Some((Timestamp::now().to_string(), reason));
    }

    /// Acknowledgements per second over the last `RATE_SPAN`, once two samples are a second
    /// apart.
    pub fn rate(&self) -> Option<f64> {
        let (first, last) = (self.acked.front()?, self.acked.back()?);
        let span = last.0.saturating_duration_since(first.0).as_secs_f64();
        (span >= 1.0).then(|| last.1.saturating_sub(first.1) as f64 / span)
    }

    /// Runs the policy on what this tick observed.
    pub fn decide(
        &mut self,
        policy: &Policy,
        observed: &Observed,
        current: u32,
        now: Instant,
    ) -> Decision {
        let depth = match observed {
            Observed::Depth(d) => {
                self.depth = Some(*d);
                if let Some(acked) = d.acknowledged {
                    if self.acked.back().is_some_and(|(_, a)| *a > acked) {
                        // The counter went back (a re-created consumer): start again.
                        self.acked.clear();
                    }
                    self.acked.push_back((now, acked));
                    while self
                        .acked
                        .front()
                        .is_some_and(|(at, _)| now.saturating_duration_since(*at) > RATE_SPAN)
                    {
                        self.acked.pop_front();
                    }
                }
                Depth::Known {
                    pending: d.pending,
                    in_flight: d.in_flight,
                    rate: self.rate(),
                }
            }
            Observed::Missing | Observed::Unknown(_) => Depth::Unknown,
        };
        // A process that starts (or takes over) remembers nothing: it behaves as if the
        // current replicas had just been recommended, so that nothing scales down before a
        // whole window has passed.
        let memory = self
            .memory
            .get_or_insert_with(|| policy::Memory::resumed(current, now));
        policy::decide(policy, depth, current, memory, now)
    }
}

/// The `Scaling` condition for what happened this tick.
pub fn condition(
    target: &Target,
    observed: &Observed,
    current: u32,
    scale_error: Option<&str>,
) -> Desired {
    let t = ConditionType::Scaling;
    let p = &target.policy;
    if let Some(e) = scale_error {
        return Desired::is_false(
            t,
            Reason::ScaleFailed,
            format!(
                "writing the scale of Deployment {} failed: {e}",
                target.workload
            ),
        );
    }
    if p.paused {
        return Desired::is_false(
            t,
            Reason::ScalingPaused,
            format!("spec.scaling.paused: replicas left at {current}"),
        );
    }
    match observed {
        Observed::Depth(_) => Desired::is_true(
            t,
            Reason::BacklogObserved,
            format!(
                "Deployment {} follows the backlog: {} to {} replicas, {} messages per replica",
                target.workload, p.min, p.max, p.target_backlog
            ),
        ),
        Observed::Missing => Desired::is_false(
            t,
            Reason::ConsumerMissing,
            format!(
                "consumer {} is not in {}: replicas held at {current}",
                target.consumer, target.source
            ),
        ),
        Observed::Unknown(why) => Desired::is_false(
            t,
            Reason::BacklogUnknown,
            format!("the backlog cannot be read ({why}): replicas held at {current}"),
        ),
    }
}

/// The `Scaling` condition when the workload does not exist.
pub fn no_workload(target: &Target) -> Desired {
    Desired::is_false(
        ConditionType::Scaling,
        Reason::WorkloadNotFound,
        format!(
            "Deployment {} does not exist in namespace {}",
            target.workload, target.namespace
        ),
    )
}

/// What the autoscaler reports, built on the status it last wrote (`old`).
pub struct Report<'a> {
    pub depth: Option<ConsumerDepth>,
    pub rate: Option<f64>,
    pub replicas: Option<u32>,
    pub desired: Option<u32>,
    /// Time and reason of the last change this process made, if any.
    pub scaled: Option<(String, String)>,
    pub condition: Desired,
    pub generation: Option<i64>,
    pub old: &'a EventSubscriptionStatus,
}

/// The autoscaler's part of the status.
pub fn status(r: Report<'_>) -> EventSubscriptionStatus {
    let old = r.old;
    let figure = |f: fn(&ConsumerDepth) -> u64, prev: Option<i64>| match r.depth {
        Some(d) => Some(f(&d) as i64),
        None => prev,
    };
    let (last_scale_time, last_scale_reason) = match r.scaled {
        Some((time, reason)) => (Some(time), Some(reason)),
        None => (old.last_scale_time.clone(), old.last_scale_reason.clone()),
    };
    EventSubscriptionStatus {
        conditions: merge(
            &old.conditions,
            &[r.condition],
            r.generation,
            Timestamp::now(),
        ),
        pending: figure(|d| d.pending, old.pending),
        in_flight: figure(|d| d.in_flight, old.in_flight),
        backlog: figure(|d| d.pending + d.in_flight, old.backlog),
        consume_rate: r
            .rate
            .map(|v| format!("{v:.1}"))
            .or(old.consume_rate.clone()),
        replicas: r.replicas.map(|n| n as i32).or(old.replicas),
        desired_replicas: r.desired.map(|n| n as i32).or(old.desired_replicas),
        last_scale_time,
        last_scale_reason,
        ..Default::default()
    }
}

/// Whether `new` should be written over `old`, written `since` ago (`None`: not by this
/// process): at once when more than the figures changed; a changed pending, in-flight or
/// backlog figure at most every `FIGURES_EVERY`; a changed consume rate alone never (it goes
/// with the next write), so that a settled subscription costs no writes.
pub fn write_due(
    old: Option<&EventSubscriptionStatus>,
    new: &EventSubscriptionStatus,
    since: Option<Duration>,
) -> bool {
    let Some(old) = old else { return true };
    let figures = |s: &EventSubscriptionStatus| (s.pending, s.in_flight, s.backlog);
    let rest = |s: &EventSubscriptionStatus| EventSubscriptionStatus {
        pending: None,
        in_flight: None,
        backlog: None,
        consume_rate: None,
        ..s.clone()
    };
    if rest(old) != rest(new) {
        return true;
    }
    figures(old) != figures(new) && since.is_none_or(|s| s >= FIGURES_EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pending: i64, rate: &str, replicas: i32) -> EventSubscriptionStatus {
        EventSubscriptionStatus {
            pending: Some(pending),
            backlog: Some(pending),
            consume_rate: Some(rate.into()),
            replicas: Some(replicas),
            ..Default::default()
        }
    }

    #[test]
    fn replicas_are_written_at_once_figures_at_most_every_ten_seconds_and_a_rate_alone_never() {
        let old = status(10, "1.0", 1);
        let soon = Some(Duration::from_secs(2));
        let later = Some(FIGURES_EVERY);
        assert!(write_due(None, &old, None));
        assert!(!write_due(Some(&old), &old, later));
        assert!(write_due(Some(&old), &status(10, "1.0", 2), soon));
        assert!(!write_due(Some(&old), &status(20, "1.0", 1), soon));
        assert!(write_due(Some(&old), &status(20, "1.0", 1), later));
        assert!(write_due(Some(&old), &status(20, "1.0", 1), None));
        assert!(!write_due(Some(&old), &status(10, "3.5", 1), later));
    }
}
