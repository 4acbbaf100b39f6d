//! A whole installation around real Cassandra clusters, as processes: a storage server, one or
//! more [`RealCluster`]s with `cassette-agent serve` next to every node (mutual TLS), a
//! coordinator group, and the `cassette` CLI with an admin certificate.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use cassette_agent::config::AgentConfig;
use cassette_common::tls::Role;
use serde_json::Value;

use super::{ClusterSpec, Install, RealCluster, Series};
use crate::coordinator::{AgentProcess, CoordinatorGroup, TestPki, free_port_on};
use crate::lab::{admin_cli_json, wait_operation};
use crate::node::NodeEnv;
use crate::servers::{Backend, StorageServer};

/// A real cluster with an agent per node.
#[derive(Debug)]
pub struct RealLabCluster {
    /// Agents, in node order (stopped before the nodes: fields drop in order).
    pub agents: Vec<AgentProcess>,
    /// The nodes.
    pub cluster: RealCluster,
    /// The port every agent listens on (on its node's address).
    pub port: u16,
}

/// Coordinator, storage, clusters.
#[derive(Debug)]
pub struct RealLab {
    /// The clusters (`[0]` the first).
    pub clusters: Vec<RealLabCluster>,
    /// Coordinator replicas.
    pub group: CoordinatorGroup,
    /// Storage.
    pub storage: StorageServer,
    /// The repository location every agent writes to.
    pub location: String,
    /// Its prefix on the storage server.
    pub prefix: String,
    /// CA and certificates.
    pub pki: TestPki,
    /// The lab's directory.
    pub path: PathBuf,
    install: Install,
    dir: Option<tempfile::TempDir>,
}

impl RealLab {
    /// Storage, a coordinator group of `replicas`, and a first cluster of `series` started with
    /// its agents. `Ok(None)`: something is missing and the test may skip (a message was printed).
    pub fn start(name: &str, series: Series, spec: &ClusterSpec, replicas: u64) -> anyhow::Result<Option<Self>> {
        Self::start_on(name, series, spec, replicas, Backend::S3sFs)
    }

    /// [`RealLab::start`] with another storage backend.
    pub fn start_on(
        name: &str,
        series: Series,
        spec: &ClusterSpec,
        replicas: u64,
        backend: Backend,
    ) -> anyhow::Result<Option<Self>> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let Some(install) = Install::require(series, name) else { return Ok(None) };
        let Some(storage) = StorageServer::start(backend, name)? else { return Ok(None) };
        let dir = tempfile::Builder::new().prefix(&format!("cassette-{name}-")).tempdir()?;
        let path = dir.path().to_owned();
        let pki = TestPki::new(&path.join("pki"))?;
        let prefix = format!("{}-{:06x}", name.split('_').next().unwrap_or("lab"), rand::random::<u32>() >> 8);
        let location = storage.location(&prefix).to_string();
        let args = ["--agent-timeout", "30s", "--retry-backoff", "500ms", "--poll-interval", "200ms"];
        let group = CoordinatorGroup::start(&pki, &path, replicas, &args)?;
        let mut lab =
            Self { clusters: Vec::new(), group, storage, location, prefix, pki, path, install, dir: Some(dir) };
        lab.add_cluster(spec)?;
        Ok(Some(lab))
    }

    /// Starts another cluster (its nodes, then an agent on each); returns its index.
    pub fn add_cluster(&mut self, spec: &ClusterSpec) -> anyhow::Result<usize> {
        let index = self.clusters.len();
        let mut cluster = RealCluster::create(&self.install, spec)?;
        cluster.env = self.storage.env_vars();
        cluster.start()?;
        let agent_dir = self.path.join(format!("cluster{index}-agents"));
        std::fs::create_dir_all(&agent_dir)?;
        let hosts: Vec<&str> = cluster.nodes.iter().map(|n| n.address.as_str()).collect();
        let port = free_port_on(&hosts)?;
        let mut agents = Vec::new();
        for i in 0..cluster.nodes.len() {
            let address = cluster.nodes[i].address.clone();
            let cert = format!("agent-{address}");
            self.pki.issue(Role::Agent, &cert, &[&address])?;
            let cfg = AgentConfig {
                location: Some(self.location.parse().context("the lab's location")?),
                storage: self.storage.storage_config(),
                transfer: NodeEnv::transfer(),
                cassandra: cluster.cassandra_config(i),
                ..AgentConfig::default()
            };
            let file = agent_dir.join(format!("agent-{address}.toml"));
            std::fs::write(&file, toml::to_string(&cfg).context("serialize the agent config")?)?;
            let file = file.display().to_string();
            let agent = AgentProcess::start_for(
                &cfg.cassandra,
                &address,
                port,
                &self.pki,
                &cert,
                &agent_dir,
                &["--config", &file],
                self.storage.env_vars(),
            )?;
            agents.push(agent);
        }
        self.clusters.push(RealLabCluster { agents, cluster, port });
        Ok(index)
    }

    /// `cassette … --output json` with the admin's certificate.
    pub fn cli_json(&self, args: &[&str]) -> (i32, Value, String) {
        admin_cli_json(&self.group, &self.pki, args)
    }

    /// `cassette …` that must succeed; its JSON.
    pub fn ok(&self, args: &[&str]) -> Value {
        let (code, v, err) = self.cli_json(args);
        assert_eq!(code, 0, "cassette {args:?} failed: {v}\nstderr: {err}\n{}", self.logs());
        v
    }

    /// Registers cluster `index` as `name` (through its first node's agent).
    pub fn register(&self, name: &str, index: usize) -> anyhow::Result<Value> {
        let c = &self.clusters[index];
        let seed = format!("{}:{}", c.cluster.nodes[0].address, c.port);
        let (code, v, err) = self.cli_json(&["cluster", "add", name, "--agent", &seed]);
        if code != 0 {
            bail!("cluster add {name} failed ({code}): {v} {err}");
        }
        Ok(v)
    }

    /// Waits until operation `id` ends; its view.
    pub async fn wait_operation(&self, id: &str, timeout: Duration) -> anyhow::Result<Value> {
        wait_operation(&self.group, &self.pki, id, timeout).await.map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs()))
    }

    /// Coordinator and agent log tails.
    pub fn logs(&self) -> String {
        let mut s = self.group.logs();
        for a in self.clusters.iter().flat_map(|c| c.agents.iter()) {
            s.push_str(&format!("\n--- {} ({}):\n{}", a.address, a.log.display(), crate::process::tail(&a.log, 2000)));
        }
        s
    }
}

impl Drop for RealLab {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.dir.take()
        {
            eprintln!("kept for inspection (logs, state, certificates): {}", d.keep().display());
        }
    }
}
