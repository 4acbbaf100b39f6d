//! SSTable file names: `<version>-<id>-<format>-<Component>` (Cassandra 3.0 and later).
//!
//! Examples: `nb-1-big-Data.db`, `da-1-bti-Partitions.db`,
//! `nb-3g1m_0nuf_3vj5m2k1125165rxa7-big-Data.db` (4.1+ UUID-based id), `nb-1-big-SAI+aa+GroupComplete.db`
//! (5.0 SAI). See `shared/research/cassandra-internals.md` §1.3–1.4.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The generation part of an SSTable name.
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

impl SstableId {
    /// Parses a generation as Cassandra does: the UUID form first, then a sequence number.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        let base36 = |r: std::ops::Range<usize>| b[r].iter().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase());
        if b.len() == 28 && b[4] == b'_' && b[9] == b'_' && base36(0..4) && base36(5..9) && base36(10..28) {
            return Some(SstableId::Uuid(s.to_owned()));
        }
        if !s.is_empty() && s.len() <= 10 && b.iter().all(u8::is_ascii_digit) {
            return s.parse().ok().map(SstableId::Sequence);
        }
        None
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

/// A file name that is not a current-form SSTable component name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{name:?} is not an SSTable component name (<version>-<id>-<format>-<Component>, e.g. nb-1-big-Data.db): {reason}"
)]
pub struct SstableNameError {
    /// The rejected file name.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl SstableName {
    /// Parses a component file name (no directories).
    pub fn parse(name: &str) -> Result<Self, SstableNameError> {
        let err = |reason| SstableNameError { name: name.to_owned(), reason };
        let parts: Vec<&str> = name.split('-').collect();
        let [version, id, format, component] = parts[..] else {
            return Err(err("expected exactly four '-'-separated parts"));
        };
        if version.len() != 2 || !version.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(err("the version is two lowercase letters"));
        }
        let id = SstableId::parse(id).ok_or_else(|| err("the id is a number or a 28-character time-UUID id"))?;
        if format.is_empty() || !format.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(err("the format is lowercase letters (big, bti)"));
        }
        let (stem, ext) = component.rsplit_once('.').ok_or_else(|| err("the component has no extension"))?;
        let stem_ok = !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'+');
        if !stem_ok || ext.is_empty() || !ext.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(err("the component is letters, digits, '_' or '+' with an extension"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sequence_uuid_and_sai_names() {
        let n = SstableName::parse("nb-1-big-Data.db").unwrap();
        assert_eq!((n.version.as_str(), &n.id, n.format.as_str()), ("nb", &SstableId::Sequence(1), "big"));
        assert_eq!(n.component, "Data.db");
        assert_eq!(n.sstable_prefix(), "nb-1-big");

        let n = SstableName::parse("nb-3g1m_0nuf_3vj5m2k1125165rxa7-big-Statistics.db").unwrap();
        assert_eq!(n.id, SstableId::Uuid("3g1m_0nuf_3vj5m2k1125165rxa7".into()));

        let n = SstableName::parse("da-12-bti-Partitions.db").unwrap();
        assert_eq!(n.identity().generation, "12");

        let n = SstableName::parse("nb-1-big-SAI+aa+GroupComplete.db").unwrap();
        assert_eq!(n.component, "SAI+aa+GroupComplete.db");
        assert_eq!(SstableName::parse("me-7-big-Digest.crc32").unwrap().component, "Digest.crc32");
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
            "nb-1-big-Data",
        ] {
            let e = SstableName::parse(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
