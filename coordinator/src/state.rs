//! The state machine: applies committed commands to the records of [`crate::model`].
//!
//! Applying an entry produces one [`WriteBatch`] that holds the entry's effects **and** the new
//! applied index, so after a crash the state is exactly "everything up to the applied index".
//! Application is deterministic: a command that cannot apply (a cluster that already exists, an
//! unknown operation) is consumed with a rejection that every replica computes alike.
//!
//! Snapshots are the state machine's keys and values in a simple length-prefixed format,
//! versioned by its magic line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kv::{KvError, KvTree, Versioned, WriteBatch};
use crate::model::{self, Command, DebugRecord, NodeRecord, OperationRecord, PhaseRecord, RunState, keys};

/// Applied index and term.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Raft index.
    pub index: u64,
    /// Its term.
    pub term: u64,
}

impl Versioned for Applied {
    const KIND: &'static str = "applied index";
    const VERSION: u32 = 1;
}

/// The raft configuration as the state machine stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Voting replicas.
    pub voters: Vec<u64>,
    /// Non-voting replicas.
    pub learners: Vec<u64>,
}

impl Versioned for Membership {
    const KIND: &'static str = "membership";
    const VERSION: u32 = 1;
}

/// A replica's address, in the peer table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// `host:port` it serves on.
    pub address: String,
}

impl Versioned for PeerRecord {
    const KIND: &'static str = "peer";
    const VERSION: u32 = 1;
}

/// The identity of a raft group: replicas refuse raft messages from another group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// 16 hex digits.
    pub id: String,
}

impl Versioned for GroupRecord {
    const KIND: &'static str = "group";
    const VERSION: u32 = 1;
}

/// The group id of a new group: FNV-1a of its initial members, so every initial replica
/// (bootstrapped independently with the same `--peers`) computes the same id, and two groups
/// started separately (e.g. a replica started alone by mistake) get different ones.
pub fn group_id(peers: &BTreeMap<u64, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (id, addr) in peers {
        for b in format!("{id}={addr};").bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The clusters an operation needs alone: `exclusive_clusters` in its spec (none: it never
/// conflicts).
pub fn exclusive_clusters(spec: &serde_json::Value) -> Vec<String> {
    spec.get("exclusive_clusters")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// What applying a command returned to its proposer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutput {
    /// The raft index it was applied at.
    pub index: u64,
}

/// A deterministic refusal to apply a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

const SNAPSHOT_MAGIC: &[u8] = b"cassette-state-snapshot v1\n";

/// The state machine over the store's `s/` keys.
#[derive(Debug, Clone)]
pub struct StateMachine {
    tree: KvTree,
}

fn corrupt(key: &str, reason: String) -> KvError {
    KvError::Corrupt { key: key.to_owned(), reason }
}

impl StateMachine {
    /// The state machine in `tree`.
    pub fn new(tree: KvTree) -> Self {
        Self { tree }
    }

    /// Writes a batch straight to the tree (tests that apply commands without raft).
    #[cfg(test)]
    pub(crate) fn tree_apply(&self, b: WriteBatch) -> Result<(), KvError> {
        self.tree.apply(b)
    }

    pub(crate) fn read<T: Versioned>(&self, key: &str) -> Result<Option<T>, KvError> {
        match self.tree.get(key.as_bytes())? {
            None => Ok(None),
            Some(b) => T::decode(&b).map(Some).map_err(|e| corrupt(key, e)),
        }
    }

    pub(crate) fn read_prefix<T: Versioned>(&self, prefix: &str) -> Result<Vec<T>, KvError> {
        self.tree
            .scan_prefix(prefix.as_bytes())?
            .into_iter()
            .map(|(k, v)| T::decode(&v).map_err(|e| corrupt(&String::from_utf8_lossy(&k), e)))
            .collect()
    }

    /// The applied index and term.
    pub fn applied(&self) -> Result<Applied, KvError> {
        Ok(self.read::<Applied>(keys::APPLIED)?.unwrap_or_default())
    }

    /// The membership as of the applied index.
    pub fn membership(&self) -> Result<Membership, KvError> {
        Ok(self.read(keys::CONF_STATE)?.unwrap_or_default())
    }

    /// The group id (empty before bootstrap or the first snapshot).
    pub fn group(&self) -> Result<String, KvError> {
        Ok(self.read::<GroupRecord>(keys::GROUP)?.map(|g| g.id).unwrap_or_default())
    }

    /// Replica id → address.
    pub fn peers(&self) -> Result<BTreeMap<u64, String>, KvError> {
        let mut out = BTreeMap::new();
        for (k, v) in self.tree.scan_prefix(keys::PEERS.as_bytes())? {
            let key = String::from_utf8_lossy(&k).into_owned();
            let id = key[keys::PEERS.len()..].parse::<u64>().map_err(|e| corrupt(&key, e.to_string()))?;
            let p = PeerRecord::decode(&v).map_err(|e| corrupt(&key, e))?;
            out.insert(id, p.address);
        }
        Ok(out)
    }

    /// A registered cluster.
    pub fn cluster(&self, name: &str) -> Result<Option<model::ClusterRecord>, KvError> {
        self.read(&keys::cluster(name))
    }

    /// Every registered cluster.
    pub fn clusters(&self) -> Result<Vec<model::ClusterRecord>, KvError> {
        self.read_prefix(keys::CLUSTERS)
    }

    /// A cluster's nodes.
    pub fn nodes(&self, cluster: &str) -> Result<Vec<NodeRecord>, KvError> {
        self.read_prefix(&keys::nodes(cluster))
    }

    /// An operation.
    pub fn operation(&self, id: &str) -> Result<Option<OperationRecord>, KvError> {
        self.read(&keys::operation(id))
    }

    /// Every operation (oldest id first).
    pub fn operations(&self) -> Result<Vec<OperationRecord>, KvError> {
        self.read_prefix(keys::OPERATIONS)
    }

    /// One phase of an operation.
    pub fn phase(&self, op: &str, host_id: &str, phase: &str) -> Result<Option<PhaseRecord>, KvError> {
        self.read(&keys::phase(op, host_id, phase))
    }

    /// A catalog entry.
    pub fn backup(&self, cluster: &str, id: &str) -> Result<Option<model::BackupRecord>, KvError> {
        self.read(&keys::backup(cluster, id))
    }

    /// A cluster's catalog entries (oldest id first).
    pub fn backups(&self, cluster: &str) -> Result<Vec<model::BackupRecord>, KvError> {
        self.read_prefix(&keys::backups(cluster))
    }

    /// An operation's phases.
    pub fn phases(&self, op: &str) -> Result<Vec<PhaseRecord>, KvError> {
        self.read_prefix(&keys::phases(op))
    }

    /// A diagnostic value.
    pub fn debug(&self, key: &str) -> Result<Option<DebugRecord>, KvError> {
        self.read(&keys::debug(key))
    }

    /// The operation a client request id started, if any.
    pub fn operation_for_request(&self, request_id: &str) -> Result<Option<String>, KvError> {
        Ok(self.read::<model::OperationRequestRecord>(&keys::operation_request(request_id))?.map(|r| r.operation_id))
    }

    /// Every revoked certificate.
    pub fn revocation_records(&self) -> Result<Vec<model::RevocationRecord>, KvError> {
        self.read_prefix(keys::REVOKED)
    }

    /// The deny list every replica and agent enforces (version: the newest revocation's index).
    pub fn revocations(&self) -> Result<cassette_common::tls::Revocations, KvError> {
        let mut r = cassette_common::tls::Revocations::default();
        for rec in self.revocation_records()? {
            r.version = r.version.max(rec.index);
            if rec.serial.is_empty() {
                r.names.insert(rec.name);
            } else {
                r.serials.insert(rec.serial);
            }
        }
        Ok(r)
    }

    /// Raw records as JSON (their data part), by exact key or by prefix (ending in `/`), with
    /// keys shown without the internal `s/` prefix. For diagnostics.
    pub fn dump(&self, key_or_prefix: &str) -> Result<BTreeMap<String, String>, KvError> {
        let full = format!("{}{key_or_prefix}", keys::PREFIX);
        let pairs = if key_or_prefix.is_empty() || key_or_prefix.ends_with('/') {
            self.tree.scan_prefix(full.as_bytes())?
        } else {
            self.tree.get(full.as_bytes())?.map(|v| vec![(full.clone().into_bytes(), v)]).unwrap_or_default()
        };
        Ok(pairs
            .into_iter()
            .map(|(k, v)| {
                let k = String::from_utf8_lossy(&k)[keys::PREFIX.len()..].to_owned();
                let v: serde_json::Value = serde_json::from_slice(&v).unwrap_or(serde_json::Value::Null);
                let d = v.get("d").cloned().unwrap_or(v);
                (k, d.to_string())
            })
            .collect())
    }

    fn applied_batch(index: u64, term: u64) -> WriteBatch {
        let mut b = WriteBatch::default();
        b.put(keys::APPLIED, Applied { index, term }.encode());
        b
    }

    /// The batch for an entry without a command (a new leader's empty entry).
    pub fn apply_empty(&self, index: u64, term: u64) -> WriteBatch {
        Self::applied_batch(index, term)
    }

    /// The batch for a membership change: the new configuration, the peer table, the applied index.
    pub fn apply_membership(
        &self,
        index: u64,
        term: u64,
        membership: &Membership,
        add_peer: Option<(u64, &str)>,
        remove_peer: Option<u64>,
    ) -> WriteBatch {
        let mut b = Self::applied_batch(index, term);
        b.put(keys::CONF_STATE, membership.encode());
        if let Some((id, addr)) = add_peer {
            b.put(keys::peer(id), PeerRecord { address: addr.to_owned() }.encode());
        }
        if let Some(id) = remove_peer {
            b.delete(keys::peer(id));
        }
        b
    }

    /// The bootstrap state of a new group: membership and peer table at `index`/`term`.
    pub fn bootstrap_batch(index: u64, term: u64, peers: &BTreeMap<u64, String>) -> WriteBatch {
        let mut b = Self::applied_batch(index, term);
        b.put(keys::GROUP, GroupRecord { id: group_id(peers) }.encode());
        b.put(keys::CONF_STATE, Membership { voters: peers.keys().copied().collect(), learners: vec![] }.encode());
        for (id, addr) in peers {
            b.put(keys::peer(*id), PeerRecord { address: addr.clone() }.encode());
        }
        b
    }

    /// Applies a command: its effects and the applied index in one batch, and the outcome for
    /// the proposer. Reads see the state as of `index - 1`.
    pub fn apply(
        &self,
        index: u64,
        term: u64,
        cmd: &Command,
    ) -> Result<(WriteBatch, Result<ApplyOutput, Rejected>), KvError> {
        let mut b = Self::applied_batch(index, term);
        let outcome = self.effects(index, cmd, &mut b)?;
        Ok((b, outcome.map(|()| ApplyOutput { index })))
    }

    fn effects(&self, index: u64, cmd: &Command, b: &mut WriteBatch) -> Result<Result<(), Rejected>, KvError> {
        let reject = |s: String| Ok(Err(Rejected(s)));
        match cmd {
            Command::PutCluster { cluster, nodes, replace } => {
                if !model::valid_name(&cluster.name) {
                    return reject(format!(
                        "invalid cluster name {:?}: use letters, digits, '.', '_' and '-'",
                        cluster.name
                    ));
                }
                if let Some(existing) = self.cluster(&cluster.name)?
                    && !replace
                {
                    return reject(format!(
                        "cluster {} is already registered (Cassandra cluster {:?}); remove it first or re-add with --replace",
                        cluster.name, existing.cassandra_cluster_name
                    ));
                }
                for n in self.tree.keys_with_prefix(keys::nodes(&cluster.name).as_bytes())? {
                    b.delete(n);
                }
                b.put(keys::cluster(&cluster.name), cluster.encode());
                for n in nodes {
                    if !model::valid_name(&n.host_id) {
                        return reject(format!("invalid host id {:?}", n.host_id));
                    }
                    b.put(keys::node(&cluster.name, &n.host_id), n.encode());
                }
            }
            Command::RemoveCluster { name } => {
                if self.cluster(name)?.is_none() {
                    return reject(format!("no cluster {name} is registered"));
                }
                b.delete(keys::cluster(name));
                for n in self.tree.keys_with_prefix(keys::nodes(name).as_bytes())? {
                    b.delete(n);
                }
            }
            Command::RecordHealth { cluster, health } => {
                for (host, h) in health {
                    // A node removed meanwhile is skipped, not an error: health is advisory.
                    if let Some(mut n) = self.read::<NodeRecord>(&keys::node(cluster, host))? {
                        n.health = h.clone();
                        b.put(keys::node(cluster, host), n.encode());
                    }
                }
            }
            Command::CreateOperation { operation, phases } => {
                if !model::valid_name(&operation.id) {
                    return reject(format!("invalid operation id {:?}", operation.id));
                }
                if self.operation(&operation.id)?.is_some() {
                    return reject(format!("operation {} already exists", operation.id));
                }
                if !operation.request_id.is_empty()
                    && let Some(first) = self.operation_for_request(&operation.request_id)?
                {
                    return reject(format!("request {} already started operation {first}", operation.request_id));
                }
                // Operations that name the clusters they need alone are refused while another
                // such operation runs on one of them (decided here, so two leaders cannot both
                // accept conflicting operations).
                let wanted = exclusive_clusters(&operation.spec);
                if !wanted.is_empty() {
                    for other in self.operations()? {
                        if other.state.is_terminal() {
                            continue;
                        }
                        if let Some(c) = exclusive_clusters(&other.spec).into_iter().find(|c| wanted.contains(c)) {
                            return reject(format!(
                                "operation {} ({} of cluster {}, started {}) is running on cluster {c}: wait for it to end (cassette operations watch {})",
                                other.id,
                                other.kind,
                                other.cluster,
                                chrono::DateTime::<chrono::Utc>::from_timestamp_millis(other.created_at_ms as i64)
                                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                                    .unwrap_or_default(),
                                other.id
                            ));
                        }
                    }
                }
                b.put(keys::operation(&operation.id), operation.encode());
                if !operation.request_id.is_empty() {
                    let r = model::OperationRequestRecord { operation_id: operation.id.clone() };
                    b.put(keys::operation_request(&operation.request_id), r.encode());
                }
                for p in phases {
                    b.put(keys::phase(&operation.id, &p.host_id, &p.phase), p.encode());
                }
            }
            Command::PhaseStarted { operation_id, host_id, phase, job_id, at_ms } => {
                let key = keys::phase(operation_id, host_id, phase);
                let Some(mut p) = self.read::<PhaseRecord>(&key)? else {
                    return reject(format!("operation {operation_id} has no phase {phase} on node {host_id}"));
                };
                if p.state.is_terminal() {
                    return reject(format!(
                        "phase {phase} of {operation_id} on {host_id} already ended ({:?})",
                        p.state
                    ));
                }
                p.state = RunState::Running;
                p.job_id = job_id.clone();
                p.attempts += 1;
                p.started_at_ms = *at_ms;
                b.put(key, p.encode());
            }
            Command::PhasesStarted { operation_id, phase, starts, at_ms } => {
                for (host_id, job_id) in starts {
                    let key = keys::phase(operation_id, host_id, phase);
                    let Some(mut p) = self.read::<PhaseRecord>(&key)? else {
                        return reject(format!("operation {operation_id} has no phase {phase} on node {host_id}"));
                    };
                    // A node whose phase already ended keeps its outcome.
                    if p.state.is_terminal() {
                        continue;
                    }
                    p.state = RunState::Running;
                    p.job_id = job_id.clone();
                    p.attempts += 1;
                    p.started_at_ms = *at_ms;
                    b.put(key, p.encode());
                }
            }
            Command::PhaseFinished { operation_id, host_id, phase, state, error, summary, at_ms } => {
                let key = keys::phase(operation_id, host_id, phase);
                let Some(mut p) = self.read::<PhaseRecord>(&key)? else {
                    return reject(format!("operation {operation_id} has no phase {phase} on node {host_id}"));
                };
                p.state = *state;
                p.error = error.clone();
                p.summary = summary.clone();
                p.finished_at_ms = *at_ms;
                b.put(key, p.encode());
            }
            Command::FinishOperation { operation_id, state, error, at_ms } => {
                let Some(mut op) = self.operation(operation_id)? else {
                    return reject(format!("no operation {operation_id}"));
                };
                op.state = *state;
                op.error = error.clone();
                op.finished_at_ms = *at_ms;
                b.put(keys::operation(operation_id), op.encode());
            }
            Command::AddPhase { phase } => {
                let Some(op) = self.operation(&phase.operation_id)? else {
                    return reject(format!("no operation {}", phase.operation_id));
                };
                if op.state.is_terminal() {
                    return reject(format!("operation {} already ended", op.id));
                }
                if !model::valid_name(&phase.host_id) {
                    return reject(format!("invalid host id {:?}", phase.host_id));
                }
                let key = keys::phase(&phase.operation_id, &phase.host_id, &phase.phase);
                if self.tree.get(key.as_bytes())?.is_some() {
                    return reject(format!(
                        "operation {} already has phase {} on {}",
                        phase.operation_id, phase.phase, phase.host_id
                    ));
                }
                b.put(key, phase.encode());
            }
            Command::RemoveBackup { cluster, id } => {
                b.delete(keys::backup(cluster, id));
            }
            Command::PutBackup { backup } => {
                if !model::valid_name(&backup.id) || !model::valid_name(&backup.cluster) {
                    return reject(format!("invalid backup id {:?} or cluster {:?}", backup.id, backup.cluster));
                }
                b.put(keys::backup(&backup.cluster, &backup.id), backup.encode());
            }
            Command::Schedule(c) => {
                if let Err(e) = crate::schedule::apply(self, c, b)? {
                    return reject(e);
                }
            }
            Command::DebugPut { key, value } => {
                if !model::valid_name(key) {
                    return reject(format!("invalid debug key {key:?}"));
                }
                let writes = self.debug(key)?.map(|d| d.writes).unwrap_or(0) + 1;
                b.put(keys::debug(key), DebugRecord { value: value.clone(), writes, index }.encode());
            }
            Command::Revoke { serial, name, reason, by, at_ms } => {
                let serial = serial.to_ascii_lowercase();
                if serial.is_empty() && name.is_empty() {
                    return reject("name the certificate to revoke: --file, --serial or --name".into());
                }
                if !serial.is_empty() && (serial.len() > 64 || !serial.chars().all(|c| c.is_ascii_hexdigit())) {
                    return reject(format!(
                        "serial {serial:?} is not a certificate serial number (hex digits, as `cassette certs show` prints it)"
                    ));
                }
                if serial.is_empty() && !model::valid_name(name) {
                    return reject(format!("invalid certificate name {name:?}"));
                }
                let key = if serial.is_empty() { keys::revoked_name(name) } else { keys::revoked_serial(&serial) };
                // Revoking twice keeps the first record (and the list's version).
                if self.tree.get(key.as_bytes())?.is_none() {
                    let rec = model::RevocationRecord {
                        serial,
                        name: name.clone(),
                        reason: reason.clone(),
                        by: by.clone(),
                        at_ms: *at_ms,
                        index,
                    };
                    b.put(key, rec.encode());
                }
            }
        }
        Ok(Ok(()))
    }

    /// Every state-machine key and value, as snapshot data.
    pub fn export(&self) -> Result<Vec<u8>, KvError> {
        let mut out = SNAPSHOT_MAGIC.to_vec();
        for (k, v) in self.tree.scan_prefix(keys::PREFIX.as_bytes())? {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(&k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(&v);
        }
        Ok(out)
    }

    /// The batch that replaces the whole state with snapshot `data`.
    pub fn import_batch(&self, data: &[u8]) -> Result<WriteBatch, KvError> {
        let bad = |r: &str| corrupt("snapshot", r.to_owned());
        let mut rest = data.strip_prefix(SNAPSHOT_MAGIC).ok_or_else(|| bad("unknown snapshot format"))?;
        let mut b = WriteBatch::default();
        for k in self.tree.keys_with_prefix(keys::PREFIX.as_bytes())? {
            b.delete(k);
        }
        let take = |rest: &mut &[u8]| -> Result<Vec<u8>, KvError> {
            if rest.len() < 4 {
                return Err(bad("truncated"));
            }
            let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if rest.len() < 4 + n {
                return Err(bad("truncated"));
            }
            let v = rest[4..4 + n].to_vec();
            *rest = &rest[4 + n..];
            Ok(v)
        };
        while !rest.is_empty() {
            let k = take(&mut rest)?;
            let v = take(&mut rest)?;
            if !k.starts_with(keys::PREFIX.as_bytes()) {
                return Err(bad("key outside the state machine"));
            }
            b.put(k, v);
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Kv;
    use crate::model::ClusterRecord;

    fn sm() -> StateMachine {
        StateMachine::new(Kv::temporary().unwrap().tree("t").unwrap())
    }

    fn put(sm: &StateMachine, index: u64, cmd: Command) -> Result<ApplyOutput, Rejected> {
        let (b, out) = sm.apply(index, 1, &cmd).unwrap();
        sm.tree.apply(b).unwrap();
        out
    }

    fn cluster(name: &str) -> ClusterRecord {
        ClusterRecord {
            name: name.into(),
            cassandra_cluster_name: "Test Cluster".into(),
            agent_pattern: "{address}:7079".into(),
            created_at_ms: 1,
        }
    }

    #[test]
    fn apply_records_effects_and_applied_index_together() {
        let sm = sm();
        put(&sm, 6, Command::PutCluster { cluster: cluster("prod"), nodes: vec![], replace: false }).unwrap();
        assert_eq!(sm.applied().unwrap(), Applied { index: 6, term: 1 });
        let e =
            put(&sm, 7, Command::PutCluster { cluster: cluster("prod"), nodes: vec![], replace: false }).unwrap_err();
        assert!(e.0.contains("already registered"), "{e}");
        // A rejected command still advances the applied index.
        assert_eq!(sm.applied().unwrap().index, 7);
        put(&sm, 8, Command::DebugPut { key: "a".into(), value: "1".into() }).unwrap();
        put(&sm, 9, Command::DebugPut { key: "a".into(), value: "2".into() }).unwrap();
        assert_eq!(sm.debug("a").unwrap().unwrap(), DebugRecord { value: "2".into(), writes: 2, index: 9 });
        assert_eq!(sm.dump("cluster/").unwrap().len(), 1);
    }

    #[test]
    fn exclusive_operations_on_one_cluster_conflict_until_the_first_ends() {
        let sm = sm();
        let op = |id: &str, cluster: &str| OperationRecord {
            id: id.into(),
            cluster: cluster.into(),
            kind: "backup".into(),
            state: RunState::Running,
            spec: serde_json::json!({ "exclusive_clusters": [cluster] }),
            created_at_ms: 0,
            finished_at_ms: 0,
            error: String::new(),
            request_id: String::new(),
        };
        put(&sm, 1, Command::CreateOperation { operation: op("b1", "prod"), phases: vec![] }).unwrap();
        let e = put(&sm, 2, Command::CreateOperation { operation: op("b2", "prod"), phases: vec![] }).unwrap_err();
        assert!(e.0.contains("operation b1 (backup of cluster prod") && e.0.contains("watch b1"), "{e}");
        put(&sm, 3, Command::CreateOperation { operation: op("b3", "other"), phases: vec![] }).unwrap();
        // Operations that name no cluster never conflict.
        let mut free = op("v1", "prod");
        free.spec = serde_json::Value::Null;
        put(&sm, 4, Command::CreateOperation { operation: free, phases: vec![] }).unwrap();
        let fin = Command::FinishOperation {
            operation_id: "b1".into(),
            state: RunState::Succeeded,
            error: String::new(),
            at_ms: 1,
        };
        put(&sm, 5, fin).unwrap();
        put(&sm, 6, Command::CreateOperation { operation: op("b2", "prod"), phases: vec![] }).unwrap();
    }

    #[test]
    fn group_ids_depend_on_the_initial_members_only() {
        let a: BTreeMap<u64, String> = [(1, "a:1".to_owned()), (2, "b:1".to_owned())].into();
        assert_eq!(group_id(&a), group_id(&a.clone()));
        assert_eq!(group_id(&a).len(), 16);
        assert_ne!(group_id(&a), group_id(&[(1, "a:1".to_owned())].into()));
    }

    #[test]
    fn snapshots_round_trip_and_replace_everything() {
        let a = sm();
        a.tree.apply(StateMachine::bootstrap_batch(5, 5, &[(1, "a:1".to_owned())].into())).unwrap();
        put(&a, 6, Command::DebugPut { key: "x".into(), value: "1".into() }).unwrap();
        let data = a.export().unwrap();
        let b = sm();
        put(&b, 3, Command::DebugPut { key: "stale".into(), value: "1".into() }).unwrap();
        let batch = b.import_batch(&data).unwrap();
        b.tree.apply(batch).unwrap();
        assert_eq!(b.export().unwrap(), data);
        assert!(b.debug("stale").unwrap().is_none());
        assert_eq!(b.peers().unwrap()[&1], "a:1");
        assert_eq!(b.membership().unwrap().voters, vec![1]);
        assert!(b.import_batch(b"junk").is_err());
    }
}
