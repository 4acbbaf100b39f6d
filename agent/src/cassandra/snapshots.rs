//! Snapshots as they are on disk: `<root>/<ks>/<table>-<id>/snapshots/<tag>/` in every data
//! directory, with `manifest.json` and `schema.cql` in one of them (research §2.2–2.4).
//!
//! With JBOD a table's snapshot is spread over several roots, and the manifest and schema sit
//! in one root that may hold no SSTables at all. This module gathers the pieces per (tag, table).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cassette_common::datadir::{self, FileKind, TableDir, TableId};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::error::CassandraError;

/// A snapshot's `manifest.json`, in any version's format (3.11/4.0: `files` only; 4.1: plus
/// `created_at`, `expires_at`; 5.0: plus `ephemeral`). Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SnapshotManifest {
    /// Data.db file names, `.<idx>/<name>` for index SSTables.
    pub files: Vec<String>,
    /// Creation time (4.1+).
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    /// Expiry time, for snapshots with a TTL (4.1+).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Ephemeral (repair) snapshot (5.0).
    #[serde(default)]
    pub ephemeral: Option<bool>,
}

impl SnapshotManifest {
    /// Parses a `manifest.json`; `path` names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, CassandraError> {
        serde_json::from_slice(bytes).map_err(|e| {
            CassandraError::files("parse snapshot manifest", path, format!("not a snapshot manifest: {e}"))
        })
    }
}

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// Index of the data root it is in (in the order given to [`scan`]).
    pub data_root: usize,
    /// Absolute path: `<data root>/<ks>/<table>-<id>/snapshots/<tag>/[.<idx>/]<name>`.
    pub path: PathBuf,
    /// The secondary index it belongs to.
    pub index: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Device and inode: hard links to one live SSTable share them.
    pub inode: (u64, u64),
}

impl SnapshotFile {
    /// What it is, from its name (computed when asked: a node has tens of thousands of files,
    /// and the parsed name would double each one's memory).
    pub fn kind(&self) -> FileKind {
        FileKind::of(self.path.file_name().and_then(|n| n.to_str()).unwrap_or_default())
    }

    /// Where the live file would be, relative to the data root: `<ks>/<table>-<id>/[.<idx>/]<name>`
    /// (derived from the path when asked, not kept per file).
    pub fn live_path(&self) -> String {
        let mut parts = self.path.iter().rev().map(|c| c.to_string_lossy());
        let name = parts.next().unwrap_or_default();
        let index = self.index.as_ref().and_then(|_| parts.next());
        let (_tag, _snapshots) = (parts.next(), parts.next());
        let (table, ks) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        match index {
            Some(i) => format!("{ks}/{table}/{i}/{name}"),
            None => format!("{ks}/{table}/{name}"),
        }
    }
}

/// One table's part of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTable {
    /// Keyspace.
    pub keyspace: String,
    /// Table.
    pub table: String,
    /// Table id (from the directory name); `None` for legacy directories.
    pub table_id: Option<TableId>,
    /// Every `snapshots/<tag>` directory of this table, one per data root that has one.
    pub dirs: Vec<PathBuf>,
    /// The manifest, if Cassandra wrote one.
    pub manifest: Option<SnapshotManifest>,
    /// `schema.cql`, if Cassandra wrote one (never for system keyspaces).
    pub schema_cql: Option<String>,
    /// Ephemeral: a 3.11–4.1 `ephemeral.snapshot` marker or 5.0 `"ephemeral": true`.
    pub ephemeral: bool,
    /// Every file, sorted by path. SSTable components, manifest and schema included.
    pub files: Vec<SnapshotFile>,
}

impl SnapshotTable {
    /// The SSTable component files (excluding manifest, schema, markers, temporary files).
    pub fn sstable_files(&self) -> impl Iterator<Item = &SnapshotFile> {
        self.files.iter().filter(|f| matches!(f.kind(), FileKind::Sstable(_)))
    }
}

/// A snapshot: one tag across every table and data root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The tag.
    pub tag: String,
    /// Tables, sorted by keyspace, table and id.
    pub tables: Vec<SnapshotTable>,
}

impl Snapshot {
    /// The earliest `created_at` of its manifests (4.1+).
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.tables.iter().filter_map(|t| t.manifest.as_ref()?.created_at).min()
    }

    /// The earliest `expires_at` of its manifests.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.tables.iter().filter_map(|t| t.manifest.as_ref()?.expires_at).min()
    }

    /// Bytes in all its files (hard links counted at full size).
    pub fn size_on_disk(&self) -> u64 {
        self.tables.iter().flat_map(|t| &t.files).map(|f| f.size).sum()
    }
}

fn read_dir(path: &Path) -> Result<Vec<(String, PathBuf, std::fs::FileType)>, CassandraError> {
    Ok(list(path, false)?.into_iter().map(|(name, p, ft, _)| (name, p, ft)).collect())
}

/// Size, device and inode of a listed file.
type FileStat = (u64, u64, u64);

/// A listed entry: name, path, type, and for a regular file (when asked) its [`FileStat`].
type Listed = (String, PathBuf, std::fs::FileType, Option<FileStat>);

/// The entries of `path`, sorted by name; with `stat`, regular files are stat'ed through the open
/// directory (no walk of the full path per file).
fn list(path: &Path, stat: bool) -> Result<Vec<Listed>, CassandraError> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(path).map_err(|e| CassandraError::files("list", path, e))?;
    for e in rd {
        let e = e.map_err(|e| CassandraError::files("list", path, e))?;
        let ft = e.file_type().map_err(|err| CassandraError::files("stat", e.path(), err))?;
        // Non-UTF-8 names cannot be Cassandra files.
        if let Some(name) = e.file_name().to_str() {
            let st = if stat && ft.is_file() {
                let m = e.metadata().map_err(|err| CassandraError::files("stat", e.path(), err))?;
                Some((m.len(), m.dev(), m.ino()))
            } else {
                None
            };
            // Exactly sized: `DirEntry::path` may leave room for growth, and a node has tens of
            // thousands of these.
            let mut p = PathBuf::with_capacity(path.as_os_str().len() + 1 + name.len());
            p.push(path);
            p.push(name);
            out.push((name.to_owned(), p, ft, st));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Finds the snapshots in `data_roots` (all, or only `tag`). Blocking: call from a blocking task.
pub fn scan(data_roots: &[PathBuf], tag: Option<&str>) -> Result<Vec<Snapshot>, CassandraError> {
    // (tag, keyspace, table dir name) -> table
    let mut found: BTreeMap<(String, String, String), SnapshotTable> = BTreeMap::new();
    for (root_idx, root) in data_roots.iter().enumerate() {
        for (ks, ks_path, ft) in read_dir(root)? {
            if !ft.is_dir() || !datadir::is_valid_name(&ks) {
                continue;
            }
            for (tdir, t_path, ft) in read_dir(&ks_path)? {
                let Some(table) = TableDir::parse(&tdir).filter(|_| ft.is_dir()) else { continue };
                let snaps = t_path.join(datadir::SNAPSHOTS_DIR);
                if !snaps.is_dir() {
                    continue;
                }
                for (snap_tag, snap_path, ft) in read_dir(&snaps)? {
                    if !ft.is_dir() || tag.is_some_and(|t| t != snap_tag) {
                        continue;
                    }
                    let entry =
                        found.entry((snap_tag.clone(), ks.clone(), tdir.clone())).or_insert_with(|| SnapshotTable {
                            keyspace: ks.clone(),
                            table: table.table.clone(),
                            table_id: table.id,
                            dirs: Vec::new(),
                            manifest: None,
                            schema_cql: None,
                            ephemeral: false,
                            files: Vec::new(),
                        });
                    entry.dirs.push(snap_path.clone());
                    collect(entry, root_idx, &snap_path)?;
                }
            }
        }
    }
    let mut by_tag: BTreeMap<String, Vec<SnapshotTable>> = BTreeMap::new();
    for ((tag, _, _), mut t) in found {
        t.files.sort_by(|a, b| a.path.cmp(&b.path));
        t.ephemeral |= t.manifest.as_ref().and_then(|m| m.ephemeral).unwrap_or(false);
        by_tag.entry(tag).or_default().push(t);
    }
    Ok(by_tag.into_iter().map(|(tag, tables)| Snapshot { tag, tables }).collect())
}

fn collect(t: &mut SnapshotTable, root_idx: usize, snap_dir: &Path) -> Result<(), CassandraError> {
    let entries = list(snap_dir, true)?;
    t.files.reserve(entries.len());
    for (name, path, ft, st) in entries {
        if ft.is_dir() {
            if let Some(index) = name.strip_prefix('.').filter(|i| !i.is_empty()) {
                for (_, fpath, fft, fst) in list(&path, true)? {
                    if fft.is_file() {
                        t.files.push(file(root_idx, fpath, fst, Some(index.to_owned()))?);
                    }
                }
            }
            continue;
        }
        if !ft.is_file() {
            continue;
        }
        let kind = FileKind::of(&name);
        match kind {
            FileKind::SnapshotManifest => {
                let bytes = std::fs::read(&path).map_err(|e| CassandraError::files("read", &path, e))?;
                t.manifest = Some(SnapshotManifest::parse(&bytes, &path)?);
            }
            FileKind::SnapshotSchema => {
                t.schema_cql =
                    Some(std::fs::read_to_string(&path).map_err(|e| CassandraError::files("read", &path, e))?);
            }
            FileKind::EphemeralMarker => t.ephemeral = true,
            _ => {}
        }
        t.files.push(file(root_idx, path, st, None)?);
    }
    Ok(())
}

fn file(
    data_root: usize,
    path: PathBuf,
    st: Option<FileStat>,
    index: Option<String>,
) -> Result<SnapshotFile, CassandraError> {
    let (size, dev, ino) = match st {
        Some(st) => st,
        None => {
            let m = std::fs::metadata(&path).map_err(|e| CassandraError::files("stat", &path, e))?;
            (m.len(), m.dev(), m.ino())
        }
    };
    Ok(SnapshotFile { data_root, index, size, inode: (dev, ino), path })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "users-6e4e2f307cbb11ee9858c9aa1eb53e69";

    fn write(p: &Path, content: &[u8]) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn gathers_a_table_across_jbod_roots_with_index_and_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let (r1, r2) = (tmp.path().join("d1"), tmp.path().join("d2"));
        let live = r1.join("shop").join(T1).join("nb-1-big-Data.db");
        write(&live, b"data");
        let s1 = r1.join("shop").join(T1).join("snapshots/b1");
        std::fs::create_dir_all(&s1).unwrap();
        std::fs::hard_link(&live, s1.join("nb-1-big-Data.db")).unwrap();
        write(&s1.join(".users_by_email/nb-1-big-Data.db"), b"idx");
        let s2 = r2.join("shop").join(T1).join("snapshots/b1");
        write(&s2.join("nb-2-big-Data.db"), b"more");
        write(
            &s2.join("manifest.json"),
            br#"{"files":["nb-1-big-Data.db","nb-2-big-Data.db",".users_by_email\/nb-1-big-Data.db"]}"#,
        );
        write(&s2.join("schema.cql"), b"CREATE TABLE IF NOT EXISTS shop.users (id int PRIMARY KEY) WITH ID = 6e4e2f30-7cbb-11ee-9858-c9aa1eb53e69;");
        // Noise: another tag, a non-table dir, a stray file at keyspace level.
        write(&r1.join("shop").join(T1).join("snapshots/other/nb-1-big-Data.db"), b"x");
        write(&r1.join("shop/README"), b"x");
        std::fs::create_dir_all(r2.join("lost+found")).unwrap();

        let all = scan(&[r1.clone(), r2.clone()], None).unwrap();
        assert_eq!(all.iter().map(|s| s.tag.as_str()).collect::<Vec<_>>(), ["b1", "other"]);
        let snaps = scan(&[r1.clone(), r2.clone()], Some("b1")).unwrap();
        assert_eq!(snaps.len(), 1);
        let t = &snaps[0].tables[0];
        assert_eq!((t.keyspace.as_str(), t.table.as_str()), ("shop", "users"));
        assert_eq!(t.table_id.unwrap().to_hex(), "6e4e2f307cbb11ee9858c9aa1eb53e69");
        assert_eq!(t.dirs.len(), 2);
        assert_eq!(t.manifest.as_ref().unwrap().files[2], ".users_by_email/nb-1-big-Data.db");
        assert!(t.schema_cql.as_ref().unwrap().contains("WITH ID"));
        assert!(!t.ephemeral);
        let sst: Vec<_> = t.sstable_files().map(|f| (f.data_root, f.live_path(), f.index.clone())).collect();
        assert_eq!(
            sst,
            [
                (0, format!("shop/{T1}/.users_by_email/nb-1-big-Data.db"), Some("users_by_email".into())),
                (0, format!("shop/{T1}/nb-1-big-Data.db"), None),
                (1, format!("shop/{T1}/nb-2-big-Data.db"), None),
            ]
        );
        let linked = t.files.iter().find(|f| f.live_path().ends_with(&format!("{T1}/nb-1-big-Data.db"))).unwrap();
        let live_meta = std::fs::metadata(&live).unwrap();
        assert_eq!(linked.inode, (live_meta.dev(), live_meta.ino()), "the snapshot file is a hard link");
        assert_eq!(
            snaps[0].size_on_disk(),
            4 + 3
                + 4
                + t.files.iter().filter(|f| !matches!(f.kind(), FileKind::Sstable(_))).map(|f| f.size).sum::<u64>()
        );
    }

    #[test]
    fn manifests_of_every_version_and_ephemeral_markers() {
        let p = Path::new("m.json");
        let m = SnapshotManifest::parse(br#"{"files":["mc-1-big-Data.db"]}"#, p).unwrap();
        assert_eq!((m.created_at, m.ephemeral), (None, None));
        let m = SnapshotManifest::parse(
            br#"{"files":["nb-1-big-Data.db"],"created_at":"2024-03-01T10:15:30.123Z","expires_at":null}"#,
            p,
        )
        .unwrap();
        assert_eq!(m.created_at.unwrap().timestamp_millis(), 1709288130123);
        let m = SnapshotManifest::parse(
            b"{\n  \"files\" : [ ],\n  \"created_at\" : \"2024-10-01T08:00:00Z\",\n  \"expires_at\" : \"2024-10-01T09:00:00Z\",\n  \"ephemeral\" : true,\n  \"future\" : 1\n}",
            p,
        )
        .unwrap();
        assert_eq!(m.ephemeral, Some(true));
        assert!(m.expires_at.is_some());
        let e = SnapshotManifest::parse(b"{\"file\":[]}", Path::new("/d/ks/t/snapshots/x/manifest.json")).unwrap_err();
        assert!(e.to_string().contains("/d/ks/t/snapshots/x/manifest.json"), "{e}");

        let tmp = tempfile::tempdir().unwrap();
        let s = tmp.path().join("ks").join(T1).join("snapshots/repair");
        write(&s.join("ephemeral.snapshot"), b"");
        write(&s.join("manifest.json"), br#"{"files":[]}"#);
        let snaps = scan(&[tmp.path().to_owned()], None).unwrap();
        assert!(snaps[0].tables[0].ephemeral);
    }

    #[test]
    fn a_missing_root_is_an_error_naming_it() {
        let e = scan(&[PathBuf::from("/nonexistent/data")], None).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/data"), "{e}");
    }
}
