//! The key-value facade over sled.
//!
//! Everything the coordinator persists (raft log, hard state, snapshots, the state machine) goes
//! through these few calls, so replacing sled (garage dropped it in v1.0) means rewriting this
//! file only. Keys are bytes ordered lexicographically; a [`WriteBatch`] is applied atomically,
//! and batches become durable in order: after a crash the store holds a prefix of the batches
//! applied, and [`Kv::flush`] makes everything applied so far durable.
//!
//! Values the coordinator stores carry a format version ([`Versioned`]), so the format can evolve
//! with a migration path instead of a flag day.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A storage failure. Always fatal for the replica (raft cannot continue on a store that lost writes).
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// sled failed.
    #[error("state store {op}: {source}")]
    Store {
        /// What was attempted.
        op: &'static str,
        /// The error.
        #[source]
        source: sled::Error,
    },
    /// A stored value does not decode.
    #[error("state store: value under {key:?} is unreadable: {reason}")]
    Corrupt {
        /// The key (lossy text).
        key: String,
        /// Why.
        reason: String,
    },
}

fn err(op: &'static str) -> impl FnOnce(sled::Error) -> KvError {
    move |source| KvError::Store { op, source }
}

/// Key-value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// An open store.
#[derive(Debug, Clone)]
pub struct Kv {
    db: sled::Db,
}

impl Kv {
    /// Opens (or creates) the store in `dir`. Fails if another process has it open.
    pub fn open(dir: &Path) -> Result<Self, KvError> {
        let db = sled::Config::new().path(dir).mode(sled::Mode::LowSpace).open().map_err(err("open"))?;
        Ok(Self { db })
    }

    /// A store that lives in memory and a temporary file (tests).
    pub fn temporary() -> Result<Self, KvError> {
        Ok(Self { db: sled::Config::new().temporary(true).open().map_err(err("open temporary"))? })
    }

    /// A named keyspace.
    pub fn tree(&self, name: &str) -> Result<KvTree, KvError> {
        Ok(KvTree { tree: self.db.open_tree(name).map_err(err("open tree"))? })
    }

    /// Makes every write applied so far durable (fsync).
    pub fn flush(&self) -> Result<(), KvError> {
        self.db.flush().map(|_| ()).map_err(err("flush"))
    }

    /// Bytes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// One keyspace.
#[derive(Debug, Clone)]
pub struct KvTree {
    tree: sled::Tree,
}

impl KvTree {
    /// The value under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.tree.get(key).map_err(err("get"))?.map(|v| v.to_vec()))
    }

    /// Every pair whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, KvError> {
        self.tree.scan_prefix(prefix).map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err("scan"))).collect()
    }

    /// Every key that starts with `prefix`.
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, KvError> {
        self.tree.scan_prefix(prefix).keys().map(|r| r.map(|k| k.to_vec()).map_err(err("scan"))).collect()
    }

    /// Pairs with `lo <= key < hi`, in key order, stopping early when `keep_going` returns false
    /// for a pair (that pair is included).
    pub fn range_until(
        &self,
        lo: &[u8],
        hi: &[u8],
        mut keep_going: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<Pairs, KvError> {
        let mut out = Vec::new();
        for r in self.tree.range(lo..hi) {
            let (k, v) = r.map_err(err("range"))?;
            let more = keep_going(&k, &v);
            out.push((k.to_vec(), v.to_vec()));
            if !more {
                break;
            }
        }
        Ok(out)
    }

    /// The last pair with a key starting with `prefix`.
    #[allow(clippy::type_complexity)]
    pub fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>, KvError> {
        match self.tree.scan_prefix(prefix).next_back() {
            Some(r) => r.map(|(k, v)| Some((k.to_vec(), v.to_vec()))).map_err(err("scan")),
            None => Ok(None),
        }
    }

    /// Applies `batch` atomically.
    pub fn apply(&self, batch: WriteBatch) -> Result<(), KvError> {
        let mut b = sled::Batch::default();
        for op in batch.ops {
            match op {
                Op::Put(k, v) => b.insert(k, v),
                Op::Delete(k) => b.remove(k),
            }
        }
        self.tree.apply_batch(b).map_err(err("write"))
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Writes applied together or not at all.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    ops: Vec<Op>,
}

impl WriteBatch {
    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(key.into(), value.into()));
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(key.into()));
    }

    /// Appends another batch's writes after this one's.
    pub fn extend(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A persisted value with a format version.
///
/// Stored as JSON `{"v": <VERSION>, "d": <value>}`. Decoding a value written by an older version
/// goes through [`Versioned::migrate`]; a newer version than this build knows is refused (a
/// downgraded replica must not misread state written by a newer one).
pub trait Versioned: Serialize + DeserializeOwned {
    /// The record kind, for errors (`cluster`, `node`, …).
    const KIND: &'static str;
    /// The version this build writes.
    const VERSION: u32;

    /// Upgrades the JSON of an older version to the current type. The default knows no older versions.
    fn migrate(version: u32, _value: serde_json::Value) -> Result<Self, String> {
        Err(format!("{} format version {version} has no migration to version {}", Self::KIND, Self::VERSION))
    }

    /// Encodes with the version.
    fn encode(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Env<'a, T> {
            v: u32,
            d: &'a T,
        }
        // Serializing plain data structures to JSON cannot fail.
        serde_json::to_vec(&Env { v: Self::VERSION, d: self }).unwrap_or_default()
    }

    /// Decodes, migrating older versions.
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let v = value.get("v").and_then(|v| v.as_u64()).ok_or("no format version")? as u32;
        let d = value.get("d").cloned().ok_or("no data")?;
        if v == Self::VERSION {
            serde_json::from_value(d).map_err(|e| format!("malformed {} (version {v}): {e}", Self::KIND))
        } else if v < Self::VERSION {
            Self::migrate(v, d)
        } else {
            Err(format!(
                "{} was written in format version {v} by a newer Cassette; this one reads up to version {}",
                Self::KIND,
                Self::VERSION
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct V2 {
        name: String,
        size: u64,
    }

    impl Versioned for V2 {
        const KIND: &'static str = "test";
        const VERSION: u32 = 2;
        fn migrate(version: u32, value: serde_json::Value) -> Result<Self, String> {
            match version {
                1 => Ok(V2 { name: value["name"].as_str().unwrap_or_default().to_owned(), size: 0 }),
                v => Err(format!("no migration from {v}")),
            }
        }
    }

    #[test]
    fn batches_are_atomic_and_ordered() {
        let kv = Kv::temporary().unwrap();
        let t = kv.tree("t").unwrap();
        let mut b = WriteBatch::default();
        b.put(b"a/1".to_vec(), b"x".to_vec());
        b.put(b"a/2".to_vec(), b"y".to_vec());
        b.put(b"b/1".to_vec(), b"z".to_vec());
        b.delete(b"a/1".to_vec());
        t.apply(b).unwrap();
        assert_eq!(t.get(b"a/1").unwrap(), None);
        assert_eq!(t.scan_prefix(b"a/").unwrap(), vec![(b"a/2".to_vec(), b"y".to_vec())]);
        assert_eq!(t.last_with_prefix(b"b/").unwrap().unwrap().0, b"b/1".to_vec());
        let r = t.range_until(b"a/", b"c/", |k, _| k != b"a/2").unwrap();
        assert_eq!(r.len(), 1);
        kv.flush().unwrap();
    }

    #[test]
    fn versions_migrate_and_newer_is_refused() {
        let v = V2 { name: "n".into(), size: 3 };
        assert_eq!(V2::decode(&v.encode()).unwrap(), v);
        let old = br#"{"v":1,"d":{"name":"old"}}"#;
        assert_eq!(V2::decode(old).unwrap(), V2 { name: "old".into(), size: 0 });
        let newer = br#"{"v":3,"d":{}}"#;
        let e = V2::decode(newer).unwrap_err();
        assert!(e.contains("newer Cassette"), "{e}");
    }
}
