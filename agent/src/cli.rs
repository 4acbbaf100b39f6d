//! The `cassette-agent` command line: shared options, output and progress.

pub mod serve;
pub mod storage;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cassette_agent::hashcache::{HashCache, HashCacheConfig};
use cassette_agent::storage::config::S3Checksum;
use cassette_agent::storage::{ProgressSink, StorageConfig, TransferConfig};
use cassette_common::location::StorageLocation;
use cassette_common::units::{ByteSize, Rate};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// Human-readable text (and progress bars on a terminal).
    #[default]
    Text,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// Options every command has.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t, env = "CASSETTE_OUTPUT")]
    pub output: OutputFormat,
    /// Directory for the agent's own state (hash cache, job records).
    /// Defaults to /var/lib/cassette-agent when running as root, else ~/.local/state/cassette-agent.
    #[arg(long, global = true, env = "CASSETTE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

impl GlobalArgs {
    /// The state directory, created if needed.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(d) = &self.state_dir {
            return d.clone();
        }
        let is_root =
            std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false);
        if is_root {
            return PathBuf::from("/var/lib/cassette-agent");
        }
        std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("."))
            .join("cassette-agent")
    }
}

/// Where the repository is and how to reach it.
#[derive(Debug, Args, Clone)]
pub struct StorageArgs {
    /// Repository location: s3://bucket[/prefix], azure://container[/prefix], gs://bucket[/prefix] or file:///path.
    #[arg(long, short = 'l', env = "CASSETTE_LOCATION")]
    pub location: StorageLocation,
    /// Endpoint of an S3-compatible store (Ceph RGW, MinIO, …); overrides AWS_ENDPOINT_URL. Uses path-style requests.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, AWS_DEFAULT_REGION, the AWS config file, then us-east-1).
    #[arg(long)]
    pub s3_region: Option<String>,
    /// Checksum sent with S3 uploads and verified by the server.
    #[arg(long, value_enum)]
    pub s3_checksum: Option<S3Checksum>,
    /// Sign request bodies (an extra SHA-256 pass; the checksum already protects them).
    #[arg(long)]
    pub s3_sign_payload: bool,
    /// Use virtual-hosted-style requests with a custom S3 endpoint.
    #[arg(long)]
    pub s3_virtual_hosted_style: bool,
    /// Azure storage account (default: AZURE_STORAGE_ACCOUNT_NAME).
    #[arg(long)]
    pub azure_account: Option<String>,
    /// Azure blob endpoint (Azure Stack, sovereign clouds, Azurite).
    #[arg(long)]
    pub azure_endpoint: Option<String>,
    /// HTTP(S) proxy for storage requests (default: HTTPS_PROXY).
    #[arg(long)]
    pub proxy: Option<String>,
    /// Allow plain-HTTP endpoints.
    #[arg(long)]
    pub allow_http: bool,
    /// Time allowed for one storage request.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub request_timeout: Option<Duration>,
}

impl StorageArgs {
    /// The client settings these flags describe.
    pub fn config(&self) -> StorageConfig {
        let d = StorageConfig::default();
        StorageConfig {
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_virtual_hosted_style: self.s3_virtual_hosted_style,
            s3_checksum: self.s3_checksum.unwrap_or(d.s3_checksum),
            s3_sign_payload: self.s3_sign_payload,
            azure_account: self.azure_account.clone(),
            azure_endpoint: self.azure_endpoint.clone(),
            proxy: self.proxy.clone(),
            allow_http: self.allow_http,
            request_timeout: self.request_timeout.unwrap_or(d.request_timeout),
            ..d
        }
    }
}

/// Transfer tuning.
#[derive(Debug, Args, Clone)]
pub struct TransferArgs {
    /// Files transferred at once.
    #[arg(long, default_value_t = TransferConfig::default().concurrency)]
    pub concurrency: usize,
    /// Bandwidth limit shared by all transfers of this process, e.g. 100MiB/s.
    #[arg(long)]
    pub bandwidth: Option<Rate>,
    /// Part size for multipart uploads and ranged downloads.
    #[arg(long, default_value_t = TransferConfig::default().part_size)]
    pub part_size: ByteSize,
    /// Files larger than this use multipart uploads and ranged downloads.
    #[arg(long, default_value_t = TransferConfig::default().multipart_threshold)]
    pub multipart_threshold: ByteSize,
    /// Parts of one file in flight at once.
    #[arg(long, default_value_t = TransferConfig::default().parts_per_file)]
    pub parts_per_file: usize,
    /// Most bytes buffered in memory by all transfers together.
    #[arg(long, default_value_t = TransferConfig::default().memory_budget)]
    pub memory_budget: ByteSize,
    /// Attempts per file before a transient failure is an error.
    #[arg(long, default_value_t = TransferConfig::default().max_attempts)]
    pub max_attempts: u32,
    /// Hash cache file (default: <state dir>/hash-cache).
    #[arg(long)]
    pub hash_cache: Option<PathBuf>,
    /// Do not read or write the hash cache.
    #[arg(long, conflicts_with = "hash_cache")]
    pub no_hash_cache: bool,
}

impl TransferArgs {
    /// The transfer settings these flags describe.
    pub fn config(&self) -> TransferConfig {
        TransferConfig {
            concurrency: self.concurrency,
            bandwidth: self.bandwidth,
            part_size: self.part_size,
            multipart_threshold: self.multipart_threshold,
            parts_per_file: self.parts_per_file,
            memory_budget: self.memory_budget,
            max_attempts: self.max_attempts,
            ..TransferConfig::default()
        }
    }

    /// The hash cache these flags select.
    pub fn hash_cache(&self, global: &GlobalArgs) -> Arc<HashCache> {
        if self.no_hash_cache {
            return Arc::new(HashCache::in_memory());
        }
        let path = self.hash_cache.clone().unwrap_or_else(|| global.state_dir().join("hash-cache"));
        Arc::new(HashCache::open(HashCacheConfig { path: Some(path), ..HashCacheConfig::default() }))
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A progress bar on stderr, drawn only for text output on a terminal.
#[derive(Debug)]
pub struct BarSink {
    bar: ProgressBar,
    files_total: std::sync::atomic::AtomicU64,
    files_done: std::sync::atomic::AtomicU64,
}

impl BarSink {
    /// A bar labelled `verb` ("upload", "download"), hidden unless `format` is text and stderr a terminal.
    pub fn new(verb: &str, format: OutputFormat) -> Arc<Self> {
        let bar = if format == OutputFormat::Text && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            let template =
                format!("{verb} {{msg}} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}} ETA {{eta}}");
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        } else {
            ProgressBar::hidden()
        };
        Arc::new(Self { bar, files_total: Default::default(), files_done: Default::default() })
    }

    fn update_message(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.bar.set_message(format!("{}/{} files", self.files_done.load(Relaxed), self.files_total.load(Relaxed)));
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl ProgressSink for BarSink {
    fn add_total(&self, files: u64, bytes: u64) {
        self.files_total.fetch_add(files, std::sync::atomic::Ordering::Relaxed);
        self.bar.inc_length(bytes);
        self.update_message();
    }
    fn transferred(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
    fn file_finished(&self, _path: &std::path::Path, size: u64, skipped: bool) {
        if skipped {
            self.bar.inc(size);
        }
        self.files_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.update_message();
    }
}
