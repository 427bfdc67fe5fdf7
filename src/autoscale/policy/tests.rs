use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn policy() -> Policy {
    Policy {
        min: 0,
        max: 10,
        target_backlog: 100,
        target_drain: None,
        activation: 0,
        cooldown: Duration::from_secs(300),
        stabilization: Duration::from_secs(60),
        max_in_flight: Some(1000),
        paused: false,
    }
}

fn known(pending: u64, in_flight: u64) -> Depth {
    Depth::Known {
        pending,
        in_flight,
        rate: None,
    }
}

#[test]
fn a_backlog_at_zero_scales_up_to_the_computed_value_in_one_step() {
    let mut m = Memory::default();
    let d = decide(&policy(), known(1000, 0), 0, &mut m, Instant::now());
    assert_eq!(d.replicas, 10);
    assert_eq!(
        d.reason,
        Reason::Backlog {
            backlog: 1000,
            replicas: 10
        }
    );
}

#[test]
fn activation_backlog_keeps_a_workload_at_zero_until_it_is_exceeded() {
    let p = Policy {
        activation: 5,
        ..policy()
    };
    let now = Instant::now();
    assert_eq!(
        decide(&p, known(5, 0), 0, &mut Memory::default(), now).replicas,
        0
    );
    assert_eq!(
        decide(&p, known(6, 0), 0, &mut Memory::default(), now).replicas,
        1
    );
    // Running already, a small backlog keeps one replica.
    assert_eq!(
        decide(&p, known(3, 0), 1, &mut Memory::default(), now).replicas,
        1
    );
}

#[test]
fn scale_to_zero_waits_for_the_whole_cooldown() {
    let p = policy();
    let t0 = Instant::now();
    let mut m = Memory::default();
    assert_eq!(decide(&p, known(0, 0), 1, &mut m, t0).replicas, 1);
    let before = decide(&p, known(0, 0), 1, &mut m, t0 + Duration::from_secs(299));
    assert_eq!((before.replicas, before.reason), (1, Reason::CoolingDown));
    let after = decide(&p, known(0, 0), 1, &mut m, t0 + Duration::from_secs(300));
    assert_eq!((after.replicas, after.reason), (0, Reason::Idle));
}

#[test]
fn a_message_in_between_restarts_the_cooldown() {
    let p = policy();
    let t0 = Instant::now();
    let mut m = Memory::default();
    decide(&p, known(0, 0), 1, &mut m, t0);
    decide(&p, known(0, 1), 1, &mut m, t0 + Duration::from_secs(200));
    let d = decide(&p, known(0, 0), 1, &mut m, t0 + Duration::from_secs(400));
    assert_eq!(d.replicas, 1);
    let d = decide(&p, known(0, 0), 1, &mut m, t0 + Duration::from_secs(700));
    assert_eq!(d.replicas, 0);
}

#[test]
fn scale_down_follows_the_highest_recommendation_in_the_window() {
    let p = policy();
    let t0 = Instant::now();
    let mut m = Memory::default();
    assert_eq!(decide(&p, known(800, 0), 2, &mut m, t0).replicas, 8);
    let held = decide(&p, known(200, 0), 8, &mut m, t0 + Duration::from_secs(30));
    assert_eq!(held.replicas, 8);
    assert_eq!(held.reason, Reason::Stabilizing { recommended: 8 });
    // The 8 leaves the window; the 2 from 30 s in is the highest left.
    let down = decide(&p, known(100, 0), 8, &mut m, t0 + Duration::from_secs(61));
    assert_eq!(down.replicas, 2);
}

#[test]
fn the_parallelism_ceiling_bounds_the_replicas() {
    let p = Policy {
        max: 50,
        max_in_flight: Some(1000),
        ..policy()
    };
    let mut m = Memory::default();
    let now = Instant::now();
    // Two replicas holding 200 in flight each: 1000 / 200 = 5 replicas can do anything.
    let d = decide(&p, known(10_000, 400), 2, &mut m, now);
    assert_eq!(d.replicas, 5);
}

#[test]
fn the_drain_target_asks_for_more_when_the_rate_is_low() {
    let p = Policy {
        target_drain: Some(Duration::from_secs(10)),
        ..policy()
    };
    let depth = Depth::Known {
        pending: 400,
        in_flight: 0,
        rate: Some(10.0),
    };
    // One replica drains 10/s: 400 in 10 s needs 4; the backlog target says 4 as well; at
    // 5/s per replica it takes 8.
    let now = Instant::now();
    assert_eq!(
        decide(&p, depth, 1, &mut Memory::default(), now).replicas,
        4
    );
    let slow = Depth::Known {
        pending: 400,
        in_flight: 0,
        rate: Some(10.0),
    };
    assert_eq!(decide(&p, slow, 2, &mut Memory::default(), now).replicas, 8);
}

#[test]
fn reasons_read_as_sentences() {
    let r = Reason::Backlog {
        backlog: 1000,
        replicas: 10,
    };
    assert_eq!(r.to_string(), "a backlog of 1000 asks for 10 replicas");
}

fn policies() -> impl Strategy<Value = Policy> {
    (
        0u32..5,
        1u32..50,
        1u64..500,
        0u64..20,
        0u64..600,
        0u64..120,
        proptest::option::of(1u64..5000),
        proptest::option::of(1u64..120),
    )
        .prop_map(
            |(min, max, target, activation, cooldown, window, in_flight, drain)| Policy {
                min,
                max: max.max(min),
                target_backlog: target,
                target_drain: drain.map(Duration::from_secs),
                activation,
                cooldown: Duration::from_secs(cooldown),
                stabilization: Duration::from_secs(window),
                max_in_flight: in_flight,
                paused: false,
            },
        )
}

fn depths() -> impl Strategy<Value = Depth> {
    prop_oneof![
        1 => Just(Depth::Unknown),
        6 => (0u64..100_000, 0u64..2000, proptest::option::of(0.0f64..1000.0))
            .prop_map(|(pending, in_flight, rate)| Depth::Known { pending, in_flight, rate }),
    ]
}

/// A history of observations, a second apart, run through the policy from `Memory::default()`.
fn history() -> impl Strategy<Value = Vec<(Depth, u32)>> {
    proptest::collection::vec((depths(), 0u32..60), 0..40)
}

fn replay(p: &Policy, steps: &[(Depth, u32)], t0: Instant) -> (Memory, Instant) {
    let mut m = Memory::default();
    let mut now = t0;
    for (depth, current) in steps {
        now += Duration::from_secs(1);
        decide(p, *depth, *current, &mut m, now);
    }
    (m, now)
}

proptest! {
    #[test]
    fn known_depth_stays_within_the_bounds(p in policies(), steps in history(), depth in depths(), current in 0u32..60) {
        let (mut m, now) = replay(&p, &steps, Instant::now());
        let d = decide(&p, depth, current, &mut m, now + Duration::from_secs(1));
        if let Depth::Known { in_flight, .. } = depth {
            let floor = if in_flight > 0 { p.min.max(1) } else { p.min };
            // Within [min, max], except that a scale-down held by the window never goes
            // above where the workload already is.
            prop_assert!(d.replicas >= floor, "{d:?} below {floor}");
            prop_assert!(d.replicas <= p.max.max(current.min(p.max)), "{d:?} above max {}", p.max);
        }
    }

    #[test]
    fn never_to_zero_with_work_in_flight(p in policies(), steps in history(), pending in 0u64..1000, in_flight in 1u64..1000, current in 0u32..60) {
        let (mut m, now) = replay(&p, &steps, Instant::now());
        let depth = Depth::Known { pending, in_flight, rate: None };
        prop_assert!(decide(&p, depth, current, &mut m, now + Duration::from_secs(1)).replicas >= 1);
    }

    #[test]
    fn unknown_depth_and_paused_hold_the_replicas(p in policies(), steps in history(), depth in depths(), current in 0u32..60) {
        let (m, now) = replay(&p, &steps, Instant::now());
        let later = now + Duration::from_secs(1);
        let d = decide(&p, Depth::Unknown, current, &mut m.clone(), later);
        prop_assert_eq!(d.replicas, current);
        let paused = Policy { paused: true, ..p };
        prop_assert_eq!(decide(&paused, depth, current, &mut m.clone(), later).replicas, current);
    }

    #[test]
    fn monotone_in_the_pending_backlog(p in policies(), steps in history(), pending in 0u64..100_000, more in 0u64..100_000, in_flight in 0u64..2000, current in 0u32..60, rate in proptest::option::of(0.0f64..1000.0)) {
        let (m, now) = replay(&p, &steps, Instant::now());
        let later = now + Duration::from_secs(1);
        let low = decide(&p, Depth::Known { pending, in_flight, rate }, current, &mut m.clone(), later);
        let high = decide(&p, Depth::Known { pending: pending + more, in_flight, rate }, current, &mut m.clone(), later);
        prop_assert!(high.replicas >= low.replicas, "{low:?} then {high:?}");
    }

    #[test]
    fn scale_up_is_immediate_and_scale_down_never_below_the_window(p in policies(), steps in history(), depth in depths(), current in 0u32..60) {
        prop_assume!(matches!(depth, Depth::Known { .. }));
        let (m, now) = replay(&p, &steps, Instant::now());
        let later = now + Duration::from_secs(1);
        let d = decide(&p, depth, current, &mut m.clone(), later);
        let mut after = m.clone();
        decide(&p, depth, current, &mut after, later);
        let recommended = after.window.back().map(|(at, r)| (*at, *r));
        prop_assert_eq!(recommended.map(|(at, _)| at), Some(later), "every known depth is recorded");
        if let Some((_, r)) = recommended {
            if r >= current || r == 0 {
                prop_assert_eq!(d.replicas, r);
            } else {
                // Held at the highest recommendation still in the window, never above now.
                let cutoff = later.checked_sub(p.stabilization);
                let highest = after.window.iter().filter(|(at, _)| cutoff.is_none_or(|c| *at >= c)).map(|(_, r)| *r).max().unwrap();
                prop_assert_eq!(d.replicas, highest.min(current).max(r));
                prop_assert!(after.window.iter().all(|(at, _)| cutoff.is_none_or(|c| *at >= c)));
            }
        }
    }
}
