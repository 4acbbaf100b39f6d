//! `cassette-agent list`, `verify`, `remove-backup` and `purge`.

use std::time::Duration;

use anyhow::Context;
use cassette_agent::ops::catalog::{self, BackupSelector};
use cassette_agent::ops::purge::{self, Departed, PurgeRequest, RetentionPolicy, RetentionRule};
use cassette_agent::ops::remove::{self, RemoveReport, RemoveRequest, RemoveScope};
use cassette_agent::ops::verify::{self, Scope};
use cassette_agent::ops::{OpContext, resolve_node};
use cassette_common::ids::{BackupId, HostId};
use clap::Args;

use super::{CassandraArgs, GlobalArgs, NodeArgs, OutputFormat, StorageArgs, TransferArgs, bytes, print_json, session};

/// `list`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  cassette-agent list -l s3://backups/prod
  cassette-agent list -l s3://backups/prod --all-nodes --output json
  cassette-agent list -l s3://backups/prod --last 3

For each backup: files, total size, bytes no other backup of the node shares (unique), and bytes
that removing it alone would free (no other manifest in the repository references them).")]
pub struct ListArgs {
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    cassandra: CassandraArgs,
    #[command(flatten)]
    node: NodeArgs,
    /// Every node of this node's cluster.
    #[arg(long)]
    all_nodes: bool,
    /// Every cluster in the repository.
    #[arg(long, conflicts_with = "all_nodes")]
    all: bool,
    /// Only the newest N backups of each node.
    #[arg(long)]
    last: Option<usize>,
}

fn prepare(
    global: &GlobalArgs,
    storage: &StorageArgs,
    cassandra: &CassandraArgs,
    node: &NodeArgs,
    transfer: Option<&TransferArgs>,
    verb: &str,
) -> anyhow::Result<super::Session> {
    let mut cfg = global.load_config()?;
    storage.apply(&mut cfg);
    cassandra.apply(&mut cfg);
    node.apply(&mut cfg);
    if let Some(t) = transfer {
        t.apply(&mut cfg);
    }
    // Nothing here reads local files: the hash cache stays in memory (no load of a large file).
    session(global, cfg, verb, true)
}

/// The cluster (and host) the command is about: flags, else the node.
async fn cluster_of(ctx: &OpContext) -> anyhow::Result<String> {
    if let Some(c) = &ctx.settings.node.cluster {
        return Ok(c.clone());
    }
    Ok(resolve_node(ctx, true).await?.cluster)
}

/// Runs `list`.
pub async fn list(a: ListArgs, global: &GlobalArgs) -> anyhow::Result<i32> {
    let s = prepare(global, &a.storage, &a.cassandra, &a.node, None, "list")?;
    let ctx = &s.ctx;
    ctx.repo.open_existing().await?;
    let index = catalog::scan(&ctx.repo).await?;
    let list = if a.all {
        catalog::summarize(ctx, &index, |_| true).await?
    } else if a.all_nodes {
        let cluster = cassette_common::layout::cluster_key(&cluster_of(ctx).await?);
        catalog::summarize(ctx, &index, |r| r.cluster_key == cluster).await?
    } else {
        let node = resolve_node(ctx, true).await?;
        let cluster = cassette_common::layout::cluster_key(&node.cluster);
        catalog::summarize(ctx, &index, |r| r.cluster_key == cluster && r.host_id == node.host_id).await?
    };
    s.bar.finish();
    let list = match a.last {
        Some(n) => {
            let mut keep = Vec::new();
            for backups in catalog::by_node(&list).into_values() {
                keep.extend(backups.iter().rev().take(n).map(|b| (*b).clone()));
            }
            keep.sort_by(|x, y| x.backup_id.cmp(&y.backup_id).then(x.host_id.cmp(&y.host_id)));
            keep
        }
        None => list,
    };
    match global.output {
        OutputFormat::Json => print_json(&serde_json::json!({
            "location": ctx.repo.location().to_string(),
            "backups": list,
            "total_bytes": list.iter().map(|b| b.bytes).sum::<u64>(),
        }))?,
        OutputFormat::Text => {
            if list.is_empty() {
                println!("no backups in {}", ctx.repo.location());
            }
            for ((cluster, host), backups) in catalog::by_node(&list) {
                println!("cluster {cluster:?}, node {host}:");
                println!(
                    "  {:<26} {:<12} {:<20} {:>8} {:>12} {:>12} {:>12}",
                    "backup", "tag", "snapshot (UTC)", "files", "size", "unique", "reclaimable"
                );
                for b in backups {
                    println!(
                        "  {:<26} {:<12} {:<20} {:>8} {:>12} {:>12} {:>12}{}",
                        b.backup_id.to_string(),
                        b.tag.clone().unwrap_or_default(),
                        b.snapshot_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        b.files,
                        bytes(b.bytes),
                        bytes(b.unique_bytes),
                        bytes(b.reclaimable_bytes),
                        if b.cluster_backup { "  (cluster backup)" } else { "" }
                    );
                }
            }
        }
    }
    Ok(0)
}

/// `verify`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  cassette-agent verify latest -l s3://backups/prod
  cassette-agent verify 20261123T214100Z-3fa9c2d1 -l s3://backups/prod --deep --all-nodes

Checks that every blob the backup's manifest names exists with the right size; --deep downloads
each one and hashes it again (nothing is written to disk). Exit code 1 if anything is wrong.")]
pub struct VerifyArgs {
    /// The backup: its id, its tag, or `latest`.
    backup: String,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    transfer: TransferArgs,
    #[command(flatten)]
    cassandra: CassandraArgs,
    #[command(flatten)]
    node: NodeArgs,
    /// Download every blob and check its SHA-256.
    #[arg(long)]
    deep: bool,
    /// The backup on every node of the cluster.
    #[arg(long)]
    all_nodes: bool,
}

/// Runs `verify`.
pub async fn verify(a: VerifyArgs, global: &GlobalArgs) -> anyhow::Result<i32> {
    let s = prepare(global, &a.storage, &a.cassandra, &a.node, Some(&a.transfer), "verify")?;
    let ctx = &s.ctx;
    let scope = if a.all_nodes {
        Scope::Cluster(cluster_of(ctx).await?)
    } else {
        let n = resolve_node(ctx, true).await?;
        Scope::Node(n.cluster, n.host_id)
    };
    let report = verify::verify(ctx, &scope, &BackupSelector::parse(&a.backup), a.deep).await?;
    s.bar.finish();
    match global.output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            for b in &report.backups {
                if b.problems.is_empty() {
                    println!(
                        "backup {} of node {}: all {} blobs ({}) {}",
                        b.backup_id,
                        b.host_id,
                        b.blobs,
                        bytes(b.bytes),
                        if report.deep { "present and intact" } else { "present with the right size" }
                    );
                } else {
                    println!(
                        "backup {} of node {}: {} of {} blobs are not as the manifest says:",
                        b.backup_id,
                        b.host_id,
                        b.problems.len(),
                        b.blobs
                    );
                    for p in &b.problems {
                        println!(
                            "  {} ({}): {} — {}",
                            p.sha256.short(),
                            bytes(p.expected_size),
                            p.problem,
                            p.files.join(", ")
                        );
                    }
                }
            }
        }
    }
    Ok(if report.ok { 0 } else { 1 })
}

/// `remove-backup`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  cassette-agent remove-backup 20261123T214100Z-3fa9c2d1 -l s3://backups/prod
  cassette-agent remove-backup -l s3://backups/prod --older-than 14d --keep-last 7 --dry-run
  cassette-agent remove-backup -l s3://backups/prod --all-nodes --keep-last 14

Deletes the selected backups' manifests, then every blob that no remaining manifest or commit-log
entry in the repository references and that is older than the grace period (removal.grace, 24h).
It refuses to start while a backup or another removal runs, and backups wait for it: see
docs/layout.md, \"Removal and running backups\".")]
pub struct RemoveArgs {
    /// Backups to remove (ids).
    #[arg(conflicts_with_all = ["older_than", "keep_last"])]
    ids: Vec<BackupId>,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    cassandra: CassandraArgs,
    #[command(flatten)]
    node: NodeArgs,
    /// Remove backups started longer ago than this (e.g. 14d, 36h).
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Option<Duration>,
    /// Keep the newest N backups of each node (alone: remove all others).
    #[arg(long)]
    keep_last: Option<usize>,
    /// Every node of the cluster in this repository (each keeps its own newest N).
    #[arg(long)]
    all_nodes: bool,
    /// Show what would be removed and freed; delete nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Runs `remove-backup`.
pub async fn remove(a: RemoveArgs, global: &GlobalArgs) -> anyhow::Result<i32> {
    let s = prepare(global, &a.storage, &a.cassandra, &a.node, None, "remove")?;
    let ctx = &s.ctx;
    let scope = if a.all_nodes {
        RemoveScope::Cluster(cluster_of(ctx).await?)
    } else {
        let n = resolve_node(ctx, true).await.context("find out whose backups to remove")?;
        RemoveScope::Node(n.cluster, n.host_id)
    };
    let req = RemoveRequest { ids: a.ids, older_than: a.older_than, keep_last: a.keep_last, dry_run: a.dry_run };
    let report = remove::remove(ctx, &scope, &req).await?;
    s.bar.finish();
    match global.output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            let verb = if report.dry_run { "would remove" } else { "removed" };
            if report.removed.is_empty() {
                println!("no backup matches; {} kept", report.kept);
            }
            for b in &report.removed {
                println!("{verb} backup {} of node {} ({} files, {})", b.backup_id, b.host_id, b.files, bytes(b.bytes));
            }
            print_totals(&report);
        }
    }
    Ok(0)
}

fn print_totals(report: &RemoveReport) {
    let verb = if report.dry_run { "would remove" } else { "removed" };
    if let Some(r) = &report.resumed {
        println!(
            "{} an interrupted removal first ({}, plan of {}): {} of {} documents were left",
            if report.dry_run { "would finish" } else { "finished" },
            r.operation,
            r.created_at.format("%Y-%m-%d %H:%M:%S"),
            r.remaining,
            r.documents
        );
    }
    if report.commitlog_entries_removed > 0 {
        println!("{verb} {} commit-log entries no point-in-time restore needs", report.commitlog_entries_removed);
    }
    println!(
        "{verb} {} unreferenced blobs ({}); {} still referenced; {} unreferenced but younger than the grace period ({}) kept; {} backups kept",
        report.blobs_deleted,
        bytes(report.bytes_freed),
        report.blobs_referenced,
        report.blobs_kept_young,
        bytes(report.bytes_kept_young),
        report.kept
    );
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
}

/// `purge`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  cassette-agent purge -l s3://backups/prod --keep-last 14 --keep-within 30d --dry-run
  cassette-agent purge -l s3://backups/prod --cluster prod --tag nightly --keep-last 7
  cassette-agent purge -l s3://backups/shared --rules retention.json
  cassette-agent purge -l s3://backups/prod --keep-last 14 --departed all

A backup goes only when a retention rule covers it and no rule keeps it: a rule keeps the newest
N backups (a cluster backup counts once for the cluster, other backups per node) and every backup
started within the window. Backups of clusters (or tags) no rule names are kept. Commit-log
entries closed before the snapshot of each node's oldest kept backup go too (a point-in-time
restore never needs them); --keep-all-commitlogs keeps them.

Departed nodes (host ids with backups in the repository but not in the cluster's current ring, as
`nodetool status` on this node shows it, or --ring) are always listed; --departed all (or host ids)
removes their own backups and commit logs.

--rules takes a JSON list of rules: [{\"cluster\": \"prod\", \"tag\": \"nightly\", \"keep_last\": 7,
\"keep_within\": \"30d\"}, …]. Then blobs nothing remaining references and older than the grace
period (removal.grace, 24h) are deleted in batches. An interrupted purge is finished by the next
one (removal-plan.json in the repository). See docs/layout.md, \"Retention and purges\".")]
pub struct PurgeArgs {
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    cassandra: CassandraArgs,
    #[command(flatten)]
    node: NodeArgs,
    /// Keep the newest N backups.
    #[arg(long)]
    keep_last: Option<usize>,
    /// Keep every backup started within this long (e.g. 30d, 36h).
    #[arg(long, value_parser = humantime::parse_duration)]
    keep_within: Option<Duration>,
    /// Apply the policy only to backups with this tag (a schedule's).
    #[arg(long)]
    tag: Option<String>,
    /// Rules from a JSON file (a list of {cluster, tag, keep_last, keep_within}) instead of the flags.
    #[arg(long, conflicts_with_all = ["keep_last", "keep_within", "tag"])]
    rules: Option<std::path::PathBuf>,
    /// Departed nodes to purge: `all`, or host ids (comma-separated).
    #[arg(long)]
    departed: Option<String>,
    /// The cluster's current ring (host ids, comma-separated) instead of asking the node.
    #[arg(long, value_delimiter = ',')]
    ring: Vec<HostId>,
    /// Keep every commit-log entry (no point-in-time cutoff).
    #[arg(long)]
    keep_all_commitlogs: bool,
    /// Show what would be removed and how many bytes it frees; delete nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Runs `purge`.
pub async fn purge(a: PurgeArgs, global: &GlobalArgs) -> anyhow::Result<i32> {
    let s = prepare(global, &a.storage, &a.cassandra, &a.node, None, "purge")?;
    let ctx = &s.ctx;
    let rules: Vec<RetentionRule> = match &a.rules {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a list of rules like [{{\"cluster\": \"prod\", \"keep_last\": 7, \"keep_within\": \"30d\"}}]",
                    path.display()
                )
            })?
        }
        None if a.keep_last.is_none() && a.keep_within.is_none() => Vec::new(),
        None => vec![RetentionRule {
            cluster: cluster_of(ctx).await?,
            tag: a.tag.clone(),
            policy: RetentionPolicy { keep_last: a.keep_last, keep_within: a.keep_within },
        }],
    };
    let departed = match a.departed.as_deref() {
        None => Departed::None,
        Some("all") => Departed::All,
        Some(list) => Departed::Hosts(
            list.split(',')
                .map(|h| h.trim().parse::<HostId>())
                .collect::<Result<_, _>>()
                .context("--departed takes `all` or host ids separated by commas")?,
        ),
    };
    // The ring of the node's cluster: flags, else the node (only needed for departed nodes).
    let mut ring = std::collections::BTreeMap::new();
    if !a.ring.is_empty() {
        ring.insert(cluster_of(ctx).await?, a.ring.clone());
    } else if departed != Departed::None || rules.is_empty() {
        let cluster = cluster_of(ctx).await?;
        let members = ctx.cassandra.ring().await.context(
            "ask the node for the current ring (nodetool status) to find departed nodes; or pass --ring with its host ids",
        )?;
        let hosts: Vec<HostId> = members.into_iter().filter_map(|m| m.host_id).collect();
        ring.insert(cluster, hosts);
    } else if let Ok(members) = ctx.cassandra.ring().await
        && let Some(c) = ctx.settings.node.cluster.clone().or(resolve_node(ctx, true).await.ok().map(|n| n.cluster))
    {
        // Best effort: departed nodes are reported when the node answers.
        ring.insert(c, members.into_iter().filter_map(|m| m.host_id).collect());
    }
    let req = PurgeRequest {
        rules,
        ring,
        departed,
        keep_all_commitlogs: a.keep_all_commitlogs,
        dry_run: a.dry_run,
        ..Default::default()
    };
    let report = purge::purge(ctx, &req).await?;
    s.bar.finish();
    match global.output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            for r in &report.rules {
                println!("policy: {r}");
            }
            for b in &report.backups {
                println!(
                    "{} {} backup {} of {} ({}{}): {}",
                    if b.kept {
                        "keep  "
                    } else if report.removal.dry_run {
                        "would remove"
                    } else {
                        "remove"
                    },
                    if b.cluster_backup { "cluster" } else { "node" },
                    b.backup_id,
                    if b.cluster_backup {
                        format!("cluster {:?}", b.cluster)
                    } else {
                        format!("node {}", b.hosts.first().map(|h| h.to_string()).unwrap_or_default())
                    },
                    bytes(b.bytes),
                    b.tag.as_ref().map(|t| format!(", tag {t}")).unwrap_or_default(),
                    b.reason
                );
            }
            for d in &report.departed_nodes {
                println!(
                    "departed node {} of cluster {:?}: {} node backups, {} commit-log entries{}",
                    d.host_id,
                    d.cluster,
                    d.node_backups,
                    d.commitlog_entries,
                    if d.purged { " (purged)" } else { " (kept: pass --departed to purge)" }
                );
            }
            print_totals(&report.removal);
        }
    }
    Ok(0)
}
