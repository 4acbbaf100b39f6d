//! A real Cassandra cluster, a storage server, and an agent configuration per node: what the
//! real-node tests drive through the `cassette-agent` binary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cassette_agent::config::AgentConfig;

use super::{ClusterSpec, Install, RealCluster, Series};
use crate::node::{AgentCli, NodeEnv};
use crate::servers::{Backend, StorageServer};
use crate::tools::workspace_binary;

/// A cluster of real nodes with storage and agent configs.
#[derive(Debug)]
pub struct RealEnv {
    /// The nodes.
    pub cluster: RealCluster,
    /// The storage server.
    pub server: StorageServer,
    /// Repository prefix on the server.
    pub prefix: String,
    /// Agent state directories and configs.
    pub dir: tempfile::TempDir,
    /// The `cassette-agent` binary.
    pub agent_bin: PathBuf,
}

impl RealEnv {
    /// Starts the storage server and the cluster; `Ok(None)` when something is missing and the
    /// test may skip (a message was printed; with `CASSETTE_REQUIRE_EMULATORS=1` it panics).
    pub fn start(test: &str, series: Series, spec: &ClusterSpec, backend: Backend) -> anyhow::Result<Option<Self>> {
        let Some(mut env) = Self::create(test, series, spec, backend)? else { return Ok(None) };
        env.cluster.start()?;
        Ok(Some(env))
    }

    /// [`RealEnv::start`] without starting the nodes (their configuration written: a test can
    /// change it first, e.g. with [`super::RealNode::write_commitlog_archiving`]).
    pub fn create(test: &str, series: Series, spec: &ClusterSpec, backend: Backend) -> anyhow::Result<Option<Self>> {
        let Some(install) = Install::require(series, test) else { return Ok(None) };
        let Some(server) = StorageServer::start(backend, test)? else { return Ok(None) };
        let agent_bin = workspace_binary("cassette-agent", "cassette-agent");
        let mut cluster = RealCluster::create(&install, spec)?;
        // Cassandra runs `archive_command` (cassette-agent commitlog-backup) with its own
        // environment: the storage credentials must be there.
        cluster.env = server.env_vars();
        let dir = tempfile::Builder::new().prefix("cassette-real-agent-").tempdir()?;
        let env = Self {
            cluster,
            server,
            prefix: format!("{}-{:06x}", test.split('_').next().unwrap_or("t"), rand::random::<u32>() >> 8),
            dir,
            agent_bin,
        };
        for i in 0..env.cluster.nodes.len() {
            env.write_config(i, &env.config(i))?;
        }
        Ok(Some(env))
    }

    /// The config of node `i`'s agent: the location, the node's tools and yaml, its own state.
    pub fn config(&self, i: usize) -> AgentConfig {
        let mut cfg = AgentConfig {
            location: Some(self.server.location(&self.prefix)),
            state_dir: Some(self.dir.path().join(format!("state{}", i + 1))),
            storage: self.server.storage_config(),
            transfer: NodeEnv::transfer(),
            cassandra: self.cluster.cassandra_config(i),
            ..AgentConfig::default()
        };
        cfg.locks.refresh = Duration::from_millis(500);
        cfg.locks.stale_after = Duration::from_secs(20);
        cfg.locks.poll = Duration::from_millis(200);
        cfg.locks.wait = Duration::from_secs(120);
        cfg
    }

    /// Node `i`'s config file.
    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("agent{}.toml", i + 1))
    }

    /// Writes node `i`'s config file.
    pub fn write_config(&self, i: usize, cfg: &AgentConfig) -> anyhow::Result<()> {
        std::fs::write(self.config_path(i), toml::to_string(cfg).context("serialize the agent config")?)?;
        Ok(())
    }

    /// Node `i`'s agent command line.
    pub fn agent(&self, i: usize) -> AgentCli {
        AgentCli::new(&self.agent_bin, &self.config_path(i), self.server.env_vars())
    }
}
