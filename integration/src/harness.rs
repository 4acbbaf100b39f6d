//! Emulated clusters for tests and benchmarks: a state directory, `nodetool`/`cqlsh` wrapper
//! scripts that call the `cassandra-emulator` binary, and the adapter configuration for a node.
//!
//! ```ignore
//! let cluster = EmulatedCluster::create(env!("CARGO_BIN_EXE_cassandra-emulator"), &ClusterSpec::single(Version::V41))?;
//! cluster.admin(&["create-keyspace", "shop"])?;
//! let control = NodetoolControl::new(cluster.cassandra_config("127.0.0.1"))?;
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cassette_agent::cassandra::CassandraConfig;

use crate::emulator::{self, Cluster, ClusterSpec, Outcome, StateDir};

/// An emulated cluster in its own directory.
#[derive(Debug)]
pub struct EmulatedCluster {
    /// Removes the directory on drop unless kept.
    temp: Option<tempfile::TempDir>,
    root: PathBuf,
    state: StateDir,
    /// The native transport and storage ports written into every node's `cassandra.yaml` and
    /// the adapter settings: free ones, so that an agent's check that the node is stopped (no
    /// one listens there) does not depend on what else runs on the machine.
    ports: (u16, u16),
}

impl EmulatedCluster {
    /// Creates a cluster in a new temporary directory. `emulator_bin` is the `cassandra-emulator`
    /// binary (`env!("CARGO_BIN_EXE_cassandra-emulator")` in this crate's tests).
    pub fn create(emulator_bin: impl AsRef<Path>, spec: &ClusterSpec) -> anyhow::Result<Self> {
        let temp = tempfile::Builder::new().prefix("cassette-emu-").tempdir()?;
        let root = temp.path().to_owned();
        let mut c = Self::create_in(&root, emulator_bin, spec)?;
        c.temp = Some(temp);
        Ok(c)
    }

    /// Creates a cluster in `root` (kept afterwards).
    pub fn create_in(root: &Path, emulator_bin: impl AsRef<Path>, spec: &ClusterSpec) -> anyhow::Result<Self> {
        let bin = emulator_bin.as_ref();
        if !bin.is_file() {
            bail!("the emulator binary {} does not exist: build cassette-integration first", bin.display());
        }
        let state_dir = root.join("state");
        emulator::create_cluster(&state_dir, spec)?;
        let bin_dir = root.join("bin");
        std::fs::create_dir_all(&bin_dir)?;
        for tool in ["nodetool", "cqlsh"] {
            write_wrapper(&bin_dir.join(tool), bin, &state_dir, tool)?;
        }
        write_wrapper(&bin_dir.join("emulator-admin"), bin, &state_dir, "admin")?;
        let ports = (crate::tools::free_port()?, crate::tools::free_port()?);
        Ok(Self { temp: None, root: root.to_owned(), state: StateDir::new(state_dir), ports })
    }

    /// Keeps the directory after drop (for failed tests) and returns its path.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(t) = self.temp.take() {
            let _ = t.keep();
        }
        self.root.clone()
    }

    /// The cluster's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The state directory.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// The current state.
    pub fn cluster(&self) -> anyhow::Result<Cluster> {
        let _l = self.state.lock()?;
        self.state.load()
    }

    /// The native transport port of every node (in `cassandra.yaml` and the adapter settings).
    pub fn native_port(&self) -> u16 {
        self.ports.0
    }

    /// The storage (internode) port of every node, in `cassandra.yaml`.
    pub fn storage_port(&self) -> u16 {
        self.ports.1
    }

    /// The `nodetool` wrapper script.
    pub fn nodetool_path(&self) -> PathBuf {
        self.root.join("bin/nodetool")
    }

    /// The `cqlsh` wrapper script.
    pub fn cqlsh_path(&self) -> PathBuf {
        self.root.join("bin/cqlsh")
    }

    /// Runs an admin command in-process; fails on a non-zero exit.
    pub fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = emulator::admin::run(&self.state, &args);
        if out.code != 0 {
            bail!("admin {}: {}", args.join(" "), out.stderr.trim());
        }
        Ok(out.stdout)
    }

    /// Runs `nodetool <args>` in-process (for fidelity tests of the emulator itself).
    pub fn nodetool(&self, args: &[&str]) -> Outcome {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        emulator::nodetool::run(&self.state, &args)
    }

    /// Runs `cqlsh <args>` in-process.
    pub fn cqlsh(&self, args: &[&str]) -> Outcome {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        emulator::cqlsh::run(&self.state, &args)
    }

    /// Adapter settings for the node at `address`: the wrapper scripts, the node's hosts, short
    /// timeouts. Directories are left to discovery.
    pub fn cassandra_config(&self, address: &str) -> CassandraConfig {
        CassandraConfig {
            nodetool: self.nodetool_path(),
            cqlsh: self.cqlsh_path(),
            jmx_host: address.to_owned(),
            cql_host: address.to_owned(),
            cql_port: self.ports.0,
            command_timeout: std::time::Duration::from_secs(20),
            operation_timeout: std::time::Duration::from_secs(120),
            ..CassandraConfig::default()
        }
    }

    /// Writes a node's `conf/commitlog_archiving.properties` (`archive_command=…`, `restore_command=…`,
    /// `restore_directories=…`, …) and returns its path.
    pub fn set_commitlog_archiving(&self, address: &str, properties: &str) -> anyhow::Result<PathBuf> {
        let c = self.cluster()?;
        let n = c.nodes.iter().find(|n| n.address == address).with_context(|| format!("no node {address}"))?;
        let path = n.conf_dir.join("commitlog_archiving.properties");
        std::fs::write(&path, properties)?;
        Ok(path)
    }

    /// Writes a `cassandra.yaml` for a node (data and commit-log directories) and returns its path.
    pub fn write_cassandra_yaml(&self, address: &str) -> anyhow::Result<PathBuf> {
        let c = self.cluster()?;
        let n = c.nodes.iter().find(|n| n.address == address).with_context(|| format!("no node {address}"))?;
        let mut y =
            format!("cluster_name: '{}'\nnum_tokens: {}\ndata_file_directories:\n", c.cluster_name, n.tokens.len());
        for d in &n.data_dirs {
            y.push_str(&format!("    - {}\n", d.display()));
        }
        y.push_str(&format!("commitlog_directory: {}\n", n.commitlog_dir.display()));
        y.push_str(&format!(
            "listen_address: {address}\nstorage_port: {}\nnative_transport_port: {}\n",
            self.ports.1, self.ports.0
        ));
        if let Some(d) = &n.local_system_data_dir {
            y.push_str(&format!("local_system_data_file_directory: {}\n", d.display()));
        }
        let path = n.conf_dir.join("cassandra.yaml");
        std::fs::write(&path, y)?;
        Ok(path)
    }
}

fn write_wrapper(path: &Path, bin: &Path, state: &Path, mode: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
    std::fs::write(path, format!("#!/bin/sh\nexec {} --state {} {mode} \"$@\"\n", q(bin), q(state)))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
