//! `cassette-agent restore`: put a backup back on this node (in place, with hard links, or with
//! `nodetool import`).

use std::path::PathBuf;

use cassette_agent::cassandra::ImportOptions;
use cassette_agent::ops::EntitySelection;
use cassette_agent::ops::catalog::BackupSelector;
use cassette_agent::ops::restore::{self, Phase, Rename, RestoreRequest, Strategy};
use cassette_common::ids::HostId;
use clap::Args;

use super::{CassandraArgs, GlobalArgs, NodeArgs, OutputFormat, StorageArgs, TransferArgs, bytes, print_json, session};

/// `restore`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  # A running node, one table, back to the newest backup (download, truncate, import, cleanup):
  cassette-agent restore latest -l s3://backups/prod --strategy import --entities shop.users
  # The same into another table:
  cassette-agent restore 20261123T214100Z-3fa9c2d1 -l s3://backups/prod --strategy hardlinks --rename shop.users=shop.users_restored
  # A cluster, phase by phase: download everywhere, truncate once, import everywhere, cleanup everywhere:
  cassette-agent restore nightly -l s3://backups/prod --strategy import --phase download
  # Rebuild a stopped node from scratch, with its old tokens:
  cassette-agent restore latest -l s3://backups/prod --strategy in-place --cluster prod --host-id 1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3 --cassandra-yaml /etc/cassandra/cassandra.yaml --set-tokens

Nothing on the node changes before every file is downloaded and verified. Missing tables, schema
differences, token mismatches and too little disk space are reported before anything is touched.")]
pub struct RestoreArgs {
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
    /// in-place (node stopped), hardlinks or import (node running; import needs 4.0+).
    #[arg(long, value_enum)]
    strategy: Strategy,
    /// Run one phase only (live strategies: download, truncate, import, cleanup; in-place: download, import, cleanup).
    #[arg(long, value_enum, default_value = "all")]
    phase: Phase,
    /// Restore only these keyspaces or tables (`ks1,ks2.t1`). Default: every user table of the backup.
    #[arg(long, default_value = "")]
    entities: String,
    /// In-place: also restore the system keyspaces (the node keeps its identity, tokens and schema).
    #[arg(long)]
    system_keyspaces: bool,
    /// In-place: restore system_schema and system_auth but not system: the node joins as a new
    /// member with the old schema and data (implies --set-tokens).
    #[arg(long)]
    new_cluster: bool,
    /// Restore a table into another existing one: `ks.t=ks.t2` (repeatable).
    #[arg(long)]
    rename: Vec<Rename>,
    /// Restore the backup of another node (its host id), e.g. onto a replacement.
    #[arg(long)]
    source_host_id: Option<HostId>,
    /// The cluster of --source-host-id (default: this node's).
    #[arg(long)]
    source_cluster: Option<String>,
    /// Stage downloads here instead of `<data dir>/.cassette-restore/` (files are then copied, not linked).
    #[arg(long)]
    staging_dir: Option<PathBuf>,
    /// In-place: write the backup's tokens into cassandra.yaml (initial_token, num_tokens) with auto_bootstrap: false.
    #[arg(long)]
    set_tokens: bool,
    /// In-place: leave commit-log segments in place (default: moved aside, so writes newer than the backup are not replayed).
    #[arg(long)]
    keep_commitlog: bool,
    /// Live: do not truncate; the backup's data is added to the table's.
    #[arg(long)]
    no_truncate: bool,
    /// Cleanup: also clear the snapshots TRUNCATE made (they hold the replaced data; kept by default).
    #[arg(long)]
    clear_truncated: bool,
    /// Restore although the node's tokens differ from the backup's.
    #[arg(long)]
    ignore_token_mismatch: bool,
    /// Restore although a table's primary key or column types differ.
    #[arg(long)]
    ignore_schema_mismatch: bool,
    /// Do not check free disk space before downloading.
    #[arg(long)]
    skip_space_check: bool,
    /// Live: create tables missing on the node (dropped, or a new cluster) from the backup's schema.cql (types, table with its old id, indexes), then restore them.
    #[arg(long)]
    create_tables: bool,
    /// Check and show the plan (tables, files, space); change nothing.
    #[arg(long)]
    dry_run: bool,
    /// nodetool import --keep-level.
    #[arg(long)]
    keep_level: bool,
    /// nodetool import --keep-repaired.
    #[arg(long)]
    keep_repaired: bool,
    /// nodetool import --no-verify.
    #[arg(long)]
    no_verify: bool,
    /// nodetool import --no-tokens.
    #[arg(long)]
    no_verify_tokens: bool,
    /// nodetool import --no-invalidate-caches.
    #[arg(long)]
    no_invalidate_caches: bool,
    /// nodetool import --quick.
    #[arg(long)]
    quick: bool,
    /// nodetool import --extended-verify.
    #[arg(long)]
    extended_verify: bool,
    /// nodetool import --copy-data (keep the staged files).
    #[arg(long)]
    copy_data: bool,
    /// nodetool import --require-index-components (5.0).
    #[arg(long)]
    require_index_components: bool,
    /// nodetool import --no-index-validation (5.0).
    #[arg(long)]
    no_index_validation: bool,
}

/// Runs `restore`; returns the exit code.
pub async fn run(a: RestoreArgs, global: &GlobalArgs) -> anyhow::Result<i32> {
    let mut cfg = global.load_config()?;
    a.storage.apply(&mut cfg);
    a.transfer.apply(&mut cfg);
    a.cassandra.apply(&mut cfg);
    a.node.apply(&mut cfg);
    let s = session(global, cfg, "download", a.transfer.no_hash_cache)?;
    let source = match a.source_host_id {
        Some(h) => {
            let cluster = match a.source_cluster.clone().or_else(|| s.config.node.cluster.clone()) {
                Some(c) => c,
                None => cassette_agent::ops::resolve_node(&s.ctx, true).await?.cluster,
            };
            Some((cluster, h))
        }
        None => None,
    };
    let req = RestoreRequest {
        backup: BackupSelector::parse(&a.backup),
        source,
        strategy: a.strategy,
        phase: a.phase,
        entities: EntitySelection::parse(&a.entities, a.system_keyspaces)?,
        new_cluster: a.new_cluster,
        renames: a.rename,
        import_options: ImportOptions {
            keep_level: a.keep_level,
            keep_repaired: a.keep_repaired,
            no_verify: a.no_verify,
            no_verify_tokens: a.no_verify_tokens,
            no_invalidate_caches: a.no_invalidate_caches,
            quick: a.quick,
            extended_verify: a.extended_verify,
            copy_data: a.copy_data,
            require_index_components: a.require_index_components,
            no_index_validation: a.no_index_validation,
        },
        set_tokens: a.set_tokens,
        cassandra_yaml: s.config.cassandra.cassandra_yaml.clone(),
        keep_commitlog: a.keep_commitlog,
        no_truncate: a.no_truncate,
        clear_truncated: a.clear_truncated,
        ignore_token_mismatch: a.ignore_token_mismatch,
        ignore_schema_mismatch: a.ignore_schema_mismatch,
        skip_space_check: a.skip_space_check,
        dry_run: a.dry_run,
        create_tables: a.create_tables,
    };
    let staging = a.staging_dir.clone().or_else(|| s.config.restore.staging_dir.clone());
    let result = restore::run(&s.ctx, &req, staging.as_deref()).await;
    s.bar.finish();
    let report = result?;
    match global.output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            let phases = if report.phases.is_empty() { "no phase".to_owned() } else { report.phases.join(", ") };
            println!(
                "{}restore of backup {} (node {}) with --strategy {}: {} tables, {} files ({}); ran {phases} in {:.1}s",
                if report.dry_run { "dry run: " } else { "" },
                report.backup_id,
                report.source_host_id,
                report.strategy.as_str(),
                report.tables.len(),
                report.files_total,
                bytes(report.bytes_total),
                report.seconds
            );
            for t in &report.tables {
                let target =
                    if t.source_name() == t.target_name() { String::new() } else { format!(" -> {}", t.target_name()) };
                println!("  {}{target}: {} files, {}", t.source_name(), t.files, bytes(t.bytes));
            }
            for s in &report.space {
                println!("  space: {} needs {}, {} available", s.path.display(), bytes(s.needed), bytes(s.available));
            }
            if let Some(d) = &report.download {
                println!(
                    "  downloaded and verified {} files ({}), {} already in place",
                    d.files_transferred,
                    bytes(d.bytes_transferred),
                    d.files_skipped
                );
            }
            if !report.truncated.is_empty() {
                println!("  truncated: {}", report.truncated.join(", "));
            }
            if !report.imported.is_empty() {
                println!("  restored: {}", report.imported.join(", "));
            }
            if report.removed_files > 0 {
                println!("  removed {} files that are not in the backup", report.removed_files);
            }
            if let Some(d) = &report.commitlog_moved_to {
                println!("  old commit-log segments moved to {}", d.display());
            }
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            for n in &report.next_steps {
                println!("next: {n}");
            }
        }
    }
    Ok(0)
}
