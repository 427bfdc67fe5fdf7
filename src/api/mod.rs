//! The custom resource types of Conveyor (`conveyor.dev/v1alpha1`). Types only: no IO.

// `printcolumn(...)` repeats keys such as `type_` by design; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
pub mod broker;
pub mod common;
pub mod conditions;
#[allow(clippy::duplicated_attributes)]
pub mod queue;
pub mod stream;
#[allow(clippy::duplicated_attributes)]
pub mod subscription;
#[allow(clippy::duplicated_attributes)]
pub mod topic;

pub use broker::{Broker, BrokerSpec, BrokerStatus};
pub use common::{GROUP, VERSION};
pub use queue::{Queue, QueueSpec};
pub use stream::StreamStatus;
pub use subscription::{EventSubscription, EventSubscriptionSpec, EventSubscriptionStatus};
pub use topic::{Topic, TopicSpec};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The CustomResourceDefinitions of every Conveyor kind, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Broker::crd(),
        Queue::crd(),
        Topic::crd(),
        EventSubscription::crd(),
    ]
}
