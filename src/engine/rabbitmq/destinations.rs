//! Queues and Topics on RabbitMQ: declare, check, repair, read and delete, following the
//! mapping in `topology`.
//!
//! `DeleteIfEmpty`: RabbitMQ refuses `if-empty` deletes of quorum queues, and its management
//! figures lag by up to a few seconds. So Conveyor first blocks publishing to the queue with a
//! policy (`max-length 0`, `reject-publish`), and deletes only when the queue has reported no
//! messages, ready or unacknowledged, for [`SETTLE`] after the block was in place. RabbitMQ's
//! `reject-publish` admits one message past the limit, so at most one message published after
//! the deletion began can go with the queue.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Map;

use super::RabbitConnection;
use super::management::{Policy, QueueInfo};
use super::topology::{self as t};
use crate::engine::{
    DeleteWhen, Deletion, DestinationKind, DestinationSpec, DestinationState, EngineError, Listed,
    SyncMode, SyncOutcome, Target, digest, owner_kind,
};

/// How long a blocked queue must report empty before it is deleted: longer than the lag of
/// the management API's queue figures.
pub const SETTLE: Duration = Duration::from_secs(10);

fn queue_state(q: &QueueInfo, consumers: Option<u64>) -> DestinationState {
    DestinationState {
        messages: q.messages.unwrap_or_else(|| {
            q.messages_ready.unwrap_or(0) + q.messages_unacknowledged.unwrap_or(0)
        }),
        bytes: q.message_bytes,
        consumers: consumers.or(q.consumers).unwrap_or(0),
        first_sequence: None,
        last_sequence: None,
    }
}

impl RabbitConnection {
    /// The queue that holds a destination's messages: the Queue itself, or a Topic's unrouted
    /// queue.
    fn holding_queue(kind: DestinationKind, name: &str) -> String {
        match kind {
            DestinationKind::Queue => name.to_string(),
            DestinationKind::Topic => t::unrouted(name),
        }
    }

    pub(super) async fn ensure_destination(
        &self,
        spec: &DestinationSpec,
        mode: SyncMode,
    ) -> Result<SyncOutcome, EngineError> {
        self.require_connected_now()?;
        match spec.kind {
            DestinationKind::Queue => self.ensure_queue(spec, mode).await,
            DestinationKind::Topic => self.ensure_topic(spec, mode).await,
        }
    }

    fn require_connected_now(&self) -> Result<(), EngineError> {
        crate::engine::BrokerConnection::require_connected(self)
    }

    /// Declares (or repairs) the quorum queue `queue` and its retention policy.
    async fn put_queue(&self, spec: &DestinationSpec, queue: &str) -> Result<(), EngineError> {
        let vh = &self.vhost;
        self.api
            .put_policy(
                vh,
                &t::policy_name(queue),
                &t::retention_policy(spec, queue),
            )
            .await?;
        self.api
            .declare_queue(vh, queue, true, &t::queue_arguments(spec))
            .await?;
        Ok(())
    }

    async fn ensure_queue(
        &self,
        spec: &DestinationSpec,
        mode: SyncMode,
    ) -> Result<SyncOutcome, EngineError> {
        let (vh, name) = (&self.vhost, &spec.name);
        let Some(queue) = self.api.queue(vh, name).await? else {
            if !mode.create {
                return Ok(SyncOutcome::Missing);
            }
            self.put_queue(spec, name).await?;
            return Ok(SyncOutcome::Created(DestinationState::default()));
        };
        if let Some(why) = t::not_owned(&format!("queue {name}"), &queue.arguments, &spec.owner) {
            return Ok(SyncOutcome::Conflict(why));
        }
        let wanted = t::retention_policy(spec, name);
        let policy = self.api.policy(vh, &t::policy_name(name)).await?;
        let changed = t::queue_differences(&queue, policy.as_ref(), &wanted);
        let state = queue_state(&queue, None);
        if changed.is_empty() {
            return Ok(SyncOutcome::Unchanged(state));
        }
        if !mode.repair {
            return Ok(SyncOutcome::Drifted(state, changed));
        }
        self.api
            .put_policy(vh, &t::policy_name(name), &wanted)
            .await?;
        Ok(SyncOutcome::Updated(state, changed))
    }

    async fn ensure_topic(
        &self,
        spec: &DestinationSpec,
        mode: SyncMode,
    ) -> Result<SyncOutcome, EngineError> {
        let (vh, name) = (&self.vhost, &spec.name);
        let Some(exchange) = self.api.exchange(vh, name).await? else {
            if !mode.create {
                return Ok(SyncOutcome::Missing);
            }
            self.put_topic(spec).await?;
            return Ok(SyncOutcome::Created(DestinationState::default()));
        };
        let what = format!("exchange {name}");
        if let Some(why) = t::not_owned(&what, &exchange.arguments, &spec.owner) {
            return Ok(SyncOutcome::Conflict(why));
        }
        let unrouted = t::unrouted(name);
        let mut changed = t::exchange_differences(&exchange, spec);
        let ae = self.api.exchange(vh, &unrouted).await?;
        let queue = self.api.queue(vh, &unrouted).await?;
        let bound = match (&ae, &queue) {
            (Some(_), Some(_)) => !self
                .api
                .bindings_from_exchange_to_queue(vh, &unrouted, &unrouted)
                .await?
                .is_empty(),
            _ => false,
        };
        if ae.is_none() || queue.is_none() || !bound {
            changed.push(format!("unrouted-event queue {unrouted}"));
        }
        let wanted = t::retention_policy(spec, &unrouted);
        let policy = self.api.policy(vh, &t::policy_name(&unrouted)).await?;
        changed.extend(t::policy_differences(policy.as_ref(), &wanted));
        let bindings = self.api.bindings_from_exchange(vh, name).await?;
        let state = match &queue {
            Some(q) => queue_state(q, Some(bindings.len() as u64)),
            None => DestinationState {
                consumers: bindings.len() as u64,
                ..Default::default()
            },
        };
        if changed.is_empty() {
            return Ok(SyncOutcome::Unchanged(state));
        }
        if !mode.repair {
            return Ok(SyncOutcome::Drifted(state, changed));
        }
        if !t::exchange_differences(&exchange, spec).is_empty() {
            // An exchange's type and arguments are fixed at declaration; redeclaring it would
            // drop every subscription's binding. Report instead.
            return Ok(SyncOutcome::Drifted(state, changed));
        }
        self.put_unrouted(spec).await?;
        Ok(SyncOutcome::Updated(state, changed))
    }

    /// The alternate exchange, the unrouted queue, its binding and its retention policy.
    async fn put_unrouted(&self, spec: &DestinationSpec) -> Result<(), EngineError> {
        let (vh, unrouted) = (&self.vhost, t::unrouted(&spec.name));
        self.api
            .declare_exchange(
                vh,
                &unrouted,
                "fanout",
                true,
                &t::unrouted_exchange_arguments(spec),
            )
            .await?;
        self.put_queue(spec, &unrouted).await?;
        self.api.bind_queue(vh, &unrouted, &unrouted, "").await?;
        Ok(())
    }

    async fn put_topic(&self, spec: &DestinationSpec) -> Result<(), EngineError> {
        self.put_unrouted(spec).await?;
        self.api
            .declare_exchange(
                &self.vhost,
                &spec.name,
                "topic",
                true,
                &t::exchange_arguments(spec),
            )
            .await?;
        Ok(())
    }

    /// Every Queue and Topic Conveyor owns in the vhost: one listing each of its queues (a
    /// Topic's figures are its unrouted queue's), bindings (a Topic's subscriptions), policies
    /// (retention) and exchanges (a Topic's own and its unrouted one).
    pub(super) async fn list_destinations(&self) -> Result<Vec<Listed>, EngineError> {
        self.require_connected_now()?;
        let vh = &self.vhost;
        let queues = self.api.queues(vh).await?;
        let bindings = self.api.bindings(vh).await?;
        let policies: HashMap<String, Policy> = self
            .api
            .policies(vh)
            .await?
            .into_iter()
            .map(|p| (p.name, p.policy))
            .collect();
        let exchanges: HashMap<String, (String, bool, Map<String, serde_json::Value>)> = self
            .api
            .exchanges(vh)
            .await?
            .into_iter()
            .map(|e| (e.name, (e.exchange_type, e.durable, e.arguments)))
            .collect();
        let mut from: HashMap<&str, u64> = HashMap::new();
        for b in &bindings {
            *from.entry(b.source.as_str()).or_default() += 1;
        }
        let unrouted_bound = |q: &str| {
            bindings
                .iter()
                .any(|b| b.source == q && b.destination == q && b.destination_type == "queue")
        };
        Ok(queues
            .iter()
            .filter_map(|q| {
                let owner = q.arguments.get(t::OWNER_ARG)?.as_str()?;
                let kind = owner_kind(owner)?;
                let name = match kind {
                    DestinationKind::Queue => q.name.clone(),
                    DestinationKind::Topic => q.name.strip_suffix(".unrouted")?.to_string(),
                };
                let subscriptions = (kind == DestinationKind::Topic)
                    .then(|| from.get(name.as_str()).copied().unwrap_or(0));
                let settings = serde_json::to_string(&(
                    &q.arguments,
                    &q.policy,
                    &q.queue_type,
                    q.durable,
                    kind == DestinationKind::Topic && unrouted_bound(&q.name),
                    policies.get(&t::policy_name(&q.name)),
                    policies.get(&t::block_policy_name(&q.name)),
                    (kind == DestinationKind::Topic)
                        .then(|| (exchanges.get(&name), exchanges.get(&q.name))),
                ))
                .unwrap_or_default();
                Some(Listed {
                    kind,
                    name,
                    owner: owner.to_string(),
                    state: queue_state(q, subscriptions),
                    settings: digest(&settings),
                })
            })
            .collect())
    }

    pub(super) async fn destination_state(
        &self,
        target: &Target,
    ) -> Result<Option<DestinationState>, EngineError> {
        self.require_connected_now()?;
        let queue = Self::holding_queue(target.kind, &target.name);
        Ok(self
            .api
            .queue(&self.vhost, &queue)
            .await?
            .map(|q| queue_state(&q, None)))
    }

    pub(super) async fn delete_destination(
        &self,
        target: &Target,
        when: DeleteWhen,
    ) -> Result<Deletion, EngineError> {
        self.require_connected_now()?;
        let (vh, name) = (&self.vhost, &target.name);
        let args: Map<String, serde_json::Value> = match target.kind {
            DestinationKind::Queue => match self.api.queue(vh, name).await? {
                Some(q) => q.arguments,
                None => return Ok(Deletion::Absent),
            },
            DestinationKind::Topic => match self.api.exchange(vh, name).await? {
                Some(e) => e.arguments,
                None => return Ok(Deletion::Absent),
            },
        };
        let what = match target.kind {
            DestinationKind::Queue => format!("queue {name}"),
            DestinationKind::Topic => format!("exchange {name}"),
        };
        if let Some(why) = t::not_owned(&what, &args, &target.owner) {
            return Ok(Deletion::NotOwned(why));
        }
        let holding = Self::holding_queue(target.kind, name);
        if when == DeleteWhen::Empty
            && let Some(wait) = self.drain(&holding).await?
        {
            return Ok(wait);
        }
        if target.kind == DestinationKind::Topic {
            self.api.delete_exchange(vh, name).await?;
            self.api.delete_exchange(vh, &holding).await?;
        }
        self.api.delete_queue(vh, &holding).await?;
        self.api
            .delete_policy(vh, &t::policy_name(&holding))
            .await?;
        self.api
            .delete_policy(vh, &t::block_policy_name(&holding))
            .await?;
        self.forget_block(&holding);
        Ok(Deletion::Deleted)
    }

    /// Blocks publishing to `queue` and says what the deletion still waits for, or `None` once
    /// the queue has reported empty for [`SETTLE`] with the block in place.
    async fn drain(&self, queue: &str) -> Result<Option<Deletion>, EngineError> {
        let vh = &self.vhost;
        self.api
            .put_policy(vh, &t::block_policy_name(queue), &t::block_policy(queue))
            .await?;
        let since = self.blocked_since(queue);
        let held = match self.api.queue(vh, queue).await? {
            Some(q) => queue_state(&q, None).messages,
            None => 0,
        };
        if held > 0 {
            self.forget_block(queue);
            let why =
                format!("queue {queue} still holds {held} message(s); publishing to it is blocked");
            return Ok(Some(Deletion::NotEmpty(held, why)));
        }
        let waited = since.elapsed();
        if waited < SETTLE {
            let left = (SETTLE - waited).as_secs().max(1);
            let why = format!(
                "queue {queue} reports no messages; Conveyor confirms for {left} s more because RabbitMQ's figures lag"
            );
            return Ok(Some(Deletion::NotEmpty(0, why)));
        }
        Ok(None)
    }
}
