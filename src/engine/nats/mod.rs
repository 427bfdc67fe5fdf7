//! The NATS JetStream engine: a Queue is a work-queue stream, a Topic a limits stream with one
//! subject per event type. Connections (`connection`), streams (`streams`), and the keys and
//! JWTs of decentralized authentication for managed brokers (`identities`, `jwt`).

pub mod connection;
pub mod consumers;
pub mod dead_letters;
pub mod depth;
pub mod identities;
pub mod jwt;
pub mod streams;
pub mod users;

use connection::Connection;

use super::{
    Arrivals, BoxFuture, BrokerConnection, BrokerInfo, ConsumerDepths, ConsumerSpec, ConsumerState,
    ConsumerTarget, Credentials, DeleteWhen, Deletion, DestinationSpec, DestinationState, Engine,
    EngineError, Issued, Listed, SyncMode, SyncOutcome, Target,
};

impl BrokerConnection for Connection {
    fn engine(&self) -> Engine {
        Engine::Nats
    }

    fn require_connected(&self) -> Result<(), EngineError> {
        Connection::require_connected(self)
    }

    fn info(&self) -> BoxFuture<'_, Result<BrokerInfo, EngineError>> {
        Box::pin(self.broker_info())
    }

    fn replicas(&self) -> BoxFuture<'_, Result<Vec<(String, usize)>, EngineError>> {
        Box::pin(self.stream_replicas())
    }

    fn ensure<'a>(
        &'a self,
        spec: &'a DestinationSpec,
        mode: SyncMode,
    ) -> BoxFuture<'a, Result<SyncOutcome, EngineError>> {
        Box::pin(self.ensure_stream(spec, mode))
    }

    fn delete<'a>(
        &'a self,
        target: &'a Target,
        when: DeleteWhen,
    ) -> BoxFuture<'a, Result<Deletion, EngineError>> {
        Box::pin(self.delete_stream(&target.name, &target.owner, when))
    }

    fn state<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Option<DestinationState>, EngineError>> {
        Box::pin(self.stream_state(&target.name))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Listed>, EngineError>> {
        Box::pin(self.list_streams())
    }

    fn unsupported(&self, _spec: &DestinationSpec) -> Vec<String> {
        // JetStream has every setting of the model.
        Vec::new()
    }

    fn ensure_consumer<'a>(
        &'a self,
        spec: &'a ConsumerSpec,
        mode: SyncMode,
    ) -> BoxFuture<'a, Result<SyncOutcome<ConsumerState>, EngineError>> {
        Box::pin(Connection::ensure_consumer(self, spec, mode))
    }

    fn delete_consumer<'a>(
        &'a self,
        target: &'a ConsumerTarget,
    ) -> BoxFuture<'a, Result<Deletion, EngineError>> {
        Box::pin(Connection::delete_consumer(self, target))
    }

    fn unsupported_consumer(&self, spec: &ConsumerSpec) -> Vec<String> {
        // A durable pull consumer has every delivery setting of the model; Conveyor keeps
        // the dead letters (`dead_letters`).
        let _ = spec;
        Vec::new()
    }

    fn issue_identity(&self, spec: &ConsumerSpec, previous: Option<&Credentials>) -> Issued {
        Connection::issue_identity(self, spec, previous)
    }

    fn ensure_identity<'a>(
        &'a self,
        _: &'a ConsumerSpec,
        _: &'a Credentials,
    ) -> BoxFuture<'a, Result<SyncOutcome<()>, EngineError>> {
        // A signed JWT needs nothing in the servers.
        Box::pin(async { Ok(SyncOutcome::Unchanged(())) })
    }

    fn revoke_identity<'a>(
        &'a self,
        consumer: &'a str,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(Connection::revoke_identity(self, consumer))
    }

    fn consumer_depths<'a>(
        &'a self,
        sources: &'a [String],
    ) -> BoxFuture<'a, Result<ConsumerDepths, EngineError>> {
        Box::pin(Connection::consumer_depths(self, sources))
    }

    fn arrivals<'a>(
        &'a self,
        sources: &'a [String],
        _consumers: &'a [String],
    ) -> BoxFuture<'a, Result<Arrivals, EngineError>> {
        Box::pin(Connection::arrivals(self, sources))
    }
}
