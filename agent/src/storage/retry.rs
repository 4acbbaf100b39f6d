//! Retries with exponential backoff and full jitter.
//!
//! Two layers retry: the HTTP client retries single requests (`StorageConfig::http_retries`),
//! and this module retries whole operations (a file upload, a ranged read, a multipart part)
//! according to [`StoreError::retry`]. Permanent errors fail at once.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;

use super::config::TransferConfig;
use super::error::{Retry, StoreError};

/// Backoff parameters, taken from [`TransferConfig`].
#[derive(Debug, Clone)]
pub struct BackoffPolicy {
    /// Attempts in total (the first try included).
    pub max_attempts: u32,
    /// First delay ceiling.
    pub initial: Duration,
    /// Largest delay ceiling.
    pub max: Duration,
    /// Retries performed, for progress reports.
    pub retries: Arc<AtomicU64>,
}

impl BackoffPolicy {
    /// The policy configured in `cfg`.
    pub fn from_config(cfg: &TransferConfig) -> Self {
        Self {
            max_attempts: cfg.max_attempts,
            initial: cfg.initial_backoff,
            max: cfg.max_backoff,
            retries: Arc::default(),
        }
    }

    /// Delay before attempt `attempt + 1` (attempt counts from 1): uniformly random in
    /// `[0, min(max, initial * 2^(attempt-1))]` ("full jitter"), so that many clients that failed
    /// together do not retry together.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let ceiling = exp.min(self.max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }

    /// Runs `op` until it succeeds, fails permanently, or runs out of attempts.
    /// `what` describes the operation for the log.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 1;
        loop {
            match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let retry = e.retry();
                    if retry == Retry::Never || attempt >= self.max_attempts {
                        if retry != Retry::Never {
                            tracing::warn!(%what, attempts = attempt, error = %e, "giving up after the last attempt");
                        }
                        return Err(e);
                    }
                    let delay = if retry == Retry::Now { Duration::ZERO } else { self.delay(attempt) };
                    tracing::warn!(%what, attempt, ?delay, error = %e, "transient failure, retrying");
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// Retry policy for multipart parts, called by object_store after its own request retries are
/// exhausted: server errors, throttling and transport failures are retried with backoff; other
/// client errors are not.
#[derive(Debug)]
pub struct PartRetryPolicy(pub BackoffPolicy);

#[async_trait]
impl object_store::retry::RetryPolicy for PartRetryPolicy {
    async fn retry(&self, ctx: object_store::retry::RetryContext) -> bool {
        use object_store::retry::RetryFailure;
        let transient = match ctx.failure {
            RetryFailure::Status(s) => s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429,
            RetryFailure::Transport(_) => true,
            _ => false,
        };
        let attempt = u32::try_from(ctx.attempt).unwrap_or(u32::MAX);
        if !transient || attempt >= self.0.max_attempts {
            return false;
        }
        self.0.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.0.delay(attempt)).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::atomic::AtomicU32;

    fn policy(attempts: u32) -> BackoffPolicy {
        BackoffPolicy {
            max_attempts: attempts,
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
            retries: Arc::default(),
        }
    }

    fn transient() -> StoreError {
        StoreError::remote(
            "put",
            "k",
            "s3://bkt",
            object_store::Error::Generic { store: "S3", source: Box::new(io::Error::other("503")) },
        )
    }

    #[test]
    fn delay_is_jittered_below_an_exponential_ceiling() {
        let p = BackoffPolicy { max: Duration::from_secs(1), initial: Duration::from_millis(100), ..policy(5) };
        for attempt in 1..10 {
            let ceiling = Duration::from_millis(100 * (1 << (attempt - 1))).min(Duration::from_secs(1));
            for _ in 0..50 {
                assert!(p.delay(attempt) <= ceiling);
            }
        }
        let distinct: std::collections::HashSet<_> = (0..20).map(|_| p.delay(3)).collect();
        assert!(distinct.len() > 1, "delays must be randomized");
    }

    #[tokio::test]
    async fn retries_transient_errors_until_success() {
        let p = policy(5);
        let calls = AtomicU32::new(0);
        let out = p
            .run("test", |attempt| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move { if attempt < 3 { Err(transient()) } else { Ok(attempt) } }
            })
            .await
            .unwrap();
        assert_eq!(out, 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(p.retries.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn stops_at_the_attempt_limit_and_on_permanent_errors() {
        let p = policy(3);
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = p
            .run("test", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(transient()) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = p
            .run("test", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(StoreError::local("open", "/x", io::Error::from(io::ErrorKind::NotFound))) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a permanent error is not retried");
    }
}
