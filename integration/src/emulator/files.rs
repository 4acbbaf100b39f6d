//! SSTable and commit-log files of emulated nodes: generating them (streamed, with a correct
//! `TOC.txt`, `Digest.crc32` and `Statistics.db`), copying real fixture SSTables under a new
//! generation, listing and hard-linking components.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cassette_common::commitlog::CommitLogHeader;
use cassette_common::sstable::digest::Digest;
use cassette_common::sstable::statistics;
use cassette_common::sstable::toc::Toc;
use cassette_common::sstable::{SstableId, SstableName, UuidSstableId};

use super::state::{Cluster, IndexKind, Table};

/// The fixed components of a generated SSTable, besides Data.db, Statistics.db, Digest.crc32, TOC.txt.
fn index_components(bti: bool) -> &'static [&'static str] {
    if bti {
        &["Partitions.db", "Rows.db", "Filter.db", "CompressionInfo.db"]
    } else {
        &["Index.db", "Summary.db", "Filter.db", "CompressionInfo.db"]
    }
}

/// A fast deterministic byte stream (xorshift64*), so generated SSTables differ in content.
#[derive(Debug)]
pub struct Filler(u64);

impl Filler {
    /// A stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// Fills `buf`.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// What to put into a generated SSTable.
#[derive(Debug, Clone)]
pub struct GenSpec<'a> {
    /// Bytes of Data.db.
    pub data_size: u64,
    /// Content seed.
    pub seed: u64,
    /// Cell timestamps (µs) for Statistics.db.
    pub min_timestamp: i64,
    /// Cell timestamps (µs) for Statistics.db.
    pub max_timestamp: i64,
    /// Partitioner recorded in Statistics.db.
    pub partitioner: &'a str,
    /// Extra per-SSTable components (`SAI+aa+GroupComplete.db`, `SI_idx.db`).
    pub extra_components: Vec<String>,
}

/// Writes a complete generated SSTable `<prefix>-*` into `dir`. Data.db is streamed in 1 MiB
/// blocks and its CRC computed on the way, so large SSTables cost one write pass.
pub fn write_generated(dir: &Path, name: &SstableName, spec: &GenSpec<'_>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let bti = name.format == "bti";
    let file = |c: &str| dir.join(name.sibling(c));
    let mut crc = crc32fast::Hasher::new();
    {
        let path = file("Data.db");
        let f = std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let mut filler = Filler::new(spec.seed);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = spec.data_size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            filler.fill(&mut buf[..n]);
            crc.update(&buf[..n]);
            w.write_all(&buf[..n])?;
            left -= n as u64;
        }
        w.flush()?;
    }
    let mut filler = Filler::new(spec.seed ^ 0x5eed);
    let mut components: Vec<String> = vec!["Data.db".into()];
    for c in index_components(bti).iter().map(|c| c.to_string()).chain(spec.extra_components.iter().cloned()) {
        // Rows.db may be empty in bti (Esop 4.1.2 tripped on that): keep it empty here too.
        let len = if c == "Rows.db" { 0 } else { 16 + (spec.data_size / 64).min(4096) as usize };
        let mut b = vec![0u8; len];
        filler.fill(&mut b);
        std::fs::write(file(&c), &b).with_context(|| format!("write {}", file(&c).display()))?;
        components.push(c);
    }
    let stats = statistics::encode_minimal(
        spec.partitioner,
        name.has_metadata_checksums(),
        spec.min_timestamp,
        spec.max_timestamp,
    );
    std::fs::write(file("Statistics.db"), stats)?;
    std::fs::write(file("Digest.crc32"), Digest(crc.finalize()).render())?;
    components.extend(["Statistics.db".into(), "Digest.crc32".into(), "TOC.txt".into()]);
    std::fs::write(file("TOC.txt"), Toc::new(components).render())?;
    Ok(())
}

/// Copies a real SSTable (`src_dir/<src_prefix>-*`, as listed by its TOC) to `dst_dir` under
/// `dst`'s prefix; the files are made writable (fixtures are read-only). Timestamps in
/// Statistics.db are rewritten when `timestamps` is given.
pub fn copy_sstable(
    src_dir: &Path,
    src_prefix: &str,
    dst_dir: &Path,
    dst: &SstableName,
    timestamps: Option<(i64, i64)>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dst_dir)?;
    let toc_path = src_dir.join(format!("{src_prefix}-TOC.txt"));
    let toc = Toc::read(&toc_path)?;
    for c in toc.components() {
        let from = src_dir.join(format!("{src_prefix}-{c}"));
        if !from.exists() {
            continue;
        }
        let to = dst_dir.join(dst.sibling(c));
        let mut bytes = std::fs::read(&from).with_context(|| format!("read {}", from.display()))?;
        if c == "Statistics.db"
            && let Some((min, max)) = timestamps
        {
            bytes = statistics::rewrite_timestamps(&bytes, dst.has_metadata_checksums(), &from, min, max)?;
        }
        std::fs::write(&to, bytes).with_context(|| format!("write {}", to.display()))?;
    }
    Ok(())
}

/// The component files of `<prefix>-*` present in `dir` (file names, sorted): the components its
/// `TOC.txt` lists that exist, as Cassandra knows them; a directory scan only when there is no
/// readable TOC. Listing by TOC keeps operations on tables with 10,000 SSTables linear.
pub fn component_files(dir: &Path, prefix: &str) -> Vec<String> {
    if let Some(listed) = toc_files(dir, prefix) {
        let mut out: Vec<String> = listed.into_iter().filter(|f| dir.join(f).exists()).collect();
        out.sort();
        return out;
    }
    let want = format!("{prefix}-");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(&want) && SstableName::parse(n).is_ok())
        .collect();
    out.sort();
    out
}

/// The file names `<prefix>-<component>` its readable `TOC.txt` lists, present or not.
fn toc_files(dir: &Path, prefix: &str) -> Option<Vec<String>> {
    let toc = Toc::read(&dir.join(format!("{prefix}-TOC.txt"))).ok()?;
    Some(toc.components().iter().map(|c| format!("{prefix}-{c}")).collect())
}

/// Distinct SSTable prefixes in `dir` (non-recursive), ignoring temporary files.
pub fn sstable_prefixes(dir: &Path) -> Vec<SstableName> {
    let mut seen = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Some(n) = e.file_name().to_str()
            && let Ok(s) = SstableName::parse(n)
        {
            seen.entry(s.sstable_prefix()).or_insert(s);
        }
    }
    seen.into_values().collect()
}

/// Hard-links every component of `prefix` from `from` into `to`, which must exist (callers
/// create it once, not once per SSTable). One `link` per component, as Cassandra does: a
/// component its TOC lists but that is absent, or one already linked, is skipped.
pub fn link_sstable(from: &Path, to: &Path, prefix: &str) -> anyhow::Result<u64> {
    let names = toc_files(from, prefix).unwrap_or_else(|| component_files(from, prefix));
    let mut n = 0;
    for f in names {
        match std::fs::hard_link(from.join(&f), to.join(&f)) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !to.is_dir() => {
                anyhow::bail!("link {} into {}: the directory does not exist", f, to.display())
            }
            // Listed but absent, or linked already.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::AlreadyExists) => {}
            Err(e) => return Err(e).with_context(|| format!("link {} into {}", f, to.display())),
        }
    }
    Ok(n)
}

/// A new SSTable id for a store: a UUID id when enabled (4.1+), else the next sequence number.
pub fn next_id(c: &mut Cluster, node: usize, store: &str, now_ms: i64) -> SstableId {
    let uuid = c.nodes[node].uuid_sstable_ids && c.version >= super::state::Version::V41;
    if uuid {
        let lsb = c.next_seed();
        // Sub-millisecond part from the seed keeps ids of one command distinct and ordered enough.
        let nanos = now_ms as u64 * 1_000_000 + (lsb % 1_000_000) / 100 * 100;
        return SstableId::from_uuid(UuidSstableId::from_unix_nanos(nanos, lsb));
    }
    let n = c.nodes[node].next_sequence.entry(store.to_owned()).or_insert(1);
    let id = *n;
    *n += 1;
    SstableId::Sequence(id as u64)
}

/// The per-SSTable index components a table's indexes add (SAI and SASI).
pub fn extra_components(table: &Table) -> Vec<String> {
    let mut out = Vec::new();
    if table.indexes.iter().any(|i| i.kind == IndexKind::Sai) {
        out.extend([
            "SAI+aa+GroupMeta.db".to_owned(),
            "SAI+aa+GroupComplete.db".to_owned(),
            "SAI+aa+TokenValues.db".to_owned(),
        ]);
    }
    for i in &table.indexes {
        match i.kind {
            IndexKind::Sai => {
                out.push(format!("SAI+aa+{}+Meta.db", i.name));
                out.push(format!("SAI+aa+{}+ColumnComplete.db", i.name));
            }
            IndexKind::Sasi => out.push(format!("SI_{}.db", i.name)),
            IndexKind::Native => {}
        }
    }
    out
}

/// Writes a plain commit-log segment: a valid header followed by zeros up to `size`.
pub fn write_segment(dir: &Path, version: i32, id: i64, size: u64) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let h = CommitLogHeader::plain(version, id);
    let path = dir.join(h.file_name());
    let mut f = std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let header = h.encode();
    f.write_all(&header)?;
    f.set_len(size.max(header.len() as u64))?;
    Ok(path)
}

/// Total size of the regular files under `dir` (recursive); 0 if missing.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => total += dir_size(&e.path()),
            Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => {}
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use cassette_common::sstable::statistics::Statistics;

    #[test]
    fn generated_sstables_verify_for_big_and_bti() {
        let tmp = tempfile::tempdir().unwrap();
        for (n, extra) in
            [("nb-1-big-Data.db", vec![]), ("da-2-bti-Data.db", vec!["SAI+aa+GroupComplete.db".to_owned()])]
        {
            let name = SstableName::parse(n).unwrap();
            let spec = GenSpec {
                data_size: (3 << 20) + 17,
                seed: 42,
                min_timestamp: 10,
                max_timestamp: 20,
                partitioner: "org.apache.cassandra.dht.Murmur3Partitioner",
                extra_components: extra.clone(),
            };
            write_generated(tmp.path(), &name, &spec).unwrap();
            let prefix = name.sstable_prefix();
            let toc = Toc::read(&tmp.path().join(name.sibling("TOC.txt"))).unwrap();
            assert!(toc.missing_in(tmp.path(), &prefix).is_empty());
            assert_eq!(toc.components().len(), component_files(tmp.path(), &prefix).len());
            for e in &extra {
                assert!(toc.contains(e));
            }
            cassette_common::sstable::digest::verify_data_file(
                &tmp.path().join(name.sibling("Digest.crc32")),
                &tmp.path().join(name.sibling("Data.db")),
            )
            .unwrap();
            let s = Statistics::read(&tmp.path().join(name.sibling("Statistics.db"))).unwrap();
            assert_eq!((s.min_timestamp, s.max_timestamp), (10, 20));
        }
        assert_eq!(std::fs::metadata(tmp.path().join("da-2-bti-Rows.db")).unwrap().len(), 0);
    }

    #[test]
    fn segments_have_valid_headers() {
        let tmp = tempfile::tempdir().unwrap();
        let p = write_segment(tmp.path(), 7, 1_700_000_000_001, 4096).unwrap();
        assert_eq!(p.file_name().unwrap(), "CommitLog-7-1700000000001.log");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4096);
        assert_eq!(CommitLogHeader::read(&p).unwrap().id, 1_700_000_000_001);
    }
}
