//! Real Cassandra, one node of each series (5.0, 4.1, 4.0): backups and every restore strategy,
//! with the rows read back through CQL at CL ALL compared with the rows written.
//!
//! Each test starts its own node from `.tools/cassandra/<series>` (scripts/install.sh cassandra)
//! and a strict S3 server (s3s-fs), and drives the real `cassette-agent` binary. Missing pieces
//! skip loudly, or fail with `CASSETTE_REQUIRE_EMULATORS=1` (CI).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::time::Instant;

use cassette_integration::node::step;
use cassette_integration::real::data::{self, DataSet, Rows};
use cassette_integration::real::env::RealEnv;
use cassette_integration::real::{ClusterSpec, Series, SstableFormat};
use cassette_integration::servers::Backend;
use scylla::client::session::Session;

const KS: &str = "shop";

async fn truncate(s: &Session, tables: &[&str]) {
    for t in tables {
        data::exec(s, &format!("TRUNCATE {KS}.{t}")).await.unwrap();
    }
}

fn assert_rows(what: &str, expected: &Rows, got: &Rows) {
    if let Some(d) = data::diff(expected, got) {
        panic!("{what}: the rows read back differ from the rows written:\n{d}");
    }
    eprintln!("    {what}: {} rows read back at CL ALL, equal to the rows written", data::count(got));
}

fn only(rows: &Rows, table: &str) -> Rows {
    rows.iter().filter(|(t, _)| *t == table).map(|(t, r)| (t.clone(), r.clone())).collect()
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no number {k} in {v:#}"))
}

/// The single-node story on `series`:
/// - full backup, then an incremental one that sends only the new SSTables;
/// - `--strategy import` after TRUNCATE of every table (index queries answer again);
/// - `--strategy import --create-tables` after DROP TABLE: the table, its type and its index
///   come back from the backup's schema, then the rows;
/// - `--strategy hardlinks` after TRUNCATE;
/// - `--rename` into another table; the source table is untouched;
/// - an older backup by id: the rows of that moment;
/// - `--strategy in-place` on the stopped node, rows written after the backup gone.
async fn single_node_story(test: &str, series: Series, spec: ClusterSpec) {
    let t0 = Instant::now();
    let Some(mut env) = RealEnv::start(test, series, &spec, Backend::S3sFs).unwrap() else { return };
    let agent = env.agent(0);
    let s = env.cluster.session(0).await.unwrap();
    let ds = DataSet::new(KS, &[("dc1", 1)]);

    step("schema and generation 0 of the rows");
    ds.create_schema(&s, series).await.unwrap();
    ds.write(&s, 0).await.unwrap();
    let rows0 = ds.read(&s).await.unwrap();
    assert!(data::count(&rows0) > 500, "{rows0:?}");

    step("full backup");
    let full = agent.ok(&["backup", "--entities", KS, "--tag", "gen0"]);
    assert!(num(&full, "files_uploaded") > 0 && num(&full, "bytes_uploaded") > 0, "{full:#}");
    let first_id = full["backup_id"].as_str().unwrap().to_owned();

    step("generation 1, then an incremental backup: only the new SSTables are sent");
    ds.write(&s, 1).await.unwrap();
    let rows1 = ds.read(&s).await.unwrap();
    let index1 = ds.read_by_index(&s, 1).await.unwrap();
    assert_eq!(index1.len(), 4, "{index1:?}");
    let inc = agent.ok(&["backup", "--entities", KS]);
    assert!(num(&inc, "bytes_uploaded") > 0, "{inc:#}");
    assert!(
        num(&inc, "bytes_skipped") >= num(&full, "bytes_total"),
        "every file of the first backup is still live and must not be sent again: {inc:#}"
    );
    assert_eq!(num(&inc, "bytes_uploaded") + num(&inc, "bytes_skipped"), num(&inc, "bytes_total"), "{inc:#}");

    step("TRUNCATE every table, restore with nodetool import");
    truncate(&s, &data::TABLES).await;
    assert_eq!(data::count(&ds.read(&s).await.unwrap()), 0);
    agent.ok(&["restore", "latest", "--strategy", "import", "--entities", KS]);
    assert_rows("import after TRUNCATE", &rows1, &ds.read(&s).await.unwrap());
    assert_eq!(ds.read_by_index(&s, 1).await.unwrap(), index1, "the email index answers after the import");

    step("DROP TABLE users, restore it with the backup's schema");
    data::exec(&s, &format!("DROP TABLE {KS}.users")).await.unwrap();
    let refused = agent.err(&["restore", "latest", "--strategy", "import", "--entities", "shop.users"]);
    assert!(refused.error().contains("--create-tables"), "the refusal names the way out: {}", refused.error());
    agent.ok(&["restore", "latest", "--strategy", "import", "--entities", "shop.users", "--create-tables"]);
    assert_rows("import after DROP TABLE", &only(&rows1, "users"), &only(&ds.read(&s).await.unwrap(), "users"));
    assert_eq!(ds.read_by_index(&s, 1).await.unwrap(), index1, "the index came back with the table");

    step("TRUNCATE events, restore with hard links and nodetool refresh");
    truncate(&s, &["events"]).await;
    agent.ok(&["restore", "latest", "--strategy", "hardlinks", "--entities", "shop.events"]);
    assert_rows("hardlinks", &rows1, &ds.read(&s).await.unwrap());

    step("restore users under another name");
    let copy =
        ds.schema(series).into_iter().find(|c| c.contains(".users (")).unwrap().replace(".users (", ".users_copy (");
    data::exec(&s, &copy).await.unwrap();
    agent.ok(&[
        "restore",
        "latest",
        "--strategy",
        "import",
        "--entities",
        "shop.users",
        "--rename",
        "shop.users=shop.users_copy",
    ]);
    let copy_rows = data::read_rows(
        &s,
        "SELECT id, name, email, age, score, active, joined, avatar, TTL(name) FROM shop.users_copy",
        true,
    )
    .await
    .unwrap();
    assert_eq!(copy_rows, rows1["users"], "users_copy holds the backup's users");
    assert_rows("source of the rename untouched", &rows1, &ds.read(&s).await.unwrap());

    step("the first backup, by id: the rows of generation 0");
    truncate(&s, &data::TABLES).await;
    agent.ok(&["restore", &first_id, "--strategy", "import", "--entities", KS]);
    assert_rows("restore of the older backup", &rows0, &ds.read(&s).await.unwrap());

    step("in place on the stopped node: rows written after the backup are gone");
    agent.ok(&["restore", "latest", "--strategy", "import", "--entities", KS]);
    ds.write(&s, 2).await.unwrap();
    assert_ne!(data::count(&ds.read(&s).await.unwrap()), data::count(&rows1));
    drop(s);
    let peak = env.cluster.stop_node(0).unwrap();
    eprintln!("    node stopped (peak RSS {peak} MiB)");
    agent.ok(&["restore", "latest", "--strategy", "in-place", "--entities", KS]);
    env.cluster.start().unwrap();
    let s = env.cluster.session(0).await.unwrap();
    assert_rows("in place", &rows1, &ds.read(&s).await.unwrap());
    eprintln!(
        "{test}: Cassandra {} single-node story took {:.0} s",
        env.cluster.install.version,
        t0.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_real_50_single_node_jbod() {
    let mut spec = ClusterSpec::single("real50");
    spec.data_dirs = 2;
    spec.uuid_sstable_ids = true;
    single_node_story("t10", Series::V50, spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t11_real_41_single_node_uuid_ids() {
    let mut spec = ClusterSpec::single("real41");
    spec.uuid_sstable_ids = true;
    single_node_story("t11", Series::V41, spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t12_real_40_single_node_jbod() {
    let mut spec = ClusterSpec::single("real40");
    spec.data_dirs = 2;
    single_node_story("t12", Series::V40, spec).await;
}

/// 5.0's trie-indexed SSTables (`bti`, storage compatibility mode NONE): a backup, TRUNCATE,
/// an import, rows back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t13_real_50_bti_sstables() {
    let mut spec = ClusterSpec::single("real50bti");
    spec.format = SstableFormat::Bti;
    let Some(env) = RealEnv::start("t13", Series::V50, &spec, Backend::S3sFs).unwrap() else { return };
    let agent = env.agent(0);
    let s = env.cluster.session(0).await.unwrap();
    let ds = DataSet::new(KS, &[("dc1", 1)]);
    ds.create_schema(&s, Series::V50).await.unwrap();
    ds.write(&s, 0).await.unwrap();
    let rows = ds.read(&s).await.unwrap();
    let r = agent.ok(&["backup", "--entities", KS]);
    assert!(num(&r, "files_uploaded") > 0);
    let data_dir = &env.cluster.data_dirs(0)[0];
    let bti = cassette_integration::node::all_files(&data_dir.join(KS))
        .iter()
        .any(|p| p.file_name().unwrap().to_string_lossy().contains("-bti-"));
    assert!(bti, "Cassandra wrote bti SSTables under {}", data_dir.display());
    truncate(&s, &data::TABLES).await;
    agent.ok(&["restore", "latest", "--strategy", "import", "--entities", KS]);
    assert_rows("bti import", &rows, &ds.read(&s).await.unwrap());
}

fn micros_now() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Point in time with real commit logs, on `series`:
/// - `archive_command` is `cassette-agent commitlog-backup %path`, run by Cassandra itself on
///   every closed segment;
/// - rows before and after a point; one row written at exactly the point (`USING TIMESTAMP`)
///   and one a microsecond later;
/// - the node is lost, rebuilt in place from the backup taken before, and
///   `commitlog-restore --until <point>` prepares the replay; after the start exactly the rows
///   up to the point are there (the one at the point included, the one a microsecond later not);
/// - `--finish` puts the original properties back: the restore settings are gone.
async fn point_in_time_story(test: &str, series: Series) {
    let spec = ClusterSpec::single(&format!("pitr{}", series.name().replace('.', "")));
    let Some(mut env) = RealEnv::create(test, series, &spec, Backend::S3sFs).unwrap() else { return };
    let agent = env.agent(0);
    let archive =
        format!("archive_command={} --config {} commitlog-backup %path\n", agent.bin.display(), agent.config.display());
    assert!(!archive.contains("  "), "Cassandra splits archive_command on single spaces");
    env.cluster.nodes[0].write_commitlog_archiving(&archive).unwrap();
    let original =
        std::fs::read_to_string(env.cluster.nodes[0].conf_dir().join("commitlog_archiving.properties")).unwrap();
    env.cluster.start().unwrap();
    let s = env.cluster.session(0).await.unwrap();
    let ds = DataSet::new(KS, &[("dc1", 1)]);

    step("rows, then a backup");
    ds.create_schema(&s, series).await.unwrap();
    data::exec(&s, "CREATE KEYSPACE filler WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 1}")
        .await
        .unwrap();
    data::exec(&s, "CREATE TABLE filler.pad (id int PRIMARY KEY, b blob)").await.unwrap();
    ds.write(&s, 0).await.unwrap();
    let backup = agent.ok(&["backup", "--entities", KS]);

    step("more rows, one at the point, one a microsecond after it, more rows after");
    ds.write(&s, 1).await.unwrap();
    let point = micros_now();
    let at = format!("INSERT INTO {KS}.users (id, name) VALUES (900001, 'at the point') USING TIMESTAMP {point}");
    data::exec(&s, &at).await.unwrap();
    let expected = ds.read(&s).await.unwrap();
    let after = format!(
        "INSERT INTO {KS}.users (id, name) VALUES (900002, 'a microsecond late') USING TIMESTAMP {}",
        point + 1
    );
    data::exec(&s, &after).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    ds.write(&s, 2).await.unwrap();
    assert_ne!(data::count(&ds.read(&s).await.unwrap()), data::count(&expected));

    step("fill the commit log so the segments holding those writes close and are archived");
    let pad = s.prepare("INSERT INTO filler.pad (id, b) VALUES (?, ?)").await.unwrap();
    let blob = vec![7u8; 64 << 10];
    for i in 0..300 {
        s.execute_unpaged(&pad, (i, blob.as_slice())).await.unwrap();
    }
    let repo = env.server.repository(&env.prefix, &cassette_integration::node::NodeEnv::transfer());
    let host = backup["host_id"].as_str().unwrap().parse().unwrap();
    let index = cassette_common::layout::commitlog_prefix(backup["cluster"].as_str().unwrap(), &host);
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let archived = loop {
        let n = repo.list(&index).await.unwrap().len();
        if n >= 2 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(
        archived >= 2,
        "Cassandra archived closed segments through cassette-agent commitlog-backup ({archived} index entries)"
    );

    step("the node is lost: stopped, rebuilt in place from the backup");
    drop(s);
    env.cluster.stop_node(0).unwrap();
    agent.ok(&["restore", backup["backup_id"].as_str().unwrap(), "--strategy", "in-place", "--entities", KS]);

    step("commitlog-restore --until the point, start, compare");
    let conf = env.cluster.nodes[0].conf_dir();
    let dl = env.cluster.nodes[0].dir.join("pitr");
    let until =
        chrono::DateTime::from_timestamp_micros(point).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let r = agent.ok(&[
        "commitlog-restore",
        "--until",
        &until,
        "--conf-dir",
        conf.to_str().unwrap(),
        "--download-dir",
        dl.to_str().unwrap(),
    ]);
    eprintln!("    {} segment(s) selected", r["restore"]["segments"].as_array().map(Vec::len).unwrap_or(0));
    let props = std::fs::read_to_string(conf.join("commitlog_archiving.properties")).unwrap();
    assert!(props.contains("restore_point_in_time="), "{props}");
    env.cluster.start().unwrap();
    let s = env.cluster.session(0).await.unwrap();
    assert_rows("point in time", &only(&expected, "users"), &only(&ds.read(&s).await.unwrap(), "users"));
    assert_rows("point in time", &expected, &ds.read(&s).await.unwrap());

    step("--finish: the restore settings are gone");
    agent.ok(&["commitlog-restore", "--finish", "--conf-dir", conf.to_str().unwrap()]);
    let props = std::fs::read_to_string(conf.join("commitlog_archiving.properties")).unwrap();
    assert_eq!(props, original, "the original commitlog_archiving.properties is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_real_50_point_in_time() {
    point_in_time_story("t20", Series::V50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t21_real_41_point_in_time() {
    point_in_time_story("t21", Series::V41).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t22_real_40_point_in_time() {
    point_in_time_story("t22", Series::V40).await;
}
