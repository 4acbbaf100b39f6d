//! The sandbox: Cassette end to end on one machine with nothing installed but the toolchain.
//!
//! Starts a coordinator, an emulated Cassandra cluster of six nodes in two datacenters with an
//! agent on each, and storage on local disk; takes a cluster backup, writes more data and backs
//! up again (showing what was deduplicated), loses a table, restores it, verifies, prints a
//! summary and how to drive it further with `cassette`, and cleans up.
//!
//! With `--cassandra real` the same story runs on three real Cassandra 5.0 nodes (installed
//! into `.tools/` on first use by `scripts/install.sh cassandra`), with rows written and read
//! back through CQL.
//!
//! `scripts/sandbox.sh [--cassandra real] [--keep] [--output json]` builds every binary once,
//! with cargo's progress shown, then runs this.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cassette_common::ids::BlobHash;
use cassette_integration::lab::{Lab, LabOptions};
use cassette_integration::node::{content, live_files};
use cassette_integration::servers::Backend;
use cassette_integration::tools::workspace_binary;
use clap::Parser;
use serde_json::Value;

/// Cassette end to end on this machine: a coordinator, six emulated nodes in two datacenters with
/// an agent each, storage on local disk; backup, incremental backup, a lost table restored.
#[derive(Debug, Parser)]
#[command(name = "sandbox", max_term_width = 110)]
struct Args {
    /// Keep everything running at the end (until Ctrl-C) and print how to drive it with `cassette`.
    #[arg(long)]
    keep: bool,
    /// Print the final summary as JSON.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    /// Which Cassandra: the emulator (fast, nothing to install) or real 5.0 nodes.
    #[arg(long, value_enum, default_value = "emulator")]
    cassandra: CassandraKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CassandraKind {
    /// The emulator: six nodes in two datacenters.
    Emulator,
    /// Three real Cassandra 5.0 nodes (installed into .tools/ on first use).
    Real,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}

struct Say {
    start: Instant,
    quiet: bool,
}

impl Say {
    fn step(&self, s: &str) {
        if !self.quiet {
            eprintln!("[{:>5.1}s] {s}", self.start.elapsed().as_secs_f64());
        }
    }
}

fn run_ok(lab: &Lab, args: &[&str]) -> anyhow::Result<Value> {
    let (code, v, err) = lab.cli_json(args);
    if code != 0 {
        bail!("cassette {} failed: {}\n{err}", args.join(" "), v.get("error").unwrap_or(&v));
    }
    Ok(v)
}

fn table(lab: &Lab, t: &str) -> anyhow::Result<BTreeMap<String, Vec<(String, BlobHash)>>> {
    let mut out = BTreeMap::new();
    for n in lab.main.cluster.cluster()?.nodes {
        let v = content(&live_files(&n.roots(), "shop"))
            .into_iter()
            .filter(|(d, _, _)| d.split('/').nth(1) == Some(t))
            .map(|(_, c, h)| (c, h))
            .collect();
        out.insert(n.address.clone(), v);
    }
    Ok(out)
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

async fn scenario(lab: &Lab, say: &Say) -> anyhow::Result<Value> {
    say.step("registering the cluster with the coordinator (it reads the ring through one agent)");
    lab.register("sandbox", None)?;
    say.step("creating keyspace shop (users, orders) and writing SSTables on every node");
    lab.admin(&["create-keyspace", "shop", "--rf", "3"])?;
    lab.admin(&["create-table", "shop.users", "--columns", "id int, email text", "--pk", "id"])?;
    lab.admin(&["create-table", "shop.orders"])?;
    lab.admin(&["write-sstables", "shop.users", "--count", "4", "--size", "256000"])?;
    lab.admin(&["write-sstables", "shop.orders", "--count", "4", "--size", "256000"])?;
    lab.admin(&["insert", "shop.users", "--rows", "1000"])?;

    say.step("cassette backup create --cluster sandbox --tag first");
    let t = Instant::now();
    let b1 = run_ok(lab, &["backup", "create", "--cluster", "sandbox", "--tag", "first"])?;
    let b1_secs = t.elapsed().as_secs_f64();
    let t1 = &b1["totals"];
    say.step(&format!(
        "backup {} of 6 nodes: {} in {} files, snapshot skew {} ms, {b1_secs:.1}s",
        b1["backup_id"].as_str().unwrap_or(""),
        mib(u(t1, "bytes_total")),
        u(t1, "files_total"),
        b1["snapshot_skew_ms"]
    ));
    let users = table(lab, "users")?;

    say.step("writing more data (2 new SSTables of orders per node), then backing up again");
    lab.admin(&["write-sstables", "shop.orders", "--count", "2", "--size", "256000"])?;
    let t = Instant::now();
    let b2 = run_ok(lab, &["backup", "create", "--cluster", "sandbox"])?;
    let b2_secs = t.elapsed().as_secs_f64();
    let t2 = &b2["totals"];
    say.step(&format!(
        "backup {}: {} in total, {} sent, {} deduplicated (already stored), {b2_secs:.1}s",
        b2["backup_id"].as_str().unwrap_or(""),
        mib(u(t2, "bytes_total")),
        mib(u(t2, "bytes_transferred")),
        mib(u(t2, "bytes_skipped"))
    ));

    say.step("losing a table: TRUNCATE shop.users");
    let out = lab.main.cluster.cqlsh(&["127.0.0.1", "-e", "TRUNCATE shop.users"]);
    if out.code != 0 {
        bail!("truncate failed: {}", out.stderr);
    }
    let empty = table(lab, "users")?.values().all(Vec::is_empty);
    say.step(&format!("shop.users is {}", if empty { "empty on every node" } else { "NOT empty?" }));

    say.step("cassette restore create --cluster sandbox --backup latest --entities shop.users");
    let t = Instant::now();
    let r =
        run_ok(lab, &["restore", "create", "--cluster", "sandbox", "--backup", "latest", "--entities", "shop.users"])?;
    let r_secs = t.elapsed().as_secs_f64();
    let restored = table(lab, "users")?;
    let same = restored == users;
    say.step(&format!(
        "restored {} on 6 nodes in {r_secs:.1}s: content {}",
        mib(u(&r["totals"], "bytes_total")),
        if same { "identical to the backup, on every node" } else { "DIFFERENT" }
    ));
    say.step("cassette backup verify latest --cluster sandbox");
    let v = run_ok(lab, &["backup", "verify", "latest", "--cluster", "sandbox"])?;
    let verified = v["result"]["ok"].as_bool() == Some(true);
    if !same || !verified {
        bail!("the restored table differs from the backup, or verify failed: {v}");
    }
    Ok(serde_json::json!({
        "nodes": 6,
        "datacenters": 2,
        "backup1": {"id": b1["backup_id"], "seconds": b1_secs, "bytes": u(t1, "bytes_total"), "files": u(t1, "files_total"), "snapshot_skew_ms": b1["snapshot_skew_ms"]},
        "backup2": {"id": b2["backup_id"], "seconds": b2_secs, "bytes": u(t2, "bytes_total"), "bytes_sent": u(t2, "bytes_transferred"), "bytes_deduplicated": u(t2, "bytes_skipped")},
        "restore": {"id": r["id"], "seconds": r_secs, "bytes": u(&r["totals"], "bytes_total"), "identical": same},
        "verified": verified,
    }))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let say = Say { start: Instant::now(), quiet: args.output == Output::Json };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if args.cassandra == CassandraKind::Real {
        return real::main(&args, &say, &rt);
    }
    say.step("building or finding the binaries (cassette-agent, cassette-coordinator, cassette, cassandra-emulator)");
    let emulator = workspace_binary("cassette-integration", "cassandra-emulator");
    for (p, b) in [
        ("cassette-agent", "cassette-agent"),
        ("cassette-coordinator", "cassette-coordinator"),
        ("cassette-coordinator", "cassette"),
    ] {
        workspace_binary(p, b);
    }
    say.step("starting storage (a local directory), a coordinator, 6 emulated nodes in dc1 and dc2, an agent on each");
    let mut opts = LabOptions::new("sandbox", &emulator, Backend::Local);
    opts.datacenters = vec![("dc1".into(), 3), ("dc2".into(), 3)];
    opts.num_tokens = 16;
    opts.coordinator_args = ["--poll-interval", "100ms", "--retry-backoff", "500ms"].map(String::from).to_vec();
    let mut lab = Lab::start(&opts)?.context("no storage")?;
    let started = say.start.elapsed().as_secs_f64();
    let result = rt.block_on(async {
        lab.group.wait_for_leader(Duration::from_secs(20), &[]).await?;
        scenario(&lab, &say).await
    });
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("the sandbox failed: {e:#}");
            eprintln!("logs:\n{}", lab.logs());
            let kept = lab.keep();
            eprintln!("everything is kept in {} for inspection", kept.display());
            std::process::exit(1);
        }
    };
    let total = say.start.elapsed().as_secs_f64();
    if args.output == Output::Json {
        let mut s = summary.clone();
        s["startup_seconds"] = serde_json::json!(started);
        s["total_seconds"] = serde_json::json!(total);
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        let b1 = &summary["backup1"];
        let b2 = &summary["backup2"];
        let r = &summary["restore"];
        println!();
        println!("Cassette sandbox: 6 nodes in 2 datacenters, storage on local disk");
        println!(
            "  backup 1   {:>5.1}s  {} in {} files (snapshot skew {} ms)",
            b1["seconds"].as_f64().unwrap_or(0.0),
            mib(u(b1, "bytes")),
            u(b1, "files"),
            b1["snapshot_skew_ms"]
        );
        println!(
            "  backup 2   {:>5.1}s  {} sent, {} deduplicated",
            b2["seconds"].as_f64().unwrap_or(0.0),
            mib(u(b2, "bytes_sent")),
            mib(u(b2, "bytes_deduplicated"))
        );
        println!(
            "  restore    {:>5.1}s  {} of shop.users, identical to the backup on every node, verified",
            r["seconds"].as_f64().unwrap_or(0.0),
            mib(u(r, "bytes"))
        );
        println!("  total      {total:>5.1}s (start-up {started:.1}s)");
    }
    let cli = workspace_binary("cassette-coordinator", "cassette");
    let pki = &lab.pki.dir;
    let env = format!(
        "export CASSETTE_COORDINATOR={} CASSETTE_TLS_CA={} CASSETTE_TLS_CERT={} CASSETTE_TLS_KEY={}",
        lab.group.endpoints().join(","),
        pki.join("ca.pem").display(),
        pki.join("operator.pem").display(),
        pki.join("operator.key").display()
    );
    if args.keep {
        println!("\nEverything keeps running until Ctrl-C. Drive it with the cassette CLI:\n");
        println!("  {env}");
        println!("  {} backup list --cluster sandbox", cli.display());
        println!("  {} backup create --cluster sandbox --dc dc1 --tag mine", cli.display());
        println!("  {} operations list", cli.display());
        println!("  {} restore create --cluster sandbox --backup first --entities shop.orders", cli.display());
        println!("  {} cluster status sandbox", cli.display());
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        });
        eprintln!("stopping and cleaning up");
    } else if args.output == Output::Text {
        println!(
            "\nRun it again with --keep to leave the coordinator and the agents running and drive them with `cassette`\n(backup list/create/show/verify, restore create, operations list/watch, cluster status). Cleaned up."
        );
    }
    drop(lab);
    Ok(())
}

/// The same story on three real Cassandra 5.0 nodes.
mod real {
    use std::time::{Duration, Instant};

    use anyhow::{Context, bail};
    use cassette_integration::real::data::{self, DataSet};
    use cassette_integration::real::lab::RealLab;
    use cassette_integration::real::{ClusterSpec, Install, Series};
    use cassette_integration::servers::Backend;
    use cassette_integration::tools::{workspace_binary, workspace_root};
    use serde_json::Value;

    use super::{Args, Output, Say, mib, u};

    fn ok(lab: &RealLab, args: &[&str]) -> anyhow::Result<Value> {
        let (code, v, err) = lab.cli_json(args);
        if code != 0 {
            bail!("cassette {} failed: {}\n{err}", args.join(" "), v.get("error").unwrap_or(&v));
        }
        Ok(v)
    }

    pub fn main(args: &Args, say: &Say, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        if Install::find(Series::V50).is_none() {
            say.step("installing Cassandra 5.0, Java and cqlsh into .tools/ (scripts/install.sh cassandra; a few minutes, once)");
            let status = std::process::Command::new(workspace_root().join("scripts/install.sh"))
                .arg("cassandra")
                .status()
                .context("run scripts/install.sh cassandra")?;
            if !status.success() {
                bail!("scripts/install.sh cassandra failed ({status}): see its output above");
            }
        }
        say.step("building or finding the binaries (cassette-agent, cassette-coordinator, cassette)");
        for (p, b) in [
            ("cassette-agent", "cassette-agent"),
            ("cassette-coordinator", "cassette-coordinator"),
            ("cassette-coordinator", "cassette"),
        ] {
            workspace_binary(p, b);
        }
        say.step("starting a coordinator, 3 real Cassandra 5.0 nodes on 127.0.0.x (about 10 s each), an agent on each");
        let mut lab = RealLab::start_on("sandbox", Series::V50, &ClusterSpec::three("sandbox"), 1, Backend::Local)?
            .context("Cassandra 5.0 is not installed in .tools/cassandra/5.0")?;
        let started = say.start.elapsed().as_secs_f64();
        let result = rt.block_on(scenario(&lab, say));
        let summary = match result {
            Ok(s) => s,
            Err(e) => {
                eprintln!("the sandbox failed: {e:#}");
                eprintln!("logs:\n{}", lab.logs());
                let kept = lab.clusters[0].cluster.keep();
                eprintln!("the Cassandra nodes' files are kept in {}", kept.display());
                std::process::exit(1);
            }
        };
        let total = say.start.elapsed().as_secs_f64();
        if args.output == Output::Json {
            let mut s = summary;
            s["startup_seconds"] = serde_json::json!(started);
            s["total_seconds"] = serde_json::json!(total);
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            println!();
            println!("Cassette sandbox: 3 real Cassandra 5.0 nodes, storage on local disk");
            for (k, what) in [("backup1", "backup 1"), ("backup2", "backup 2"), ("restore", "restore ")] {
                let v = &summary[k];
                println!(
                    "  {what}   {:>5.1}s  {}",
                    v["seconds"].as_f64().unwrap_or(0.0),
                    v["text"].as_str().unwrap_or("")
                );
            }
            println!("  total      {total:>5.1}s (start-up {started:.1}s)");
        }
        if args.keep {
            let pki = &lab.pki.dir;
            println!("\nEverything keeps running until Ctrl-C. Drive it with the cassette CLI and cqlsh:\n");
            println!(
                "  export CASSETTE_COORDINATOR={} CASSETTE_TLS_CA={} CASSETTE_TLS_CERT={} CASSETTE_TLS_KEY={}",
                lab.group.endpoints().join(","),
                pki.join("ca.pem").display(),
                pki.join("admin.pem").display(),
                pki.join("admin.key").display()
            );
            let cli = workspace_binary("cassette-coordinator", "cassette");
            println!("  {} backup list --cluster sandbox", cli.display());
            println!(
                "  {} 127.0.0.1 -e 'SELECT count(*) FROM shop.users'",
                lab.clusters[0].cluster.install.cqlsh().display()
            );
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
        }
        for c in &mut lab.clusters {
            let _ = c.cluster.stop();
        }
        Ok(())
    }

    async fn scenario(lab: &RealLab, say: &Say) -> anyhow::Result<Value> {
        lab.group.wait_for_leader(Duration::from_secs(20), &[]).await?;
        say.step("registering the cluster with the coordinator (it reads the ring through one agent)");
        lab.register("sandbox", 0)?;
        let s = lab.clusters[0].cluster.session_all().await?;
        let ds = DataSet::new("shop", &[("dc1", 3)]);
        say.step(
            "creating keyspace shop (users with an SAI index, events, profiles, counters), writing rows through CQL",
        );
        ds.create_schema(&s, Series::V50).await?;
        ds.write(&s, 0).await?;

        say.step("cassette backup create --cluster sandbox --tag first");
        let t = Instant::now();
        let b1 = ok(lab, &["backup", "create", "--cluster", "sandbox", "--tag", "first"])?;
        let b1s = t.elapsed().as_secs_f64();
        let t1 = &b1["totals"];
        let b1t = format!(
            "{} in {} files (snapshot skew {} ms)",
            mib(u(t1, "bytes_total")),
            u(t1, "files_total"),
            b1["snapshot_skew_ms"]
        );
        say.step(&format!("backup {}: {b1t}, {b1s:.1}s", b1["backup_id"].as_str().unwrap_or("")));

        say.step("writing more rows, then backing up again");
        ds.write(&s, 1).await?;
        let expected = ds.read(&s).await?;
        let t = Instant::now();
        let b2 = ok(lab, &["backup", "create", "--cluster", "sandbox"])?;
        let b2s = t.elapsed().as_secs_f64();
        let t2 = &b2["totals"];
        let b2t = format!("{} sent, {} deduplicated", mib(u(t2, "bytes_transferred")), mib(u(t2, "bytes_skipped")));
        say.step(&format!("backup {}: {b2t}, {b2s:.1}s", b2["backup_id"].as_str().unwrap_or("")));

        say.step("losing a table: TRUNCATE shop.users");
        data::exec(&s, "TRUNCATE shop.users").await?;
        say.step("cassette restore create --cluster sandbox --backup latest --entities shop.users");
        let t = Instant::now();
        let r =
            ok(lab, &["restore", "create", "--cluster", "sandbox", "--backup", "latest", "--entities", "shop.users"])?;
        let rs = t.elapsed().as_secs_f64();
        let got = ds.read(&s).await?;
        if let Some(d) = data::diff(&expected, &got) {
            bail!("the rows read back differ from the rows written:\n{d}");
        }
        let rt = format!(
            "{} of shop.users; {} rows read back at CL ALL, equal to the rows written",
            mib(u(&r["totals"], "bytes_total")),
            data::count(&got)
        );
        say.step(&format!("restored in {rs:.1}s: {rt}"));
        Ok(serde_json::json!({
            "cassandra": "real 5.0", "nodes": 3,
            "backup1": {"id": b1["backup_id"], "seconds": b1s, "bytes": u(t1, "bytes_total"), "snapshot_skew_ms": b1["snapshot_skew_ms"], "text": b1t},
            "backup2": {"id": b2["backup_id"], "seconds": b2s, "bytes_sent": u(t2, "bytes_transferred"), "bytes_deduplicated": u(t2, "bytes_skipped"), "text": b2t},
            "restore": {"id": r["id"], "seconds": rs, "rows": data::count(&got), "identical": true, "text": rt},
        }))
    }
}
