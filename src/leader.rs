//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several running operators
//! exactly one reconciles.
//!
//! The election runs on a thread of its own, with its own runtime and its own Kubernetes client
//! (`Leadership`): however many reconciles are queued or however busy the controllers' client
//! is, renewing the Lease waits for nothing but the API server.
//!
//! Every write is a `replace` that carries the Lease's `resourceVersion`, so two candidates can
//! never both win: the loser gets a 409 Conflict and looks again. Expiry is judged the way
//! client-go judges it, by how long this process has watched the record stay unchanged, so clock
//! skew between machines does not matter.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a leader's claim lasts without renewal.
    pub duration: Duration,
}

impl LeaseConfig {
    /// How often the leader renews, and a candidate retries.
    pub fn retry_period(&self) -> Duration {
        (self.duration / 4).max(Duration::from_millis(200))
    }
    /// How long the leader keeps trying to renew before it gives up leadership.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}

/// A participant in the election.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last record seen and when this process first saw it.
    observed: Option<(LeaseSpec, Instant)>,
}

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Acquired,
    HeldBy(String),
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or_else(now)),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Tries once to take or renew the Lease.
    pub async fn try_acquire(&mut self) -> kube::Result<Attempt> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Acquired),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    Ok(Attempt::HeldBy("another candidate".into()))
                }
                Err(e) => Err(e),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let holder = current.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.config.identity.as_str());
        if !mine && holder.is_some() && !self.expired(&current) {
            return Ok(Attempt::HeldBy(holder.unwrap_or_default()));
        }
        let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            current.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(acquired, transitions));
        match self
            .api
            .replace(&lease.name_any(), &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Acquired),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Ok(Attempt::HeldBy("another candidate".into()))
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the holder has let `current` go unrenewed for longer than its duration, as seen
    /// from this process.
    fn expired(&mut self, current: &LeaseSpec) -> bool {
        let seen = match &self.observed {
            Some((spec, at)) if spec == current => *at,
            _ => {
                self.observed = Some((current.clone(), Instant::now()));
                return false;
            }
        };
        let duration = current
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64));
        seen.elapsed() > duration.unwrap_or(self.config.duration)
    }

    /// Waits until this process holds the Lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire().await {
                Ok(Attempt::Acquired) => return,
                Ok(Attempt::HeldBy(holder)) => {
                    tracing::debug!(%holder, "lease held by another operator")
                }
                Err(e) => tracing::warn!(error = %e, "acquiring the leader lease failed"),
            }
            tokio::time::sleep(self.config.retry_period()).await;
        }
    }

    /// Renews the Lease until renewal fails for longer than the renew deadline or another
    /// holder is found; returns when leadership is lost.
    pub async fn hold(&mut self) {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period()).await;
            // Bound each attempt by what is left of the deadline, so that a hanging API server
            // cannot keep this process leading after its lease has run out.
            let left = self
                .config
                .renew_deadline()
                .saturating_sub(last_ok.elapsed());
            match tokio::time::timeout(left, self.try_acquire()).await {
                Ok(Ok(Attempt::Acquired)) => last_ok = Instant::now(),
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    tracing::error!(%holder, "the leader lease was taken over");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the leader lease failed"),
                Err(_) => tracing::warn!("renewing the leader lease timed out"),
            }
            if last_ok.elapsed() >= self.config.renew_deadline() {
                tracing::error!("could not renew the leader lease in time");
                return;
            }
        }
    }

    /// Gives the Lease up so that a standby can take over at once.
    pub async fn release(&self) -> kube::Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        self.api
            .replace(&lease.name_any(), &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

/// Where this process stands in the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Waiting,
    Leading,
    /// Leadership was lost (or could not be sought at all); the process should exit.
    Lost,
    /// The Lease was given up on request.
    Released,
}

/// The election, run on its own thread until it is lost or released.
pub struct Leadership {
    standing: watch::Receiver<Standing>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Leadership {
    /// Starts competing for the Lease with a client of its own built from `config`.
    pub fn start(config: kube::Config, lease: LeaseConfig) -> std::io::Result<Self> {
        let (tx, standing) = watch::channel(Standing::Waiting);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("leader-election".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(elect(config, lease, &tx, stopped)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the leader election's runtime");
                        tx.send_replace(Standing::Lost);
                    }
                }
            })?;
        Ok(Self {
            standing,
            stop,
            thread: Some(thread),
        })
    }

    /// Waits until this process leads (`true`) or cannot (`false`).
    pub async fn leading(&mut self) -> bool {
        let found = self
            .standing
            .wait_for(|s| *s != Standing::Waiting)
            .await
            .map(|s| *s);
        matches!(found, Ok(Standing::Leading))
    }

    /// Waits until leadership is lost.
    pub async fn lost(&mut self) {
        let _ = self
            .standing
            .wait_for(|s| matches!(s, Standing::Lost | Standing::Released))
            .await;
    }

    /// Gives the Lease up (if held) and waits for the election thread to end.
    pub async fn release(mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

async fn elect(
    config: kube::Config,
    lease: LeaseConfig,
    tx: &watch::Sender<Standing>,
    stop: CancellationToken,
) {
    let client = match Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the leader election's client");
            tx.send_replace(Standing::Lost);
            return;
        }
    };
    let mut elector = Elector::new(client, lease);
    tracing::info!("waiting for the leader lease");
    tokio::select! {
        _ = elector.acquire() => tracing::info!("acquired the leader lease"),
        _ = stop.cancelled() => {
            tx.send_replace(Standing::Released);
            return;
        }
    }
    tx.send_replace(Standing::Leading);
    tokio::select! {
        _ = elector.hold() => {
            tx.send_replace(Standing::Lost);
            return;
        }
        _ = stop.cancelled() => {}
    }
    match elector.release().await {
        Ok(()) => tracing::info!("released the leader lease"),
        Err(err) => tracing::warn!(error = %err, "releasing the leader lease failed"),
    }
    tx.send_replace(Standing::Released);
}
