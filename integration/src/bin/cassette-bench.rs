//! `cassette-bench`: benchmarks that print tables, comparing Cassette with other tools in the same
//! run on the same machine and server.
//!
//! `cassette-bench transfer`: uploads and downloads the same data sets with Cassette's engine
//! (the real `cassette-agent` binary), raw `object_store` puts, `rclone copy --transfers 8` and
//! `aws s3 sync`, against one local s3s-fs server. Every tool's download is checked byte for byte
//! against the source after its timed section; each tool's copy is removed before the next runs.
//!
//! `cassette-bench node`: an emulated node backed up in full and incrementally, and restored, by
//! `cassette-agent`, rclone and the AWS CLI (see `node.rs`).
//!
//! `cassette-bench coordinator`: 3 coordinator replicas driving phases on N in-process agents
//! (see `coordinator.rs`).

#![allow(clippy::print_stdout)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cassette_common::hash::sha256_file;
use cassette_integration::servers::{Backend, StorageServer};
use cassette_integration::tools::{Tool, workspace_binary};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde::Serialize;

#[path = "cassette-bench/coordinator.rs"]
mod coordinator;
#[path = "cassette-bench/node.rs"]
mod node;
#[path = "cassette-bench/real_node.rs"]
mod real_node;

#[derive(Debug, Parser)]
#[command(name = "cassette-bench", about = "Benchmarks that print tables, Cassette side by side with other tools")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Upload, re-upload unchanged, and download data sets with each tool against one s3s-fs server.
    Transfer(TransferArgs),
    /// Back up an emulated node (full, then incremental after new SSTables and a compaction) and
    /// restore it, with cassette-agent, rclone and aws s3 sync.
    Node(node::NodeArgs),
    /// Three coordinator replicas driving phases on N in-process agents: dispatch, skew, raft
    /// commit latency, memory, CPU, failover.
    Coordinator(coordinator::CoordinatorArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DataSet {
    /// 1 GiB in 200 files.
    Small,
    /// 4 GiB in 4 files.
    Large,
}

impl DataSet {
    fn files(self) -> (usize, u64) {
        match self {
            DataSet::Small => (200, (1u64 << 30) / 200),
            DataSet::Large => (4, 1 << 30),
        }
    }
    fn label(self) -> &'static str {
        match self {
            DataSet::Small => "1 GiB in 200 files",
            DataSet::Large => "4 GiB in 4 files",
        }
    }
    fn name(self) -> &'static str {
        match self {
            DataSet::Small => "small",
            DataSet::Large => "large",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ToolName {
    /// cassette-agent storage put / get.
    Cassette,
    /// object_store puts (8 at once), default client settings (signed payload).
    Raw,
    /// object_store puts (8 at once) with Cassette's wire settings (unsigned payload, CRC64/NVME checksum).
    RawUnsigned,
    /// rclone copy --transfers 8.
    Rclone,
    /// aws s3 sync.
    Aws,
}

impl ToolName {
    fn label(self) -> &'static str {
        match self {
            ToolName::Cassette => "cassette (verified, dedup)",
            ToolName::Raw => "object_store put (signed)",
            ToolName::RawUnsigned => "object_store put (unsigned+crc64)",
            ToolName::Rclone => "rclone copy --transfers 8",
            ToolName::Aws => "aws s3 sync",
        }
    }
}

#[derive(Debug, clap::Args)]
struct TransferArgs {
    /// Where data, downloads and server files go (needs about 2× the largest data set free).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Data sets to run.
    #[arg(long, value_delimiter = ',', default_values = ["small", "large"])]
    datasets: Vec<DataSet>,
    /// Tools to run.
    #[arg(long, value_delimiter = ',', default_values = ["cassette", "raw", "raw-unsigned", "rclone", "aws"])]
    tools: Vec<ToolName>,
    /// Also print the results as JSON (every run, not only the medians).
    #[arg(long)]
    json: bool,
    /// Runs per tool; the table shows the median of each figure. Tools take turns within a run.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

#[derive(Debug, Clone, Serialize, Default)]
struct Row {
    dataset: String,
    tool: String,
    run: usize,
    bytes: u64,
    upload_s: Option<f64>,
    second_upload_s: Option<f64>,
    download_s: Option<f64>,
    upload_peak_rss_mib: Option<f64>,
    download_peak_rss_mib: Option<f64>,
    note: Option<String>,
}

fn main() {
    cassette_agent::install_crypto_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Transfer(a) => transfer(a),
        Cmd::Node(a) => node::node(a),
        Cmd::Coordinator(a) => coordinator::coordinator(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn transfer(args: TransferArgs) -> anyhow::Result<()> {
    let work = args.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("cassette-bench"));
    std::fs::create_dir_all(&work)?;
    let server = StorageServer::start(Backend::S3sFs, "cassette-bench")?
        .context("s3s-fs is needed: scripts/bench.sh installs it")?;
    let agent = workspace_binary("cassette-agent", "cassette-agent");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rows = Vec::new();
    eprintln!("s3s-fs 0.14.1 at {}, data in {}", server.endpoint(), work.display());

    eprintln!("load average at start: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    for ds in &args.datasets {
        let (count, size) = ds.files();
        let data = work.join(format!("data-{}", ds.name()));
        prepare_data(&data, count, size)?;
        let total = count as u64 * size;
        for run in 1..=args.runs.max(1) {
            for tool in &args.tools {
                eprintln!("-- {} / {} / run {run}", ds.label(), tool.label());
                // One bucket per tool, data set and run, nothing under a directory prefix: s3s-fs
                // answers a HEAD on a key that is a directory on its disk with 500, which makes
                // rclone back off for minutes on its root check. Real S3 answers 404.
                let bucket = format!("bench-{}-{}-{run}", ds.name(), format!("{tool:?}").to_lowercase());
                server.create_bucket(&bucket)?;
                let dl = work.join(format!("download-{bucket}"));
                let _ = std::fs::remove_dir_all(&dl);
                let mut row =
                    Row { dataset: ds.label().into(), tool: tool.label().into(), run, bytes: total, ..Row::default() };
                let outcome = match tool {
                    ToolName::Cassette => run_cassette(&agent, &server, &work, &data, &dl, &bucket, &mut row),
                    ToolName::Raw | ToolName::RawUnsigned => {
                        runtime.block_on(run_raw(&server, &data, &bucket, *tool == ToolName::RawUnsigned, &mut row))
                    }
                    ToolName::Rclone => run_rclone(&server, &data, &dl, &bucket, &mut row),
                    ToolName::Aws => run_aws(&server, &data, &dl, &bucket, &mut row),
                };
                match outcome {
                    Ok(()) if row.download_s.is_some() => {
                        verify_same(&data, &dl)
                            .with_context(|| format!("{}: downloaded files differ from the source", tool.label()))?;
                    }
                    Ok(()) => {}
                    Err(e) => {
                        eprintln!("   {}: {e:#}", tool.label());
                        row.note = Some(format!("{e:#}"));
                    }
                }
                // Each tool's copies go before the next tool runs: the disk is shared.
                let _ = std::fs::remove_dir_all(&dl);
                let _ = std::fs::remove_dir_all(server.dir.path().join("root").join(&bucket));
                rows.push(row);
            }
        }
    }
    print_table(&rows);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

/// Writes the data set unless an identical one (same names and sizes) is already there.
fn prepare_data(dir: &Path, count: usize, size: u64) -> anyhow::Result<()> {
    let ok = (0..count).all(|i| std::fs::metadata(dir.join(format!("f{i:05}.bin"))).is_ok_and(|m| m.len() == size));
    let extra = std::fs::read_dir(dir).map(|d| d.count() != count).unwrap_or(true);
    if ok && !extra {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(dir);
    eprintln!("generating {count} files of {size} bytes in {}", dir.display());
    cassette_integration::data::random_files(dir, count, size, 2026)?;
    Ok(())
}

/// Flushes dirty pages before a timed step, so that writeback left over from the previous step
/// (generated data, another tool's downloads) is not charged to this one.
fn settle() {
    let _ = Command::new("sync").status();
}

/// Runs a command, timing it and sampling its peak resident memory (VmHWM) until it exits.
fn timed(mut cmd: Command) -> anyhow::Result<(f64, f64, Vec<u8>)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    settle();
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("cannot start {cmd:?}"))?;
    let pid = child.id();
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = vm_hwm_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let out = child.wait_with_output()?;
    let secs = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).chars().take(2000).collect::<String>()
        );
    }
    Ok((secs, peak.load(Ordering::Relaxed) as f64 / 1024.0, out.stdout))
}

/// What one measured process did.
#[derive(Debug, Clone)]
struct Measured {
    secs: f64,
    peak_rss_mib: f64,
    /// Bytes passed to read() and pread() (`rchar`): what it read through the file system.
    rchar: u64,
    /// Bytes fetched from the block device (`read_bytes`).
    read_bytes: u64,
    stdout: Vec<u8>,
}

/// Runs a command to completion like [`timed`], and also reads its I/O counters
/// (`/proc/<pid>/io`) after it exits and before it is reaped.
fn measure(mut cmd: Command) -> anyhow::Result<Measured> {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let out_file = tempfile::tempfile()?;
    let err_file = tempfile::tempfile()?;
    cmd.stdout(out_file.try_clone()?).stderr(err_file.try_clone()?).stdin(Stdio::null());
    settle();
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot start {cmd:?}"))?;
    let pid = child.id();
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = vm_hwm_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // Wait for the exit without reaping, so that /proc/<pid>/io still holds the totals.
    let _ = waitid(Id::Pid(nix::unistd::Pid::from_raw(pid as i32)), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
    let secs = start.elapsed().as_secs_f64();
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        io.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim_start_matches(':').trim().parse().ok()))
            .unwrap_or(0)
    };
    let (rchar, read_bytes) = (field("rchar"), field("read_bytes"));
    let status = child.wait()?;
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let read_all = |mut f: std::fs::File| -> Vec<u8> {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        let _ = f.seek(std::io::SeekFrom::Start(0));
        let _ = f.read_to_end(&mut v);
        v
    };
    let stdout = read_all(out_file);
    if !status.success() {
        let stderr = read_all(err_file);
        bail!(
            "{cmd:?} failed ({status}): {}{}",
            String::from_utf8_lossy(&stdout).chars().take(2000).collect::<String>(),
            String::from_utf8_lossy(&stderr).chars().take(2000).collect::<String>()
        );
    }
    Ok(Measured { secs, peak_rss_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0, rchar, read_bytes, stdout })
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn run_cassette(
    agent: &Path,
    server: &StorageServer,
    work: &Path,
    data: &Path,
    dl: &Path,
    bucket: &str,
    row: &mut Row,
) -> anyhow::Result<()> {
    let state = work.join(format!("state-{bucket}"));
    let _ = std::fs::remove_dir_all(&state);
    let loc = format!("s3://{bucket}");
    let cmd = |args: &[&str]| {
        let mut c = Command::new(agent);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CASSETTE_STATE_DIR", &state)
            .envs(server.env_vars())
            .args(args);
        c
    };
    let data_s = data.to_string_lossy().into_owned();
    let put = ["storage", "put", "--location", &loc, "--output", "json", &data_s];
    let (s, rss, list) = timed(cmd(&put))?;
    row.upload_s = Some(s);
    row.upload_peak_rss_mib = Some(rss);
    let list_path = work.join(format!("list-{bucket}.json"));
    std::fs::write(&list_path, &list)?;
    let (s, _, second) = timed(cmd(&put))?;
    let doc: serde_json::Value = serde_json::from_slice(&second)?;
    if doc["stats"]["bytes_transferred"] != 0 || doc["stats"]["bytes_hashed"] != 0 {
        bail!("the unchanged upload read or sent data: {}", doc["stats"]);
    }
    row.second_upload_s = Some(s);
    let list_s = list_path.to_string_lossy().into_owned();
    let dl_s = dl.to_string_lossy().into_owned();
    let (s, rss, _) =
        timed(cmd(&["storage", "get", "--location", &loc, "--list", &list_s, "--to", &dl_s, "--output", "json"]))?;
    row.download_s = Some(s);
    row.download_peak_rss_mib = Some(rss);
    Ok(())
}

async fn run_raw(
    server: &StorageServer,
    data: &Path,
    bucket: &str,
    unsigned: bool,
    row: &mut Row,
) -> anyhow::Result<()> {
    let mut b = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(server.endpoint())
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(bucket)
        .with_access_key_id(&server.access_key)
        .with_secret_access_key(&server.secret_key);
    if unsigned {
        b = b.with_unsigned_payload(true).with_checksum_algorithm(object_store::aws::Checksum::CRC64NVME);
    }
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(b.build()?);
    let mut files: Vec<PathBuf> = std::fs::read_dir(data)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.sort();
    settle();
    let start = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(files)
        .map(|f| {
            let store = Arc::clone(&store);
            let key =
                object_store::path::Path::from(f.file_name().map(|n| n.to_string_lossy()).unwrap_or_default().as_ref());
            async move {
                let size = tokio::fs::metadata(&f).await?.len();
                if size <= 16 << 20 {
                    let bytes = tokio::fs::read(&f).await?;
                    store.put(&key, bytes.into()).await?;
                } else {
                    let upload = store.put_multipart(&key).await?;
                    let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, 16 << 20);
                    let mut file = tokio::fs::File::open(&f).await?;
                    let mut buf = vec![0u8; 16 << 20];
                    loop {
                        use tokio::io::AsyncReadExt;
                        let n = file.read(&mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        writer.wait_for_capacity(4).await?;
                        writer.write(&buf[..n]);
                    }
                    writer.finish().await?;
                }
                Ok(())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for r in results {
        r?;
    }
    row.upload_s = Some(start.elapsed().as_secs_f64());
    row.note = Some("in-process baseline: no hashing, no dedup, no verification".into());
    Ok(())
}

fn rclone_cmd(server: &StorageServer, args: &[&str]) -> anyhow::Result<Command> {
    let bin = Tool::Rclone.find().context("rclone is not installed (scripts/bench.sh installs it)")?;
    let mut c = Command::new(bin);
    // rclone 1.60 fails with AWS_CA_BUNDLE set ("LoadCustomCABundleError"); the endpoint is plain HTTP anyway.
    c.env_remove("AWS_CA_BUNDLE")
        .env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_CONFIG_BENCH_TYPE", "s3")
        .env("RCLONE_CONFIG_BENCH_PROVIDER", "Other")
        .env("RCLONE_CONFIG_BENCH_ENDPOINT", server.endpoint())
        .env("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", &server.access_key)
        .env("RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY", &server.secret_key)
        .env("RCLONE_CONFIG_BENCH_REGION", "us-east-1")
        .env("RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE", "true")
        .args(args);
    Ok(c)
}

fn run_rclone(server: &StorageServer, data: &Path, dl: &Path, bucket: &str, row: &mut Row) -> anyhow::Result<()> {
    let remote = format!("bench:{bucket}");
    let data_s = data.to_string_lossy().into_owned();
    let dl_s = dl.to_string_lossy().into_owned();
    let (s, rss, _) = timed(rclone_cmd(server, &["copy", "--transfers", "8", &data_s, &remote])?)?;
    row.upload_s = Some(s);
    row.upload_peak_rss_mib = Some(rss);
    let (s, _, _) = timed(rclone_cmd(server, &["copy", "--transfers", "8", &data_s, &remote])?)?;
    row.second_upload_s = Some(s);
    let (s, rss, _) = timed(rclone_cmd(server, &["copy", "--transfers", "8", &remote, &dl_s])?)?;
    row.download_s = Some(s);
    row.download_peak_rss_mib = Some(rss);
    Ok(())
}

fn aws_cmd(server: &StorageServer, args: &[&str]) -> anyhow::Result<Command> {
    let bin = Tool::AwsCli.find().context("the AWS CLI is not installed (scripts/bench.sh installs it)")?;
    let mut c = Command::new(bin);
    c.env("AWS_ACCESS_KEY_ID", &server.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &server.secret_key)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .args(args)
        .args(["--endpoint-url", &server.endpoint(), "--only-show-errors"]);
    Ok(c)
}

fn run_aws(server: &StorageServer, data: &Path, dl: &Path, bucket: &str, row: &mut Row) -> anyhow::Result<()> {
    let remote = format!("s3://{bucket}");
    let data_s = data.to_string_lossy().into_owned();
    let dl_s = dl.to_string_lossy().into_owned();
    let (s, rss, _) = timed(aws_cmd(server, &["s3", "sync", &data_s, &remote])?)?;
    row.upload_s = Some(s);
    row.upload_peak_rss_mib = Some(rss);
    let (s, _, _) = timed(aws_cmd(server, &["s3", "sync", &data_s, &remote])?)?;
    row.second_upload_s = Some(s);
    let (s, rss, _) = timed(aws_cmd(server, &["s3", "sync", &remote, &dl_s])?)?;
    row.download_s = Some(s);
    row.download_peak_rss_mib = Some(rss);
    Ok(())
}

/// Every source file has an identical copy in `dl` (compared by SHA-256, outside the timings).
fn verify_same(src: &Path, dl: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(src)? {
        let p = e?.path();
        let name = p.file_name().context("file name")?;
        let copy = dl.join(name);
        if sha256_file(&p)? != sha256_file(&copy).with_context(|| format!("{} is missing", copy.display()))? {
            bail!("{} differs from {}", copy.display(), p.display());
        }
    }
    Ok(())
}

fn mib_s(bytes: u64, secs: Option<f64>) -> String {
    secs.map(|s| format!("{:.0}", bytes as f64 / (1 << 20) as f64 / s)).unwrap_or_else(|| "-".into())
}

fn secs(s: Option<f64>) -> String {
    s.map(|s| format!("{s:.2}")).unwrap_or_else(|| "-".into())
}

fn rss(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (None, None) => "-".into(),
        (a, b) => format!(
            "{} / {}",
            a.map(|x| format!("{x:.0}")).unwrap_or("-".into()),
            b.map(|x| format!("{x:.0}")).unwrap_or("-".into())
        ),
    }
}

/// The median of the figures `f` picks from every run of `tool` in `dataset`.
fn median(rows: &[Row], dataset: &str, tool: &str, f: fn(&Row) -> Option<f64>) -> Option<f64> {
    let mut v: Vec<f64> = rows.iter().filter(|r| r.dataset == dataset && r.tool == tool).filter_map(f).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// One row per tool with the median of each figure over its runs.
fn medians(rows: &[Row]) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    for r in rows {
        if out.iter().any(|o| o.dataset == r.dataset && o.tool == r.tool) {
            continue;
        }
        let m = |f: fn(&Row) -> Option<f64>| median(rows, &r.dataset, &r.tool, f);
        out.push(Row {
            dataset: r.dataset.clone(),
            tool: r.tool.clone(),
            run: rows.iter().filter(|x| x.dataset == r.dataset && x.tool == r.tool).count(),
            bytes: r.bytes,
            upload_s: m(|x| x.upload_s),
            second_upload_s: m(|x| x.second_upload_s),
            download_s: m(|x| x.download_s),
            upload_peak_rss_mib: m(|x| x.upload_peak_rss_mib),
            download_peak_rss_mib: m(|x| x.download_peak_rss_mib),
            note: rows.iter().filter(|x| x.dataset == r.dataset && x.tool == r.tool).find_map(|x| x.note.clone()),
        });
    }
    out
}

fn print_table(all: &[Row]) {
    let rows = &medians(all);
    let runs = rows.first().map(|r| r.run).unwrap_or(0);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nTransfer benchmark: every tool against the same local s3s-fs 0.14.1 server, in one run ({} cores); median of {runs} runs, page cache flushed before each timed step",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let mut datasets: Vec<&str> = rows.iter().map(|r| r.dataset.as_str()).collect();
    datasets.dedup();
    for ds in datasets {
        let _ = writeln!(out, "\n{ds}");
        let _ = writeln!(
            out,
            "| tool | upload s | upload MiB/s | unchanged 2nd upload s | download s | download MiB/s | peak RSS up / down MiB |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        let in_ds: Vec<&Row> = rows.iter().filter(|r| r.dataset == ds).collect();
        for r in &in_ds {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.tool,
                secs(r.upload_s),
                mib_s(r.bytes, r.upload_s),
                secs(r.second_upload_s),
                secs(r.download_s),
                mib_s(r.bytes, r.download_s),
                rss(r.upload_peak_rss_mib, r.download_peak_rss_mib)
            );
        }
        let find = |prefix: &str| in_ds.iter().find(|r| r.tool.starts_with(prefix));
        if let Some(c) = find("cassette") {
            let ratio = |other: Option<&&Row>, f: fn(&Row) -> Option<f64>| -> String {
                match (other.and_then(|o| f(o)), f(c)) {
                    (Some(o), Some(x)) if x > 0.0 => format!("{:.2}x", o / x),
                    _ => "-".into(),
                }
            };
            let _ = writeln!(
                out,
                "cassette vs rclone: upload {} (target >= 1.5x), download {} (target >= 1.5x), unchanged 2nd upload {} (target >= 10x)",
                ratio(find("rclone"), |r| r.upload_s),
                ratio(find("rclone"), |r| r.download_s),
                ratio(find("rclone"), |r| r.second_upload_s),
            );
            let _ = writeln!(
                out,
                "cassette vs aws s3 sync: upload {}, download {}, unchanged 2nd upload {}",
                ratio(find("aws"), |r| r.upload_s),
                ratio(find("aws"), |r| r.download_s),
                ratio(find("aws"), |r| r.second_upload_s),
            );
            let _ = writeln!(
                out,
                "cassette upload throughput relative to raw object_store puts: signed {}, unsigned+crc64 {} (target >= 0.85x)",
                ratio(find("object_store put (signed)"), |r| r.upload_s),
                ratio(find("object_store put (unsigned"), |r| r.upload_s),
            );
        }
        for r in in_ds.iter().filter(|r| r.note.as_deref().is_some_and(|n| !n.starts_with("in-process"))) {
            let _ = writeln!(out, "note: {}: {}", r.tool, r.note.as_deref().unwrap_or_default());
        }
    }
}
