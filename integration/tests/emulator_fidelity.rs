//! Fidelity suite: the emulator's output and files against the samples and rules in
//! `shared/research/cassandra-internals.md`, for every version.
//!
//! - byte-exact samples: `nodetool status` (4.0+), `nodetool info` lines, `listsnapshots` (4.0 doc
//!   sample), `manifest.json` per version, snapshot/clearsnapshot messages, version lines;
//! - rules: tag validation per version, clearsnapshot `--all`/`-t` rules, TTL (4.1+), ephemeral
//!   snapshots (5.0 field vs older marker), exit codes, the stopped-node error;
//! - on-disk behaviour: hard links per data root, manifest/schema in one root, schema.cql
//!   indentation and `WITH ID`, import renames, compaction keeping snapshot links.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cassette_common::datadir::{self, KeyspaceClass};
use cassette_integration::emulator::{ClusterSpec, Version, ops};
use cassette_integration::harness::EmulatedCluster;

const BIN: &str = env!("CARGO_BIN_EXE_cassandra-emulator");
const HOST: &str = "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3";

fn cluster(spec: &ClusterSpec) -> EmulatedCluster {
    EmulatedCluster::create(BIN, spec).unwrap()
}

fn with_table(v: Version) -> EmulatedCluster {
    let c = cluster(&ClusterSpec::single(v));
    c.admin(&["create-keyspace", "shop"]).unwrap();
    c.admin(&["create-table", "shop.users", "--columns", "id int, name text", "--pk", "id"]).unwrap();
    c
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
    }
    out.sort();
    out
}

/// Pads the first live Data.db of `shop.users` on node 0 so the node's load is exactly `bytes`.
fn pad_load_to(c: &EmulatedCluster, bytes: u64) {
    let state = c.cluster().unwrap();
    let load = ops::load(&state, 0);
    assert!(load <= bytes, "load {load} already above {bytes}");
    let n = &state.nodes[0];
    let (store, set) = n.live.iter().find(|(k, _)| k.starts_with("shop/")).unwrap();
    let l = set.iter().next().unwrap();
    let data = n.roots()[l.root].join(store).join(format!("{}-Data.db", l.prefix));
    let f = std::fs::OpenOptions::new().append(true).open(&data).unwrap();
    f.set_len(std::fs::metadata(&data).unwrap().len() + (bytes - load)).unwrap();
}

#[test]
fn t10_status_matches_the_research_sample_for_40_41_50() {
    // Research §3.2, 4.0+ example, byte for byte.
    let sample = "Datacenter: datacenter1
=======================
Status=Up/Down
|/ State=Normal/Leaving/Joining/Moving
--  Address    Load       Tokens  Owns (effective)  Host ID                               Rack 
UN  127.0.0.1  104.5 KiB  16      100.0%            1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3  rack1

";
    for v in [Version::V40, Version::V41, Version::V50] {
        eprintln!("--- step {v:?}");
        let c = with_table(v);
        c.admin(&["write-sstables", "shop.users", "--size", "1000"]).unwrap();
        c.state()
            .update(|s| {
                s.nodes[0].host_id = HOST.into();
                Ok(())
            })
            .unwrap();
        pad_load_to(&c, 107_008); // 104.5 KiB
        let out = c.nodetool(&["status"]);
        assert_eq!((out.code, out.stdout.as_str(), out.stderr.as_str()), (0, sample, ""), "{v:?}");
    }
}

#[test]
fn t11_status_311_layout() {
    // Research §3.2: 3.11 printf layout; the header of the research notes has a 7-character address column.
    let c = with_table(Version::V311);
    c.state()
        .update(|s| {
            s.nodes[0].address = "1.2.3.4".into();
            s.nodes[0].host_id = HOST.into();
            Ok(())
        })
        .unwrap();
    let out = c.nodetool(&["-h", "1.2.3.4", "status"]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "Datacenter: datacenter1");
    assert_eq!(lines[1], "=".repeat(23));
    assert_eq!(
        lines[4],
        "--  Address  Load       Tokens       Owns (effective)  Host ID                               Rack"
    );
    let row = lines[5];
    assert!(row.starts_with("UN  1.2.3.4  "), "{row}");
    assert!(row.contains("  256          100.0%            1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3  rack1"), "{row}");
}

#[test]
fn t12_info_keys_and_format_per_version() {
    let common_head = ["ID", "Gossip active"];
    for v in Version::ALL {
        let c = with_table(v);
        c.state()
            .update(|s| {
                s.nodes[0].host_id = HOST.into();
                Ok(())
            })
            .unwrap();
        let out = c.nodetool(&["info"]);
        assert_eq!(out.code, 0);
        assert!(out.stdout.starts_with(&format!("ID                     : {HOST}\n")), "{v:?}: {}", out.stdout);
        let keys: Vec<&str> = out.stdout.lines().map(|l| l.split(':').next().unwrap().trim_end()).collect();
        assert_eq!(&keys[..2], common_head);
        let mut expected = vec!["ID", "Gossip active"];
        if v == Version::V311 {
            expected.push("Thrift active");
        }
        expected.extend(["Native Transport active", "Load"]);
        if v == Version::V50 {
            expected.push("Uncompressed load");
        }
        expected.extend([
            "Generation No",
            "Uptime (seconds)",
            "Heap Memory (MB)",
            "Off Heap Memory (MB)",
            "Data Center",
            "Rack",
            "Exceptions",
            "Key Cache",
            "Row Cache",
            "Counter Cache",
        ]);
        // Real 4.0.19/4.1.10/5.0.9 with default settings print no Chunk Cache (integration/fidelity/).
        if v == Version::V311 {
            expected.push("Chunk Cache");
        }
        if v >= Version::V40 {
            expected.push("Network Cache");
        }
        expected.extend(["Percent Repaired", "Token"]);
        if v == Version::V50 {
            expected.extend(["Bootstrap state", "Bootstrap failed", "Decommissioning", "Decommission failed"]);
        }
        assert_eq!(keys, expected, "{v:?}");
        let n = v.default_num_tokens();
        assert!(
            out.stdout.contains(&format!("Token                  : (invoke with -T/--tokens to see all {n} tokens)\n"))
        );
        let all = c.nodetool(&["info", "-T"]);
        assert_eq!(all.stdout.lines().filter(|l| l.starts_with("Token  ")).count(), n);
    }
}

#[test]
fn t13_version_and_describecluster() {
    for (v, release) in
        [(Version::V311, "3.11.17"), (Version::V40, "4.0.14"), (Version::V41, "4.1.7"), (Version::V50, "5.0.1")]
    {
        let c = cluster(&ClusterSpec::single(v));
        assert_eq!(c.nodetool(&["version"]).stdout, format!("ReleaseVersion: {release}\n"));
        let verbose = c.nodetool(&["version", "-v"]);
        if v == Version::V50 {
            assert!(verbose.stdout.starts_with("ReleaseVersion: 5.0.1\nGitSHA: "));
        } else {
            assert_eq!(verbose.code, 1, "-v is 5.0+");
        }
        let d = c.nodetool(&["describecluster"]).stdout;
        let schema = c.cluster().unwrap().schema_version;
        let head = format!(
            "Cluster Information:\n\tName: Test Cluster\n\tSnitch: org.apache.cassandra.locator.SimpleSnitch\n\tDynamicEndPointSnitch: enabled\n\tPartitioner: org.apache.cassandra.dht.Murmur3Partitioner\n\tSchema versions:\n\t\t{schema}: [127.0.0.1]\n\n"
        );
        assert!(d.starts_with(&head), "{v:?}: {d}");
        assert_eq!(d.contains("Stats for all nodes:"), v >= Version::V40);
    }
}

#[test]
fn t20_snapshot_messages_and_hard_links_per_root() {
    let mut spec = ClusterSpec::single(Version::V41);
    spec.data_dirs = 3;
    let c = cluster(&spec);
    c.admin(&["create-keyspace", "shop"]).unwrap();
    c.admin(&["create-keyspace", "audit"]).unwrap();
    c.admin(&["create-table", "shop.users", "--columns", "id int, email text", "--pk", "id"]).unwrap();
    c.admin(&["create-table", "shop.orders"]).unwrap();
    c.admin(&["create-table", "audit.log"]).unwrap();
    c.admin(&["create-index", "shop.users", "users_email", "email"]).unwrap();
    c.admin(&["write-sstables", "shop.users", "--count", "4"]).unwrap();

    let out = c.nodetool(&["snapshot", "-t", "s1", "shop", "audit"]);
    assert_eq!(
        out.stdout,
        "Requested creating snapshot(s) for [shop, audit] with snapshot name [s1] and options {skipFlush=false}\nSnapshot directory: s1\n"
    );
    let out = c.nodetool(&["snapshot", "-t", "s2", "-kt", "shop.users,audit.log"]);
    assert_eq!(
        out.stdout,
        "Requested creating snapshot(s) for [shop.users,audit.log] with snapshot name [s2] and options {skipFlush=false}\nSnapshot directory: s2\n"
    );
    let out = c.nodetool(&["snapshot", "-t", "s3", "--ttl", "1h", "-sf"]);
    assert_eq!(
        out.stdout,
        "Requested creating snapshot(s) for [all keyspaces] with snapshot name [s3] and options {skipFlush=true, ttl=1h}\nSnapshot directory: s3\n"
    );
    let again = c.nodetool(&["snapshot", "-t", "s1", "shop"]);
    assert_eq!(again.code, 2);
    assert!(again.stderr.starts_with("error: Snapshot s1 already exists.\n-- StackTrace --\n"), "{}", again.stderr);

    // Every live component has a hard link in its own root's snapshots/s1, index ones under .<idx>.
    let state = c.cluster().unwrap();
    let node = &state.nodes[0];
    let t = state.table("shop", "users").unwrap();
    let tdir = t.dir_name("users");
    let mut roots_with_files = 0;
    let mut manifests = 0;
    for root in &node.data_dirs {
        let live = root.join("shop").join(&tdir);
        let snap = live.join("snapshots/s1");
        for f in files_under(&snap) {
            let name = f.file_name().unwrap().to_str().unwrap();
            match datadir::FileKind::of(name) {
                datadir::FileKind::Sstable(_) => {
                    let rel = f.strip_prefix(&snap).unwrap();
                    let live_file = live.join(rel);
                    assert_eq!(std::fs::metadata(&f).unwrap().ino(), std::fs::metadata(&live_file).unwrap().ino());
                }
                datadir::FileKind::SnapshotManifest => manifests += 1,
                _ => {}
            }
        }
        if files_under(&snap).iter().any(|f| f.to_str().unwrap().ends_with("-Data.db")) {
            roots_with_files += 1;
        }
    }
    assert_eq!(manifests, 1, "manifest.json lives in exactly one root");
    assert!(roots_with_files >= 2, "4 SSTables round-robin over 3 roots");
    // System keyspaces: manifest yes, schema.cql no.
    let local = state.table("system", "local").unwrap().dir_name("local");
    let sys = node.data_dirs[0].join("system").join(local).join("snapshots/s3");
    assert!(sys.join("manifest.json").is_file());
    assert!(!sys.join("schema.cql").exists());
    assert_eq!(KeyspaceClass::of("system"), KeyspaceClass::LocalSystem);
}

#[test]
fn t21_tag_validation_and_ttl_per_version() {
    for v in Version::ALL {
        let c = with_table(v);
        let colon = c.nodetool(&["snapshot", "-t", "a:b", "shop"]);
        assert_eq!(colon.code == 0, v != Version::V40, "{v:?}: ':' rejected by 4.0 only ({colon:?})");
        let slash = c.nodetool(&["snapshot", "-t", "a/b", "shop"]);
        if v >= Version::V41 {
            assert_eq!(slash.code, 2);
            assert!(slash.stderr.contains("Snapshot name cannot contain /"));
        }
        let ttl = c.nodetool(&["snapshot", "-t", "ttl", "--ttl", "2h", "shop"]);
        if v >= Version::V41 {
            assert_eq!(ttl.code, 0, "{ttl:?}");
            let short = c.nodetool(&["snapshot", "-t", "short", "--ttl", "30s", "shop"]);
            assert_eq!(short.code, 2);
        } else {
            assert_eq!(ttl.code, 1, "{v:?}: --ttl is 4.1+");
            assert!(ttl.stdout.starts_with(
                "nodetool: Found unexpected parameters: [--ttl]\nSee 'nodetool help' or 'nodetool help <command>'.\n"
            ));
        }
        let none = c.nodetool(&["snapshot", "-t", "", "shop"]);
        assert!(none.code != 0);
    }
}

#[test]
fn t22_ttl_snapshots_expire_on_41() {
    let c = with_table(Version::V41);
    c.admin(&["write-sstables", "shop.users"]).unwrap();
    assert_eq!(c.nodetool(&["snapshot", "-t", "short", "--ttl", "1m", "shop"]).code, 0);
    assert_eq!(c.nodetool(&["snapshot", "-t", "keep", "shop"]).code, 0);
    let list = c.nodetool(&["listsnapshots", "-nt"]).stdout;
    assert!(list.contains("keep") && !list.contains("short"), "-nt hides TTL snapshots: {list}");
    c.admin(&["advance-clock", "61"]).unwrap();
    let list = c.nodetool(&["listsnapshots"]).stdout;
    assert!(list.contains("keep") && !list.contains("short"), "{list}");
}

#[test]
fn t23_manifest_bytes_per_version() {
    for v in Version::ALL {
        let c = with_table(v);
        c.admin(&["write-sstables", "shop.users", "--count", "2"]).unwrap();
        let ttl: &[&str] = if v >= Version::V41 { &["--ttl", "1h"] } else { &[] };
        let mut args = vec!["snapshot", "-t", "m"];
        args.extend(ttl);
        args.push("shop");
        assert_eq!(c.nodetool(&args).code, 0);
        let state = c.cluster().unwrap();
        let tdir = state.table("shop", "users").unwrap().dir_name("users");
        let m = state.nodes[0].data_dirs[0].join("shop").join(tdir).join("snapshots/m/manifest.json");
        let bytes = std::fs::read_to_string(&m).unwrap();
        let prefix = if v == Version::V311 { "me" } else { "nb" };
        let files = format!("\"{prefix}-1-big-Data.db\",\"{prefix}-2-big-Data.db\"");
        match v {
            Version::V311 | Version::V40 => assert_eq!(bytes, format!("{{\"files\":[{files}]}}\n")),
            Version::V41 => {
                let j: serde_json::Value = serde_json::from_str(&bytes).unwrap();
                let created = j["created_at"].as_str().unwrap();
                let expires = j["expires_at"].as_str().unwrap();
                assert_eq!(
                    bytes,
                    format!("{{\"files\":[{files}],\"created_at\":\"{created}\",\"expires_at\":\"{expires}\"}}")
                );
                let (c, e) = (
                    chrono::DateTime::parse_from_rfc3339(created).unwrap(),
                    chrono::DateTime::parse_from_rfc3339(expires).unwrap(),
                );
                assert_eq!((e - c).num_seconds(), 3600);
            }
            Version::V50 => {
                let j: serde_json::Value = serde_json::from_str(&bytes).unwrap();
                let created = j["created_at"].as_str().unwrap();
                let expires = j["expires_at"].as_str().unwrap();
                assert_eq!(
                    bytes,
                    format!(
                        "{{\n  \"files\" : [ \"nb-1-big-Data.db\", \"nb-2-big-Data.db\" ],\n  \"created_at\" : \"{created}\",\n  \"expires_at\" : \"{expires}\",\n  \"ephemeral\" : false\n}}"
                    )
                );
            }
        }
    }
}

#[test]
fn t24_schema_cql_indentation_and_id() {
    for v in Version::ALL {
        let c = cluster(&ClusterSpec::single(v));
        c.admin(&["create-keyspace", "ks"]).unwrap();
        let id = "6e4e2f30-7cbb-11ee-9858-c9aa1eb53e69";
        c.admin(&[
            "create-table",
            "ks.t",
            "--columns",
            "pk1 varint, ck1 varint, reg1 ascii",
            "--pk",
            "pk1",
            "--ck",
            "ck1",
            "--id",
            id,
        ])
        .unwrap();
        assert_eq!(c.nodetool(&["snapshot", "-t", "s", "ks"]).code, 0);
        let dir = c.cluster().unwrap().nodes[0].data_dirs[0].join("ks/t-6e4e2f307cbb11ee9858c9aa1eb53e69/snapshots/s");
        let cql = std::fs::read_to_string(dir.join("schema.cql")).unwrap();
        if v == Version::V311 {
            assert!(cql.starts_with(&format!(
                "CREATE TABLE IF NOT EXISTS ks.t (\n\tpk1 varint,\n\tck1 varint,\n\treg1 ascii,\n\tPRIMARY KEY (pk1, ck1))\n\tWITH ID = {id}\n\tAND CLUSTERING ORDER BY (ck1 ASC)\n"
            )), "{cql}");
        } else {
            assert!(cql.starts_with(&format!(
                "CREATE TABLE IF NOT EXISTS ks.t (\n    pk1 varint,\n    ck1 varint,\n    reg1 ascii,\n    PRIMARY KEY (pk1, ck1)\n) WITH ID = {id}\n    AND CLUSTERING ORDER BY (ck1 ASC)\n    AND additional_write_policy = '99p'\n"
            )), "{cql}");
        }
        assert!(cql.trim_end().ends_with(';'));
    }
}

#[test]
fn t30_listsnapshots_reproduces_the_40_doc_sample() {
    use cassette_integration::emulator::nodetool::render_snapshot_details;
    let sample = "Snapshot Details: \nSnapshot name Keyspace name   Column family name True size Size on disk\nmulti-table   cqlkeyspace     t2                 4.86 KiB  5.67 KiB    \ncatalog-ks    catalogkeyspace journal            4.9 KiB   5.73 KiB    \n\nTotal TrueDiskSpaceUsed: 44.02 KiB\n\n";
    let row = |tag: &str, ks: &str, t: &str, true_size, size_on_disk| ops::SnapshotRow {
        tag: tag.into(),
        keyspace: ks.into(),
        table: t.into(),
        true_size,
        size_on_disk,
        created_ms: None,
        expires_ms: None,
        ephemeral: false,
    };
    let rows = [
        row("multi-table", "cqlkeyspace", "t2", 4977, 5806),
        row("catalog-ks", "catalogkeyspace", "journal", 5018, 5868),
    ];
    assert_eq!(render_snapshot_details(Version::V40, &rows, 45_076, false), sample);
    assert_eq!(render_snapshot_details(Version::V40, &[], 0, false), "Snapshot Details: \nThere are no snapshots\n");
}

#[test]
fn t31_listsnapshots_sizes_and_columns_per_version() {
    for v in Version::ALL {
        let c = with_table(v);
        c.admin(&["write-sstables", "shop.users", "--size", "5000"]).unwrap();
        assert_eq!(c.nodetool(&["snapshot", "-t", "b1", "shop"]).code, 0);
        // Compaction replaces the live SSTable: the snapshot's links become its true size.
        c.admin(&["write-sstables", "shop.users", "--size", "10"]).unwrap();
        c.admin(&["compact", "shop.users"]).unwrap();
        let out = c.nodetool(&["listsnapshots"]).stdout;
        let header = out.lines().nth(1).unwrap();
        assert_eq!(header.contains("Creation time"), v >= Version::V41, "{v:?}: {header}");
        assert!(!header.contains("Ephemeral"));
        let state = c.cluster().unwrap();
        let tdir = state.table("shop", "users").unwrap().dir_name("users");
        let snap = state.nodes[0].data_dirs[0].join("shop").join(&tdir).join("snapshots/b1");
        let all: u64 = files_under(&snap).iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
        let meta: u64 =
            ["manifest.json", "schema.cql"].iter().map(|f| std::fs::metadata(snap.join(f)).unwrap().len()).sum();
        let true_size = if v >= Version::V41 { all } else { all - meta };
        let row = out.lines().nth(2).unwrap();
        let expected_sizes = format!(
            "{:<9} {:<12}",
            cassette_integration::emulator::format::file_size(true_size),
            cassette_integration::emulator::format::file_size(all)
        );
        assert!(row.contains(&expected_sizes), "{v:?}: {row:?} lacks {expected_sizes:?}");
    }
}

#[test]
fn t32_ephemeral_snapshots_50_field_vs_marker() {
    for v in [Version::V41, Version::V50] {
        let c = with_table(v);
        c.admin(&["write-sstables", "shop.users"]).unwrap();
        c.admin(&["ephemeral-snapshot", "127.0.0.1", "repair-1", "shop.users"]).unwrap();
        let state = c.cluster().unwrap();
        let tdir = state.table("shop", "users").unwrap().dir_name("users");
        let snap = state.nodes[0].data_dirs[0].join("shop").join(&tdir).join("snapshots/repair-1");
        let manifest = std::fs::read_to_string(snap.join("manifest.json")).unwrap();
        if v == Version::V50 {
            assert!(manifest.contains("\"ephemeral\" : true"));
            assert!(!snap.join("ephemeral.snapshot").exists());
            assert!(c.nodetool(&["listsnapshots"]).stdout.contains("There are no snapshots"));
            let e = c.nodetool(&["listsnapshots", "-e"]).stdout;
            assert!(e.lines().nth(1).unwrap().ends_with("Ephemeral"), "{e}");
            assert!(e.contains("true"));
            // clearsnapshot --all keeps ephemeral snapshots in 5.0.
            assert_eq!(c.nodetool(&["clearsnapshot", "--all"]).code, 0);
            assert!(snap.exists());
        } else {
            assert!(snap.join("ephemeral.snapshot").is_file());
        }
        // Ephemeral snapshots are deleted at startup.
        c.admin(&["stop", "127.0.0.1"]).unwrap();
        c.admin(&["start", "127.0.0.1"]).unwrap();
        assert!(!snap.exists(), "{v:?}");
    }
}

#[test]
fn t33_clearsnapshot_rules_per_version() {
    for v in Version::ALL {
        let c = with_table(v);
        for tag in ["a", "b", "c"] {
            assert_eq!(c.nodetool(&["snapshot", "-t", tag, "shop"]).code, 0);
        }
        let bare = c.nodetool(&["clearsnapshot"]);
        if v == Version::V311 {
            assert_eq!(bare.stdout, "Requested clearing snapshot(s) for [all keyspaces]\n");
            assert!(c.nodetool(&["listsnapshots"]).stdout.contains("There are no snapshots"));
            continue;
        }
        if v == Version::V50 {
            // A usage error on 5.0 (recorded on 5.0.9), an error of the command on 4.x.
            assert_eq!((bare.code, bare.stdout.lines().next()), (1, Some("nodetool: Specify snapshot name or --all")));
        } else {
            assert_eq!(bare.code, 2);
            assert!(bare.stderr.starts_with("error: Specify snapshot name or --all\n"));
        }
        let both = c.nodetool(&["clearsnapshot", "-t", "a", "--all"]);
        assert!(both.stderr.starts_with("error: Specify only one of snapshot name or --all\n"));
        let one = c.nodetool(&["clearsnapshot", "-t", "a", "shop"]);
        assert_eq!(one.stdout, "Requested clearing snapshot(s) for [shop] with snapshot name [a]\n");
        let list = c.nodetool(&["listsnapshots"]).stdout;
        assert!(!list.contains("\na ") && list.contains("\nb "), "{list}");
        if v == Version::V50 {
            c.admin(&["advance-clock", "7200"]).unwrap();
            let older = c.nodetool(&["clearsnapshot", "--older-than", "1h"]);
            assert_eq!(older.stdout, "Requested clearing snapshot(s) for [all keyspaces] older than 3600 seconds.\n");
            assert!(c.nodetool(&["listsnapshots"]).stdout.contains("There are no snapshots"));
        } else {
            let all = c.nodetool(&["clearsnapshot", "--all"]);
            assert_eq!(all.stdout, "Requested clearing snapshot(s) for [all keyspaces] with [all snapshots]\n");
            assert!(c.nodetool(&["listsnapshots"]).stdout.contains("There are no snapshots"));
        }
    }
}

#[test]
fn t40_import_renames_moves_copies_and_reports_failed_dirs() {
    let c = with_table(Version::V41);
    c.admin(&["write-sstables", "shop.users", "--count", "2"]).unwrap();
    let src = c.root().join("incoming");
    let bad = c.root().join("damaged");
    for d in [&src, &bad] {
        std::fs::create_dir_all(d).unwrap();
    }
    // SSTables from another node (generation 1 and 2, which collide with the live ones).
    let other = cassette_integration::emulator::files::GenSpec {
        data_size: 500,
        seed: 7,
        min_timestamp: 1,
        max_timestamp: 2,
        partitioner: "org.apache.cassandra.dht.Murmur3Partitioner",
        extra_components: vec![],
    };
    for (dir, id) in [(&src, 1), (&src, 2), (&bad, 1)] {
        let name = cassette_common::sstable::SstableName::parse(&format!("nb-{id}-big-Data.db")).unwrap();
        cassette_integration::emulator::files::write_generated(dir, &name, &other).unwrap();
    }
    std::fs::write(bad.join("nb-1-big-Digest.crc32"), "12345").unwrap();

    let out = c.nodetool(&["import", "shop", "users", src.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr,
        format!("Some directories failed to import, check server logs for details:\n{}\n", bad.display())
    );
    assert!(files_under(&src).is_empty(), "moved out of the source");
    assert_eq!(files_under(&bad).len(), 8, "the failed directory is left alone");
    let state = c.cluster().unwrap();
    let tdir = state.table("shop", "users").unwrap().dir_name("users");
    let live = state.nodes[0].data_dirs[0].join("shop").join(tdir);
    for id in 1..=4 {
        assert!(live.join(format!("nb-{id}-big-Data.db")).is_file(), "renamed to the next ids: nb-{id}");
    }
    // Copy mode keeps the source.
    let copy = c.root().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    let name = cassette_common::sstable::SstableName::parse("nb-9-big-Data.db").unwrap();
    cassette_integration::emulator::files::write_generated(&copy, &name, &other).unwrap();
    let out = c.nodetool(&["import", "--copy-data", "--quick", "shop", "users", copy.to_str().unwrap()]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "Doing a quick import - skipping sstable verification and row cache invalidation\n")
    );
    assert_eq!(files_under(&copy).len(), 8);
    assert!(live.join("nb-5-big-Data.db").is_file());
    let missing = c.nodetool(&["import", "shop", "users", "/nonexistent/dir"]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.starts_with("error: Directory /nonexistent/dir does not exist\n"));
    // 3.11 has no import; refresh there renames in place.
    let old = with_table(Version::V311);
    assert_eq!(old.nodetool(&["import", "shop", "users", "/tmp"]).code, 1);
}

#[test]
fn t41_refresh_loads_new_files_per_version() {
    for v in [Version::V311, Version::V41] {
        let c = with_table(v);
        c.admin(&["write-sstables", "shop.users"]).unwrap();
        let state = c.cluster().unwrap();
        let tdir = state.table("shop", "users").unwrap().dir_name("users");
        let live = state.nodes[0].data_dirs[0].join("shop").join(tdir);
        let ver = if v == Version::V311 { "me" } else { "nb" };
        let name = cassette_common::sstable::SstableName::parse(&format!("{ver}-7-big-Data.db")).unwrap();
        let spec = cassette_integration::emulator::files::GenSpec {
            data_size: 100,
            seed: 1,
            min_timestamp: 1,
            max_timestamp: 2,
            partitioner: "p",
            extra_components: vec![],
        };
        cassette_integration::emulator::files::write_generated(&live, &name, &spec).unwrap();
        let out = c.nodetool(&["refresh", "shop", "users"]);
        assert_eq!(out.code, 0);
        assert_eq!(out.stdout.is_empty(), v == Version::V311);
        if v >= Version::V40 {
            assert_eq!(out.stdout, "nodetool refresh is deprecated, use nodetool import instead\n");
        }
        let state = c.cluster().unwrap();
        let count: usize = state.nodes[0].live.values().map(|s| s.len()).sum::<usize>();
        assert!(count > 0);
        assert!(live.join(format!("{ver}-2-big-Data.db")).is_file(), "{v:?}: loaded under the next generation");
    }
}

#[test]
fn t42_compaction_keeps_snapshot_links() {
    let c = with_table(Version::V50);
    c.admin(&["write-sstables", "shop.users", "--count", "3", "--size", "2000"]).unwrap();
    assert_eq!(c.nodetool(&["snapshot", "-t", "before", "shop"]).code, 0);
    c.admin(&["compact", "shop.users"]).unwrap();
    let state = c.cluster().unwrap();
    let tdir = state.table("shop", "users").unwrap().dir_name("users");
    let live = state.nodes[0].data_dirs[0].join("shop").join(&tdir);
    assert!(!live.join("nb-1-big-Data.db").exists() && live.join("nb-4-big-Data.db").is_file());
    for id in 1..=3 {
        let f = live.join(format!("snapshots/before/nb-{id}-big-Data.db"));
        assert_eq!(std::fs::metadata(&f).unwrap().nlink(), 1, "the snapshot holds the only link");
    }
}

#[test]
fn t50_stopped_node_and_exit_codes() {
    for v in [Version::V311, Version::V41] {
        let c = cluster(&ClusterSpec::single(v));
        c.admin(&["stop", "127.0.0.1"]).unwrap();
        let out = c.nodetool(&["status"]);
        let detail = if v == Version::V311 { "Connection refused (Connection refused)" } else { "Connection refused" };
        assert_eq!(out.code, 1);
        assert_eq!(
            out.stderr,
            format!("nodetool: Failed to connect to '127.0.0.1:7199' - ConnectException: '{detail}'.\n")
        );
        let cql = c.cqlsh(&["127.0.0.1", "9042", "-e", "SELECT name, value FROM system_views.settings;"]);
        assert_eq!(cql.code, 1);
        assert!(cql.stderr.starts_with("Connection error: ('Unable to connect to any servers'"));
        c.admin(&["start", "127.0.0.1"]).unwrap();
        assert_eq!(c.nodetool(&["status"]).code, 0);
        let usage = c.nodetool(&["bogus"]);
        assert_eq!(usage.code, 1);
        assert!(usage.stdout.ends_with("See 'nodetool help' or 'nodetool help <command>'.\n"));
        let unknown = c.nodetool(&["flush", "nope"]);
        assert_eq!(unknown.code, 2);
        assert!(unknown.stderr.starts_with("error: Keyspace nope does not exist\n-- StackTrace --\n"));
    }
}

#[test]
fn t60_commitlog_segments_and_archive_command() {
    let c = cluster(&ClusterSpec::single(Version::V41));
    let state = c.cluster().unwrap();
    let node = &state.nodes[0];
    let archive = c.root().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::write(
        node.conf_dir.join("commitlog_archiving.properties"),
        format!("archive_command=/bin/ln %path {}/%name\n", archive.display()),
    )
    .unwrap();
    let out = c.admin(&["commitlog", "127.0.0.1", "--segments", "3", "--size", "4096"]).unwrap();
    let paths: Vec<&str> = out.lines().collect();
    assert_eq!(paths.len(), 3);
    let ids: Vec<i64> =
        paths.iter().map(|p| cassette_common::commitlog::CommitLogHeader::read(Path::new(p)).unwrap().id).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids = base + n: {ids:?}");
    assert!(paths[0].ends_with(&format!("CommitLog-7-{}.log", ids[0])));
    // The two closed segments were archived (hard links), the active one not yet.
    assert_eq!(files_under(&archive).len(), 2);
    // A full flush discards archived segments.
    assert_eq!(c.nodetool(&["flush"]).code, 0);
    assert!(!Path::new(paths[0]).exists() && Path::new(paths[2]).exists());
    // A failing archive command leaves segments in place.
    std::fs::write(node.conf_dir.join("commitlog_archiving.properties"), "archive_command=/bin/false %path\n").unwrap();
    c.admin(&["commitlog", "127.0.0.1", "--segments", "1"]).unwrap();
    assert_eq!(c.nodetool(&["flush"]).code, 0);
    assert!(Path::new(paths[2]).exists(), "not archived, so not deleted");
}

#[test]
fn t61_versions_write_their_formats() {
    let mut spec = ClusterSpec::single(Version::V50);
    spec.bti = true;
    let c = cluster(&spec);
    c.admin(&["create-keyspace", "ks"]).unwrap();
    c.admin(&["create-table", "ks.t"]).unwrap();
    c.admin(&["create-index", "ks.t", "t_sai", "value", "--kind", "sai"]).unwrap();
    let out = c.admin(&["write-sstables", "ks.t"]).unwrap();
    assert!(out.contains("da-1-bti"), "{out}");
    let state = c.cluster().unwrap();
    let dir = state.nodes[0].data_dirs[0].join("ks").join(state.table("ks", "t").unwrap().dir_name("t"));
    for c in ["Partitions.db", "Rows.db", "SAI+aa+GroupComplete.db", "SAI+aa+t_sai+Meta.db"] {
        assert!(dir.join(format!("da-1-bti-{c}")).is_file(), "{c}");
    }
    let mut spec = ClusterSpec::single(Version::V41);
    spec.uuid_sstable_ids = true;
    let c = cluster(&spec);
    c.admin(&["create-keyspace", "ks"]).unwrap();
    c.admin(&["create-table", "ks.t"]).unwrap();
    let out = c.admin(&["write-sstables", "ks.t", "--count", "2"]).unwrap();
    let ids: Vec<String> = out.lines().map(|l| l.rsplit('/').next().unwrap().to_owned()).collect();
    for id in &ids {
        let n = cassette_common::sstable::SstableName::parse(&format!("{id}-Data.db")).unwrap();
        let uuid = n.id.decode_uuid().expect("a UUID id");
        let age = chrono::Utc::now() - uuid.created_at();
        assert!(age.num_seconds().abs() < 60, "the id encodes the creation time");
    }
}

#[test]
fn t62_fixture_sstables_keep_their_bytes() {
    let Some(fixture) = cassette_integration::fixtures::sstable("nb", "legacy_nb_simple") else { return };
    let c = with_table(Version::V41);
    let out = c.admin(&["write-sstables", "shop.users", "--fixture", fixture.to_str().unwrap()]).unwrap();
    assert!(out.contains("nb-1-big"));
    let state = c.cluster().unwrap();
    let dir = state.nodes[0].data_dirs[0].join("shop").join(state.table("shop", "users").unwrap().dir_name("users"));
    let src = fixture.parent().unwrap();
    assert_eq!(
        std::fs::read(dir.join("nb-1-big-Data.db")).unwrap(),
        std::fs::read(src.join("nb-1-big-Data.db")).unwrap()
    );
    cassette_common::sstable::digest::verify_data_file(
        &dir.join("nb-1-big-Digest.crc32"),
        &dir.join("nb-1-big-Data.db"),
    )
    .unwrap();
    let stats = cassette_common::sstable::statistics::Statistics::read(&dir.join("nb-1-big-Statistics.db")).unwrap();
    assert_eq!(
        stats.partitioner, "org.apache.cassandra.dht.ByteOrderedPartitioner",
        "the real Statistics.db, timestamps rewritten"
    );
    let meta = std::fs::metadata(dir.join("nb-1-big-Data.db")).unwrap();
    assert!(!meta.permissions().readonly(), "copies are writable, unlike the fixtures");
}

#[test]
fn t14_ring_and_describering_layout() {
    let mut spec = ClusterSpec::single(Version::V40);
    spec.datacenters = vec![("dc1".into(), 2), ("dc2".into(), 1)];
    spec.num_tokens = Some(2);
    let c = cluster(&spec);
    c.admin(&["create-keyspace", "ks", "--rf", "1"]).unwrap();
    let out = c.nodetool(&["ring", "ks"]);
    assert_eq!(out.code, 0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "");
    assert_eq!((lines[1], lines[2]), ("Datacenter: dc1", "=========="));
    // printf("%-<maxAddr>s  %-12s%-7s%-8s%-16s%-20s%-44s%n", ...)
    assert_eq!(
        lines[3],
        format!(
            "{:<9}  {:<12}{:<7}{:<8}{:<16}{:<20}{:<44}",
            "Address", "Rack", "Status", "State", "Load", "Owns", "Token"
        )
    );
    let state = c.cluster().unwrap();
    let mut dc1: Vec<i64> =
        state.nodes[..2].iter().flat_map(|n| n.tokens.iter().map(|t| t.parse::<i64>().unwrap())).collect();
    dc1.sort();
    assert_eq!(lines[4].trim(), dc1.last().unwrap().to_string(), "more than one host: a row with the last token first");
    assert!(lines[5].starts_with("127.0.0.1  rack1       Up     Normal  "), "{}", lines[5]);
    assert!(out.stdout.ends_with("  Warning: \"nodetool ring\" is used to output all the tokens of a node.\n  To view status related info of a node use \"nodetool status\" instead.\n\n"));

    let d = c.nodetool(&["describering", "ks"]).stdout;
    let lines: Vec<&str> = d.lines().collect();
    assert_eq!(lines[0], format!("Schema Version:{}", state.schema_version));
    assert_eq!(lines[1], "TokenRange: ");
    assert_eq!(lines.len(), 2 + 6, "one range per token");
    for l in &lines[2..] {
        assert!(l.starts_with("\tTokenRange(start_token:") && l.ends_with(")])"), "{l}");
        // RF 1 in each of two datacenters: two endpoints per range, one per DC.
        assert!(l.contains("datacenter:dc1") && l.contains("datacenter:dc2"), "{l}");
    }
    assert_eq!(c.nodetool(&["describering"]).code, 1);
    assert_eq!(c.nodetool(&["describering", "nope"]).code, 2);
}

#[test]
fn t63_commitlog_restore_and_replay_on_start() {
    let c = cluster(&ClusterSpec::single(Version::V311));
    let archive = c.root().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    c.set_commitlog_archiving("127.0.0.1", &format!("archive_command=/bin/ln %path {}/%name\n", archive.display()))
        .unwrap();
    let out = c.admin(&["commitlog", "127.0.0.1", "--segments", "3", "--size", "1024"]).unwrap();
    let ids: Vec<i64> =
        out.lines().map(|p| cassette_common::commitlog::CommitLogHeader::read(Path::new(p)).unwrap().id).collect();
    assert!(out.lines().all(|p| p.contains("CommitLog-6-")), "3.11 writes version 6");
    assert_eq!(c.nodetool(&["flush"]).code, 0);
    c.admin(&["stop", "127.0.0.1"]).unwrap();
    // Archived copies may be renamed: the header decides where they go back.
    let first = archive.join(format!("CommitLog-6-{}.log", ids[0]));
    std::fs::rename(&first, archive.join("renamed.bin")).unwrap();
    let restore = c.root().join("restore");
    std::fs::create_dir_all(&restore).unwrap();
    c.set_commitlog_archiving(
        "127.0.0.1",
        &format!(
            "restore_command=/bin/cp -f %from %to\nrestore_directories={}\nrestore_point_in_time=2030:01:01 00:00:00\n",
            archive.display()
        ),
    )
    .unwrap();
    c.admin(&["start", "127.0.0.1"]).unwrap();
    let state = c.cluster().unwrap();
    let node = &state.nodes[0];
    let replayed: Vec<i64> = node.replayed_segments.iter().map(|(_, id)| *id).collect();
    assert_eq!(replayed, ids, "every archived segment restored and replayed in id order");
    assert!(files_under(&node.commitlog_dir).is_empty(), "replayed segments are deleted");
    assert!(node.next_segment_id > ids[2]);
    // A damaged archive stops the start, naming the file.
    c.admin(&["stop", "127.0.0.1"]).unwrap();
    std::fs::write(archive.join("garbage.log"), b"not a segment").unwrap();
    let e = c.admin(&["start", "127.0.0.1"]).unwrap_err().to_string();
    assert!(e.contains("garbage.log"), "{e}");
}

#[test]
fn t64_sstable_timestamps_and_in_flight_writes() {
    let c = with_table(Version::V40);
    let out = c
        .admin(&[
            "write-sstables",
            "shop.users",
            "--min-timestamp",
            "1600000000000000",
            "--max-timestamp",
            "1600000001000000",
        ])
        .unwrap();
    let prefix = out.split_whitespace().nth(1).unwrap();
    let state = c.cluster().unwrap();
    let stats = state.nodes[0].data_dirs[0].join(format!("{prefix}-Statistics.db"));
    let s = cassette_common::sstable::statistics::Statistics::read(&stats).unwrap();
    assert_eq!((s.min_timestamp, s.max_timestamp), (1_600_000_000_000_000, 1_600_000_001_000_000));
    // In flight: files and a transaction log on disk, but not live, so a snapshot skips them.
    let out = c.admin(&["write-sstables", "shop.users", "--in-flight"]).unwrap();
    let prefix = out.split_whitespace().nth(1).unwrap();
    let dir = state.nodes[0].data_dirs[0].join(prefix).parent().unwrap().to_owned();
    let txn: Vec<_> = files_under(&dir)
        .into_iter()
        .filter(|f| {
            datadir::FileKind::of(f.file_name().unwrap().to_str().unwrap()) == datadir::FileKind::TransactionLog
        })
        .collect();
    assert_eq!(txn.len(), 1, "{:?}", files_under(&dir));
    assert_eq!(c.nodetool(&["snapshot", "-t", "s", "-sf", "shop"]).code, 0);
    let snap = files_under(&dir.join("snapshots/s"));
    assert!(snap.iter().any(|f| f.ends_with("nb-1-big-Data.db")));
    assert!(!snap.iter().any(|f| f.ends_with("nb-2-big-Data.db")), "in-flight SSTables are not live");
}

#[test]
fn t65_fixture_copies_keep_their_version_in_the_name() {
    let Some(fixture) = cassette_integration::fixtures::sstable("mc", "legacy_mc_simple") else { return };
    let c = with_table(Version::V41);
    let out = c.admin(&["write-sstables", "shop.users", "--fixture", fixture.to_str().unwrap()]).unwrap();
    assert!(out.trim_end().ends_with("/mc-1-big"), "{out}");
    // The next generation continues the table's sequence whatever the version.
    let out = c.admin(&["write-sstables", "shop.users"]).unwrap();
    assert!(out.trim_end().ends_with("/nb-2-big"), "{out}");
}

/// The emulator against what real Cassandra printed: the script of every nodetool and cqlsh
/// command the adapter runs (integration/src/fidelity.rs), played on the emulator of each series
/// and compared, normalized, with the recordings `real_fidelity` made on real 4.0, 4.1 and 5.0
/// nodes (`integration/fidelity/<series>.txt`). Any difference fails.
#[test]
fn t70_emulator_matches_the_recordings_of_real_nodes() {
    use cassette_integration::fidelity::{self, EmulatorTarget};
    let mut failures = Vec::new();
    for v in [Version::V40, Version::V41, Version::V50] {
        let path = fidelity::recording_path(v.short());
        let recorded = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let c = cluster(&fidelity::emulator_spec(v));
        let scratch = tempfile::tempdir().unwrap();
        let recs = fidelity::play(&mut EmulatorTarget { cluster: &c, scratch: scratch.path().to_owned() });
        let text = fidelity::render(v.short(), "emulator", &recs);
        if let Some(d) = fidelity::compare(&recorded, &text) {
            failures.push(format!("=== {v:?} differs from {}:\n{d}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
