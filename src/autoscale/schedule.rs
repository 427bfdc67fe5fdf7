//! When to list a source's consumers. Pure: the loop asks it every tick.
//!
//! - a source some of whose workloads are at zero is listed as soon as its arrival mark
//!   changes (at most once per tick), so that new work is seen within a tick or two;
//! - a source with work under way (a backlog, or a mark that moved) is listed every
//!   `ACTIVE` at most;
//! - where the engine has no marks, a source with workloads at zero counts as under way;
//! - a settled source is listed every `IDLE`, which catches consumers that went missing and
//!   lets cooldowns end.

use std::time::{Duration, Instant};

/// Between listings of a source with work under way.
pub const ACTIVE: Duration = Duration::from_secs(2);
/// Between listings of a settled source.
pub const IDLE: Duration = Duration::from_secs(5);

/// What the loop remembers of one source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    /// When its consumers were last listed.
    pub listed: Option<Instant>,
    /// The arrival mark at that listing.
    pub mark: Option<u64>,
    /// Any of its consumers had a backlog at that listing.
    pub busy: bool,
}

/// What the loop knows of a source this tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub at: Instant,
    /// Its latest arrival mark, when the engine has marks and it was read this tick.
    pub mark: Option<u64>,
    /// Some workload reading it is at zero replicas.
    pub any_at_zero: bool,
}

/// Whether the source's consumers should be listed this tick.
pub fn due(s: &SourceState, now: Now) -> bool {
    let Some(listed) = s.listed else { return true };
    let since = now.at.saturating_duration_since(listed);
    let moved = now.mark.is_some() && now.mark != s.mark;
    if moved && now.any_at_zero {
        return true;
    }
    if since >= IDLE {
        return true;
    }
    // Without marks, workloads at zero are looked after as if busy.
    let unmarked_zero = now.mark.is_none() && now.any_at_zero;
    (s.busy || moved || unmarked_zero) && since >= ACTIVE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(listed: Instant, mark: u64, busy: bool) -> SourceState {
        SourceState {
            listed: Some(listed),
            mark: Some(mark),
            busy,
        }
    }

    #[test]
    fn a_new_source_is_listed_at_once() {
        let now = Now {
            at: Instant::now(),
            mark: None,
            any_at_zero: false,
        };
        assert!(due(&SourceState::default(), now));
    }

    #[test]
    fn a_moved_mark_lists_at_once_only_for_workloads_at_zero() {
        let t0 = Instant::now();
        let s = at(t0, 7, false);
        let tick = |mark, any_at_zero, after| Now {
            at: t0 + Duration::from_millis(after),
            mark: Some(mark),
            any_at_zero,
        };
        assert!(due(&s, tick(8, true, 250)));
        assert!(!due(&s, tick(7, true, 250)), "nothing arrived");
        assert!(!due(&s, tick(8, false, 250)), "running workloads wait");
        assert!(due(&s, tick(8, false, 2000)));
    }

    #[test]
    fn busy_sources_are_listed_every_two_seconds_and_settled_ones_every_five() {
        let t0 = Instant::now();
        let tick = |after| Now {
            at: t0 + Duration::from_millis(after),
            mark: Some(7),
            any_at_zero: false,
        };
        assert!(!due(&at(t0, 7, true), tick(1999)));
        assert!(due(&at(t0, 7, true), tick(2000)));
        assert!(!due(&at(t0, 7, false), tick(4999)));
        assert!(due(&at(t0, 7, false), tick(5000)));
    }
}
