//! Phases that only take time: for tests of the job framework and the coordinator, and for the
//! coordinator-at-scale benchmark (many in-process agents whose phases last a configurable time).
//! `cassette-agent serve --enable-test-phases` registers them; production agents do not.
//!
//! Parameters (JSON): `duration_ms` (default 100), `steps` (progress steps, default 10),
//! `fail` (a message: fail at the end with it), `fail_retry` (`never`, `now`, `backoff`).

use std::sync::Arc;
use std::time::Duration;

use super::{JobContext, PhaseError, PhaseRunner, RetryClass};

/// A phase that sleeps for `duration_ms` in `steps` steps, reporting progress.
#[derive(Debug, Clone)]
pub struct SleepPhase {
    name: &'static str,
    resumable: bool,
}

impl SleepPhase {
    /// `synthetic.sleep`: resumable.
    pub fn resumable() -> Self {
        Self { name: "synthetic.sleep", resumable: true }
    }

    /// `synthetic.sleep-once`: not resumable (fails when the agent restarts under it).
    pub fn once() -> Self {
        Self { name: "synthetic.sleep-once", resumable: false }
    }
}

/// Every synthetic phase.
pub fn all() -> Vec<Arc<dyn PhaseRunner>> {
    vec![Arc::new(SleepPhase::resumable()), Arc::new(SleepPhase::once())]
}

#[async_trait::async_trait]
impl PhaseRunner for SleepPhase {
    fn name(&self) -> &str {
        self.name
    }

    fn resumable(&self) -> bool {
        self.resumable
    }

    async fn run(&self, ctx: JobContext) -> Result<serde_json::Value, PhaseError> {
        let p = &ctx.params;
        let duration = Duration::from_millis(p.get("duration_ms").and_then(|v| v.as_u64()).unwrap_or(100));
        let steps = p.get("steps").and_then(|v| v.as_u64()).unwrap_or(10).max(1);
        for i in 0..steps {
            ctx.progress().set(i, steps, format!("step {}/{steps}", i + 1));
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(PhaseError::cancelled()),
                _ = tokio::time::sleep(duration / steps as u32) => {}
            }
        }
        ctx.progress().set(steps, steps, "done");
        if let Some(msg) = p.get("fail").and_then(|v| v.as_str()) {
            let retry = match p.get("fail_retry").and_then(|v| v.as_str()) {
                Some("never") => RetryClass::Never,
                Some("now") => RetryClass::Now,
                _ => RetryClass::Backoff,
            };
            return Err(PhaseError::new(format!("synthetic failure of job {}: {msg}", ctx.job_id), retry));
        }
        Ok(serde_json::json!({ "steps": steps, "attempt": ctx.attempt, "slept_ms": duration.as_millis() as u64 }))
    }
}
