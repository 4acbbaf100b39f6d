//! The real Cassandra SSTables and commit logs in `shared/fixtures/cassandra-sstables` (never
//! copied into the repository).

use std::path::PathBuf;

/// `$CASSETTE_FIXTURES/cassandra-sstables`, else `<workspace>/../shared/fixtures/cassandra-sstables`.
/// `None`, with a visible message, when absent; a panic instead when `CASSETTE_REQUIRE_FIXTURES=1`.
pub fn cassandra_sstables() -> Option<PathBuf> {
    let root = std::env::var_os("CASSETTE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    let dir = root.join("cassandra-sstables");
    if dir.join("README.md").is_file() {
        return Some(dir);
    }
    let msg = format!(
        "SKIPPED: Cassandra fixture files not found at {} (set CASSETTE_FIXTURES to the shared/fixtures directory)",
        dir.display()
    );
    if std::env::var("CASSETTE_REQUIRE_FIXTURES").as_deref() == Ok("1") {
        panic!("{msg}; CASSETTE_REQUIRE_FIXTURES=1 makes this a failure");
    }
    // Straight to stderr: the test harness captures eprintln!, and a skip must be visible.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
    None
}

/// A fixture SSTable as `dir/prefix` (e.g. `.../nb/legacy_tables/legacy_nb_simple/nb-1-big`).
pub fn sstable(version: &str, table: &str) -> Option<PathBuf> {
    let format = if version == "da" { "bti" } else { "big" };
    Some(cassandra_sstables()?.join(format!("legacy-sstables/{version}/legacy_tables/{table}/{version}-1-{format}")))
}

#[cfg(test)]
mod tests {
    /// - CI (`.ci/run`) turns a missing fixture directory into a failure, as it does for a missing
    ///   emulator: a fixture test that cannot find its files must not pass by skipping.
    #[test]
    fn ci_requires_fixtures_and_emulators() {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/run");
        let text = std::fs::read_to_string(&script).unwrap_or_else(|e| panic!("read {}: {e}", script.display()));
        let exported = |var: &str| text.lines().any(|l| l.trim() == format!("export {var}=1"));
        assert!(
            exported("CASSETTE_REQUIRE_EMULATORS"),
            "{} must export CASSETTE_REQUIRE_EMULATORS=1",
            script.display()
        );
        assert!(exported("CASSETTE_REQUIRE_FIXTURES"), "{} must export CASSETTE_REQUIRE_FIXTURES=1", script.display());
    }
}
