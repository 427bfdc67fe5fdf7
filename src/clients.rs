//! The Kubernetes clients of the operator process. The controllers share one client behind a
//! client-side token bucket, so that a backlog of reconciles cannot flood the API server; the
//! leader election builds its own client (see `leader::Leadership`), so that renewing the Lease
//! never queues behind that traffic.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use kube::client::ClientBuilder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tower::{Layer, Service};

use crate::metrics::MethodLabel;

/// A client-side limit on requests: `qps` per second on average, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub qps: f64,
    pub burst: u32,
}

/// The controllers' client: `config` with `limit` applied to every request it sends, each
/// counted in `requests` by method.
pub fn limited(
    config: kube::Config,
    limit: RateLimit,
    requests: Family<MethodLabel, Counter>,
) -> kube::Result<kube::Client> {
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&RateLimitLayer::new(limit, requests))
        .build())
}

/// A token bucket: holds up to `burst` tokens and gains `qps` a second.
#[derive(Debug)]
pub struct Bucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst.max(1)),
            last: now,
        }
    }

    /// Takes a token at `now`, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(self.limit.burst.max(1));
        let gained = now.saturating_duration_since(self.last).as_secs_f64() * self.limit.qps;
        self.tokens = (self.tokens + gained).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / self.limit.qps.max(f64::MIN_POSITIVE);
        Err(Duration::from_secs_f64(wait.min(60.0)))
    }
}

/// Wraps a service in a shared token bucket.
#[derive(Clone)]
pub struct RateLimitLayer {
    bucket: Arc<Mutex<Bucket>>,
    requests: Family<MethodLabel, Counter>,
}

impl RateLimitLayer {
    pub fn new(limit: RateLimit, requests: Family<MethodLabel, Counter>) -> Self {
        Self {
            bucket: Arc::new(Mutex::new(Bucket::new(limit, Instant::now()))),
            requests,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = Limited<S>;
    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            bucket: self.bucket.clone(),
            requests: self.requests.clone(),
            sleep: None,
            granted: false,
        }
    }
}

/// A service that is ready only once the bucket grants a token.
pub struct Limited<S> {
    inner: S,
    bucket: Arc<Mutex<Bucket>>,
    requests: Family<MethodLabel, Counter>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    granted: bool,
}

impl<S: Clone> Clone for Limited<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            bucket: self.bucket.clone(),
            requests: self.requests.clone(),
            sleep: None,
            granted: false,
        }
    }
}

impl<S, B> Service<http::Request<B>> for Limited<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        while !self.granted {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            let taken = self
                .bucket
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(Instant::now());
            match taken {
                Ok(()) => self.granted = true,
                Err(wait) => self.sleep = Some(Box::pin(tokio::time::sleep(wait))),
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> S::Future {
        self.granted = false;
        self.requests
            .get_or_create(&MethodLabel {
                method: req.method().as_str().to_string(),
            })
            .inc();
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_grants_its_burst_then_one_token_per_interval() {
        let start = Instant::now();
        let mut b = Bucket::new(
            RateLimit {
                qps: 10.0,
                burst: 3,
            },
            start,
        );
        for _ in 0..3 {
            assert_eq!(b.take(start), Ok(()));
        }
        let wait = b.take(start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert_eq!(b.take(start + Duration::from_millis(100)), Ok(()));
        assert!(b.take(start + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn an_idle_bucket_refills_only_up_to_its_burst() {
        let start = Instant::now();
        let mut b = Bucket::new(
            RateLimit {
                qps: 100.0,
                burst: 2,
            },
            start,
        );
        let later = start + Duration::from_secs(60);
        assert_eq!(b.take(later), Ok(()));
        assert_eq!(b.take(later), Ok(()));
        assert!(b.take(later).is_err());
    }
}
