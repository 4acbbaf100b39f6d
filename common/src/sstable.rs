//! SSTable file names: `<version>-<id>-<format>-<Component>` (Cassandra 3.0 and later), and the
//! small per-SSTable files the agent reads.
//!
//! Examples: `nb-1-big-Data.db`, `da-1-bti-Partitions.db`,
//! `nb-3g1m_0nuf_3vj5m2k1125165rxa7-big-Data.db` (4.1+ UUID-based id), `nb-1-big-SAI+aa+GroupComplete.db`
//! (5.0 SAI). See `shared/research/cassandra-internals.md` §1.3–1.4 and §5.3–5.4.
//!
//! # Layout
//! - this module: names, ids (sequence and time-UUID), versions, formats and component kinds.
//! - [`toc`]: `TOC.txt`, the authoritative list of an SSTable's components.
//! - [`digest`]: `Digest.crc32`, and verifying it against `Data.db`.
//! - [`statistics`]: `Statistics.db`, the minimum and maximum cell timestamps.
//!
//! Names of the pre-3.0 forms (`<ks>-<cf>-ka-1-Data.db`, or current-form names of versions older
//! than `ma`) are recognised and rejected with [`SstableNameError::Unsupported`]: Cassandra 3.0 and
//! later cannot read them either.

pub mod digest;
pub mod statistics;
pub mod toc;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Days from the UUID epoch (1582-10-15) to the Unix epoch, in 100 ns units.
const UUID_EPOCH_OFFSET_100NS: u64 = 122_192_928_000_000_000;
const TICKS_PER_SECOND: u64 = 10_000_000;
const SECONDS_PER_DAY: u64 = 86_400;

/// The generation part of an SSTable name.
///
/// Ordering follows Cassandra's `SSTableIdFactory.COMPARATOR`: every sequence id sorts before every
/// UUID id; UUID ids have a fixed width, so their text order is their time order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SstableId {
    /// A decimal sequence number (all versions; at most 10 digits).
    Sequence(u64),
    /// A 4.1+ time-UUID id rendered as 28 base-36 characters `DDDD_SSSS_NNNNNRRRRRRRRRRRRR`.
    Uuid(String),
}

impl fmt::Display for SstableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SstableId::Sequence(n) => write!(f, "{n}"),
            SstableId::Uuid(s) => f.write_str(s),
        }
    }
}

/// A decoded 4.1+ UUID-based SSTable id: the v1 time-UUID behind the 28-character name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UuidSstableId {
    /// The UUID's timestamp: 100 ns units since 1582-10-15T00:00:00Z.
    pub timestamp_100ns: u64,
    /// The UUID's least significant 64 bits (clock sequence and node), unsigned.
    pub lsb: u64,
}

impl UuidSstableId {
    /// An id for the moment `unix_nanos` (nanoseconds since the Unix epoch; kept to 100 ns) and the
    /// given clock-sequence/node bits.
    pub fn from_unix_nanos(unix_nanos: u64, lsb: u64) -> Self {
        Self { timestamp_100ns: unix_nanos / 100 + UUID_EPOCH_OFFSET_100NS, lsb }
    }

    /// Microseconds since the Unix epoch, as Cassandra computes them (`ts / 10 - 12219292800000000`).
    pub fn unix_micros(&self) -> i64 {
        (self.timestamp_100ns / 10) as i64 - (UUID_EPOCH_OFFSET_100NS / 10) as i64
    }

    /// The creation time encoded in the id (100 ns precision).
    pub fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        let ticks = self.timestamp_100ns as i128 - UUID_EPOCH_OFFSET_100NS as i128;
        let nanos = ticks * 100;
        let secs = nanos.div_euclid(1_000_000_000) as i64;
        let sub = nanos.rem_euclid(1_000_000_000) as u32;
        chrono::DateTime::from_timestamp(secs, sub).unwrap_or_default()
    }

    /// The UUID in its usual 8-4-4-4-12 form (version 1).
    pub fn to_uuid_string(&self) -> String {
        let ts = self.timestamp_100ns;
        let time_low = ts & 0xffff_ffff;
        let time_mid = (ts >> 32) & 0xffff;
        let time_hi = ((ts >> 48) & 0x0fff) | 0x1000;
        let clock = self.lsb >> 48;
        let node = self.lsb & 0xffff_ffff_ffff;
        format!("{time_low:08x}-{time_mid:04x}-{time_hi:04x}-{clock:04x}-{node:012x}")
    }

    /// The 28-character name form, `DDDD_SSSS_NNNNNRRRRRRRRRRRRR`.
    pub fn render(&self) -> String {
        let days = self.timestamp_100ns / (SECONDS_PER_DAY * TICKS_PER_SECOND);
        let rest = self.timestamp_100ns % (SECONDS_PER_DAY * TICKS_PER_SECOND);
        let secs = rest / TICKS_PER_SECOND;
        let ticks = rest % TICKS_PER_SECOND;
        format!(
            "{}_{}_{}{}",
            base36(days as u128, 4),
            base36(secs as u128, 4),
            base36(ticks as u128, 5),
            base36(self.lsb as u128, 13)
        )
    }

    /// Decodes the 28-character name form; `None` if it is not one.
    pub fn decode(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        // ASCII first: the slices below must fall on character boundaries.
        if !s.is_ascii() || b.len() != 28 || b[4] != b'_' || b[9] != b'_' {
            return None;
        }
        let days = unbase36(&s[0..4])?;
        let secs = unbase36(&s[5..9])?;
        let ticks = unbase36(&s[10..15])?;
        let lsb = unbase36(&s[15..28])?;
        if secs >= SECONDS_PER_DAY as u128 || ticks >= TICKS_PER_SECOND as u128 || lsb > u64::MAX as u128 {
            return None;
        }
        let ts = days * (SECONDS_PER_DAY * TICKS_PER_SECOND) as u128 + secs * TICKS_PER_SECOND as u128 + ticks;
        Some(Self { timestamp_100ns: u64::try_from(ts).ok()?, lsb: lsb as u64 })
    }
}

fn base36(mut v: u128, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(width);
    while v > 0 {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
    }
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

fn unbase36(s: &str) -> Option<u128> {
    let mut v: u128 = 0;
    for c in s.bytes() {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'z' => c - b'a' + 10,
            _ => return None,
        };
        v = v.checked_mul(36)?.checked_add(d as u128)?;
    }
    Some(v)
}

impl SstableId {
    /// Parses a generation as Cassandra does: the UUID form first, then a sequence number.
    pub fn parse(s: &str) -> Option<Self> {
        if UuidSstableId::decode(s).is_some() {
            return Some(SstableId::Uuid(s.to_owned()));
        }
        let b = s.as_bytes();
        if !s.is_empty() && s.len() <= 10 && b.iter().all(u8::is_ascii_digit) {
            // Cassandra stores sequence ids in an int.
            return s.parse::<u64>().ok().filter(|n| *n <= i32::MAX as u64).map(SstableId::Sequence);
        }
        None
    }

    /// A UUID-based id.
    pub fn from_uuid(id: UuidSstableId) -> Self {
        SstableId::Uuid(id.render())
    }

    /// The decoded time-UUID of a UUID-based id; `None` for a sequence id.
    pub fn decode_uuid(&self) -> Option<UuidSstableId> {
        match self {
            SstableId::Uuid(s) => UuidSstableId::decode(s),
            SstableId::Sequence(_) => None,
        }
    }
}

/// SSTable format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SstableFormat {
    /// The original format (`Index.db` + `Summary.db`), all versions.
    Big,
    /// 5.0 trie-indexed format (`Partitions.db` + `Rows.db`).
    Bti,
}

impl SstableFormat {
    /// Parses `big` or `bti`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "big" => Some(Self::Big),
            "bti" => Some(Self::Bti),
            _ => None,
        }
    }

    /// The name used in file names.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Big => "big",
            Self::Bti => "bti",
        }
    }
}

impl fmt::Display for SstableFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known about one SSTable format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionInfo {
    /// Two letters, e.g. `nb`.
    pub version: &'static str,
    /// The format the version belongs to.
    pub format: SstableFormat,
    /// The first Cassandra release that writes it.
    pub first_written_by: &'static str,
    /// Whether `Statistics.db` carries CRC32s of its table of contents and components.
    pub metadata_checksums: bool,
    /// Written only by 5.0 pre-releases (`nc`, removed by CASSANDRA-19010): readable, never written by a release.
    pub pre_release: bool,
}

/// Every SSTable format version Cassandra 3.0 to 5.0 can read (research §1.3).
pub const KNOWN_VERSIONS: &[VersionInfo] = &[
    v("ma", SstableFormat::Big, "3.0.0", false, false),
    v("mb", SstableFormat::Big, "3.0.7 / 3.7", false, false),
    v("mc", SstableFormat::Big, "3.0.8 / 3.9", false, false),
    v("md", SstableFormat::Big, "3.0.18 / 3.11.4", false, false),
    v("me", SstableFormat::Big, "3.0.25 / 3.11.11", false, false),
    v("na", SstableFormat::Big, "4.0-rc1", true, false),
    v("nb", SstableFormat::Big, "4.0.0", true, false),
    v("nc", SstableFormat::Big, "5.0 pre-release", true, true),
    v("oa", SstableFormat::Big, "5.0", true, false),
    v("da", SstableFormat::Bti, "5.0", true, false),
];

const fn v(
    version: &'static str,
    format: SstableFormat,
    first_written_by: &'static str,
    metadata_checksums: bool,
    pre_release: bool,
) -> VersionInfo {
    VersionInfo { version, format, first_written_by, metadata_checksums, pre_release }
}

/// Looks a version up in [`KNOWN_VERSIONS`].
pub fn version_info(format: SstableFormat, version: &str) -> Option<&'static VersionInfo> {
    KNOWN_VERSIONS.iter().find(|i| i.format == format && i.version == version)
}

/// Whether SSTables of this format and version have checksummed `Statistics.db` metadata
/// (big `na` and later, bti `da` and later). Unknown future versions are assumed to keep them.
pub fn has_metadata_checksums(format: SstableFormat, version: &str) -> bool {
    match format {
        SstableFormat::Big => version >= "na",
        SstableFormat::Bti => version >= "da",
    }
}

/// The kind of an SSTable component, from its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ComponentKind {
    /// `Data.db`.
    Data,
    /// `Index.db` (big primary index).
    Index,
    /// `Summary.db` (big index summary).
    Summary,
    /// `Filter.db` (bloom filter).
    Filter,
    /// `Statistics.db`.
    Statistics,
    /// `CompressionInfo.db` (compressed tables).
    CompressionInfo,
    /// `CRC.db` (uncompressed tables: per-chunk CRCs).
    Crc,
    /// `Digest.crc32` (or the older `Digest.adler32` / `Digest.sha1`).
    Digest,
    /// `TOC.txt`.
    Toc,
    /// `Partitions.db` (bti partition trie).
    Partitions,
    /// `Rows.db` (bti row index; may be empty).
    Rows,
    /// A 5.0 SAI component `SAI+<ver>+[<index>+]<Component>.db`.
    Sai {
        /// The SAI on-disk version (`aa`).
        version: String,
        /// The index name, for per-index components.
        index: Option<String>,
        /// The component (`GroupMeta`, `TermsData`, …).
        component: String,
    },
    /// A SASI index component `SI_<index>.db`.
    Sasi {
        /// The index name.
        index: String,
    },
    /// Anything else (custom index implementations, future components).
    Other,
}

impl ComponentKind {
    /// Classifies a component name such as `Data.db` or `SAI+aa+idx+TermsData.db`.
    pub fn of(component: &str) -> Self {
        match component {
            "Data.db" => return Self::Data,
            "Index.db" => return Self::Index,
            "Summary.db" => return Self::Summary,
            "Filter.db" => return Self::Filter,
            "Statistics.db" => return Self::Statistics,
            "CompressionInfo.db" => return Self::CompressionInfo,
            "CRC.db" => return Self::Crc,
            "Digest.crc32" | "Digest.adler32" | "Digest.sha1" => return Self::Digest,
            "TOC.txt" => return Self::Toc,
            "Partitions.db" => return Self::Partitions,
            "Rows.db" => return Self::Rows,
            _ => {}
        }
        let stem = component.strip_suffix(".db").unwrap_or(component);
        if let Some(rest) = stem.strip_prefix("SAI+") {
            let parts: Vec<&str> = rest.split('+').collect();
            match parts[..] {
                [version, component] => {
                    return Self::Sai { version: version.into(), index: None, component: component.into() };
                }
                [version, index, component] => {
                    return Self::Sai {
                        version: version.into(),
                        index: Some(index.into()),
                        component: component.into(),
                    };
                }
                _ => {}
            }
        }
        if let Some(index) = stem.strip_prefix("SI_") {
            return Self::Sasi { index: index.into() };
        }
        Self::Other
    }
}

/// A parsed SSTable component file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SstableName {
    /// Format version, two lowercase letters (`ma` … `oa`, `da`).
    pub version: String,
    /// Generation.
    pub id: SstableId,
    /// Format name: `big` or `bti`.
    pub format: String,
    /// Component: `Data.db`, `TOC.txt`, `Digest.crc32`, `SAI+aa+GroupComplete.db`, …
    pub component: String,
}

/// A file name that is not a usable SSTable component name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SstableNameError {
    /// Not an SSTable component name at all.
    #[error(
        "{name:?} is not an SSTable component name (<version>-<id>-<format>-<Component>, e.g. nb-1-big-Data.db): {reason}"
    )]
    Malformed {
        /// The rejected file name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A pre-3.0 SSTable: Cassandra 3.0 and later cannot read it, and neither does Cassette.
    #[error(
        "{name:?} is an SSTable of version {version}, which Cassandra 3.0 and later cannot read and Cassette does not support: run nodetool upgradesstables on the old cluster first"
    )]
    Unsupported {
        /// The rejected file name.
        name: String,
        /// Its format version (`ka`, `la`, …).
        version: String,
    },
}

impl SstableNameError {
    fn malformed(name: &str, reason: &'static str) -> Self {
        Self::Malformed { name: name.to_owned(), reason }
    }
}

/// Whether `s` is a valid component name: letters, digits, `_`, `+` or `-`, then `.` and an extension.
pub(crate) fn valid_component(s: &str) -> bool {
    let Some((stem, ext)) = s.rsplit_once('.') else { return false };
    !stem.is_empty()
        && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'+' || b == b'-')
        && !ext.is_empty()
        && ext.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn is_version(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_lowercase())
}

impl SstableName {
    /// Parses a component file name (no directories).
    pub fn parse(name: &str) -> Result<Self, SstableNameError> {
        let err = |reason| SstableNameError::malformed(name, reason);
        let parts: Vec<&str> = name.split('-').collect();
        let [version, id, format, component] = parts[..] else {
            // Pre-3.0: `<ks>-<cf>-[tmp-]<ver>-<gen>-<Component>` (Descriptor.fromFilename).
            if (parts.len() == 5 || parts.len() == 6)
                && is_version(parts[parts.len() - 3])
                && parts[parts.len() - 2].bytes().all(|b| b.is_ascii_digit())
            {
                return Err(SstableNameError::Unsupported {
                    name: name.to_owned(),
                    version: parts[parts.len() - 3].to_owned(),
                });
            }
            return Err(err("expected exactly four '-'-separated parts"));
        };
        if !is_version(version) {
            return Err(err("the version is two lowercase letters"));
        }
        let id = SstableId::parse(id).ok_or_else(|| err("the id is a number or a 28-character time-UUID id"))?;
        if format.is_empty() || !format.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(err("the format is lowercase letters (big, bti)"));
        }
        if !valid_component(component) {
            return Err(err("the component is letters, digits, '_' or '+' with an extension"));
        }
        if format == "big" && version < "ma" {
            // `la` (2.2) already used the current name form; 3.0+ still refuses to read it.
            return Err(SstableNameError::Unsupported { name: name.to_owned(), version: version.to_owned() });
        }
        Ok(Self { version: version.to_owned(), id, format: format.to_owned(), component: component.to_owned() })
    }

    /// The identity recorded in a manifest.
    pub fn identity(&self) -> SstableIdentity {
        SstableIdentity {
            version: self.version.clone(),
            generation: self.id.to_string(),
            format: self.format.clone(),
            component: self.component.clone(),
        }
    }

    /// The name prefix shared by every component of this SSTable, e.g. `nb-1-big`.
    pub fn sstable_prefix(&self) -> String {
        format!("{}-{}-{}", self.version, self.id, self.format)
    }

    /// The file name of another component of the same SSTable.
    pub fn sibling(&self, component: &str) -> String {
        format!("{}-{component}", self.sstable_prefix())
    }

    /// The format, when it is one Cassette knows (`big`, `bti`).
    pub fn format_kind(&self) -> Option<SstableFormat> {
        SstableFormat::parse(&self.format)
    }

    /// What is known about this SSTable's version, if anything.
    pub fn version_info(&self) -> Option<&'static VersionInfo> {
        self.format_kind().and_then(|f| version_info(f, &self.version))
    }

    /// Whether `Statistics.db` of this SSTable carries metadata checksums.
    pub fn has_metadata_checksums(&self) -> bool {
        self.format_kind().is_some_and(|f| has_metadata_checksums(f, &self.version))
    }

    /// The component's kind.
    pub fn component_kind(&self) -> ComponentKind {
        ComponentKind::of(&self.component)
    }

    /// Whether a Cassandra whose newest SSTable version starts with `newest_major` (`m` for 3.x,
    /// `n` for 4.x, `o` for 5.0) can read this SSTable (`Version.isCompatible`). bti needs 5.0.
    pub fn readable_by(&self, newest_major: char) -> bool {
        let first = self.version.chars().next().unwrap_or('z');
        match self.format_kind() {
            Some(SstableFormat::Big) => self.version.as_str() >= "ma" && first <= newest_major,
            Some(SstableFormat::Bti) => newest_major >= 'o',
            None => false,
        }
    }
}

impl fmt::Display for SstableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.sstable_prefix(), self.component)
    }
}

/// An SSTable's identity as recorded per file in a node manifest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SstableIdentity {
    /// Format version (`nb`, `da`, …).
    pub version: String,
    /// Generation as written in the file name.
    pub generation: String,
    /// `big` or `bti`.
    pub format: String,
    /// Component (`Data.db`, …).
    pub component: String,
}

/// A small Cassandra file that could not be read or does not parse. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileFormatError {
    /// Reading the file failed.
    #[error("read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The bytes are not what this kind of file holds.
    #[error("parse {what} {}: {reason}", path.display())]
    Format {
        /// Which kind of file (`TOC.txt`, `Statistics.db`, `commit log segment`, …).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong, with the byte offset where it matters.
        reason: String,
    },
    /// A stored checksum does not match the bytes it covers.
    #[error("{what} {}: checksum mismatch (stored {stored}, computed {computed}): the file is damaged", path.display())]
    Checksum {
        /// Which checksum (`Digest.crc32 of Data.db`, `Statistics.db STATS component`, …).
        what: String,
        /// The file whose content did not match.
        path: PathBuf,
        /// The stored value.
        stored: u32,
        /// The value computed from the bytes.
        computed: u32,
    },
}

impl FileFormatError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Self::Io { path: path.to_owned(), source }
    }

    pub(crate) fn format(what: &'static str, path: &Path, reason: impl Into<String>) -> Self {
        Self::Format { what, path: path.to_owned(), reason: reason.into() }
    }
}

/// A big-endian reader over a byte slice that reports truncation instead of panicking.
#[derive(Debug)]
pub(crate) struct BeReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> BeReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    pub(crate) fn at(bytes: &'a [u8], pos: usize) -> Self {
        Self { bytes, pos }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or_else(|| {
            format!("truncated: needed {n} bytes at offset {}, the file has {}", self.pos, self.bytes.len())
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, String> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn i32(&mut self) -> Result<i32, String> {
        self.array().map(i32::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn i64(&mut self) -> Result<i64, String> {
        self.array().map(i64::from_be_bytes)
    }

    pub(crate) fn f64(&mut self) -> Result<f64, String> {
        self.array().map(f64::from_be_bytes)
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Locates the real Cassandra test files in `shared/fixtures` (never copied into the repo).
    use std::path::PathBuf;

    /// `$CASSETTE_FIXTURES/cassandra-sstables`, else `<workspace>/../shared/fixtures/cassandra-sstables`.
    /// `None` (with a visible message) when absent; panics instead when `CASSETTE_REQUIRE_FIXTURES=1`.
    pub(crate) fn dir() -> Option<PathBuf> {
        let root = std::env::var_os("CASSETTE_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
        let dir = root.join("cassandra-sstables");
        if dir.join("README.md").is_file() {
            return Some(dir);
        }
        let msg = format!(
            "SKIPPED: Cassandra fixture files not found at {} (set CASSETTE_FIXTURES to the shared/fixtures directory)",
            dir.display()
        );
        if std::env::var("CASSETTE_REQUIRE_FIXTURES").as_deref() == Ok("1") {
            panic!("{msg}; CASSETTE_REQUIRE_FIXTURES=1 makes this a failure");
        }
        // Straight to stderr: the test harness captures eprintln!, and a skip must be visible.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{msg}");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sequence_uuid_and_sai_names() {
        let n = SstableName::parse("nb-1-big-Data.db").unwrap();
        assert_eq!((n.version.as_str(), &n.id, n.format.as_str()), ("nb", &SstableId::Sequence(1), "big"));
        assert_eq!(n.component, "Data.db");
        assert_eq!(n.sstable_prefix(), "nb-1-big");
        assert_eq!(n.sibling("TOC.txt"), "nb-1-big-TOC.txt");
        assert_eq!(n.to_string(), "nb-1-big-Data.db");

        let n = SstableName::parse("nb-3g1m_0nuf_3vj5m2k1125165rxa7-big-Statistics.db").unwrap();
        assert_eq!(n.id, SstableId::Uuid("3g1m_0nuf_3vj5m2k1125165rxa7".into()));

        let n = SstableName::parse("da-12-bti-Partitions.db").unwrap();
        assert_eq!(n.identity().generation, "12");
        assert_eq!(n.format_kind(), Some(SstableFormat::Bti));
        assert_eq!(n.component_kind(), ComponentKind::Partitions);

        let n = SstableName::parse("nb-1-big-SAI+aa+GroupComplete.db").unwrap();
        assert_eq!(n.component, "SAI+aa+GroupComplete.db");
        assert_eq!(
            n.component_kind(),
            ComponentKind::Sai { version: "aa".into(), index: None, component: "GroupComplete".into() }
        );
        let n = SstableName::parse("nb-1-big-SAI+aa+by_name+TermsData.db").unwrap();
        assert_eq!(
            n.component_kind(),
            ComponentKind::Sai { version: "aa".into(), index: Some("by_name".into()), component: "TermsData".into() }
        );
        let n = SstableName::parse("mc-4-big-SI_by_city.db").unwrap();
        assert_eq!(n.component_kind(), ComponentKind::Sasi { index: "by_city".into() });
        assert_eq!(SstableName::parse("me-7-big-Digest.crc32").unwrap().component, "Digest.crc32");
        assert_eq!(SstableName::parse("oa-2-big-CRC.db").unwrap().component_kind(), ComponentKind::Crc);
    }

    #[test]
    fn rejects_non_sstable_names_with_a_reason() {
        for bad in [
            "manifest.json",
            "schema.cql",
            "legacy_tables-legacy_ka_simple-ka-1-Data.db",
            "nb_txn_flush_0b8b7d30-1c42-11ef-9d55-7f9d1b9b5a2e.log",
            "NB-1-big-Data.db",
            "nb-x-big-Data.db",
            "nb-12345678901-big-Data.db",
            "nb-3000000000-big-Data.db",
            "nb-1-big-Data",
            "",
        ] {
            let e = SstableName::parse(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn legacy_names_are_reported_as_unsupported_versions() {
        for (name, version) in [
            ("legacy_tables-legacy_ka_simple-ka-1-Data.db", "ka"),
            ("Keyspace1-Standard1-ic-0-Data.db", "ic"),
            ("ks-cf-tmp-jb-12-Index.db", "jb"),
            ("la-1-big-Data.db", "la"),
            ("foo-atable-ka-1-Digest.sha1", "ka"),
        ] {
            match SstableName::parse(name) {
                Err(SstableNameError::Unsupported { version: v, .. }) => assert_eq!(v, version, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
            let msg = SstableName::parse(name).unwrap_err().to_string();
            assert!(msg.contains("upgradesstables") && msg.contains(version), "{msg}");
        }
    }

    #[test]
    fn uuid_ids_decode_to_the_documented_time_and_round_trip() {
        // Research §1.4: verified against Cassandra's own rendering.
        let id = UuidSstableId::decode("3g1m_0nuf_3vj5m2k1125165rxa7").unwrap();
        assert_eq!(id.lsb, 0xa819_e167_be00_2e3f);
        assert_eq!(
            id.created_at().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "2022-12-09T08:35:03.651001000Z"
        );
        assert_eq!(id.unix_micros(), 1_670_574_903_651_001);
        assert_eq!(id.render(), "3g1m_0nuf_3vj5m2k1125165rxa7");
        let uuid = id.to_uuid_string();
        assert_eq!(uuid.as_bytes()[14], b'1', "version 1: {uuid}");
        assert!(uuid.ends_with("-a819-e167be002e3f"), "{uuid}");

        let sid = SstableId::parse("3g1m_0nuf_3vj5m2k1125165rxa7").unwrap();
        assert_eq!(sid.decode_uuid(), Some(id));
        assert_eq!(SstableId::Sequence(7).decode_uuid(), None);

        let made = UuidSstableId::from_unix_nanos(1_670_574_903_651_001_000, 0xa819_e167_be00_2e3f);
        assert_eq!(made, id);
        assert_eq!(SstableId::from_uuid(made).to_string(), "3g1m_0nuf_3vj5m2k1125165rxa7");

        // Out-of-range fields are not ids: seconds-of-day >= 86400.
        assert_eq!(UuidSstableId::decode("3g1m_zzzz_3vj5m2k1125165rxa7"), None);
        assert_eq!(UuidSstableId::decode("3g1m_0nuf_3vj5mzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn ids_order_like_cassandra() {
        let a = UuidSstableId::from_unix_nanos(1_000_000_000_000_000_000, 1);
        let b = UuidSstableId::from_unix_nanos(1_000_000_000_000_000_100, 0);
        let (a, b) = (SstableId::from_uuid(a), SstableId::from_uuid(b));
        assert!(a < b, "time order");
        assert!(SstableId::Sequence(2_000_000_000) < a, "sequence ids sort before UUID ids");
        assert!(SstableId::Sequence(9) < SstableId::Sequence(10));
    }

    #[test]
    fn versions_and_checksums() {
        for (v, f, sums) in [
            ("ma", SstableFormat::Big, false),
            ("me", SstableFormat::Big, false),
            ("na", SstableFormat::Big, true),
            ("nb", SstableFormat::Big, true),
            ("oa", SstableFormat::Big, true),
            ("da", SstableFormat::Bti, true),
        ] {
            assert_eq!(has_metadata_checksums(f, v), sums, "{v}");
            assert_eq!(version_info(f, v).unwrap().metadata_checksums, sums, "{v}");
        }
        assert!(version_info(SstableFormat::Big, "nc").unwrap().pre_release);
        assert!(version_info(SstableFormat::Bti, "nb").is_none());
        let nb = SstableName::parse("nb-1-big-Data.db").unwrap();
        assert!(nb.readable_by('n') && nb.readable_by('o') && !nb.readable_by('m'));
        let oa = SstableName::parse("oa-1-big-Data.db").unwrap();
        assert!(!oa.readable_by('n'));
        let da = SstableName::parse("da-1-bti-Data.db").unwrap();
        assert!(da.readable_by('o') && !da.readable_by('n'));
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet: Vec<char> = "nbdaoig-_+.0123456789abcdefxyzTOCDataé€_".chars().collect();
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let s: String = (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
            let _ = SstableName::parse(&s);
            let _ = SstableId::parse(&s);
            let _ = crate::datadir::TableFile::parse(&s);
            let _ = crate::datadir::FileKind::of(&s);
            let _ = crate::commitlog::CommitLogName::parse(&s);
            let p = std::path::Path::new("x");
            let bytes: Vec<u8> = (0..rng.random_range(0..80)).map(|_| rng.random()).collect();
            let _ = toc::Toc::parse(&bytes, p);
            let _ = digest::Digest::parse(&bytes, p);
            let _ = statistics::Statistics::parse(&bytes, rng.random(), p);
            let _ = crate::commitlog::CommitLogHeader::parse(&bytes, p);
        }
        // A 28-byte id whose multi-byte character straddles a field boundary.
        assert_eq!(UuidSstableId::decode("3g1m_0nuf_3vj5é2k1125165rxa"), None);
    }

    #[test]
    fn be_reader_reports_truncation() {
        let mut r = BeReader::new(&[0, 0, 0, 4, 1]);
        assert_eq!(r.i32().unwrap(), 4);
        let e = r.i64().unwrap_err();
        assert!(e.contains("offset 4") && e.contains("needed 8"), "{e}");
    }
}
