//! The Prometheus registry of the operator. Labels are low-cardinality values only (kind,
//! outcome, category), never object names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindOutcome {
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindCategory {
    pub kind: &'static str,
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindSource {
    pub kind: &'static str,
    /// `listing` (a Broker listing vouched for it) or `broker` (the broker was asked).
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `up` or `down`.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerRequest {
    /// `nats` or `rabbitmq`.
    pub engine: &'static str,
    /// `listing` (every consumer of a source) or `arrivals` (the cheap sign of new work).
    pub request: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<KindOutcome, Counter>,
    pub errors: Family<KindCategory, Counter>,
    pub duration: Family<KindLabel, Histogram>,
    pub leader: Gauge,
    pub destination_checks: Family<KindSource, Counter>,
    pub broker_listings: Family<OutcomeLabel, Counter>,
    pub api_requests: Family<MethodLabel, Counter>,
    pub scale_decisions: Family<DirectionLabel, Counter>,
    pub observation_seconds: Histogram,
    pub autoscaler_broker_requests: Family<BrokerRequest, Counter>,
    pub backlog_unknown: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("conveyor");
        let reconciles = Family::<KindOutcome, Counter>::default();
        let errors = Family::<KindCategory, Counter>::default();
        let duration = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
        });
        let leader = Gauge::default();
        registry.register(
            "reconciliations",
            "Reconciliations by kind and outcome",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by kind and error category",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this process holds the leader lease",
            leader.clone(),
        );
        let destination_checks = Family::<KindSource, Counter>::default();
        registry.register(
            "destination_checks",
            "Queue and Topic checks, answered from a Broker listing or by asking the broker",
            destination_checks.clone(),
        );
        let broker_listings = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "broker_listings",
            "Listings of every destination of a Broker, by outcome",
            broker_listings.clone(),
        );
        let api_requests = Family::<MethodLabel, Counter>::default();
        registry.register(
            "kube_api_requests",
            "Requests the controllers sent to the Kubernetes API server, by HTTP method (the leader election's own client is not counted)",
            api_requests.clone(),
        );
        let scale_decisions = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "scale_writes",
            "Replica changes the autoscaler wrote to workloads' scale, by direction",
            scale_decisions.clone(),
        );
        let observation_seconds = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
        ]);
        registry.register(
            "autoscaler_observation_seconds",
            "Time one autoscaler observation of a Broker took (arrivals and listings)",
            observation_seconds.clone(),
        );
        let autoscaler_broker_requests = Family::<BrokerRequest, Counter>::default();
        registry.register(
            "autoscaler_broker_requests",
            "Requests the autoscaler sent to brokers, by engine, kind and outcome",
            autoscaler_broker_requests.clone(),
        );
        let backlog_unknown = Counter::default();
        registry.register(
            "autoscaler_backlog_unknown",
            "Observations of a subscription whose backlog could not be read (replicas held)",
            backlog_unknown.clone(),
        );
        Self {
            registry,
            scale_decisions,
            observation_seconds,
            autoscaler_broker_requests,
            backlog_unknown,
            reconciles,
            errors,
            duration,
            leader,
            destination_checks,
            broker_listings,
            api_requests,
        }
    }
}

impl Metrics {
    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
