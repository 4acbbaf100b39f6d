//! `cassette-bench coordinator`: three `cassette-coordinator serve` processes (production raft
//! timing) driving phases on N agents that run in this process, each serving the real agent
//! gRPC API (`cassette_agent::server`) on its own loopback address, over mutual TLS by default.
//!
//! The agents' Cassandra is an in-memory ring of N nodes over the datacenters. They serve the
//! real backup phase names with synthetic runners (`cassette_agent::jobs::synthetic::
//! backup_phases`) that each take `--phase-ms` and answer like the real ones where the executor
//! reads them (schema versions and repository location, snapshot time, upload counters), and
//! record when they started and ended, so the skew between nodes is measured where it matters:
//! when the snapshot phase began on each agent. The operation is the product's own cluster
//! backup: started with `OperationStart` (kind `backup`), driven by the leader's executor, and
//! followed with `OperationGet`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use cassette_agent::cassandra::{
    CassandraControl, CassandraError, ClearSnapshotRequest, Directories, DirectorySource, FlushRequest, ImportRequest,
    LiveTable, Liveness, NodeDescription, ReleaseVersion, RingMember, RingState, Snapshot, SnapshotRequest,
};
use cassette_agent::jobs::synthetic::{self, SyntheticNode};
use cassette_agent::jobs::{JobManager, JobsConfig};
use cassette_agent::server::{self as agent_server, AgentService};
use cassette_common::phases as ph;
use cassette_common::tls::{Role, TlsMode};
use cassette_coordinator::client::OperatorClient;
use cassette_integration::coordinator::TestPki;
use cassette_integration::process::ManagedProcess;
use cassette_integration::tools::{free_port, workspace_binary};
use cassette_proto::v1 as pb;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// Agent counts to run, one after the other (the table shows how the costs grow).
    #[arg(long, value_delimiter = ',', default_values = ["10", "100", "1000"])]
    agents: Vec<usize>,
    /// Datacenters the nodes are spread over.
    #[arg(long, default_value_t = 10)]
    datacenters: usize,
    /// Coordinator replicas.
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    /// How long each backup phase (check, snapshot, upload, cluster manifest, clear) takes on
    /// an agent.
    #[arg(long, default_value_t = 500)]
    phase_ms: u64,
    /// Plain text between coordinators and agents instead of mutual TLS.
    #[arg(long)]
    insecure: bool,
    /// Skip the failover measurement.
    #[arg(long)]
    no_failover: bool,
    /// Where state, certificates and logs go (removed afterwards).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Also print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// Start and end (µs since the epoch) of every phase run on every agent.
#[derive(Debug, Default)]
struct Recorder {
    /// (phase, agent index) → (start, end).
    runs: Mutex<BTreeMap<(String, usize), (u64, u64)>>,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// An in-memory node of an N-node ring.
#[derive(Debug)]
struct RingControl {
    me: usize,
    ring: Arc<Vec<RingMember>>,
    dir: PathBuf,
}

fn host_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

fn tokens(i: usize) -> Vec<String> {
    (0..16).map(|t| ((i as i64) * 16 + t).to_string()).collect()
}

fn address(i: usize) -> String {
    format!("127.10.{}.{}", i / 250, i % 250 + 1)
}

fn unsupported(what: &str) -> CassandraError {
    CassandraError::Unsupported {
        what: what.into(),
        version: "bench".into(),
        hint: "the benchmark's node only answers identity and ring",
    }
}

#[async_trait::async_trait]
impl CassandraControl for RingControl {
    async fn describe_node(&self) -> Result<NodeDescription, CassandraError> {
        let m = &self.ring[self.me];
        Ok(NodeDescription {
            host_id: host_id(self.me).parse().map_err(|_| unsupported("host id"))?,
            cluster_name: "Bench Cluster".into(),
            datacenter: m.datacenter.clone(),
            rack: m.rack.clone(),
            tokens: tokens(self.me),
            release_version: ReleaseVersion::parse("4.1.5").ok_or_else(|| unsupported("version"))?,
            partitioner: Some("org.apache.cassandra.dht.Murmur3Partitioner".into()),
            schema_versions: vec![],
            gossip_active: true,
            native_transport_active: true,
            load: None,
            directories: self.directories().await?,
        })
    }
    async fn ring(&self) -> Result<Vec<RingMember>, CassandraError> {
        Ok(self.ring.as_ref().clone())
    }
    async fn is_up(&self) -> Result<bool, CassandraError> {
        Ok(true)
    }
    async fn directories(&self) -> Result<Directories, CassandraError> {
        Ok(Directories {
            data: vec![self.dir.clone()],
            local_system_data: None,
            commitlog: None,
            source: DirectorySource::Config,
        })
    }
    async fn flush(&self, _r: &FlushRequest) -> Result<(), CassandraError> {
        Ok(())
    }
    async fn snapshot(&self, _r: &SnapshotRequest) -> Result<(), CassandraError> {
        Err(unsupported("snapshot"))
    }
    async fn list_snapshots(&self, _tag: Option<&str>) -> Result<Vec<Snapshot>, CassandraError> {
        Ok(vec![])
    }
    async fn clear_snapshot(&self, _r: &ClearSnapshotRequest) -> Result<(), CassandraError> {
        Ok(())
    }
    async fn import(&self, _r: &ImportRequest) -> Result<(), CassandraError> {
        Err(unsupported("import"))
    }
    async fn refresh(&self, _k: &str, _t: &str) -> Result<(), CassandraError> {
        Err(unsupported("refresh"))
    }
    async fn truncate(&self, _k: &str, _t: &str) -> Result<(), CassandraError> {
        Err(unsupported("truncate"))
    }
    async fn schema(&self) -> Result<Vec<LiveTable>, CassandraError> {
        Ok(vec![])
    }
    async fn create_schema(&self, _s: &[cassette_common::cql::SchemaStatement]) -> Result<(), CassandraError> {
        Err(unsupported("create_schema"))
    }
}

fn ring(n: usize, dcs: usize) -> Vec<RingMember> {
    (0..n)
        .map(|i| RingMember {
            datacenter: format!("dc{}", i % dcs.max(1)),
            address: address(i),
            liveness: Liveness::Up,
            state: RingState::Normal,
            load: Some("1 GiB".into()),
            token_count: Some(16),
            token: None,
            owns: None,
            host_id: host_id(i).parse().ok(),
            rack: format!("rack{}", (i / dcs.max(1)) % 3),
        })
        .collect()
}

/// CPU seconds (user + system) and resident memory (current, peak; MiB) of a process.
fn proc_usage(pid: u32) -> Option<(f64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is [0]; utime is field 14 overall, [11] here.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |k: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    Some((ticks / 100.0, kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0))
}

fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ScaleRow {
    agents: usize,
    tls: String,
    agents_start_s: f64,
    register_s: f64,
    /// Command → the last agent started the snapshot phase.
    dispatch_s: f64,
    /// Command → the last agent finished the snapshot phase ("all snapshots taken").
    first_phase_done_s: f64,
    /// Command → the operation recorded as succeeded (every phase, barriers included).
    operation_s: f64,
    /// Snapshot start of each agent minus the earliest (measured on the agents).
    skew_p50_ms: f64,
    skew_p99_ms: f64,
    skew_max_ms: f64,
    /// The skew the executor recorded (between the snapshot times the agents reported).
    executor_skew_ms: Option<u64>,
    commit_p50_ms: f64,
    commit_p99_ms: f64,
    commit_samples: u64,
    leader_cpu_s: f64,
    leader_rss_mib: f64,
    leader_peak_rss_mib: f64,
    followers_peak_rss_mib: f64,
    failover_s: Option<f64>,
    failover_note: String,
}

/// The steps of a cluster backup, in order.
const PHASES: [&str; 5] =
    [ph::BACKUP_CHECK, ph::BACKUP_SNAPSHOT, ph::BACKUP_UPLOAD, ph::BACKUP_CLUSTER_MANIFEST, ph::BACKUP_CLEAR_SNAPSHOT];

struct Replica {
    id: u64,
    address: String,
    process: Option<ManagedProcess>,
    log: PathBuf,
}

pub fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    if args.agents.iter().any(|n| *n == 0 || *n > 60_000) {
        bail!("--agents takes counts between 1 and 60000");
    }
    let work = args.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("cassette-bench-coordinator"));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rows = Vec::new();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned();
    for n in &args.agents {
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        eprintln!("-- {n} agents");
        let r = runtime.block_on(run_one(&args, *n, &work));
        let _ = std::fs::remove_dir_all(&work);
        rows.push(r?);
    }
    print_table(&args, &rows, &load);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

async fn run_one(args: &CoordinatorArgs, n: usize, work: &Path) -> anyhow::Result<ScaleRow> {
    let mut row =
        ScaleRow { agents: n, tls: if args.insecure { "plain" } else { "mTLS" }.into(), ..Default::default() };
    let pki = TestPki::new(&work.join("pki"))?;
    let addresses: Vec<String> = (0..n).map(address).collect();
    let (agent_tls, coord_tls_args, operator_tls) = if args.insecure {
        (TlsMode::Insecure, vec!["--insecure".to_owned()], TlsMode::Insecure)
    } else {
        let sans: Vec<&str> = addresses.iter().map(String::as_str).collect();
        pki.issue(Role::Agent, "agents", &sans)?;
        (pki.mode("agents")?, vec![], pki.operator()?)
    };

    // Agents.
    let t = Instant::now();
    let port = free_port()?;
    let shutdown = CancellationToken::new();
    let recorder = Arc::new(Recorder::default());
    let ring = Arc::new(ring(n, args.datacenters));
    // The repository every agent reports (the synthetic phases write nothing to it).
    let repo = work.join("repository");
    std::fs::create_dir_all(&repo)?;
    let location = format!("file://{}", repo.display());
    let mut servers = Vec::new();
    for (i, addr) in addresses.iter().enumerate() {
        let dir = work.join("agents").join(i.to_string());
        let rec = Arc::clone(&recorder);
        let observer: synthetic::PhaseObserver = Arc::new(move |phase: &str, start: u64, end: u64| {
            rec.runs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry((phase.to_owned(), i))
                .or_insert((start, end));
        });
        let node = SyntheticNode {
            host_id: host_id(i),
            cluster: "Bench Cluster".into(),
            tokens: tokens(i),
            location: location.clone(),
            files: 100,
            bytes: 1 << 30,
        };
        let runners = synthetic::backup_phases(node, Duration::from_millis(args.phase_ms), Some(observer));
        let jobs = JobManager::open(&dir.join("jobs"), runners, JobsConfig::default(), shutdown.clone())?;
        let control = Arc::new(RingControl { me: i, ring: Arc::clone(&ring), dir: dir.clone() });
        let listener = tokio::net::TcpListener::bind(format!("{addr}:{port}"))
            .await
            .with_context(|| format!("listen on {addr}:{port} (the loopback range 127.10.0.0/16 must be usable)"))?;
        let (tls, stop) = (agent_tls.clone(), shutdown.clone());
        servers.push(tokio::spawn(async move {
            let _ = agent_server::run(listener, tls, AgentService::new(control, jobs), Default::default(), stop).await;
        }));
    }
    row.agents_start_s = t.elapsed().as_secs_f64();

    // Coordinator replicas (production raft timing).
    let bin = workspace_binary("cassette-coordinator", "cassette-coordinator");
    let mut replicas: Vec<Replica> = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..args.replicas {
        ports.push(free_port()?);
    }
    let peers: Vec<String> = (1..=args.replicas).zip(&ports).map(|(id, p)| format!("{id}=127.0.0.1:{p}")).collect();
    for (id, p) in (1..=args.replicas).zip(&ports) {
        let name = format!("coordinator{id}");
        let address = format!("127.0.0.1:{p}");
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--listen", &address, "--id", &id.to_string(), "--state-dir"])
            .arg(work.join(&name))
            .env("RUST_LOG", "warn,cassette_coordinator=info")
            .env("NO_COLOR", "1");
        if args.replicas > 1 {
            cmd.args(["--peers", &peers.join(",")]);
        }
        if args.insecure {
            cmd.args(&coord_tls_args);
        } else {
            pki.issue(Role::Coordinator, &name, &["127.0.0.1", "localhost"])?;
            cmd.args(pki.args(&name));
        }
        let log = work.join(format!("{name}.log"));
        let process = ManagedProcess::spawn(&name, cmd, &log)?;
        replicas.push(Replica { id, address, process: Some(process), log });
    }
    let result = measure(args, n, port, &mut row, &mut replicas, &operator_tls, &recorder).await;
    if result.is_err() {
        for r in &replicas {
            eprintln!("--- {} log:\n{}", r.id, cassette_integration::process::tail(&r.log, 3000));
        }
    }
    for r in &mut replicas {
        if let Some(mut p) = r.process.take() {
            p.kill9();
        }
    }
    shutdown.cancel();
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(10), s).await;
    }
    result?;
    Ok(row)
}

async fn leader_of(replicas: &[Replica], tls: &TlsMode, timeout: Duration) -> anyhow::Result<(u64, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        for r in replicas.iter().filter(|r| r.process.is_some()) {
            let c = OperatorClient::new(vec![r.address.clone()], tls.clone(), Duration::from_millis(500))?;
            if let Ok(s) =
                c.at(&r.address, |mut c| async move { c.replica_status(pb::ReplicaStatusRequest {}).await }).await
                && s.role == "leader"
            {
                return Ok((s.id, r.address.clone()));
            }
        }
        if Instant::now() > deadline {
            bail!("no coordinator leader within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status_at(tls: &TlsMode, address: &str) -> anyhow::Result<pb::ReplicaStatusResponse> {
    let c = OperatorClient::new(vec![address.to_owned()], tls.clone(), Duration::from_secs(2))?;
    Ok(c.at(address, |mut c| async move { c.replica_status(pb::ReplicaStatusRequest {}).await }).await?)
}

/// The operation as the leader shows it (`OperationGet`).
async fn op_view(client: &OperatorClient, id: &str) -> anyhow::Result<Value> {
    let id = id.to_owned();
    let v = client
        .call(move |mut c| {
            let id = id.clone();
            async move { c.operation_get(pb::OperationGetRequest { id }).await }
        })
        .await?;
    Ok(serde_json::from_str(&v.json)?)
}

/// Starts a cluster backup of every node (`OperationStart`, kind `backup`).
async fn start_op(client: &OperatorClient) -> anyhow::Result<String> {
    // One id per start, shared by its retries.
    let request_id = format!("bench-{:016x}", rand::random::<u64>());
    let v = client
        .call(move |mut c| {
            let req = pb::OperationStartRequest {
                kind: "backup".into(),
                request_json: serde_json::json!({ "cluster": "bench" }).to_string(),
                client_request_id: request_id.clone(),
            };
            async move { c.operation_start(req).await }
        })
        .await?;
    let v: Value = serde_json::from_str(&v.json)?;
    v["id"].as_str().map(str::to_owned).context("OperationStart answered without an operation id")
}

fn state(v: &Value) -> &str {
    v["state"].as_str().unwrap_or_default()
}

/// Phase runs of every node in `states`, optionally of one phase only.
fn count(v: &Value, phase: Option<&str>, states: &[&str]) -> usize {
    v["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .flat_map(|n| n["phases"].as_array().cloned().unwrap_or_default())
                .filter(|p| phase.is_none_or(|ph| p["phase"] == ph))
                .filter(|p| states.contains(&p["state"].as_str().unwrap_or_default()))
                .count()
        })
        .unwrap_or(0)
}

fn finished(v: &Value) -> usize {
    count(v, None, &["succeeded", "failed", "cancelled"])
}

/// How often the benchmark asks for the operation (the view of 1,000 nodes is not free).
const POLL: Duration = Duration::from_millis(200);

async fn measure(
    args: &CoordinatorArgs,
    n: usize,
    port: u16,
    row: &mut ScaleRow,
    replicas: &mut [Replica],
    tls: &TlsMode,
    recorder: &Recorder,
) -> anyhow::Result<()> {
    let (leader, leader_addr) = leader_of(replicas, tls, Duration::from_secs(30)).await?;
    let endpoints: Vec<String> = replicas.iter().map(|r| r.address.clone()).collect();
    let client = OperatorClient::new(endpoints, tls.clone(), Duration::from_secs(10))?;
    let pid_of = |id: u64, replicas: &[Replica]| {
        replicas.iter().find(|r| r.id == id).and_then(|r| r.process.as_ref()).map(|p| p.pid())
    };
    let leader_pid = pid_of(leader, replicas).context("leader process")?;

    // Registration: the leader reads the ring through one agent and asks every agent who it is.
    let t = Instant::now();
    let seed = format!("{}:{port}", address(0));
    client
        .call(move |mut c| {
            let req = pb::ClusterAddRequest {
                name: "bench".into(),
                seed_agent: seed.clone(),
                agent_pattern: String::new(),
                allow_unhealthy: false,
            };
            async move { c.cluster_add(req).await }
        })
        .await
        .context("register the cluster")?;
    row.register_s = t.elapsed().as_secs_f64();
    eprintln!("   registered {n} nodes in {:.2}s", row.register_s);

    // One cluster backup through the product's executor.
    let (cpu0, _, _) = proc_usage(leader_pid).unwrap_or_default();
    let t0_us = now_us();
    let t = Instant::now();
    let id = start_op(&client).await?;
    let end = loop {
        let v = op_view(&client, &id).await?;
        if state(&v) != "running" {
            break v;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("operation {id} did not finish in 10 minutes: {v}");
        }
        tokio::time::sleep(POLL).await;
    };
    if state(&end) != "succeeded" {
        bail!("operation {id} ended {}: {}", state(&end), end["error"]);
    }
    // From the command to the end the leader recorded (not to when the poll saw it).
    let finished_us = end["finished_at_ms"].as_u64().unwrap_or(0) * 1000;
    row.operation_s = finished_us.saturating_sub(t0_us) as f64 / 1e6;
    row.executor_skew_ms = end["snapshot_skew_ms"].as_u64();
    let (cpu1, rss, hwm) = proc_usage(leader_pid).unwrap_or_default();
    row.leader_cpu_s = cpu1 - cpu0;
    row.leader_rss_mib = rss;
    row.leader_peak_rss_mib = hwm;
    let first = ph::BACKUP_SNAPSHOT;
    let runs: Vec<(u64, u64)> = recorder
        .runs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|((p, _), _)| p == first)
        .map(|(_, v)| *v)
        .collect();
    if runs.len() != n {
        bail!("phase {first} ran on {} of {n} agents", runs.len());
    }
    let earliest = runs.iter().map(|r| r.0).min().unwrap_or(0);
    let skews: Vec<f64> = runs.iter().map(|r| (r.0 - earliest) as f64 / 1000.0).collect();
    row.skew_p50_ms = quantile(&skews, 0.5);
    row.skew_p99_ms = quantile(&skews, 0.99);
    row.skew_max_ms = quantile(&skews, 1.0);
    row.dispatch_s = (runs.iter().map(|r| r.0).max().unwrap_or(0).saturating_sub(t0_us)) as f64 / 1e6;
    row.first_phase_done_s = (runs.iter().map(|r| r.1).max().unwrap_or(0).saturating_sub(t0_us)) as f64 / 1e6;
    let st = status_at(tls, &leader_addr).await?;
    row.commit_p50_ms = st.commit_latency_p50_us as f64 / 1000.0;
    row.commit_p99_ms = st.commit_latency_p99_us as f64 / 1000.0;
    row.commit_samples = st.commit_latency_samples;
    row.followers_peak_rss_mib = replicas
        .iter()
        .filter(|r| r.id != leader)
        .filter_map(|r| r.process.as_ref().and_then(|p| proc_usage(p.pid())))
        .map(|u| u.2)
        .fold(0.0, f64::max);
    eprintln!(
        "   operation {:.2}s, dispatch {:.3}s, skew p99 {:.1} ms (executor recorded {:?} ms), commit p99 {:.1} ms, leader CPU {:.2}s, RSS {:.0} MiB",
        row.operation_s,
        row.dispatch_s,
        row.skew_p99_ms,
        row.executor_skew_ms,
        row.commit_p99_ms,
        row.leader_cpu_s,
        row.leader_rss_mib
    );

    if args.no_failover || replicas.len() < 3 {
        row.failover_note = "not measured".into();
        return Ok(());
    }
    // Failover: a second backup; the leader is killed once the upload step is under way. (Not
    // during the snapshot step: its phases wait on purpose for the moment agreed for every
    // node, so no progress shows there for a while with or without a failover.)
    let id = start_op(&client).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let before = loop {
        let v = op_view(&client, &id).await?;
        let under_way = count(&v, Some(ph::BACKUP_UPLOAD), &["running", "succeeded"]) > 0;
        if under_way || state(&v) != "running" {
            break v;
        }
        if Instant::now() > deadline {
            bail!("the failover backup did not reach its upload step");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if state(&before) != "running" {
        row.failover_note = "operation ended before the kill".into();
        return Ok(());
    }
    let done_before = finished(&before);
    let (leader, _) = leader_of(replicas, tls, Duration::from_secs(5)).await?;
    let killed = Instant::now();
    if let Some(r) = replicas.iter_mut().find(|r| r.id == leader)
        && let Some(mut p) = r.process.take()
    {
        p.kill9();
    }
    let endpoints: Vec<String> = replicas.iter().filter(|r| r.process.is_some()).map(|r| r.address.clone()).collect();
    let survivors = OperatorClient::new(endpoints, tls.clone(), Duration::from_secs(10))?;
    let resumed = loop {
        if let Ok(v) = op_view(&survivors, &id).await
            && (finished(&v) > done_before || state(&v) != "running")
        {
            break killed.elapsed().as_secs_f64();
        }
        if killed.elapsed() > Duration::from_secs(120) {
            bail!("the operation made no progress within 120 s of the leader's death");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    row.failover_s = Some(resumed);
    let end = loop {
        let v = op_view(&survivors, &id).await?;
        if state(&v) != "running" {
            break v;
        }
        if killed.elapsed() > Duration::from_secs(600) {
            bail!("the failover backup did not finish");
        }
        tokio::time::sleep(POLL).await;
    };
    let runs = count(&end, None, &["succeeded", "failed", "cancelled", "running", "pending"]);
    row.failover_note = format!(
        "leader {leader} killed during the upload step with {done_before}/{runs} phase runs recorded; operation {}",
        state(&end)
    );
    eprintln!("   failover: progress again {resumed:.2}s after kill -9 of the leader; {}", row.failover_note);
    if state(&end) != "succeeded" {
        bail!("the operation ended {} after the failover: {}", state(&end), end["error"]);
    }
    Ok(())
}

fn print_table(args: &CoordinatorArgs, rows: &[ScaleRow], load: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nCoordinator benchmark: {} coordinator replicas (separate processes, production raft timing: 100 ms ticks), N in-process agents serving the agent gRPC API over {}, {} datacenters; one cluster backup (OperationStart) through the executor: synthetic phases {} of {} ms each; {} cores, load average at start {load}",
        args.replicas,
        rows.first().map(|r| r.tls.as_str()).unwrap_or("-"),
        args.datacenters,
        PHASES.join(" → "),
        args.phase_ms,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    );
    let _ = writeln!(
        out,
        "\n| agents | register s | command → all snapshots started s | command → all snapshots done s | whole backup s | snapshot skew p50 / p99 / max ms (agents) | skew recorded by the executor ms | raft commit p50 / p99 ms | leader CPU s | leader RSS / peak MiB | failover s |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---|---:|---|---:|---|---:|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.3} | {:.3} | {:.2} | {:.1} / {:.1} / {:.1} | {} | {:.1} / {:.1} | {:.2} | {:.0} / {:.0} | {} |",
            r.agents,
            r.register_s,
            r.dispatch_s,
            r.first_phase_done_s,
            r.operation_s,
            r.skew_p50_ms,
            r.skew_p99_ms,
            r.skew_max_ms,
            r.executor_skew_ms.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            r.commit_p50_ms,
            r.commit_p99_ms,
            r.leader_cpu_s,
            r.leader_rss_mib,
            r.leader_peak_rss_mib,
            r.failover_s.map(|f| format!("{f:.2}")).unwrap_or_else(|| "-".into())
        );
    }
    // Growth between consecutive sizes.
    for w in rows.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let k = b.agents as f64 / a.agents as f64;
        let over = |x: f64, y: f64| if x > 0.0 { format!("{:.1}x", y / x) } else { "-".into() };
        let _ = writeln!(
            out,
            "{}→{} agents ({k:.0}x): dispatch time {}, operation overhead (whole operation minus phase time) {}, leader CPU {}, leader RSS {}",
            a.agents,
            b.agents,
            over(a.dispatch_s, b.dispatch_s),
            over(
                a.operation_s - (PHASES.len() as f64 * args.phase_ms as f64 / 1000.0),
                b.operation_s - (PHASES.len() as f64 * args.phase_ms as f64 / 1000.0)
            ),
            over(a.leader_cpu_s, b.leader_cpu_s),
            over(a.leader_rss_mib, b.leader_rss_mib),
        );
    }
    if let Some(r) = rows.iter().max_by_key(|r| r.agents) {
        let _ = writeln!(
            out,
            "targets at {} agents: snapshot skew p99 {:.1} ms (target < 250 ms), failover {} (target < 3 s), coordinator peak memory {:.0} MiB (target < 500 MiB)",
            r.agents,
            r.skew_p99_ms,
            r.failover_s.map(|f| format!("{f:.2} s")).unwrap_or_else(|| "not measured".into()),
            r.leader_peak_rss_mib.max(r.followers_peak_rss_mib)
        );
    }
    for r in rows.iter().filter(|r| !r.failover_note.is_empty()) {
        let _ = writeln!(out, "failover at {} agents: {}", r.agents, r.failover_note);
    }
}
