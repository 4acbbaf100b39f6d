//! `cassette-bench node --cassandra real`: a real Cassandra 5.0 node holding data written through
//! CQL, backed up and restored by `cassette-agent`, side by side with `rclone copy` of the same
//! snapshot against the same s3s-fs server, and the time from `restore` to the rows answering a
//! query again.
//!
//! Steps, in one run:
//! 1. rows written through CQL (`--size` of blobs in one table), flushed;
//! 2. `cassette-agent backup` (snapshot, upload, manifest);
//! 3. `rclone copy --transfers 8` of a snapshot of the same data directory;
//! 4. the table truncated; `cassette-agent restore --strategy import` (download, verify, import)
//!    timed until a `SELECT count(*)` at CL ALL returns every row again;
//! 5. `rclone copy` of the backed-up files back to local disk (what a copy-only tool reaches).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cassette_common::units::ByteSize;
use cassette_integration::node::AgentCli;
use cassette_integration::real::data::exec;
use cassette_integration::real::env::RealEnv;
use cassette_integration::real::{ClusterSpec, Series};
use cassette_integration::servers::Backend;
use serde::Serialize;

use super::{measure, rclone_cmd};

#[derive(Debug, Clone, Serialize)]
struct Row {
    tool: &'static str,
    step: &'static str,
    seconds: f64,
    bytes: u64,
    peak_rss_mib: f64,
    note: String,
}

fn dir_bytes(dir: &Path) -> u64 {
    cassette_integration::node::all_files(dir).iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

async fn count(s: &scylla::client::session::Session) -> anyhow::Result<i64> {
    let mut st = scylla::statement::Statement::new("SELECT count(*) FROM bench.blobs");
    st.set_consistency(scylla::statement::Consistency::All);
    st.set_request_timeout(Some(Duration::from_secs(300)));
    let r = s.query_unpaged(st, &[]).await?.into_rows_result()?;
    let (n,): (i64,) = r.first_row()?;
    Ok(n)
}

/// Runs the benchmark; prints the table (and JSON with `json`).
pub fn run(size: ByteSize, json: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut spec = ClusterSpec::single("bench");
    spec.heap_mib = 1024;
    let Some(env) = RealEnv::start("bench", Series::V50, &spec, Backend::S3sFs)? else {
        bail!("Cassandra 5.0 or s3s-fs is not installed: run scripts/install.sh first");
    };
    let agent: AgentCli = env.agent(0);
    let blob = 256 << 10;
    let rows = (size.0 / blob as u64).max(1) as i32;
    let mut table = Vec::new();
    rt.block_on(async {
        let s = env.cluster.session(0).await?;
        exec(&s, "CREATE KEYSPACE bench WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 1}").await?;
        exec(&s, "CREATE TABLE bench.blobs (id int PRIMARY KEY, b blob)").await?;
        let t = Instant::now();
        eprintln!("writing {rows} rows of {} KiB through CQL", blob >> 10);
        let p = s.prepare("INSERT INTO bench.blobs (id, b) VALUES (?, ?)").await?;
        let mut i = 0;
        while i < rows {
            let batch: Vec<_> = (i..(i + 64).min(rows))
                .map(|k| {
                    let mut v = vec![0u8; blob];
                    let mut x = (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    for chunk in v.chunks_mut(8) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
                    }
                    (k, v)
                })
                .collect();
            futures::future::try_join_all(batch.iter().map(|(k, v)| s.execute_unpaged(&p, (*k, v.as_slice())))).await?;
            i += 64;
            if i % 1024 == 0 {
                eprint!("\r  {i}/{rows} rows");
            }
        }
        eprintln!("\r  {rows} rows in {:.1} s", t.elapsed().as_secs_f64());
        anyhow::Ok(())
    })?;
    env.cluster.nodetool(0, &["flush", "bench"])?.ok()?;
    let data = env.cluster.data_dirs(0)[0].join("bench");
    let node_bytes = dir_bytes(&data);
    eprintln!("node: {} in bench.blobs", cassette_common::units::ByteSize(node_bytes));

    // 2. cassette-agent backup.
    let m = measure(agent.command(&["backup", "--entities", "bench"]))?;
    let report: serde_json::Value = serde_json::from_slice(&m.stdout).context("backup report")?;
    table.push(Row {
        tool: "cassette-agent",
        step: "backup",
        seconds: m.secs,
        bytes: report["bytes_uploaded"].as_u64().unwrap_or(0),
        peak_rss_mib: m.peak_rss_mib,
        note: "snapshot, upload, manifest".into(),
    });

    // 3. rclone copy of a snapshot of the same table.
    env.cluster.nodetool(0, &["snapshot", "--tag", "rclone", "bench"])?.ok()?;
    let snap = cassette_integration::node::all_files(&data)
        .into_iter()
        .find(|p| p.to_string_lossy().contains("/snapshots/rclone/"))
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .context("the rclone snapshot")?;
    env.server.create_bucket("rclone")?;
    let snap_s = snap.display().to_string();
    let m = measure(rclone_cmd(&env.server, &["copy", "--transfers", "8", &snap_s, "bench:rclone/blobs"])?)?;
    table.push(Row {
        tool: "rclone copy --transfers 8",
        step: "backup",
        seconds: m.secs,
        bytes: dir_bytes(&snap),
        peak_rss_mib: m.peak_rss_mib,
        note: "the snapshot's files only (snapshot taken before, not timed)".into(),
    });

    // 4. Restore to queryable.
    let rows_before = rt.block_on(async {
        let s = env.cluster.session(0).await?;
        let n = count(&s).await?;
        exec(&s, "TRUNCATE bench.blobs").await?;
        anyhow::Ok(n)
    })?;
    let t = Instant::now();
    let m = measure(agent.command(&["restore", "latest", "--strategy", "import", "--entities", "bench"]))?;
    let queryable = rt.block_on(async {
        let s = env.cluster.session(0).await?;
        loop {
            if count(&s).await? == rows_before {
                return anyhow::Ok(t.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })?;
    let report: serde_json::Value = serde_json::from_slice(&m.stdout).context("restore report")?;
    table.push(Row {
        tool: "cassette-agent",
        step: "restore",
        seconds: m.secs,
        bytes: report["bytes_total"].as_u64().unwrap_or(0),
        peak_rss_mib: m.peak_rss_mib,
        note: format!(
            "download, verify, nodetool import; {rows_before} rows queryable at CL ALL after {queryable:.1} s"
        ),
    });

    // 5. rclone copy back (download only).
    let dl = env.dir.path().join("rclone-download");
    let dl_s = dl.display().to_string();
    let m = measure(rclone_cmd(&env.server, &["copy", "--transfers", "8", "bench:rclone/blobs", &dl_s])?)?;
    table.push(Row {
        tool: "rclone copy --transfers 8",
        step: "restore",
        seconds: m.secs,
        bytes: dir_bytes(&dl),
        peak_rss_mib: m.peak_rss_mib,
        note: "download only: no verification, no import (the floor of a copy-only tool)".into(),
    });

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\nReal Cassandra {} node, {} in bench.blobs ({rows} rows), s3s-fs on loopback\n",
        env.cluster.install.version,
        ByteSize(node_bytes)
    )?;
    writeln!(out, "| tool | step | s | MiB/s | peak RSS MiB | note |")?;
    writeln!(out, "|---|---|---:|---:|---:|---|")?;
    for r in &table {
        let rate = r.bytes as f64 / (1 << 20) as f64 / r.seconds.max(1e-9);
        writeln!(
            out,
            "| {} | {} | {:.1} | {rate:.0} | {:.0} | {} |",
            r.tool, r.step, r.seconds, r.peak_rss_mib, r.note
        )?;
    }
    writeln!(out, "\nrestore to queryable: {queryable:.1} s (cassette-agent restore, then SELECT count(*) at CL ALL)")?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"rows": table, "queryable_seconds": queryable, "node_bytes": node_bytes})
            )?
        )?;
    }
    Ok(())
}
