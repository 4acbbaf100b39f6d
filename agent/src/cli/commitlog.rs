//! `cassette-agent commitlog-backup` and `commitlog-restore`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use cassette_agent::ops::commitlog::{self, PitrRequest};
use cassette_agent::ops::{Entity, EntitySelection, resolve_node_with};
use chrono::{DateTime, Utc};
use clap::Args;

use super::{CassandraArgs, GlobalArgs, NodeArgs, OutputFormat, StorageArgs, TransferArgs, bytes, print_json, session};

/// `commitlog-backup`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  # As Cassandra's archive_command (conf/commitlog_archiving.properties), one segment per call:
  archive_command=/usr/bin/cassette-agent commitlog-backup --location s3://backups/prod %path
  # Sweep a directory that archive_command=/bin/ln %path /backup/commitlog/%name fills:
  cassette-agent commitlog-backup -l s3://backups/prod --remove /backup/commitlog

Cassandra splits archive_command on spaces and runs it without a shell: put other settings into the
config file (CASSETTE_CONFIG or /etc/cassette/agent.toml). The node's identity comes from --cluster
and --host-id, else from what an earlier command remembered, else from nodetool. Segments already
archived are skipped; the exit code is non-zero if any segment could not be stored.")]
pub struct CommitLogBackupArgs {
    /// Segment files (`CommitLog-7-…log`) or directories holding them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    transfer: TransferArgs,
    #[command(flatten)]
    cassandra: CassandraArgs,
    #[command(flatten)]
    node: NodeArgs,
    /// Remove each segment file once it is stored (for swept archive directories, never for Cassandra's own).
    #[arg(long)]
    remove: bool,
}

/// Runs `commitlog-backup`.
pub async fn backup(a: CommitLogBackupArgs, global: &GlobalArgs) -> anyhow::Result<i32> {
    let mut cfg = global.load_config()?;
    a.storage.apply(&mut cfg);
    a.transfer.apply(&mut cfg);
    a.cassandra.apply(&mut cfg);
    a.node.apply(&mut cfg);
    // Every segment is new content, hashed once: the persistent hash cache would only cost
    // loading it at every archive_command call (and racing a running backup's saves).
    let s = session(global, cfg, "upload", true)?;
    let node = resolve_node_with(&s.ctx, true, true).await?;
    let files = commitlog::segment_files(&a.paths)?;
    let report = commitlog::archive(&s.ctx, &node, &files, a.remove).await?;
    s.bar.finish();
    match global.output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            for seg in &report.segments {
                let what = if seg.already_archived {
                    "already archived"
                } else if seg.uploaded {
                    "archived"
                } else {
                    "archived (blob already stored)"
                };
                println!("{} {what} ({}, closed {})", seg.segment, bytes(seg.size), seg.closed_at.to_rfc3339());
            }
            for f in &report.failures {
                eprintln!("error: {}: {}", f.path.display(), f.error);
            }
        }
    }
    Ok(if report.failures.is_empty() { 0 } else { 1 })
}

/// `commitlog-restore`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  # Prepare a point-in-time restore to 14:05:00 UTC (after restoring the SSTables in place):
  cassette-agent commitlog-restore -l s3://backups/prod --until 2026-11-23T14:05:00Z --conf-dir /etc/cassandra --download-dir /var/lib/cassandra/restore-commitlog
  # ... and remove its settings automatically once Cassandra has started and replayed:
  cassette-agent commitlog-restore -l s3://backups/prod --until 2026-11-23T14:05:00Z --conf-dir /etc/cassandra --download-dir /var/lib/cassandra/restore-commitlog --wait-and-finish
  # Or remove them by hand afterwards:
  cassette-agent commitlog-restore --finish --conf-dir /etc/cassandra --remove-downloads --download-dir /var/lib/cassandra/restore-commitlog

Segments from --from (default: the snapshot time of the newest backup before --until) up to the
first segment closed at or after --until are downloaded and verified, and
commitlog_archiving.properties is written with the precision the node's version reads (3.11:
whole seconds). The original properties file is kept and put back by --finish.")]
pub struct CommitLogRestoreArgs {
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    transfer: TransferArgs,
    #[command(flatten)]
    cassandra: CassandraArgs,
    #[command(flatten)]
    node: NodeArgs,
    /// Restore writes up to this time (RFC 3339, e.g. 2026-11-23T14:05:00.250Z).
    #[arg(long, required_unless_present = "finish")]
    until: Option<DateTime<Utc>>,
    /// Replay writes from this time (default: the snapshot time of the newest backup before --until).
    #[arg(long)]
    from: Option<DateTime<Utc>>,
    /// Where to download the segments (Cassandra copies them into its commit-log directory at startup).
    #[arg(long)]
    download_dir: Option<PathBuf>,
    /// Cassandra's configuration directory (default: commitlog.conf_dir, else the directory of cassandra.yaml).
    #[arg(long)]
    conf_dir: Option<PathBuf>,
    /// Replay only these tables (`ks.t1,ks.t2`): adds -Dcassandra.replayList to the JVM options.
    #[arg(long, default_value = "")]
    tables: String,
    /// The node's Cassandra release (default: from its backups or from nodetool).
    #[arg(long)]
    cassandra_version: Option<String>,
    /// Select and show the segments; download and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// End a point-in-time restore: put the original properties back, remove the replay restriction.
    #[arg(long, conflicts_with_all = ["until", "from", "dry_run"])]
    finish: bool,
    /// With --finish: also remove the download directory.
    #[arg(long)]
    remove_downloads: bool,
    /// After preparing, wait for Cassandra to come up, then finish on its own.
    #[arg(long, conflicts_with = "finish")]
    wait_and_finish: bool,
    /// How long --wait-and-finish waits.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2h")]
    wait_timeout: Duration,
}

/// Runs `commitlog-restore`.
pub async fn restore(a: CommitLogRestoreArgs, global: &GlobalArgs) -> anyhow::Result<i32> {
    let mut cfg = global.load_config()?;
    a.storage.apply(&mut cfg);
    a.transfer.apply(&mut cfg);
    a.cassandra.apply(&mut cfg);
    a.node.apply(&mut cfg);
    let conf_dir = a
        .conf_dir
        .clone()
        .or_else(|| cfg.commitlog.conf_dir.clone())
        .or_else(|| cfg.cassandra.cassandra_yaml.as_ref().and_then(|y| y.parent().map(PathBuf::from)))
        .context("where is Cassandra's configuration directory? pass --conf-dir (or set commitlog.conf_dir, or cassandra.cassandra_yaml)")?;
    let download_dir = a.download_dir.clone().or_else(|| cfg.commitlog.download_dir.clone());
    if a.finish {
        let r = commitlog::finish(&conf_dir, download_dir.as_deref().filter(|_| a.remove_downloads))?;
        match global.output {
            OutputFormat::Json => print_json(&r)?,
            OutputFormat::Text => print_finish(&r, &conf_dir),
        }
        return Ok(0);
    }
    let Some(until) = a.until else { bail!("--until is required") };
    let download_dir =
        download_dir.context("where should the segments go? pass --download-dir (or set commitlog.download_dir)")?;
    let restore_command = cfg.commitlog.restore_command.clone();
    let s = session(global, cfg, "download", true)?;
    let node = resolve_node_with(&s.ctx, true, true).await?;
    let tables = EntitySelection::parse(&a.tables, false)?
        .entities
        .into_iter()
        .map(|e| match e {
            Entity::Table(k, t) => Ok((k, t)),
            Entity::Keyspace(k) => bail!("--tables takes ks.table entries, not the keyspace {k}"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let req = PitrRequest {
        until,
        from: a.from,
        download_dir: download_dir.clone(),
        conf_dir: conf_dir.clone(),
        tables,
        cassandra_version: a.cassandra_version.clone(),
        restore_command,
        dry_run: a.dry_run,
    };
    let report = commitlog::restore(&s.ctx, &node, &req).await?;
    s.bar.finish();
    let finished = if a.wait_and_finish && !a.dry_run {
        if global.output == OutputFormat::Text {
            print_pitr(&report);
        }
        Some(
            commitlog::wait_and_finish(
                &s.ctx,
                &conf_dir,
                Some(download_dir.as_path()).filter(|_| a.remove_downloads),
                a.wait_timeout,
            )
            .await?,
        )
    } else {
        None
    };
    match global.output {
        OutputFormat::Json => print_json(&serde_json::json!({ "restore": report, "finished": finished }))?,
        OutputFormat::Text => match &finished {
            Some(f) => print_finish(f, &conf_dir),
            None => print_pitr(&report),
        },
    }
    Ok(0)
}

fn print_pitr(r: &commitlog::PitrReport) {
    println!(
        "{}point-in-time restore of node {} to {} (restore_point_in_time={}, Cassandra {}):",
        if r.dry_run { "dry run: " } else { "" },
        r.host_id,
        r.until.to_rfc3339(),
        r.restore_point_in_time,
        r.cassandra_version
    );
    println!(
        "  replay from {}{}",
        r.from.to_rfc3339(),
        r.from_backup.as_ref().map(|b| format!(" (snapshot of backup {b})")).unwrap_or_default()
    );
    for s in &r.segments {
        println!("  {} (id {}, closed {}, {})", s.segment, s.segment_id, s.closed_at.to_rfc3339(), bytes(s.size));
    }
    if let Some(p) = &r.properties {
        println!("  wrote {}", p.display());
    }
    if let Some(p) = &r.replay_list_file {
        println!("  replay restricted to the given tables in {}", p.display());
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    for (i, n) in r.next_steps.iter().enumerate() {
        println!("next {}: {n}", i + 1);
    }
}

fn print_finish(r: &commitlog::FinishReport, conf_dir: &std::path::Path) {
    if r.restored_original {
        println!("put the original commitlog_archiving.properties back in {}", conf_dir.display());
    } else if r.removed_properties {
        println!("removed the point-in-time settings from {}", conf_dir.display());
    } else {
        println!("no point-in-time settings of cassette-agent in {}", conf_dir.display());
    }
    if let Some(p) = &r.replay_list_removed_from {
        println!("removed the replay restriction from {}", p.display());
    }
    if let Some(d) = &r.removed_download_dir {
        println!("removed {}", d.display());
    }
}
