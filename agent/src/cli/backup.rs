//! `cassette-agent backup`: snapshot this node, store the new blobs, write the manifest, clear the snapshot.

use std::time::Duration;

use cassette_agent::ops::EntitySelection;
use cassette_agent::ops::backup::{self, BackupRequest};
use cassette_common::ids::BackupId;
use clap::Args;

use super::{CassandraArgs, GlobalArgs, OutputFormat, StorageArgs, TransferArgs, bytes, print_json, session};

/// `backup`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  cassette-agent backup --location s3://backups/prod
  cassette-agent backup -l s3://backups/prod --entities shop,audit.events --tag nightly --bandwidth 50MiB/s
  cassette-agent backup -l file:///mnt/backups --dry-run --output json

Every non-system keyspace and system_auth by default. Only blobs not stored yet are sent; files the
hash cache knows are not read again. The node manifest is written last; the snapshot is cleared
whatever happens (unless --keep-snapshot).")]
pub struct BackupArgs {
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    transfer: TransferArgs,
    #[command(flatten)]
    cassandra: CassandraArgs,
    /// Keyspaces and tables to back up: `ks1,ks2` or `ks1.t1,ks2.t2` (mixing is fine).
    #[arg(long, default_value = "")]
    entities: String,
    /// Also back up the system keyspaces (system, system_schema, system_auth, system_distributed, system_traces).
    #[arg(long)]
    system_keyspaces: bool,
    /// A label recorded in the manifest; restore and verify accept it instead of the id.
    #[arg(long)]
    tag: Option<String>,
    /// Use this backup id instead of a fresh one (`YYYYMMDDTHHMMSSZ-xxxxxxxx`).
    #[arg(long)]
    backup_id: Option<BackupId>,
    /// Keep the snapshot after the backup.
    #[arg(long)]
    keep_snapshot: bool,
    /// Snapshot, hash and show what would be uploaded; upload and write nothing, clear the snapshot.
    #[arg(long)]
    dry_run: bool,
    /// Spread the upload over this long (e.g. `2h`): the rate is what must be sent divided by it,
    /// never above --bandwidth.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

/// Runs `backup`; returns the exit code.
pub async fn run(a: BackupArgs, global: &GlobalArgs) -> anyhow::Result<i32> {
    let mut cfg = global.load_config()?;
    a.storage.apply(&mut cfg);
    a.transfer.apply(&mut cfg);
    a.cassandra.apply(&mut cfg);
    let s = session(global, cfg, "upload", a.transfer.no_hash_cache)?;
    let req = BackupRequest {
        backup_id: a.backup_id,
        tag: a.tag,
        entities: EntitySelection::parse(&a.entities, a.system_keyspaces)?,
        keep_snapshot: a.keep_snapshot || s.config.backup.keep_snapshot,
        dry_run: a.dry_run,
        duration: a.duration,
        snapshot_ttl: s.config.backup.snapshot_ttl,
    };
    let result = backup::run(&s.ctx, &req).await;
    s.bar.finish();
    let report = result?;
    match global.output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            if report.dry_run {
                println!(
                    "dry run of backup {} ({} files, {} in {} tables): would upload {} files ({}); {} already stored; nothing was written",
                    report.backup_id,
                    report.files_total,
                    bytes(report.bytes_total),
                    report.tables,
                    report.files_uploaded,
                    bytes(report.bytes_uploaded),
                    report.files_skipped
                );
            } else {
                println!(
                    "backup {} of node {} complete in {:.1}s: {} files ({}) in {} tables; uploaded {} files ({}), {} already stored ({}), {} read for hashing",
                    report.backup_id,
                    report.host_id,
                    report.seconds,
                    report.files_total,
                    bytes(report.bytes_total),
                    report.tables,
                    report.files_uploaded,
                    bytes(report.bytes_uploaded),
                    report.files_skipped,
                    bytes(report.bytes_skipped),
                    bytes(report.bytes_hashed)
                );
            }
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
        }
    }
    Ok(if report.needs_attention() { 1 } else { 0 })
}
