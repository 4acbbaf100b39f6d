//! The command lines: `cassette` (operator) and `cassette-coordinator` (a replica).
//!
//! Every `cassette` command prints text, or one JSON document with `--output json`; errors go
//! to stderr as `error: …` (and as `{"error": …}` on stdout with `--output json`), exit code 1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use cassette_common::tls::{Role, TlsMode, TlsPaths};
use cassette_proto::v1 as pb;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub mod operations;
pub mod schedules;

use crate::certs;
use crate::client::OperatorClient;
use crate::raft::{Bootstrap, RaftConfig};
use crate::server::{Replica, ReplicaConfig};
use crate::service::status_view;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON document on stdout.
    Json,
}

/// Mutual-TLS material and the insecure switch.
#[derive(Debug, Args, Clone)]
pub struct TlsArgs {
    /// CA certificate (PEM) made by `cassette certs init`.
    #[arg(long, global = true, env = "CASSETTE_TLS_CA")]
    pub ca: Option<PathBuf>,
    /// This process's certificate (PEM) made by `cassette certs issue`.
    #[arg(long, global = true, env = "CASSETTE_TLS_CERT")]
    pub cert: Option<PathBuf>,
    /// This process's private key (PEM).
    #[arg(long, global = true, env = "CASSETTE_TLS_KEY")]
    pub key: Option<PathBuf>,
    /// Plain text without authentication (tests only; prints a warning).
    #[arg(long, global = true)]
    pub insecure: bool,
}

impl TlsArgs {
    /// Loads the material; checks the certificate has `role`.
    pub fn load(&self, role: Role) -> anyhow::Result<TlsMode> {
        self.load_any(&[role])
    }

    /// Loads the material; checks the certificate has one of `roles` (the first is named in
    /// errors).
    pub fn load_any(&self, roles: &[Role]) -> anyhow::Result<TlsMode> {
        let role = roles.first().copied().unwrap_or(Role::Operator);
        if self.insecure {
            eprintln!("{}", TlsMode::INSECURE_WARNING);
            return Ok(TlsMode::Insecure);
        }
        let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) else {
            bail!(
                "mutual TLS needs --ca, --cert and --key (or CASSETTE_TLS_CA/CERT/KEY): make them with `cassette certs init` and `cassette certs issue --role {role}`; --insecure for plain text in tests"
            );
        };
        let mode = TlsMode::load(Some(&TlsPaths { ca: ca.clone(), cert: cert.clone(), key: key.clone() }), false)?;
        if let Some(c) = mode.context()
            && !roles.contains(&c.role())
        {
            let also: Vec<String> =
                roles[1..].iter().map(|r| format!("; {} certificate works too", r.with_article())).collect();
            bail!(
                "{} is {} certificate, but this program needs {} certificate (`cassette certs issue --role {role}`{})",
                cert.display(),
                c.role().with_article(),
                role.with_article(),
                also.concat()
            );
        }
        Ok(mode)
    }
}

/// `cassette`: operate Cassette.
#[derive(Debug, Parser)]
#[command(name = "cassette", version, propagate_version = true, max_term_width = 110)]
pub struct OperatorCli {
    /// Coordinator replicas (host:port), any of them; the CLI finds the leader.
    #[arg(long, global = true, env = "CASSETTE_COORDINATOR", value_delimiter = ',')]
    pub coordinator: Vec<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// How long to wait for a leader (e.g. during an election).
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t, env = "CASSETTE_OUTPUT")]
    pub output: OutputFormat,
    /// The id of this request when it starts an operation (backup, restore, verify, delete,
    /// purge): running the same command again with the same id returns the operation the
    /// first one started instead of starting another. Default: a new random id.
    #[arg(long, global = true, env = "CASSETTE_REQUEST_ID")]
    pub request_id: Option<String>,
    /// Log filter (also RUST_LOG).
    #[arg(long, global = true, env = "RUST_LOG", default_value = "warn")]
    pub log: String,
    #[command(subcommand)]
    pub command: OperatorCommand,
}

/// Commands of `cassette`.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Make the CA and certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Registered Cassandra clusters.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The coordinator's replicas (raft group).
    #[command(subcommand)]
    Replica(ReplicaCommand),
    /// Diagnostics: replicated state, test writes, fault injection.
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Cluster backups: create, list, show, verify, delete.
    #[command(subcommand)]
    Backup(operations::BackupCommand),
    /// Cluster restores.
    #[command(subcommand)]
    Restore(operations::RestoreCommand),
    /// Cluster operations: list, show, watch (progress per node and datacenter).
    #[command(subcommand)]
    Operations(operations::OperationsCommand),
    /// Backup schedules: cron in a time zone, retention, pause, run-now.
    #[command(subcommand)]
    Schedule(schedules::ScheduleCommand),
}

/// `cassette certs`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a CA: DIR/ca.pem and DIR/ca.key (keep ca.key offline).
    ///
    /// Example: cassette certs init --dir /etc/cassette/ca
    Init {
        /// Directory for ca.pem and ca.key.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's name.
        #[arg(long, default_value = "cassette-ca")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate for a coordinator replica, an agent, an operator or an admin.
    ///
    /// Writes the bundle for one host (<name>.pem, <name>.key, ca.pem) into --out (default
    /// ./<name>); the CA's key stays where it is.
    /// Example: cassette certs issue --dir /etc/cassette/ca --role agent --name node1 --san 10.0.0.5 --san node1.dc1
    Issue {
        /// Directory of the CA (ca.pem, ca.key).
        #[arg(long)]
        dir: PathBuf,
        /// Where to write <name>.pem, <name>.key and ca.pem: the bundle to copy to the host
        /// (default: ./<name>). Never the CA directory: it holds ca.key.
        #[arg(long)]
        out: Option<PathBuf>,
        /// coordinator, agent, operator or admin (docs/security.md: what each may do).
        #[arg(long)]
        role: Role,
        /// Name (certificate common name and file name).
        #[arg(long)]
        name: String,
        /// Addresses and DNS names clients use to reach the holder (servers: every one; repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Show a certificate's role, names, serial and validity.
    Show {
        /// The PEM file.
        file: PathBuf,
    },
    /// Revoke a certificate (admin): coordinators and agents refuse it from now on.
    ///
    /// The deny list is replicated by the coordinators and pushed to every registered agent.
    /// Example: cassette certs revoke --file alice/alice.pem --reason "laptop lost"
    #[command(group(clap::ArgGroup::new("which").required(true).args(["file", "serial", "name"])))]
    Revoke {
        /// The certificate file (its serial number is revoked). (--cert is this CLI's own certificate.)
        #[arg(long)]
        file: Option<PathBuf>,
        /// A serial number (hex, as `cassette certs show` prints it).
        #[arg(long)]
        serial: Option<String>,
        /// A certificate name: every certificate of that name, issued before or after.
        #[arg(long)]
        name: Option<String>,
        /// Why (kept in the record).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// `cassette cluster`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Register a cluster through one of its agents.
    ///
    /// Reads the ring through the agent, expects an agent on every node at the address pattern,
    /// and checks each one. Example: cassette cluster add prod --agent 10.0.0.5:7079
    Add {
        /// Name for the cluster in Cassette.
        name: String,
        /// One agent (host:port).
        #[arg(long)]
        agent: String,
        /// Where each node's agent listens: {address} (the node's address), {host_id}, {datacenter}, {rack}.
        /// Default: {address}:<port of --agent>.
        #[arg(long)]
        agent_pattern: Option<String>,
        /// Register even if some agents are unreachable or disagree.
        #[arg(long)]
        allow_unhealthy: bool,
    },
    /// Registered clusters.
    List,
    /// Every node: agent reachable, Cassandra up, version, dc, rack, tokens, disk free.
    ///
    /// Probes every agent now (or shows the last recorded health with --cached). Exit code 2
    /// when an agent is unreachable or a node is down. Example: cassette cluster status prod
    Status {
        /// The cluster.
        name: String,
        /// Show the last recorded health instead of asking the agents now.
        #[arg(long)]
        cached: bool,
    },
    /// Forget a cluster (its backups stay in the catalog and in storage).
    Remove {
        /// The cluster.
        name: String,
    },
}

/// `cassette replica`.
#[derive(Debug, Subcommand)]
pub enum ReplicaCommand {
    /// Raft status of each replica given with --coordinator (or of the leader with --leader).
    Status {
        /// Ask the leader only.
        #[arg(long)]
        leader: bool,
    },
    /// Add a voting replica (start it first with `cassette-coordinator serve --join --id N`).
    Add {
        /// Its raft id (never reuse an id).
        #[arg(long)]
        id: u64,
        /// The address it serves on.
        #[arg(long)]
        address: String,
    },
    /// Remove a replica from the group (then stop its process).
    Remove {
        /// Its raft id.
        #[arg(long)]
        id: u64,
    },
    /// Hand leadership to another replica.
    TransferLeader {
        /// Its raft id.
        #[arg(long)]
        to: u64,
    },
}

/// `cassette debug`.
#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Write a diagnostic value through raft (debug/<key>).
    Put {
        /// Key.
        #[arg(value_name = "KEY")]
        name: String,
        /// Value.
        value: String,
    },
    /// Read replicated records (linearizable): a key (`debug/x`, `cluster/prod`) or a prefix ending in `/`.
    Get {
        /// Key or prefix.
        #[arg(value_name = "KEY")]
        name: String,
    },
    /// Fault injection on the raft transport of ONE replica (the first --coordinator; it must run
    /// with --enable-fault-injection).
    Faults {
        /// Drop all raft traffic to and from it.
        #[arg(long)]
        isolate: bool,
        /// Drop this fraction of messages.
        #[arg(long, default_value_t = 0.0)]
        drop_rate: f64,
        /// Delay outgoing messages.
        #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
        delay: Duration,
    },
}

fn print(output: OutputFormat, value: &Value, text: impl FnOnce() -> String) {
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        OutputFormat::Text => println!("{}", text()),
    }
}

fn replica_json(s: &pb::ReplicaStatusResponse) -> Value {
    json!({
        "id": s.id, "address": s.address, "role": s.role, "term": s.term,
        "leader_id": s.leader_id, "leader_address": s.leader_address,
        "commit_index": s.commit_index, "applied_index": s.applied_index,
        "first_index": s.first_index, "last_index": s.last_index, "snapshot_index": s.snapshot_index,
        "snapshots_received": s.snapshots_received, "version": s.version,
        "replicas": s.replicas.iter().map(|r| json!({"id": r.id, "address": r.address, "kind": r.kind, "matched": r.matched})).collect::<Vec<_>>(),
    })
}

fn replica_text(s: &pb::ReplicaStatusResponse) -> String {
    let mut out = format!(
        "replica {} at {}: {} (term {}, leader {}), commit {}, applied {}, log {}..{}, snapshot {}\n",
        s.id,
        s.address,
        s.role,
        s.term,
        if s.leader_id == 0 { "unknown".to_owned() } else { format!("{} at {}", s.leader_id, s.leader_address) },
        s.commit_index,
        s.applied_index,
        s.first_index,
        s.last_index,
        s.snapshot_index
    );
    for r in &s.replicas {
        out.push_str(&format!(
            "  {:>3} {:<8} {}{}\n",
            r.id,
            r.kind,
            r.address,
            if r.matched > 0 { format!(" (matched {})", r.matched) } else { String::new() }
        ));
    }
    out.trim_end().to_owned()
}

fn bytes(n: u64) -> String {
    bytesize_text(n)
}

fn bytesize_text(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", U[i]) }
}

fn node_json(n: &pb::NodeView) -> Value {
    json!({
        "host_id": n.host_id, "address": n.address, "agent_address": n.agent_address,
        "datacenter": n.datacenter, "rack": n.rack, "tokens": n.token_count,
        "release_version": n.release_version, "agent_reachable": n.agent_reachable,
        "cassandra_up": n.cassandra_up, "disk_free_bytes": n.disk_free_bytes,
        "disk_total_bytes": n.disk_total_bytes, "problem": n.problem,
        "checked_at_ms": n.checked_at_ms, "agent_version": n.agent_version,
    })
}

fn cluster_json(c: &pb::ClusterView) -> Value {
    json!({
        "name": c.name, "cassandra_cluster_name": c.cassandra_cluster_name,
        "agent_pattern": c.agent_pattern, "created_at_ms": c.created_at_ms,
        "nodes": c.nodes.iter().map(node_json).collect::<Vec<_>>(),
    })
}

fn cluster_text(c: &pb::ClusterView) -> String {
    let mut rows = vec![
        ["ADDRESS", "DC", "RACK", "HOST ID", "AGENT", "CASSANDRA", "VERSION", "TOKENS", "DISK FREE"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for n in &c.nodes {
        rows.push(vec![
            n.address.clone(),
            n.datacenter.clone(),
            n.rack.clone(),
            n.host_id.clone(),
            if n.agent_reachable {
                format!("up ({})", n.agent_address)
            } else {
                format!("UNREACHABLE ({})", n.agent_address)
            },
            if n.cassandra_up { "up".into() } else { "DOWN".into() },
            n.release_version.clone(),
            n.token_count.to_string(),
            if n.disk_total_bytes > 0 {
                format!("{} of {}", bytes(n.disk_free_bytes), bytes(n.disk_total_bytes))
            } else {
                "-".into()
            },
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = format!(
        "cluster {} (Cassandra cluster {:?}, {} nodes, agents at {})\n",
        c.name,
        c.cassandra_cluster_name,
        c.nodes.len(),
        c.agent_pattern
    );
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let problems: Vec<String> =
        c.nodes.iter().filter(|n| !n.problem.is_empty()).map(|n| format!("  {}: {}", n.address, n.problem)).collect();
    if !problems.is_empty() {
        out.push_str("problems:\n");
        out.push_str(&problems.join("\n"));
    }
    out.trim_end().to_owned()
}

fn cert_json(w: &certs::Written) -> Value {
    serde_json::to_value(w).unwrap_or(Value::Null)
}

/// Runs `cassette`. Returns the exit code.
pub async fn run_operator(cli: OperatorCli) -> anyhow::Result<i32> {
    let out = cli.output;
    if let OperatorCommand::Certs(c) = &cli.command
        && !matches!(c, CertsCommand::Revoke { .. })
    {
        return run_certs(c, out);
    }
    let tls = cli.tls.load_any(crate::service::OPERATOR_ROLES)?;
    let mut client = OperatorClient::new(cli.coordinator.clone(), tls, cli.wait)?;
    if let Some(id) = &cli.request_id {
        client = client.with_request_id(id.clone());
    }
    match cli.command {
        OperatorCommand::Certs(CertsCommand::Revoke { file, serial, name, reason }) => {
            revoke(&client, file, serial, name, reason, out).await
        }
        OperatorCommand::Certs(_) => unreachable_certs(),
        OperatorCommand::Cluster(c) => run_cluster(c, &client, out).await,
        OperatorCommand::Replica(c) => run_replica(c, &client, &cli.coordinator, out).await,
        OperatorCommand::Debug(c) => run_debug(c, &client, &cli.coordinator, out).await,
        OperatorCommand::Backup(c) => operations::run_backup(c, &client, out).await,
        OperatorCommand::Restore(c) => operations::run_restore(c, &client, out).await,
        OperatorCommand::Operations(c) => operations::run_operations(c, &client, out).await,
        OperatorCommand::Schedule(c) => schedules::run(c, &client, out).await,
    }
}

fn unreachable_certs() -> anyhow::Result<i32> {
    bail!("internal: certs handled above")
}

async fn revoke(
    client: &OperatorClient,
    cert: Option<PathBuf>,
    serial: Option<String>,
    name: Option<String>,
    reason: String,
    out: OutputFormat,
) -> anyhow::Result<i32> {
    let (serial, name) = match (cert, serial, name) {
        (Some(f), _, _) => {
            let info = certs::show(&f)?.into_iter().next().context("no certificate in the file")?;
            if info.is_ca {
                bail!("{} is the CA certificate: revoke the certificates it issued, or make a new CA", f.display());
            }
            (info.serial, info.common_name)
        }
        (None, Some(s), n) => (s, n.unwrap_or_default()),
        (None, None, Some(n)) => (String::new(), n),
        (None, None, None) => bail!("name the certificate to revoke: --file FILE, --serial HEX or --name NAME"),
    };
    let req = pb::RevokeRequest { serial: serial.clone(), name: name.clone(), reason };
    // Revoking is idempotent (a second revocation of the same certificate changes nothing).
    let r = client
        .call(|mut c| {
            let r = req.clone();
            async move { c.revoke(r).await }
        })
        .await?;
    let v: Value = serde_json::from_str(&r.json)?;
    let what = if serial.is_empty() {
        format!("every certificate named {name:?}")
    } else {
        format!("certificate {name:?} (serial {serial})")
    };
    print(out, &v, || {
        let mut s = format!(
            "revoked {what}: the coordinators refuse it from now on (revocation list version {}); {} of {} agents hold the list",
            v["version"], v["agents_updated"], v["agents_total"]
        );
        for f in v["agents_failed"].as_array().into_iter().flatten() {
            s.push_str(&format!("\n  not yet: {} (retried at every health check)", f.as_str().unwrap_or_default()));
        }
        s
    });
    Ok(0)
}

fn run_certs(c: &CertsCommand, out: OutputFormat) -> anyhow::Result<i32> {
    match c {
        CertsCommand::Init { dir, name, days, force } => {
            let w = certs::init_ca(dir, name, *days, *force)?;
            print(out, &cert_json(&w), || {
                format!(
                    "CA {name:?} created: {} (certificate, give to every process) and {} (key: keep it private; only `certs issue` needs it); valid until {}",
                    w.cert.display(),
                    w.key.display(),
                    w.not_after
                )
            });
        }
        CertsCommand::Issue { dir, out: out_dir, role, name, sans, days, force } => {
            let req = certs::IssueRequest::valid_for_days(*role, name, sans.clone(), *days);
            let out_dir = out_dir.clone().unwrap_or_else(|| PathBuf::from(name));
            let same = |a: &std::path::Path, b: &std::path::Path| {
                a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
            };
            if same(&out_dir, dir) {
                bail!(
                    "--out {} is the CA's directory, which holds ca.key: write the bundle for a host elsewhere (the default is ./{name})",
                    out_dir.display()
                );
            }
            let w = certs::issue(dir, &out_dir, &req, *force)?;
            print(out, &cert_json(&w), || {
                let mut s = format!(
                    "{role} certificate {name:?}: {} and {} (with {}), valid until {}; copy the directory {} to the host that uses it",
                    w.cert.display(),
                    w.key.display(),
                    out_dir.join("ca.pem").display(),
                    w.not_after,
                    out_dir.display()
                );
                if sans.is_empty() && matches!(*role, Role::Coordinator | Role::Agent) {
                    s.push_str("\nwarning: no --san: clients verify the server's address against the certificate, so a server certificate needs every address it is reached at");
                }
                s
            });
        }
        CertsCommand::Revoke { .. } => bail!("internal: certs revoke needs the coordinator"),
        CertsCommand::Show { file } => {
            let infos = certs::show(file)?;
            let fmt_t = |t: std::time::SystemTime| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339();
            let v: Vec<Value> = infos
                .iter()
                .map(|i| {
                    json!({"name": i.common_name, "role": i.role, "names": i.names, "is_ca": i.is_ca, "serial": i.serial,
                        "not_before": fmt_t(i.not_before), "not_after": fmt_t(i.not_after),
                        "expired": i.not_after < std::time::SystemTime::now()})
                })
                .collect();
            print(out, &Value::Array(v), || {
                infos
                    .iter()
                    .map(|i| {
                        format!(
                            "{:?}: role {}, names [{}], serial {}, valid {} .. {}{}",
                            i.common_name,
                            i.role.map(|r| r.to_string()).unwrap_or_else(|| if i.is_ca {
                                "CA".into()
                            } else {
                                "none".into()
                            }),
                            i.names.join(", "),
                            i.serial,
                            fmt_t(i.not_before),
                            fmt_t(i.not_after),
                            if i.not_after < std::time::SystemTime::now() { " (EXPIRED)" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(0)
}

async fn run_cluster(c: ClusterCommand, client: &OperatorClient, out: OutputFormat) -> anyhow::Result<i32> {
    match c {
        ClusterCommand::Add { name, agent, agent_pattern, allow_unhealthy } => {
            let req = pb::ClusterAddRequest {
                name,
                seed_agent: agent,
                agent_pattern: agent_pattern.unwrap_or_default(),
                allow_unhealthy,
            };
            // Not idempotent (a second add is refused as "already registered"): sent again only
            // when it certainly did not run.
            let v = client
                .call_once(|mut c| {
                    let r = req.clone();
                    async move { c.cluster_add(r).await }
                })
                .await?;
            print(out, &cluster_json(&v), || format!("registered {}\n{}", v.name, cluster_text(&v)));
        }
        ClusterCommand::List => {
            let v = client.call(|mut c| async move { c.cluster_list(pb::ClusterListRequest {}).await }).await?;
            print(out, &json!({"clusters": v.clusters.iter().map(cluster_json).collect::<Vec<_>>()}), || {
                if v.clusters.is_empty() {
                    return "no clusters registered (cassette cluster add <name> --agent host:port)".into();
                }
                v.clusters
                    .iter()
                    .map(|c| {
                        format!(
                            "{}  {:?}  {} nodes  agents at {}",
                            c.name,
                            c.cassandra_cluster_name,
                            c.nodes.len(),
                            c.agent_pattern
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        ClusterCommand::Status { name, cached } => {
            let req = pb::ClusterStatusRequest { name, cached };
            let v = client
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.cluster_status(r).await }
                })
                .await?;
            let cluster = v.cluster.unwrap_or_default();
            let mut j = cluster_json(&cluster);
            j["warnings"] = json!(v.warnings);
            print(out, &j, || {
                let mut t = cluster_text(&cluster);
                if !v.warnings.is_empty() {
                    t.push_str("\nwarnings:\n");
                    t.push_str(&v.warnings.iter().map(|w| format!("  {w}")).collect::<Vec<_>>().join("\n"));
                }
                t
            });
            let unhealthy = cluster.nodes.iter().any(|n| !n.agent_reachable || !n.cassandra_up);
            return Ok(if unhealthy { 2 } else { 0 });
        }
        ClusterCommand::Remove { name } => {
            let req = pb::ClusterRemoveRequest { name: name.clone() };
            client
                .call_once(|mut c| {
                    let r = req.clone();
                    async move { c.cluster_remove(r).await }
                })
                .await?;
            print(out, &json!({"removed": name}), || format!("cluster {name} removed from the registry"));
        }
    }
    Ok(0)
}

async fn run_replica(
    c: ReplicaCommand,
    client: &OperatorClient,
    endpoints: &[String],
    out: OutputFormat,
) -> anyhow::Result<i32> {
    match c {
        ReplicaCommand::Status { leader } => {
            let mut results = Vec::new();
            if leader {
                let s = client.call(|mut c| async move { c.replica_status(pb::ReplicaStatusRequest {}).await }).await?;
                results.push((s.address.clone(), Ok(s)));
            } else {
                for e in endpoints {
                    let r =
                        client.at(e, |mut c| async move { c.replica_status(pb::ReplicaStatusRequest {}).await }).await;
                    results.push((e.clone(), r));
                }
            }
            let json = Value::Array(
                results
                    .iter()
                    .map(|(a, r)| match r {
                        Ok(s) => replica_json(s),
                        Err(e) => json!({"address": a, "error": e.to_string()}),
                    })
                    .collect(),
            );
            print(out, &json, || {
                results
                    .iter()
                    .map(|(a, r)| match r {
                        Ok(s) => replica_text(s),
                        Err(e) => format!("replica at {a}: {e}"),
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            return Ok(if results.iter().all(|(_, r)| r.is_ok()) { 0 } else { 1 });
        }
        ReplicaCommand::Add { id, address } => {
            let req = pb::AddReplicaRequest { id, address };
            let r = client
                .call_once(|mut c| {
                    let r = req.clone();
                    async move { c.add_replica(r).await }
                })
                .await?;
            print(out, &json!({"message": r.message, "status": r.status.as_ref().map(replica_json)}), || {
                r.message.clone()
            });
        }
        ReplicaCommand::Remove { id } => {
            let req = pb::RemoveReplicaRequest { id };
            let r = client.call_once(|mut c| async move { c.remove_replica(req).await }).await?;
            print(out, &json!({"message": r.message, "status": r.status.as_ref().map(replica_json)}), || {
                r.message.clone()
            });
        }
        ReplicaCommand::TransferLeader { to } => {
            let req = pb::TransferLeaderRequest { to };
            let r = client.call_once(|mut c| async move { c.transfer_leader(req).await }).await?;
            print(out, &json!({"message": r.message}), || r.message.clone());
        }
    }
    Ok(0)
}

async fn run_debug(
    c: DebugCommand,
    client: &OperatorClient,
    endpoints: &[String],
    out: OutputFormat,
) -> anyhow::Result<i32> {
    match c {
        DebugCommand::Put { name: key, value } => {
            let req = pb::DebugPutRequest { key: key.clone(), value };
            // Not idempotent: every write counts (`writes` in the record).
            let r = client
                .call_once(|mut c| {
                    let r = req.clone();
                    async move { c.debug_put(r).await }
                })
                .await?;
            print(out, &json!({"key": key, "index": r.index}), || {
                format!("debug/{key} written at raft index {}", r.index)
            });
        }
        DebugCommand::Get { name: key } => {
            let req = pb::StateGetRequest { key };
            let r = client
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.state_get(r).await }
                })
                .await?;
            let values: BTreeMap<String, Value> =
                r.values.iter().map(|(k, v)| (k.clone(), serde_json::from_str(v).unwrap_or(Value::Null))).collect();
            print(out, &json!({"applied_index": r.applied_index, "values": values}), || {
                values.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join("\n")
            });
        }
        DebugCommand::Faults { isolate, drop_rate, delay } => {
            let Some(target) = endpoints.first() else { bail!("name the replica with --coordinator host:port") };
            let req = pb::SetFaultsRequest { isolate, drop_rate, delay_ms: delay.as_millis() as u64 };
            client.at(target, |mut c| async move { c.set_faults(req).await }).await?;
            print(
                out,
                &json!({"replica": target, "isolate": isolate, "drop_rate": drop_rate, "delay_ms": delay.as_millis() as u64}),
                || format!("faults on {target}: isolate={isolate} drop_rate={drop_rate} delay={delay:?}"),
            );
        }
    }
    Ok(0)
}

/// `cassette-coordinator`: a coordinator replica.
#[derive(Debug, Parser)]
#[command(name = "cassette-coordinator", version, propagate_version = true, max_term_width = 110)]
pub struct CoordinatorCli {
    /// Log filter (also RUST_LOG).
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: CoordinatorCommand,
}

/// Commands of `cassette-coordinator`.
#[derive(Debug, Subcommand)]
pub enum CoordinatorCommand {
    /// Run one replica.
    Serve(ServeArgs),
}

/// `cassette-coordinator serve`.
///
/// One replica alone (the default) needs only a state directory. For a group of three or five,
/// start each with the same --peers list (first start only), or start a new replica with --join
/// and add it with `cassette replica add`.
///
/// Example: cassette-coordinator serve --listen 10.0.0.1:7070 --state-dir /var/lib/cassette-coordinator \
///     --id 1 --peers 1=10.0.0.1:7070,2=10.0.0.2:7070,3=10.0.0.3:7070 --ca ca.pem --cert c1.pem --key c1.key
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Settings file (JSON, fields of ReplicaConfig); flags and CASSETTE_* variables override it.
    #[arg(long, env = "CASSETTE_COORDINATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (raft transport and operator API; default 127.0.0.1:7070, with
    /// --insecure always loopback unless given).
    #[arg(long, env = "CASSETTE_COORDINATOR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address others reach this replica at (default: --listen).
    #[arg(long, env = "CASSETTE_COORDINATOR_ADVERTISE")]
    pub advertise: Option<String>,
    /// State directory.
    #[arg(long, env = "CASSETTE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Raft id of this replica.
    #[arg(long, env = "CASSETTE_COORDINATOR_ID")]
    pub id: Option<u64>,
    /// Initial replicas of a new group, `id=host:port,…` (used on the first start only).
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Start empty and wait to be added by `cassette replica add`.
    #[arg(long, conflicts_with = "peers")]
    pub join: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Raft tick.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub tick: Option<Duration>,
    /// Ticks before an election.
    #[arg(long)]
    pub election_ticks: Option<usize>,
    /// Ticks between heartbeats.
    #[arg(long)]
    pub heartbeat_ticks: Option<usize>,
    /// Applied entries between snapshots.
    #[arg(long)]
    pub snapshot_interval: Option<u64>,
    /// Entries kept behind a snapshot.
    #[arg(long)]
    pub compact_keep: Option<u64>,
    /// Interval of the leader's agent health checks.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_interval: Option<Duration>,
    /// Interval of certificate reload checks.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Option<Duration>,
    /// Accept fault-injection requests (tests only).
    #[arg(long, hide = true)]
    pub enable_fault_injection: bool,
    /// An agent that does not answer for this long fails the current attempt of its phase.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub agent_timeout: Option<Duration>,
    /// Time an agent has to answer a health probe (it asks Cassandra through nodetool: a JVM per call) [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub probe_timeout: Option<Duration>,
    /// Attempts per phase and node (retryable failures).
    #[arg(long)]
    pub phase_attempts: Option<u32>,
    /// Wait before retrying a phase (doubles each time).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retry_backoff: Option<Duration>,
    /// How often running jobs are polled.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// How often the leader looks for due backup schedules (default 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub schedule_interval: Option<Duration>,
}

fn parse_peers(peers: &[String]) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for p in peers {
        let (id, addr) = p.split_once('=').with_context(|| format!("peer {p:?}: expected id=host:port"))?;
        let id: u64 = id.trim().parse().with_context(|| format!("peer {p:?}: the id must be a number"))?;
        if out.insert(id, addr.trim().to_owned()).is_some() {
            bail!("peer id {id} is listed twice");
        }
    }
    Ok(out)
}

/// Runs `cassette-coordinator`.
pub async fn run_coordinator(cli: CoordinatorCli) -> anyhow::Result<i32> {
    let CoordinatorCommand::Serve(a) = cli.command;
    let (listen, listen_note) = cassette_common::tls::listen_address(
        a.listen,
        SocketAddr::new(std::net::IpAddr::from([127, 0, 0, 1]), 7070),
        a.tls.insecure,
    );
    let mut cfg: ReplicaConfig = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parse {}", p.display()))?
        }
        None => ReplicaConfig::default(),
    };
    if let Some(v) = a.id {
        cfg.id = v;
    }
    cfg.advertise = a
        .advertise
        .clone()
        .unwrap_or_else(|| if cfg.advertise.is_empty() { listen.to_string() } else { cfg.advertise.clone() });
    if let Some(v) = &a.state_dir {
        cfg.state_dir = v.clone();
    }
    if cfg.state_dir.as_os_str().is_empty() {
        bail!("pass --state-dir (where the replicated state is kept)");
    }
    let r: &mut RaftConfig = &mut cfg.raft;
    if let Some(v) = a.tick {
        r.tick = v;
    }
    if let Some(v) = a.election_ticks {
        r.election_ticks = v;
    }
    if let Some(v) = a.heartbeat_ticks {
        r.heartbeat_ticks = v;
    }
    if let Some(v) = a.snapshot_interval {
        r.snapshot_interval = v;
    }
    if let Some(v) = a.compact_keep {
        r.compact_keep = v;
    }
    if let Some(v) = a.health_interval {
        cfg.health_interval = v;
    }
    if let Some(v) = a.tls_reload_interval {
        cfg.tls_reload_interval = v;
    }
    cfg.fault_injection |= a.enable_fault_injection;
    if let Some(v) = a.agent_timeout {
        cfg.operations.agent_timeout = v;
    }
    if let Some(v) = a.probe_timeout {
        cfg.probe_timeout = v;
    }
    if let Some(v) = a.phase_attempts {
        cfg.operations.attempts = v;
    }
    if let Some(v) = a.retry_backoff {
        cfg.operations.retry_backoff = v;
    }
    if let Some(v) = a.poll_interval {
        cfg.operations.poll_interval = v;
    }
    if let Some(v) = a.schedule_interval {
        cfg.schedule_interval = v;
    }
    if let Err(p) = cfg.validate() {
        bail!("invalid settings:\n  {}", p.join("\n  "));
    }
    let bootstrap = if a.join {
        Bootstrap::Join
    } else if a.peers.is_empty() {
        Bootstrap::NewGroup([(cfg.id, cfg.advertise.clone())].into())
    } else {
        let peers = parse_peers(&a.peers)?;
        match peers.get(&cfg.id) {
            None => bail!("--peers does not list this replica's id {}", cfg.id),
            Some(addr) if *addr != cfg.advertise => {
                bail!(
                    "--peers lists {addr} for replica {}, but it advertises {}: they must match",
                    cfg.id,
                    cfg.advertise
                )
            }
            Some(_) => {}
        }
        Bootstrap::NewGroup(peers)
    };
    let tls = a.tls.load(Role::Coordinator)?;
    if let Some(n) = listen_note {
        eprintln!("{n}");
        tracing::warn!("{n}");
    }
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listen on {listen}"))?;
    let local = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let replica = Replica::start(listener, cfg.clone(), bootstrap, tls, shutdown.clone()).await?;
    eprintln!("cassette-coordinator listening on {local} (replica {}, state in {})", cfg.id, cfg.state_dir.display());
    let s = status_view(&replica.raft.status(), "");
    tracing::info!(id = s.id, role = %s.role, applied = s.applied_index, "replica started");
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    replica.wait().await?;
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

/// Prints an error with its causes (stderr; and JSON on stdout for `--output json`).
pub fn report_error(e: &anyhow::Error, output: OutputFormat) {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !message.contains(&c) {
            message.push_str(": ");
            message.push_str(&c);
        }
    }
    eprintln!("error: {message}");
    if output == OutputFormat::Json {
        println!("{}", json!({ "error": message }));
    }
}

/// Runs an async main on a multi-threaded runtime, with logging to stderr.
pub fn main_with<F, Fut>(log: &str, output: OutputFormat, f: F) -> i32
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<i32>>,
{
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(log).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async {
        match f().await {
            Ok(code) => code,
            Err(e) => {
                report_error(&e, output);
                1
            }
        }
    })
}
