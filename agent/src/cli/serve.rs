//! `cassette-agent serve`: the agent as a gRPC service for the coordinator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cassette_agent::cassandra::{CassandraConfig, CassandraControl, NodetoolControl};
use cassette_agent::jobs::phases::{self, PhaseEnv};
use cassette_agent::jobs::{JobManager, JobsConfig, PhaseRunner};
use cassette_agent::ops::OpSettings;
use cassette_agent::server::{self, AgentService};
use cassette_agent::storage::{Environment, Repository};
use cassette_common::tls::{self, Role, TlsMode, TlsPaths};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{GlobalArgs, StorageArgs, TransferArgs};

/// Where the agent listens unless told otherwise (with TLS).
const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 7079);

/// Serve the agent API to the coordinator (mutual TLS).
///
/// Example:
///   cassette-agent serve --listen 10.0.0.5:7079 --ca /etc/cassette/ca.pem \
///       --cert /etc/cassette/node1.pem --key /etc/cassette/node1.key --nodetool /usr/bin/nodetool \
///       --location s3://backups/prod
///
/// The repository location, storage and transfer settings come from the config file, the
/// environment and the flags, as for every other command: bytes and bucket credentials stay on
/// the agent, the coordinator only starts phases.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// Address to listen on (default 0.0.0.0:7079; with --insecure 127.0.0.1:7079 unless given).
    /// The coordinator reaches each node's agent at an address pattern such as `{address}:7079`
    /// (`cassette cluster add --agent-pattern`).
    #[arg(long, env = "CASSETTE_AGENT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// CA certificate (PEM) that issued the coordinators' certificates.
    #[arg(long, env = "CASSETTE_TLS_CA", required_unless_present = "insecure")]
    pub ca: Option<PathBuf>,
    /// This agent's certificate (PEM, role agent; `cassette certs issue --role agent --san <address>`).
    #[arg(long, env = "CASSETTE_TLS_CERT", required_unless_present = "insecure")]
    pub cert: Option<PathBuf>,
    /// This agent's private key (PEM).
    #[arg(long, env = "CASSETTE_TLS_KEY", required_unless_present = "insecure")]
    pub key: Option<PathBuf>,
    /// Plain text, no authentication: anyone who reaches the port can run phases. Tests only.
    #[arg(long)]
    pub insecure: bool,
    /// How often the certificate files are checked for changes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,
    /// Log a warning (at start, then daily) when this agent's certificate expires within this long.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub cert_expiry_warning: Duration,
    /// Cassandra adapter settings as a JSON file (fields of CassandraConfig); flags below override it.
    #[arg(long)]
    pub cassandra_config: Option<PathBuf>,
    /// The nodetool program.
    #[arg(long)]
    pub nodetool: Option<PathBuf>,
    /// The cqlsh program.
    #[arg(long)]
    pub cqlsh: Option<PathBuf>,
    /// JMX host of the local node.
    #[arg(long)]
    pub jmx_host: Option<String>,
    /// CQL host of the local node.
    #[arg(long)]
    pub cql_host: Option<String>,
    /// The node's cassandra.yaml (for the data directories of 3.11).
    #[arg(long)]
    pub cassandra_yaml: Option<PathBuf>,
    /// Largest request the agent API decodes, in bytes (larger ones are refused unread).
    #[arg(long, env = "CASSETTE_AGENT_MAX_REQUEST_BYTES", default_value_t = tls::ServerLimits::default().request_bytes)]
    pub max_request_bytes: usize,
    /// Requests (HTTP/2 streams) in flight on one connection.
    #[arg(long, env = "CASSETTE_AGENT_MAX_CONCURRENT_STREAMS", default_value_t = tls::ServerLimits::default().concurrent_streams)]
    pub max_concurrent_streams: u32,
    /// Jobs that run at once.
    #[arg(long, default_value_t = JobsConfig::default().max_running)]
    pub max_running_jobs: usize,
    /// Register the synthetic phases (`synthetic.sleep`, …) used by tests and benchmarks.
    #[arg(long, hide = true)]
    pub enable_test_phases: bool,
}

impl ServeArgs {
    fn cassandra(&self, configured: &CassandraConfig) -> anyhow::Result<CassandraConfig> {
        let mut c = match &self.cassandra_config {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
                serde_json::from_str(&text).with_context(|| format!("parse the Cassandra settings {}", p.display()))?
            }
            None => configured.clone(),
        };
        if let Some(v) = &self.nodetool {
            c.nodetool = v.clone();
        }
        if let Some(v) = &self.cqlsh {
            c.cqlsh = v.clone();
        }
        if let Some(v) = &self.jmx_host {
            c.jmx_host = v.clone();
        }
        if let Some(v) = &self.cql_host {
            c.cql_host = v.clone();
        }
        if let Some(v) = &self.cassandra_yaml {
            c.cassandra_yaml = Some(v.clone());
        }
        Ok(c)
    }
}

/// Runs the service until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs, global: &GlobalArgs) -> anyhow::Result<i32> {
    let tls = match (&args.ca, &args.cert, &args.key) {
        _ if args.insecure => {
            eprintln!("{}", TlsMode::INSECURE_WARNING);
            tracing::warn!("{}", TlsMode::INSECURE_WARNING);
            TlsMode::Insecure
        }
        (Some(ca), Some(cert), Some(key)) => {
            let paths = TlsPaths { ca: ca.clone(), cert: cert.clone(), key: key.clone() };
            let mode = TlsMode::load(Some(&paths), false)?;
            if let Some(ctx) = mode.context()
                && ctx.role() != Role::Agent
            {
                anyhow::bail!(
                    "{} is a {} certificate: the agent needs one issued with `cassette certs issue --role agent`",
                    cert.display(),
                    ctx.role()
                );
            }
            mode
        }
        _ => anyhow::bail!("pass --ca, --cert and --key (or --insecure for plain text in tests)"),
    };
    let limits =
        tls::ServerLimits { request_bytes: args.max_request_bytes, concurrent_streams: args.max_concurrent_streams };
    let problems = limits.problems("");
    if !problems.is_empty() {
        anyhow::bail!("invalid --max-request-bytes or --max-concurrent-streams: {}", problems.join("; "));
    }
    let mut config = global.load_config()?;
    args.storage.apply(&mut config);
    args.transfer.apply(&mut config);
    let state_dir = global.state_dir.clone().or_else(|| config.state_dir.clone()).unwrap_or_else(|| global.state_dir());
    config.state_dir = Some(state_dir.clone());
    config.validate()?;
    let cassandra = args.cassandra(&config.cassandra)?;
    let control: Arc<dyn CassandraControl> =
        Arc::new(NodetoolControl::new(cassandra.clone()).context("configure the Cassandra adapter")?);
    let repo = match &config.location {
        Some(l) => Some(
            Repository::connect(l, &config.storage, &config.transfer, &Environment::capture())
                .with_context(|| format!("connect to the repository {l}"))?,
        ),
        None => {
            tracing::warn!(
                "no repository location (--location, CASSETTE_LOCATION or `location`): backup and restore phases will fail"
            );
            None
        }
    };
    let env = PhaseEnv {
        repo,
        transfer: config.transfer.clone(),
        hash_cache: args.transfer.hash_cache_in(&config, &state_dir),
        cassandra: Arc::clone(&control),
        settings: OpSettings {
            locks: config.locks.clone(),
            removal: config.removal.clone(),
            manifests: config.manifests.clone(),
            state_dir: Some(state_dir.clone()),
            node: config.node.clone(),
        },
        backup: config.backup.clone(),
        restore: config.restore.clone(),
        cassandra_yaml: cassandra.cassandra_yaml.clone(),
    };
    let shutdown = CancellationToken::new();
    let mut runners: Vec<Arc<dyn PhaseRunner>> = phases::all(Arc::new(env));
    if args.enable_test_phases {
        runners.extend(cassette_agent::jobs::synthetic::all());
    }
    let jobs_dir = state_dir.join("jobs");
    let jobs = JobManager::open(
        &jobs_dir,
        runners,
        JobsConfig { max_running: args.max_running_jobs, ..JobsConfig::default() },
        shutdown.clone(),
    )
    .with_context(|| format!("open the job records in {}", jobs_dir.display()))?;
    let (listen, note) = tls::listen_address(args.listen, DEFAULT_LISTEN, args.insecure);
    if let Some(n) = note {
        eprintln!("{n}");
        tracing::warn!("{n}");
    }
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listen on {listen}"))?;
    let local = listener.local_addr()?;
    let reloader =
        tls.context().map(|c| c.spawn_reloader(args.tls_reload_interval, args.cert_expiry_warning, shutdown.clone()));
    let service = AgentService::new(control, Arc::clone(&jobs))
        .with_revocations(&tls, state_dir.join("revoked-certificates.json"))
        .map_err(anyhow::Error::msg)?;
    // The line tests and scripts wait for.
    eprintln!("cassette-agent listening on {local}");
    tracing::info!(address = %local, phases = ?jobs.phases(), "agent serving");
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    server::run(listener, tls, service, limits, shutdown.clone()).await.context("serve the agent API")?;
    shutdown.cancel();
    if let Some(r) = reloader {
        r.join().await;
    }
    Ok(0)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
