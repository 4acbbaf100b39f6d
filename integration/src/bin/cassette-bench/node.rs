//! `cassette-bench node`: one emulated node backed up in full, then incrementally after new
//! SSTables and a compaction, then restored, by `cassette-agent` and by `rclone copy` / `aws s3
//! sync` of the same data directory, against one s3s-fs server, in one run.
//!
//! Every tool starts from the same node: the generated node is kept as a hard-linked copy
//! (`cp -al`; nothing rewrites an SSTable in place) and put back before the next tool runs, and
//! the change (new SSTables, compaction) is made by the same emulator commands from the same
//! emulator state, so every tool sees the same bytes.
//!
//! Profiling: `CASSETTE_BENCH_AGENT_WRAP`, when set, is a command (split at spaces) each
//! `cassette-agent` step runs under, with `{n}` replaced by the step's number (1 full, 2
//! incremental, 3 restore), e.g. `heaptrack -o /tmp/agent-{n}` or `perf record -g -o
//! /tmp/agent-{n}.perf --`. Wall times then include the wrapper's cost, and the peak RSS shown is
//! the wrapper's own unless it execs the agent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use cassette_agent::config::AgentConfig;
use cassette_agent::storage::TransferConfig;
use cassette_common::units::ByteSize;
use cassette_integration::emulator::{ClusterSpec, Version};
use cassette_integration::harness::EmulatedCluster;
use cassette_integration::servers::{Backend, StorageServer};
use cassette_integration::tools::workspace_binary;
use clap::ValueEnum;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::{Measured, aws_cmd, measure, rclone_cmd};

/// Tables of the emulated keyspace. `hot` holds a few small SSTables, the ones the compaction merges.
const TABLES: &[&str] =
    &["hot", "users", "orders", "events", "sessions", "carts", "audit", "metrics", "items", "prices"];
const HOT_SSTABLES: usize = 8;
const KEYSPACE: &str = "bench";
const NODE: &str = "127.0.0.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeTool {
    /// cassette-agent backup / restore --phase download.
    Cassette,
    /// rclone copy --transfers 8.
    Rclone,
    /// aws s3 sync.
    Aws,
}

impl NodeTool {
    fn label(self) -> &'static str {
        match self {
            NodeTool::Cassette => "cassette-agent",
            NodeTool::Rclone => "rclone copy --transfers 8",
            NodeTool::Aws => "aws s3 sync",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Where the node, the server's files and the downloads go (removed afterwards).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// SSTables of the node.
    #[arg(long, default_value_t = 10_000)]
    sstables: usize,
    /// Total size of the node's SSTables (Data.db plus components), e.g. `8GiB`, `512MiB`.
    #[arg(long, default_value = "8GiB")]
    size: ByteSize,
    /// Tools to run.
    #[arg(long, value_delimiter = ',', default_values = ["cassette", "rclone", "aws"])]
    tools: Vec<NodeTool>,
    /// Tools whose restore (download) is measured.
    #[arg(long, value_delimiter = ',', default_values = ["cassette", "rclone"])]
    restore_tools: Vec<NodeTool>,
    /// Seed of the size distribution and of the emulator.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Also print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Keep the generated node and server files (for inspection).
    #[arg(long)]
    keep: bool,
    /// Which Cassandra: the emulator (the default: generated SSTables, every tool side by side),
    /// or a real 5.0 node holding `--size` written through CQL (cassette-agent and rclone, and
    /// the time from restore to queryable rows).
    #[arg(long, value_enum, default_value = "emulator")]
    cassandra: CassandraKind,
}

/// `--cassandra`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CassandraKind {
    /// The emulator.
    Emulator,
    /// A real Cassandra 5.0 node from .tools/cassandra (scripts/install.sh cassandra).
    Real,
}

/// One timed step of one tool.
#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    tool: String,
    step: String,
    seconds: f64,
    /// Bytes of the node the step is about (the node's files; for a restore, the bytes downloaded).
    data_bytes: u64,
    /// Bytes the process read through the file system (`rchar` of /proc/<pid>/io).
    read_bytes: u64,
    /// Bytes read from the block device (`read_bytes`; small when the page cache holds the node).
    disk_read_bytes: u64,
    /// Growth of the tool's bucket on the server (objects and s3s-fs metadata).
    stored_bytes: u64,
    /// Bytes the tool says it sent (cassette's report), when it says.
    reported_uploaded: Option<u64>,
    peak_rss_mib: f64,
    note: String,
}

/// The node's SSTable sizes (Data.db bytes): log-normal (many small, few large), scaled to `total`.
fn sstable_sizes(count: usize, total: u64, seed: u64) -> Vec<u64> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let sigma = 1.8f64;
    let raw: Vec<f64> = (0..count)
        .map(|_| {
            // Box-Muller.
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (sigma * z).exp()
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    // Components other than Data.db take a little room (up to ~30 KiB per SSTable).
    let overhead = |d: u64| 6 * (16 + (d / 64).min(4096)) + 200;
    let target = total as f64 - count as f64 * 2000.0;
    let mut sizes: Vec<u64> = raw.iter().map(|r| quantize(((r / sum) * target).max(4096.0) as u64)).collect();
    // Correct for the floor, the quantization and the components once, proportionally.
    let got: u64 = sizes.iter().map(|s| s + overhead(*s)).sum();
    let f = total as f64 / got as f64;
    for s in &mut sizes {
        *s = quantize(((*s as f64) * f).max(4096.0) as u64);
    }
    sizes
}

/// Rounds to a grid of ~25 steps per decade, so that SSTables of one size are written by one
/// emulator command.
fn quantize(n: u64) -> u64 {
    let l = (n.max(1) as f64).log(1.1).round();
    1.1f64.powf(l) as u64
}

/// Writes SSTables of `sizes` into the tables (round robin, `hot` gets the first `hot` ones).
fn write_sstables(cluster: &EmulatedCluster, sizes: &[u64], hot: usize) -> anyhow::Result<()> {
    let mut groups: std::collections::BTreeMap<(usize, u64), u64> = Default::default();
    for (i, s) in sizes.iter().enumerate() {
        let t = if i < hot { 0 } else { 1 + (i - hot) % (TABLES.len() - 1) };
        *groups.entry((t, *s)).or_default() += 1;
    }
    let total = groups.len();
    for (n, ((t, size), count)) in groups.into_iter().enumerate() {
        if n % 50 == 0 {
            eprint!("\r   writing SSTables: {n}/{total} size groups");
        }
        cluster.admin(&[
            "write-sstables",
            &format!("{KEYSPACE}.{}", TABLES[t]),
            "--count",
            &count.to_string(),
            "--size",
            &size.to_string(),
        ])?;
    }
    eprintln!("\r   writing SSTables: {total}/{total} size groups");
    Ok(())
}

fn dir_bytes(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    for p in cassette_integration::node::all_files(dir) {
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            files += 1;
            bytes += m.len();
        }
    }
    (files, bytes)
}

fn free_bytes(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir).map(|s| s.blocks_available() * s.fragment_size()).unwrap_or(0)
}

fn cp_al(from: &Path, to: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(to);
    let st = Command::new("cp").arg("-al").arg(from).arg(to).status()?;
    if !st.success() {
        bail!("cp -al {} {} failed", from.display(), to.display());
    }
    Ok(())
}

struct Node {
    cluster: EmulatedCluster,
    root: PathBuf,
    base: PathBuf,
    data_dir: PathBuf,
    sstables: usize,
    new_sizes: Vec<u64>,
}

impl Node {
    /// New SSTables (5% of the count) and a compaction of `hot`.
    fn change(&self) -> anyhow::Result<()> {
        write_sstables(&self.cluster, &self.new_sizes, 0)?;
        self.cluster.admin(&["compact", &format!("{KEYSPACE}.hot")])?;
        Ok(())
    }

    /// Puts the node back as generated (before the change).
    fn reset(&self) -> anyhow::Result<()> {
        std::fs::remove_dir_all(&self.root)?;
        cp_al(&self.base, &self.root)
    }
}

pub fn node(args: NodeArgs) -> anyhow::Result<()> {
    if args.cassandra == CassandraKind::Real {
        return super::real_node::run(args.size, args.json);
    }
    if args.sstables < 20 {
        bail!("--sstables must be at least 20 (got {})", args.sstables);
    }
    let work = args.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("cassette-bench-node"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let size = args.size.0;
    // The node, one tool's copy on the server, one download, and the 5% change.
    let need = size * 31 / 10 + (256 << 20);
    let free = free_bytes(&work);
    if free < need {
        bail!(
            "{} has {} free; a node of {} needs about {} (node + one tool's copy + one download): pass a smaller --size or another --work-dir",
            work.display(),
            ByteSize(free),
            ByteSize(size),
            ByteSize(need)
        );
    }
    let result = run(&args, &work);
    if args.keep {
        eprintln!("kept {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    let (rows, summary) = result?;
    print_table(&rows, &summary);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "node": summary, "steps": rows }))?);
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct Summary {
    sstables: usize,
    files: u64,
    bytes: u64,
    largest_sstable: u64,
    median_sstable: u64,
    new_sstables: usize,
    changed_files: u64,
    changed_bytes: u64,
    /// The node's own `nodetool snapshot` of the changed node (every file hard-linked), seconds.
    node_snapshot_seconds: f64,
    /// The node's own `nodetool clearsnapshot` of it, seconds.
    node_clear_seconds: f64,
    load_average: String,
}

/// Times the node's own snapshot and clear (the part of a backup that is Cassandra's work, not
/// the tool's), through the `nodetool` the agent runs.
fn time_node_snapshot(cluster: &EmulatedCluster) -> anyhow::Result<(f64, f64)> {
    let run = |args: &[&str]| -> anyhow::Result<f64> {
        let t = std::time::Instant::now();
        let out = Command::new(cluster.nodetool_path()).args(args).output()?;
        if !out.status.success() {
            bail!("nodetool {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let snapshot = run(&["snapshot", "-t", "bench-node-cost"])?;
    let clear = run(&["clearsnapshot", "-t", "bench-node-cost"])?;
    Ok((snapshot, clear))
}

fn run(args: &NodeArgs, work: &Path) -> anyhow::Result<(Vec<StepRow>, Summary)> {
    let server = StorageServer::start(Backend::S3sFs, "cassette-bench-node")?
        .context("s3s-fs is needed: scripts/bench.sh installs it")?;
    let emulator = workspace_binary("cassette-integration", "cassandra-emulator");
    let agent = workspace_binary("cassette-agent", "cassette-agent");
    let root = work.join("node");
    let mut spec = ClusterSpec::single(Version::V41);
    spec.seed = args.seed;
    let cluster = EmulatedCluster::create_in(&root, &emulator, &spec)?;
    cluster.admin(&["create-keyspace", KEYSPACE])?;
    for t in TABLES {
        cluster.admin(&["create-table", &format!("{KEYSPACE}.{t}")])?;
    }
    let sizes = sstable_sizes(args.sstables + args.sstables / 20, args.size.0, args.seed);
    let (base_sizes, new_sizes) = sizes.split_at(args.sstables);
    // `hot` gets small SSTables (a minor compaction merges similar, small ones).
    let mut base_sizes = base_sizes.to_vec();
    let mut sorted: Vec<usize> = (0..base_sizes.len()).collect();
    sorted.sort_by_key(|i| base_sizes[*i]);
    let median = base_sizes[sorted[sorted.len() / 2]];
    let hot: Vec<usize> = sorted.iter().skip(sorted.len() / 4).take(HOT_SSTABLES).copied().collect();
    let mut reordered: Vec<u64> = hot.iter().map(|i| base_sizes[*i]).collect();
    reordered.extend(base_sizes.iter().enumerate().filter(|(i, _)| !hot.contains(i)).map(|(_, s)| *s));
    base_sizes = reordered;
    eprintln!(
        "generating a node of {} SSTables ({} total) in {}",
        args.sstables,
        ByteSize(args.size.0),
        root.display()
    );
    let t = std::time::Instant::now();
    write_sstables(&cluster, &base_sizes, HOT_SSTABLES)?;
    let c = cluster.cluster()?;
    let data_dir = c.nodes[0].data_dirs[0].clone();
    let (files, bytes) = dir_bytes(&data_dir);
    eprintln!("   {files} files, {} in {:.1}s", ByteSize(bytes), t.elapsed().as_secs_f64());
    let base = work.join("node.base");
    cp_al(&root, &base)?;
    let node = Node { cluster, root, base, data_dir, sstables: args.sstables, new_sizes: new_sizes.to_vec() };

    // What the change adds: measure it once on the node, then put the node back.
    node.change()?;
    let after = snapshot_listing(&node.data_dir);
    let before = snapshot_listing(&node.base.join(node.data_dir.strip_prefix(&node.root)?));
    let changed: Vec<&(String, u64)> = after.iter().filter(|f| !before.contains(f)).collect();
    let (node_snapshot_seconds, node_clear_seconds) = time_node_snapshot(&node.cluster)?;
    let summary = Summary {
        sstables: node.sstables,
        files,
        bytes,
        largest_sstable: *base_sizes.iter().max().unwrap_or(&0),
        median_sstable: median,
        new_sstables: node.new_sizes.len(),
        changed_files: changed.len() as u64,
        changed_bytes: changed.iter().map(|f| f.1).sum(),
        node_snapshot_seconds,
        node_clear_seconds,
        load_average: std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned(),
    };
    node.reset()?;

    let mut rows = Vec::new();
    for (i, tool) in args.tools.iter().enumerate() {
        if i > 0 {
            node.reset()?;
        }
        eprintln!("-- {}", tool.label());
        let bucket = format!("node-{}", format!("{tool:?}").to_lowercase());
        server.create_bucket(&bucket)?;
        let bucket_dir = server.dir.path().join("root").join(&bucket);
        let mut step =
            |name: &str, data: u64, r: anyhow::Result<(Measured, Option<u64>, String)>| -> anyhow::Result<()> {
                let (m, reported, note) = r.with_context(|| format!("{}: {name}", tool.label()))?;
                let stored = dir_bytes(&bucket_dir).1;
                let prev: u64 = rows
                    .iter()
                    .filter(|r: &&StepRow| r.tool == tool.label() && r.step != "restore")
                    .map(|r| r.stored_bytes)
                    .sum();
                eprintln!("   {name}: {:.2}s, peak RSS {:.0} MiB", m.secs, m.peak_rss_mib);
                rows.push(StepRow {
                    tool: tool.label().into(),
                    step: name.into(),
                    seconds: m.secs,
                    data_bytes: data,
                    read_bytes: m.rchar,
                    disk_read_bytes: m.read_bytes,
                    stored_bytes: if name == "restore" { 0 } else { stored.saturating_sub(prev) },
                    reported_uploaded: reported,
                    peak_rss_mib: m.peak_rss_mib,
                    note,
                });
                Ok(())
            };
        let state = work.join(format!("state-{bucket}"));
        let config = work.join(format!("agent-{bucket}.toml"));
        if *tool == NodeTool::Cassette {
            write_agent_config(&node.cluster, &server, &bucket, &state, &config)?;
        }
        step("full", bytes, backup(*tool, &agent, &config, &server, &node.data_dir, &bucket))?;
        node.change()?;
        let changed_total = dir_bytes(&node.data_dir).1;
        step("incremental", changed_total, backup(*tool, &agent, &config, &server, &node.data_dir, &bucket))?;
        if args.restore_tools.contains(tool) {
            let dl = work.join("download");
            let _ = std::fs::remove_dir_all(&dl);
            let r = restore(*tool, &agent, &config, &server, &bucket, &dl);
            let data = match &r {
                Ok((_, Some(n), _)) => *n,
                _ => dir_bytes(&dl).1,
            };
            step("restore", data, r)?;
            let _ = std::fs::remove_dir_all(&dl);
        }
        let _ = std::fs::remove_dir_all(&bucket_dir);
        let _ = std::fs::remove_dir_all(&state);
    }
    Ok((rows, summary))
}

/// (relative path, size) of every file under `dir`.
fn snapshot_listing(dir: &Path) -> std::collections::BTreeSet<(String, u64)> {
    cassette_integration::node::all_files(dir)
        .into_iter()
        .filter_map(|p| {
            let len = std::fs::metadata(&p).ok()?.len();
            Some((p.strip_prefix(dir).ok()?.to_string_lossy().into_owned(), len))
        })
        .collect()
}

fn write_agent_config(
    cluster: &EmulatedCluster,
    server: &StorageServer,
    bucket: &str,
    state: &Path,
    path: &Path,
) -> anyhow::Result<()> {
    let mut cassandra = cluster.cassandra_config(NODE);
    cassandra.cassandra_yaml = Some(cluster.write_cassandra_yaml(NODE)?);
    let location = format!("s3://{bucket}/repo").parse().context("location")?;
    let cfg = AgentConfig {
        location: Some(location),
        state_dir: Some(state.to_owned()),
        storage: server.storage_config(),
        transfer: TransferConfig::default(),
        cassandra,
        ..AgentConfig::default()
    };
    std::fs::write(path, toml::to_string(&cfg)?)?;
    Ok(())
}

/// The agent's JSON report: its whole output, or under a profiling wrapper that prints lines of
/// its own before and after it, the object that starts the first line opening one.
fn agent_report(stdout: &[u8]) -> anyhow::Result<serde_json::Value> {
    let text = String::from_utf8_lossy(stdout);
    let start = if text.starts_with('{') { 0 } else { text.find("\n{").map_or(0, |i| i + 1) };
    let mut values = serde_json::Deserializer::from_str(&text[start..]).into_iter::<serde_json::Value>();
    values.next().context("no JSON in the output")?.map_err(Into::into)
}

fn agent_cmd(agent: &Path, config: &Path, server: &StorageServer, args: &[&str]) -> Command {
    static STEP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    let wrap = std::env::var("CASSETTE_BENCH_AGENT_WRAP").unwrap_or_default();
    let wrap = if wrap.contains("{n}") {
        wrap.replace("{n}", &STEP.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_string())
    } else {
        wrap
    };
    let mut wrap = wrap.split_whitespace();
    let mut c = match wrap.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(wrap).arg(agent);
            c
        }
        None => Command::new(agent),
    };
    c.arg("--config").arg(config).args(["--output", "json"]).args(args);
    for (k, v) in server.env_vars() {
        c.env(k, v);
    }
    c.env_remove("CASSETTE_LOCATION").env_remove("CASSETTE_STATE_DIR").env_remove("CASSETTE_OUTPUT");
    c
}

fn backup(
    tool: NodeTool,
    agent: &Path,
    config: &Path,
    server: &StorageServer,
    data_dir: &Path,
    bucket: &str,
) -> anyhow::Result<(Measured, Option<u64>, String)> {
    let data = data_dir.to_string_lossy().into_owned();
    match tool {
        NodeTool::Cassette => {
            let m = measure(agent_cmd(agent, config, server, &["backup"]))?;
            let doc: serde_json::Value = agent_report(&m.stdout).context("the backup's JSON report")?;
            let note = format!(
                "{} files uploaded, {} skipped, {} hashed, {} existence checks",
                doc["files_uploaded"],
                doc["files_skipped"],
                ByteSize(doc["bytes_hashed"].as_u64().unwrap_or(0)),
                doc["existence_checks"]
            );
            Ok((m.clone(), doc["bytes_uploaded"].as_u64(), note))
        }
        NodeTool::Rclone => {
            let m = measure(rclone_cmd(server, &["copy", "--transfers", "8", &data, &format!("bench:{bucket}")])?)?;
            Ok((m, None, String::new()))
        }
        NodeTool::Aws => {
            let m = measure(aws_cmd(server, &["s3", "sync", &data, &format!("s3://{bucket}")])?)?;
            Ok((m, None, String::new()))
        }
    }
}

fn restore(
    tool: NodeTool,
    agent: &Path,
    config: &Path,
    server: &StorageServer,
    bucket: &str,
    dl: &Path,
) -> anyhow::Result<(Measured, Option<u64>, String)> {
    let dl_s = dl.to_string_lossy().into_owned();
    match tool {
        NodeTool::Cassette => {
            let m = measure(agent_cmd(
                agent,
                config,
                server,
                &["restore", "latest", "--strategy", "import", "--phase", "download", "--staging-dir", &dl_s],
            ))?;
            let doc: serde_json::Value = agent_report(&m.stdout).context("the restore's JSON report")?;
            let bytes = doc["download"]["bytes_transferred"].as_u64();
            Ok((m, bytes, format!("{} files downloaded and verified (SHA-256)", doc["files_total"])))
        }
        NodeTool::Rclone => {
            let m = measure(rclone_cmd(server, &["copy", "--transfers", "8", &format!("bench:{bucket}"), &dl_s])?)?;
            Ok((m, None, "every object of the bucket (the full backup's files and the new ones)".into()))
        }
        NodeTool::Aws => {
            let m = measure(aws_cmd(server, &["s3", "sync", &format!("s3://{bucket}"), &dl_s])?)?;
            Ok((m, None, "every object of the bucket (the full backup's files and the new ones)".into()))
        }
    }
}

fn gib(b: u64) -> String {
    format!("{:.2}", b as f64 / (1u64 << 30) as f64)
}

fn print_table(rows: &[StepRow], s: &Summary) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nNode benchmark: one emulated Cassandra 4.1 node, {} SSTables ({} files, {:.2} GiB; median Data.db {}, largest {}), against one local s3s-fs 0.14.1 server, {} cores, load average at start {}",
        s.sstables,
        s.files,
        s.bytes as f64 / (1u64 << 30) as f64,
        ByteSize(s.median_sstable),
        ByteSize(s.largest_sstable),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        s.load_average
    );
    let _ = writeln!(
        out,
        "change between the backups: {} new SSTables and a compaction of 8 small ones: {} new files, {}",
        s.new_sstables,
        s.changed_files,
        ByteSize(s.changed_bytes)
    );
    let _ = writeln!(
        out,
        "\n| tool | step | wall s | MiB/s | read GiB (rchar) | from disk GiB | uploaded GiB (server growth) | peak RSS MiB |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let rate = if r.step == "incremental" {
            "-".to_owned()
        } else {
            format!("{:.0}", r.data_bytes as f64 / (1 << 20) as f64 / r.seconds)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {} | {} | {} | {} | {:.0} |",
            r.tool,
            r.step,
            r.seconds,
            rate,
            gib(r.read_bytes),
            gib(r.disk_read_bytes),
            if r.step == "restore" { format!("({} down)", gib(r.data_bytes)) } else { gib(r.stored_bytes) },
            r.peak_rss_mib
        );
    }
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        let _ = writeln!(out, "note: {} {}: {}", r.tool, r.step, r.note);
    }
    let find = |tool: &str, step: &str| rows.iter().find(|r| r.tool.starts_with(tool) && r.step == step);
    let ratio = |other: &str, step: &str, thr: bool| -> String {
        match (find("cassette", step), find(other, step)) {
            (Some(c), Some(o)) if thr => {
                format!(
                    "{:.2}x",
                    (c.data_bytes as f64 / c.seconds) / (o.data_bytes as f64 / o.seconds).max(f64::MIN_POSITIVE)
                )
            }
            (Some(c), Some(o)) => format!("{:.2}x", o.seconds / c.seconds),
            _ => "-".into(),
        }
    };
    let _ = writeln!(
        out,
        "\ncassette vs rclone: full backup throughput {} (target >= 1.5x), incremental {} faster (target >= 10x), restore download throughput {} (target >= 1.5x)",
        ratio("rclone", "full", true),
        ratio("rclone", "incremental", false),
        ratio("rclone", "restore", true)
    );
    let _ = writeln!(
        out,
        "cassette vs aws s3 sync: full backup throughput {}, incremental {} faster, restore download throughput {}",
        ratio("aws", "full", true),
        ratio("aws", "incremental", false),
        ratio("aws", "restore", true)
    );
    if let Some(peak) = rows.iter().filter(|r| r.tool.starts_with("cassette")).map(|r| r.peak_rss_mib).reduce(f64::max)
    {
        let _ = writeln!(out, "cassette-agent peak memory over every step: {peak:.0} MiB (target < 100 MiB)");
    }
    if let Some(i) = find("cassette", "incremental") {
        let _ = writeln!(
            out,
            "cassette incremental read {} through the file system; the change is {}",
            ByteSize(i.read_bytes),
            ByteSize(s.changed_bytes)
        );
        let _ = writeln!(
            out,
            "the node's own nodetool snapshot + clearsnapshot of the changed node take {:.2}s + {:.2}s timed alone: part of cassette's incremental {:.2}s (rclone and aws copy the live directory, without a snapshot)",
            s.node_snapshot_seconds, s.node_clear_seconds, i.seconds
        );
    }
}
