//! What the autoscaler reads from RabbitMQ: one management listing of the virtual host's
//! queues (name, ready, unacknowledged and the cumulative `ack` count) answers for every
//! subscription on the Broker. Its figures are as fresh as the broker's statistics interval
//! (5 s by default), so a workload at zero wakes up that late at worst.

use std::time::Duration;

use super::RabbitConnection;
use super::management::QueueDepth;
use crate::engine::{Arrivals, BrokerConnection, ConsumerDepth, ConsumerDepths, EngineError};

/// A listing that takes longer than this counts as unknown depth.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A queue's figures as the listing shows them.
pub fn depth(q: &QueueDepth) -> ConsumerDepth {
    ConsumerDepth {
        pending: q.messages_ready.unwrap_or(0),
        in_flight: q.messages_unacknowledged.unwrap_or(0),
        acknowledged: q.acknowledged(),
    }
}

impl RabbitConnection {
    /// Every queue of the virtual host: subscription queues and Queues' own queues alike.
    pub(super) async fn consumer_depths(&self) -> Result<ConsumerDepths, EngineError> {
        self.require_connected()?;
        let queues = tokio::time::timeout(TIMEOUT, self.api.queue_depths(&self.vhost))
            .await
            .map_err(|_| {
                EngineError::Unreachable(format!(
                    "listing the queues took longer than {} s",
                    TIMEOUT.as_secs()
                ))
            })??;
        Ok(queues.iter().map(|q| (q.name.clone(), depth(q))).collect())
    }

    /// No cheap fresh sign yet: the listing is all there is.
    pub(super) async fn arrivals(&self) -> Result<Arrivals, EngineError> {
        Ok(Arrivals::Unavailable)
    }
}
