//! The adapter's nodetool and cqlsh commands on real Cassandra 4.0, 4.1 and 5.0 nodes, normalized
//! (integration/src/fidelity.rs) and compared with the recordings committed under
//! `integration/fidelity/`: a real node that prints something else than its recording fails
//! here, and the emulator is held to the same recordings by `emulator_fidelity`.
//! `CASSETTE_RECORD_FIDELITY=1` writes the recordings instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cassette_integration::fidelity::{self, RealTarget};
use cassette_integration::real::{ClusterSpec, Install, RealCluster, Series};

fn record(series: Series) {
    let Some(install) = Install::require(series, "real_fidelity") else { return };
    let mut cluster = RealCluster::start_new(&install, &ClusterSpec::single("fidelity")).unwrap();
    let recs = fidelity::play(&mut RealTarget { cluster: &mut cluster });
    let text = fidelity::render(series.name(), &format!("recorded on {}", install.version), &recs);
    let path = fidelity::recording_path(series.name());
    if std::env::var("CASSETTE_RECORD_FIDELITY").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; record it with CASSETTE_RECORD_FIDELITY=1", path.display()));
    if let Some(d) = fidelity::compare(&committed, &text) {
        panic!("real Cassandra {} no longer prints what {} recorded:\n{d}", install.version, path.display());
    }
}

#[test]
fn t10_real_50_matches_its_recording() {
    record(Series::V50);
}

#[test]
fn t11_real_41_matches_its_recording() {
    record(Series::V41);
}

#[test]
fn t12_real_40_matches_its_recording() {
    record(Series::V40);
}
