//! Manifest schema ("backupspec"): what a backup contains.
//!
//! Manifests are JSON with a `format` version. Writers add fields freely; readers ignore
//! fields they do not know (no `deny_unknown_fields` here, on purpose) and refuse a `format`
//! newer than they understand. A node manifest is written only after every blob it names
//! exists, so its presence means that node's backup is complete; the cluster manifest is
//! written after every node manifest.
//!
//! A manifest read back from storage is untrusted input: [`NodeManifest::validate`] checks
//! every name against the exact shape a backup writes (keyspace and table names, table ids,
//! SSTable component names, tokens) before anything is written to disk, and
//! [`CommitLogEntry::validate`] does the same for a commit-log index entry: a name that could
//! leave a local directory once joined to it is never accepted, whatever the bucket holds.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::commitlog::CommitLogName;
use crate::datadir::{self, TableDir};
use crate::ids::{BackupId, BlobHash, HostId};
use crate::sstable::{SstableIdentity, SstableName};

/// Format version of node manifests written by this build.
pub const NODE_MANIFEST_FORMAT: u32 = 1;
/// Format version of cluster manifests written by this build.
pub const CLUSTER_MANIFEST_FORMAT: u32 = 1;
/// Format version of commit-log index entries written by this build.
pub const COMMITLOG_ENTRY_FORMAT: u32 = 1;

/// One node's backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeManifest {
    /// Schema version of this document.
    pub format: u32,
    /// The backup this node belongs to.
    pub backup_id: BackupId,
    /// Operator-chosen label, if any.
    #[serde(default)]
    pub tag: Option<String>,
    /// The Cassandra snapshot tag the files were read from.
    pub snapshot_tag: String,
    /// Who the node is.
    pub node: NodeInfo,
    /// When the backup of this node started.
    pub started_at: DateTime<Utc>,
    /// When the snapshot was taken.
    pub snapshot_at: DateTime<Utc>,
    /// When the last blob was confirmed stored.
    pub finished_at: DateTime<Utc>,
    /// Tables in the backup, with the schema Cassandra wrote for each.
    #[serde(default)]
    pub tables: Vec<TableEntry>,
    /// Every file in the backup.
    pub files: Vec<FileEntry>,
}

/// Identity and topology of a node at backup time. Keyed by host id, never by hostname.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Cassandra host id.
    pub host_id: HostId,
    /// Cluster name as Cassandra reports it.
    pub cluster: String,
    /// Datacenter.
    pub datacenter: String,
    /// Rack.
    pub rack: String,
    /// Tokens owned by the node (decimal strings).
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Cassandra release version (`4.1.7`).
    pub cassandra_version: String,
    /// Schema version UUID at snapshot time, when known.
    #[serde(default)]
    pub schema_version: Option<String>,
    /// Address or hostname at backup time: informational only.
    #[serde(default)]
    pub address: Option<String>,
    /// The node's data directories at backup time; [`FileEntry::data_dir`] indexes this list.
    pub data_dirs: Vec<String>,
}

/// A table in a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntry {
    /// Keyspace name.
    pub keyspace: String,
    /// Table name.
    pub table: String,
    /// 32 lowercase hex digits of the table id (the table directory suffix), when known.
    #[serde(default)]
    pub table_id: Option<String>,
    /// The `schema.cql` Cassandra wrote into the snapshot, verbatim.
    #[serde(default)]
    pub schema_cql: Option<String>,
}

/// One file of a backup.
///
/// In the document it also carries `sstable`, the SSTable identity parsed from the file name;
/// that is derived from `path` when written and when read (see [`FileEntry::sstable`]), not
/// kept in memory: a large node's manifest has tens of thousands of entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to its data directory, as the live file would be:
    /// `<keyspace>/<table>-<id>/<component file>` or `<keyspace>/<table>-<id>/.<index>/<component file>`.
    pub path: String,
    /// Index into [`NodeInfo::data_dirs`] of the directory the file came from.
    pub data_dir: u16,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content: the blob's name.
    pub sha256: BlobHash,
}

impl FileEntry {
    /// An entry for `path`.
    pub fn new(path: String, data_dir: u16, size: u64, sha256: BlobHash) -> Self {
        Self { path, data_dir, size, sha256 }
    }

    /// The file name (the last part of the path).
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// The SSTable identity, when the file name is an SSTable component.
    pub fn sstable(&self) -> Option<SstableIdentity> {
        SstableName::parse(self.file_name()).ok().map(|n| n.identity())
    }
}

/// The document form of a [`FileEntry`].
#[derive(Serialize)]
struct FileEntryOut<'a> {
    path: &'a str,
    data_dir: u16,
    size: u64,
    sha256: &'a BlobHash,
    sstable: Option<SstableIdentity>,
}

/// What is read of a [`FileEntry`] (`sstable` and unknown fields are ignored).
#[derive(Deserialize)]
struct FileEntryIn {
    path: String,
    #[serde(default)]
    data_dir: u16,
    size: u64,
    sha256: BlobHash,
}

impl Serialize for FileEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FileEntryOut {
            path: &self.path,
            data_dir: self.data_dir,
            size: self.size,
            sha256: &self.sha256,
            sstable: self.sstable(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for FileEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = FileEntryIn::deserialize(d)?;
        Ok(Self { path: f.path, data_dir: f.data_dir, size: f.size, sha256: f.sha256 })
    }
}

/// A manifest that must not be acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Written by a newer Cassette.
    #[error("{what} has format {found}, newer than the {supported} this build reads: upgrade Cassette")]
    NewerFormat {
        /// Which document.
        what: &'static str,
        /// Its format.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// A file path that could escape the data directory or is malformed.
    #[error("manifest file entry {path:?} is unsafe or malformed: {reason}")]
    UnsafePath {
        /// The offending path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file entry that points at a data directory the manifest does not list.
    #[error("manifest file entry {path:?} names data directory #{index}, but the manifest lists only {count}")]
    BadDataDir {
        /// The offending path.
        path: String,
        /// The index given.
        index: u16,
        /// How many directories the manifest lists.
        count: usize,
    },
    /// The same path twice.
    #[error("manifest lists {path:?} twice (data directory #{data_dir})")]
    Duplicate {
        /// The duplicated path.
        path: String,
        /// Its data directory index.
        data_dir: u16,
    },
    /// More entries than the configured limit.
    #[error("manifest lists {count} files, more than the limit of {limit}: raise the limit if this backup is genuine")]
    TooManyFiles {
        /// How many entries.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Tokens that are not what the node's partitioner writes.
    #[error("{what}: {reason}: the document was not written by Cassette or was altered; nothing was done with it")]
    BadTokens {
        /// Which document's tokens.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A name (keyspace, table, table id, segment) that does not have the shape it must have.
    #[error(
        "{what} {name:?} is not {expected}: the document was not written by Cassette or was altered; nothing was done with it"
    )]
    BadName {
        /// Which field of which document.
        what: String,
        /// The value found.
        name: String,
        /// The shape it must have.
        expected: &'static str,
    },
}

/// Checks a manifest-relative path against the exact shape a backup writes:
/// `<keyspace>/<table dir>/[.<index>/]<SSTable component>`, where the keyspace is a Cassandra
/// name (`\w+`, at most 48 characters), the table directory `<table>-<32 hex id>` (or `<table>`),
/// the index directory `.` and a name, and the file an SSTable component name
/// (`nb-1-big-Data.db`).
///
/// Rejects absolute paths, `..`, `.`, empty segments, backslashes, NUL and other control
/// characters first (with those reasons), so that joining the path to a data directory can never
/// leave it.
pub fn validate_relative_path(path: &str) -> Result<(), ManifestError> {
    let err = |reason| ManifestError::UnsafePath { path: path.to_owned(), reason };
    if path.is_empty() {
        return Err(err("it is empty"));
    }
    if path.starts_with('/') {
        return Err(err("it is absolute"));
    }
    if path.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(err("it contains a backslash or a control character"));
    }
    let segments: Vec<&str> = path.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(err("it contains an empty segment"));
    }
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(err("it contains a '.' or '..' segment"));
    }
    match segments.len() {
        3 => {}
        4 if segments[2].starts_with('.') => {}
        _ => return Err(err("expected <keyspace>/<table dir>/[.<index>/]<file>")),
    }
    if segments[0].starts_with('.')
        || segments[1].starts_with('.')
        || segments.last().is_some_and(|f| f.starts_with('.'))
    {
        return Err(err("keyspace, table directory and file names cannot start with '.'"));
    }
    if !datadir::is_valid_name(segments[0]) {
        return Err(err("the keyspace is not a Cassandra name (letters, digits, '_', at most 48)"));
    }
    if TableDir::parse(segments[1]).is_none() {
        return Err(err("the table directory is not <table>-<32 hex table id> or <table>"));
    }
    if segments.len() == 4 && !datadir::is_valid_name(&segments[2][1..]) {
        return Err(err("the index directory is not '.' and an index name (letters, digits, '_')"));
    }
    if SstableName::parse(segments[segments.len() - 1]).is_err() {
        return Err(err("the file is not an SSTable component name (<version>-<id>-<format>-<Component>)"));
    }
    Ok(())
}

/// Checks a keyspace or table name read from a document.
fn check_name(what: impl FnOnce() -> String, name: &str) -> Result<(), ManifestError> {
    if datadir::is_valid_name(name) {
        return Ok(());
    }
    Err(ManifestError::BadName {
        what: what(),
        name: name.to_owned(),
        expected: "a Cassandra name (letters, digits, '_', at most 48 characters)",
    })
}

/// Most tokens a node can own: Cassandra refuses a larger `num_tokens`.
pub const MAX_TOKENS: usize = 1536;

/// Checks a node's tokens as read from a document, before they are compared with a ring or
/// written into `cassandra.yaml`: every token is the canonical decimal form of a
/// Murmur3Partitioner token (an i64) or, for a RandomPartitioner ring, all of them are integers in
/// `0..=2^127`; none appears twice; there are at most [`MAX_TOKENS`]. Such a token holds digits
/// and at most a leading `-`, so it cannot carry anything else into a configuration file.
pub fn validate_tokens(what: &str, tokens: &[String]) -> Result<(), ManifestError> {
    let bad = |reason: String| ManifestError::BadTokens { what: what.to_owned(), reason };
    if tokens.len() > MAX_TOKENS {
        return Err(bad(format!("{} tokens, more than the {MAX_TOKENS} a Cassandra node can own", tokens.len())));
    }
    let murmur3 = |t: &str| t.parse::<i64>().is_ok_and(|v| v.to_string() == t);
    let random = |t: &str| t.parse::<u128>().is_ok_and(|v| v <= 1u128 << 127 && v.to_string() == t);
    if !tokens.iter().all(|t| murmur3(t)) {
        if let Some(t) = tokens.iter().find(|t| !murmur3(t) && !random(t)) {
            return Err(bad(format!(
                "token {t:?} is not a Murmur3Partitioner token (a decimal i64) nor a RandomPartitioner one (0 to 2^127)"
            )));
        }
        if let Some(t) = tokens.iter().find(|t| !random(t)) {
            return Err(bad(format!(
                "token {t:?} is negative while others exceed the i64 range: no partitioner writes both"
            )));
        }
    }
    let mut seen = BTreeSet::new();
    if let Some(t) = tokens.iter().find(|t| !seen.insert(t.as_str())) {
        return Err(bad(format!("token {t} is listed twice")));
    }
    Ok(())
}

impl TableEntry {
    /// Checks the names a restore joins into local paths (`<keyspace>/<table>-<id>`).
    pub fn validate(&self) -> Result<(), ManifestError> {
        check_name(|| "manifest table entry keyspace".to_owned(), &self.keyspace)?;
        check_name(|| format!("manifest table entry {}.<table>", self.keyspace), &self.table)?;
        if let Some(id) = &self.table_id
            && (id.len() != 32 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            return Err(ManifestError::BadName {
                what: format!("manifest table entry {}.{} table_id", self.keyspace, self.table),
                name: id.clone(),
                expected: "32 lowercase hex digits",
            });
        }
        Ok(())
    }
}

impl NodeManifest {
    /// Checks everything a restore relies on before it touches the disk.
    pub fn validate(&self, max_files: usize) -> Result<(), ManifestError> {
        if self.format > NODE_MANIFEST_FORMAT {
            return Err(ManifestError::NewerFormat {
                what: "node manifest",
                found: self.format,
                supported: NODE_MANIFEST_FORMAT,
            });
        }
        if self.files.len() > max_files {
            return Err(ManifestError::TooManyFiles { count: self.files.len(), limit: max_files });
        }
        validate_tokens(&format!("node manifest of {} tokens", self.node.host_id), &self.node.tokens)?;
        for t in &self.tables {
            t.validate()?;
        }
        let mut seen = BTreeSet::new();
        for f in &self.files {
            validate_relative_path(&f.path)?;
            if usize::from(f.data_dir) >= self.node.data_dirs.len() {
                return Err(ManifestError::BadDataDir {
                    path: f.path.clone(),
                    index: f.data_dir,
                    count: self.node.data_dirs.len(),
                });
            }
            if !seen.insert((f.data_dir, f.path.as_str())) {
                return Err(ManifestError::Duplicate { path: f.path.clone(), data_dir: f.data_dir });
            }
        }
        Ok(())
    }

    /// Total bytes of all files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Distinct blobs, with their sizes.
    pub fn blobs(&self) -> impl Iterator<Item = (BlobHash, u64)> + '_ {
        let mut seen = BTreeSet::new();
        self.files.iter().filter(move |f| seen.insert(f.sha256)).map(|f| (f.sha256, f.size))
    }
}

/// A whole cluster's backup: written after every node manifest it lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterManifest {
    /// Schema version of this document.
    pub format: u32,
    /// The backup.
    pub backup_id: BackupId,
    /// Operator-chosen label, if any.
    #[serde(default)]
    pub tag: Option<String>,
    /// Cluster name.
    pub cluster: String,
    /// When the backup started.
    pub started_at: DateTime<Utc>,
    /// When the cluster manifest was written.
    pub finished_at: DateTime<Utc>,
    /// Time between the first and the last node's snapshot, in milliseconds.
    #[serde(default)]
    pub snapshot_skew_ms: Option<u64>,
    /// Nodes whose manifests are part of this backup.
    pub nodes: Vec<ClusterNodeEntry>,
    /// Nodes of the ring that the backup lacks (a partial backup), with their tokens.
    #[serde(default)]
    pub missing_nodes: Vec<ClusterNodeEntry>,
}

/// One node in a cluster manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNodeEntry {
    /// Host id (the node manifest's key).
    pub host_id: HostId,
    /// Datacenter.
    pub datacenter: String,
    /// Rack.
    pub rack: String,
    /// Tokens.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Files in the node's manifest.
    #[serde(default)]
    pub files: u64,
    /// Bytes in the node's manifest.
    #[serde(default)]
    pub bytes: u64,
}

/// One archived commit-log segment; stored under [`crate::layout::commitlog_entry_key`].
///
/// Read back from storage it is untrusted: [`CommitLogEntry::validate`] before its `segment`
/// names a local file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitLogEntry {
    /// Schema version of this document.
    pub format: u32,
    /// Segment file name (`CommitLog-7-1699285478684.log`).
    pub segment: String,
    /// Commit-log format version from the header.
    pub version: u32,
    /// Segment id from the header; ordering by id is write order.
    pub segment_id: u64,
    /// Host id of the node that wrote it.
    pub host_id: HostId,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content: the blob's name.
    pub sha256: BlobHash,
    /// When the segment was closed (file modification time): no mutation in it is later.
    pub closed_at: DateTime<Utc>,
    /// When it was archived.
    pub archived_at: DateTime<Utc>,
}

impl CommitLogEntry {
    /// Checks what a point-in-time restore relies on: `segment` is exactly a commit-log segment
    /// name (`CommitLog-<version>-<id>.log`, in the canonical form Cassandra writes), it agrees
    /// with `version` and `segment_id`, and with the segment named by its index key
    /// (`key_segment`, from [`crate::layout::parse_cluster_object`]).
    pub fn validate(&self, key_segment: Option<&str>) -> Result<(), ManifestError> {
        if self.format > COMMITLOG_ENTRY_FORMAT {
            return Err(ManifestError::NewerFormat {
                what: "commit-log index entry",
                found: self.format,
                supported: COMMITLOG_ENTRY_FORMAT,
            });
        }
        let bad = |expected| ManifestError::BadName {
            what: "commit-log index entry segment".to_owned(),
            name: self.segment.clone(),
            expected,
        };
        let name = CommitLogName::parse(&self.segment)
            .filter(|n| n.version.is_some() && n.file_name() == self.segment)
            .ok_or_else(|| bad("a commit-log segment name CommitLog-<version>-<id>.log"))?;
        if name.version != i32::try_from(self.version).ok() || u64::try_from(name.id).ok() != Some(self.segment_id) {
            return Err(bad("the segment its own version and segment_id fields describe"));
        }
        if let Some(k) = key_segment
            && k != self.segment
        {
            return Err(ManifestError::BadName {
                what: "commit-log index entry segment".to_owned(),
                name: self.segment.clone(),
                expected: "the segment named by its index key",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: Vec<FileEntry>) -> NodeManifest {
        let t = DateTime::parse_from_rfc3339("2026-11-23T21:41:00Z").unwrap().to_utc();
        NodeManifest {
            format: NODE_MANIFEST_FORMAT,
            backup_id: "20261123T214100Z-3fa9c2d1".parse().unwrap(),
            tag: Some("nightly".into()),
            snapshot_tag: "cassette-20261123T214100Z-3fa9c2d1".into(),
            node: NodeInfo {
                host_id: "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3".parse().unwrap(),
                cluster: "Test Cluster".into(),
                datacenter: "dc1".into(),
                rack: "rack1".into(),
                tokens: vec!["-9223372036854775808".into()],
                cassandra_version: "4.1.7".into(),
                schema_version: None,
                address: Some("10.0.0.1".into()),
                data_dirs: vec!["/var/lib/cassandra/data".into(), "/data2".into()],
            },
            started_at: t,
            snapshot_at: t,
            finished_at: t,
            tables: vec![],
            files,
        }
    }

    fn file(path: &str, dir: u16) -> FileEntry {
        FileEntry::new(
            path.into(),
            dir,
            10,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse().unwrap(),
        )
    }

    fn v_files_sstable(m: &NodeManifest) -> serde_json::Value {
        serde_json::to_value(m).unwrap()["files"][0]["sstable"].clone()
    }

    #[test]
    fn round_trips_and_ignores_unknown_fields() {
        let m = manifest(vec![file("ks/t-0123456789abcdef0123456789abcdef/nb-1-big-Data.db", 1)]);
        let mut v = serde_json::to_value(&m).unwrap();
        v["some_future_field"] = serde_json::json!({"x": 1});
        v["files"][0]["future"] = serde_json::json!(true);
        let back: NodeManifest = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
        assert_eq!(
            v_files_sstable(&m),
            serde_json::json!({"version": "nb", "generation": "1", "format": "big", "component": "Data.db"})
        );
        let id = back.files[0].sstable().unwrap();
        assert_eq!((id.version.as_str(), id.generation.as_str(), id.format.as_str()), ("nb", "1", "big"));
        assert_eq!(id.component, "Data.db");
        assert!(back.validate(100).is_ok());
    }

    #[test]
    fn validate_refuses_paths_that_could_escape_or_are_malformed() {
        for bad in [
            "/etc/passwd",
            "../ks/t/nb-1-big-Data.db",
            "ks/../../etc/x",
            "ks/t/../nb-1-big-Data.db",
            "ks/t/./nb-1-big-Data.db",
            "ks//nb-1-big-Data.db",
            "ks/t",
            "ks/t/a/b/c",
            "ks/t/idx/nb-1-big-Data.db",
            "ks\\t\\x",
            "ks/t/nb-1\0",
            ".ks/t/nb-1-big-Data.db",
            "ks/t/.hidden",
            "",
        ] {
            let err = manifest(vec![file(bad, 0)]).validate(100).unwrap_err();
            assert!(matches!(err, ManifestError::UnsafePath { .. }), "{bad:?}: {err}");
        }
        assert!(
            manifest(vec![file("ks/t-0123456789abcdef0123456789abcdef/.idx/nb-1-big-Data.db", 0)])
                .validate(100)
                .is_ok()
        );
    }

    #[test]
    fn validate_checks_format_data_dirs_duplicates_and_size() {
        let mut m = manifest(vec![file("ks/t/nb-1-big-Data.db", 2)]);
        assert!(matches!(m.validate(10), Err(ManifestError::BadDataDir { index: 2, count: 2, .. })));
        m.files = vec![file("ks/t/nb-1-big-Data.db", 0), file("ks/t/nb-1-big-Data.db", 0)];
        assert!(matches!(m.validate(10), Err(ManifestError::Duplicate { .. })));
        m.files = vec![file("ks/t/nb-1-big-Data.db", 0), file("ks/t/nb-1-big-Data.db", 1)];
        assert!(m.validate(10).is_ok(), "the same path on two data directories is legal");
        assert!(matches!(m.validate(1), Err(ManifestError::TooManyFiles { count: 2, limit: 1 })));
        m.format = NODE_MANIFEST_FORMAT + 1;
        let e = m.validate(10).unwrap_err().to_string();
        assert!(e.contains("upgrade"), "{e}");
    }

    #[test]
    fn validate_refuses_names_that_do_not_have_the_exact_shape_a_backup_writes() {
        for bad in [
            "ks/t/notes.txt",
            "ks/t/nb-1-big-Data.db.tmp",
            "ks-1/t/nb-1-big-Data.db",
            "ks/t-xyz/nb-1-big-Data.db",
            "ks/t/.a-b/nb-1-big-Data.db",
            "k s/t/nb-1-big-Data.db",
            "ks/t/manifest.json",
        ] {
            let err = manifest(vec![file(bad, 0)]).validate(100).unwrap_err();
            assert!(matches!(err, ManifestError::UnsafePath { .. }), "{bad:?}: {err}");
        }
        for good in [
            "ks/t/nb-1-big-Data.db",
            "system_schema/tables-afddfb9dbc1e30688056eed6c302ba09/nb-3-big-TOC.txt",
            "ks/t-0123456789abcdef0123456789abcdef/.by_email/da-3g1m_0nuf_3vj5m2k1125165rxa7-bti-Partitions.db",
        ] {
            manifest(vec![file(good, 0)]).validate(100).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn validate_refuses_table_entries_whose_names_could_leave_a_data_directory() {
        let entry = |ks: &str, t: &str, id: Option<&str>| TableEntry {
            keyspace: ks.into(),
            table: t.into(),
            table_id: id.map(str::to_owned),
            schema_cql: None,
        };
        for (bad, field) in [
            (entry("../../etc", "t", None), "keyspace"),
            (entry("/var/lib", "t", None), "keyspace"),
            (entry("ks", "../x", None), "ks.<table>"),
            (entry("ks", "t", Some("../../../../tmp/x")), "table_id"),
            (entry("ks", "t", Some("0123456789ABCDEF0123456789ABCDEF")), "table_id"),
        ] {
            let mut m = manifest(vec![]);
            m.tables = vec![bad];
            let e = m.validate(100).unwrap_err();
            assert!(matches!(e, ManifestError::BadName { .. }), "{e}");
            assert!(e.to_string().contains(field) && e.to_string().contains("not written by Cassette"), "{e}");
        }
        let mut m = manifest(vec![]);
        m.tables = vec![entry("shop", "users", Some("0123456789abcdef0123456789abcdef"))];
        m.validate(100).unwrap();
    }

    #[test]
    fn commit_log_entries_name_exactly_one_segment() {
        let t = DateTime::parse_from_rfc3339("2026-11-23T21:41:00Z").unwrap().to_utc();
        let entry = |segment: &str, version: u32, id: u64| CommitLogEntry {
            format: COMMITLOG_ENTRY_FORMAT,
            segment: segment.into(),
            version,
            segment_id: id,
            host_id: "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3".parse().unwrap(),
            size: 1,
            sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse().unwrap(),
            closed_at: t,
            archived_at: t,
        };
        let good = entry("CommitLog-7-1699285478684.log", 7, 1699285478684);
        good.validate(Some("CommitLog-7-1699285478684.log")).unwrap();
        good.validate(None).unwrap();
        for bad in [
            entry("../../escaped.log", 7, 1),
            entry("/etc/cron.d/x", 7, 1),
            entry("CommitLog-7-1.log/../../x", 7, 1),
            entry("sub/CommitLog-7-1.log", 7, 1),
            entry("CommitLog-7-01.log", 7, 1),
            entry("CommitLog-1.log", 7, 1),
            entry("CommitLog-7-2.log", 7, 1),
            entry("CommitLog-6-1.log", 7, 1),
        ] {
            let e = bad.validate(None).unwrap_err().to_string();
            assert!(e.contains(&format!("{:?}", bad.segment)) && e.contains("nothing was done"), "{e}");
        }
        let e = good.validate(Some("CommitLog-7-1.log")).unwrap_err().to_string();
        assert!(e.contains("named by its index key"), "{e}");
    }

    #[test]
    fn tokens_must_be_what_a_partitioner_writes() {
        let v = |t: &[&str]| validate_tokens("t", &t.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        v(&["-9223372036854775808", "0", "9223372036854775807"]).unwrap();
        v(&["0", "170141183460469231731687303715884105728", "85070591730234615865843651857942052864"]).unwrap();
        v(&[]).unwrap();
        for bad in [
            &["1\nauthenticator: AllowAllAuthenticator"][..],
            &["1 "],
            &["+1"],
            &["007"],
            &["0x10"],
            &["'1'"],
            &["1", "1"],
            &["-1", "9223372036854775808"],
            &["170141183460469231731687303715884105729"],
        ] {
            let e = v(bad).unwrap_err().to_string();
            assert!(e.contains("token") && e.contains("nothing was done"), "{bad:?}: {e}");
        }
        let many: Vec<String> = (0..=MAX_TOKENS as i64).map(|i| i.to_string()).collect();
        assert!(validate_tokens("t", &many).unwrap_err().to_string().contains("1537 tokens"));
        let mut m = manifest(vec![]);
        m.node.tokens = vec!["1\nauthenticator: AllowAllAuthenticator".into()];
        assert!(matches!(m.validate(10), Err(ManifestError::BadTokens { .. })));
    }

    #[test]
    fn blobs_are_deduplicated() {
        let m = manifest(vec![file("ks/t/nb-1-big-TOC.txt", 0), file("ks/t/nb-2-big-TOC.txt", 0)]);
        assert_eq!(m.blobs().count(), 1);
        assert_eq!(m.total_bytes(), 20);
    }
}
