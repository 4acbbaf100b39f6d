//! Newtypes for the identifiers that cross crate and process boundaries.
//!
//! Every id validates on construction (`FromStr`), serializes as a plain string and prints the
//! same string, so ids in JSON output, object keys and error messages always match.

use std::fmt;
use std::str::FromStr;

use chrono::Timelike;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An id that did not parse: names the kind of id, the rejected text and what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason} (example: {example})")]
pub struct IdError {
    /// Which id was being parsed ("blob hash", "backup id", ...).
    pub kind: &'static str,
    /// The rejected input (truncated to 80 characters).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
    /// A valid example of this kind of id.
    pub example: &'static str,
}

impl IdError {
    fn new(kind: &'static str, value: &str, reason: &'static str, example: &'static str) -> Self {
        Self { kind, value: value.chars().take(80).collect(), reason, example }
    }
}

macro_rules! string_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// The SHA-256 of a file's content: the name of its blob in the remote layout.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash([u8; 32]);

impl BlobHash {
    const EXAMPLE: &'static str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex characters, for log lines and progress bars.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl FromStr for BlobHash {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| IdError::new("blob hash", s, reason, Self::EXAMPLE);
        if s.len() != 64 {
            return Err(err("a SHA-256 hash is 64 hex characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(err("only lowercase hex digits are allowed"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| err("not hex"))?;
        Ok(Self(out))
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", self.short())
    }
}
string_serde!(BlobHash);

/// Identifies one backup (of a node or of a whole cluster).
///
/// Format `YYYYMMDDTHHMMSSZ-xxxxxxxx`: the UTC start time and 8 random hex digits. Ids therefore
/// sort by start time as strings, which keeps object listings in time order.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupId(String);

impl BackupId {
    const EXAMPLE: &'static str = "20261123T214100Z-3fa9c2d1";

    /// A fresh id for a backup that starts at `at`.
    pub fn generate(at: chrono::DateTime<chrono::Utc>) -> Self {
        let suffix: u32 = rand::random();
        Self(format!("{}-{suffix:08x}", at.format("%Y%m%dT%H%M%SZ")))
    }

    /// A fresh id for a backup that starts at `at` and sorts after `after` (the newest existing
    /// id of the same node): two backups started within one second still sort in start order,
    /// so "the newest backup" is never a coin toss. If `after` is from a later second (a clock
    /// that went back), its second is used.
    pub fn generate_after(at: chrono::DateTime<chrono::Utc>, after: Option<&BackupId>) -> Self {
        let Some(prev) = after else { return Self::generate(at) };
        let at = at.with_nanosecond(0).unwrap_or(at);
        let prev_at = prev.started_at();
        if prev_at < at {
            return Self::generate(at);
        }
        let prev_suffix = u32::from_str_radix(&prev.0[17..], 16).unwrap_or(u32::MAX);
        if prev_suffix == u32::MAX {
            return Self::generate(prev_at + chrono::Duration::seconds(1));
        }
        let suffix = rand::random_range(prev_suffix + 1..=u32::MAX);
        Self(format!("{}-{suffix:08x}", prev_at.format("%Y%m%dT%H%M%SZ")))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The start time encoded in the id.
    pub fn started_at(&self) -> chrono::DateTime<chrono::Utc> {
        // Validated in `from_str`, so parsing cannot fail here; fall back to the epoch regardless.
        chrono::NaiveDateTime::parse_from_str(&self.0[..16], "%Y%m%dT%H%M%SZ").map(|t| t.and_utc()).unwrap_or_default()
    }
}

impl FromStr for BackupId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| IdError::new("backup id", s, reason, Self::EXAMPLE);
        let (time, suffix) = s.split_once('-').ok_or_else(|| err("expected <UTC time>-<8 hex digits>"))?;
        if time.len() != 16 || chrono::NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%SZ").is_err() {
            return Err(err("the time part must be YYYYMMDDTHHMMSSZ"));
        }
        if suffix.len() != 8 || !suffix.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(err("the suffix must be 8 lowercase hex digits"));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupId({})", self.0)
    }
}
string_serde!(BackupId);

/// A Cassandra host id (`nodetool info` "ID", `system.local.host_id`): a UUID, stored lowercase.
///
/// Nodes are keyed by host id, never by hostname or address, so a renamed or re-addressed host
/// keeps its backups.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(String);

impl HostId {
    const EXAMPLE: &'static str = "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3";

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HostId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let groups: Vec<&str> = s.split('-').collect();
        let ok = groups.len() == 5
            && groups
                .iter()
                .zip([8, 4, 4, 4, 12])
                .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(IdError::new("host id", s, "a host id is a UUID (8-4-4-4-12 hex digits)", Self::EXAMPLE));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostId({})", self.0)
    }
}
string_serde!(HostId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_hash_round_trips_and_rejects_bad_text() {
        let h: BlobHash = BlobHash::EXAMPLE.parse().unwrap();
        assert_eq!(h.to_string(), BlobHash::EXAMPLE);
        assert_eq!(h.short(), "e3b0c44298fc");
        assert_eq!(serde_json::to_string(&h).unwrap(), format!("\"{}\"", BlobHash::EXAMPLE));
        let back: BlobHash = serde_json::from_str(&format!("\"{}\"", BlobHash::EXAMPLE)).unwrap();
        assert_eq!(back, h);
        let upper = BlobHash::EXAMPLE.to_ascii_uppercase();
        let e = upper.parse::<BlobHash>().unwrap_err();
        assert!(e.to_string().contains("lowercase"), "{e}");
        let e = "abc".parse::<BlobHash>().unwrap_err();
        assert!(e.to_string().contains("64 hex characters"), "{e}");
        assert!(e.to_string().contains("example:"), "{e}");
    }

    #[test]
    fn backup_ids_sort_by_time_and_validate() {
        let t1 = chrono::DateTime::parse_from_rfc3339("2026-11-23T21:41:00Z").unwrap().to_utc();
        let t2 = chrono::DateTime::parse_from_rfc3339("2026-11-24T01:00:00Z").unwrap().to_utc();
        let a = BackupId::generate(t1);
        let b = BackupId::generate(t2);
        assert!(a < b);
        assert!(a.as_str().starts_with("20261123T214100Z-"));
        assert_eq!(a.started_at(), t1);
        assert_eq!(a.as_str().parse::<BackupId>().unwrap(), a);
        for bad in
            ["", "20261123T214100Z", "2026-11-23-3fa9c2d1", "20261123T214100Z-3FA9C2D1", "20261399T214100Z-3fa9c2d1"]
        {
            assert!(bad.parse::<BackupId>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn ids_generated_after_another_sort_after_it() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-23T21:41:00.5Z").unwrap().to_utc();
        let mut prev = BackupId::generate(t);
        for _ in 0..200 {
            let next = BackupId::generate_after(t, Some(&prev));
            assert!(next > prev, "{next} after {prev}");
            assert!(next.as_str().parse::<BackupId>().is_ok());
            prev = next;
        }
        let full: BackupId = "20261123T214100Z-ffffffff".parse().unwrap();
        let next = BackupId::generate_after(t, Some(&full));
        assert!(next.as_str().starts_with("20261123T214101Z-"), "{next}");
        let later: BackupId = "20261123T214500Z-00000001".parse().unwrap();
        assert!(BackupId::generate_after(t, Some(&later)) > later, "a clock that went back");
        let earlier: BackupId = "20261123T200000Z-ffffffff".parse().unwrap();
        assert!(BackupId::generate_after(t, Some(&earlier)).as_str().starts_with("20261123T214100Z-"));
    }

    #[test]
    fn host_ids_are_uuids_normalized_to_lowercase() {
        let h: HostId = "1B1C2CE9-E5AB-4B1E-A2CF-0F5CD9F8B1C3".parse().unwrap();
        assert_eq!(h.as_str(), "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3");
        assert!("node1.example.com".parse::<HostId>().is_err());
        assert!("1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c".parse::<HostId>().is_err());
    }
}
