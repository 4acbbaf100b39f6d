//! The hash cache: a file's SHA-256, computed once and remembered across backups.
//!
//! SSTables never change once written and snapshot files are hard links to them, so the hash of
//! an inode stays valid as long as the inode holds the same bytes. Entries are keyed by
//! (device, inode, size, mtime with nanoseconds): a rewrite changes the mtime or size, a new file
//! gets a new inode or mtime. A second backup of an unchanged node therefore reads no data file.
//!
//! Why not ctime, too: `link(2)` and `unlink(2)` update the ctime of the inode, so every snapshot
//! (hard links in) and every snapshot cleanup (links out) changes the ctime of every live SSTable.
//! A ctime-keyed cache would miss on every backup. The ctime is still stored, and
//! [`HashCacheConfig::strict_ctime`] turns it into part of the key for file systems where
//! mtime cannot be trusted. Blobs are also protected independently: every byte uploaded is hashed
//! on the way and the upload is abandoned if it does not match the cached hash.
//!
//! The file holds fixed-size records, each with its own CRC32, behind a small header. Loading
//! skips damaged records (and ignores a torn tail), so a damaged file costs re-hashing only the
//! files whose records were lost; the next save rewrites the file whole (temp file, fsync,
//! rename). The cache is bounded: least recently used entries go first.
//!
//! The file is read on the first lookup, not when the cache is opened. An operation that only
//! inserts (a restore's downloads) keeps its new entries in a list and appends them to the file
//! as records, so it never holds the node's whole cache in memory; when the file is read later,
//! the newer record of a file wins. An upload that is done lets go of the entries it read
//! ([`HashCache::release`]): the next lookup reads the file again.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cassette_common::ids::BlobHash;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"CSHC";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
/// dev, ino, size, mtime_s, mtime_ns, ctime_s, ctime_ns, last_used, hash, crc32.
const RECORD_LEN: usize = 8 + 8 + 8 + 8 + 4 + 8 + 4 + 4 + 32 + 4;
/// Inserts kept in memory before a cache whose file was not read appends them (about 700 KB).
const PENDING_BATCH: usize = 8192;

/// Configuration of the hash cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashCacheConfig {
    /// Where the cache is kept. In memory only when unset.
    pub path: Option<PathBuf>,
    /// Most entries kept; about 90 bytes each in memory. A node with 10,000 SSTables has about 80,000 files.
    pub max_entries: usize,
    /// Also require an unchanged ctime. Off by default because snapshots change the ctime of
    /// every SSTable (see the module documentation).
    pub strict_ctime: bool,
}

impl Default for HashCacheConfig {
    fn default() -> Self {
        Self { path: None, max_entries: 500_000, strict_ctime: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_s: i64,
    mtime_ns: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    ctime_s: i64,
    ctime_ns: u32,
    last_used: u32,
    hash: BlobHash,
}

impl FileKey {
    fn of(m: &Metadata) -> Self {
        Self { dev: m.dev(), ino: m.ino(), size: m.size(), mtime_s: m.mtime(), mtime_ns: m.mtime_nsec() as u32 }
    }
}

/// Counters, for progress and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HashCacheStats {
    /// Entries in memory.
    pub entries: usize,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that needed hashing.
    pub misses: u64,
    /// Records dropped while loading because they were damaged.
    pub damaged_records: u64,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<FileKey, Entry>,
    /// Whether the file was read into `map` (always, without a file).
    loaded: bool,
    /// Inserts made before the file was read, oldest first.
    pending: Vec<(FileKey, Entry)>,
    dirty: bool,
    stats: HashCacheStats,
    last_save: Option<Instant>,
}

impl Inner {
    fn count(&mut self) {
        self.stats.entries = self.map.len() + self.pending.len();
    }
}

/// A persistent map from file identity to SHA-256.
#[derive(Debug)]
pub struct HashCache {
    cfg: HashCacheConfig,
    inner: Mutex<Inner>,
    /// Held for a whole save: saves share one temporary file name.
    saving: Mutex<()>,
}

fn now_secs() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)).unwrap_or(0)
}

impl HashCache {
    /// An empty cache that lives in memory only.
    pub fn in_memory() -> Self {
        Self::open(HashCacheConfig::default())
    }

    /// The cache kept in `cfg.path`. Never fails, and reads nothing yet: the file is read on
    /// the first lookup. A missing file means an empty cache, a damaged one keeps its good
    /// records and is rewritten at the next save.
    pub fn open(cfg: HashCacheConfig) -> Self {
        let inner = Inner { loaded: cfg.path.is_none(), ..Inner::default() };
        Self { cfg, inner: Mutex::new(inner), saving: Mutex::new(()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (every mutation is a single
        // insert or remove), so a poisoned lock is safe to use.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The lock, with the file read into the map (once).
    fn loaded(&self) -> std::sync::MutexGuard<'_, Inner> {
        let mut inner = self.lock();
        if !inner.loaded {
            if let Some(path) = &self.cfg.path {
                read_file(path, &mut inner);
            }
            let pending = std::mem::take(&mut inner.pending);
            inner.map.extend(pending);
            inner.loaded = true;
            if inner.map.len() > self.cfg.max_entries {
                evict(&mut inner.map, self.cfg.max_entries);
            }
            inner.count();
        }
        inner
    }

    /// The cached hash of the file described by `meta`, if it is known and still valid.
    pub fn lookup(&self, meta: &Metadata) -> Option<BlobHash> {
        let key = FileKey::of(meta);
        let strict = self.cfg.strict_ctime;
        let mut inner = self.loaded();
        let found = match inner.map.get_mut(&key) {
            Some(e) if !strict || (e.ctime_s == meta.ctime() && e.ctime_ns == meta.ctime_nsec() as u32) => {
                e.last_used = now_secs();
                Some(e.hash)
            }
            _ => None,
        };
        match found {
            Some(_) => inner.stats.hits += 1,
            None => inner.stats.misses += 1,
        }
        inner.dirty |= found.is_some();
        found
    }

    /// Remembers that the file described by `meta` hashes to `hash`.
    pub fn insert(&self, meta: &Metadata, hash: BlobHash) {
        let entry = Entry { ctime_s: meta.ctime(), ctime_ns: meta.ctime_nsec() as u32, last_used: now_secs(), hash };
        let mut inner = self.lock();
        if inner.loaded {
            inner.map.insert(FileKey::of(meta), entry);
            if inner.map.len() > self.cfg.max_entries {
                evict(&mut inner.map, self.cfg.max_entries);
            }
        } else {
            inner.pending.push((FileKey::of(meta), entry));
            // A long restore appends as it goes (the final save makes it durable), so the
            // list stays small.
            if inner.pending.len() >= PENDING_BATCH
                && let Some(path) = &self.cfg.path
                && let Ok(Some(file)) = appendable(path, self.append_limit(inner.pending.len()))
                && append(file, &inner.pending, false).is_ok()
            {
                inner.pending.clear();
            }
        }
        inner.dirty = true;
        inner.count();
    }

    /// Makes room for `additional` inserts at once, when the file has been read (an upload that is
    /// about to hash that many files): one allocation of the final size instead of growing by
    /// doubling, which holds the old and the new table together at each step.
    pub fn reserve(&self, additional: usize) {
        let mut inner = self.lock();
        if inner.loaded {
            let room = self.cfg.max_entries.saturating_sub(inner.map.len());
            inner.map.reserve(additional.min(room));
        }
    }

    /// Most records the file may hold before `adding` more are appended to it rather than the
    /// whole cache rewritten (which evicts).
    fn append_limit(&self, adding: usize) -> usize {
        (self.cfg.max_entries + self.cfg.max_entries / 2).saturating_sub(adding)
    }

    /// Forgets the file described by `meta` (its content turned out to differ).
    pub fn remove(&self, meta: &Metadata) {
        let mut inner = self.loaded();
        if inner.map.remove(&FileKey::of(meta)).is_some() {
            inner.dirty = true;
        }
        inner.count();
    }

    /// Counters since the cache was opened (reads the file if it was not yet).
    pub fn stats(&self) -> HashCacheStats {
        self.loaded().stats
    }

    /// Writes the cache to its file if anything changed: temp file, fsync, rename, so a crash
    /// leaves either the old or the new file. A cache whose file was never read appends its new
    /// records to the file instead (then fsync), unless the file is missing, damaged or holds
    /// more than half again `max_entries` records: then it is read and rewritten whole.
    ///
    /// The records are streamed to the temporary file under the lock (a few milliseconds for
    /// 100,000 entries) rather than copied into memory first; the fsync runs outside it.
    pub fn save(&self) -> io::Result<()> {
        let Some(path) = &self.cfg.path else { return Ok(()) };
        let _saving = self.saving.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(());
            }
            if !inner.loaded
                && let Some(file) = appendable(path, self.append_limit(inner.pending.len()))?
            {
                let r = append(file, &inner.pending, true);
                if r.is_ok() {
                    inner.pending = Vec::new();
                    inner.dirty = false;
                    inner.last_save = Some(Instant::now());
                }
                return r;
            }
        }
        let result = write_atomically(path, |f| {
            let mut inner = self.loaded();
            if !inner.dirty {
                return Ok(false);
            }
            serialize(&inner.map, &mut io::BufWriter::with_capacity(256 << 10, f))?;
            inner.dirty = false;
            inner.last_save = Some(Instant::now());
            Ok(true)
        });
        if result.is_err() {
            self.lock().dirty = true;
        }
        result
    }

    /// Saves the cache and lets go of the entries held in memory: the file is read again on the
    /// next lookup. For the end of an upload, so that what follows (a backup's manifest) and an
    /// idle agent do not hold the node's whole cache (about 90 bytes per file). A cache without
    /// a file keeps its entries (they exist nowhere else), and so does one changed by another
    /// operation since the save.
    pub fn release(&self) -> io::Result<()> {
        if self.cfg.path.is_none() {
            return Ok(());
        }
        self.save()?;
        let mut inner = self.lock();
        if inner.loaded && !inner.dirty {
            inner.map = HashMap::new();
            inner.loaded = false;
            inner.count();
        }
        Ok(())
    }

    /// [`save`](Self::save), but at most once per `interval`: for long operations that want to
    /// keep their hashing work across a crash without rewriting the file constantly.
    pub fn save_if_due(&self, interval: Duration) -> io::Result<()> {
        let due = self.lock().last_save.is_none_or(|t| t.elapsed() >= interval);
        if due { self.save() } else { Ok(()) }
    }
}

/// Drops the least recently used entries down to 90 % of `max`.
fn evict(map: &mut HashMap<FileKey, Entry>, max: usize) {
    let keep = max - max / 10;
    let excess = map.len().saturating_sub(keep);
    if excess == 0 {
        return;
    }
    let mut by_age: Vec<(u32, FileKey)> = map.iter().map(|(k, e)| (e.last_used, *k)).collect();
    by_age.select_nth_unstable_by_key(excess - 1, |(t, _)| *t);
    for (_, k) in &by_age[..excess] {
        map.remove(k);
    }
}

fn header() -> [u8; HEADER_LEN] {
    let mut head = [0u8; HEADER_LEN];
    head[..4].copy_from_slice(MAGIC);
    head[4..8].copy_from_slice(&VERSION.to_le_bytes());
    head[8..12].copy_from_slice(&(RECORD_LEN as u32).to_le_bytes());
    head
}

fn header_ok(head: &[u8]) -> bool {
    head.len() >= HEADER_LEN && head[..12] == header()[..12]
}

/// The cache file opened for appending records, if it can take them: its header is good, it
/// ends on a record boundary and holds at most `max_records`. A missing file is created with
/// its header.
fn appendable(path: &Path, max_records: usize) -> io::Result<Option<File>> {
    use std::io::Read;
    let mut f = match std::fs::OpenOptions::new().read(true).append(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = match std::fs::OpenOptions::new().read(true).append(true).create_new(true).open(path) {
                Ok(f) => f,
                // Created meanwhile: a full rewrite sorts it out.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
                Err(e) => return Err(e),
            };
            f.write_all(&header())?;
            return Ok(Some(f));
        }
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len() as usize;
    let mut head = [0u8; HEADER_LEN];
    let whole = len >= HEADER_LEN && (len - HEADER_LEN).is_multiple_of(RECORD_LEN);
    if !whole || (len - HEADER_LEN) / RECORD_LEN > max_records || f.read_exact(&mut head).is_err() || !header_ok(&head)
    {
        return Ok(None);
    }
    Ok(Some(f))
}

/// Appends whole records; with `sync`, the file's data (including earlier appends) is flushed.
fn append(file: File, records: &[(FileKey, Entry)], sync: bool) -> io::Result<()> {
    write_records(records.iter().map(|(k, e)| (k, e)), &mut io::BufWriter::with_capacity(256 << 10, &file))?;
    if sync { file.sync_data() } else { Ok(()) }
}

fn write_records<'a>(records: impl Iterator<Item = (&'a FileKey, &'a Entry)>, out: &mut impl Write) -> io::Result<()> {
    let mut rec = Vec::with_capacity(RECORD_LEN);
    for (k, e) in records {
        encode(k, e, &mut rec);
        out.write_all(&rec)?;
    }
    out.flush()
}

/// Reads the cache file into `inner.map`, record by record (the file is not held in memory).
fn read_file(path: &Path, inner: &mut Inner) {
    use std::io::Read;
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the hash cache; starting empty");
            inner.dirty = true;
            return;
        }
    };
    let len = f.metadata().map(|m| m.len() as usize).unwrap_or(0);
    let mut head = [0u8; HEADER_LEN];
    if f.read_exact(&mut head).is_err() || !header_ok(&head) {
        tracing::warn!(path = %path.display(), "hash cache file has an unknown or damaged header; starting empty (hashes will be recomputed)");
        inner.dirty = true;
        return;
    }
    inner.map.reserve(len.saturating_sub(HEADER_LEN) / RECORD_LEN + inner.pending.len());
    let mut damaged = 0u64;
    let mut reader = io::BufReader::with_capacity(RECORD_LEN * 4096, f);
    let mut rec = [0u8; RECORD_LEN];
    loop {
        match read_full(&mut reader, &mut rec) {
            Ok(0) => break,
            Ok(RECORD_LEN) => match decode(&rec) {
                Some((key, entry)) => {
                    inner.map.insert(key, entry);
                }
                None => damaged += 1,
            },
            Ok(_) => {
                damaged += 1; // torn tail
                break;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "reading the hash cache failed; keeping what was read");
                inner.dirty = true;
                break;
            }
        }
    }
    if damaged > 0 {
        tracing::warn!(path = %path.display(), damaged, "hash cache file had damaged records; they were dropped and the file will be rewritten");
        inner.dirty = true;
    }
    inner.stats.damaged_records = damaged;
}

/// Reads until `buf` is full or the end of the file; returns how many bytes were read.
fn read_full(r: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// One record, if its CRC matches.
fn decode(rec: &[u8]) -> Option<(FileKey, Entry)> {
    let (data, crc) = rec.split_at(RECORD_LEN - 4);
    if crc32fast::hash(data).to_le_bytes() != crc {
        return None;
    }
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap_or_default());
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap_or_default());
    let key =
        FileKey { dev: u64_at(0), ino: u64_at(8), size: u64_at(16), mtime_s: u64_at(24) as i64, mtime_ns: u32_at(32) };
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&data[52..84]);
    let entry = Entry {
        ctime_s: u64_at(36) as i64,
        ctime_ns: u32_at(44),
        last_used: u32_at(48),
        hash: BlobHash::from_bytes(hash),
    };
    Some((key, entry))
}

fn encode(k: &FileKey, e: &Entry, rec: &mut Vec<u8>) {
    rec.clear();
    rec.extend_from_slice(&k.dev.to_le_bytes());
    rec.extend_from_slice(&k.ino.to_le_bytes());
    rec.extend_from_slice(&k.size.to_le_bytes());
    rec.extend_from_slice(&k.mtime_s.to_le_bytes());
    rec.extend_from_slice(&k.mtime_ns.to_le_bytes());
    rec.extend_from_slice(&e.ctime_s.to_le_bytes());
    rec.extend_from_slice(&e.ctime_ns.to_le_bytes());
    rec.extend_from_slice(&e.last_used.to_le_bytes());
    rec.extend_from_slice(e.hash.as_bytes());
    let crc = crc32fast::hash(rec);
    rec.extend_from_slice(&crc.to_le_bytes());
}

fn serialize(map: &HashMap<FileKey, Entry>, out: &mut impl Write) -> io::Result<()> {
    out.write_all(&header())?;
    write_records(map.iter(), out)
}

/// Writes a temporary file with `fill` (which says whether there was anything to write), then
/// fsync, rename over `path`, fsync of the directory: a crash leaves the old or the new file.
fn write_atomically(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<bool>) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("hashcache"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        if !fill(&mut f)? {
            drop(f);
            return std::fs::remove_file(&tmp);
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use cassette_common::hash::sha256;

    fn cfg(path: &Path) -> HashCacheConfig {
        HashCacheConfig { path: Some(path.to_owned()), ..HashCacheConfig::default() }
    }

    /// Files `f0`..`f{n-1}` in `dir`, each holding `content {i}`.
    fn numbered_files(dir: &Path, n: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let p = dir.join(format!("f{i}"));
                std::fs::write(&p, format!("content {i}")).unwrap();
                p
            })
            .collect()
    }

    #[test]
    fn release_saves_and_reads_the_file_again() {
        let dir = tempfile::tempdir().unwrap();
        let files = numbered_files(dir.path(), 3);
        let meta = |i: usize| std::fs::metadata(&files[i]).unwrap();
        let hash = |i: usize| sha256(format!("content {i}").as_bytes());
        let cache_path = dir.path().join("hashes");
        let cache = HashCache::open(cfg(&cache_path));
        assert_eq!(cache.lookup(&meta(0)), None, "the file is read (there is none yet)");
        cache.insert(&meta(0), hash(0));
        cache.insert(&meta(1), hash(1));
        cache.release().unwrap();
        assert_eq!(cache.lock().map.len(), 0, "nothing held in memory after a release");
        // What was inserted is in the file: another cache sees it.
        assert_eq!(HashCache::open(cfg(&cache_path)).lookup(&meta(1)), Some(hash(1)));
        // The next lookup reads the file again, and later inserts are kept beside it.
        assert_eq!(cache.lookup(&meta(0)), Some(hash(0)));
        cache.insert(&meta(2), hash(2));
        cache.save().unwrap();
        let reopened = HashCache::open(cfg(&cache_path));
        assert_eq!(
            (0..3).map(|i| reopened.lookup(&meta(i))).collect::<Vec<_>>(),
            (0..3).map(|i| Some(hash(i))).collect::<Vec<_>>()
        );

        // Without a file, a release keeps the entries: they exist nowhere else.
        let memory = HashCache::in_memory();
        memory.insert(&meta(0), hash(0));
        memory.release().unwrap();
        assert_eq!(memory.lookup(&meta(0)), Some(hash(0)));
    }

    #[test]
    fn survives_restart_and_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nb-1-big-Data.db");
        std::fs::write(&file, b"sstable bytes").unwrap();
        let cache_path = dir.path().join("cache/hashes");
        let h = sha256(b"sstable bytes");

        let cache = HashCache::open(cfg(&cache_path));
        assert_eq!(cache.lookup(&std::fs::metadata(&file).unwrap()), None);
        cache.insert(&std::fs::metadata(&file).unwrap(), h);
        cache.save().unwrap();

        // A snapshot hard-links the file (changing its ctime) and is later removed.
        std::thread::sleep(Duration::from_millis(20));
        let link = dir.path().join("snapshot-link");
        std::fs::hard_link(&file, &link).unwrap();
        let reopened = HashCache::open(cfg(&cache_path));
        assert_eq!(reopened.lookup(&std::fs::metadata(&link).unwrap()), Some(h), "hard link hits the cache");
        std::fs::remove_file(&link).unwrap();
        assert_eq!(reopened.lookup(&std::fs::metadata(&file).unwrap()), Some(h));
        assert_eq!(reopened.stats().hits, 2);

        // Strict mode treats the changed ctime as a change.
        let strict = HashCache::open(HashCacheConfig { strict_ctime: true, ..cfg(&cache_path) });
        assert_eq!(strict.lookup(&std::fs::metadata(&file).unwrap()), None);
    }

    #[test]
    fn a_rewritten_file_misses() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"aaaa").unwrap();
        let cache = HashCache::in_memory();
        cache.insert(&std::fs::metadata(&file).unwrap(), sha256(b"aaaa"));
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&file, b"bbbb").unwrap(); // same size, new mtime
        assert_eq!(cache.lookup(&std::fs::metadata(&file).unwrap()), None);
    }

    #[test]
    fn damaged_records_are_dropped_and_the_file_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let cache_path = dir.path().join("hashes");
        let files = numbered_files(dir.path(), 5);
        let cache = HashCache::open(cfg(&cache_path));
        for (i, f) in files.iter().enumerate() {
            cache.insert(&std::fs::metadata(f).unwrap(), sha256(format!("content {i}").as_bytes()));
        }
        cache.save().unwrap();

        // Flip a byte in the second record and cut the last record in half.
        let mut bytes = std::fs::read(&cache_path).unwrap();
        bytes[HEADER_LEN + RECORD_LEN + 10] ^= 0xff;
        bytes.truncate(bytes.len() - RECORD_LEN / 2);
        std::fs::write(&cache_path, &bytes).unwrap();

        let reopened = HashCache::open(cfg(&cache_path));
        assert_eq!(reopened.stats().damaged_records, 2);
        assert_eq!(reopened.stats().entries, 3);
        let hits = files.iter().filter(|f| reopened.lookup(&std::fs::metadata(f).unwrap()).is_some()).count();
        assert_eq!(hits, 3);
        reopened.save().unwrap();
        assert_eq!(std::fs::read(&cache_path).unwrap().len(), HEADER_LEN + 3 * RECORD_LEN, "rewritten whole");

        // Garbage instead of a cache file: empty cache, no panic, rewritten on save.
        std::fs::write(&cache_path, b"not a cache").unwrap();
        let garbage = HashCache::open(cfg(&cache_path));
        assert_eq!(garbage.stats().entries, 0);
        garbage.save().unwrap();
        assert_eq!(&std::fs::read(&cache_path).unwrap()[..4], MAGIC);
    }

    #[test]
    fn inserts_before_any_lookup_are_appended_and_the_newest_record_wins() {
        let dir = tempfile::tempdir().unwrap();
        let cache_path = dir.path().join("hashes");
        let files = numbered_files(dir.path(), 6);
        let meta = |i: usize| std::fs::metadata(&files[i]).unwrap();
        let first = HashCache::open(cfg(&cache_path));
        for i in 0..3 {
            first.insert(&meta(i), sha256(format!("content {i}").as_bytes()));
        }
        first.save().unwrap();
        assert_eq!(std::fs::read(&cache_path).unwrap().len(), HEADER_LEN + 3 * RECORD_LEN);

        // A restore only inserts: the file is not read, the records are appended.
        let restore = HashCache::open(cfg(&cache_path));
        restore.insert(&meta(3), sha256(b"content 3"));
        restore.insert(&meta(4), sha256(b"content 4"));
        restore.insert(&meta(0), sha256(b"a newer hash of f0"));
        assert!(restore.lock().map.is_empty(), "the file was read although nothing was looked up");
        restore.save().unwrap();
        assert_eq!(std::fs::read(&cache_path).unwrap().len(), HEADER_LEN + 6 * RECORD_LEN, "appended");
        restore.save().unwrap();
        assert_eq!(std::fs::read(&cache_path).unwrap().len(), HEADER_LEN + 6 * RECORD_LEN, "nothing new to write");

        let reopened = HashCache::open(cfg(&cache_path));
        assert_eq!(reopened.lookup(&meta(0)), Some(sha256(b"a newer hash of f0")), "the newer record wins");
        for i in 1..5 {
            assert_eq!(reopened.lookup(&meta(i)), Some(sha256(format!("content {i}").as_bytes())));
        }
        assert_eq!(reopened.stats().entries, 5);
        // A lookup read the file: the next save rewrites it whole, one record per file.
        reopened.save().unwrap();
        assert_eq!(std::fs::read(&cache_path).unwrap().len(), HEADER_LEN + 5 * RECORD_LEN);

        // Inserts, then a lookup: the file and the earlier inserts are both there.
        let mixed = HashCache::open(cfg(&cache_path));
        mixed.insert(&meta(1), sha256(b"newer f1"));
        assert_eq!(mixed.lookup(&meta(1)), Some(sha256(b"newer f1")));
        assert_eq!(mixed.lookup(&meta(2)), Some(sha256(b"content 2")));

        // A torn tail is never appended to: the file is read and rewritten whole instead (the
        // torn record is lost, four of the five remain, plus the new one).
        let mut bytes = std::fs::read(&cache_path).unwrap();
        bytes.truncate(bytes.len() - RECORD_LEN / 2);
        std::fs::write(&cache_path, &bytes).unwrap();
        let torn = HashCache::open(cfg(&cache_path));
        torn.insert(&meta(5), sha256(b"content 5"));
        torn.save().unwrap();
        assert_eq!(std::fs::read(&cache_path).unwrap().len(), HEADER_LEN + 5 * RECORD_LEN);
        let after = HashCache::open(cfg(&cache_path));
        assert_eq!(after.stats().damaged_records, 0);
        assert_eq!(after.lookup(&meta(5)), Some(sha256(b"content 5")));
    }

    #[test]
    fn a_long_run_of_inserts_is_appended_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let cache_path = dir.path().join("state/hashes");
        let n = PENDING_BATCH + 10;
        let metas: Vec<Metadata> =
            numbered_files(dir.path(), n).iter().map(|p| std::fs::metadata(p).unwrap()).collect();
        let cache = HashCache::open(cfg(&cache_path));
        for (i, m) in metas.iter().enumerate() {
            cache.insert(m, sha256(&i.to_le_bytes()));
        }
        // No file existed: it was created, and the first batch is in it before any save.
        assert_eq!(std::fs::read(&cache_path).unwrap().len(), HEADER_LEN + PENDING_BATCH * RECORD_LEN);
        assert_eq!(cache.lock().pending.len(), 10);
        cache.save().unwrap();
        assert_eq!(std::fs::read(&cache_path).unwrap().len(), HEADER_LEN + n * RECORD_LEN);
        let reopened = HashCache::open(cfg(&cache_path));
        assert_eq!(reopened.stats().entries, n);
        assert_eq!(reopened.stats().damaged_records, 0);
        assert_eq!(reopened.lookup(&metas[n - 1]), Some(sha256(&(n - 1).to_le_bytes())));
        assert_eq!(reopened.lookup(&metas[0]), Some(sha256(&0usize.to_le_bytes())));
    }

    #[test]
    fn stays_bounded_by_evicting_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HashCache::open(HashCacheConfig { max_entries: 10, ..HashCacheConfig::default() });
        for i in 0..25 {
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, [i as u8]).unwrap();
            cache.insert(&std::fs::metadata(&p).unwrap(), sha256(&[i as u8]));
            assert!(cache.stats().entries <= 10);
        }
    }
}
