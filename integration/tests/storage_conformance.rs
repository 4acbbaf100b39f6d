//! Storage conformance on every backend the tests can start: a directory, s3s-fs (strict S3),
//! moto (a second S3 implementation) and Azurite. The scenario is `cassette_integration::conformance`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use cassette_integration::conformance::{run_suite, transfer_config};
use cassette_integration::servers::{Backend, StorageServer};

fn run(backend: Backend, test: &str) {
    cassette_integration::init_test_logging();
    let Some(server) = StorageServer::start(backend, test).unwrap() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run_suite(server.backend.name(), &|prefix| server.repository(prefix, &transfer_config())));
}

#[test]
fn t10_conformance_local_directory() {
    run(Backend::Local, "t10_conformance_local_directory");
}

#[test]
fn t11_conformance_s3s_fs() {
    run(Backend::S3sFs, "t11_conformance_s3s_fs");
}

#[test]
fn t12_conformance_moto() {
    run(Backend::Moto, "t12_conformance_moto");
}

#[test]
fn t13_conformance_azurite() {
    run(Backend::Azurite, "t13_conformance_azurite");
}
