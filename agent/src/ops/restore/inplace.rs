//! Placing a backup's files on a stopped node.
//!
//! Files whose destination already holds the right content are left alone (and not
//! downloaded). After the download phase verified everything, each restored table's directories
//! (in every data directory, native index subdirectories included) are cleaned of SSTable
//! components that are not in the backup, of transaction logs (Cassandra would replay them at
//! startup and could delete restored files) and of temporary files; then the staged files are
//! renamed into place. `snapshots/` and `backups/` are never touched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cassette_common::datadir::FileKind;

use super::{RestoreError, RestorePlan, RestoreRequest, require_downloaded};
use crate::ops::{OpContext, sync_dir};

/// Marks the files whose destination already holds their content.
pub async fn mark_in_place(ctx: &OpContext, plan: &mut RestorePlan) -> Result<(), RestoreError> {
    let cache = std::sync::Arc::clone(&ctx.hash_cache);
    let candidates: Vec<(usize, PathBuf, u64, cassette_common::ids::BlobHash)> = plan
        .files
        .iter()
        .enumerate()
        .filter_map(|(i, f)| plan.dest(f).map(|d| (i, d, f.entry.size, f.entry.sha256)))
        .collect();
    let same = tokio::task::spawn_blocking(move || {
        let mut same = Vec::new();
        for (i, dest, size, sha) in candidates {
            let Ok(meta) = std::fs::symlink_metadata(&dest) else { continue };
            if !meta.is_file() || meta.len() != size {
                continue;
            }
            let hash = match cache.lookup(&meta) {
                Some(h) => h,
                None => match cassette_common::hash::sha256_file(&dest) {
                    Ok((h, _)) => {
                        cache.insert(&meta, h);
                        h
                    }
                    Err(_) => continue,
                },
            };
            if hash == sha {
                same.push(i);
            }
        }
        let _ = cache.save();
        same
    })
    .await
    .map_err(|e| RestoreError::local("check", &plan.target_roots[0], std::io::Error::other(e)))?;
    for i in same {
        plan.files[i].in_place = true;
    }
    Ok(())
}

/// What placing did.
#[derive(Debug, Clone, Default)]
pub struct Placed {
    /// Files removed from the table directories.
    pub removed_files: usize,
    /// Where old commit-log segments went.
    pub commitlog_moved_to: Option<PathBuf>,
    /// Whether `cassandra.yaml` changed.
    pub yaml_updated: bool,
    /// Remarks.
    pub warnings: Vec<String>,
}

/// Files Cassandra would load or act on in a table directory.
fn is_table_file(name: &str) -> bool {
    matches!(
        FileKind::of(name),
        FileKind::Sstable(_) | FileKind::LegacySstable { .. } | FileKind::Temporary | FileKind::TransactionLog
    )
}

/// Places the staged files on the stopped node.
pub async fn place(ctx: &OpContext, plan: &RestorePlan, req: &RestoreRequest) -> Result<Placed, RestoreError> {
    if plan.strategy != super::Strategy::InPlace {
        return Err(RestoreError::Refused(format!(
            "files are placed only by an in-place restore, not {}",
            plan.strategy.as_str()
        )));
    }
    let mut state = require_downloaded(plan, "import")?;
    // The node must still be stopped: it may have been started since the plan was made.
    if ctx.cassandra.is_up().await.map_err(|e| RestoreError::cassandra("check that the node is stopped", e))? {
        return Err(RestoreError::Refused(
            "the node was started after the download: stop it again before its files are replaced".into(),
        ));
    }
    ctx.cassandra.prove_stopped().await.map_err(|e| RestoreError::Refused(e.to_string()))?;
    super::live::verify_staged(ctx, plan, &state).await?;
    if req.set_tokens || req.new_cluster {
        let yaml = req.cassandra_yaml.as_ref().ok_or_else(|| {
            RestoreError::Refused("--set-tokens needs the node's cassandra.yaml: set cassandra.cassandra_yaml".into())
        })?;
        if !yaml.is_file() {
            return Err(RestoreError::Refused(format!("{} does not exist", yaml.display())));
        }
        // Before any file moves: the tokens are written last, and must not fail then.
        cassette_common::manifest::validate_tokens("the backup's tokens for initial_token", &plan.source.tokens)
            .map_err(|e| RestoreError::Refused(format!("{e}; cassandra.yaml was not changed")))?;
    }
    let mut out = Placed::default();
    // Live files that already hold their planned content stay; every other table file goes (the
    // files to place are renamed over their paths afterwards).
    let keep: BTreeSet<PathBuf> = plan.files.iter().filter(|f| f.in_place).filter_map(|f| plan.dest(f)).collect();
    let mut table_dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for t in &plan.tables {
        for root in &plan.target_roots {
            table_dirs.insert(root.join(&t.source_keyspace).join(&t.source_dir));
        }
        for root in &plan.target_roots {
            let ks_dir = root.join(&t.source_keyspace);
            for e in std::fs::read_dir(&ks_dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n != t.source_dir && n.rsplit_once('-').is_some_and(|(name, _)| name == t.source_table) {
                    out.warnings.push(format!(
                        "{} holds another directory of table {}.{} ({n}): if that is the current table (recreated after the backup), restore into it with --strategy import on the running node instead",
                        ks_dir.display(),
                        t.source_keyspace,
                        t.source_table
                    ));
                }
            }
        }
    }
    if req.new_cluster {
        // The node's own identity (host id, saved tokens, peers, cluster name) lives in `system`:
        // cleared, the node starts as a new member with the tokens set in cassandra.yaml, and
        // with the backup's schema and roles (system_schema, system_auth) restored above.
        let mut cleared = 0;
        for root in &plan.target_roots {
            for e in std::fs::read_dir(root.join("system")).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink()) && table_dirs.insert(e.path()) {
                    cleared += 1;
                }
            }
        }
        if cleared > 0 {
            out.warnings.push(format!(
                "--new-cluster: cleared the node's own system keyspace ({cleared} table directories): it starts with a new host id and the backup's tokens"
            ));
        }
    }
    let files_of = plan.files.iter().filter(|f| !f.in_place).cloned().collect::<Vec<_>>();
    let (staging, roots) = (plan.staging.clone(), plan.target_roots.clone());
    let removed = tokio::task::spawn_blocking(move || -> Result<usize, RestoreError> {
        let mut removed = 0;
        for dir in &table_dirs {
            let mut dirs = vec![dir.clone()];
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with('.') && e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink()) {
                    dirs.push(e.path());
                }
            }
            for d in dirs {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    let path = e.path();
                    let n = e.file_name().to_string_lossy().into_owned();
                    let Ok(ft) = e.file_type() else { continue };
                    if ft.is_dir() || !is_table_file(&n) || keep.contains(&path) {
                        continue;
                    }
                    std::fs::remove_file(&path).map_err(|e| RestoreError::local("remove", &path, e))?;
                    removed += 1;
                }
            }
        }
        let mut dirs = BTreeSet::new();
        for f in &files_of {
            let dest = f.live(&roots);
            let dir = dest.parent().unwrap_or(Path::new("/"));
            if !dirs.contains(dir) {
                std::fs::create_dir_all(dir).map_err(|e| RestoreError::local("create", dir, e))?;
                dirs.insert(dir.to_path_buf());
            }
            move_into_place(&f.staged(&staging), &dest)?;
        }
        for dir in &dirs {
            sync_dir(dir).map_err(|e| RestoreError::local("sync", dir, e))?;
        }
        Ok(removed)
    })
    .await
    .map_err(|e| RestoreError::local("place files in", &plan.target_roots[0], std::io::Error::other(e)))??;
    out.removed_files = removed;
    state.imported = plan.tables.iter().map(super::PlannedTable::target_name).collect();
    state.save(&plan.state_path())?;

    if !req.keep_commitlog {
        let dirs = ctx
            .cassandra
            .directories()
            .await
            .map_err(|e| RestoreError::cassandra("find the commit-log directory", e))?;
        match dirs.commitlog {
            Some(cl) => out.commitlog_moved_to = move_commitlog(&cl, &plan.backup_id.to_string())?,
            None => out.warnings.push(
                "the commit-log directory is unknown (set cassandra.commitlog_directory): if it holds segments, the node replays writes newer than the backup at startup".into(),
            ),
        }
    }
    if (req.set_tokens || req.new_cluster)
        && let Some(yaml) = &req.cassandra_yaml
    {
        set_tokens(yaml, &plan.source.tokens)?;
        out.yaml_updated = true;
    }
    Ok(out)
}

/// Renames a staged file into place; copies (durably) across file systems.
fn move_into_place(from: &Path, to: &Path) -> Result<(), RestoreError> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            let tmp = crate::storage::engine::temp_path_for(to);
            std::fs::copy(from, &tmp)
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, to))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    RestoreError::local("copy into place", to, e)
                })?;
            let _ = std::fs::remove_file(from);
            Ok(())
        }
        Err(e) => Err(RestoreError::local("move into place", to, e)),
    }
}

/// Moves commit-log segments aside (never deletes them): `<dir>.before-restore-<backup>`.
fn move_commitlog(dir: &Path, backup: &str) -> Result<Option<PathBuf>, RestoreError> {
    let segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            cassette_common::commitlog::CommitLogName::parse(&n).is_some()
                || cassette_common::commitlog::CommitLogName::is_cdc_index(&n)
        })
        .map(|e| e.path())
        .collect();
    if segments.is_empty() {
        return Ok(None);
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "commitlog".into());
    let aside = dir.with_file_name(format!("{name}.before-restore-{backup}"));
    std::fs::create_dir_all(&aside).map_err(|e| RestoreError::local("create", &aside, e))?;
    for s in segments {
        let to = aside.join(s.file_name().unwrap_or_default());
        std::fs::rename(&s, &to).map_err(|e| RestoreError::local("move commit-log segment", &s, e))?;
    }
    sync_dir(&aside).map_err(|e| RestoreError::local("sync", &aside, e))?;
    Ok(Some(aside))
}

/// Sets `initial_token`, `num_tokens` and `auto_bootstrap: false` in a `cassandra.yaml`, keeping
/// a copy of the original beside it. Other lines are left exactly as they are.
///
/// The tokens come from a manifest (untrusted): they are checked here again, whoever called, to
/// be what a partitioner writes ([`cassette_common::manifest::validate_tokens`]: digits and a
/// leading `-`), and `num_tokens` is their count, so Cassandra starts with exactly these.
pub fn set_tokens(yaml: &Path, tokens: &[String]) -> Result<(), RestoreError> {
    if tokens.is_empty() {
        return Err(RestoreError::Refused(
            "the backup records no tokens for its node: cannot set initial_token".into(),
        ));
    }
    cassette_common::manifest::validate_tokens("the backup's tokens for initial_token", tokens)
        .map_err(|e| RestoreError::Refused(format!("{e}; cassandra.yaml was not changed")))?;
    let text = std::fs::read_to_string(yaml).map_err(|e| RestoreError::local("read", yaml, e))?;
    let edited = edit_yaml(
        &text,
        &[
            ("num_tokens", tokens.len().to_string()),
            ("initial_token", tokens.join(",")),
            ("auto_bootstrap", "false".to_owned()),
        ],
    )?;
    let backup = yaml.with_file_name(format!(
        "{}.before-restore-{}",
        yaml.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    std::fs::copy(yaml, &backup).map_err(|e| RestoreError::local("keep a copy of", yaml, e))?;
    let tmp = yaml.with_extension("yaml.tmp");
    std::fs::write(&tmp, edited)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, yaml))
        .map_err(|e| RestoreError::local("write", yaml, e))
}

/// Replaces top-level `key: value` lines (or adds them after a commented `# key:` line, or at
/// the end).
///
/// Values are written as plain YAML scalars, so each must be one that needs no quoting: letters,
/// digits, `-`, `,`, `.` and `_` only (tokens, counts, booleans). Anything else (a newline, `:`,
/// `#`, a quote) is refused rather than quoted, so that no value can end its line or start
/// another setting.
fn edit_yaml(text: &str, settings: &[(&str, String)]) -> Result<String, RestoreError> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for (key, value) in settings {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | ',' | '.' | '_');
        if value.is_empty() || !value.chars().all(plain) {
            return Err(RestoreError::Refused(format!(
                "the value {value:?} for {key} is not a plain YAML scalar (letters, digits, '-', ',', '.', '_'); cassandra.yaml was not changed"
            )));
        }
        let line = format!("{key}: {value}");
        let is_key =
            |l: &str| l.split_once(':').is_some_and(|(k, _)| k.trim_end() == *key) && !l.starts_with([' ', '\t']);
        if let Some(i) = lines.iter().position(|l| is_key(l)) {
            lines[i] = line;
        } else if let Some(i) = lines.iter().position(|l| l.strip_prefix('#').is_some_and(|r| is_key(r.trim_start()))) {
            lines.insert(i + 1, line);
        } else {
            lines.push(line);
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_settings_are_replaced_or_added_and_nothing_else_changes() {
        let y = "cluster_name: 'Test Cluster'\nnum_tokens: 16\n# initial_token:\nseed_provider:\n  - class_name: x\n    parameters:\n      - seeds: \"127.0.0.1\"\n";
        let out = edit_yaml(
            y,
            &[("num_tokens", "2".into()), ("initial_token", "-1,5".into()), ("auto_bootstrap", "false".into())],
        )
        .unwrap();
        assert_eq!(
            out,
            "cluster_name: 'Test Cluster'\nnum_tokens: 2\n# initial_token:\ninitial_token: -1,5\nseed_provider:\n  - class_name: x\n    parameters:\n      - seeds: \"127.0.0.1\"\nauto_bootstrap: false\n"
        );
        // Idempotent.
        assert_eq!(
            edit_yaml(
                &out,
                &[("num_tokens", "2".into()), ("initial_token", "-1,5".into()), ("auto_bootstrap", "false".into())]
            )
            .unwrap(),
            out
        );
    }

    #[test]
    fn tokens_from_a_manifest_cannot_inject_settings_into_cassandra_yaml() {
        let tmp = tempfile::tempdir().unwrap();
        let yaml = tmp.path().join("cassandra.yaml");
        let original = "cluster_name: 'Test Cluster'\nnum_tokens: 2\nauthenticator: PasswordAuthenticator\n";
        for bad in [
            vec!["1\nauthenticator: AllowAllAuthenticator".to_owned(), "2".to_owned()],
            vec!["1".to_owned(), "2 # comment".to_owned()],
            vec!["'1'".to_owned()],
            vec!["0x10".to_owned()],
            vec!["1".to_owned(), "1".to_owned()],
            vec!["9223372036854775808".to_owned(), "-1".to_owned()],
        ] {
            std::fs::write(&yaml, original).unwrap();
            let e = set_tokens(&yaml, &bad).unwrap_err().to_string();
            assert!(e.contains("token") && e.contains("nothing was changed"), "{bad:?}: {e}");
            assert_eq!(std::fs::read_to_string(&yaml).unwrap(), original, "{bad:?}: cassandra.yaml changed");
        }
        std::fs::write(&yaml, original).unwrap();
        set_tokens(&yaml, &["-9223372036854775808".to_owned(), "42".to_owned()]).unwrap();
        let text = std::fs::read_to_string(&yaml).unwrap();
        assert!(
            text.contains("num_tokens: 2\n") && text.contains("initial_token: -9223372036854775808,42\n"),
            "{text}"
        );
        assert!(text.contains("authenticator: PasswordAuthenticator\n") && !text.contains("AllowAll"), "{text}");
    }

    #[test]
    fn table_files_are_what_cassandra_acts_on() {
        assert!(is_table_file("nb-1-big-Data.db"));
        assert!(is_table_file("nb_txn_flush_0b8b7d30-1c42-11ef-9d55-7f9d1b9b5a2e.log"));
        assert!(is_table_file("nb-1-big-Data.db.tmp"));
        assert!(!is_table_file("manifest.json") && !is_table_file("README"));
    }
}
