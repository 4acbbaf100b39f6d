//! `cassette-bench coordinator`: three `cassette-coordinator serve` processes (production raft
//! timing) driving phases on N agents that run in this process, each serving the real agent
//! gRPC API (`cassette_agent::server`) on its own loopback address, over mutual TLS by default.
//!
//! The agents' Cassandra is an in-memory ring of N nodes over the datacenters; their phases are
//! the names given with `--phases`, each sleeping `--phase-ms` and recording when it started and
//! ended, so the skew between nodes is measured where it matters: when the phase began on each
//! agent. The operation is started with the operator API's `RunPhases` (phases one after the
//! other, a barrier between them) and followed with `OperationStatus`.

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
use cassette_agent::jobs::{JobContext, JobManager, JobsConfig, PhaseError, PhaseRunner};
use cassette_agent::server::{self as agent_server, AgentService};
use cassette_common::tls::{Role, TlsMode};
use cassette_coordinator::client::OperatorClient;
use cassette_integration::coordinator::TestPki;
use cassette_integration::process::ManagedProcess;
use cassette_integration::tools::{free_port, workspace_binary};
use cassette_proto::v1 as pb;
use serde::Serialize;
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
    /// Phases the agents serve and the operation runs, in order (a barrier between them). The
    /// first is the one whose skew is reported.
    #[arg(long, value_delimiter = ',', default_values = ["snapshot", "upload", "manifest", "clear"])]
    phases: Vec<String>,
    /// How long each phase takes on an agent.
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

/// A phase that records when it ran and sleeps `duration_ms`.
#[derive(Debug)]
struct BenchPhase {
    name: String,
    agent: usize,
    recorder: Arc<Recorder>,
}

#[async_trait::async_trait]
impl PhaseRunner for BenchPhase {
    fn name(&self) -> &str {
        &self.name
    }

    fn resumable(&self) -> bool {
        true
    }

    async fn run(&self, ctx: JobContext) -> Result<serde_json::Value, PhaseError> {
        let start = now_us();
        let ms = ctx.params.get("duration_ms").and_then(|v| v.as_u64()).unwrap_or(100);
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Err(PhaseError::cancelled()),
            _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
        }
        let end = now_us();
        self.recorder
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((self.name.clone(), self.agent))
            .or_insert((start, end));
        Ok(serde_json::json!({ "slept_ms": ms }))
    }
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
            tokens: (0..16).map(|t| ((self.me as i64) * 16 + t).to_string()).collect(),
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
    /// Command → the last agent started the first phase.
    dispatch_s: f64,
    /// Command → the last agent finished the first phase ("all snapshots taken").
    first_phase_done_s: f64,
    /// Command → the operation recorded as succeeded (every phase, barriers included).
    operation_s: f64,
    skew_p50_ms: f64,
    skew_p99_ms: f64,
    skew_max_ms: f64,
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

struct Replica {
    id: u64,
    address: String,
    process: Option<ManagedProcess>,
    log: PathBuf,
}

pub fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    if args.phases.is_empty() {
        bail!("--phases needs at least one phase name");
    }
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
    let mut servers = Vec::new();
    for (i, addr) in addresses.iter().enumerate() {
        let dir = work.join("agents").join(i.to_string());
        let runners: Vec<Arc<dyn PhaseRunner>> = args
            .phases
            .iter()
            .map(|p| Arc::new(BenchPhase { name: p.clone(), agent: i, recorder: Arc::clone(&recorder) }) as _)
            .collect();
        let jobs = JobManager::open(&dir.join("jobs"), runners, JobsConfig::default(), shutdown.clone())?;
        let control = Arc::new(RingControl { me: i, ring: Arc::clone(&ring), dir: dir.clone() });
        let listener = tokio::net::TcpListener::bind(format!("{addr}:{port}"))
            .await
            .with_context(|| format!("listen on {addr}:{port} (the loopback range 127.10.0.0/16 must be usable)"))?;
        let (tls, stop) = (agent_tls.clone(), shutdown.clone());
        servers.push(tokio::spawn(async move {
            let _ = agent_server::run(listener, tls, AgentService::new(control, jobs), stop).await;
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

async fn op_status(client: &OperatorClient, id: &str) -> anyhow::Result<pb::OperationStatusResponse> {
    let id = id.to_owned();
    Ok(client
        .call(move |mut c| {
            let id = id.clone();
            async move { c.operation_status(pb::OperationStatusRequest { operation_id: id }).await }
        })
        .await?)
}

async fn start_op(client: &OperatorClient, phases: &[String], ms: u64) -> anyhow::Result<String> {
    let phases = phases.to_vec();
    let r = client
        .call(move |mut c| {
            let req = pb::RunPhasesRequest {
                cluster: "bench".into(),
                phases: phases.clone(),
                params_json: serde_json::json!({ "duration_ms": ms }).to_string(),
                kind: "bench".into(),
            };
            async move { c.run_phases(req).await }
        })
        .await?;
    Ok(r.operation_id)
}

fn finished(s: &pb::OperationStatusResponse) -> u32 {
    s.phases.iter().map(|p| p.succeeded + p.failed + p.cancelled).sum()
}

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

    // One operation: every phase on every node, barrier between phases.
    let (cpu0, _, _) = proc_usage(leader_pid).unwrap_or_default();
    let t0_us = now_us();
    let t = Instant::now();
    let id = start_op(&client, &args.phases, args.phase_ms).await?;
    let end = loop {
        let s = op_status(&client, &id).await?;
        if s.state != "running" {
            break s;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("operation {id} did not finish in 10 minutes: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    row.operation_s = t.elapsed().as_secs_f64();
    if end.state != "succeeded" {
        bail!("operation {id} ended {}: {}", end.state, end.error);
    }
    let (cpu1, rss, hwm) = proc_usage(leader_pid).unwrap_or_default();
    row.leader_cpu_s = cpu1 - cpu0;
    row.leader_rss_mib = rss;
    row.leader_peak_rss_mib = hwm;
    let first = &args.phases[0];
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
        "   operation {:.2}s, dispatch {:.3}s, skew p99 {:.1} ms, commit p99 {:.1} ms, leader CPU {:.2}s, RSS {:.0} MiB",
        row.operation_s, row.dispatch_s, row.skew_p99_ms, row.commit_p99_ms, row.leader_cpu_s, row.leader_rss_mib
    );

    if args.no_failover || replicas.len() < 3 {
        row.failover_note = "not measured".into();
        return Ok(());
    }
    // Failover: a longer operation; the leader is killed once the second phase is under way.
    let phases = args.phases.clone();
    let id = start_op(&client, &phases, args.phase_ms).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let before = loop {
        let s = op_status(&client, &id).await?;
        // With one phase: once it runs everywhere; otherwise once the second one is under way.
        let under_way = match s.phases.get(1) {
            Some(p) => p.running + p.succeeded > 0,
            None => s.phases.first().is_some_and(|p| p.running as usize == n),
        };
        if under_way || s.state != "running" {
            break s;
        }
        if Instant::now() > deadline {
            bail!("the failover operation did not reach its second phase");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if before.state != "running" {
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
        if let Ok(s) = op_status(&survivors, &id).await
            && (finished(&s) > done_before || s.state != "running")
        {
            break killed.elapsed().as_secs_f64();
        }
        if killed.elapsed() > Duration::from_secs(120) {
            bail!("the operation made no progress within 120 s of the leader's death");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    row.failover_s = Some(resumed);
    let end = loop {
        let s = op_status(&survivors, &id).await?;
        if s.state != "running" {
            break s;
        }
        if killed.elapsed() > Duration::from_secs(600) {
            bail!("the failover operation did not finish");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    row.failover_note = format!(
        "leader {leader} killed with {done_before}/{} phase runs recorded; operation {}",
        n * phases.len(),
        end.state
    );
    eprintln!("   failover: progress again {resumed:.2}s after kill -9 of the leader; {}", row.failover_note);
    if end.state != "succeeded" {
        bail!("the operation ended {} after the failover: {}", end.state, end.error);
    }
    Ok(())
}

fn print_table(args: &CoordinatorArgs, rows: &[ScaleRow], load: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nCoordinator benchmark: {} coordinator replicas (separate processes, production raft timing: 100 ms ticks), N in-process agents serving the agent gRPC API over {}, {} datacenters; phases {} of {} ms each with a barrier between them; {} cores, load average at start {load}",
        args.replicas,
        rows.first().map(|r| r.tls.as_str()).unwrap_or("-"),
        args.datacenters,
        args.phases.join(" → "),
        args.phase_ms,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    );
    let _ = writeln!(
        out,
        "\n| agents | register s | command → all started s | command → all {} done s | whole operation s | skew p50 / p99 / max ms | raft commit p50 / p99 ms | leader CPU s | leader RSS / peak MiB | failover s |",
        args.phases[0]
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---|---|---:|---|---:|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.3} | {:.3} | {:.2} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} | {:.2} | {:.0} / {:.0} | {} |",
            r.agents,
            r.register_s,
            r.dispatch_s,
            r.first_phase_done_s,
            r.operation_s,
            r.skew_p50_ms,
            r.skew_p99_ms,
            r.skew_max_ms,
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
                a.operation_s - (args.phases.len() as f64 * args.phase_ms as f64 / 1000.0),
                b.operation_s - (args.phases.len() as f64 * args.phase_ms as f64 / 1000.0)
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
