//! The storage engine: moves bytes between a node's disk and object storage, content-addressed
//! and verified.
//!
//! # Layout
//! - [`config`]: client and transfer settings.
//! - [`backend`]: builds the `object_store` client for S3, Azure, GCS or a directory from a
//!   location, the settings and the standard environment.
//! - [`repo`]: [`Repository`], the remote layout (marker, blobs, create-only documents).
//! - [`engine`]: [`TransferEngine`], deduplicated uploads and verified downloads.
//! - [`limits`]: the shared bandwidth limit (an `ObjectStore` decorator) and memory budget.
//! - [`retry`]: backoff with jitter; [`error`]: errors that say whether to retry.
//! - [`progress`]: counters and the injected progress sink.

pub mod backend;
pub mod config;
pub mod engine;
pub mod error;
pub mod limits;
pub mod progress;
pub mod repo;
pub mod retry;

pub use backend::Environment;
pub use config::{StorageConfig, TransferConfig};
pub use engine::TransferEngine;
pub use error::{Retry, StoreError};
pub use progress::{NoProgress, ProgressSink, TransferStats};
pub use repo::Repository;
