//! One emulated Cassandra node, a storage server, and the real `cassette-agent` binary pointed at
//! both through a config file: what the single-node tests drive.
//!
//! ```ignore
//! let Some(env) = NodeEnv::start("t40", env!("CARGO_BIN_EXE_cassandra-emulator"), Backend::S3sFs, &spec)? else { return };
//! let report = env.agent_ok(&["backup"]);
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use cassette_agent::cassandra::NodetoolControl;
use cassette_agent::config::AgentConfig;
use cassette_agent::hashcache::HashCache;
use cassette_agent::ops::{CancellationToken, OpContext, OpSettings};
use cassette_agent::storage::NoProgress;
use cassette_agent::storage::{Repository, TransferConfig};
use cassette_common::datadir::{FileKind, TableFile};
use cassette_common::hash::sha256_file;
use cassette_common::ids::BlobHash;
use cassette_common::units::ByteSize;

use crate::emulator::ClusterSpec;
use crate::harness::EmulatedCluster;
use crate::servers::{Backend, StorageServer};
use crate::tools::workspace_binary;

/// What one run of the agent printed.
#[derive(Debug, Clone)]
pub struct AgentRun {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl AgentRun {
    /// Standard output as JSON (the commands print one document with `--output json`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// The error message (`{"error": …}` on stdout, `error: …` on stderr).
    pub fn error(&self) -> String {
        self.json().get("error").and_then(|e| e.as_str()).map(str::to_owned).unwrap_or_else(|| self.stderr.clone())
    }
}

/// The `cassette-agent` command line: a binary, a config file and the storage credentials.
#[derive(Debug, Clone)]
pub struct AgentCli {
    /// The binary.
    pub bin: PathBuf,
    /// The config file (`--config`).
    pub config: PathBuf,
    /// Environment for the child (storage credentials and endpoint).
    pub env: Vec<(String, String)>,
}

impl AgentCli {
    /// An agent command line.
    pub fn new(bin: &Path, config: &Path, env: Vec<(String, String)>) -> Self {
        Self { bin: bin.to_owned(), config: config.to_owned(), env }
    }

    /// The command, with `--output json` unless the arguments choose.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(&self.config);
        if !args.contains(&"--output") {
            cmd.arg("--output").arg("json");
        }
        cmd.args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.env_remove("CASSETTE_LOCATION").env_remove("CASSETTE_STATE_DIR").env_remove("CASSETTE_OUTPUT");
        cmd
    }

    /// Runs the agent to completion.
    pub fn run(&self, args: &[&str]) -> AgentRun {
        let out = match self.command(args).output() {
            Ok(o) => o,
            Err(e) => panic!("cannot run {}: {e}", self.bin.display()),
        };
        let run = AgentRun {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!("    $ cassette-agent {} -> exit {}", args.join(" "), run.code);
        run
    }

    /// Runs the agent; panics unless it exits 0; returns its JSON report.
    pub fn ok(&self, args: &[&str]) -> serde_json::Value {
        let r = self.run(args);
        assert_eq!(r.code, 0, "cassette-agent {} failed:\nstdout: {}\nstderr: {}", args.join(" "), r.stdout, r.stderr);
        r.json()
    }

    /// Runs the agent; panics if it exits 0; returns the run.
    pub fn err(&self, args: &[&str]) -> AgentRun {
        let r = self.run(args);
        assert_ne!(r.code, 0, "cassette-agent {} should have failed:\nstdout: {}", args.join(" "), r.stdout);
        r
    }
}

/// An emulated cluster (node `127.0.0.1` is the agent's), a storage server and an agent config.
#[derive(Debug)]
pub struct NodeEnv {
    /// The emulated cluster.
    pub cluster: EmulatedCluster,
    /// The storage server.
    pub server: StorageServer,
    /// Repository prefix on the server.
    pub prefix: String,
    /// State directory, config, scratch space.
    pub dir: tempfile::TempDir,
    /// The agent's config file.
    pub config_path: PathBuf,
    /// The `cassette-agent` binary.
    pub agent_bin: PathBuf,
    /// The node the agent runs on.
    pub address: String,
}

impl NodeEnv {
    /// Creates a cluster, starts the storage server (`Ok(None)`: skipped, a message was printed)
    /// and writes the agent's config for node `127.0.0.1`.
    pub fn start(test: &str, emulator_bin: &str, backend: Backend, spec: &ClusterSpec) -> anyhow::Result<Option<Self>> {
        let Some(server) = StorageServer::start(backend, test)? else { return Ok(None) };
        let cluster = EmulatedCluster::create(emulator_bin, spec)?;
        let dir = tempfile::Builder::new().prefix("cassette-node-").tempdir()?;
        let env = Self {
            cluster,
            server,
            // Short: s3s-fs stores metadata in files named after the whole key (255-byte limit).
            prefix: format!("{}-{:06x}", test.split('_').next().unwrap_or("t"), rand::random::<u32>() >> 8),
            config_path: dir.path().join("agent.toml"),
            dir,
            agent_bin: workspace_binary("cassette-agent", "cassette-agent"),
            address: "127.0.0.1".into(),
        };
        let cfg = env.base_config()?;
        env.write_config(&cfg)?;
        Ok(Some(env))
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Transfer settings small enough that a few MiB exercise multipart uploads and ranged reads.
    pub fn transfer() -> TransferConfig {
        TransferConfig {
            concurrency: 4,
            multipart_threshold: ByteSize(5 << 20),
            part_size: ByteSize(5 << 20),
            parts_per_file: 2,
            memory_budget: ByteSize(32 << 20),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(300),
            ..TransferConfig::default()
        }
    }

    /// The config every test starts from: the location and server, the node's tools and
    /// cassandra.yaml, short lock timings.
    pub fn base_config(&self) -> anyhow::Result<AgentConfig> {
        let mut cassandra = self.cluster.cassandra_config(&self.address);
        cassandra.cassandra_yaml = Some(self.cluster.write_cassandra_yaml(&self.address)?);
        let mut cfg = AgentConfig {
            location: Some(self.server.location(&self.prefix)),
            state_dir: Some(self.state_dir()),
            storage: self.server.storage_config(),
            transfer: Self::transfer(),
            cassandra,
            ..AgentConfig::default()
        };
        cfg.locks.refresh = Duration::from_millis(500);
        cfg.locks.stale_after = Duration::from_secs(10);
        cfg.locks.poll = Duration::from_millis(200);
        cfg.locks.wait = Duration::from_secs(60);
        Ok(cfg)
    }

    /// Writes the agent's config file.
    pub fn write_config(&self, cfg: &AgentConfig) -> anyhow::Result<()> {
        std::fs::write(&self.config_path, toml::to_string(cfg).context("serialize the agent config")?)?;
        Ok(())
    }

    /// The agent's command line with this env's config and server credentials.
    pub fn cli(&self) -> AgentCli {
        AgentCli::new(&self.agent_bin, &self.config_path, self.server.env_vars())
    }

    /// A command line for the agent with this env's config and server credentials.
    pub fn command(&self, args: &[&str]) -> Command {
        self.cli().command(args)
    }

    /// A command line for the agent with another config file (an agent of another node).
    pub fn command_with(&self, config: &Path, args: &[&str]) -> Command {
        AgentCli::new(&self.agent_bin, config, self.server.env_vars()).command(args)
    }

    /// Runs the agent to completion.
    pub fn agent(&self, args: &[&str]) -> AgentRun {
        self.cli().run(args)
    }

    /// Runs the agent; panics unless it exits 0; returns its JSON report.
    pub fn agent_ok(&self, args: &[&str]) -> serde_json::Value {
        self.cli().ok(args)
    }

    /// Runs the agent; panics if it exits 0; returns the run.
    pub fn agent_err(&self, args: &[&str]) -> AgentRun {
        self.cli().err(args)
    }

    /// The repository, through the library.
    pub fn repo(&self) -> Repository {
        self.server.repository(&self.prefix, &Self::transfer())
    }

    /// An operation context for calling the agent library directly, over `store` (the
    /// repository's own store, or a decorator of it) and with `cfg`'s settings.
    pub fn context(&self, cfg: &AgentConfig, store: std::sync::Arc<dyn object_store::ObjectStore>) -> OpContext {
        let control = match NodetoolControl::new(cfg.cassandra.clone()) {
            Ok(c) => c,
            Err(e) => panic!("cassandra adapter: {e}"),
        };
        OpContext {
            repo: Repository::new(self.server.location(&self.prefix), store),
            transfer: cfg.transfer.clone(),
            hash_cache: std::sync::Arc::new(HashCache::in_memory()),
            cassandra: std::sync::Arc::new(control),
            progress: std::sync::Arc::new(NoProgress),
            cancel: CancellationToken::new(),
            settings: OpSettings {
                locks: cfg.locks.clone(),
                removal: cfg.removal.clone(),
                manifests: cfg.manifests.clone(),
                state_dir: cfg.state_dir.clone(),
                node: cfg.node.clone(),
            },
        }
    }

    /// Runs an emulator admin command.
    pub fn admin(&self, args: &[&str]) -> String {
        match self.cluster.admin(args) {
            Ok(o) => o,
            Err(e) => panic!("emulator admin {}: {e:#}", args.join(" ")),
        }
    }

    /// The node's data roots (data directories, then the local system one).
    pub fn roots(&self) -> Vec<PathBuf> {
        let c = self.cluster.cluster().unwrap_or_else(|e| panic!("{e:#}"));
        let n =
            c.nodes.iter().find(|n| n.address == self.address).unwrap_or_else(|| panic!("no node {}", self.address));
        n.roots()
    }
}

/// Every live SSTable component of a table on a node (all data roots, index directories included,
/// not snapshots or backups): relative path prefixed with the root index → content hash.
pub fn live_files(roots: &[PathBuf], keyspace: &str) -> BTreeMap<String, (BlobHash, u64)> {
    let mut out = BTreeMap::new();
    for (i, root) in roots.iter().enumerate() {
        let ks = root.join(keyspace);
        walk(&ks, &mut |p| {
            let Ok(rel) = p.strip_prefix(root) else { return };
            let rel = rel.to_string_lossy().into_owned();
            let Ok(tf) = TableFile::parse(&rel) else { return };
            if tf.area != cassette_common::datadir::Area::Live || !matches!(tf.kind, FileKind::Sstable(_)) {
                return;
            }
            if let Ok((h, n)) = sha256_file(p) {
                out.insert(format!("{i}:{rel}"), (h, n));
            }
        });
    }
    out
}

/// A table's content whatever the SSTable names: the sorted (table directory, index, component,
/// hash) of every live file. Imports rename SSTables, so names cannot be compared; content can.
pub fn content(files: &BTreeMap<String, (BlobHash, u64)>) -> Vec<(String, String, BlobHash)> {
    let mut v: Vec<(String, String, BlobHash)> = files
        .iter()
        .filter_map(|(k, (h, _))| {
            let rel = k.split_once(':')?.1;
            let tf = TableFile::parse(rel).ok()?;
            let comp = match tf.kind {
                FileKind::Sstable(n) => n.component,
                _ => return None,
            };
            Some((
                format!("{}/{}{}", tf.keyspace, tf.table.table, tf.index.map(|i| format!("/.{i}")).unwrap_or_default()),
                comp,
                *h,
            ))
        })
        .collect();
    v.sort();
    v
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&p, f),
            Ok(t) if t.is_file() => f(&p),
            _ => {}
        }
    }
}

/// Every file under `dir` (recursively).
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    walk(dir, &mut |p| v.push(p.to_path_buf()));
    v.sort();
    v
}

/// Logs a step of a scenario test.
pub fn step(s: &str) {
    eprintln!("--- step {s}");
}
