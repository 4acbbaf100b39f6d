//! The remote layout: which object holds what under a repository root.
//!
//! Documented for operators in `docs/layout.md`; this module is the single place that builds
//! keys, so the documentation and the code cannot drift apart silently (the tests below pin
//! every key shape).
//!
//! ```text
//! <root>/cassette-layout.json                                   marker: layout version (create-only)
//! <root>/blobs/sha256/<h[0..2]>/<h>                             file content, key = SHA-256 (create-only)
//! <root>/clusters/<cluster>/backups/<backup-id>/nodes/<host-id>.json   node manifest, written last
//! <root>/clusters/<cluster>/backups/<backup-id>/cluster.json           cluster manifest, after every node's
//! <root>/clusters/<cluster>/commitlog/<host-id>/<closed-at>_<segment>.json   commit-log index entry
//! <root>/locks/<lock-id>.json                                   a running backup or removal (rewritten while it runs)
//! <root>/removal-plan.json                                      the documents a removal deletes (resumed if interrupted)
//! ```
//!
//! Keys are relative to the repository root (the location's prefix is applied by the store).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{BackupId, BlobHash, HostId};

/// The layout version this build reads and writes.
pub const LAYOUT_VERSION: u32 = 1;

/// Key of the marker object at the repository root.
pub const MARKER_KEY: &str = "cassette-layout.json";

/// The `format` field every marker carries, so a foreign JSON file is not mistaken for one.
pub const MARKER_FORMAT: &str = "cassette-repository";

/// Prefix of all blobs.
pub const BLOBS_PREFIX: &str = "blobs/sha256";

/// Prefix of all cluster-scoped objects (manifests, commit-log index).
pub const CLUSTERS_PREFIX: &str = "clusters";

/// Prefix of lock objects (running backups and removals; see `docs/layout.md`).
pub const LOCKS_PREFIX: &str = "locks";

/// Key of the plan of a removal that is deleting documents: what it decided to delete, in order,
/// and how far it got. A removal that finds one finishes it before deciding anything else.
pub const REMOVAL_PLAN_KEY: &str = "removal-plan.json";

/// Key of a lock object.
pub fn lock_key(id: &str) -> String {
    format!("{LOCKS_PREFIX}/{id}.json")
}

/// What an object under `clusters/` is, from its key alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterObject {
    /// `clusters/<cluster>/backups/<backup-id>/nodes/<host-id>.json`.
    NodeManifest {
        /// The cluster segment of the key (see [`cluster_key`]).
        cluster: String,
        /// The backup.
        backup: BackupId,
        /// The node.
        host: HostId,
    },
    /// `clusters/<cluster>/backups/<backup-id>/cluster.json`.
    ClusterManifest {
        /// The cluster segment of the key.
        cluster: String,
        /// The backup.
        backup: BackupId,
    },
    /// `clusters/<cluster>/commitlog/<host-id>/<closed-at>_<segment>.json`.
    CommitLogEntry {
        /// The cluster segment of the key.
        cluster: String,
        /// The node.
        host: HostId,
        /// The segment file name.
        segment: String,
    },
}

/// Classifies a key under `clusters/`; `None` for keys this layout does not define.
pub fn parse_cluster_object(key: &str) -> Option<ClusterObject> {
    let rest = key.strip_prefix(CLUSTERS_PREFIX)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [cluster, "backups", id, "nodes", file] => Some(ClusterObject::NodeManifest {
            cluster: (*cluster).to_owned(),
            backup: id.parse().ok()?,
            host: file.strip_suffix(".json")?.parse().ok()?,
        }),
        [cluster, "backups", id, "cluster.json"] => {
            Some(ClusterObject::ClusterManifest { cluster: (*cluster).to_owned(), backup: id.parse().ok()? })
        }
        [cluster, "commitlog", host, file] => {
            let (_, segment) = file.strip_suffix(".json")?.split_once('_')?;
            Some(ClusterObject::CommitLogEntry {
                cluster: (*cluster).to_owned(),
                host: host.parse().ok()?,
                segment: segment.to_owned(),
            })
        }
        _ => None,
    }
}

/// The marker object at the root of every repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutMarker {
    /// Always [`MARKER_FORMAT`].
    pub format: String,
    /// The layout version of the repository.
    pub layout_version: u32,
    /// When the repository was created.
    pub created_at: DateTime<Utc>,
    /// Which program created it (`cassette-agent 0.1.0`).
    pub created_by: String,
}

/// A marker this build must not write under.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Written by a newer Cassette.
    #[error(
        "the repository uses layout version {found}, but this build of Cassette supports only version {LAYOUT_VERSION}: upgrade Cassette before writing to it"
    )]
    Newer {
        /// The version found in the marker.
        found: u32,
    },
    /// The marker is not a Cassette marker.
    #[error(
        "{MARKER_KEY} at the repository root is not a Cassette marker (format {found:?}): choose another location or prefix"
    )]
    Foreign {
        /// The `format` field found.
        found: String,
    },
}

impl LayoutMarker {
    /// A marker for a repository created now.
    pub fn new(created_by: impl Into<String>) -> Self {
        Self {
            format: MARKER_FORMAT.to_owned(),
            layout_version: LAYOUT_VERSION,
            created_at: Utc::now(),
            created_by: created_by.into(),
        }
    }

    /// Whether this build can read and write a repository with this marker.
    pub fn check(&self) -> Result<(), LayoutError> {
        if self.format != MARKER_FORMAT {
            return Err(LayoutError::Foreign { found: self.format.clone() });
        }
        if self.layout_version != LAYOUT_VERSION {
            // Version 0 never existed; anything else that is not ours is treated as newer.
            return Err(LayoutError::Newer { found: self.layout_version });
        }
        Ok(())
    }
}

/// Key of the blob holding content with this hash.
pub fn blob_key(hash: &BlobHash) -> String {
    let hex = hash.to_hex();
    format!("{BLOBS_PREFIX}/{}/{hex}", &hex[..2])
}

/// The hash named by a blob key, if `key` is one (used when listing blobs).
pub fn parse_blob_key(key: &str) -> Option<BlobHash> {
    let rest = key.strip_prefix(BLOBS_PREFIX)?.strip_prefix('/')?;
    let (shard, hex) = rest.split_once('/')?;
    let hash: BlobHash = hex.parse().ok()?;
    (shard.len() == 2 && hex.starts_with(shard)).then_some(hash)
}

/// The path segment that stands for a cluster name.
///
/// Cluster names are free text (Cassandra's default is `Test Cluster`). Names made only of
/// `[A-Za-z0-9._-]` are used as they are; any other name is mapped to a safe form followed by
/// 8 hex digits of its SHA-256, so two names never share a segment. Manifests record the real name.
pub fn cluster_key(cluster: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !cluster.is_empty() && cluster.chars().all(safe) && cluster != "." && cluster != ".." {
        return cluster.to_owned();
    }
    let mapped: String = cluster.chars().map(|c| if safe(c) { c } else { '_' }).take(64).collect();
    let digest = Sha256::digest(cluster.as_bytes());
    format!("{mapped}-{}", hex::encode(&digest[..4]))
}

/// Prefix of one cluster's backups: `clusters/<cluster>/backups`.
pub fn backups_prefix(cluster: &str) -> String {
    format!("{CLUSTERS_PREFIX}/{}/backups", cluster_key(cluster))
}

/// Prefix of one backup: `clusters/<cluster>/backups/<backup-id>`.
pub fn backup_prefix(cluster: &str, backup: &BackupId) -> String {
    format!("{}/{backup}", backups_prefix(cluster))
}

/// Key of a node manifest.
pub fn node_manifest_key(cluster: &str, backup: &BackupId, host: &HostId) -> String {
    format!("{}/nodes/{host}.json", backup_prefix(cluster, backup))
}

/// Key of a cluster manifest.
pub fn cluster_manifest_key(cluster: &str, backup: &BackupId) -> String {
    format!("{}/cluster.json", backup_prefix(cluster, backup))
}

/// Prefix of one node's commit-log index: `clusters/<cluster>/commitlog/<host-id>`.
pub fn commitlog_prefix(cluster: &str, host: &HostId) -> String {
    format!("{CLUSTERS_PREFIX}/{}/commitlog/{host}", cluster_key(cluster))
}

/// Fixed-width UTC time used in commit-log index keys, so that key order is time order.
pub fn index_time(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

/// Key of a commit-log index entry: `<prefix>/<closed-at>_<segment file name>.json`.
///
/// A point-in-time restore lists from `commitlog_prefix` with `index_time(from)` as the start
/// offset and stops at the first entry past the target time, so it reads only the window it needs.
pub fn commitlog_entry_key(cluster: &str, host: &HostId, closed_at: DateTime<Utc>, segment: &str) -> String {
    format!("{}/{}_{segment}.json", commitlog_prefix(cluster, host), index_time(closed_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> BlobHash {
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse().unwrap()
    }

    #[test]
    fn key_shapes_match_the_documented_layout() {
        let b: BackupId = "20261123T214100Z-3fa9c2d1".parse().unwrap();
        let h: HostId = "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3".parse().unwrap();
        assert_eq!(
            blob_key(&hash()),
            "blobs/sha256/e3/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            node_manifest_key("prod", &b, &h),
            "clusters/prod/backups/20261123T214100Z-3fa9c2d1/nodes/1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3.json"
        );
        assert_eq!(cluster_manifest_key("prod", &b), "clusters/prod/backups/20261123T214100Z-3fa9c2d1/cluster.json");
        let t = DateTime::parse_from_rfc3339("2026-11-23T21:43:39.114Z").unwrap().to_utc();
        assert_eq!(
            commitlog_entry_key("prod", &h, t, "CommitLog-7-1699285478684.log"),
            "clusters/prod/commitlog/1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3/20261123T214339.114Z_CommitLog-7-1699285478684.log.json"
        );
        // Whole seconds keep the fraction so the width is fixed and key order is time order.
        let t0 = DateTime::parse_from_rfc3339("2026-11-23T21:43:39Z").unwrap().to_utc();
        assert_eq!(index_time(t0), "20261123T214339.000Z");
        assert!(index_time(t0) < index_time(t));
    }

    #[test]
    fn cluster_objects_are_classified_by_key() {
        let b: BackupId = "20261123T214100Z-3fa9c2d1".parse().unwrap();
        let h: HostId = "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3".parse().unwrap();
        let t = DateTime::parse_from_rfc3339("2026-11-23T21:43:39.114Z").unwrap().to_utc();
        assert_eq!(
            parse_cluster_object(&node_manifest_key("Test Cluster", &b, &h)),
            Some(ClusterObject::NodeManifest {
                cluster: cluster_key("Test Cluster"),
                backup: b.clone(),
                host: h.clone()
            })
        );
        assert_eq!(
            parse_cluster_object(&cluster_manifest_key("prod", &b)),
            Some(ClusterObject::ClusterManifest { cluster: "prod".into(), backup: b })
        );
        assert_eq!(
            parse_cluster_object(&commitlog_entry_key("prod", &h, t, "CommitLog-7-1.log")),
            Some(ClusterObject::CommitLogEntry {
                cluster: "prod".into(),
                host: h,
                segment: "CommitLog-7-1.log".into()
            })
        );
        for other in
            ["clusters/prod/backups/x/nodes/y.json", "clusters/prod/other", "blobs/sha256/aa/bb", "locks/a.json"]
        {
            assert_eq!(parse_cluster_object(other), None, "{other}");
        }
        assert_eq!(lock_key("backup-1"), "locks/backup-1.json");
    }

    #[test]
    fn blob_keys_parse_back() {
        assert_eq!(parse_blob_key(&blob_key(&hash())), Some(hash()));
        assert_eq!(
            parse_blob_key("blobs/sha256/ff/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            None
        );
        assert_eq!(parse_blob_key("clusters/x"), None);
    }

    #[test]
    fn cluster_names_map_to_safe_distinct_segments() {
        assert_eq!(cluster_key("prod-eu_1.a"), "prod-eu_1.a");
        let a = cluster_key("Test Cluster");
        let b = cluster_key("Test_Cluster");
        assert!(a.starts_with("Test_Cluster-") && a.len() == "Test_Cluster-".len() + 8, "{a}");
        assert_ne!(a, b);
        assert!(!cluster_key("../etc").contains('/'));
        assert_ne!(cluster_key(".."), "..");
        assert_ne!(cluster_key(""), "");
    }

    #[test]
    fn marker_check_refuses_newer_and_foreign_markers() {
        let mut m = LayoutMarker::new("test");
        assert!(m.check().is_ok());
        m.layout_version = 2;
        let e = m.check().unwrap_err().to_string();
        assert!(e.contains("version 2") && e.contains("upgrade"), "{e}");
        m.layout_version = 1;
        m.format = "something-else".into();
        assert!(m.check().unwrap_err().to_string().contains("not a Cassette marker"));
    }
}
