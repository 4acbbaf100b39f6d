//! The one shape of every background loop (garage's `Worker`): a name, a visible state, and a
//! shutdown signal. Loops never run detached without a handle: whoever starts one keeps the
//! [`WorkerHandle`], can read what it is doing, and stops it through the shared token.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// What a worker last reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkerStatus {
    /// The worker's name.
    pub name: String,
    /// Its last state line ("idle", "probing 6 agents", an error…).
    pub state: String,
    /// Iterations completed.
    pub iterations: u64,
    /// Whether it has stopped.
    pub stopped: bool,
}

/// The state cell a worker writes into.
#[derive(Debug, Clone)]
pub struct WorkerState(Arc<Mutex<WorkerStatus>>);

impl WorkerState {
    fn new(name: &str) -> Self {
        Self(Arc::new(Mutex::new(WorkerStatus {
            name: name.to_owned(),
            state: "starting".into(),
            ..Default::default()
        })))
    }

    /// Sets the state line.
    pub fn set(&self, state: impl Into<String>) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).state = state.into();
    }

    fn update(&self, f: impl FnOnce(&mut WorkerStatus)) {
        f(&mut self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// A copy of the status.
    pub fn get(&self) -> WorkerStatus {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    state: WorkerState,
    join: tokio::task::JoinHandle<()>,
}

impl WorkerHandle {
    /// What it is doing.
    pub fn status(&self) -> WorkerStatus {
        self.state.get()
    }

    /// Waits for it to finish (after its shutdown token was cancelled).
    pub async fn join(self) {
        let _ = self.join.await;
    }

    /// Aborts it (for callers that cannot wait).
    pub fn abort(&self) {
        self.join.abort();
    }
}

/// Runs `step` every `interval` (the first time at once) until `shutdown` is cancelled. A step
/// is never interrupted half-way: shutdown is observed between steps.
pub fn spawn_periodic<F, Fut>(name: &str, interval: Duration, shutdown: CancellationToken, mut step: F) -> WorkerHandle
where
    F: FnMut(WorkerState) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let state = WorkerState::new(name);
    let st = state.clone();
    let name = name.to_owned();
    let join = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            step(st.clone()).await;
            st.update(|s| s.iterations += 1);
        }
        tracing::debug!(worker = %name, "stopped");
        st.update(|s| {
            s.stopped = true;
            s.state = "stopped".into();
        });
    });
    WorkerHandle { state, join }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_until_shutdown_and_reports_state() {
        let token = CancellationToken::new();
        let h = spawn_periodic("t", Duration::from_millis(5), token.clone(), |s| async move { s.set("working") });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while h.status().iterations < 3 {
            assert!(std::time::Instant::now() < deadline, "worker did not run");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(h.status().state, "working");
        token.cancel();
        let state = h.state.clone();
        h.join().await;
        assert!(state.get().stopped);
    }
}
