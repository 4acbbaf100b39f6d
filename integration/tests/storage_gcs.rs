//! The storage conformance scenario against real Google Cloud Storage. No GCS emulator speaks the
//! XML API object_store uses, so this runs only when credentials are given:
//!
//! - `CASSETTE_TEST_GCS_BUCKET`: an existing bucket the credentials can write to;
//! - credentials as for the agent: `GOOGLE_APPLICATION_CREDENTIALS` (or `GOOGLE_SERVICE_ACCOUNT_PATH`,
//!   or the metadata server).
//!
//! Each run writes under a fresh prefix `cassette-test-<random>/` and deletes it afterwards.
//! GCS client configuration is also covered offline by the unit tests in `agent/src/storage/backend.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use cassette_agent::storage::{Environment, Repository, StorageConfig};
use cassette_integration::conformance::{run_suite, transfer_config};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;

#[test]
fn t30_conformance_real_gcs() {
    let Ok(bucket) = std::env::var("CASSETTE_TEST_GCS_BUCKET") else {
        eprintln!("SKIPPED t30_conformance_real_gcs: set CASSETTE_TEST_GCS_BUCKET (and GCS credentials) to run it");
        return;
    };
    cassette_integration::init_test_logging();
    let root = format!("cassette-test-{:08x}", rand::random::<u32>());
    let env = Environment::capture();
    let repo_at = |prefix: &str| -> Repository {
        let loc = format!("gs://{bucket}/{root}/{prefix}").parse().unwrap();
        Repository::connect(&loc, &StorageConfig::default(), &transfer_config(), &env).unwrap()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        run_suite("gcs", &repo_at).await;
        // Clean up everything this run wrote.
        let whole = repo_at("");
        let keys: Vec<_> = whole.store().list(None).map_ok(|m| m.location).try_collect().await.unwrap();
        for k in keys {
            whole.store().delete(&k).await.unwrap();
        }
    });
}
