//! The agent's Cassandra adapter (`NodetoolControl`) against the emulator's `nodetool` and
//! `cqlsh` binaries, through wrapper scripts, for every version.
//!
//! - identity, topology and directories for 3.11 (cassandra.yaml), 4.0, 4.1, 5.0 (settings table);
//! - snapshots with JBOD, native 2i, UUID ids, bti; TTL only where supported; clear;
//! - import (moves, failed directories), refresh, truncate (and truncate with a node down);
//! - failures: stopped node, nodetool errors, empty or noisy output, timeouts, bad credentials.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cassette_agent::cassandra::{
    CassandraControl, CassandraError, ClearSnapshotRequest, ClearTarget, DirectorySource, FlushRequest, ImportOptions,
    ImportRequest, Liveness, NodetoolControl, Retry, SnapshotRequest, SnapshotScope,
};
use cassette_common::datadir::FileKind;
use cassette_common::sstable::{SstableFormat, SstableId, SstableName};
use cassette_integration::emulator::{ClusterSpec, Version};
use cassette_integration::harness::EmulatedCluster;

const BIN: &str = env!("CARGO_BIN_EXE_cassandra-emulator");

fn cluster(spec: &ClusterSpec) -> EmulatedCluster {
    EmulatedCluster::create(BIN, spec).unwrap()
}

fn shop(c: &EmulatedCluster) {
    c.admin(&["create-keyspace", "shop"]).unwrap();
    c.admin(&["create-table", "shop.users", "--columns", "id int, email text", "--pk", "id"]).unwrap();
    c.admin(&["create-table", "shop.orders"]).unwrap();
}

/// An adapter for node 127.0.0.1; 3.11 gets the cassandra.yaml it needs for directories.
fn control(c: &EmulatedCluster) -> NodetoolControl {
    let mut cfg = c.cassandra_config("127.0.0.1");
    if c.cluster().unwrap().version == Version::V311 {
        cfg.cassandra_yaml = Some(c.write_cassandra_yaml("127.0.0.1").unwrap());
    }
    NodetoolControl::new(cfg).unwrap()
}

fn snapshot(tag: &str, scope: SnapshotScope) -> SnapshotRequest {
    SnapshotRequest { tag: tag.into(), scope, skip_flush: false, ttl: None }
}

#[tokio::test]
async fn t10_describe_node_for_every_version() {
    for v in Version::ALL {
        eprintln!("--- step {v:?}");
        let c = cluster(&ClusterSpec::single(v));
        let ctl = control(&c);
        let state = c.cluster().unwrap();
        let d = ctl.describe_node().await.unwrap();
        assert_eq!(d.host_id.as_str(), state.nodes[0].host_id);
        assert_eq!(
            (d.cluster_name.as_str(), d.datacenter.as_str(), d.rack.as_str()),
            ("Test Cluster", "datacenter1", "rack1")
        );
        assert_eq!(d.tokens, state.nodes[0].tokens);
        assert_eq!(d.tokens.len(), v.default_num_tokens());
        assert_eq!(d.release_version.raw, v.release());
        assert_eq!(d.schema_versions.len(), 1);
        assert_eq!(d.schema_versions[0].version, state.schema_version);
        assert_eq!(d.partitioner.as_deref(), Some("org.apache.cassandra.dht.Murmur3Partitioner"));
        assert!(d.gossip_active && d.native_transport_active);
        assert_eq!(d.directories.data, state.nodes[0].data_dirs);
        assert_eq!(d.directories.commitlog.as_ref(), Some(&state.nodes[0].commitlog_dir));
        let source = if v == Version::V311 { DirectorySource::CassandraYaml } else { DirectorySource::SettingsTable };
        assert_eq!(d.directories.source, source, "{v:?}");
        assert!(ctl.is_up().await.unwrap());
    }
}

#[tokio::test]
async fn t11_directories_without_a_source_fail_clearly_and_config_overrides() {
    let c = cluster(&ClusterSpec::single(Version::V311));
    let ctl = NodetoolControl::new(c.cassandra_config("127.0.0.1")).unwrap();
    let e = ctl.directories().await.unwrap_err();
    assert!(matches!(e, CassandraError::Directories { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("3.11.17 has no system_views.settings") && msg.contains("set cassandra_yaml"), "{msg}");

    // An explicit list wins and needs no cqlsh at all.
    let c = cluster(&ClusterSpec::single(Version::V41));
    let mut cfg = c.cassandra_config("127.0.0.1");
    cfg.cqlsh = PathBuf::from("/nonexistent/cqlsh");
    cfg.data_file_directories = vec![PathBuf::from("/srv/cassandra/data")];
    let ctl = NodetoolControl::new(cfg).unwrap();
    let d = ctl.directories().await.unwrap();
    assert_eq!((d.source, d.data.clone()), (DirectorySource::Config, vec![PathBuf::from("/srv/cassandra/data")]));

    // 4.0+ with a separate local system directory: reported, and walked for snapshots.
    let mut spec = ClusterSpec::single(Version::V40);
    spec.local_system_dir = true;
    let c = cluster(&spec);
    let d = control(&c).directories().await.unwrap();
    assert_eq!(d.local_system_data.as_ref(), c.cluster().unwrap().nodes[0].local_system_data_dir.as_ref());
    assert_eq!(d.all_data_roots().len(), 2);
}

#[tokio::test]
async fn t12_ring_across_two_datacenters_with_a_node_down() {
    let mut spec = ClusterSpec::single(Version::V41);
    spec.datacenters = vec![("dc1".into(), 2), ("dc2".into(), 1)];
    let c = cluster(&spec);
    shop(&c);
    c.admin(&["stop", "127.0.0.3"]).unwrap();
    let ring = control(&c).ring().await.unwrap();
    assert_eq!(ring.len(), 3);
    let state = c.cluster().unwrap();
    for (m, n) in ring.iter().zip(&state.nodes) {
        assert_eq!(
            (m.address.as_str(), m.datacenter.as_str(), m.rack.as_str()),
            (n.address.as_str(), n.datacenter.as_str(), n.rack.as_str())
        );
        assert_eq!(m.host_id.as_ref().unwrap().as_str(), n.host_id);
        assert_eq!(m.token_count, Some(16));
    }
    assert_eq!(ring[2].liveness, Liveness::Down);
    assert_eq!(ring[2].load, None);
    assert_eq!(ring[0].liveness, Liveness::Up);

    // The stopped node itself: not up, and operations fail as "node down" worth retrying later.
    let down = NodetoolControl::new(c.cassandra_config("127.0.0.3")).unwrap();
    assert!(!down.is_up().await.unwrap());
    let e = down.describe_node().await.unwrap_err();
    assert!(e.is_node_down(), "{e}");
    assert_eq!(e.retry(), Retry::Backoff);
    assert!(e.to_string().contains("127.0.0.3:7199"), "{e}");
}

#[tokio::test]
async fn t20_snapshot_list_and_clear_with_jbod_and_a_secondary_index() {
    let mut spec = ClusterSpec::single(Version::V41);
    spec.data_dirs = 3;
    let c = cluster(&spec);
    shop(&c);
    c.admin(&["create-index", "shop.users", "users_email", "email"]).unwrap();
    c.admin(&["write-sstables", "shop.users", "--count", "5"]).unwrap();
    c.admin(&["insert", "shop.users", "--rows", "10"]).unwrap();
    let ctl = control(&c);
    ctl.snapshot(&snapshot("b1", SnapshotScope::Keyspaces(vec!["shop".into()]))).await.unwrap();

    let snaps = ctl.list_snapshots(Some("b1")).await.unwrap();
    assert_eq!(snaps.len(), 1);
    let users = snaps[0].tables.iter().find(|t| t.table == "users").unwrap();
    let state = c.cluster().unwrap();
    let t = state.table("shop", "users").unwrap();
    assert_eq!(users.table_id.unwrap().to_uuid_string(), t.id);
    assert!(users.dirs.len() >= 2, "spread over the JBOD roots: {:?}", users.dirs);
    let manifest = users.manifest.as_ref().unwrap();
    assert_eq!(manifest.files.len(), 12, "6 SSTables (5 written + 1 flushed by the snapshot) and their index SSTables");
    assert!(manifest.created_at.is_some() && manifest.expires_at.is_none());
    assert!(users.schema_cql.as_ref().unwrap().contains(&format!("WITH ID = {}", t.id)));
    // Every manifest entry is a file of the snapshot; every SSTable file is a hard link to the live one.
    for f in &manifest.files {
        assert!(users.files.iter().any(|x| x.live_path().ends_with(&format!("/{f}"))), "{f} not found");
    }
    let roots = state.nodes[0].roots();
    let mut index_files = 0;
    for f in users.sstable_files() {
        let live = roots[f.data_root].join(f.live_path());
        let m = std::fs::metadata(&live).unwrap();
        assert_eq!(f.inode, (m.dev(), m.ino()), "{}", f.live_path());
        index_files += usize::from(f.index.as_deref() == Some("users_email"));
    }
    assert_eq!(index_files, 6 * 8);
    let orders = snaps[0].tables.iter().find(|t| t.table == "orders").unwrap();
    assert!(orders.manifest.as_ref().unwrap().files.is_empty(), "an empty table still gets a manifest");

    ctl.snapshot(&snapshot("b2", SnapshotScope::Tables(vec![("shop".into(), "orders".into())]))).await.unwrap();
    assert_eq!(ctl.list_snapshots(None).await.unwrap().len(), 2);
    let listed = ctl.listed_snapshots().await.unwrap();
    assert!(listed.iter().any(|r| r.tag == "b2" && r.table == "orders"));
    ctl.clear_snapshot(&ClearSnapshotRequest { target: ClearTarget::Tag("b1".into()), keyspaces: vec![] })
        .await
        .unwrap();
    let left = ctl.list_snapshots(None).await.unwrap();
    assert_eq!(left.iter().map(|s| s.tag.as_str()).collect::<Vec<_>>(), ["b2"]);

    // Same tag twice: a permanent error from Cassandra.
    let e =
        ctl.snapshot(&snapshot("b2", SnapshotScope::Tables(vec![("shop".into(), "orders".into())]))).await.unwrap_err();
    assert!(
        matches!(&e, CassandraError::CommandFailed { exit_code: 2, message, .. } if message == "Snapshot b2 already exists."),
        "{e}"
    );
    assert_eq!(e.retry(), Retry::Never);
    // Tags Cassandra cannot parse back are refused before calling it.
    let e = ctl.snapshot(&snapshot("a b", SnapshotScope::All)).await.unwrap_err();
    assert!(matches!(e, CassandraError::InvalidRequest { .. }), "{e}");
}

#[tokio::test]
async fn t21_ttl_only_from_41_and_all_keyspaces_includes_system_tables() {
    for v in [Version::V40, Version::V41] {
        let c = cluster(&ClusterSpec::single(v));
        shop(&c);
        let ctl = control(&c);
        let req = SnapshotRequest { ttl: Some(Duration::from_secs(3600)), ..snapshot("t", SnapshotScope::All) };
        let r = ctl.snapshot(&req).await;
        if v == Version::V40 {
            let e = r.unwrap_err();
            assert!(matches!(e, CassandraError::Unsupported { .. }), "{e}");
            assert!(e.to_string().contains("4.0.14"), "{e}");
            continue;
        }
        r.unwrap();
        let s = &ctl.list_snapshots(Some("t")).await.unwrap()[0];
        assert!(s.expires_at().is_some());
        let local = s.tables.iter().find(|t| t.keyspace == "system" && t.table == "local").unwrap();
        assert!(local.manifest.is_some() && local.schema_cql.is_none());
        let e = ctl
            .snapshot(&SnapshotRequest { ttl: Some(Duration::from_secs(5)), ..snapshot("u", SnapshotScope::All) })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("60 s"), "{e}");
    }
}

#[tokio::test]
async fn t22_uuid_ids_and_bti_sstables() {
    let mut spec = ClusterSpec::single(Version::V50);
    spec.bti = true;
    spec.uuid_sstable_ids = true;
    let c = cluster(&spec);
    shop(&c);
    c.admin(&["write-sstables", "shop.users", "--count", "3"]).unwrap();
    let ctl = control(&c);
    ctl.snapshot(&snapshot("u", SnapshotScope::Tables(vec![("shop".into(), "users".into())]))).await.unwrap();
    let snaps = ctl.list_snapshots(Some("u")).await.unwrap();
    let files: Vec<SstableName> = snaps[0].tables[0]
        .sstable_files()
        .map(|f| match &f.kind() {
            FileKind::Sstable(n) => n.clone(),
            k => panic!("{k:?}"),
        })
        .collect();
    assert_eq!(files.len(), 3 * 8);
    for n in &files {
        assert!(matches!(n.id, SstableId::Uuid(_)), "{n}");
        assert_eq!((n.format_kind(), n.version.as_str()), (Some(SstableFormat::Bti), "da"));
    }
    assert!(files.iter().any(|n| n.component == "Partitions.db"));
}

#[tokio::test]
async fn t23_flush_writes_memtables() {
    let c = cluster(&ClusterSpec::single(Version::V40));
    shop(&c);
    c.admin(&["insert", "shop.orders", "--rows", "100"]).unwrap();
    let ctl = control(&c);
    ctl.flush(&FlushRequest { keyspace: Some("shop".into()), tables: vec!["orders".into()] }).await.unwrap();
    let state = c.cluster().unwrap();
    assert!(state.nodes[0].live.keys().any(|k| k.starts_with("shop/orders-")));
    let e = ctl.flush(&FlushRequest { keyspace: Some("nope".into()), tables: vec![] }).await.unwrap_err();
    assert!(e.to_string().contains("Keyspace nope does not exist"), "{e}");
    let e = ctl.flush(&FlushRequest { keyspace: None, tables: vec!["orders".into()] }).await.unwrap_err();
    assert!(matches!(e, CassandraError::InvalidRequest { .. }));
}

#[tokio::test]
async fn t30_import_refresh_and_their_version_limits() {
    let c = cluster(&ClusterSpec::single(Version::V41));
    shop(&c);
    let ctl = control(&c);
    let good = c.root().join("restore/good");
    let bad = c.root().join("restore/bad");
    for (dir, digest_ok) in [(&good, true), (&bad, false)] {
        std::fs::create_dir_all(dir).unwrap();
        let n = SstableName::parse("nb-1-big-Data.db").unwrap();
        let spec = cassette_integration::emulator::files::GenSpec {
            data_size: 1000,
            seed: 3,
            min_timestamp: 1,
            max_timestamp: 2,
            partitioner: "org.apache.cassandra.dht.Murmur3Partitioner",
            extra_components: vec![],
        };
        cassette_integration::emulator::files::write_generated(dir, &n, &spec).unwrap();
        if !digest_ok {
            std::fs::write(dir.join("nb-1-big-Digest.crc32"), "1").unwrap();
        }
    }
    let req =
        |dirs: Vec<PathBuf>, options| ImportRequest { keyspace: "shop".into(), table: "users".into(), dirs, options };
    ctl.import(&req(vec![good.clone()], ImportOptions::default())).await.unwrap();
    assert_eq!(std::fs::read_dir(&good).unwrap().count(), 0, "moved");
    let e = ctl.import(&req(vec![bad.clone()], ImportOptions::default())).await.unwrap_err();
    match &e {
        CassandraError::ImportFailed { failed_dirs, .. } => assert_eq!(failed_dirs, &[bad.display().to_string()]),
        other => panic!("{other}"),
    }
    assert_eq!(e.retry(), Retry::Never);
    // --no-verify skips the digest check, as Cassandra does.
    ctl.import(&req(vec![bad.clone()], ImportOptions { no_verify: true, copy_data: true, ..Default::default() }))
        .await
        .unwrap();
    assert_eq!(std::fs::read_dir(&bad).unwrap().count(), 8, "copied, not moved");
    let e = ctl
        .import(&req(vec![bad.clone()], ImportOptions { require_index_components: true, ..Default::default() }))
        .await
        .unwrap_err();
    assert!(matches!(e, CassandraError::Unsupported { .. }), "{e}");
    ctl.refresh("shop", "users").await.unwrap();

    let old = cluster(&ClusterSpec::single(Version::V311));
    shop(&old);
    let e = control(&old).import(&req(vec![bad.clone()], ImportOptions::default())).await.unwrap_err();
    assert!(matches!(e, CassandraError::Unsupported { .. }), "{e}");
    control(&old).refresh("shop", "users").await.unwrap();

    let five = cluster(&ClusterSpec::single(Version::V50));
    shop(&five);
    let opts = ImportOptions {
        no_verify: true,
        copy_data: true,
        require_index_components: true,
        no_index_validation: true,
        ..Default::default()
    };
    control(&five).import(&req(vec![bad], opts)).await.unwrap();
}

#[tokio::test]
async fn t31_truncate_through_cqlsh() {
    let mut spec = ClusterSpec::single(Version::V41);
    spec.datacenters = vec![("dc1".into(), 2)];
    let c = cluster(&spec);
    shop(&c);
    c.admin(&["write-sstables", "shop.users", "--count", "2"]).unwrap();
    let ctl = control(&c);
    ctl.truncate("shop", "users").await.unwrap();
    let state = c.cluster().unwrap();
    for n in &state.nodes {
        assert!(n.live.iter().filter(|(k, _)| k.starts_with("shop/users-")).all(|(_, s)| s.is_empty()));
    }
    let snaps = ctl.list_snapshots(None).await.unwrap();
    assert!(snaps.iter().any(|s| s.tag.starts_with("truncated-") && s.tag.ends_with("-users")), "auto snapshot");

    c.admin(&["stop", "127.0.0.2"]).unwrap();
    let e = ctl.truncate("shop", "users").await.unwrap_err();
    assert!(matches!(&e, CassandraError::Cql { kind, .. } if kind == "Unavailable"), "{e}");
    assert_eq!(e.retry(), Retry::Backoff);
    let e = ctl.truncate("shop", "nope").await.unwrap_err();
    assert!(
        matches!(&e, CassandraError::Cql { kind, message, .. } if kind == "InvalidRequest" && message.contains("nope")),
        "{e}"
    );
    assert_eq!(e.retry(), Retry::Never);
}

#[tokio::test]
async fn t40_nodetool_failures_become_typed_errors() {
    let c = cluster(&ClusterSpec::single(Version::V41));
    shop(&c);
    let ctl = control(&c);
    c.admin(&[
        "fault",
        "127.0.0.1",
        "--fail",
        "snapshot:2:error: Cannot snapshot until bootstrap completes\n-- StackTrace --\njava.io.IOException",
    ])
    .unwrap();
    let e = ctl.snapshot(&snapshot("x", SnapshotScope::All)).await.unwrap_err();
    assert!(
        matches!(&e, CassandraError::CommandFailed { message, .. } if message == "Cannot snapshot until bootstrap completes"),
        "{e}"
    );
    assert_eq!(e.retry(), Retry::Backoff);

    // Exit 0 but nothing that matters: a clear parse error, not a guess.
    c.admin(&["fault", "127.0.0.1", "--clear", "--fail", "info:0:"]).unwrap();
    let e = ctl.describe_node().await.unwrap_err();
    assert!(matches!(&e, CassandraError::Parse { reason, .. } if reason.contains("'ID'")), "{e}");

    c.admin(&["fault", "127.0.0.1", "--clear", "--fail", "flush:1:nodetool: Found unexpected parameters: [x]"])
        .unwrap();
    let e = ctl.flush(&FlushRequest::default()).await.unwrap_err();
    assert!(matches!(e, CassandraError::Usage { .. }), "{e}");

    c.admin(&["fault", "127.0.0.1", "--clear", "--fail", "status:137:"]).unwrap();
    let e = ctl.ring().await.unwrap_err();
    assert!(matches!(e, CassandraError::CommandFailed { exit_code: 137, .. }), "{e}");
}

#[tokio::test]
async fn t41_noisy_output_still_parses() {
    let mut spec = ClusterSpec::single(Version::V50);
    spec.datacenters = vec![("dc1".into(), 2)];
    let c = cluster(&spec);
    shop(&c);
    c.admin(&["fault", "127.0.0.1", "--noisy"]).unwrap();
    let ctl = control(&c);
    let d = ctl.describe_node().await.unwrap();
    assert_eq!(d.tokens.len(), 16);
    assert_eq!(ctl.ring().await.unwrap().len(), 2);
    ctl.snapshot(&snapshot("n", SnapshotScope::All)).await.unwrap();
    assert!(ctl.listed_snapshots().await.unwrap().iter().any(|r| r.tag == "n"));
}

#[tokio::test]
async fn t42_timeouts_kill_the_tool() {
    let c = cluster(&ClusterSpec::single(Version::V41));
    c.admin(&["fault", "127.0.0.1", "--delay", "status:5000"]).unwrap();
    let mut cfg = c.cassandra_config("127.0.0.1");
    cfg.command_timeout = Duration::from_secs(1);
    let ctl = NodetoolControl::new(cfg).unwrap();
    let start = Instant::now();
    let e = ctl.ring().await.unwrap_err();
    assert!(matches!(e, CassandraError::Timeout { setting: "command_timeout", .. }), "{e}");
    assert!(start.elapsed() < Duration::from_secs(4));
    assert_eq!(e.retry(), Retry::Backoff);
    // The killed emulator must not hold the state lock for long: the next command works.
    c.admin(&["fault", "127.0.0.1", "--clear"]).unwrap();
    ctl.ring().await.unwrap();
}

#[tokio::test]
async fn t43_credentials_from_files() {
    let mut spec = ClusterSpec::single(Version::V41);
    spec.jmx_credentials = Some(("operator".into(), "jmx-secret".into()));
    spec.cql_credentials = Some(("cassandra".into(), "cql-secret".into()));
    let c = cluster(&spec);
    let secrets = c.root().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let jmx = secrets.join("jmxremote.password");
    std::fs::write(&jmx, "operator jmx-secret\n").unwrap();
    let cql = secrets.join("cql.properties");
    std::fs::write(&cql, "username=cassandra\npassword=cql-secret\n").unwrap();
    let mut cfg = c.cassandra_config("127.0.0.1");
    cfg.jmx_password_file = Some(jmx.clone());
    cfg.cql_credentials_file = Some(cql.clone());
    let d = NodetoolControl::new(cfg.clone()).unwrap().describe_node().await.unwrap();
    assert_eq!(d.directories.source, DirectorySource::SettingsTable);

    let mut no_creds = c.cassandra_config("127.0.0.1");
    no_creds.cql_credentials_file = Some(cql.clone());
    let e = NodetoolControl::new(no_creds).unwrap().ring().await.unwrap_err();
    assert!(matches!(&e, CassandraError::AuthFailed { detail, .. } if detail.contains("Credentials required")), "{e}");
    assert_eq!(e.retry(), Retry::Never);

    std::fs::write(&jmx, "operator wrong\n").unwrap();
    let e = NodetoolControl::new(cfg.clone()).unwrap().ring().await.unwrap_err();
    assert!(e.to_string().contains("jmx_username and jmx_password_file"), "{e}");
    std::fs::write(&jmx, "operator jmx-secret\n").unwrap();
    std::fs::write(&cql, "username=cassandra\npassword=wrong\n").unwrap();
    let e = NodetoolControl::new(cfg).unwrap().directories().await.unwrap_err();
    assert!(e.to_string().contains("cql_credentials_file"), "{e}");

    std::fs::write(&cql, "user=cassandra\n").unwrap();
    let mut bad = c.cassandra_config("127.0.0.1");
    bad.cql_credentials_file = Some(cql);
    let e = NodetoolControl::new(bad).unwrap_err();
    assert!(e.to_string().contains("must hold 'username=' and 'password='"), "{e}");
}

#[tokio::test]
async fn t44_clear_all_on_311_and_41() {
    for v in [Version::V311, Version::V41] {
        let c = cluster(&ClusterSpec::single(v));
        shop(&c);
        let ctl = control(&c);
        for t in ["a", "b"] {
            ctl.snapshot(&snapshot(t, SnapshotScope::Keyspaces(vec!["shop".into()]))).await.unwrap();
        }
        ctl.clear_snapshot(&ClearSnapshotRequest { target: ClearTarget::All, keyspaces: vec!["shop".into()] })
            .await
            .unwrap();
        assert!(ctl.list_snapshots(None).await.unwrap().is_empty(), "{v:?}");
        let e = ctl
            .clear_snapshot(&ClearSnapshotRequest {
                target: ClearTarget::OlderThan(Duration::from_secs(60)),
                keyspaces: vec![],
            })
            .await
            .unwrap_err();
        assert!(matches!(e, CassandraError::Unsupported { .. }), "{e}");
    }
}

#[tokio::test]
async fn t24_snapshots_of_real_sstables_verify_with_the_file_model() {
    use cassette_common::sstable::digest::verify_data_file;
    use cassette_common::sstable::statistics::Statistics;
    use cassette_common::sstable::toc::Toc;
    for (v, bti, fixture) in
        [(Version::V41, false, ("nb", "legacy_nb_clust")), (Version::V50, true, ("da", "legacy_da_clust"))]
    {
        let Some(src) = cassette_integration::fixtures::sstable(fixture.0, fixture.1) else { return };
        let mut spec = ClusterSpec::single(v);
        spec.bti = bti;
        spec.data_dirs = 2;
        let c = cluster(&spec);
        shop(&c);
        c.admin(&[
            "write-sstables",
            "shop.users",
            "--count",
            "2",
            "--fixture",
            src.to_str().unwrap(),
            "--min-timestamp",
            "1700000000000000",
            "--max-timestamp",
            "1700000060000000",
        ])
        .unwrap();
        let ctl = control(&c);
        ctl.snapshot(&snapshot("real", SnapshotScope::Tables(vec![("shop".into(), "users".into())]))).await.unwrap();
        let snaps = ctl.list_snapshots(Some("real")).await.unwrap();
        let table = &snaps[0].tables[0];
        let mut checked = 0;
        for f in table.sstable_files() {
            let FileKind::Sstable(name) = &f.kind() else { unreachable!() };
            if name.component != "Data.db" {
                continue;
            }
            let dir = f.path.parent().unwrap();
            verify_data_file(&dir.join(name.sibling("Digest.crc32")), &f.path).unwrap();
            let toc = Toc::read(&dir.join(name.sibling("TOC.txt"))).unwrap();
            assert!(toc.missing_in(dir, &name.sstable_prefix()).is_empty(), "complete in the snapshot");
            let s = Statistics::read(&dir.join(name.sibling("Statistics.db"))).unwrap();
            assert_eq!((s.min_timestamp, s.max_timestamp), (1_700_000_000_000_000, 1_700_000_060_000_000));
            assert_eq!(s.partitioner, "org.apache.cassandra.dht.ByteOrderedPartitioner");
            assert_eq!(name.version, fixture.0);
            checked += 1;
        }
        assert_eq!(checked, 2, "{v:?}");
    }
}

#[tokio::test]
async fn t50_thousands_of_sstables_stay_fast() {
    // A scaled-down benchmark shape (the emulator does 10,000 the same way): every step linear.
    let mut spec = ClusterSpec::single(Version::V41);
    spec.data_dirs = 4;
    spec.incremental_backups = true;
    let c = cluster(&spec);
    shop(&c);
    let start = Instant::now();
    c.admin(&["write-sstables", "shop.users", "--count", "1000", "--size", "256"]).unwrap();
    let ctl = control(&c);
    ctl.snapshot(&snapshot("big", SnapshotScope::Keyspaces(vec!["shop".into()]))).await.unwrap();
    let snaps = ctl.list_snapshots(Some("big")).await.unwrap();
    let users = snaps[0].tables.iter().find(|t| t.table == "users").unwrap();
    assert_eq!(users.sstable_files().count(), 1000 * 8);
    assert_eq!(users.manifest.as_ref().unwrap().files.len(), 1000);
    assert_eq!(users.dirs.len(), 4);
    let elapsed = start.elapsed();
    eprintln!("1,000 SSTables written, snapshotted and listed in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
}
