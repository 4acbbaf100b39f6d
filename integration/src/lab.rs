//! A whole installation on one machine, as processes: a storage server, an emulated cluster,
//! `cassette-agent serve` on every node (each on its own loopback address, with the storage
//! location and credentials), a coordinator group, and the `cassette` CLI. Used by the cluster
//! backup and restore tests and by the sandbox.
//!
//! ```ignore
//! let lab = Lab::start(&LabOptions::new("t70", emulator_bin, Backend::S3sFs))?.unwrap();
//! lab.register("prod")?;
//! let (code, v) = lab.cli_json(&["backup", "create", "--cluster", "prod"]);
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use cassette_common::tls::Role;
use serde_json::Value;

use crate::coordinator::{AgentProcess, CoordinatorGroup, TestPki, cassette_cli, free_port_on};
use crate::emulator::{ClusterSpec, Version};
use crate::harness::EmulatedCluster;
use crate::servers::{Backend, StorageServer};

/// What to start.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Names the directories and the repository prefix.
    pub name: String,
    /// The `cassandra-emulator` binary.
    pub emulator: PathBuf,
    /// Storage.
    pub backend: Backend,
    /// Datacenters and their node counts.
    pub datacenters: Vec<(String, usize)>,
    /// Coordinator replicas.
    pub replicas: u64,
    /// Extra `cassette-coordinator serve` flags (`--agent-timeout 2s`, …).
    pub coordinator_args: Vec<String>,
    /// Tokens per node.
    pub num_tokens: usize,
    /// Extra environment of every agent (`CASSETTE_CASSANDRA__…` settings).
    pub agent_env: Vec<(String, String)>,
    /// Keep the directory afterwards.
    pub keep: bool,
}

impl LabOptions {
    /// Two datacenters (2 + 1 nodes), one replica, 4 tokens per node.
    pub fn new(name: &str, emulator: impl AsRef<Path>, backend: Backend) -> Self {
        Self {
            name: name.into(),
            emulator: emulator.as_ref().to_owned(),
            backend,
            datacenters: vec![("dc1".into(), 2), ("dc2".into(), 1)],
            replicas: 1,
            coordinator_args: vec![
                "--agent-timeout".into(),
                "10s".into(),
                "--retry-backoff".into(),
                "300ms".into(),
                "--poll-interval".into(),
                "100ms".into(),
            ],
            num_tokens: 4,
            agent_env: vec![],
            keep: false,
        }
    }
}

/// One emulated Cassandra cluster with an agent on every node.
#[derive(Debug)]
pub struct LabCluster {
    /// The emulated cluster.
    pub cluster: EmulatedCluster,
    /// Node addresses, in the emulator's order.
    pub nodes: Vec<String>,
    /// Agents, same order.
    pub agents: Vec<AgentProcess>,
    /// The port every agent listens on.
    pub port: u16,
}

/// The installation. Processes stop before the directory is removed (fields drop in order).
#[derive(Debug)]
pub struct Lab {
    /// The first cluster.
    pub main: LabCluster,
    /// Other clusters (restores onto another cluster).
    pub others: Vec<LabCluster>,
    /// Coordinator replicas.
    pub group: CoordinatorGroup,
    /// Storage.
    pub storage: StorageServer,
    /// The repository every agent writes to.
    pub location: String,
    /// Its prefix on the storage server.
    pub prefix: String,
    /// The CA and certificates.
    pub pki: TestPki,
    /// Its path.
    pub path: PathBuf,
    opts: LabOptions,
    /// The directory (logs, state, certificates); removed on drop unless kept or a test failed.
    pub dir: Option<tempfile::TempDir>,
}

impl Lab {
    /// Starts everything; `Ok(None)` when the storage server's program is missing (skipped).
    pub fn start(opts: &LabOptions) -> anyhow::Result<Option<Self>> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let Some(storage) = StorageServer::start(opts.backend, &opts.name)? else { return Ok(None) };
        let dir = tempfile::Builder::new().prefix(&format!("cassette-{}-", opts.name)).tempdir()?;
        let path = dir.path().to_owned();
        let pki = TestPki::new(&path.join("pki"))?;
        let prefix = format!("{}-{:06x}", opts.name.split('_').next().unwrap_or("lab"), rand::random::<u32>() >> 8);
        let location = storage.location(&prefix).to_string();
        let args: Vec<&str> = opts.coordinator_args.iter().map(String::as_str).collect();
        let group = CoordinatorGroup::start(&pki, &path, opts.replicas, &args)?;
        let env = Env { path: &path, pki: &pki, opts, location: &location, storage: &storage };
        let main = start_cluster_in(&env, "cassandra", opts.datacenters.clone(), 0x5eed, "Test Cluster")?;
        Ok(Some(Self {
            dir: Some(dir),
            path,
            pki,
            storage,
            location,
            prefix,
            group,
            main,
            others: vec![],
            opts: opts.clone(),
        }))
    }

    /// Starts another emulated cluster (its own state, its agents on their own port).
    pub fn start_cluster(
        &self,
        name: &str,
        datacenters: Vec<(String, usize)>,
        seed: u64,
        cluster_name: &str,
    ) -> anyhow::Result<LabCluster> {
        let env = Env {
            path: &self.path,
            pki: &self.pki,
            opts: &self.opts,
            location: &self.location,
            storage: &self.storage,
        };
        start_cluster_in(&env, name, datacenters, seed, cluster_name)
    }

    /// `cassette` with the admin's certificate (the lab's owner deletes, purges and schedules
    /// too); returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        admin_cli(&self.group, &self.pki, args)
    }

    /// `cassette … --output json`, parsed.
    pub fn cli_json(&self, args: &[&str]) -> (i32, Value, String) {
        admin_cli_json(&self.group, &self.pki, args)
    }

    /// Registers `c` (the main cluster when None) as `name`.
    pub fn register(&self, name: &str, c: Option<&LabCluster>) -> anyhow::Result<Value> {
        let c = c.unwrap_or(&self.main);
        let seed = format!("{}:{}", c.nodes[0], c.port);
        let (code, v, err) = self.cli_json(&["cluster", "add", name, "--agent", &seed]);
        if code != 0 {
            bail!("cluster add {name} failed ({code}): {v} {err}");
        }
        Ok(v)
    }

    /// Runs an emulator admin command on the main cluster.
    pub fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        self.main.cluster.admin(args)
    }

    /// Waits until the operation reaches `state` or ends; returns its view.
    pub async fn wait_operation(&self, id: &str, timeout: Duration) -> anyhow::Result<Value> {
        wait_operation(&self.group, &self.pki, id, timeout).await.map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs()))
    }

    /// The tails of the coordinator and agent logs.
    pub fn logs(&self) -> String {
        let mut s = self.group.logs();
        for a in self.main.agents.iter().chain(self.others.iter().flat_map(|c| c.agents.iter())) {
            s.push_str(&format!("\n--- {} ({}):\n{}", a.address, a.log.display(), crate::process::tail(&a.log, 2000)));
        }
        s
    }

    /// Keeps the directory (a failed test) and returns its path.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(d) = self.dir.take() {
            let _ = d.keep();
        }
        self.path.clone()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if (std::thread::panicking() || self.opts.keep)
            && let Some(d) = self.dir.take()
        {
            eprintln!("kept for inspection (logs, state, certificates): {}", d.keep().display());
        }
    }
}

/// `cassette` against `group` with the admin's certificate (the lab's owner also deletes, purges
/// and schedules); returns (exit code, stdout, stderr).
pub fn admin_cli(group: &CoordinatorGroup, pki: &TestPki, args: &[&str]) -> (i32, String, String) {
    let mut a: Vec<String> = vec!["--coordinator".into(), group.endpoints().join(",")];
    a.extend(pki.args("admin"));
    a.extend(args.iter().map(|s| s.to_string()));
    match cassette_cli(&a) {
        Ok(r) => r,
        Err(e) => (-1, String::new(), e.to_string()),
    }
}

/// [`admin_cli`] with `--output json`, parsed.
pub fn admin_cli_json(group: &CoordinatorGroup, pki: &TestPki, args: &[&str]) -> (i32, Value, String) {
    let mut a = args.to_vec();
    a.extend(["--output", "json"]);
    let (code, out, err) = admin_cli(group, pki, &a);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| Value::String(format!("not JSON ({e}): {out}")));
    (code, v, err)
}

/// Waits until operation `id` ends (succeeded, failed or cancelled); returns its view.
pub async fn wait_operation(
    group: &CoordinatorGroup,
    pki: &TestPki,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (_, v, _) = admin_cli_json(group, pki, &["operations", "show", id]);
        if matches!(v["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            bail!("operation {id} did not end within {timeout:?}: {v}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Env<'a> {
    path: &'a Path,
    pki: &'a TestPki,
    opts: &'a LabOptions,
    location: &'a str,
    storage: &'a StorageServer,
}

fn start_cluster_in(
    env: &Env<'_>,
    name: &str,
    datacenters: Vec<(String, usize)>,
    seed: u64,
    cluster_name: &str,
) -> anyhow::Result<LabCluster> {
    let mut spec = ClusterSpec::single(Version::V41);
    spec.datacenters = datacenters;
    spec.num_tokens = Some(env.opts.num_tokens);
    spec.seed = seed;
    spec.cluster_name = cluster_name.into();
    let cluster = EmulatedCluster::create_in(&env.path.join(name), &env.opts.emulator, &spec)?;
    let nodes: Vec<String> = cluster.cluster()?.nodes.iter().map(|n| n.address.clone()).collect();
    let hosts: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let agent_dir = env.path.join(format!("{name}-agents"));
    std::fs::create_dir_all(&agent_dir)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = free_port_on(&hosts)?;
        let mut agents = Vec::new();
        let mut failed = None;
        for node in &nodes {
            let cert = format!("agent-{node}");
            env.pki.issue(Role::Agent, &cert, &[node])?;
            let yaml = cluster.write_cassandra_yaml(node)?;
            let yaml = yaml.display().to_string();
            let extra = ["--location", env.location, "--cassandra-yaml", yaml.as_str()];
            match AgentProcess::start_with_env(
                &cluster,
                node,
                port,
                env.pki,
                &cert,
                &agent_dir,
                &extra,
                env.storage
                    .env_vars()
                    .into_iter()
                    // The cluster's own native port (as in its cassandra.yaml): an in-place restore
                    // checks that nothing listens there, and 9042 may be another Cassandra's.
                    .chain([("CASSETTE_CASSANDRA__CQL_PORT".to_owned(), cluster.native_port().to_string())])
                    .chain(env.opts.agent_env.iter().cloned())
                    .collect(),
            ) {
                Ok(a) => agents.push(a),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => return Ok(LabCluster { cluster, nodes, agents, port }),
            Some(e) if attempt < 4 && e.to_string().contains("Address already in use") => {}
            Some(e) => return Err(e),
        }
    }
}
