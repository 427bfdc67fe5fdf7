//! `conveyor run`: the operator process. Serves probes and metrics, waits for the CRDs, takes
//! the leader Lease, runs one controller per kind (per namespace when limited), and shuts down
//! cleanly on SIGTERM, handing the Lease over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use kube::Client;
use kube::api::{Api, ListParams};
use tokio_util::sync::CancellationToken;

use crate::api::{Broker, EventSubscription, Queue, Topic};
use crate::autoscale;
use crate::clients::{self, RateLimit};
use crate::controller::context::scopes;
use crate::controller::driver::{self, Reconcile};
use crate::controller::{Config, Context};
use crate::controller::{broker, stream};
use crate::leader::{Leadership, LeaseConfig};
use crate::metrics::Metrics;
use crate::server::{self, Readiness};

/// The autoscaler client's limit on requests to the API server.
const AUTOSCALER_RATE_LIMIT: RateLimit = RateLimit {
    qps: 1000.0,
    burst: 2000,
};

/// Number of kinds with a controller.
const KINDS: usize = 4;

/// Settings of `conveyor run`.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub controller: Config,
    /// `None` runs without leader election (a single replica).
    pub lease: Option<LeaseConfig>,
    pub probe_addr: SocketAddr,
    /// The client-side limit on the controllers' requests to the API server.
    pub rate_limit: RateLimit,
}

/// Why the operator stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the probe server failed: {0}")]
    Server(#[from] std::io::Error),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("cannot start the leader election: {0}")]
    Election(std::io::Error),
    #[error("leadership was lost; exiting so that a fresh process competes again")]
    LeadershipLost,
}

/// How long the controllers may take to finish their running reconciles once leadership is
/// lost, before the process exits regardless.
const DRAIN_AFTER_LOSS: Duration = Duration::from_secs(5);

/// How long running reconciles may take to finish after SIGTERM, well within a pod's default
/// 30 s grace period.
const DRAIN_ON_SHUTDOWN: Duration = Duration::from_secs(10);

/// Cancels `token` on SIGTERM or SIGINT.
fn on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        }
        token.cancel();
    });
}

/// Runs the operator until a signal arrives (Ok) or leadership is lost (Err).
pub async fn run(kube_config: kube::Config, cfg: RunConfig) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let client = clients::limited(
        kube_config.clone(),
        cfg.rate_limit,
        metrics.api_requests.clone(),
    )?;
    // The autoscaler's own client: a burst of scale writes (0 -> N on a thousand workloads
    // at once) must not queue behind the reconcilers, nor they behind it.
    let scaler_client = clients::limited(
        kube_config.clone(),
        AUTOSCALER_RATE_LIMIT,
        metrics.api_requests.clone(),
    )?;
    let readiness = Arc::new(Readiness::default());
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone());
    let server = tokio::spawn(server::serve(
        cfg.probe_addr,
        readiness.clone(),
        metrics.clone(),
        shutdown.clone().cancelled_owned(),
    ));

    tokio::select! {
        _ = wait_for_crds(&client, &cfg.controller.namespaces) => readiness.set_crds_found(),
        _ = shutdown.cancelled() => return finish(server).await,
    }

    let mut leadership = match cfg.lease.clone() {
        Some(lease) => Some(Leadership::start(kube_config, lease).map_err(RunError::Election)?),
        None => None,
    };
    if let Some(l) = leadership.as_mut() {
        tokio::select! {
            leading = l.leading() => if !leading {
                shutdown.cancel();
                return Err(RunError::LeadershipLost);
            },
            _ = shutdown.cancelled() => {
                if let Some(l) = leadership.take() {
                    l.release().await;
                }
                return finish(server).await;
            }
        }
    }
    metrics.leader.set(1);
    let namespaces = scopes(&cfg.controller.namespaces);
    readiness.start_leading(KINDS * namespaces.len());
    let ctx = Arc::new(Context::new(
        client,
        cfg.controller.clone(),
        metrics.clone(),
    ));
    let janitor = tokio::spawn(broker::drop_stale_connections(
        ctx.clone(),
        namespaces.clone(),
        Duration::from_secs(60),
    ));
    let refresher = tokio::spawn(stream::refresh::run(ctx.clone()));
    let autoscaler = tokio::spawn(autoscale::run(ctx.clone(), scaler_client));
    let mut controllers = tokio::spawn(run_controllers(
        ctx,
        namespaces,
        shutdown.clone(),
        readiness.clone(),
    ));

    // On SIGTERM running reconciles may finish, for a bounded time: one waiting on a slow
    // broker request must not hold the process past its pod's grace period.
    let drained = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_ON_SHUTDOWN).await;
        tracing::warn!("reconciles still running after the shutdown began; exiting anyway");
    };
    let lost = match leadership.as_mut() {
        Some(l) => tokio::select! {
            _ = &mut controllers => false,
            _ = l.lost() => true,
            _ = drained => false,
        },
        None => tokio::select! {
            _ = &mut controllers => false,
            _ = drained => false,
        },
    };
    metrics.leader.set(0);
    janitor.abort();
    refresher.abort();
    autoscaler.abort();
    if lost {
        // Stop starting reconciles and let the running ones finish, briefly: another process
        // may already lead.
        shutdown.cancel();
        if tokio::time::timeout(DRAIN_AFTER_LOSS, controllers)
            .await
            .is_err()
        {
            tracing::warn!("reconciles still running after leadership was lost; exiting anyway");
        }
        return Err(RunError::LeadershipLost);
    }
    if let Some(l) = leadership {
        l.release().await;
    }
    finish(server).await
}

async fn finish(server: tokio::task::JoinHandle<std::io::Result<()>>) -> Result<(), RunError> {
    match server.await {
        Ok(r) => r.map_err(RunError::Server),
        Err(e) => Err(RunError::Server(std::io::Error::other(e))),
    }
}

async fn run_controllers(
    ctx: Arc<Context>,
    namespaces: Vec<Option<String>>,
    shutdown: CancellationToken,
    readiness: Arc<Readiness>,
) {
    let (shutdown, readiness) = (&shutdown, &readiness);
    let mut tasks = Vec::new();
    for ns in namespaces {
        tasks.push(spawn::<Broker>(&ctx, ns.clone(), shutdown, readiness));
        tasks.push(spawn::<Queue>(&ctx, ns.clone(), shutdown, readiness));
        tasks.push(spawn::<Topic>(&ctx, ns.clone(), shutdown, readiness));
        tasks.push(spawn::<EventSubscription>(&ctx, ns, shutdown, readiness));
    }
    join_all(tasks).await;
}

fn spawn<K: Reconcile>(
    ctx: &Arc<Context>,
    ns: Option<String>,
    shutdown: &CancellationToken,
    readiness: &Arc<Readiness>,
) -> tokio::task::JoinHandle<()> {
    let readiness = readiness.clone();
    tokio::spawn(driver::run::<K>(
        ctx.clone(),
        ns,
        shutdown.clone().cancelled_owned(),
        move || readiness.watch_synced(),
    ))
}

/// Waits until every Conveyor kind can be listed in every scope.
async fn wait_for_crds(client: &Client, namespaces: &[String]) {
    let mut logged = false;
    loop {
        let mut missing = None;
        for ns in scopes(namespaces) {
            if let Err(e) = list_all_kinds(client, ns.as_deref()).await {
                missing = Some(e);
                break;
            }
        }
        let Some(e) = missing else { return };
        if !logged {
            tracing::warn!(error = %e, "Conveyor CRDs not available yet; install them with `conveyor crds | kubectl apply -f -`");
            logged = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn list_all_kinds(client: &Client, ns: Option<&str>) -> kube::Result<()> {
    async fn one<K>(client: &Client, ns: Option<&str>) -> kube::Result<()>
    where
        K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = driver::scoped_api(client, ns);
        api.list_metadata(&ListParams::default().limit(1))
            .await
            .map(|_| ())
    }
    one::<Broker>(client, ns).await?;
    one::<Queue>(client, ns).await?;
    one::<Topic>(client, ns).await?;
    one::<EventSubscription>(client, ns).await
}
