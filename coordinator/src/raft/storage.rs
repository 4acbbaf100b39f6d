//! Raft log storage over the key-value facade: entries, hard state, the truncation point, and
//! the latest snapshot. It implements raft-rs's [`Storage`] for reads; the ready loop writes
//! through the batch builders here, so one batch can also carry state-machine writes.
//!
//! Keys (in the same tree as the state machine, under `r/`):
//! - `r/e/<index, 8 bytes big-endian>` → `Entry` (protobuf)
//! - `r/hs` → `HardState`; `r/trunc` → index and term of the last compacted entry
//! - `r/snap` → the latest `Snapshot` (metadata and state-machine data)
//!
//! Membership (`ConfState`) is read from the state machine, which stores it together with the
//! applied index: the two can never disagree after a crash.

use std::sync::atomic::{AtomicBool, Ordering};

use prost_011::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::kv::{KvError, KvTree, Versioned, WriteBatch};
use crate::state::{Applied, StateMachine};

const ENTRY_PREFIX: &[u8] = b"r/e/";
const HARD_STATE: &[u8] = b"r/hs";
const TRUNCATED: &[u8] = b"r/trunc";
const SNAPSHOT: &[u8] = b"r/snap";

/// The index and term a new group starts at (like TiKV): a replica that joins later has an
/// empty log, so the leader must send it a snapshot first, which carries the membership.
pub const BOOTSTRAP_INDEX: u64 = 5;
/// See [`BOOTSTRAP_INDEX`].
pub const BOOTSTRAP_TERM: u64 = 5;

fn entry_key(index: u64) -> Vec<u8> {
    let mut k = ENTRY_PREFIX.to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn index_of(key: &[u8]) -> Option<u64> {
    let b: [u8; 8] = key.strip_prefix(ENTRY_PREFIX)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> KvError {
    KvError::Corrupt { key: what.to_owned(), reason: e.to_string() }
}

fn store_err(e: KvError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

/// The raft log of one replica.
#[derive(Debug)]
pub struct LogStore {
    tree: KvTree,
    sm: StateMachine,
    hard_state: HardState,
    /// Index and term of the last entry removed by compaction (or covered by the snapshot installed).
    truncated: Applied,
    last: u64,
    snapshot_index: u64,
    /// Set when a follower needs a newer snapshot than the one stored; the ready loop makes one.
    snapshot_wanted: AtomicBool,
}

impl LogStore {
    /// Opens the log in `tree` (with the state machine over the same tree).
    pub fn open(tree: KvTree, sm: StateMachine) -> Result<Self, KvError> {
        let mut hard_state = match tree.get(HARD_STATE)? {
            Some(b) => HardState::decode(&b[..]).map_err(|e| corrupt("r/hs", e))?,
            None => HardState::default(),
        };
        // Only committed entries are applied, but the commit index is written without an fsync
        // and may trail the applied index after a crash: what was applied was committed.
        let applied = sm.applied()?;
        if applied.index > hard_state.commit {
            hard_state.commit = applied.index;
        }
        let truncated = match tree.get(TRUNCATED)? {
            Some(b) => Applied::decode(&b).map_err(|e| corrupt("r/trunc", e))?,
            None => Applied::default(),
        };
        let last = match tree.last_with_prefix(ENTRY_PREFIX)? {
            Some((k, _)) => index_of(&k).ok_or_else(|| corrupt("r/e", "bad key"))?,
            None => truncated.index,
        }
        .max(truncated.index);
        let snapshot_index = match tree.get(SNAPSHOT)? {
            Some(b) => Snapshot::decode(&b[..]).map_err(|e| corrupt("r/snap", e))?.get_metadata().index,
            None => 0,
        };
        Ok(Self { tree, sm, hard_state, truncated, last, snapshot_index, snapshot_wanted: AtomicBool::new(false) })
    }

    /// Whether this replica has any raft state (bootstrapped, or joined and received a snapshot).
    pub fn is_initialized(&self) -> bool {
        self.hard_state != HardState::default() || self.last > 0
    }

    /// Writes the initial state of a new group whose voters are `peers`' ids: the state machine's
    /// bootstrap records and a snapshot at [`BOOTSTRAP_INDEX`]. Every initial replica must be
    /// bootstrapped with the same peers.
    pub fn bootstrap(&mut self, peers: &std::collections::BTreeMap<u64, String>) -> Result<(), KvError> {
        self.tree.apply(StateMachine::bootstrap_batch(BOOTSTRAP_INDEX, BOOTSTRAP_TERM, peers))?;
        let mut snap = Snapshot::default();
        snap.data = self.sm.export()?;
        let meta = snap.mut_metadata();
        meta.index = BOOTSTRAP_INDEX;
        meta.term = BOOTSTRAP_TERM;
        *meta.mut_conf_state() = ConfState::from((peers.keys().copied(), std::iter::empty()));
        let mut hs = HardState::default();
        hs.term = BOOTSTRAP_TERM;
        hs.commit = BOOTSTRAP_INDEX;
        let mut b = WriteBatch::default();
        b.put(SNAPSHOT, snap.encode_to_vec());
        b.put(TRUNCATED, Applied { index: BOOTSTRAP_INDEX, term: BOOTSTRAP_TERM }.encode());
        // Last: its presence marks a finished bootstrap.
        b.put(HARD_STATE, hs.encode_to_vec());
        self.tree.apply(b)?;
        self.hard_state = hs;
        self.truncated = Applied { index: BOOTSTRAP_INDEX, term: BOOTSTRAP_TERM };
        self.last = BOOTSTRAP_INDEX;
        self.snapshot_index = BOOTSTRAP_INDEX;
        Ok(())
    }

    /// The hard state as last persisted.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Index of the latest stored snapshot.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// First and last index.
    pub fn bounds(&self) -> (u64, u64) {
        (self.truncated.index + 1, self.last)
    }

    /// Whether a follower asked for a newer snapshot than the stored one.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    /// Adds to `b` the writes that append `entries` (replacing any conflicting suffix) and set
    /// `hard_state`; updates the cached bounds.
    pub fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>, b: &mut WriteBatch) {
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            // Entries after the new last one belong to a deposed leader: remove them.
            for i in last.index + 1..=self.last {
                b.delete(entry_key(i));
            }
            for e in entries {
                b.put(entry_key(e.index), e.encode_to_vec());
            }
            debug_assert!(first.index > self.truncated.index, "append below the truncation point");
            self.last = last.index;
        }
        if let Some(hs) = hard_state {
            b.put(HARD_STATE, hs.encode_to_vec());
            self.hard_state = hs.clone();
        }
    }

    /// Records a new commit index (no fsync needed: a lost commit index is learnt again).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), KvError> {
        self.hard_state.commit = commit;
        let mut b = WriteBatch::default();
        b.put(HARD_STATE, self.hard_state.encode_to_vec());
        self.tree.apply(b)
    }

    /// Adds to `b` the writes that replace the log with a snapshot received from the leader.
    pub fn install_snapshot(&mut self, snap: &Snapshot, b: &mut WriteBatch) {
        let meta = snap.get_metadata();
        for i in self.truncated.index + 1..=self.last {
            b.delete(entry_key(i));
        }
        self.truncated = Applied { index: meta.index, term: meta.term };
        self.last = meta.index;
        self.snapshot_index = meta.index;
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        b.put(TRUNCATED, self.truncated.encode());
        b.put(HARD_STATE, self.hard_state.encode_to_vec());
        b.put(SNAPSHOT, snap.encode_to_vec());
    }

    /// Stores a snapshot made from the local state machine and drops entries up to
    /// `compact_to` (which must not exceed the snapshot's index).
    pub fn save_snapshot_and_compact(&mut self, snap: &Snapshot, compact_to: u64) -> Result<(), KvError> {
        let meta = snap.get_metadata();
        let compact_to = compact_to.min(meta.index).min(self.last);
        let mut b = WriteBatch::default();
        b.put(SNAPSHOT, snap.encode_to_vec());
        if compact_to > self.truncated.index {
            let term = self.term_of(compact_to)?;
            for i in self.truncated.index + 1..=compact_to {
                b.delete(entry_key(i));
            }
            self.truncated = Applied { index: compact_to, term };
            b.put(TRUNCATED, self.truncated.encode());
        }
        self.tree.apply(b)?;
        self.snapshot_index = meta.index;
        Ok(())
    }

    fn read_entry(&self, index: u64) -> Result<Option<Entry>, KvError> {
        match self.tree.get(&entry_key(index))? {
            Some(b) => Entry::decode(&b[..]).map(Some).map_err(|e| corrupt("r/e", e)),
            None => Ok(None),
        }
    }

    fn term_of(&self, index: u64) -> Result<u64, KvError> {
        if index == self.truncated.index {
            return Ok(self.truncated.term);
        }
        self.read_entry(index)?.map(|e| e.term).ok_or_else(|| corrupt("r/e", format!("entry {index} missing")))
    }

    /// Snapshot metadata for the current applied state.
    pub fn snapshot_metadata(applied: crate::state::Applied, conf: &crate::state::Membership) -> SnapshotMetadata {
        let mut m = SnapshotMetadata::default();
        m.index = applied.index;
        m.term = applied.term;
        *m.mut_conf_state() = ConfState::from((conf.voters.iter().copied(), conf.learners.iter().copied()));
        m
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let m = self.sm.membership().map_err(store_err)?;
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: ConfState::from((m.voters.iter().copied(), m.learners.iter().copied())),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut size = 0u64;
        let mut pairs = self
            .tree
            .range_until(&entry_key(low), &entry_key(high), |_, v| {
                size += v.len() as u64;
                size <= max
            })
            .map_err(store_err)?;
        // At least one entry, and otherwise never more than max_size bytes.
        if size > max && pairs.len() > 1 {
            pairs.pop();
        }
        let mut out = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let e = Entry::decode(&v[..]).map_err(|e| store_err(corrupt("r/e", e)))?;
            if Some(e.index) != index_of(&k) || e.index != low + out.len() as u64 {
                return Err(store_err(corrupt("r/e", "log entries are not contiguous")));
            }
            out.push(e);
        }
        if out.is_empty() || out[0].index != low {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated.index {
            return Ok(self.truncated.term);
        }
        if idx < self.truncated.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self.read_entry(idx).map_err(store_err)? {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let snap = match self.tree.get(SNAPSHOT).map_err(store_err)? {
            Some(b) => Snapshot::decode(&b[..]).map_err(|e| store_err(corrupt("r/snap", e)))?,
            None => {
                self.snapshot_wanted.store(true, Ordering::Relaxed);
                return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
            }
        };
        let conf = snap.get_metadata().get_conf_state();
        if !conf.voters.contains(&to) && !conf.learners.contains(&to) {
            // A replica added after this snapshot would refuse it (it is not in its membership):
            // make a new one that includes it.
            tracing::info!(
                to,
                have = snap.get_metadata().index,
                "new replica needs a snapshot that includes it; making one"
            );
            self.snapshot_wanted.store(true, Ordering::Relaxed);
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        if snap.get_metadata().index < request_index {
            tracing::info!(
                to,
                request_index,
                have = snap.get_metadata().index,
                "replica needs a newer snapshot; making one"
            );
            self.snapshot_wanted.store(true, Ordering::Relaxed);
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Kv;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = vec![index as u8; 10];
        e
    }

    fn open(kv: &Kv) -> LogStore {
        let t = kv.tree("c").unwrap();
        LogStore::open(t.clone(), StateMachine::new(t)).unwrap()
    }

    #[test]
    fn append_overwrite_compact_and_reopen() {
        let kv = Kv::temporary().unwrap();
        let mut s = open(&kv);
        assert!(!s.is_initialized());
        s.bootstrap(&[(1, "a:1".to_owned()), (2, "b:1".to_owned())].into()).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (6, 5));
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2]);
        let mut b = WriteBatch::default();
        s.append(&[entry(6, 5), entry(7, 5), entry(8, 5)], None, &mut b);
        s.tree.apply(b).unwrap();
        // A new leader overwrites 7.. with a shorter suffix.
        let mut b = WriteBatch::default();
        s.append(&[entry(7, 6)], None, &mut b);
        s.tree.apply(b).unwrap();
        assert_eq!(s.last_index().unwrap(), 7);
        assert_eq!(s.term(7).unwrap(), 6);
        assert!(matches!(s.term(8), Err(raft::Error::Store(StorageError::Unavailable))));
        assert_eq!(s.entries(6, 8, None, GetEntriesContext::empty(false)).unwrap().len(), 2);
        assert_eq!(s.entries(6, 8, Some(1), GetEntriesContext::empty(false)).unwrap().len(), 1);
        // Compaction keeps the term of the truncation point.
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 7;
        snap.mut_metadata().term = 6;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
        s.save_snapshot_and_compact(&snap, 6).unwrap();
        assert_eq!(s.first_index().unwrap(), 7);
        assert_eq!(s.term(6).unwrap(), 5);
        assert!(matches!(s.term(5), Err(raft::Error::Store(StorageError::Compacted))));
        assert!(matches!(
            s.entries(6, 7, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(s.snapshot(0, 2).unwrap().get_metadata().index, 7);
        assert!(s.snapshot(9, 2).is_err() && s.take_snapshot_wanted());
        assert!(s.snapshot(0, 7).is_err() && s.take_snapshot_wanted(), "a replica outside the snapshot's membership");
        drop(s);
        let s = open(&kv);
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap(), s.snapshot_index()), (7, 7, 7));
    }

    #[test]
    fn installing_a_snapshot_replaces_the_log() {
        let kv = Kv::temporary().unwrap();
        let mut s = open(&kv);
        let mut b = WriteBatch::default();
        s.append(&[entry(1, 1), entry(2, 1)], None, &mut b);
        s.tree.apply(b).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 40;
        snap.mut_metadata().term = 3;
        let mut b = WriteBatch::default();
        s.install_snapshot(&snap, &mut b);
        s.tree.apply(b).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (41, 40));
        assert_eq!(s.term(40).unwrap(), 3);
        assert_eq!(s.hard_state().commit, 40);
        assert!(s.tree.scan_prefix(ENTRY_PREFIX).unwrap().is_empty());
    }
}
