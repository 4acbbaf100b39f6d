//! `cassette backup`, `cassette restore` and `cassette operations`: cluster operations through
//! the coordinator, with progress per node and datacenter.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cassette_proto::v1 as pb;
use clap::Subcommand;
use serde_json::{Value, json};

use super::{OutputFormat, bytesize_text as bytes, print};
use crate::client::OperatorClient;
use crate::executor::plan::{self, BackupRefSpec, BackupSpec, PurgeSpec, RestoreSpec};

/// `cassette backup`.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up every node of a cluster: check, snapshot (all nodes together), upload, manifests.
    ///
    /// Waits until the backup ends, showing progress per datacenter (--detach: return at once
    /// with the operation id). Exit code 1 when it fails.
    /// Example: cassette backup create --cluster prod --entities shop --dc dc1 --tag nightly
    Create {
        /// The cluster (as registered).
        #[arg(long)]
        cluster: String,
        /// Keyspaces and tables (`shop,audit.events`); default: every user keyspace.
        #[arg(long, default_value = "")]
        entities: String,
        /// Only these datacenters.
        #[arg(long = "dc", value_delimiter = ',')]
        datacenters: Vec<String>,
        /// A label for the backup (restore it by tag later).
        #[arg(long)]
        tag: Option<String>,
        /// Nodes uploading at once in each datacenter (default: all).
        #[arg(long, default_value_t = 0)]
        parallel: usize,
        /// Upload bandwidth per node, e.g. 50MiB/s.
        #[arg(long)]
        bandwidth: Option<String>,
        /// Complete without nodes that stay unreachable; the backup records what it lacks.
        #[arg(long)]
        allow_partial: bool,
        /// Refuse nodes with less free disk space than this many bytes.
        #[arg(long, default_value_t = 0)]
        min_free: u64,
        /// Include system keyspaces.
        #[arg(long)]
        system_keyspaces: bool,
        /// Return once the operation is recorded instead of waiting for it.
        #[arg(long)]
        detach: bool,
    },
    /// Backups of a cluster in the catalog.
    List {
        /// The cluster.
        #[arg(long)]
        cluster: String,
    },
    /// One backup: nodes, bytes, skew, what it lacks. Example: cassette backup show latest --cluster prod
    Show {
        /// Backup id, `latest`, or a tag.
        backup: String,
        /// The cluster.
        #[arg(long)]
        cluster: String,
    },
    /// Check that every blob of a backup is stored (--deep: download and hash them).
    Verify {
        /// Backup id, `latest`, or a tag.
        backup: String,
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// Download and hash every blob.
        #[arg(long)]
        deep: bool,
    },
    /// Remove a backup and every blob no other backup needs.
    Delete {
        /// Backup id.
        backup: String,
        /// The cluster.
        #[arg(long)]
        cluster: String,
    },
    /// Apply retention to a cluster's backups now (one agent does it for the whole cluster).
    ///
    /// A backup is removed when the policy does not keep it; backups of running operations are
    /// always kept. Example: cassette backup purge --cluster prod --keep-last 14 --keep-within 30d --dry-run
    Purge {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// Keep the newest N backups.
        #[arg(long)]
        keep_last: Option<u32>,
        /// Keep every backup started within this long (30d, 12h).
        #[arg(long)]
        keep_within: Option<String>,
        /// Only the backups with this tag (a schedule's name).
        #[arg(long)]
        tag: Option<String>,
        /// Also purge departed nodes (host ids no longer in the ring), or `all`.
        #[arg(long, value_delimiter = ',')]
        departed: Vec<String>,
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `cassette restore`.
#[derive(Debug, Subcommand)]
pub enum RestoreCommand {
    /// Restore a cluster backup on every node.
    ///
    /// Live (import, hardlinks): download and verify on every node, then truncate once, then
    /// import everywhere; nothing is truncated until every node has every file verified.
    /// In-place: every node (stopped) is rebuilt with its old tokens; with --target-cluster,
    /// onto another cluster with the same nodes per datacenter and rack.
    /// Example: cassette restore create --cluster prod --backup latest --entities shop.users --rename shop.users=shop.users_copy
    Create {
        /// The cluster whose backup is restored.
        #[arg(long)]
        cluster: String,
        /// Backup id, `latest`, or a tag.
        #[arg(long, default_value = "latest")]
        backup: String,
        /// Keyspaces and tables; default: every user table of the backup.
        #[arg(long, default_value = "")]
        entities: String,
        /// Restore a table into another (existing) one: ks.t=ks.t2 (repeatable).
        #[arg(long = "rename")]
        renames: Vec<String>,
        /// import (default), hardlinks, or in-place (stopped nodes).
        #[arg(long, default_value = "import")]
        strategy: String,
        /// Restore onto this other registered cluster (in-place).
        #[arg(long)]
        target_cluster: Option<String>,
        /// source=target node pairs (host ids or addresses); default: matched by dc and rack.
        #[arg(long = "node-map", value_delimiter = ',')]
        node_map: Vec<String>,
        /// Add the data to the tables instead of truncating them first.
        #[arg(long)]
        no_truncate: bool,
        /// Restore even if a table's primary key or column types differ.
        #[arg(long)]
        ignore_schema_mismatch: bool,
        /// Restore even if a node's tokens differ from its backup's.
        #[arg(long)]
        ignore_token_mismatch: bool,
        /// Create tables missing on the cluster (dropped, or an empty cluster) from the backup's schema, once, before the import.
        #[arg(long)]
        create_tables: bool,
        /// In-place onto a new cluster: restore the schema and roles too and clear the nodes' own system keyspace, so they start as a new cluster with the backup's data and tokens (the backup must hold system_schema).
        #[arg(long)]
        new_cluster: bool,
        /// Nodes downloading at once in each datacenter (default: all).
        #[arg(long, default_value_t = 0)]
        parallel: usize,
        /// Return once the operation is recorded instead of waiting for it.
        #[arg(long)]
        detach: bool,
    },
}

/// `cassette operations`.
#[derive(Debug, Subcommand)]
pub enum OperationsCommand {
    /// Operations, newest first.
    List {
        /// Only this cluster's.
        #[arg(long)]
        cluster: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One operation: every node's phases, bytes, files, rate and ETA per node and datacenter.
    Show {
        /// Operation id.
        id: String,
    },
    /// Follow an operation until it ends (exit code 1 when it fails).
    Watch {
        /// Operation id.
        id: String,
        /// Refresh interval.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
}

async fn start(client: &OperatorClient, kind: &str, request: Value) -> anyhow::Result<Value> {
    let req = pb::OperationStartRequest {
        kind: kind.into(),
        request_json: request.to_string(),
        client_request_id: client.request_id().to_owned(),
    };
    // Idempotent thanks to the request id: a retry returns the operation the first try started.
    let v = client
        .call(|mut c| {
            let r = req.clone();
            async move { c.operation_start(r).await }
        })
        .await?;
    Ok(serde_json::from_str(&v.json)?)
}

async fn get(client: &OperatorClient, id: &str) -> anyhow::Result<Value> {
    let req = pb::OperationGetRequest { id: id.into() };
    let v = client
        .call(|mut c| {
            let r = req.clone();
            async move { c.operation_get(r).await }
        })
        .await?;
    Ok(serde_json::from_str(&v.json)?)
}

async fn backups(client: &OperatorClient, cluster: &str) -> anyhow::Result<Vec<Value>> {
    let req = pb::BackupListRequest { cluster: cluster.into() };
    let v = client
        .call(|mut c| {
            let r = req.clone();
            async move { c.backup_list(r).await }
        })
        .await?;
    v.backups_json.iter().map(|b| Ok(serde_json::from_str(b)?)).collect()
}

fn rate(v: &Value) -> String {
    let r = v["rate_bytes_per_sec"].as_f64().unwrap_or(0.0);
    let eta = v["eta_seconds"].as_u64().map(|s| format!(", ETA {s}s")).unwrap_or_default();
    if r > 0.0 { format!(", {}/s{eta}", bytes(r as u64)) } else { String::new() }
}

/// One line per datacenter: progress of the transfer step.
fn progress_lines(v: &Value) -> String {
    let mut out = format!(
        "{} {} [{}] step {}",
        v["kind"].as_str().unwrap_or(""),
        v["id"].as_str().unwrap_or(""),
        v["state"].as_str().unwrap_or(""),
        v["current_step"].as_str().unwrap_or("-")
    );
    for dc in v["datacenters"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  {} ({} nodes): {}/{} files, {}/{}{}",
            dc["name"].as_str().unwrap_or(""),
            dc["nodes"],
            dc["files_done"],
            dc["files_total"],
            bytes(dc["bytes_done"].as_u64().unwrap_or(0)),
            bytes(dc["bytes_total"].as_u64().unwrap_or(0)),
            rate(dc)
        ));
    }
    out
}

/// Full text of an operation.
pub fn operation_text(v: &Value) -> String {
    let mut out = format!(
        "operation {} ({} of cluster {}): {}{}\n  backup {}, {:.1}s",
        v["id"].as_str().unwrap_or(""),
        v["kind"].as_str().unwrap_or(""),
        v["cluster"].as_str().unwrap_or(""),
        v["state"].as_str().unwrap_or(""),
        v["error"].as_str().filter(|e| !e.is_empty()).map(|e| format!(": {e}")).unwrap_or_default(),
        v["backup_id"].as_str().unwrap_or(""),
        v["elapsed_seconds"].as_f64().unwrap_or(0.0)
    );
    if let Some(s) = v["snapshot_skew_ms"].as_i64() {
        out.push_str(&format!(", snapshot skew {s} ms"));
    }
    let t = &v["totals"];
    out.push_str(&format!(
        "\n  {}/{} files, {} of {} ({} sent or received, {} deduplicated){}",
        t["files_done"],
        t["files_total"],
        bytes(t["bytes_done"].as_u64().unwrap_or(0)),
        bytes(t["bytes_total"].as_u64().unwrap_or(0)),
        bytes(t["bytes_transferred"].as_u64().unwrap_or(0)),
        bytes(t["bytes_skipped"].as_u64().unwrap_or(0)),
        rate(t)
    ));
    for w in v["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("\n  warning: {}", w.as_str().unwrap_or("")));
    }
    for d in v["schema_differences"].as_array().into_iter().flatten() {
        out.push_str(&format!("\n  schema difference: {}", d.as_str().unwrap_or("")));
    }
    for n in v["nodes"].as_array().into_iter().flatten() {
        let phases: Vec<String> = n["phases"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let mut s = format!("{}={}", p["phase"].as_str().unwrap_or(""), p["state"].as_str().unwrap_or(""));
                if p["attempts"].as_u64().unwrap_or(0) > 1 {
                    s.push_str(&format!("(x{})", p["attempts"]));
                }
                s
            })
            .collect();
        let tr = &n["transfer"];
        out.push_str(&format!(
            "\n  {} {} {}/{}: {} — {}/{}{}",
            n["host_id"].as_str().unwrap_or(""),
            n["address"].as_str().unwrap_or(""),
            n["datacenter"].as_str().unwrap_or(""),
            n["rack"].as_str().unwrap_or(""),
            phases.join(" "),
            bytes(tr["bytes_done"].as_u64().unwrap_or(0)),
            bytes(tr["bytes_total"].as_u64().unwrap_or(0)),
            rate(tr)
        ));
        for p in n["phases"].as_array().into_iter().flatten() {
            if let Some(e) = p["error"].as_str().filter(|e| !e.is_empty()) {
                out.push_str(&format!("\n      {}: {e}", p["phase"].as_str().unwrap_or("")));
            }
        }
    }
    out
}

fn backup_text(b: &Value) -> String {
    let l = &b["labels"];
    let mut s = format!(
        "{}  {}  {} nodes  {}  {}{}",
        b["id"].as_str().unwrap_or(""),
        b["status"].as_str().unwrap_or(""),
        b["nodes"].as_array().map_or(0, Vec::len),
        bytes(b["bytes_total"].as_u64().unwrap_or(0)),
        l["tag"].as_str().map(|t| format!("tag {t}  ")).unwrap_or_default(),
        format_args!(
            "{} uploaded, {} deduplicated",
            bytes(l["bytes_uploaded"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0)),
            bytes(l["bytes_skipped"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0))
        )
    );
    if let Some(m) = l["missing_nodes"].as_str().filter(|m| !m.is_empty()) {
        s.push_str(&format!("  MISSING nodes {m}"));
    }
    s
}

/// Follows an operation until it ends; prints progress to stderr (text); returns the final view.
pub async fn watch(client: &OperatorClient, id: &str, interval: Duration, out: OutputFormat) -> anyhow::Result<Value> {
    let mut last = String::new();
    let mut errors = 0;
    let started = Instant::now();
    loop {
        let v = match get(client, id).await {
            Ok(v) => {
                errors = 0;
                v
            }
            // A leader change: the CLI finds the next leader; keep trying for a while.
            Err(e) if errors < 30 => {
                errors += 1;
                tracing::debug!(error = %e, "reading the operation failed; retrying");
                tokio::time::sleep(interval).await;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("follow operation {id}")),
        };
        let state = v["state"].as_str().unwrap_or("");
        if out == OutputFormat::Text {
            let line = progress_lines(&v);
            if line != last {
                eprintln!("[{:>5.1}s] {line}", started.elapsed().as_secs_f64());
                last = line;
            }
        }
        if matches!(state, "succeeded" | "failed" | "cancelled") {
            return Ok(v);
        }
        tokio::time::sleep(interval).await;
    }
}

async fn finish(client: &OperatorClient, started: Value, detach: bool, out: OutputFormat) -> anyhow::Result<i32> {
    let id = started["id"].as_str().unwrap_or_default().to_owned();
    if detach {
        print(out, &started, || format!("operation {id} started: follow it with `cassette operations watch {id}`"));
        return Ok(0);
    }
    if out == OutputFormat::Text {
        eprintln!("operation {id} started (Ctrl-C stops watching; the operation goes on)");
    }
    let v = watch(client, &id, Duration::from_millis(500), out).await?;
    print(out, &v, || operation_text(&v));
    Ok(if v["state"] == "succeeded" { 0 } else { 1 })
}

/// Runs `cassette backup …`.
pub async fn run_backup(c: BackupCommand, client: &OperatorClient, out: OutputFormat) -> anyhow::Result<i32> {
    match c {
        BackupCommand::Create {
            cluster,
            entities,
            datacenters,
            tag,
            parallel,
            bandwidth,
            allow_partial,
            min_free,
            system_keyspaces,
            detach,
        } => {
            let spec = BackupSpec {
                cluster,
                entities,
                datacenters,
                tag,
                parallel,
                bandwidth,
                allow_partial,
                min_free_bytes: min_free,
                system_keyspaces,
            };
            let v = start(client, plan::KIND_BACKUP, serde_json::to_value(spec)?).await?;
            finish(client, v, detach, out).await
        }
        BackupCommand::List { cluster } => {
            let list = backups(client, &cluster).await?;
            print(out, &json!({ "cluster": cluster, "backups": list }), || {
                if list.is_empty() {
                    return format!("no backups of {cluster} (cassette backup create --cluster {cluster})");
                }
                list.iter().map(backup_text).collect::<Vec<_>>().join("\n")
            });
            Ok(0)
        }
        BackupCommand::Show { backup, cluster } => {
            let list = backups(client, &cluster).await?;
            let records: Vec<crate::model::BackupRecord> =
                list.iter().filter_map(|b| serde_json::from_value(b.clone()).ok()).collect();
            let chosen = plan::select_backup(&records, &cluster, &backup)?;
            let b = serde_json::to_value(chosen)?;
            let op = get(client, &chosen.operation_id).await.unwrap_or(Value::Null);
            let v = json!({ "backup": b, "operation": op });
            print(out, &v, || {
                let mut s = backup_text(&b);
                if let Some(skew) = b["labels"]["snapshot_skew_ms"].as_str() {
                    s.push_str(&format!("\nsnapshot skew between the first and last node: {skew} ms"));
                }
                s.push_str(&format!("\nlocation {}", b["location"].as_str().unwrap_or("")));
                if !op.is_null() {
                    s.push('\n');
                    s.push_str(&operation_text(&op));
                }
                s
            });
            Ok(0)
        }
        BackupCommand::Verify { backup, cluster, deep } => {
            let spec = BackupRefSpec { cluster, backup, deep };
            let v = start(client, plan::KIND_VERIFY, serde_json::to_value(spec)?).await?;
            finish(client, v, false, out).await
        }
        BackupCommand::Delete { backup, cluster } => {
            if backup == "latest" {
                bail!("name the backup to delete by its id (cassette backup list --cluster {cluster})");
            }
            let spec = BackupRefSpec { cluster, backup, deep: false };
            let v = start(client, plan::KIND_DELETE, serde_json::to_value(spec)?).await?;
            finish(client, v, false, out).await
        }
        BackupCommand::Purge { cluster, keep_last, keep_within, tag, departed, dry_run } => {
            if keep_last.is_none() && keep_within.is_none() && departed.is_empty() {
                bail!("nothing to purge: give --keep-last N, --keep-within DURATION (e.g. 30d), or --departed");
            }
            let spec = PurgeSpec { cluster, tag, keep_last, keep_within, departed, dry_run, ..PurgeSpec::default() };
            let v = start(client, plan::KIND_PURGE, serde_json::to_value(spec)?).await?;
            finish(client, v, false, out).await
        }
    }
}

/// Runs `cassette restore …`.
pub async fn run_restore(c: RestoreCommand, client: &OperatorClient, out: OutputFormat) -> anyhow::Result<i32> {
    let RestoreCommand::Create {
        cluster,
        backup,
        entities,
        renames,
        strategy,
        target_cluster,
        node_map,
        no_truncate,
        ignore_schema_mismatch,
        ignore_token_mismatch,
        create_tables,
        new_cluster,
        parallel,
        detach,
    } = c;
    let spec = RestoreSpec {
        cluster,
        backup,
        target_cluster,
        entities,
        renames,
        strategy,
        node_map,
        no_truncate,
        ignore_schema_mismatch,
        ignore_token_mismatch,
        create_tables,
        new_cluster,
        parallel,
    };
    let v = start(client, plan::KIND_RESTORE, serde_json::to_value(spec)?).await?;
    finish(client, v, detach, out).await
}

/// Runs `cassette operations …`.
pub async fn run_operations(c: OperationsCommand, client: &OperatorClient, out: OutputFormat) -> anyhow::Result<i32> {
    match c {
        OperationsCommand::List { cluster, limit } => {
            let req = pb::OperationListRequest { cluster: cluster.unwrap_or_default(), limit };
            let v = client
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.operation_list(r).await }
                })
                .await?;
            let ops: Vec<Value> = v.operations_json.iter().filter_map(|o| serde_json::from_str(o).ok()).collect();
            print(out, &json!({ "operations": ops }), || {
                if ops.is_empty() {
                    return "no operations".into();
                }
                ops.iter()
                    .map(|o| {
                        format!(
                            "{}  {}  {}  {}  {:.1}s{}",
                            o["id"].as_str().unwrap_or(""),
                            o["kind"].as_str().unwrap_or(""),
                            o["cluster"].as_str().unwrap_or(""),
                            o["state"].as_str().unwrap_or(""),
                            o["elapsed_seconds"].as_f64().unwrap_or(0.0),
                            o["error"].as_str().filter(|e| !e.is_empty()).map(|e| format!("  {e}")).unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(0)
        }
        OperationsCommand::Show { id } => {
            let v = get(client, &id).await?;
            print(out, &v, || operation_text(&v));
            Ok(0)
        }
        OperationsCommand::Watch { id, interval } => {
            let v = watch(client, &id, interval, out).await?;
            print(out, &v, || operation_text(&v));
            Ok(if v["state"] == "succeeded" { 0 } else { 1 })
        }
    }
}
