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
