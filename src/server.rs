//! The probe and metrics server: `/healthz` (the process is alive), `/readyz` (the CRDs are
//! served and, on the leader, every watch has synced; a standby is ready once the CRDs are
//! found) and `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// What readiness depends on; starts not ready.
#[derive(Default)]
pub struct Readiness {
    crds_found: AtomicBool,
    leading: AtomicBool,
    unsynced: AtomicUsize,
}

impl Readiness {
    pub fn set_crds_found(&self) {
        self.crds_found.store(true, Ordering::SeqCst);
    }
    /// Called when this process becomes leader and is about to start `watches` watches.
    pub fn start_leading(&self, watches: usize) {
        self.unsynced.store(watches, Ordering::SeqCst);
        self.leading.store(true, Ordering::SeqCst);
    }
    /// Called once per watch when its initial list has been read.
    pub fn watch_synced(&self) {
        let _ = self
            .unsynced
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
    /// `Ok` with a description when ready, `Err` with the reason otherwise.
    pub fn check(&self) -> Result<&'static str, &'static str> {
        if !self.crds_found.load(Ordering::SeqCst) {
            return Err("the Conveyor CRDs are not served yet");
        }
        if !self.leading.load(Ordering::SeqCst) {
            return Ok("ok: standby, waiting for the leader lease");
        }
        match self.unsynced.load(Ordering::SeqCst) {
            0 => Ok("ok: leader, watches synced"),
            _ => Err("watches have not synced yet"),
        }
    }
}

#[derive(Clone)]
struct AppState {
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.readiness.check() {
        Ok(msg) => (StatusCode::OK, msg),
        Err(msg) => (StatusCode::SERVICE_UNAVAILABLE, msg),
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Binds `addr` and serves the probes and metrics until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(self::metrics))
        .with_state(AppState { readiness, metrics });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::Readiness;

    #[test]
    fn not_ready_until_crds_found_and_watches_synced() {
        let r = Readiness::default();
        assert!(r.check().is_err());
        r.set_crds_found();
        assert!(
            r.check().is_ok(),
            "a standby is ready once the CRDs are found"
        );
        r.start_leading(2);
        assert!(r.check().is_err());
        r.watch_synced();
        assert!(r.check().is_err());
        r.watch_synced();
        assert!(r.check().is_ok());
        r.watch_synced();
        assert!(r.check().is_ok(), "extra sync calls do not underflow");
    }
}
