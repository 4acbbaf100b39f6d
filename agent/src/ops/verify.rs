//! Verification of a backup without restoring it: every blob its manifest names exists with the
//! right size, and with `deep`, is downloaded and hashed again (nothing is written to disk).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use cassette_common::hash::Hasher;
use cassette_common::ids::{BackupId, BlobHash};
use cassette_common::layout;
use cassette_common::manifest::NodeManifest;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use serde::Serialize;

use super::catalog::{self, BackupSelector, CatalogError, ManifestCache, ManifestRef};
use super::{OpContext, human_bytes};
use crate::storage::{Retry, StoreError};

/// Which backups of which nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One node: cluster, host id.
    Node(String, cassette_common::ids::HostId),
    /// Every node of a cluster.
    Cluster(String),
}

/// A blob that is not as the manifest says.
#[derive(Debug, Clone, Serialize)]
pub struct BlobProblem {
    /// The blob.
    pub sha256: BlobHash,
    /// Size the manifest records.
    pub expected_size: u64,
    /// Size stored (none: missing).
    pub stored_size: Option<u64>,
    /// Deep check: the hash of the stored bytes, when it differs.
    pub actual_sha256: Option<BlobHash>,
    /// What went wrong, in words.
    pub problem: String,
    /// Files of the backup with this content (up to 5).
    pub files: Vec<String>,
}

/// One node's backup, verified.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedBackup {
    /// The backup.
    pub backup_id: BackupId,
    /// Cluster.
    pub cluster: String,
    /// Node.
    pub host_id: String,
    /// Files in the manifest.
    pub files: usize,
    /// Distinct blobs.
    pub blobs: usize,
    /// Their size.
    pub bytes: u64,
    /// Blobs that are missing, of the wrong size or (deep) damaged.
    pub problems: Vec<BlobProblem>,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Every backup checked.
    pub backups: Vec<VerifiedBackup>,
    /// Whether blobs were downloaded and hashed.
    pub deep: bool,
    /// Bytes downloaded by a deep check.
    pub bytes_read: u64,
    /// Whether everything is as the manifests say.
    pub ok: bool,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Picks the node manifests to verify: one node's selected backup, or every node's part of the
/// selected backup of a cluster.
pub async fn select(
    ctx: &OpContext,
    scope: &Scope,
    selector: &BackupSelector,
) -> Result<Vec<ManifestRef>, CatalogError> {
    let cluster = match scope {
        Scope::Node(c, _) | Scope::Cluster(c) => c,
    };
    let index = catalog::scan_backups(&ctx.repo, cluster).await?;
    match scope {
        Scope::Node(cluster, host) => {
            let refs = index.node(cluster, host);
            let (r, _) = catalog::select(ctx, &refs, selector, &format!("node {host} of cluster {cluster:?}")).await?;
            Ok(vec![r])
        }
        Scope::Cluster(cluster) => {
            let refs = index.cluster(cluster);
            let ids: Vec<BackupId> = {
                let mut v: Vec<BackupId> = refs.iter().map(|r| r.backup_id.clone()).collect();
                v.dedup();
                v
            };
            let not_found = |what: String| CatalogError::NotFound {
                what,
                location: ctx.repo.location().to_string(),
                hint: format!("cluster {cluster:?} has {} backup(s) there", ids.len()),
            };
            let id = match selector {
                BackupSelector::Id(id) => id.clone(),
                BackupSelector::Latest => ids.last().cloned().ok_or_else(|| not_found("no backup".into()))?,
                BackupSelector::Tag(tag) => {
                    let cache = ManifestCache::for_context(ctx);
                    let mut found = None;
                    for r in refs.iter().rev() {
                        let m = catalog::load_manifest(&ctx.repo, r, &ctx.settings.manifests, cache.as_ref()).await?;
                        if m.tag.as_deref() == Some(tag.as_str()) {
                            found = Some(r.backup_id.clone());
                            break;
                        }
                    }
                    found.ok_or_else(|| not_found(format!("no backup tagged {tag:?}")))?
                }
            };
            let chosen: Vec<ManifestRef> = refs.into_iter().filter(|r| r.backup_id == id).collect();
            if chosen.is_empty() {
                return Err(not_found(format!("no backup {id} in cluster {cluster:?}")));
            }
            Ok(chosen)
        }
    }
}

/// Verifies the selected backups.
pub async fn verify(
    ctx: &OpContext,
    scope: &Scope,
    selector: &BackupSelector,
    deep: bool,
) -> Result<VerifyReport, VerifyError> {
    let start = Instant::now();
    ctx.repo.open_existing().await?;
    let refs = select(ctx, scope, selector).await?;
    let cache = ManifestCache::for_context(ctx);
    let manifests = catalog::load_manifests(&ctx.repo, &refs, &ctx.settings.manifests, cache.as_ref()).await?;
    let mut report = VerifyReport { backups: Vec::new(), deep, bytes_read: 0, ok: true, seconds: 0.0 };
    for (_, m) in manifests {
        let (v, read) = verify_manifest(ctx, &m, deep).await?;
        report.bytes_read += read;
        report.ok &= v.problems.is_empty();
        report.backups.push(v);
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// A verification that could not be carried out (a failed check is a report, not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The catalog could not be read.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl VerifyError {
    /// Whether a retry makes sense.
    pub fn retry(&self) -> Retry {
        match self {
            VerifyError::Store(e) => e.retry(),
            VerifyError::Catalog(e) => e.retry(),
        }
    }
}

async fn verify_manifest(
    ctx: &OpContext,
    m: &Arc<NodeManifest>,
    deep: bool,
) -> Result<(VerifiedBackup, u64), VerifyError> {
    let mut files_of: BTreeMap<BlobHash, Vec<String>> = BTreeMap::new();
    for f in &m.files {
        let v = files_of.entry(f.sha256).or_default();
        if v.len() < 5 {
            v.push(f.path.clone());
        }
    }
    let blobs: Vec<(BlobHash, u64)> = m.blobs().collect();
    let bytes: u64 = blobs.iter().map(|(_, s)| s).sum();
    ctx.say(format!(
        "verifying backup {} of node {}: {} blobs ({}){}",
        m.backup_id,
        m.node.host_id,
        blobs.len(),
        human_bytes(bytes),
        if deep { ", downloading each" } else { "" }
    ));
    if deep {
        ctx.progress.add_total(blobs.len() as u64, bytes);
    }
    let concurrency = if deep { ctx.transfer.concurrency } else { ctx.settings.manifests.read_concurrency * 2 };
    let results: Vec<Result<(Option<BlobProblem>, u64), StoreError>> = futures::stream::iter(blobs.iter().copied())
        .map(|(hash, size)| {
            let files = files_of.get(&hash).cloned().unwrap_or_default();
            async move { check_blob(ctx, hash, size, deep, files).await }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut problems = Vec::new();
    let mut read = 0;
    for r in results {
        let (p, n) = r?;
        read += n;
        problems.extend(p);
    }
    problems.sort_by_key(|p| p.sha256);
    Ok((
        VerifiedBackup {
            backup_id: m.backup_id.clone(),
            cluster: m.node.cluster.clone(),
            host_id: m.node.host_id.to_string(),
            files: m.files.len(),
            blobs: blobs.len(),
            bytes,
            problems,
        },
        read,
    ))
}

async fn check_blob(
    ctx: &OpContext,
    hash: BlobHash,
    size: u64,
    deep: bool,
    files: Vec<String>,
) -> Result<(Option<BlobProblem>, u64), StoreError> {
    let problem = |stored_size, actual_sha256, problem: String| BlobProblem {
        sha256: hash,
        expected_size: size,
        stored_size,
        actual_sha256,
        problem,
        files: files.clone(),
    };
    let stored = ctx.repo.blob_size(&hash).await?;
    match stored {
        None => {
            return Ok((
                Some(problem(
                    None,
                    None,
                    format!(
                        "missing: blob {hash} is not in {} although this backup references it; it was deleted outside Cassette (a lifecycle or expiration rule on the bucket, a person, another tool): remove such rules for the blobs/ prefix; the next backup of the node stores the content again if the files still exist, and this backup cannot be restored completely",
                        ctx.repo.location()
                    ),
                )),
                0,
            ));
        }
        Some(s) if s != size => {
            return Ok((Some(problem(Some(s), None, format!("stored with {s} bytes instead of {size}"))), 0));
        }
        Some(_) if !deep => return Ok((None, 0)),
        Some(_) => {}
    }
    let key = layout::blob_key(&hash);
    let loc = ctx.repo.location().to_string();
    let result = ctx
        .repo
        .store()
        .get(&ObjectPath::from(key.as_str()))
        .await
        .map_err(|e| StoreError::remote("verify blob", key.as_str(), &loc, e))?;
    let mut stream = result.into_stream();
    let mut hasher = Hasher::new();
    let mut read = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| StoreError::remote("verify blob", key.as_str(), &loc, e))?;
        read += chunk.len() as u64;
        ctx.progress.transferred(chunk.len() as u64);
        hasher.update(&chunk);
        if read > size {
            // Longer than the HEAD said (untrusted): damaged whatever follows; stop reading.
            break;
        }
    }
    ctx.progress.file_finished(std::path::Path::new(&key), size, false);
    let actual = hasher.finish();
    if actual != hash || read != size {
        return Ok((
            Some(problem(
                Some(read),
                Some(actual),
                format!("damaged: its bytes hash to {} ({read} bytes)", actual.short()),
            )),
            read,
        ));
    }
    Ok((None, read))
}
