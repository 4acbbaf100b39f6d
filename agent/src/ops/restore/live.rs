//! The phases of a restore into a running node: truncate, import (`nodetool import` of the
//! staging directories, or hard links into the table directories and `nodetool refresh`), and
//! cleanup. Each phase records what it finished in the staging directory's state file, so a rerun
//! continues where the previous call stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cassette_common::sstable::{SstableId, SstableName, UuidSstableId};

use super::{PlannedFile, RestoreError, RestorePlan, RestoreRequest, RestoreState, Strategy, require_downloaded};
use crate::cassandra::{ClearSnapshotRequest, ClearTarget, ImportRequest};
use crate::ops::{OpContext, human_bytes};

/// Checks that every staged file of the tables still to import is there, with the content the
/// manifest names (hash cache first; files changed since the download are hashed again).
pub(super) async fn verify_staged(
    ctx: &OpContext,
    plan: &RestorePlan,
    state: &RestoreState,
) -> Result<(), RestoreError> {
    let files: Vec<PlannedFile> = plan
        .files
        .iter()
        .filter(|f| !f.in_place && !state.imported.contains(&plan.tables[f.table].target_name()))
        .cloned()
        .collect();
    let cache = std::sync::Arc::clone(&ctx.hash_cache);
    let staging = plan.staging.clone();
    let problems = tokio::task::spawn_blocking(move || {
        let mut problems = Vec::new();
        for f in files {
            let staged = f.staged(&staging);
            let meta = match std::fs::metadata(&staged) {
                Ok(m) => m,
                Err(e) => {
                    problems.push(format!("{}: {e}", staged.display()));
                    continue;
                }
            };
            if meta.len() != f.entry.size {
                problems.push(format!("{}: {} bytes, expected {}", staged.display(), meta.len(), f.entry.size));
                continue;
            }
            let hash = match cache.lookup(&meta) {
                Some(h) => h,
                None => match cassette_common::hash::sha256_file(&staged) {
                    Ok((h, _)) => {
                        cache.insert(&meta, h);
                        h
                    }
                    Err(e) => {
                        problems.push(format!("{}: {e}", staged.display()));
                        continue;
                    }
                },
            };
            if hash != f.entry.sha256 {
                problems.push(format!(
                    "{}: sha256 {} instead of {}",
                    staged.display(),
                    hash.short(),
                    f.entry.sha256.short()
                ));
            }
        }
        problems
    })
    .await
    .map_err(|e| RestoreError::local("verify", &plan.staging[0], std::io::Error::other(e)))?;
    if !problems.is_empty() {
        return Err(RestoreError::PhaseOrder {
            phase: "import",
            needs: "the downloaded files unchanged",
            hint: format!(
                "{} staged file(s) are missing or changed ({}): run --phase download again",
                problems.len(),
                problems.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            ),
        });
    }
    Ok(())
}

/// Creates the target tables the plan marks for creation (`--create-tables`) from the backup's
/// checked schema, once: types, the table with its old id, its indexes, all `IF NOT EXISTS`.
/// Runs in the truncate phase (once per cluster) or, without one, before the import.
async fn create_missing(ctx: &OpContext, plan: &RestorePlan, state: &mut RestoreState) -> Result<(), RestoreError> {
    for t in &plan.tables {
        let Some(text) = &t.create_schema else { continue };
        let name = t.target_name();
        if state.created.contains(&name) {
            continue;
        }
        let statements = cassette_common::cql::parse_schema(text, &t.target_keyspace, &t.target_table)
            .map_err(|why| RestoreError::Refused(format!("the backup's schema of {name} cannot be used: {why}")))?;
        ctx.say(format!("creating {name} from the backup's schema ({} statements)", statements.len()));
        ctx.cassandra
            .create_schema(&statements)
            .await
            .map_err(|e| RestoreError::cassandra(format!("create {name} from the backup's schema"), e))?;
        state.created.push(name);
        state.save(&plan.state_path())?;
    }
    Ok(())
}

/// Truncates every target table (once; a rerun skips tables already truncated). Only after the
/// download phase verified every file. Tables to create are created first.
pub async fn truncate(ctx: &OpContext, plan: &RestorePlan) -> Result<Vec<String>, RestoreError> {
    let mut state = require_downloaded(plan, "truncate")?;
    create_missing(ctx, plan, &mut state).await?;
    if state.truncated_at_ms.is_none() {
        state.truncated_at_ms = Some(chrono::Utc::now().timestamp_millis());
        state.save(&plan.state_path())?;
    }
    let mut done = Vec::new();
    for t in &plan.tables {
        let name = t.target_name();
        if state.truncated.contains(&name) {
            continue;
        }
        if ctx.cancel.is_cancelled() {
            return Err(RestoreError::Cancelled { phase: "truncate" });
        }
        ctx.say(format!("truncating {name}"));
        ctx.cassandra
            .truncate(&t.target_keyspace, &t.target_table)
            .await
            .map_err(|e| RestoreError::cassandra(format!("truncate {name}"), e))?;
        state.truncated.push(name.clone());
        state.save(&plan.state_path())?;
        done.push(name);
    }
    Ok(done)
}

/// Imports (or hard-links and refreshes) every target table not imported yet.
pub async fn import(ctx: &OpContext, plan: &RestorePlan, req: &RestoreRequest) -> Result<Vec<String>, RestoreError> {
    let mut state = require_downloaded(plan, "import")?;
    verify_staged(ctx, plan, &state).await?;
    create_missing(ctx, plan, &mut state).await?;
    let version = ctx.cassandra.describe_node().await.map_err(|e| RestoreError::cassandra("describe the node", e))?;
    let mut done = Vec::new();
    for (ti, t) in plan.tables.iter().enumerate() {
        let name = t.target_name();
        if state.imported.contains(&name) {
            continue;
        }
        if ctx.cancel.is_cancelled() {
            return Err(RestoreError::Cancelled { phase: "import" });
        }
        let files: Vec<&PlannedFile> = plan.files.iter().filter(|f| f.table == ti).collect();
        if files.is_empty() {
            // An empty table in the backup: truncating it was the restore.
            state.imported.push(name.clone());
            state.save(&plan.state_path())?;
            done.push(name);
            continue;
        }
        let bytes: u64 = files.iter().map(|f| f.entry.size).sum();
        match plan.strategy {
            Strategy::Import => {
                let dirs: BTreeSet<PathBuf> =
                    files.iter().filter_map(|f| plan.staged(f).parent().map(Path::to_path_buf)).collect();
                ctx.say(format!("importing {} files ({}) into {name}", files.len(), human_bytes(bytes)));
                ctx.cassandra
                    .import(&ImportRequest {
                        keyspace: t.target_keyspace.clone(),
                        table: t.target_table.clone(),
                        dirs: dirs.into_iter().collect(),
                        options: req.import_options.clone(),
                    })
                    .await
                    .map_err(|e| RestoreError::cassandra(format!("import into {name}"), e))?;
            }
            Strategy::Hardlinks => {
                ctx.say(format!("linking {} files ({}) into {name} and refreshing", files.len(), human_bytes(bytes)));
                let uuid_ids = version.release_version.supports_uuid_sstable_ids();
                let links = link_table(plan, ti, &files, uuid_ids)?;
                if let Err(e) = ctx.cassandra.refresh(&t.target_keyspace, &t.target_table).await {
                    // Undo: Cassandra loaded nothing it reports; remove the links still under our names.
                    for l in &links {
                        let _ = std::fs::remove_file(l);
                    }
                    return Err(RestoreError::cassandra(
                        format!(
                            "nodetool refresh {} {} (the hard links were removed again)",
                            t.target_keyspace, t.target_table
                        ),
                        e,
                    ));
                }
            }
            Strategy::InPlace => unreachable_in_place()?,
        }
        state.imported.push(name.clone());
        state.save(&plan.state_path())?;
        done.push(name);
    }
    Ok(done)
}

fn unreachable_in_place() -> Result<(), RestoreError> {
    Err(RestoreError::Refused("an in-place restore places files instead of importing them".into()))
}

/// Hard-links a table's staged SSTables into its live directories, under names no live or
/// future SSTable uses: fresh UUID ids on 4.1+ (which reads them whatever its id setting), else
/// sequence ids a million above the highest on disk, far from the node's own counter, so a flush
/// between the links and the refresh cannot collide with them. The refresh renames them anyway.
fn link_table(
    plan: &RestorePlan,
    ti: usize,
    files: &[&PlannedFile],
    uuid_ids: bool,
) -> Result<Vec<PathBuf>, RestoreError> {
    let t = &plan.tables[ti];
    let dirs: Vec<PathBuf> = plan.target_roots.iter().map(|r| r.join(&t.target_keyspace).join(&t.target_dir)).collect();
    let mut existing = BTreeSet::new();
    let mut max_seq = 0u64;
    for d in &dirs {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if let Some(n) = e.file_name().to_str().and_then(|n| SstableName::parse(n).ok()) {
                if let SstableId::Sequence(s) = n.id {
                    max_seq = max_seq.max(s);
                }
                existing.insert(n.sstable_prefix());
            }
        }
    }
    for f in files {
        if let Some(s) = f.entry.sstable()
            && let Ok(n) = s.generation.parse::<u64>()
        {
            max_seq = max_seq.max(n);
        }
    }
    let mut next_seq = max_seq + 1_000_000;
    let mut renamed: BTreeMap<(usize, String), String> = BTreeMap::new();
    let mut links = Vec::new();
    let undo = |links: &[PathBuf]| {
        for l in links {
            let _ = std::fs::remove_file(l);
        }
    };
    for f in files {
        let file_name = f.entry.path.rsplit('/').next().unwrap_or_default();
        let Ok(name) = SstableName::parse(file_name) else {
            continue;
        };
        let key = (f.root, name.sstable_prefix());
        let new_prefix = match renamed.get(&key) {
            Some(p) => p.clone(),
            None => {
                let id = if uuid_ids || matches!(name.id, SstableId::Uuid(_)) {
                    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default().max(0) as u64;
                    SstableId::from_uuid(UuidSstableId::from_unix_nanos(now, rand::random()))
                } else {
                    next_seq += 1;
                    SstableId::Sequence(next_seq)
                };
                let p = SstableName { id, ..name.clone() }.sstable_prefix();
                if existing.contains(&p) {
                    undo(&links);
                    return Err(RestoreError::Refused(format!("{p} already exists in {}", dirs[f.root].display())));
                }
                existing.insert(p.clone());
                renamed.insert(key, p.clone());
                p
            }
        };
        let dir = &dirs[f.root];
        if let Err(e) = std::fs::create_dir_all(dir) {
            undo(&links);
            return Err(RestoreError::local("create", dir, e));
        }
        let target = dir.join(format!("{new_prefix}-{}", name.component));
        let staged = plan.staged(f);
        let linked = std::fs::hard_link(&staged, &target).or_else(|e| {
            if e.kind() == std::io::ErrorKind::CrossesDevices {
                // Staged on another file system (--staging-dir): copy, durably.
                std::fs::copy(&staged, &target).and_then(|_| std::fs::File::open(&target)?.sync_all())
            } else {
                Err(e)
            }
        });
        if let Err(e) = linked {
            undo(&links);
            return Err(RestoreError::local("link", &target, e));
        }
        links.push(target);
    }
    for d in &dirs {
        if d.exists() {
            crate::ops::sync_dir(d).map_err(|e| RestoreError::local("sync", d, e))?;
        }
    }
    Ok(links)
}

/// What the cleanup phase did.
#[derive(Debug, Clone, Default)]
pub struct Cleaned {
    /// `truncated-*` snapshots of the restored tables still on disk.
    pub kept_snapshots: Vec<String>,
}

/// Removes the staging directories and, when asked, the snapshots the truncate phase made.
pub async fn cleanup(ctx: &OpContext, plan: &RestorePlan, req: &RestoreRequest) -> Result<Cleaned, RestoreError> {
    let state = RestoreState::load(&plan.state_path()).unwrap_or_default();
    let mut out = Cleaned::default();
    if let Some(since) = state.truncated_at_ms.filter(|_| !state.truncated.is_empty()) {
        let snaps =
            ctx.cassandra.list_snapshots(None).await.map_err(|e| RestoreError::cassandra("list snapshots", e))?;
        for s in snaps {
            let Some(rest) = s.tag.strip_prefix("truncated-") else { continue };
            let Some((ms, table)) = rest.split_once('-') else { continue };
            let Ok(ms) = ms.parse::<i64>() else { continue };
            // Allow for the node's clock being a little behind this host's.
            if ms + 60_000 < since {
                continue;
            }
            let ours: Vec<&str> = s
                .tables
                .iter()
                .filter(|t| t.table == table && state.truncated.contains(&format!("{}.{}", t.keyspace, t.table)))
                .map(|t| t.keyspace.as_str())
                .collect();
            if ours.is_empty() {
                continue;
            }
            if req.clear_truncated {
                ctx.cassandra
                    .clear_snapshot(&ClearSnapshotRequest {
                        target: ClearTarget::Tag(s.tag.clone()),
                        keyspaces: ours.iter().map(|k| (*k).to_owned()).collect(),
                    })
                    .await
                    .map_err(|e| RestoreError::cassandra(format!("clear snapshot {}", s.tag), e))?;
            } else {
                out.kept_snapshots.push(s.tag.clone());
            }
        }
    }
    remove_staging(plan)?;
    Ok(out)
}

/// Removes the staging directories of this backup (and their parents when empty).
pub fn remove_staging(plan: &RestorePlan) -> Result<(), RestoreError> {
    for d in &plan.staging {
        match std::fs::remove_dir_all(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RestoreError::local("remove staging directory", d, e)),
        }
        // `.cassette-restore/` (or the custom staging dir's backup directory) when nothing else is in it.
        if let Some(parent) = d.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    Ok(())
}
