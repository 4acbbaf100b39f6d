//! Lock objects: what keeps a removal from deleting a blob that a running backup is about to
//! reference (the rule is documented in `docs/layout.md`, "Removal and running backups").
//!
//! A running backup holds a *backup* lock and a running removal a *remove* lock, each an object
//! `locks/<id>.json` that its holder rewrites every `refresh`. Freshness is judged only with the
//! storage's clock: a lock is fresh when its last-modified time is within `stale_after` of the
//! last-modified time of the reader's own lock, written just before — so clocks of different
//! hosts never matter.
//!
//! - A removal writes its lock, then lists the locks: if any other fresh lock exists, it deletes
//!   its own and gives up, having changed nothing.
//! - A backup writes its lock, then lists the locks: while a fresh remove lock exists it waits
//!   (rewriting its own), up to `wait`.
//!
//! Whoever lists second sees the other's lock (the stores Cassette supports list
//! read-after-write consistently), so a removal and a backup never both proceed. A holder that
//! could not rewrite its lock for `stale_after / 2` knows others may now ignore it: a removal
//! stops deleting; a backup re-checks every blob it will reference before writing its manifest.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cassette_common::layout;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::storage::{Repository, Retry, StoreError};

/// Lock timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockConfig {
    /// How often a running backup or removal rewrites its lock object.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// A lock not rewritten for this long (by the storage's clock) belongs to a process that died
    /// or hangs, and is ignored. Must be well above `refresh`.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// How long a backup waits for a running removal to finish before it gives up.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// How often a waiting backup looks again.
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
}

impl Default for LockConfig {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(30),
            stale_after: Duration::from_secs(300),
            wait: Duration::from_secs(3600),
            poll: Duration::from_secs(5),
        }
    }
}

impl LockConfig {
    /// Every problem, one line each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut p = Vec::new();
        if self.refresh.is_zero() || self.poll.is_zero() {
            p.push("locks.refresh and locks.poll must be greater than zero".to_owned());
        }
        if self.stale_after < self.refresh * 4 {
            p.push(format!(
                "locks.stale_after ({:?}) must be at least 4 times locks.refresh ({:?}), so a missed rewrite or two does not make a lock stale",
                self.stale_after, self.refresh
            ));
        }
        if p.is_empty() { Ok(()) } else { Err(p) }
    }

    /// How long a holder may go without rewriting its lock before others may ignore it, with a
    /// safety margin: half of `stale_after`.
    pub fn safe_window(&self) -> Duration {
        self.stale_after / 2
    }
}

/// What a lock protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    /// A backup: blobs it checked may be referenced by its manifest (shared with other backups).
    Backup,
    /// A removal: it may delete blobs (exclusive).
    Remove,
}

/// The content of a lock object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Schema version of this document.
    pub format: u32,
    /// The lock id (the key is `locks/<id>.json`).
    pub id: String,
    /// Backup or removal.
    pub kind: LockKind,
    /// Host of the holder.
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// Program (`cassette-agent 0.1.0`).
    pub program: String,
    /// What the holder does, for messages ("backup 20261123T…-3fa9c2d1 of node … in cluster …").
    pub operation: String,
    /// When the lock was taken (holder's clock; informational).
    pub created_at: DateTime<Utc>,
}

/// Another holder's lock, as seen by a reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeenLock {
    /// The key.
    pub key: String,
    /// Its content, when readable.
    pub info: Option<LockInfo>,
    /// Last rewritten (storage clock).
    pub last_modified: DateTime<Utc>,
    /// How long before the reader's own lock was written.
    pub age: Duration,
    /// Whether it is still fresh.
    pub fresh: bool,
}

impl std::fmt::Display for SeenLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.info {
            Some(i) => write!(
                f,
                "{} on {} (pid {}), lock {} rewritten {}s ago",
                i.operation,
                i.host,
                i.pid,
                self.key,
                self.age.as_secs()
            ),
            None => write!(f, "lock {} rewritten {}s ago", self.key, self.age.as_secs()),
        }
    }
}

/// Why a lock could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A removal found other operations running.
    #[error(
        "another operation is using the repository at {location}: {}; nothing was removed: try again when it has finished",
        holders.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Busy {
        /// The location.
        location: String,
        /// The fresh locks found.
        holders: Vec<SeenLock>,
    },
    /// A backup waited too long for a removal.
    #[error(
        "a removal has been running in {location} for longer than the {waited:?} this backup waits: {}; try again later, or raise locks.wait",
        holders.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    RemovalRunning {
        /// The location.
        location: String,
        /// How long the backup waited.
        waited: Duration,
        /// The removal locks found.
        holders: Vec<SeenLock>,
    },
    /// The holder could not rewrite its lock in time: others may have taken it as stale.
    #[error(
        "lock {key} in {location} could not be rewritten for {since:?} (others ignore it after {stale_after:?}): stopped before doing anything unsafe; check the connection to the storage and run again"
    )]
    Lapsed {
        /// The lock's key.
        key: String,
        /// The location.
        location: String,
        /// Time since the last successful rewrite.
        since: Duration,
        /// The stale timeout.
        stale_after: Duration,
    },
    /// The operation was cancelled while waiting.
    #[error("cancelled while waiting for lock {key}")]
    Cancelled {
        /// The lock's key.
        key: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LockError {
    /// Whether a retry makes sense.
    pub fn retry(&self) -> Retry {
        match self {
            LockError::Busy { .. } | LockError::RemovalRunning { .. } | LockError::Lapsed { .. } => Retry::Backoff,
            LockError::Cancelled { .. } => Retry::Never,
            LockError::Store(e) => e.retry(),
        }
    }
}

#[derive(Debug)]
struct Health {
    /// Start of the last successful write of the lock object.
    last_ok: Instant,
    /// Longest time between two successful writes (start to start) so far.
    max_gap: Duration,
}

/// A lock held in a repository. Rewritten in the background until [`RepoLock::release`]; a lock
/// dropped without release stops being rewritten and goes stale.
#[derive(Debug)]
pub struct RepoLock {
    repo: Repository,
    key: String,
    info: LockInfo,
    cfg: LockConfig,
    /// Last-modified of the first write as the first listing showed it (the storage's clock):
    /// the reference time for the removal's grace period.
    acquired_at: DateTime<Utc>,
    health: Arc<Mutex<Health>>,
    stop: tokio_util::sync::CancellationToken,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock_id(kind: LockKind) -> String {
    let k = match kind {
        LockKind::Backup => "backup",
        LockKind::Remove => "remove",
    };
    format!("{k}-{}-{:08x}", Utc::now().format("%Y%m%dT%H%M%S"), rand::random::<u32>())
}

impl RepoLock {
    /// Takes a lock of `kind` for `operation` (see the module documentation for who waits and who
    /// gives up).
    pub async fn acquire(
        repo: &Repository,
        kind: LockKind,
        operation: String,
        cfg: &LockConfig,
        cancel: &tokio_util::sync::CancellationToken,
        on_wait: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<RepoLock, LockError> {
        let id = lock_id(kind);
        let key = layout::lock_key(&id);
        let info = LockInfo {
            format: 1,
            id,
            kind,
            host: super::hostname(),
            pid: std::process::id(),
            program: cassette_common::build_id("cassette-agent"),
            operation,
            created_at: Utc::now(),
        };
        let body = serde_json::to_vec_pretty(&info).unwrap_or_default();
        let started = Instant::now();
        let mine = write(repo, &key, &body).await?;
        let mut lock = RepoLock {
            repo: repo.clone(),
            key,
            info,
            cfg: cfg.clone(),
            acquired_at: mine.last_modified,
            health: Arc::new(Mutex::new(Health { last_ok: started, max_gap: Duration::ZERO })),
            stop: tokio_util::sync::CancellationToken::new(),
            refresher: None,
        };
        let waited_since = Instant::now();
        let mut said = false;
        let mut first = true;
        loop {
            let (now, others) = lock.others_and_now().await?;
            if first {
                lock.acquired_at = now;
                first = false;
            }
            let blocking: Vec<SeenLock> = others
                .into_iter()
                .filter(|l| l.fresh)
                .filter(|l| match kind {
                    LockKind::Remove => true,
                    LockKind::Backup => l.info.as_ref().is_none_or(|i| i.kind == LockKind::Remove),
                })
                .collect();
            if blocking.is_empty() {
                break;
            }
            match kind {
                LockKind::Remove => {
                    lock.delete().await;
                    return Err(LockError::Busy { location: repo.location().to_string(), holders: blocking });
                }
                LockKind::Backup => {
                    if waited_since.elapsed() >= cfg.wait {
                        lock.delete().await;
                        return Err(LockError::RemovalRunning {
                            location: repo.location().to_string(),
                            waited: cfg.wait,
                            holders: blocking,
                        });
                    }
                    if !said {
                        on_wait(&format!(
                            "waiting for a removal to finish before backing up: {}",
                            blocking.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
                        ));
                        said = true;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => {
                            lock.delete().await;
                            return Err(LockError::Cancelled { key: lock.key.clone() });
                        }
                        _ = tokio::time::sleep(cfg.poll) => {}
                    }
                    lock.refresh_now().await?;
                }
            }
        }
        lock.start_refresher();
        Ok(lock)
    }

    /// The lock's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lock's content.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// When the lock was first written, by the storage's clock.
    pub fn acquired_at(&self) -> DateTime<Utc> {
        self.acquired_at
    }

    /// Time since the last successful rewrite.
    pub fn since_last_refresh(&self) -> Duration {
        self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner).last_ok.elapsed()
    }

    /// Whether others may have taken this lock as stale at some point since it was taken: the
    /// holder went longer than half the stale timeout without a successful rewrite.
    pub fn lapsed(&self) -> bool {
        let h = self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        h.max_gap.max(h.last_ok.elapsed()) > self.cfg.safe_window()
    }

    /// Fails unless the lock was rewritten recently enough that nobody can take it as stale for
    /// a while yet. A removal calls this before every batch of deletions.
    pub fn ensure_fresh(&self) -> Result<(), LockError> {
        let since = self.since_last_refresh();
        if since > self.cfg.safe_window() {
            return Err(LockError::Lapsed {
                key: self.key.clone(),
                location: self.repo.location().to_string(),
                since,
                stale_after: self.cfg.stale_after,
            });
        }
        Ok(())
    }

    /// Rewrites the lock now (also resets [`RepoLock::lapsed`] for the future, not the past).
    pub async fn refresh_now(&self) -> Result<(), LockError> {
        refresh(&self.repo, &self.key, &self.info, &self.health).await
    }

    /// Every other lock in the repository, with its freshness relative to ours.
    pub async fn others(&self) -> Result<Vec<SeenLock>, LockError> {
        Ok(self.others_and_now().await?.1)
    }

    /// The last-modified time of our lock as the listing shows it (the reference "now" of the
    /// storage's clock, with the listing's precision: HEAD answers in whole seconds on S3, a
    /// listing in milliseconds), and every other lock judged against it.
    async fn others_and_now(&self) -> Result<(DateTime<Utc>, Vec<SeenLock>), LockError> {
        let metas = self.repo.list(layout::LOCKS_PREFIX).await?;
        // Our own lock missing (a removal broke it as stale): judge by this host's clock.
        let now =
            metas.iter().find(|m| m.location.as_ref() == self.key).map(|m| m.last_modified).unwrap_or_else(Utc::now);
        let others =
            judge(&self.repo, &self.cfg, now, metas.into_iter().filter(|m| m.location.as_ref() != self.key).collect())
                .await;
        Ok((now, others))
    }

    fn start_refresher(&mut self) {
        let (repo, key, info, health, stop, every) = (
            self.repo.clone(),
            self.key.clone(),
            self.info.clone(),
            Arc::clone(&self.health),
            self.stop.clone(),
            self.cfg.refresh,
        );
        self.refresher = Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = refresh(&repo, &key, &info, &health).await {
                    tracing::warn!(%key, error = %e, "could not rewrite the lock; will try again");
                }
            }
        }));
    }

    async fn delete(&self) {
        if let Err(e) = self.repo.store().delete(&ObjectPath::from(self.key.as_str())).await {
            tracing::warn!(key = %self.key, error = %e, "could not delete the lock; it goes stale on its own");
        }
    }

    /// Stops rewriting the lock and deletes it.
    pub async fn release(mut self) {
        self.stop.cancel();
        if let Some(h) = self.refresher.take() {
            let _ = h.await;
        }
        self.delete().await;
    }
}

async fn write(repo: &Repository, key: &str, body: &[u8]) -> Result<ObjectMeta, StoreError> {
    let path = ObjectPath::from(key);
    repo.store()
        .put(&path, PutPayload::from(body.to_vec()))
        .await
        .map_err(|e| StoreError::remote("write lock", key, &repo.location().to_string(), e))?;
    repo.store().head(&path).await.map_err(|e| StoreError::remote("read lock", key, &repo.location().to_string(), e))
}

async fn refresh(repo: &Repository, key: &str, info: &LockInfo, health: &Mutex<Health>) -> Result<(), LockError> {
    let started = Instant::now();
    let body = serde_json::to_vec_pretty(info).unwrap_or_default();
    repo.store()
        .put(&ObjectPath::from(key), PutPayload::from(body))
        .await
        .map_err(|e| StoreError::remote("rewrite lock", key, &repo.location().to_string(), e))?;
    let mut h = health.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let gap = started.saturating_duration_since(h.last_ok);
    h.max_gap = h.max_gap.max(gap);
    h.last_ok = started;
    Ok(())
}

/// Every lock in the repository except `except`, judged against `now` (a storage timestamp).
pub async fn list_locks(
    repo: &Repository,
    cfg: &LockConfig,
    now: DateTime<Utc>,
    except: Option<&str>,
) -> Result<Vec<SeenLock>, LockError> {
    let metas = repo.list(layout::LOCKS_PREFIX).await?;
    let metas: Vec<ObjectMeta> = metas.into_iter().filter(|m| Some(m.location.as_ref()) != except).collect();
    Ok(judge(repo, cfg, now, metas).await)
}

async fn judge(repo: &Repository, cfg: &LockConfig, now: DateTime<Utc>, metas: Vec<ObjectMeta>) -> Vec<SeenLock> {
    futures::stream::iter(metas)
        .map(|m| async move {
            let key = m.location.to_string();
            let info = repo.get_json::<LockInfo>(&key, 64 << 10).await.ok();
            let age = (now - m.last_modified).to_std().unwrap_or(Duration::ZERO);
            SeenLock { key, info, last_modified: m.last_modified, age, fresh: age < cfg.stale_after }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
}
