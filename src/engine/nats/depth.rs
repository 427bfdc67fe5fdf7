//! What the autoscaler reads from NATS: every consumer of a stream from one paged listing
//! (`$JS.API.CONSUMER.LIST`, 256 a page), never one info request per subscription, and as the
//! sign of new messages for workloads at zero, each stream's last sequence (one
//! `$JS.API.STREAM.INFO` per stream).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer;
use futures::TryStreamExt;
use futures::future::join_all;

use super::connection::Connection;
use crate::engine::{Arrivals, ConsumerDepth, ConsumerDepths, EngineError};

/// A listing or stream info that takes longer than this counts as unknown depth.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A consumer's figures as its info in a listing shows them.
pub fn depth(info: &consumer::Info) -> ConsumerDepth {
    ConsumerDepth {
        pending: info.num_pending,
        in_flight: info.num_ack_pending as u64,
        // Every delivery below the floor is acknowledged: it advances once per completed
        // delivery.
        acknowledged: Some(info.ack_floor.consumer_sequence),
    }
}

impl Connection {
    /// Every consumer of `sources`, listed concurrently, one paged listing per stream.
    pub(super) async fn consumer_depths(
        &self,
        sources: &[String],
    ) -> Result<ConsumerDepths, EngineError> {
        self.require_connected()?;
        let js = async_nats::jetstream::new(self.client().clone());
        let lists = sources.iter().map(|source| {
            let js = js.clone();
            async move {
                let stream = js.get_stream_no_info(source).await.map_err(request)?;
                let listing = stream
                    .consumers()
                    .map_ok(|info| (info.name.clone(), depth(&info)))
                    .try_collect::<Vec<_>>();
                match tokio::time::timeout(TIMEOUT, listing).await {
                    Err(_) => Err(EngineError::Unreachable(format!(
                        "listing the consumers of {source} took longer than {} s",
                        TIMEOUT.as_secs()
                    ))),
                    // A stream that is gone has no consumers: theirs show as missing.
                    Ok(Err(e)) if e.to_string().contains("stream not found") => Ok(Vec::new()),
                    Ok(r) => r.map_err(request),
                }
            }
        });
        let mut out = HashMap::new();
        for listed in join_all(lists).await {
            out.extend(listed?);
        }
        Ok(out)
    }

    /// Each stream's last sequence: it changes whenever a message arrives.
    pub(super) async fn arrivals(&self, sources: &[String]) -> Result<Arrivals, EngineError> {
        self.require_connected()?;
        let infos = sources.iter().map(|source| async move {
            match tokio::time::timeout(TIMEOUT, self.info_of(source)).await {
                Err(_) => Err(EngineError::Unreachable(format!(
                    "the info of {source} took longer than {} s",
                    TIMEOUT.as_secs()
                ))),
                Ok(r) => Ok(r?.map(|i| (source.clone(), i.state.last_sequence))),
            }
        });
        let mut marks = HashMap::new();
        for info in join_all(infos).await {
            marks.extend(info?);
        }
        Ok(Arrivals::Marks(marks))
    }
}

fn request(e: impl std::fmt::Display) -> EngineError {
    EngineError::Request(e.to_string())
}
