//! `Statistics.db`: the partitioner and the minimum and maximum cell timestamps of an SSTable
//! (research §5.4). Big-endian throughout.
//!
//! Layout: `int32 count`, [`uint32 CRC32(count)`], `count × (int32 type, int32 offset)`,
//! [`uint32 CRC32(count + table)`], then the components at their offsets. With metadata checksums
//! (big `na`+, bti `da`+: the bracketed parts) the last 4 bytes of each component are the CRC32 of
//! its body. Types: 0 VALIDATION (partitioner, bloom filter fp chance), 1 COMPACTION, 2 STATS
//! (histograms, commit-log upper bound, then min/max timestamp), 3 HEADER.

use std::path::Path;

use super::{BeReader, FileFormatError, SstableName};

const WHAT: &str = "Statistics.db";
const VALIDATION: i32 = 0;
const STATS: i32 = 2;

/// What Cassette reads from a `Statistics.db`.
#[derive(Debug, Clone, PartialEq)]
pub struct Statistics {
    /// The partitioner class (`org.apache.cassandra.dht.Murmur3Partitioner`).
    pub partitioner: String,
    /// Bloom filter false-positive chance.
    pub bloom_filter_fp_chance: f64,
    /// Commit-log position up to which this SSTable holds data: segment id.
    pub commit_log_segment_id: i64,
    /// Commit-log position up to which this SSTable holds data: offset in the segment.
    pub commit_log_position: i32,
    /// Smallest cell write timestamp, conventionally µs since the Unix epoch (`Long.MIN_VALUE` if no cells).
    pub min_timestamp: i64,
    /// Largest cell write timestamp (`Long.MAX_VALUE` if no cells).
    pub max_timestamp: i64,
    /// Whether the file carried (and passed) metadata checksums.
    pub checksummed: bool,
}

/// One metadata component's place in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Component {
    kind: i32,
    offset: usize,
    /// End of the body (excludes the trailing CRC when checksummed).
    body_end: usize,
}

fn table(bytes: &[u8], checksummed: bool, path: &Path) -> Result<Vec<Component>, FileFormatError> {
    let fmt = |reason: String| FileFormatError::format(WHAT, path, reason);
    let mut r = BeReader::new(bytes);
    let count = r.i32().map_err(fmt)?;
    if !(1..=16).contains(&count) {
        return Err(fmt(format!("implausible metadata component count {count} at offset 0")));
    }
    if checksummed {
        let stored = r.u32().map_err(fmt)?;
        check(stored, &bytes[0..4], "Statistics.db component count", path)?;
    }
    let table_start = r.pos();
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let kind = r.i32().map_err(fmt)?;
        let offset = r.i32().map_err(fmt)?;
        entries.push((kind, offset));
    }
    let table_end = r.pos();
    if checksummed {
        let stored = r.u32().map_err(fmt)?;
        let mut covered = bytes[0..4].to_vec();
        covered.extend_from_slice(&bytes[table_start..table_end]);
        check(stored, &covered, "Statistics.db table of contents", path)?;
    }
    let header_end = r.pos();
    let mut out = Vec::with_capacity(entries.len());
    for (i, (kind, offset)) in entries.iter().enumerate() {
        let start =
            usize::try_from(*offset).ok().filter(|o| *o >= header_end && *o <= bytes.len()).ok_or_else(|| {
                fmt(format!(
                    "component {kind} starts at offset {offset}, outside the file ({} bytes) or inside its header",
                    bytes.len()
                ))
            })?;
        let end = match entries.get(i + 1) {
            Some((_, next)) => {
                usize::try_from(*next).ok().filter(|n| *n >= start && *n <= bytes.len()).ok_or_else(|| {
                    fmt(format!("component offsets are not increasing ({offset} then {next}) or beyond the end"))
                })?
            }
            None => bytes.len(),
        };
        let body_end = if checksummed {
            end.checked_sub(4)
                .filter(|e| *e >= start)
                .ok_or_else(|| fmt(format!("component {kind} at offset {offset} is too short for its checksum")))?
        } else {
            end
        };
        if checksummed {
            let mut r = BeReader::at(bytes, body_end);
            let stored = r.u32().map_err(fmt)?;
            check(stored, &bytes[start..body_end], &format!("Statistics.db component {kind}"), path)?;
        }
        out.push(Component { kind: *kind, offset: start, body_end });
    }
    Ok(out)
}

fn check(stored: u32, covered: &[u8], what: &str, path: &Path) -> Result<(), FileFormatError> {
    let computed = crc32fast::hash(covered);
    if stored != computed {
        return Err(FileFormatError::Checksum { what: what.to_owned(), path: path.to_owned(), stored, computed });
    }
    Ok(())
}

/// Offset of `minTimestamp` in the STATS body: after two histograms and the commit-log position.
fn stats_timestamps_offset(bytes: &[u8], c: &Component, path: &Path) -> Result<(usize, i64, i32), FileFormatError> {
    let fmt = |reason: String| FileFormatError::format(WHAT, path, format!("STATS component: {reason}"));
    let body = &bytes[..c.body_end];
    let mut r = BeReader::at(body, c.offset);
    for name in ["partition size", "cells per partition"] {
        let n = r.i32().map_err(fmt)?;
        if !(0..=100_000).contains(&n) {
            return Err(fmt(format!("implausible {name} histogram length {n} at offset {}", r.pos() - 4)));
        }
        r.take(n as usize * 16).map_err(fmt)?;
    }
    let segment = r.i64().map_err(fmt)?;
    let position = r.i32().map_err(fmt)?;
    Ok((r.pos(), segment, position))
}

impl Statistics {
    /// Parses a `Statistics.db`. `checksummed` says whether the version has metadata checksums
    /// ([`SstableName::has_metadata_checksums`]); `path` names the file in errors.
    pub fn parse(bytes: &[u8], checksummed: bool, path: &Path) -> Result<Self, FileFormatError> {
        let fmt = |reason: String| FileFormatError::format(WHAT, path, reason);
        let comps = table(bytes, checksummed, path)?;
        let find = |kind: i32, name: &str| {
            comps.iter().find(|c| c.kind == kind).copied().ok_or_else(|| fmt(format!("has no {name} component")))
        };
        let validation = find(VALIDATION, "VALIDATION")?;
        let mut r = BeReader::at(&bytes[..validation.body_end], validation.offset);
        let len = r.u16().map_err(|e| fmt(format!("VALIDATION component: {e}")))?;
        let partitioner = r.take(len as usize).map_err(|e| fmt(format!("VALIDATION component: {e}")))?;
        // Java's modified UTF-8 equals UTF-8 for class names (no NUL, no supplementary characters).
        let partitioner = std::str::from_utf8(partitioner)
            .map_err(|_| fmt("VALIDATION component: the partitioner name is not UTF-8".into()))?
            .to_owned();
        let bloom_filter_fp_chance = r.f64().map_err(|e| fmt(format!("VALIDATION component: {e}")))?;

        let stats = find(STATS, "STATS")?;
        let (at, commit_log_segment_id, commit_log_position) = stats_timestamps_offset(bytes, &stats, path)?;
        let mut r = BeReader::at(&bytes[..stats.body_end], at);
        let min_timestamp = r.i64().map_err(|e| fmt(format!("STATS component: {e}")))?;
        let max_timestamp = r.i64().map_err(|e| fmt(format!("STATS component: {e}")))?;
        Ok(Self {
            partitioner,
            bloom_filter_fp_chance,
            commit_log_segment_id,
            commit_log_position,
            min_timestamp,
            max_timestamp,
            checksummed,
        })
    }

    /// Reads a `Statistics.db`, taking the checksum layout from its file name
    /// (`nb-1-big-Statistics.db`, …).
    pub fn read(path: &Path) -> Result<Self, FileFormatError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let sstable = SstableName::parse(name)
            .map_err(|e| FileFormatError::format(WHAT, path, format!("cannot tell the SSTable version: {e}")))?;
        let bytes = std::fs::read(path).map_err(|e| FileFormatError::io(path, e))?;
        Self::parse(&bytes, sstable.has_metadata_checksums(), path)
    }

    /// Whether the SSTable holds any cell (Cassandra writes `Long.MIN_VALUE`/`MAX_VALUE` otherwise).
    pub fn has_cells(&self) -> bool {
        !(self.min_timestamp == i64::MIN && self.max_timestamp == i64::MAX)
    }
}

/// Returns a copy of a `Statistics.db` with its min/max timestamps replaced, checksums updated.
/// Used by emulators that reuse real files for SSTables "written" at another time.
pub fn rewrite_timestamps(
    bytes: &[u8],
    checksummed: bool,
    path: &Path,
    min_timestamp: i64,
    max_timestamp: i64,
) -> Result<Vec<u8>, FileFormatError> {
    let comps = table(bytes, checksummed, path)?;
    let stats = comps
        .iter()
        .find(|c| c.kind == STATS)
        .copied()
        .ok_or_else(|| FileFormatError::format(WHAT, path, "has no STATS component"))?;
    let (at, _, _) = stats_timestamps_offset(bytes, &stats, path)?;
    if at + 16 > stats.body_end {
        return Err(FileFormatError::format(WHAT, path, "STATS component ends before its timestamps"));
    }
    let mut out = bytes.to_vec();
    out[at..at + 8].copy_from_slice(&min_timestamp.to_be_bytes());
    out[at + 8..at + 16].copy_from_slice(&max_timestamp.to_be_bytes());
    if checksummed {
        let crc = crc32fast::hash(&out[stats.offset..stats.body_end]);
        out[stats.body_end..stats.body_end + 4].copy_from_slice(&crc.to_be_bytes());
    }
    Ok(out)
}

/// A small but well-formed `Statistics.db` (VALIDATION and STATS components only, empty
/// histograms) with the given values, in the layout of a version with or without metadata
/// checksums. For emulators generating synthetic SSTables: Cassette's reader accepts it;
/// Cassandra would not open such an SSTable.
pub fn encode_minimal(partitioner: &str, checksummed: bool, min_timestamp: i64, max_timestamp: i64) -> Vec<u8> {
    let mut validation = Vec::new();
    let name = partitioner.as_bytes();
    validation.extend_from_slice(&(name.len().min(u16::MAX as usize) as u16).to_be_bytes());
    validation.extend_from_slice(&name[..name.len().min(u16::MAX as usize)]);
    validation.extend_from_slice(&0.01f64.to_be_bytes());
    let mut stats = Vec::new();
    stats.extend_from_slice(&0i32.to_be_bytes());
    stats.extend_from_slice(&0i32.to_be_bytes());
    stats.extend_from_slice(&(-1i64).to_be_bytes());
    stats.extend_from_slice(&0i32.to_be_bytes());
    stats.extend_from_slice(&min_timestamp.to_be_bytes());
    stats.extend_from_slice(&max_timestamp.to_be_bytes());
    let comps = [(VALIDATION, validation), (STATS, stats)];
    let sum = |b: &[u8]| if checksummed { crc32fast::hash(b).to_be_bytes().to_vec() } else { Vec::new() };
    let header_len = 4 + comps.len() * 8 + if checksummed { 8 } else { 0 };
    let mut offsets = Vec::new();
    let mut at = header_len;
    for (_, body) in &comps {
        offsets.push(at);
        at += body.len() + if checksummed { 4 } else { 0 };
    }
    let mut out = Vec::with_capacity(at);
    out.extend_from_slice(&(comps.len() as i32).to_be_bytes());
    out.extend(sum(&out.clone()));
    let mut toc = Vec::new();
    for ((kind, _), off) in comps.iter().zip(&offsets) {
        toc.extend_from_slice(&kind.to_be_bytes());
        toc.extend_from_slice(&(*off as i32).to_be_bytes());
    }
    let mut covered = (comps.len() as i32).to_be_bytes().to_vec();
    covered.extend_from_slice(&toc);
    out.extend_from_slice(&toc);
    out.extend(sum(&covered));
    for (_, body) in &comps {
        out.extend_from_slice(body);
        out.extend(sum(body));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sstable::fixtures;

    /// The oracle table of `shared/fixtures/cassandra-sstables/README.md`.
    const EXPECTED: &[(&str, &str, i64, i64)] = &[
        ("mc", "legacy_mc_simple", 1463658511018000, 1463658512997000),
        ("mc", "legacy_mc_clust", 1463658511032000, 1463658513482000),
        ("me", "legacy_me_simple", 1619005346715000, 1619005346979000),
        ("na", "legacy_na_simple", 1534279385792000, 1534279386049003),
        ("nb", "legacy_nb_simple", 1620986780234000, 1620986780500000),
        ("nb", "legacy_nb_simple_counter", 1620986780237000, 1620986780500001),
        ("nb", "legacy_nb_clust", 1620986780251000, 1620986780539000),
        ("da", "legacy_da_simple", 1689932032210000, 1689932032377002),
        ("da", "legacy_da_simple_counter", 1689932032212000, 1689932032377003),
        ("da", "legacy_da_clust", 1689932032220000, 1689932032404001),
        ("da", "legacy_da_clust_counter", 1689932032221000, 1689932032404002),
    ];

    fn stats_path(dir: &Path, v: &str, table: &str) -> std::path::PathBuf {
        let format = if v == "da" { "bti" } else { "big" };
        dir.join(format!("legacy-sstables/{v}/legacy_tables/{table}/{v}-1-{format}-Statistics.db"))
    }

    #[test]
    fn reads_the_timestamp_table_of_every_fixture() {
        let Some(dir) = fixtures::dir() else { return };
        for (v, table, min, max) in EXPECTED {
            let s = Statistics::read(&stats_path(&dir, v, table)).unwrap();
            assert_eq!((s.min_timestamp, s.max_timestamp), (*min, *max), "{v}/{table}");
            assert_eq!(s.partitioner, "org.apache.cassandra.dht.ByteOrderedPartitioner", "{v}/{table}");
            assert_eq!(s.bloom_filter_fp_chance, 0.01);
            assert_eq!(s.checksummed, *v != "mc" && *v != "me", "{v}");
            assert!(s.has_cells());
        }
        let s = Statistics::read(&stats_path(&dir, "nb", "legacy_nb_simple")).unwrap();
        assert_eq!((s.commit_log_segment_id, s.commit_log_position), (1620986774543, 738380));
    }

    #[test]
    fn a_flipped_byte_breaks_a_checksum_and_names_the_file() {
        let Some(dir) = fixtures::dir() else { return };
        let path = stats_path(&dir, "nb", "legacy_nb_simple");
        let bytes = std::fs::read(&path).unwrap();
        for at in [2usize, 20, 50, 200] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            let e = Statistics::parse(&bad, true, &path).unwrap_err();
            assert!(matches!(e, FileFormatError::Checksum { .. } | FileFormatError::Format { .. }), "{at}: {e}");
            assert!(e.to_string().contains("nb-1-big-Statistics.db"), "{e}");
        }
        // Read with the wrong layout: an error, not garbage and not a panic.
        assert!(Statistics::parse(&bytes, false, &path).is_err());
    }

    #[test]
    fn rewriting_timestamps_keeps_the_file_valid() {
        let Some(dir) = fixtures::dir() else { return };
        for (v, table, _, _) in [EXPECTED[0], EXPECTED[4], EXPECTED[7]] {
            let path = stats_path(&dir, v, table);
            let bytes = std::fs::read(&path).unwrap();
            let sums = v != "mc";
            let out = rewrite_timestamps(&bytes, sums, &path, 1_700_000_000_000_000, 1_700_000_001_000_000).unwrap();
            assert_eq!(out.len(), bytes.len());
            let s = Statistics::parse(&out, sums, &path).unwrap();
            assert_eq!((s.min_timestamp, s.max_timestamp), (1_700_000_000_000_000, 1_700_000_001_000_000));
        }
    }

    #[test]
    fn minimal_files_parse_in_both_layouts() {
        for sums in [false, true] {
            let b = encode_minimal("org.apache.cassandra.dht.Murmur3Partitioner", sums, 10, 20);
            let s = Statistics::parse(&b, sums, Path::new("nb-9-big-Statistics.db")).unwrap();
            assert_eq!((s.min_timestamp, s.max_timestamp, s.checksummed), (10, 20, sums));
            assert_eq!(s.partitioner, "org.apache.cassandra.dht.Murmur3Partitioner");
            let re = rewrite_timestamps(&b, sums, Path::new("x"), 30, 40).unwrap();
            let s = Statistics::parse(&re, sums, Path::new("x")).unwrap();
            assert_eq!((s.min_timestamp, s.max_timestamp), (30, 40));
        }
    }

    #[test]
    fn truncated_and_garbage_inputs_never_panic() {
        let b = encode_minimal("p", true, 1, 2);
        for len in 0..b.len() {
            let e = Statistics::parse(&b[..len], true, Path::new("ks/t/nb-1-big-Statistics.db")).unwrap_err();
            assert!(e.to_string().contains("ks/t/nb-1-big-Statistics.db"), "{e}");
        }
        for garbage in [&[0xffu8; 64][..], &[0u8; 64], b"\x00\x00\x00\x02\x00\x00\x00\x00\x7f\xff\xff\xff"] {
            assert!(Statistics::parse(garbage, false, Path::new("g")).is_err());
            assert!(Statistics::parse(garbage, true, Path::new("g")).is_err());
        }
        let e = Statistics::read(Path::new("/tmp/not-an-sstable.db")).unwrap_err().to_string();
        assert!(e.contains("cannot tell the SSTable version"), "{e}");
    }
}
