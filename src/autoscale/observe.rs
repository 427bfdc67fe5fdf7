//! One tick's observation of one Broker: the arrival marks of its sources, then one batched
//! listing of the sources that are due (`schedule::due`). Never a request per subscription.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::schedule::{self, SourceState};
use super::target::{Key, Target};
use crate::engine::registry::BrokerKey;
use crate::engine::{Arrivals, BrokerConnection, ConsumerDepth, Engine};
use crate::metrics::{BrokerRequest, Metrics};

/// What one tick learned of a subscription's consumer.
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// Figures fresh from the broker.
    Depth(ConsumerDepth),
    /// Its source was listed and the consumer is not in it.
    Missing,
    /// The broker could not be asked: why.
    Unknown(String),
}

/// A target with its workload's current replicas.
pub struct Watched<'a> {
    pub target: &'a Target,
    pub replicas: u32,
}

/// Observes the targets of one Broker. Targets whose sources were not due this tick are left
/// out of the answer.
pub async fn broker(
    key: &BrokerKey,
    conn: Option<Arc<dyn BrokerConnection>>,
    targets: &[Watched<'_>],
    sources: &mut HashMap<(BrokerKey, String), SourceState>,
    metrics: &Metrics,
) -> HashMap<Key, Observed> {
    let now = Instant::now();
    let all_unknown = |why: String| {
        targets
            .iter()
            .map(|w| (w.target.key(), Observed::Unknown(why.clone())))
            .collect()
    };
    let Some(conn) = conn else {
        return all_unknown(format!("Broker {} is not connected", key.1));
    };
    if let Err(e) = conn.require_connected() {
        return all_unknown(e.to_string());
    }
    let engine = conn.engine();
    let names: BTreeSet<&str> = targets.iter().map(|w| w.target.source.as_str()).collect();
    let names: Vec<String> = names.into_iter().map(String::from).collect();
    let at_zero: BTreeSet<&str> = targets
        .iter()
        .filter(|w| w.replicas == 0)
        .map(|w| w.target.source.as_str())
        .collect();
    let zero_consumers: Vec<String> = targets
        .iter()
        .filter(|w| w.replicas == 0)
        .map(|w| w.target.listed_as(engine).to_string())
        .collect();

    let started = Instant::now();
    // Only sources with a workload at zero need the sign of new work; the others are listed
    // on the schedule alone.
    let zero_sources: Vec<String> = at_zero.iter().map(|s| s.to_string()).collect();
    let arrivals = if zero_sources.is_empty() {
        Ok(Arrivals::Unavailable)
    } else {
        conn.arrivals(&zero_sources, &zero_consumers).await
    };
    let marks = match arrivals {
        Ok(Arrivals::Marks(m)) => {
            count(metrics, engine, "arrivals", "ok");
            m
        }
        Ok(_) => HashMap::new(),
        Err(_) => {
            count(metrics, engine, "arrivals", "error");
            HashMap::new()
        }
    };
    let due: Vec<String> = names
        .iter()
        .filter(|n| {
            let state = sources.get(&(key.clone(), n.to_string()));
            let tick = schedule::Now {
                at: now,
                mark: marks.get(n.as_str()).copied(),
                any_at_zero: at_zero.contains(n.as_str()),
            };
            schedule::due(state.unwrap_or(&SourceState::default()), tick)
        })
        .cloned()
        .collect();
    if due.is_empty() {
        metrics
            .observation_seconds
            .observe(started.elapsed().as_secs_f64());
        return HashMap::new();
    }
    let listing = conn.consumer_depths(&due).await;
    metrics
        .observation_seconds
        .observe(started.elapsed().as_secs_f64());
    let depths = match listing {
        Ok(d) => {
            count(metrics, engine, "listing", "ok");
            d
        }
        Err(e) => {
            count(metrics, engine, "listing", "error");
            let why = e.to_string();
            return targets
                .iter()
                .filter(|w| due.contains(&w.target.source))
                .map(|w| (w.target.key(), Observed::Unknown(why.clone())))
                .collect();
        }
    };
    let mut out = HashMap::new();
    for source in &due {
        let on_it = targets.iter().filter(|w| &w.target.source == source);
        let mut busy = false;
        for w in on_it {
            let observed = match depths.get(w.target.listed_as(engine)) {
                Some(d) => {
                    busy |= d.pending + d.in_flight > 0;
                    Observed::Depth(*d)
                }
                None => Observed::Missing,
            };
            out.insert(w.target.key(), observed);
        }
        sources.insert(
            (key.clone(), source.clone()),
            SourceState {
                listed: Some(now),
                mark: marks.get(source.as_str()).copied(),
                busy,
            },
        );
    }
    out
}

fn count(metrics: &Metrics, engine: Engine, request: &'static str, outcome: &'static str) {
    let engine = match engine {
        Engine::Nats => "nats",
        Engine::Rabbitmq => "rabbitmq",
    };
    metrics
        .autoscaler_broker_requests
        .get_or_create(&BrokerRequest {
            engine,
            request,
            outcome,
        })
        .inc();
}
