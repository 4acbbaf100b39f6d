//! The `cassette-agent` command line: shared options, configuration, output and progress.
//!
//! Settings come from the config file (`--config`, `CASSETTE_CONFIG`, or
//! `/etc/cassette/agent.toml`), then `CASSETTE_*` variables, then flags: each layer overrides
//! the one before. Commands are thin: they build an [`OpContext`] and call the phase functions of
//! [`cassette_agent::ops`].

pub mod backup;
pub mod catalog;
pub mod commitlog;
pub mod restore;
pub mod serve;
pub mod storage;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cassette_agent::cassandra::{CassandraControl, NodetoolControl};
use cassette_agent::config::AgentConfig;
use cassette_agent::hashcache::HashCache;
use cassette_agent::ops::{CancellationToken, OpContext, OpSettings};
use cassette_agent::storage::config::S3Checksum;
use cassette_agent::storage::{Environment, ProgressSink, Repository};
use cassette_common::ids::HostId;
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
    /// Directory for the agent's own state (hash cache, remembered node identity, manifest cache).
    /// Defaults to /var/lib/cassette-agent when running as root, else ~/.local/state/cassette-agent.
    #[arg(long, global = true, env = "CASSETTE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Config file (TOML). Default: CASSETTE_CONFIG, else /etc/cassette/agent.toml if it exists.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
}

impl GlobalArgs {
    /// The state directory: the flag, else the config file's, else the default.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir_with(None)
    }

    fn state_dir_with(&self, configured: Option<&PathBuf>) -> PathBuf {
        if let Some(d) = self.state_dir.as_ref().or(configured) {
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

    /// Reads the config file and the environment (flags are applied by each command).
    pub fn load_config(&self) -> anyhow::Result<AgentConfig> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Ok(AgentConfig::load(self.config.as_deref(), &env)?)
    }
}

/// Where the repository is and how to reach it.
#[derive(Debug, Args, Clone)]
pub struct StorageArgs {
    /// Repository location: s3://bucket[/prefix], azure://container[/prefix], gs://bucket[/prefix] or
    /// file:///path (also CASSETTE_LOCATION, or `location` in the config file).
    #[arg(long, short = 'l', env = "CASSETTE_LOCATION")]
    pub location: Option<StorageLocation>,
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
    /// Applies the flags over `cfg`.
    pub fn apply(&self, cfg: &mut AgentConfig) {
        if let Some(l) = &self.location {
            cfg.location = Some(l.clone());
        }
        let s = &mut cfg.storage;
        set(&mut s.s3_endpoint, &self.s3_endpoint);
        set(&mut s.s3_region, &self.s3_region);
        if let Some(c) = self.s3_checksum {
            s.s3_checksum = c;
        }
        s.s3_sign_payload |= self.s3_sign_payload;
        s.s3_virtual_hosted_style |= self.s3_virtual_hosted_style;
        set(&mut s.azure_account, &self.azure_account);
        set(&mut s.azure_endpoint, &self.azure_endpoint);
        set(&mut s.proxy, &self.proxy);
        s.allow_http |= self.allow_http;
        if let Some(t) = self.request_timeout {
            s.request_timeout = t;
        }
    }
}

fn set<T: Clone>(target: &mut Option<T>, value: &Option<T>) {
    if let Some(v) = value {
        *target = Some(v.clone());
    }
}

/// Transfer tuning.
#[derive(Debug, Args, Clone)]
pub struct TransferArgs {
    /// Files transferred at once [default: 8].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Bandwidth limit shared by all transfers of this process, e.g. 100MiB/s.
    #[arg(long)]
    pub bandwidth: Option<Rate>,
    /// Part size for multipart uploads and ranged downloads [default: 16 MiB].
    #[arg(long)]
    pub part_size: Option<ByteSize>,
    /// Files larger than this use multipart uploads and ranged downloads [default: 16 MiB].
    #[arg(long)]
    pub multipart_threshold: Option<ByteSize>,
    /// Parts of one file in flight at once [default: 4].
    #[arg(long)]
    pub parts_per_file: Option<usize>,
    /// Most bytes buffered in memory by all transfers together [default: 64 MiB].
    #[arg(long)]
    pub memory_budget: Option<ByteSize>,
    /// Attempts per file before a transient failure is an error [default: 5].
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Hash cache file (default: <state dir>/hash-cache).
    #[arg(long)]
    pub hash_cache: Option<PathBuf>,
    /// Do not read or write the hash cache.
    #[arg(long, conflicts_with = "hash_cache")]
    pub no_hash_cache: bool,
}

impl TransferArgs {
    /// Applies the flags over `cfg`.
    pub fn apply(&self, cfg: &mut AgentConfig) {
        let t = &mut cfg.transfer;
        if let Some(v) = self.concurrency {
            t.concurrency = v;
        }
        if let Some(v) = self.bandwidth {
            t.bandwidth = Some(v);
        }
        if let Some(v) = self.part_size {
            t.part_size = v;
        }
        if let Some(v) = self.multipart_threshold {
            t.multipart_threshold = v;
        }
        if let Some(v) = self.parts_per_file {
            t.parts_per_file = v;
        }
        if let Some(v) = self.memory_budget {
            t.memory_budget = v;
        }
        if let Some(v) = self.max_attempts {
            t.max_attempts = v;
        }
        if let Some(p) = &self.hash_cache {
            cfg.hash_cache.path = Some(p.clone());
        }
    }

    /// The hash cache these flags select.
    /// The hash cache of a long-running process: the configured one, with these flags applied.
    pub fn hash_cache_in(&self, config: &AgentConfig, state_dir: &std::path::Path) -> Arc<HashCache> {
        open_hash_cache(config, state_dir, self.no_hash_cache)
    }

    pub fn hash_cache(&self, global: &GlobalArgs) -> Arc<HashCache> {
        let mut c = AgentConfig::default();
        self.apply(&mut c);
        open_hash_cache(&c, &global.state_dir(), self.no_hash_cache)
    }
}

fn open_hash_cache(cfg: &AgentConfig, state_dir: &std::path::Path, disabled: bool) -> Arc<HashCache> {
    if disabled {
        return Arc::new(HashCache::in_memory());
    }
    let mut hc = cfg.hash_cache.clone();
    if hc.path.is_none() {
        hc.path = Some(state_dir.join("hash-cache"));
    }
    Arc::new(HashCache::open(hc))
}

/// How to reach the local Cassandra node (more in the `[cassandra]` section of the config file).
#[derive(Debug, Args, Clone)]
pub struct CassandraArgs {
    /// The nodetool program [default: nodetool, from PATH].
    #[arg(long)]
    pub nodetool: Option<PathBuf>,
    /// The cqlsh program [default: cqlsh, from PATH].
    #[arg(long)]
    pub cqlsh: Option<PathBuf>,
    /// JMX host nodetool connects to [default: 127.0.0.1].
    #[arg(long)]
    pub jmx_host: Option<String>,
    /// JMX port [default: 7199].
    #[arg(long)]
    pub jmx_port: Option<u16>,
    /// CQL host cqlsh connects to [default: 127.0.0.1].
    #[arg(long)]
    pub cql_host: Option<String>,
    /// The node's cassandra.yaml (directories when the node cannot tell them; tokens for in-place restores).
    #[arg(long)]
    pub cassandra_yaml: Option<PathBuf>,
    /// A data directory, overriding discovery (repeat for each, in the node's order).
    #[arg(long = "data-dir")]
    pub data_dirs: Vec<PathBuf>,
    /// The commit-log directory, overriding discovery.
    #[arg(long)]
    pub commitlog_dir: Option<PathBuf>,
}

impl CassandraArgs {
    /// Applies the flags over `cfg`.
    pub fn apply(&self, cfg: &mut AgentConfig) {
        let c = &mut cfg.cassandra;
        if let Some(v) = &self.nodetool {
            c.nodetool = v.clone();
        }
        if let Some(v) = &self.cqlsh {
            c.cqlsh = v.clone();
        }
        if let Some(v) = &self.jmx_host {
            c.jmx_host = v.clone();
        }
        if let Some(v) = self.jmx_port {
            c.jmx_port = v;
        }
        if let Some(v) = &self.cql_host {
            c.cql_host = v.clone();
        }
        set(&mut c.cassandra_yaml, &self.cassandra_yaml);
        if !self.data_dirs.is_empty() {
            c.data_file_directories = self.data_dirs.clone();
        }
        set(&mut c.commitlog_directory, &self.commitlog_dir);
    }
}

/// Which node, when Cassandra cannot be asked or another node's backups are meant.
#[derive(Debug, Args, Clone)]
pub struct NodeArgs {
    /// Cluster name as Cassandra reports it (default: asked from the node, or remembered).
    #[arg(long, env = "CASSETTE_CLUSTER")]
    pub cluster: Option<String>,
    /// Cassandra host id of the node (default: asked from the node, or remembered).
    #[arg(long, env = "CASSETTE_HOST_ID")]
    pub host_id: Option<HostId>,
}

impl NodeArgs {
    /// Applies the flags over `cfg`.
    pub fn apply(&self, cfg: &mut AgentConfig) {
        set(&mut cfg.node.cluster, &self.cluster);
        set(&mut cfg.node.host_id, &self.host_id);
    }
}

/// A command's resolved settings and the context for its operation.
pub struct Session {
    /// The final configuration.
    pub config: AgentConfig,
    /// The operation context.
    pub ctx: OpContext,
    /// The progress bar.
    pub bar: Arc<BarSink>,
}

/// Builds the context of a command from the final configuration: validates everything at once,
/// connects the repository (no network I/O yet), the Cassandra adapter, the hash cache, and a
/// cancellation token wired to Ctrl-C and SIGTERM.
pub fn session(
    global: &GlobalArgs,
    mut config: AgentConfig,
    verb: &str,
    memory_hash_cache: bool,
) -> anyhow::Result<Session> {
    let state_dir = global.state_dir_with(config.state_dir.as_ref());
    config.state_dir = Some(state_dir.clone());
    config.validate()?;
    let location = config.location.clone().context(
        "no repository location: pass --location, set CASSETTE_LOCATION, or set `location` in the config file",
    )?;
    let repo = Repository::connect(&location, &config.storage, &config.transfer, &Environment::capture())?;
    let cassandra: Arc<dyn CassandraControl> = Arc::new(NodetoolControl::new(config.cassandra.clone())?);
    let bar = BarSink::new(verb, global.output);
    let cancel = CancellationToken::new();
    watch_signals(cancel.clone(), Arc::clone(&bar));
    let ctx = OpContext {
        repo,
        transfer: config.transfer.clone(),
        hash_cache: open_hash_cache(&config, &state_dir, memory_hash_cache),
        cassandra,
        progress: Arc::clone(&bar) as Arc<dyn ProgressSink>,
        cancel,
        settings: OpSettings {
            locks: config.locks.clone(),
            removal: config.removal.clone(),
            manifests: config.manifests.clone(),
            state_dir: Some(state_dir),
            node: config.node.clone(),
        },
    };
    Ok(Session { config, ctx, bar })
}

/// The first Ctrl-C (or SIGTERM) cancels the operation, which then cleans up (clears its
/// snapshot, releases its lock) and stops; a second one exits at once.
fn watch_signals(cancel: CancellationToken, bar: Arc<BarSink>) {
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        bar.message("interrupted: stopping and cleaning up (interrupt again to exit at once)");
        cancel.cancel();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        std::process::exit(130);
    });
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Human-readable bytes.
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

/// A progress bar on stderr, drawn only for text output on a terminal. Step messages go to stderr
/// for text output (above the bar on a terminal), never for JSON.
#[derive(Debug)]
pub struct BarSink {
    bar: ProgressBar,
    text: bool,
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
        Arc::new(Self {
            bar,
            text: format == OutputFormat::Text,
            files_total: Default::default(),
            files_done: Default::default(),
        })
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
    fn message(&self, text: &str) {
        if !self.text {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}
