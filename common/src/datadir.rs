//! Paths inside a Cassandra data directory, and what each file is (research §1).
//!
//! ```text
//! <data root>/<keyspace>/<table>-<32 hex table id>/            live SSTables ("<table>" alone: pre-2.1 layout)
//!                                                 .<index>/    native secondary index SSTables
//!                                                 backups/     incremental backups (hard links)
//!                                                 snapshots/<tag>/   snapshot hard links, manifest.json, schema.cql
//!                                                 snapshots/<tag>/.<index>/
//! ```
//!
//! Everything here is pure string work: no file system access.

use std::fmt;
use std::str::FromStr;

use crate::sstable::{SstableName, SstableNameError};

/// Longest keyspace or table name Cassandra accepts (`SchemaConstants.NAME_LENGTH`).
pub const MAX_NAME_LENGTH: usize = 48;
/// The directory of a table's incremental backups.
pub const BACKUPS_DIR: &str = "backups";
/// The directory holding a table's snapshots.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// The snapshot manifest Cassandra writes.
pub const SNAPSHOT_MANIFEST: &str = "manifest.json";
/// The table schema Cassandra writes into snapshots of non-system keyspaces.
pub const SNAPSHOT_SCHEMA: &str = "schema.cql";
/// The 3.11–4.1 marker of an ephemeral (repair) snapshot.
pub const EPHEMERAL_MARKER: &str = "ephemeral.snapshot";

/// Whether `name` is a valid keyspace or table name: `\w+`, at most 48 characters.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LENGTH && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `tag` can be a snapshot directory name (non-empty, no `/`, not `.` or `..`).
pub fn is_valid_snapshot_tag(tag: &str) -> bool {
    !tag.is_empty() && tag != "." && tag != ".." && !tag.contains('/') && !tag.contains('\0')
}

/// A table id: the UUID from `system_schema.tables.id`, written as 32 lowercase hex digits in
/// directory names and with dashes in CQL (`WITH ID = …`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId([u8; 16]);

impl TableId {
    /// Wraps raw UUID bytes.
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Self(b)
    }

    /// The raw UUID bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// 32 lowercase hex digits, as in directory names.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The dashed UUID form used in CQL.
    pub fn to_uuid_string(&self) -> String {
        let h = self.to_hex();
        format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }

    /// The deterministic id of a system table: `UUID.nameUUIDFromBytes(keyspace + table)` (MD5, v3),
    /// as `TableId.forSystemTable` computes it.
    pub fn for_system_table(keyspace: &str, table: &str) -> Self {
        let mut input = keyspace.as_bytes().to_vec();
        input.extend_from_slice(table.as_bytes());
        let mut b = md5(&input);
        b[6] = (b[6] & 0x0f) | 0x30;
        b[8] = (b[8] & 0x3f) | 0x80;
        Self(b)
    }
}

impl FromStr for TableId {
    type Err = crate::ids::IdError;
    /// Accepts the 32-hex directory form and the dashed UUID form, in either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let compact: String = if s.len() == 36 && [8, 13, 18, 23].iter().all(|i| s.as_bytes()[*i] == b'-') {
            s.chars().filter(|c| *c != '-').collect()
        } else {
            s.to_owned()
        };
        let mut out = [0u8; 16];
        if compact.len() != 32 || hex::decode_to_slice(compact.to_ascii_lowercase(), &mut out).is_err() {
            return Err(crate::ids::IdError {
                kind: "table id",
                value: s.chars().take(80).collect(),
                reason: "a table id is a UUID, written as 32 hex digits or 8-4-4-4-12",
                example: "5bc52802de2535edaeab188eecebb090",
            });
        }
        Ok(Self(out))
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableId({})", self.to_hex())
    }
}

/// A table directory name: `<table>-<32 hex id>`, or the pre-2.1 `<table>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableDir {
    /// The table name.
    pub table: String,
    /// The table id; `None` for a legacy directory.
    pub id: Option<TableId>,
}

impl TableDir {
    /// Parses a table directory name; `None` if it is neither form.
    pub fn parse(name: &str) -> Option<Self> {
        if let Some((table, id)) = name.rsplit_once('-')
            && id.len() == 32
            && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && is_valid_name(table)
        {
            return Some(Self { table: table.to_owned(), id: id.parse().ok() });
        }
        is_valid_name(name).then(|| Self { table: name.to_owned(), id: None })
    }

    /// The directory name.
    pub fn dir_name(&self) -> String {
        match &self.id {
            Some(id) => format!("{}-{}", self.table, id.to_hex()),
            None => self.table.clone(),
        }
    }
}

/// Which keyspaces Cassandra treats specially (research §1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyspaceClass {
    /// `system`, `system_schema`: node-local (LocalStrategy).
    LocalSystem,
    /// `system_auth`, `system_distributed`, `system_traces`, `system_cluster_metadata` (5.1).
    ReplicatedSystem,
    /// `system_views`, `system_virtual_schema`, `system_metrics`: virtual, no directories.
    Virtual,
    /// Everything else.
    User,
}

impl KeyspaceClass {
    /// The class of a keyspace.
    pub fn of(keyspace: &str) -> Self {
        match keyspace {
            "system" | "system_schema" => Self::LocalSystem,
            "system_auth" | "system_distributed" | "system_traces" | "system_cluster_metadata" => {
                Self::ReplicatedSystem
            }
            "system_views" | "system_virtual_schema" | "system_metrics" => Self::Virtual,
            _ => Self::User,
        }
    }

    /// Whether Cassandra writes `schema.cql` into snapshots of this keyspace's tables.
    pub fn snapshot_has_schema(&self) -> bool {
        *self == Self::User
    }

    /// Whether user-data backups should include it by default: user keyspaces and `system_auth`
    /// (roles) are data, and `system_schema` (a few hundred KiB) is what rebuilds a cluster
    /// from nothing (`--new-cluster`); `system`, `system_traces`, `system_distributed` are
    /// node-local or regenerable. Restores take `system_schema` only when asked.
    pub fn backed_up_by_default(keyspace: &str) -> bool {
        matches!(Self::of(keyspace), Self::User) || keyspace == "system_auth" || keyspace == "system_schema"
    }
}

/// What a file in a table directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// An SSTable component.
    Sstable(SstableName),
    /// A pre-3.0 SSTable component (unsupported; see [`SstableNameError::Unsupported`]).
    LegacySstable {
        /// Its version (`ka`, …).
        version: String,
    },
    /// A temporary or in-flight file (`*.tmp`, `tmp-`/`tmplink-` names): never back it up.
    Temporary,
    /// A transaction log (`nb_txn_flush_<uuid>.log`, `bti-da_txn_…`): its SSTables are not final yet.
    TransactionLog,
    /// A snapshot's `manifest.json`.
    SnapshotManifest,
    /// A snapshot's `schema.cql`.
    SnapshotSchema,
    /// The `ephemeral.snapshot` marker.
    EphemeralMarker,
    /// Anything else.
    Other,
}

impl FileKind {
    /// Classifies a file name (no directories).
    pub fn of(name: &str) -> Self {
        if name.ends_with(".tmp")
            || name.starts_with("tmp-")
            || name.starts_with("tmplink-")
            || name.contains("-tmp-")
            || name.contains("-tmplink-")
        {
            return Self::Temporary;
        }
        if is_transaction_log(name) {
            return Self::TransactionLog;
        }
        match name {
            SNAPSHOT_MANIFEST => return Self::SnapshotManifest,
            SNAPSHOT_SCHEMA => return Self::SnapshotSchema,
            EPHEMERAL_MARKER => return Self::EphemeralMarker,
            _ => {}
        }
        match SstableName::parse(name) {
            Ok(n) => Self::Sstable(n),
            Err(SstableNameError::Unsupported { version, .. }) => Self::LegacySstable { version },
            Err(SstableNameError::Malformed { .. }) => Self::Other,
        }
    }

    /// Whether a backup should skip the file (temporary files and transaction logs).
    pub fn is_ignored(&self) -> bool {
        matches!(self, Self::Temporary | Self::TransactionLog)
    }
}

/// `<ver>_txn_<op>_<uuid>.log` (big) or `<fmt>-<ver>_txn_<op>_<uuid>.log` (`LogFile.java`).
fn is_transaction_log(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".log") else { return false };
    let stem = match stem.split_once('-') {
        Some((fmt, rest)) if fmt.bytes().all(|b| b.is_ascii_lowercase()) && !fmt.is_empty() => rest,
        _ => stem,
    };
    let mut parts = stem.splitn(4, '_');
    let (Some(ver), Some("txn"), Some(op), Some(uuid)) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    ver.len() == 2 && !op.is_empty() && uuid.len() == 36
}

/// Where in a table directory a file lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Area {
    /// The live set (the table directory itself).
    Live,
    /// `backups/` (incremental backups).
    Backups,
    /// `snapshots/<tag>/`.
    Snapshot(String),
}

/// A file under a data root, decomposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFile {
    /// Keyspace name.
    pub keyspace: String,
    /// Table directory.
    pub table: TableDir,
    /// Live, backups or a snapshot.
    pub area: Area,
    /// The secondary index (`.<index>` directory), if the file belongs to one.
    pub index: Option<String>,
    /// The file name.
    pub file_name: String,
    /// What the file is.
    pub kind: FileKind,
}

/// A path that is not a file of a table directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{path:?} is not a table file (expected <keyspace>/<table>-<id>/[backups/|snapshots/<tag>/][.<index>/]<file>): {reason}"
)]
pub struct DataPathError {
    /// The rejected path.
    pub path: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl TableFile {
    /// Parses a `/`-separated path relative to a data root.
    pub fn parse(rel: &str) -> Result<Self, DataPathError> {
        let err = |reason| DataPathError { path: rel.to_owned(), reason };
        let parts: Vec<&str> = rel.split('/').collect();
        if parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
            return Err(err("empty, '.' or '..' path component"));
        }
        let [keyspace, table_dir, rest @ ..] = parts.as_slice() else {
            return Err(err("too few components"));
        };
        if !is_valid_name(keyspace) {
            return Err(err("the keyspace is not a valid name (letters, digits, '_', at most 48)"));
        }
        let table = TableDir::parse(table_dir).ok_or_else(|| err("the table directory is not <table>-<32 hex id>"))?;
        let (area, rest) = match rest {
            [BACKUPS_DIR, rest @ ..] => (Area::Backups, rest),
            [SNAPSHOTS_DIR, tag, rest @ ..] if !rest.is_empty() => (Area::Snapshot((*tag).to_owned()), rest),
            rest => (Area::Live, rest),
        };
        let (index, file_name) = match rest {
            [file] => (None, *file),
            [idx, file] if idx.len() > 1 && idx.starts_with('.') => (Some(idx[1..].to_owned()), *file),
            _ => return Err(err("unexpected directories between the table directory and the file")),
        };
        Ok(Self {
            keyspace: (*keyspace).to_owned(),
            table,
            area,
            index,
            file_name: file_name.to_owned(),
            kind: FileKind::of(file_name),
        })
    }

    /// The path of the corresponding live file, relative to the data root
    /// (`ks/t-<id>/[.<idx>/]<file>`): where a restored file goes.
    pub fn live_path(&self) -> String {
        let mut s = format!("{}/{}/", self.keyspace, self.table.dir_name());
        if let Some(i) = &self.index {
            s.push('.');
            s.push_str(i);
            s.push('/');
        }
        s.push_str(&self.file_name);
        s
    }
}

/// Minimal MD5 (RFC 1321), only for [`TableId::for_system_table`]: not used for anything secret.
fn md5(input: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14,
        20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6,
        10, 15, 21,
    ];
    let k: Vec<u32> = (0..64).map(|i| ((i as f64 + 1.0).sin().abs() * 4294967296.0) as u32).collect();
    let (mut a0, mut b0, mut c0, mut d0) = (0x67452301u32, 0xefcdab89u32, 0x98badcfeu32, 0x10325476u32);
    let mut msg = input.to_vec();
    let bit_len = (input.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_le_bytes());
    for chunk in msg.chunks(64) {
        let m: Vec<u32> = chunk.chunks(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&a0.to_le_bytes());
    out[4..8].copy_from_slice(&b0.to_le_bytes());
    out[8..12].copy_from_slice(&c0.to_le_bytes());
    out[12..16].copy_from_slice(&d0.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sstable::SstableId;

    #[test]
    fn system_table_ids_match_cassandra() {
        // Research §1.2 (system.local also seen in the 4.0.11 commit-log fixture).
        for (ks, t, id) in [
            ("system", "local", "7ad54392bcdd35a684174e047860b377"),
            ("system", "peers_v2", "c4325fbb8e5e3bafbd070f9250ed818e"),
            ("system", "peers", "37f71aca7dc2383ba70672528af04d4f"),
            ("system_schema", "tables", "afddfb9dbc1e30688056eed6c302ba09"),
            ("system_schema", "keyspaces", "abac5682dea631c5b535b3d6cffd0fb6"),
            ("system_auth", "roles", "5bc52802de2535edaeab188eecebb090"),
        ] {
            assert_eq!(TableId::for_system_table(ks, t).to_hex(), id, "{ks}.{t}");
        }
        assert_eq!(hex::encode(md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn table_ids_parse_both_forms() {
        let a: TableId = "6e4e2f30-7cbb-11ee-9858-c9aa1eb53e69".parse().unwrap();
        let b: TableId = "6E4E2F307CBB11EE9858C9AA1EB53E69".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "6e4e2f307cbb11ee9858c9aa1eb53e69");
        assert_eq!(a.to_uuid_string(), "6e4e2f30-7cbb-11ee-9858-c9aa1eb53e69");
        assert!("6e4e2f30".parse::<TableId>().is_err());
        assert!("zz4e2f307cbb11ee9858c9aa1eb53e69".parse::<TableId>().is_err());
    }

    #[test]
    fn table_dirs_current_and_legacy() {
        let d = TableDir::parse("users-6e4e2f307cbb11ee9858c9aa1eb53e69").unwrap();
        assert_eq!(d.table, "users");
        assert_eq!(d.id.unwrap().to_hex(), "6e4e2f307cbb11ee9858c9aa1eb53e69");
        assert_eq!(d.dir_name(), "users-6e4e2f307cbb11ee9858c9aa1eb53e69");
        let d = TableDir::parse("legacy_nb_simple").unwrap();
        assert_eq!((d.table.as_str(), d.id), ("legacy_nb_simple", None));
        assert!(TableDir::parse("bad-name").is_none());
        assert!(TableDir::parse("users-6E4E2F307CBB11EE9858C9AA1EB53E69").is_none());
        assert!(TableDir::parse(&"x".repeat(49)).is_none());
    }

    #[test]
    fn classifies_files() {
        assert!(matches!(FileKind::of("nb-1-big-Data.db"), FileKind::Sstable(_)));
        assert_eq!(
            FileKind::of("legacy_tables-legacy_ka_simple-ka-1-Data.db"),
            FileKind::LegacySstable { version: "ka".into() }
        );
        for t in [
            "nb-1-big-Data.db.tmp",
            "nb-1-big-Data.db.5e0b5d10-1c42-11ef-9d55-7f9d1b9b5a2e.tmp",
            "ks-cf-tmp-ka-1-Data.db",
            "tmplink-la-1-big-Data.db",
        ] {
            assert_eq!(FileKind::of(t), FileKind::Temporary, "{t}");
            assert!(FileKind::of(t).is_ignored());
        }
        for t in [
            "nb_txn_flush_0b8b7d30-1c42-11ef-9d55-7f9d1b9b5a2e.log",
            "nb_txn_compaction_0b8b7d30-1c42-11ef-9d55-7f9d1b9b5a2e.log",
            "bti-da_txn_flush_0b8b7d30-1c42-11ef-9d55-7f9d1b9b5a2e.log",
        ] {
            assert_eq!(FileKind::of(t), FileKind::TransactionLog, "{t}");
        }
        assert_eq!(FileKind::of("manifest.json"), FileKind::SnapshotManifest);
        assert_eq!(FileKind::of("schema.cql"), FileKind::SnapshotSchema);
        assert_eq!(FileKind::of("ephemeral.snapshot"), FileKind::EphemeralMarker);
        assert_eq!(FileKind::of("README"), FileKind::Other);
        assert_eq!(FileKind::of("CommitLog-7-1.log"), FileKind::Other);
    }

    #[test]
    fn parses_every_area_and_index_dirs() {
        let f = TableFile::parse("ks/t-6e4e2f307cbb11ee9858c9aa1eb53e69/nb-3-big-Data.db").unwrap();
        assert_eq!((f.keyspace.as_str(), f.table.table.as_str(), &f.area, &f.index), ("ks", "t", &Area::Live, &None));
        match &f.kind {
            FileKind::Sstable(n) => assert_eq!(n.id, SstableId::Sequence(3)),
            k => panic!("{k:?}"),
        }
        let f = TableFile::parse("ks/t-6e4e2f307cbb11ee9858c9aa1eb53e69/backups/.t_idx/nb-3-big-Data.db").unwrap();
        assert_eq!((&f.area, f.index.as_deref()), (&Area::Backups, Some("t_idx")));
        let f =
            TableFile::parse("ks/t-6e4e2f307cbb11ee9858c9aa1eb53e69/snapshots/daily-2024-01/manifest.json").unwrap();
        assert_eq!(f.area, Area::Snapshot("daily-2024-01".into()));
        assert_eq!(f.kind, FileKind::SnapshotManifest);
        let f = TableFile::parse("ks/t-6e4e2f307cbb11ee9858c9aa1eb53e69/snapshots/s1/.t_idx/nb-1-big-TOC.txt").unwrap();
        assert_eq!(f.index.as_deref(), Some("t_idx"));
        assert_eq!(f.live_path(), "ks/t-6e4e2f307cbb11ee9858c9aa1eb53e69/.t_idx/nb-1-big-TOC.txt");
        let f = TableFile::parse("legacy_tables/legacy_nb_simple/nb-1-big-Data.db").unwrap();
        assert_eq!(f.table.id, None);

        for bad in [
            "ks",
            "ks/t-6e4e2f307cbb11ee9858c9aa1eb53e69",
            "ks/../x/nb-1-big-Data.db",
            "ks//nb-1-big-Data.db",
            "k-s/t/nb-1-big-Data.db",
            "ks/t/a/b/nb-1-big-Data.db",
            "ks/t/snapshots/nb-1-big-Data.db/x/y",
        ] {
            let e = TableFile::parse(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn keyspace_classes() {
        assert_eq!(KeyspaceClass::of("system"), KeyspaceClass::LocalSystem);
        assert_eq!(KeyspaceClass::of("system_schema"), KeyspaceClass::LocalSystem);
        assert_eq!(KeyspaceClass::of("system_auth"), KeyspaceClass::ReplicatedSystem);
        assert_eq!(KeyspaceClass::of("system_traces"), KeyspaceClass::ReplicatedSystem);
        assert_eq!(KeyspaceClass::of("system_views"), KeyspaceClass::Virtual);
        assert_eq!(KeyspaceClass::of("shop"), KeyspaceClass::User);
        assert!(KeyspaceClass::User.snapshot_has_schema());
        assert!(!KeyspaceClass::ReplicatedSystem.snapshot_has_schema());
        assert!(KeyspaceClass::backed_up_by_default("system_auth"));
        assert!(!KeyspaceClass::backed_up_by_default("system_distributed"));
        assert!(is_valid_snapshot_tag("truncated-1700000000000-users"));
        assert!(!is_valid_snapshot_tag("a/b") && !is_valid_snapshot_tag("..") && !is_valid_snapshot_tag(""));
    }
}
