//! `cassette-agent storage …`: use a storage location directly.
//!
//! These are plumbing commands for operators and scripts: check that a node can reach and write
//! a location, store files as verified blobs, and fetch them back verified. Backups and restores
//! use the same engine.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use cassette_agent::storage::engine::{DownloadItem, FailureSummary};
use cassette_agent::storage::{Environment, Repository, StoreError, TransferEngine, TransferStats};
use cassette_common::ids::BlobHash;
use clap::{Args, Subcommand};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use super::{BarSink, GlobalArgs, OutputFormat, StorageArgs, TransferArgs, print_json};

/// Storage commands.
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Check that a location is reachable, and whether this node can read, write and delete there.
    Check(CheckArgs),
    /// Create the repository marker at a location (backups do this on their own).
    Init(InitArgs),
    /// Store files (directories recursively) as verified, deduplicated blobs and print their hashes.
    Put(PutArgs),
    /// Fetch blobs into local files, verifying every byte.
    Get(GetArgs),
}

/// `storage check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// Only read: do not write and delete a probe object.
    #[arg(long)]
    read_only: bool,
}

/// `storage init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    storage: StorageArgs,
}

/// `storage put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    transfer: TransferArgs,
    /// Files or directories to store. Directories are walked recursively; files keep their path
    /// relative to the directory given.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// `storage get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    transfer: TransferArgs,
    /// A list of blobs to fetch: the JSON printed by `storage put --output json` ("-" for stdin).
    #[arg(long, required_unless_present = "sha256", conflicts_with = "sha256")]
    list: Option<PathBuf>,
    /// Directory the listed files are placed under (with their relative paths).
    #[arg(long, requires = "list")]
    to: Option<PathBuf>,
    /// Fetch a single blob by its SHA-256 …
    #[arg(long, requires = "output_file")]
    sha256: Option<BlobHash>,
    /// … into this file.
    #[arg(long, short = 'o')]
    output_file: Option<PathBuf>,
}

/// The document `put` prints and `get --list` reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct BlobList {
    /// Where the blobs are.
    pub location: String,
    /// The files.
    pub files: Vec<ListedFile>,
    /// Counters of the upload (absent when the list is written by hand).
    #[serde(default, skip_deserializing)]
    pub stats: Option<TransferStats>,
    /// Files that could not be stored.
    #[serde(default, skip_deserializing)]
    pub failures: Vec<FailureSummary>,
}

/// One file of a [`BlobList`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListedFile {
    /// Relative path.
    pub path: String,
    /// SHA-256 of the content.
    pub sha256: BlobHash,
    /// Size in bytes.
    pub size: u64,
    /// Whether `put` sent it (false: the blob was already stored).
    #[serde(default)]
    pub uploaded: bool,
}

/// Runs a storage command; returns the process exit code.
pub async fn run(cmd: StorageCommand, global: &GlobalArgs) -> anyhow::Result<i32> {
    match cmd {
        StorageCommand::Check(a) => check(a, global).await,
        StorageCommand::Init(a) => init(a, global).await,
        StorageCommand::Put(a) => put(a, global).await,
        StorageCommand::Get(a) => get(a, global).await,
    }
}

/// The repository and transfer settings: config file, environment, then these flags.
fn connect(
    global: &GlobalArgs,
    storage: &StorageArgs,
    transfer: Option<&TransferArgs>,
) -> anyhow::Result<(Repository, cassette_agent::storage::TransferConfig)> {
    let mut cfg = global.load_config()?;
    storage.apply(&mut cfg);
    if let Some(t) = transfer {
        t.apply(&mut cfg);
    }
    cfg.validate()?;
    let location = cfg.location.clone().context(
        "no repository location: pass --location, set CASSETTE_LOCATION, or set `location` in the config file",
    )?;
    let repo = Repository::connect(&location, &cfg.storage, &cfg.transfer, &Environment::capture())?;
    Ok((repo, cfg.transfer))
}

#[derive(Debug, Serialize)]
struct CheckReport {
    location: String,
    reachable: bool,
    /// Layout version of the repository there, or null if none was created yet.
    layout_version: Option<u32>,
    can_write: Option<bool>,
    can_delete: Option<bool>,
    /// Whether create-only writes (`If-None-Match: *`) are refused when the key exists, as
    /// manifests, index entries and locks rely on.
    create_only: Option<bool>,
    latency_ms: u128,
    problems: Vec<String>,
}

async fn check(a: CheckArgs, global: &GlobalArgs) -> anyhow::Result<i32> {
    let (repo, _) = connect(global, &a.storage, None)?;
    let start = Instant::now();
    let mut report = CheckReport {
        location: repo.location().to_string(),
        reachable: false,
        layout_version: None,
        can_write: None,
        can_delete: None,
        create_only: None,
        latency_ms: 0,
        problems: vec![],
    };
    match repo.open_existing().await {
        Ok(m) => {
            report.reachable = true;
            report.layout_version = Some(m.layout_version);
        }
        Err(StoreError::NotARepository { .. }) => report.reachable = true,
        Err(e) => report.problems.push(e.to_string()),
    }
    report.latency_ms = start.elapsed().as_millis();
    if report.reachable && !a.read_only {
        let key = format!("probes/{}-{}-{:08x}", hostname(), std::process::id(), rand::random::<u32>());
        let path = ObjectPath::from(key.as_str());
        match repo.store().put(&path, b"cassette write probe".to_vec().into()).await {
            Ok(_) => {
                report.can_write = Some(true);
                match repo.store().delete(&path).await {
                    Ok(()) => report.can_delete = Some(true),
                    Err(e) => {
                        report.can_delete = Some(false);
                        report
                            .problems
                            .push(format!("delete probe {key}: {e} (purges will not be able to remove old backups)"));
                    }
                }
            }
            Err(e) => {
                report.can_write = Some(false);
                report.problems.push(StoreError::remote("write probe", key.as_str(), &report.location, e).to_string());
            }
        }
        if report.can_write == Some(true) {
            let key = format!("{key}.create-only");
            match repo.probe_create_only(&key).await {
                Ok(honoured) => {
                    report.create_only = Some(honoured);
                    if !honoured {
                        report.problems.push(format!("probe {key}: {}", Repository::IGNORES_CREATE_ONLY));
                    }
                }
                Err(e) => report.problems.push(format!("create-only probe: {e}")),
            }
        }
    }
    let ok = report.problems.is_empty();
    match global.output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            println!("location:  {}", report.location);
            println!("reachable: {} ({} ms)", yes_no(report.reachable), report.latency_ms);
            match report.layout_version {
                Some(v) => println!("layout:    version {v}"),
                None if report.reachable => println!("layout:    no repository yet (the first backup creates it)"),
                None => {}
            }
            if let Some(w) = report.can_write {
                println!("write:     {}", yes_no(w));
            }
            if let Some(d) = report.can_delete {
                println!("delete:    {}", yes_no(d));
            }
            if let Some(c) = report.create_only {
                println!("create-only writes refused when the key exists (If-None-Match): {}", yes_no(c));
            }
            for p in &report.problems {
                eprintln!("error: {p}");
            }
        }
    }
    Ok(if ok { 0 } else { 1 })
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

async fn init(a: InitArgs, global: &GlobalArgs) -> anyhow::Result<i32> {
    let (repo, _) = connect(global, &a.storage, None)?;
    let marker = repo.init().await?;
    match global.output {
        OutputFormat::Json => print_json(&marker)?,
        OutputFormat::Text => println!(
            "repository at {} uses layout version {} (created {} by {})",
            repo.location(),
            marker.layout_version,
            marker.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
            marker.created_by
        ),
    }
    Ok(0)
}

/// Every regular file under the given paths, with its path relative to the argument it came from.
fn collect_files(args: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut seen = BTreeMap::new();
    for arg in args {
        let meta = std::fs::metadata(arg).with_context(|| format!("cannot read {}", arg.display()))?;
        if meta.is_dir() {
            walk(arg, arg, &mut out)?;
        } else if meta.is_file() {
            let name = arg.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            out.push((arg.clone(), name));
        } else {
            bail!("{} is neither a regular file nor a directory", arg.display());
        }
    }
    for (path, rel) in &out {
        if let Some(prev) = seen.insert(rel.clone(), path.clone()) {
            bail!(
                "{} and {} would both be stored as {rel}: pass their directories separately",
                prev.display(),
                path.display()
            );
        }
    }
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let ft = e.file_type().with_context(|| format!("cannot stat {}", path.display()))?;
        if ft.is_dir() {
            walk(root, &path, out)?;
        } else if ft.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            out.push((path, rel));
        }
    }
    Ok(())
}

async fn put(a: PutArgs, global: &GlobalArgs) -> anyhow::Result<i32> {
    let files = collect_files(&a.paths)?;
    let (repo, transfer) = connect(global, &a.storage, Some(&a.transfer))?;
    repo.init().await?;
    let bar = BarSink::new("upload", global.output);
    let engine = TransferEngine::new(repo, a.transfer.hash_cache(global), transfer, Arc::clone(&bar) as _)?;
    let rel_of: BTreeMap<PathBuf, String> = files.iter().cloned().collect();
    let start = Instant::now();
    let report = engine.upload_files(files.into_iter().map(|(p, _)| p).collect()).await;
    let elapsed = start.elapsed();
    bar.finish();
    let mut listed: Vec<ListedFile> = report
        .files
        .iter()
        .map(|f| ListedFile {
            path: rel_of.get(&f.path).cloned().unwrap_or_else(|| f.path.to_string_lossy().into_owned()),
            sha256: f.sha256,
            size: f.size,
            uploaded: f.uploaded,
        })
        .collect();
    listed.sort_by(|x, y| x.path.cmp(&y.path));
    let doc = BlobList {
        location: engine.repository().location().to_string(),
        files: listed,
        stats: Some(report.stats),
        failures: report.failures.iter().map(FailureSummary::from).collect(),
    };
    match global.output {
        OutputFormat::Json => print_json(&doc)?,
        OutputFormat::Text => {
            let s = report.stats;
            println!(
                "stored {} files ({}) in {:.1}s: {} sent ({}), {} already stored ({})",
                doc.files.len(),
                bytes(s.bytes_total),
                elapsed.as_secs_f64(),
                s.files_transferred,
                bytes(s.bytes_transferred),
                s.files_skipped,
                bytes(s.bytes_skipped)
            );
            for f in &doc.failures {
                eprintln!("error: {}: {}", f.path.display(), f.error);
            }
        }
    }
    Ok(if doc.failures.is_empty() { 0 } else { 1 })
}

/// A relative path from a list must stay under the target directory.
fn safe_relative(p: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(p);
    let ok = !p.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_))) && !p.contains('\\');
    if !ok {
        bail!("list entry {p:?} is not a plain relative path (no '..', '.', or leading '/'); refusing to write it");
    }
    Ok(path.to_owned())
}

async fn get(a: GetArgs, global: &GlobalArgs) -> anyhow::Result<i32> {
    let (repo, transfer) = connect(global, &a.storage, Some(&a.transfer))?;
    repo.open_existing().await?;
    let items = match (&a.list, &a.sha256) {
        (Some(list), _) => {
            let to = a.to.clone().context("--to DIR is needed with --list")?;
            let text = if list.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read the list from stdin")?
            } else {
                std::fs::read_to_string(list).with_context(|| format!("cannot read {}", list.display()))?
            };
            let doc: BlobList = serde_json::from_str(&text).with_context(|| {
                format!("{} is not a blob list (the JSON printed by `storage put --output json`)", list.display())
            })?;
            let mut items = Vec::with_capacity(doc.files.len());
            for f in doc.files {
                items.push(DownloadItem::new(f.sha256, f.size, to.join(safe_relative(&f.path)?)));
            }
            items
        }
        (None, Some(hash)) => {
            let size = repo
                .blob_size(hash)
                .await?
                .with_context(|| format!("blob {hash} is not stored at {}", repo.location()))?;
            let dest = a.output_file.clone().context("--output-file is needed with --sha256")?;
            vec![DownloadItem::new(*hash, size, dest)]
        }
        (None, None) => bail!("give --list FILE --to DIR, or --sha256 HASH -o FILE"),
    };
    let bar = BarSink::new("download", global.output);
    let engine = TransferEngine::new(repo, a.transfer.hash_cache(global), transfer, Arc::clone(&bar) as _)?;
    let start = Instant::now();
    let report = engine.download_files(items).await;
    let elapsed = start.elapsed();
    bar.finish();
    let failures: Vec<FailureSummary> = report.failures.iter().map(FailureSummary::from).collect();
    match global.output {
        OutputFormat::Json => print_json(&serde_json::json!({
            "location": engine.repository().location().to_string(),
            "files": report.files,
            "stats": report.stats,
            "failures": failures,
        }))?,
        OutputFormat::Text => {
            let s = report.stats;
            println!(
                "placed {} files ({}) in {:.1}s: {} fetched and verified ({}), {} already in place",
                report.files.len(),
                bytes(s.bytes_total),
                elapsed.as_secs_f64(),
                s.files_transferred,
                bytes(s.bytes_transferred),
                s.files_skipped
            );
            for f in &failures {
                eprintln!("error: {}: {}", f.path.display(), f.error);
            }
        }
    }
    Ok(if failures.is_empty() { 0 } else { 1 })
}

fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_paths_cannot_escape() {
        for bad in ["../x", "/etc/passwd", "a/../../b", "./a", "", "a\\b"] {
            assert!(safe_relative(bad).is_err(), "{bad:?}");
        }
        assert_eq!(safe_relative("ks/t/nb-1-big-Data.db").unwrap(), PathBuf::from("ks/t/nb-1-big-Data.db"));
    }

    #[test]
    fn collects_directories_recursively_with_relative_paths() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/x"), b"1").unwrap();
        std::fs::write(d.path().join("a/y"), b"2").unwrap();
        let single = d.path().join("single");
        std::fs::write(&single, b"3").unwrap();
        let files = collect_files(&[d.path().join("a"), single]).unwrap();
        let rels: Vec<&str> = files.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(rels, vec!["b/x", "y", "single"]);
        let e = collect_files(&[d.path().join("a/y"), d.path().join("a/y")]).unwrap_err().to_string();
        assert!(e.contains("would both be stored as y"), "{e}");
    }
}
