//! Commit-log segments: names `CommitLog-<version>-<id>.log` and headers (research §4).
//!
//! Header, big-endian: `int32 version`, `int64 id`, `uint16 paramLen`, `paramLen` bytes of UTF-8
//! JSON parameters (`{}`, compression or encryption settings), `uint32 CRC32` over
//! `[version, (int) id, (int)(id >>> 32), paramLen as int32, params]` (low word of the id first).
//! Versions: 6 = 3.0/3.11, 7 = 4.0/4.1 (and 5.0 in `CASSANDRA_4` mode), 8 = 5.0 with
//! `storage_compatibility_mode: NONE`. Segment ids grow from about the node's start time in ms;
//! order by id = write order.

use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value};

use crate::sstable::{BeReader, FileFormatError};

const WHAT: &str = "commit log segment";

/// Oldest header version Cassette reads (3.0).
pub const MIN_VERSION: i32 = 6;
/// Newest header version Cassette knows (5.0 with `storage_compatibility_mode: NONE`).
pub const MAX_VERSION: i32 = 8;

/// The commit-log header version a Cassandra release writes by default.
pub fn version_for_release(major: u32, minor: u32) -> i32 {
    match (major, minor) {
        (3, _) => 6,
        (4, _) => 7,
        // 5.0 defaults to storage_compatibility_mode CASSANDRA_4, which keeps version 7.
        _ => 7,
    }
}

/// A commit-log file name, `CommitLog-<version>-<id>.log` (or the version-less legacy `CommitLog-<id>.log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitLogName {
    /// The header version in the name; `None` for the legacy form.
    pub version: Option<i32>,
    /// The segment id.
    pub id: i64,
}

impl CommitLogName {
    /// Parses a file name (`CommitLog-((\d+)(-\d+)?)\.log`); `None` if it is not a segment name.
    pub fn parse(name: &str) -> Option<Self> {
        let inner = name.strip_prefix("CommitLog-")?.strip_suffix(".log")?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match inner.split_once('-') {
            Some((v, id)) if digits(v) && digits(id) => {
                Some(Self { version: Some(v.parse().ok()?), id: id.parse().ok()? })
            }
            None if digits(inner) => Some(Self { version: None, id: inner.parse().ok()? }),
            _ => None,
        }
    }

    /// The file name.
    pub fn file_name(&self) -> String {
        match self.version {
            Some(v) => format!("CommitLog-{v}-{}.log", self.id),
            None => format!("CommitLog-{}.log", self.id),
        }
    }

    /// Whether `name` is a CDC index file (`CommitLog-7-<id>_cdc.idx`), which is not a segment.
    pub fn is_cdc_index(name: &str) -> bool {
        name.strip_suffix("_cdc.idx").and_then(|n| Self::parse(&format!("{n}.log"))).is_some()
    }
}

/// A parsed, CRC-checked segment header.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitLogHeader {
    /// Header version (6, 7 or 8).
    pub version: i32,
    /// Segment id.
    pub id: i64,
    /// The parameters JSON object (`{}` for plain segments).
    pub parameters: Map<String, Value>,
    /// The parameters exactly as stored.
    pub raw_parameters: String,
    /// Header length in bytes, including the CRC.
    pub len: usize,
}

impl CommitLogHeader {
    /// A header for a plain (uncompressed, unencrypted) segment.
    pub fn plain(version: i32, id: i64) -> Self {
        Self { version, id, parameters: Map::new(), raw_parameters: "{}".into(), len: 20 }
    }

    /// Parses and CRC-checks the header at the start of `bytes`; `path` names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, FileFormatError> {
        let fmt = |reason: String| FileFormatError::format(WHAT, path, reason);
        let mut r = BeReader::new(bytes);
        let version = r.i32().map_err(fmt)?;
        if version < MIN_VERSION {
            return Err(fmt(format!(
                "header version {version} is a pre-3.0 commit log, which Cassandra 4.0+ cannot replay and Cassette does not read"
            )));
        }
        if version > MAX_VERSION {
            return Err(fmt(format!(
                "header version {version} is newer than the newest Cassette knows ({MAX_VERSION}): upgrade Cassette"
            )));
        }
        let id = r.i64().map_err(fmt)?;
        let param_len = r.u16().map_err(fmt)?;
        let params = r.take(param_len as usize).map_err(fmt)?;
        let stored = r.u32().map_err(fmt)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&version.to_be_bytes());
        crc.update(&((id & 0xffff_ffff) as i32).to_be_bytes());
        crc.update(&((id >> 32) as i32).to_be_bytes());
        crc.update(&(param_len as i32).to_be_bytes());
        crc.update(params);
        let computed = crc.finalize();
        if stored != computed {
            return Err(FileFormatError::Checksum {
                what: "commit log header CRC".into(),
                path: path.to_owned(),
                stored,
                computed,
            });
        }
        let raw = std::str::from_utf8(params).map_err(|_| fmt("the header parameters are not UTF-8".into()))?;
        let parameters = match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(fmt(format!("the header parameters {raw:?} are not a JSON object"))),
            Err(e) => return Err(fmt(format!("the header parameters are not JSON ({e})"))),
        };
        Ok(Self { version, id, parameters, raw_parameters: raw.to_owned(), len: r.pos() })
    }

    /// Reads the header of a segment file and checks that it agrees with the file name, as
    /// Cassandra does before replaying or restoring a segment.
    pub fn read(path: &Path) -> Result<Self, FileFormatError> {
        let mut f = std::fs::File::open(path).map_err(|e| FileFormatError::io(path, e))?;
        let mut head = Vec::with_capacity(4096);
        (&mut f)
            .take(4 + 8 + 2 + u16::MAX as u64 + 4)
            .read_to_end(&mut head)
            .map_err(|e| FileFormatError::io(path, e))?;
        let h = Self::parse(&head, path)?;
        if let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(CommitLogName::parse)
            && (name.id != h.id || name.version.is_some_and(|v| v != h.version))
        {
            return Err(FileFormatError::format(
                WHAT,
                path,
                format!(
                    "the name says version {:?} id {} but the header says version {} id {}",
                    name.version, name.id, h.version, h.id
                ),
            ));
        }
        Ok(h)
    }

    /// The header bytes (with CRC).
    pub fn encode(&self) -> Vec<u8> {
        let params = self.raw_parameters.as_bytes();
        let len = params.len().min(u16::MAX as usize);
        let params = &params[..len];
        let mut out = Vec::with_capacity(18 + len);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(params);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.version.to_be_bytes());
        crc.update(&((self.id & 0xffff_ffff) as i32).to_be_bytes());
        crc.update(&((self.id >> 32) as i32).to_be_bytes());
        crc.update(&(len as i32).to_be_bytes());
        crc.update(params);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
        out
    }

    /// The canonical file name of this segment.
    pub fn file_name(&self) -> String {
        CommitLogName { version: Some(self.version), id: self.id }.file_name()
    }

    /// The compressor class, if the segment is compressed.
    pub fn compression_class(&self) -> Option<&str> {
        self.parameters.get("compressionClass").and_then(Value::as_str)
    }

    /// The cipher, if the segment is encrypted.
    pub fn encryption_cipher(&self) -> Option<&str> {
        self.parameters.get("encCipher").and_then(Value::as_str)
    }

    /// The key alias, if the segment is encrypted.
    pub fn encryption_key_alias(&self) -> Option<&str> {
        self.parameters.get("encKeyAlias").and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sstable::fixtures;

    #[test]
    fn names() {
        assert_eq!(
            CommitLogName::parse("CommitLog-7-1699285478684.log"),
            Some(CommitLogName { version: Some(7), id: 1699285478684 })
        );
        assert_eq!(
            CommitLogName::parse("CommitLog-1480001790339.log"),
            Some(CommitLogName { version: None, id: 1480001790339 })
        );
        for bad in [
            "CommitLog-7-.log",
            "CommitLog-x-1.log",
            "CommitLog-7-1.log.tmp",
            "commitlog-7-1.log",
            "CommitLog-7-1-2.log",
        ] {
            assert_eq!(CommitLogName::parse(bad), None, "{bad}");
        }
        assert_eq!(CommitLogName { version: Some(8), id: 5 }.file_name(), "CommitLog-8-5.log");
        assert!(CommitLogName::is_cdc_index("CommitLog-7-1699285478684_cdc.idx"));
        assert!(!CommitLogName::is_cdc_index("CommitLog-7-1699285478684.log"));
    }

    #[test]
    fn reads_the_v7_fixture() {
        let Some(dir) = fixtures::dir() else { return };
        let p = dir.join("legacy-commitlog/4.0.11-encrypted/CommitLog-7-1699285478684.log");
        let h = CommitLogHeader::read(&p).unwrap();
        assert_eq!((h.version, h.id, h.len), (7, 1699285478684, 20));
        assert!(h.parameters.is_empty());
        assert_eq!(h.compression_class(), None);
        assert_eq!(h.encryption_cipher(), None);
        assert_eq!(h.encode(), std::fs::read(&p).unwrap()[..20]);
    }

    #[test]
    fn reads_the_encrypted_v6_fixture() {
        let Some(dir) = fixtures::dir() else { return };
        let p = dir.join("legacy-commitlog/3.4-encrypted/CommitLog-6-1480001790339.log");
        let h = CommitLogHeader::read(&p).unwrap();
        assert_eq!((h.version, h.id), (6, 1480001790339));
        assert_eq!(h.encryption_cipher(), Some("AES/CBC/PKCS5Padding"));
        assert_eq!(h.encryption_key_alias(), Some("testing:1"));
        assert_eq!(h.parameters["encIV"], "c7ce204097b87d3004f91505f46c716e");
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(h.encode(), bytes[..h.len]);
    }

    #[test]
    fn damaged_headers_fail_the_crc_and_name_the_file() {
        let Some(dir) = fixtures::dir() else { return };
        let p = dir.join("legacy-commitlog/4.0.11-encrypted/CommitLog-7-1699285478684.log");
        let bytes = std::fs::read(&p).unwrap();
        for at in [5usize, 12, 15, 17] {
            let mut bad = bytes[..64].to_vec();
            bad[at] ^= 1;
            let e = CommitLogHeader::parse(&bad, &p).unwrap_err().to_string();
            assert!(e.contains("CommitLog-7-1699285478684.log"), "{e}");
        }
    }

    #[test]
    fn versions_round_trip_and_out_of_range_versions_are_refused() {
        for v in 6..=8 {
            let h = CommitLogHeader::plain(v, 1_700_000_000_123);
            let b = h.encode();
            assert_eq!(b.len(), 20);
            assert_eq!(CommitLogHeader::parse(&b, Path::new("x")).unwrap(), h);
        }
        let mut h = CommitLogHeader::plain(7, 42);
        h.raw_parameters =
            r#"{"compressionParameters":{"chunk_length_in_kb":"64"},"compressionClass":"LZ4Compressor"}"#.into();
        let back = CommitLogHeader::parse(&h.encode(), Path::new("x")).unwrap();
        assert_eq!(back.compression_class(), Some("LZ4Compressor"));

        let e = CommitLogHeader::parse(&CommitLogHeader::plain(5, 1).encode(), Path::new("old.log")).unwrap_err();
        assert!(e.to_string().contains("pre-3.0"), "{e}");
        let e = CommitLogHeader::parse(&CommitLogHeader::plain(9, 1).encode(), Path::new("new.log")).unwrap_err();
        assert!(e.to_string().contains("upgrade Cassette"), "{e}");
        let mut bad = CommitLogHeader::plain(7, 1);
        bad.raw_parameters = "[1]".into();
        assert!(CommitLogHeader::parse(&bad.encode(), Path::new("x")).is_err());
        for len in 0..20 {
            assert!(CommitLogHeader::parse(&CommitLogHeader::plain(7, 1).encode()[..len], Path::new("x")).is_err());
        }
    }

    #[test]
    fn name_and_header_must_agree() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("CommitLog-7-100.log");
        std::fs::write(&p, CommitLogHeader::plain(7, 101).encode()).unwrap();
        let e = CommitLogHeader::read(&p).unwrap_err().to_string();
        assert!(e.contains("id 100") && e.contains("id 101"), "{e}");
        // Archived copies may carry any name: then only the header counts.
        let p = tmp.path().join("segment.archived");
        std::fs::write(&p, CommitLogHeader::plain(7, 101).encode()).unwrap();
        assert_eq!(CommitLogHeader::read(&p).unwrap().id, 101);
    }
}
