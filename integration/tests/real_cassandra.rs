//! The adapter against a real Cassandra node: a 4.1 node the harness starts, or, with
//! `CASSETTE_REAL_CASSANDRA` set, an existing node (e.g. an operator's test node):
//!
//! Variables read:
//! - `CASSETTE_REAL_CASSANDRA`: anything non-empty uses the node they describe.
//! - `CASSETTE_NODETOOL`, `CASSETTE_CQLSH`: the tools (default `nodetool`, `cqlsh` from `PATH`).
//! - `CASSETTE_CASSANDRA_HOST`: JMX and CQL host (default `127.0.0.1`).
//! - `CASSETTE_JMX_PORT` (default 7199), `CASSETTE_CQL_PORT` (default 9042).
//! - `CASSETTE_JMX_PASSWORD_FILE`: nodetool `-pwf` file (`<user> <password>` lines), if JMX auth is on.
//! - `CASSETTE_CQL_CREDENTIALS_FILE`: `username=`/`password=` properties file, if CQL auth is on.
//! - `CASSETTE_CASSANDRA_YAML`: the node's cassandra.yaml (needed for 3.11 to find the data directories).
//!
//! The suite creates keyspace `cassette_realtest` (SimpleStrategy, RF 1), snapshots it, lists and
//! clears the snapshot, truncates its table and drops nothing else. Point it at a test node.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::path::PathBuf;
use std::process::Command;

use cassette_agent::cassandra::{
    CassandraConfig, CassandraControl, ClearSnapshotRequest, ClearTarget, FlushRequest, NodetoolControl,
    SnapshotRequest, SnapshotScope,
};
use cassette_integration::real::{ClusterSpec, Install, RealCluster, Series};

/// The node: the one `CASSETTE_REAL_CASSANDRA` points at, or else a real 4.1 node started by the
/// harness (`RealCluster`; a loud skip, or a failure in CI, when it is not installed).
fn config() -> Option<(CassandraConfig, Option<RealCluster>)> {
    if std::env::var("CASSETTE_REAL_CASSANDRA").map(|v| v.is_empty()).unwrap_or(true) {
        let install = Install::require(Series::V41, "real_cassandra")?;
        let cluster = RealCluster::start_new(&install, &ClusterSpec::single("adapter")).unwrap();
        return Some((cluster.cassandra_config(0), Some(cluster)));
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let host = var("CASSETTE_CASSANDRA_HOST").unwrap_or_else(|| "127.0.0.1".into());
    Some((
        CassandraConfig {
            nodetool: var("CASSETTE_NODETOOL").map(PathBuf::from).unwrap_or_else(|| "nodetool".into()),
            cqlsh: var("CASSETTE_CQLSH").map(PathBuf::from).unwrap_or_else(|| "cqlsh".into()),
            jmx_host: host.clone(),
            cql_host: host,
            jmx_port: var("CASSETTE_JMX_PORT").map(|p| p.parse().unwrap()).unwrap_or(7199),
            cql_port: var("CASSETTE_CQL_PORT").map(|p| p.parse().unwrap()).unwrap_or(9042),
            jmx_password_file: var("CASSETTE_JMX_PASSWORD_FILE").map(PathBuf::from),
            cql_credentials_file: var("CASSETTE_CQL_CREDENTIALS_FILE").map(PathBuf::from),
            cassandra_yaml: var("CASSETTE_CASSANDRA_YAML").map(PathBuf::from),
            ..CassandraConfig::default()
        },
        None,
    ))
}

fn cql(cfg: &CassandraConfig, stmt: &str) {
    let out = Command::new(&cfg.cqlsh)
        .args([cfg.cql_host.clone(), cfg.cql_port.to_string(), "-e".into(), stmt.into()])
        .output()
        .unwrap();
    assert!(out.status.success(), "cqlsh -e {stmt:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn real_node_identity_topology_and_snapshot_cycle() {
    let Some((cfg, _cluster)) = config() else { return };
    eprintln!("--- step describe");
    let ctl = NodetoolControl::new(cfg.clone()).unwrap();
    let d = ctl.describe_node().await.unwrap();
    eprintln!(
        "{} {} {}/{} tokens={} dirs={:?}",
        d.release_version,
        d.host_id,
        d.datacenter,
        d.rack,
        d.tokens.len(),
        d.directories
    );
    assert!(!d.tokens.is_empty());
    assert!(!d.directories.data.is_empty());
    let ring = ctl.ring().await.unwrap();
    assert!(ring.iter().any(|m| m.host_id.as_ref() == Some(&d.host_id)));
    assert!(ctl.is_up().await.unwrap());

    eprintln!("--- step schema");
    if cfg.cql_credentials_file.is_none() {
        cql(
            &cfg,
            "CREATE KEYSPACE IF NOT EXISTS cassette_realtest WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1};",
        );
        cql(&cfg, "CREATE TABLE IF NOT EXISTS cassette_realtest.t (id int PRIMARY KEY, v text);");
        cql(&cfg, "INSERT INTO cassette_realtest.t (id, v) VALUES (1, 'one');");
    } else {
        eprintln!("(CQL auth on: expecting keyspace cassette_realtest with table t to exist)");
    }
    ctl.flush(&FlushRequest { keyspace: Some("cassette_realtest".into()), tables: vec![] }).await.unwrap();

    eprintln!("--- step snapshot");
    let tag = format!("cassette-realtest-{}", std::process::id());
    ctl.snapshot(&SnapshotRequest {
        tag: tag.clone(),
        scope: SnapshotScope::Keyspaces(vec!["cassette_realtest".into()]),
        skip_flush: false,
        ttl: None,
    })
    .await
    .unwrap();
    let snaps = ctl.list_snapshots(Some(&tag)).await.unwrap();
    assert_eq!(snaps.len(), 1);
    let t = snaps[0].tables.iter().find(|t| t.table == "t").unwrap();
    assert!(t.manifest.is_some());
    if d.release_version.supports_import() {
        assert!(t.schema_cql.as_ref().unwrap().contains("WITH ID"));
    }
    assert!(ctl.listed_snapshots().await.unwrap().iter().any(|r| r.tag == tag));
    ctl.clear_snapshot(&ClearSnapshotRequest {
        target: ClearTarget::Tag(tag.clone()),
        keyspaces: vec!["cassette_realtest".into()],
    })
    .await
    .unwrap();
    assert!(ctl.list_snapshots(Some(&tag)).await.unwrap().is_empty());

    eprintln!("--- step truncate");
    ctl.truncate("cassette_realtest", "t").await.unwrap();
}
