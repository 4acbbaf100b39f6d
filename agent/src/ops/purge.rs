//! Global purge: retention policies applied to a storage root that several clusters and
//! standalone agents share, built on the removal engine of [`super::remove`] (exclusive lock,
//! manifests before blobs, persisted plan, grace period).
//!
//! What a purge decides (also in `docs/layout.md`, "Retention and purges"):
//! - **Backups.** The unit is a cluster backup (one id with a cluster manifest: kept or removed as
//!   a whole) or, without a cluster manifest, one node's backup. A [`RetentionRule`] applies to the
//!   backups of its cluster (and, with a tag, only to those carrying that tag: a schedule's). A
//!   backup is removed only when at least one rule applies to it and **no** applicable rule keeps
//!   it; a rule keeps the newest `keep_last` backups of its set (cluster backups counted across the
//!   cluster, node backups per node) and every backup started within `keep_within`. Backups no
//!   rule covers, and backups of running operations ([`PurgeRequest::protect`]), are kept.
//! - **Departed nodes.** Host ids that have backups or commit-log entries in the root but are not
//!   in the cluster's current ring (decommissioned, replaced). Always reported; when selected
//!   ([`Departed`]), their node backups and commit-log entries go whatever the policies say. A
//!   cluster backup they are part of stays governed by the policies (it is restored as a whole).
//!   Nodes are identified by host id only, never by hostname.
//! - **Commit logs.** For each node, the entries closed before the snapshot of the node's oldest
//!   kept backup are removed: a point-in-time restore from that backup starts at its snapshot
//!   (`docs/layout.md`, "Commit-log index"), so older segments hold only writes every kept backup
//!   already has. A node with no kept backup keeps its entries (unless it departed and is purged).
//! - **Blobs.** Whatever no remaining manifest or entry references, older than the grace period,
//!   is swept in batches by the engine.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cassette_common::ids::{BackupId, HostId};
use cassette_common::layout;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::OpContext;
use super::remove::{self, Catalog, RemoveError, RemoveReport, Victims};

/// How many backups to keep.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Keep the newest N backups.
    #[serde(default)]
    pub keep_last: Option<usize>,
    /// Keep every backup started within this long before the purge.
    #[serde(default, with = "humantime_serde")]
    pub keep_within: Option<Duration>,
}

impl RetentionPolicy {
    /// Refuses a policy that keeps nothing.
    pub fn validate(&self) -> Result<(), String> {
        let keeps_last = self.keep_last.is_some_and(|n| n > 0);
        let keeps_within = self.keep_within.is_some_and(|d| !d.is_zero());
        if !keeps_last && !keeps_within {
            return Err(
                "a retention policy must keep something: give --keep-last (at least 1), --keep-within (e.g. 30d), or both"
                    .into(),
            );
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.keep_last {
            parts.push(format!("keep-last {n}"));
        }
        if let Some(d) = self.keep_within {
            parts.push(format!("keep-within {}", humantime::format_duration(d)));
        }
        parts.join(", ")
    }
}

/// A policy and the backups it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Cluster name, as Cassandra reports it.
    pub cluster: String,
    /// Only the backups with this tag (a schedule's backups); none: every backup of the cluster.
    #[serde(default)]
    pub tag: Option<String>,
    /// What to keep.
    #[serde(flatten)]
    pub policy: RetentionPolicy,
}

impl RetentionRule {
    fn describe(&self) -> String {
        match &self.tag {
            Some(t) => format!("{} for tag {t:?} of cluster {:?}", self.policy.describe(), self.cluster),
            None => format!("{} for cluster {:?}", self.policy.describe(), self.cluster),
        }
    }
}

/// Which departed nodes to purge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Departed {
    /// None (they are still reported).
    #[default]
    None,
    /// Every host id of the purged clusters that is not in its current ring.
    All,
    /// These host ids (each must be absent from its cluster's ring).
    Hosts(Vec<HostId>),
}

/// What to purge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PurgeRequest {
    /// Retention rules. Clusters they name are in scope.
    pub rules: Vec<RetentionRule>,
    /// The current ring of each cluster (cluster name → host ids): the cluster view departed
    /// nodes are judged against. Clusters named here are in scope too.
    pub ring: BTreeMap<String, Vec<HostId>>,
    /// Departed nodes to purge.
    pub departed: Departed,
    /// Keep commit-log entries older than any kept backup's snapshot (skip the point-in-time rule).
    pub keep_all_commitlogs: bool,
    /// Backups of running operations: always kept.
    pub protect: Vec<BackupId>,
    /// Only report what would be removed and freed.
    pub dry_run: bool,
}

impl PurgeRequest {
    /// Every problem with the request, before anything is read.
    pub fn validate(&self) -> Result<(), RemoveError> {
        if self.rules.is_empty() && self.departed == Departed::None {
            return Err(RemoveError::Refused(
                "nothing to purge: give a retention policy (--keep-last, --keep-within) or departed nodes (--departed)"
                    .into(),
            ));
        }
        for r in &self.rules {
            r.policy.validate().map_err(|e| RemoveError::Refused(format!("cluster {:?}: {e}", r.cluster)))?;
        }
        Ok(())
    }
}

/// The verdict on one backup of the purged clusters.
#[derive(Debug, Clone, Serialize)]
pub struct BackupVerdict {
    /// Cluster name.
    pub cluster: String,
    /// The backup.
    pub backup_id: BackupId,
    /// Its tag.
    pub tag: Option<String>,
    /// A cluster backup (kept or removed as a whole) rather than one node's.
    pub cluster_backup: bool,
    /// Its nodes.
    pub hosts: Vec<HostId>,
    /// Total size of its files (shared blobs counted in each).
    pub bytes: u64,
    /// Kept or removed.
    pub kept: bool,
    /// Why.
    pub reason: String,
}

/// A host id with data in the root but absent from its cluster's current ring.
#[derive(Debug, Clone, Serialize)]
pub struct DepartedNode {
    /// Cluster name.
    pub cluster: String,
    /// The host id.
    pub host_id: HostId,
    /// Its node backups (not part of a cluster backup).
    pub node_backups: usize,
    /// Its commit-log index entries.
    pub commitlog_entries: usize,
    /// Whether this purge removes them.
    pub purged: bool,
}

/// The commit-log decision for one node.
#[derive(Debug, Clone, Serialize)]
pub struct CommitLogCutoff {
    /// Cluster name.
    pub cluster: String,
    /// The node.
    pub host_id: HostId,
    /// Entries closed before this (the snapshot of the node's oldest kept backup) are removed.
    pub keep_from: Option<DateTime<Utc>>,
    /// Entries removed.
    pub removed: usize,
    /// Entries kept.
    pub kept: usize,
    /// Why.
    pub reason: String,
}

/// What a purge did (or would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    /// Deletions, bytes freed, blobs kept by the grace period.
    #[serde(flatten)]
    pub removal: RemoveReport,
    /// The rules applied.
    pub rules: Vec<String>,
    /// Every backup of the purged clusters with its verdict, oldest first.
    pub backups: Vec<BackupVerdict>,
    /// Departed nodes found.
    pub departed_nodes: Vec<DepartedNode>,
    /// Per node: the commit-log cutoff.
    pub commitlog: Vec<CommitLogCutoff>,
}

/// Decisions besides the victims, for the report.
#[derive(Debug, Default)]
struct Decided {
    backups: Vec<BackupVerdict>,
    departed: Vec<DepartedNode>,
    commitlog: Vec<CommitLogCutoff>,
}

/// Runs a purge (see the module documentation).
pub async fn purge(ctx: &OpContext, req: &PurgeRequest) -> Result<PurgeReport, RemoveError> {
    req.validate()?;
    let mut clusters: BTreeSet<&str> = req.rules.iter().map(|r| r.cluster.as_str()).collect();
    clusters.extend(req.ring.keys().map(String::as_str));
    let what = format!("purge of {}", clusters.iter().map(|c| format!("cluster {c:?}")).collect::<Vec<_>>().join(", "));
    let mut decided = Decided::default();
    let removal = remove::run_removal(ctx, what, req.dry_run, |cat| {
        let (victims, d) = decide(req, cat)?;
        decided = d;
        Ok(victims)
    })
    .await?;
    Ok(PurgeReport {
        removal,
        rules: req.rules.iter().map(RetentionRule::describe).collect(),
        backups: decided.backups,
        departed_nodes: decided.departed,
        commitlog: decided.commitlog,
    })
}

/// A backup unit: a cluster backup (`host` none) or one node's backup.
type UnitKey = (String, Option<HostId>, BackupId);

#[derive(Debug, Default)]
struct Unit {
    cluster: String,
    tag: Option<String>,
    hosts: Vec<HostId>,
    manifests: Vec<String>,
    bytes: u64,
}

fn decide(req: &PurgeRequest, cat: &Catalog) -> Result<(Victims, Decided), RemoveError> {
    // Clusters in scope, by key segment.
    let mut scope: BTreeMap<String, String> = BTreeMap::new();
    for r in &req.rules {
        scope.insert(layout::cluster_key(&r.cluster), r.cluster.clone());
    }
    for c in req.ring.keys() {
        scope.insert(layout::cluster_key(c), c.clone());
    }
    let rings: BTreeMap<String, BTreeSet<&HostId>> =
        req.ring.iter().map(|(c, hosts)| (layout::cluster_key(c), hosts.iter().collect())).collect();

    // Units.
    let mut units: BTreeMap<UnitKey, Unit> = BTreeMap::new();
    for (r, m) in &cat.manifests {
        if !scope.contains_key(&r.cluster_key) {
            continue;
        }
        let clustered = cat.index.cluster_manifest(&r.cluster_key, &r.backup_id).is_some();
        let key = (r.cluster_key.clone(), (!clustered).then(|| r.host_id.clone()), r.backup_id.clone());
        let u = units.entry(key).or_default();
        u.cluster = m.node.cluster.clone();
        u.tag = u.tag.take().or_else(|| m.tag.clone());
        u.hosts.push(r.host_id.clone());
        u.manifests.push(r.key.clone());
        u.bytes += m.total_bytes();
    }

    // Departed nodes: host ids with data in the root that the cluster's ring lacks.
    let mut seen: BTreeMap<(String, HostId), (usize, usize)> = BTreeMap::new();
    for ((ck, host, _), _) in units.iter().filter(|(k, _)| k.1.is_some()) {
        if let Some(h) = host {
            seen.entry((ck.clone(), h.clone())).or_default().0 += 1;
        }
    }
    for (r, _) in &cat.manifests {
        if scope.contains_key(&r.cluster_key) {
            seen.entry((r.cluster_key.clone(), r.host_id.clone())).or_default();
        }
    }
    for (r, _) in &cat.entries {
        if scope.contains_key(&r.cluster_key) {
            seen.entry((r.cluster_key.clone(), r.host_id.clone())).or_default().1 += 1;
        }
    }
    let is_departed = |ck: &str, h: &HostId| rings.get(ck).is_some_and(|ring| !ring.is_empty() && !ring.contains(h));
    let selected: BTreeSet<(String, HostId)> = match &req.departed {
        Departed::None => BTreeSet::new(),
        Departed::All => {
            let missing: Vec<&String> =
                scope.iter().filter(|(ck, _)| !rings.contains_key(*ck)).map(|(_, name)| name).collect();
            if !missing.is_empty() {
                return Err(RemoveError::Refused(format!(
                    "departed nodes are judged against the current ring, which is unknown for cluster(s) {}: pass it (the coordinator does; the agent asks its node)",
                    missing.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ")
                )));
            }
            seen.keys().filter(|(ck, h)| is_departed(ck, h)).cloned().collect()
        }
        Departed::Hosts(hosts) => {
            let mut out = BTreeSet::new();
            for h in hosts {
                let found: Vec<&(String, HostId)> = seen.keys().filter(|(_, x)| x == h).collect();
                if found.is_empty() {
                    return Err(RemoveError::Refused(format!(
                        "host {h} has no backups or commit-log entries in the purged cluster(s)"
                    )));
                }
                for (ck, _) in found {
                    let name = scope.get(ck).cloned().unwrap_or_default();
                    match rings.get(ck) {
                        None => {
                            return Err(RemoveError::Refused(format!(
                                "the current ring of cluster {name:?} is unknown, so host {h} cannot be shown to have departed"
                            )));
                        }
                        Some(ring) if ring.contains(h) => {
                            return Err(RemoveError::Refused(format!(
                                "host {h} is in the current ring of cluster {name:?}: only departed nodes (decommissioned or replaced) can be purged this way"
                            )));
                        }
                        Some(_) => {
                            out.insert((ck.clone(), h.clone()));
                        }
                    }
                }
            }
            out
        }
    };
    let departed: Vec<DepartedNode> = seen
        .iter()
        .filter(|((ck, h), _)| is_departed(ck, h))
        .map(|((ck, h), (backups, entries))| DepartedNode {
            cluster: scope.get(ck).cloned().unwrap_or_default(),
            host_id: h.clone(),
            node_backups: *backups,
            commitlog_entries: *entries,
            purged: selected.contains(&(ck.clone(), h.clone())),
        })
        .collect();

    // Which rule keeps which unit.
    let window_start = |d: Duration| cat.now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let mut keepers: BTreeMap<&UnitKey, Vec<String>> = BTreeMap::new();
    let mut covered: BTreeSet<&UnitKey> = BTreeSet::new();
    for rule in &req.rules {
        let ck = layout::cluster_key(&rule.cluster);
        let members: Vec<&UnitKey> = units
            .iter()
            .filter(|(k, u)| k.0 == ck && rule.tag.as_ref().is_none_or(|t| u.tag.as_ref() == Some(t)))
            .map(|(k, _)| k)
            .collect();
        covered.extend(members.iter().copied());
        if let Some(n) = rule.policy.keep_last {
            // Cluster backups count across the cluster, node backups per node.
            let mut groups: BTreeMap<&Option<HostId>, Vec<&UnitKey>> = BTreeMap::new();
            for k in &members {
                groups.entry(&k.1).or_default().push(k);
            }
            for g in groups.values_mut() {
                g.sort_by(|a, b| b.2.cmp(&a.2));
                for k in g.iter().take(n) {
                    keepers.entry(k).or_default().push(format!("among the newest {n} ({})", rule.describe()));
                }
            }
        }
        if let Some(d) = rule.policy.keep_within {
            let from = window_start(d);
            for k in &members {
                if k.2.started_at() >= from {
                    keepers.entry(k).or_default().push(format!(
                        "started within {} ({})",
                        humantime::format_duration(d),
                        rule.describe()
                    ));
                }
            }
        }
    }

    let mut victims = Victims::default();
    let mut backups = Vec::new();
    for (k, u) in &units {
        let departed_unit = k.1.as_ref().is_some_and(|h| selected.contains(&(k.0.clone(), h.clone())));
        let (kept, reason) = if req.protect.contains(&k.2) {
            (true, "an operation that is still running wrote it".to_owned())
        } else if departed_unit {
            (false, "its node departed from the ring (selected with --departed)".to_owned())
        } else if let Some(why) = keepers.get(k) {
            (true, why.join("; "))
        } else if covered.contains(k) {
            (false, "no retention policy keeps it".to_owned())
        } else {
            (true, "no retention policy covers it".to_owned())
        };
        if kept {
            victims.kept += 1;
        } else {
            victims.manifests.extend(u.manifests.iter().cloned());
        }
        backups.push(BackupVerdict {
            cluster: u.cluster.clone(),
            backup_id: k.2.clone(),
            tag: u.tag.clone(),
            cluster_backup: k.1.is_none(),
            hosts: u.hosts.clone(),
            bytes: u.bytes,
            kept,
            reason,
        });
    }
    backups.sort_by(|a, b| a.backup_id.cmp(&b.backup_id).then(a.cluster.cmp(&b.cluster)));

    // Commit logs: per node, from the snapshot of its oldest kept backup.
    let mut oldest_kept: BTreeMap<(String, HostId), DateTime<Utc>> = BTreeMap::new();
    for (r, m) in &cat.manifests {
        if scope.contains_key(&r.cluster_key) && !victims.manifests.contains(&r.key) {
            let e = oldest_kept.entry((r.cluster_key.clone(), r.host_id.clone())).or_insert(m.snapshot_at);
            *e = (*e).min(m.snapshot_at);
        }
    }
    let mut per_node: BTreeMap<(String, HostId), CommitLogCutoff> = BTreeMap::new();
    for (r, e) in &cat.entries {
        if !scope.contains_key(&r.cluster_key) {
            continue;
        }
        let node = (r.cluster_key.clone(), r.host_id.clone());
        let from = oldest_kept.get(&node).copied();
        let purged_node = selected.contains(&node);
        let c = per_node.entry(node.clone()).or_insert_with(|| CommitLogCutoff {
            cluster: scope.get(&node.0).cloned().unwrap_or_default(),
            host_id: node.1.clone(),
            keep_from: from,
            removed: 0,
            kept: 0,
            reason: match (from, purged_node) {
                _ if req.keep_all_commitlogs => "every entry kept (--keep-all-commitlogs)".into(),
                (Some(f), _) => format!("entries closed before {f} (oldest kept backup's snapshot) are not needed"),
                (None, true) => "departed node without kept backups: every entry goes".into(),
                (None, false) => "no kept backup to restore from: every entry kept".into(),
            },
        });
        let remove = !req.keep_all_commitlogs
            && match from {
                Some(f) => e.closed_at < f,
                None => purged_node,
            };
        if remove {
            c.removed += 1;
            victims.entries.insert(r.key.clone());
        } else {
            c.kept += 1;
        }
    }
    for rule in &req.rules {
        let ck = layout::cluster_key(&rule.cluster);
        if !units.keys().any(|k| k.0 == ck) {
            victims.warnings.push(format!("cluster {:?} has no backups in this repository", rule.cluster));
        }
    }
    Ok((victims, Decided { backups, departed, commitlog: per_node.into_values().collect() }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cassette_common::manifest::{CommitLogEntry, FileEntry, NODE_MANIFEST_FORMAT, NodeInfo, NodeManifest};

    use super::*;
    use crate::ops::catalog::{EntryRef, ManifestRef, RepoIndex};

    const H1: &str = "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3";
    const H2: &str = "2b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3";
    const H3: &str = "3b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3";

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    struct Fixture {
        cat: Catalog,
    }

    impl Fixture {
        fn new(now: &str) -> Self {
            Self { cat: Catalog { index: RepoIndex::default(), manifests: vec![], entries: vec![], now: t(now) } }
        }

        fn backup(&mut self, cluster: &str, id: &str, host: &str, tag: Option<&str>) -> String {
            let backup_id: BackupId = id.parse().unwrap();
            let host_id: HostId = host.parse().unwrap();
            let key = layout::node_manifest_key(cluster, &backup_id, &host_id);
            let at = backup_id.started_at();
            let m = NodeManifest {
                format: NODE_MANIFEST_FORMAT,
                backup_id: backup_id.clone(),
                tag: tag.map(str::to_owned),
                snapshot_tag: "s".into(),
                node: NodeInfo {
                    host_id: host_id.clone(),
                    cluster: cluster.into(),
                    datacenter: "dc1".into(),
                    rack: "r1".into(),
                    tokens: vec![],
                    cassandra_version: "4.1.7".into(),
                    schema_version: None,
                    address: None,
                    data_dirs: vec!["/d".into()],
                },
                started_at: at,
                snapshot_at: at,
                finished_at: at,
                tables: vec![],
                files: vec![FileEntry::new(
                    "ks/t-1/nb-1-big-Data.db".into(),
                    0,
                    10,
                    cassette_common::hash::sha256(b"x"),
                )],
            };
            let r = ManifestRef {
                key: key.clone(),
                cluster_key: layout::cluster_key(cluster),
                backup_id,
                host_id,
                size: 1,
                last_modified: at,
            };
            self.cat.index.node_manifests.push(r.clone());
            self.cat.manifests.push((r, Arc::new(m)));
            key
        }

        fn cluster_manifest(&mut self, cluster: &str, id: &str) {
            let b: BackupId = id.parse().unwrap();
            self.cat.index.cluster_manifests.push((
                layout::cluster_manifest_key(cluster, &b),
                layout::cluster_key(cluster),
                b,
            ));
        }

        fn entry(&mut self, cluster: &str, host: &str, closed: &str) -> String {
            let host_id: HostId = host.parse().unwrap();
            let closed_at = t(closed);
            let key = layout::commitlog_entry_key(cluster, &host_id, closed_at, "CommitLog-7-1.log");
            self.cat.index.commitlog_entries.push(EntryRef {
                key: key.clone(),
                cluster_key: layout::cluster_key(cluster),
                host_id: host_id.clone(),
                size: 1,
                last_modified: closed_at,
            });
            let e = CommitLogEntry {
                format: 1,
                segment: "CommitLog-7-1.log".into(),
                version: 7,
                segment_id: 1,
                host_id,
                size: 1,
                sha256: cassette_common::hash::sha256(closed.as_bytes()),
                closed_at,
                archived_at: closed_at,
            };
            self.cat.entries.push((self.cat.index.commitlog_entries.last().unwrap().clone(), e));
            key
        }
    }

    fn rule(cluster: &str, keep_last: Option<usize>, keep_within_days: Option<u64>) -> RetentionRule {
        RetentionRule {
            cluster: cluster.into(),
            tag: None,
            policy: RetentionPolicy {
                keep_last,
                keep_within: keep_within_days.map(|d| Duration::from_secs(d * 86400)),
            },
        }
    }

    #[test]
    fn policies_keep_the_union_and_other_clusters_are_untouched() {
        let mut f = Fixture::new("2024-03-31T00:00:00Z");
        let a1 = f.backup("prod", "20240101T000000Z-00000001", H1, None);
        let a2 = f.backup("prod", "20240201T000000Z-00000002", H1, None);
        let a3 = f.backup("prod", "20240301T000000Z-00000003", H1, None);
        let a4 = f.backup("prod", "20240325T000000Z-00000004", H1, None);
        let other = f.backup("other", "20230101T000000Z-00000005", H2, None);
        // keep-last 1 keeps a4; keep-within 40d keeps a3 and a4: a1, a2 go.
        let req = PurgeRequest { rules: vec![rule("prod", Some(1), Some(40))], ..Default::default() };
        let (v, d) = decide(&req, &f.cat).unwrap();
        assert_eq!(v.manifests, BTreeSet::from([a1.clone(), a2.clone()]));
        assert!(!v.manifests.contains(&a3) && !v.manifests.contains(&a4) && !v.manifests.contains(&other));
        assert_eq!(v.kept, 2);
        assert_eq!(d.backups.len(), 4, "only the purged cluster's backups get verdicts");
        // Two rules: a backup stays if either keeps it.
        let req = PurgeRequest {
            rules: vec![rule("prod", Some(1), None), rule("prod", Some(3), None)],
            ..Default::default()
        };
        assert_eq!(decide(&req, &f.cat).unwrap().0.manifests, BTreeSet::from([a1]));
        assert!(PurgeRequest { rules: vec![rule("prod", Some(0), None)], ..Default::default() }.validate().is_err());
        assert!(PurgeRequest::default().validate().is_err());
    }

    #[test]
    fn schedule_rules_cover_their_tag_only_and_cluster_backups_count_as_one() {
        let mut f = Fixture::new("2024-03-31T00:00:00Z");
        // Cluster backups on two nodes (one id each), tagged by a schedule.
        let mut nightly = Vec::new();
        for id in ["20240101T000000Z-00000001", "20240102T000000Z-00000002", "20240103T000000Z-00000003"] {
            nightly.push((f.backup("prod", id, H1, Some("nightly")), f.backup("prod", id, H2, Some("nightly"))));
            f.cluster_manifest("prod", id);
        }
        let manual = f.backup("prod", "20231201T000000Z-00000009", H1, Some("manual"));
        let mut r = rule("prod", Some(2), None);
        r.tag = Some("nightly".into());
        let (v, d) = decide(&PurgeRequest { rules: vec![r], ..Default::default() }, &f.cat).unwrap();
        assert_eq!(v.manifests, BTreeSet::from([nightly[0].0.clone(), nightly[0].1.clone()]));
        assert!(!v.manifests.contains(&manual), "a tag-scoped rule does not cover other backups");
        let verdict = d.backups.iter().find(|b| b.backup_id.as_str() == "20240101T000000Z-00000001").unwrap();
        assert!(verdict.cluster_backup && !verdict.kept && verdict.hosts.len() == 2);
        let m = d.backups.iter().find(|b| b.tag.as_deref() == Some("manual")).unwrap();
        assert!(m.kept && m.reason.contains("no retention policy covers"));
        // Protected (a running operation's) backups stay.
        let mut r = rule("prod", Some(1), None);
        r.tag = Some("nightly".into());
        let req = PurgeRequest {
            rules: vec![r],
            protect: vec!["20240101T000000Z-00000001".parse().unwrap()],
            ..Default::default()
        };
        let (v, _) = decide(&req, &f.cat).unwrap();
        assert_eq!(v.manifests, BTreeSet::from([nightly[1].0.clone(), nightly[1].1.clone()]));
    }

    #[test]
    fn commit_logs_are_kept_from_the_oldest_kept_snapshot() {
        let mut f = Fixture::new("2024-03-31T00:00:00Z");
        f.backup("prod", "20240101T000000Z-00000001", H1, None);
        f.backup("prod", "20240201T000000Z-00000002", H1, None);
        let old = f.entry("prod", H1, "2024-01-15T00:00:00Z");
        let at_base = f.entry("prod", H1, "2024-02-01T00:00:00Z");
        let newer = f.entry("prod", H1, "2024-03-01T00:00:00Z");
        // A node with entries but no backup keeps them.
        let orphan = f.entry("prod", H2, "2023-01-01T00:00:00Z");
        let req = PurgeRequest { rules: vec![rule("prod", Some(1), None)], ..Default::default() };
        let (v, d) = decide(&req, &f.cat).unwrap();
        assert_eq!(v.entries, BTreeSet::from([old.clone()]));
        assert!(!v.entries.contains(&at_base) && !v.entries.contains(&newer) && !v.entries.contains(&orphan));
        let c = d.commitlog.iter().find(|c| c.host_id.as_str() == H1).unwrap();
        assert_eq!((c.removed, c.kept, c.keep_from), (1, 2, Some(t("2024-02-01T00:00:00Z"))));
        let req = PurgeRequest { keep_all_commitlogs: true, ..req };
        assert!(decide(&req, &f.cat).unwrap().0.entries.is_empty());
    }

    #[test]
    fn departed_nodes_come_from_the_ring_and_are_purged_only_when_selected() {
        let mut f = Fixture::new("2024-03-31T00:00:00Z");
        let live = f.backup("prod", "20240101T000000Z-00000001", H1, None);
        let gone = f.backup("prod", "20240102T000000Z-00000002", H2, None);
        let gone_entry = f.entry("prod", H2, "2024-03-01T00:00:00Z");
        // A cluster backup including the departed node stays governed by the policy.
        let c1 = f.backup("prod", "20240103T000000Z-00000003", H2, None);
        let c2 = f.backup("prod", "20240103T000000Z-00000003", H1, None);
        f.cluster_manifest("prod", "20240103T000000Z-00000003");
        let ring = BTreeMap::from([("prod".to_owned(), vec![H1.parse().unwrap(), H3.parse().unwrap()])]);
        let base = PurgeRequest { rules: vec![rule("prod", Some(5), None)], ring: ring.clone(), ..Default::default() };
        let (v, d) = decide(&base, &f.cat).unwrap();
        assert!(v.manifests.is_empty() && v.entries.is_empty());
        assert_eq!(d.departed.len(), 1);
        assert!(d.departed[0].host_id.as_str() == H2 && !d.departed[0].purged);
        assert_eq!((d.departed[0].node_backups, d.departed[0].commitlog_entries), (1, 1));
        let all = PurgeRequest { departed: Departed::All, ..base.clone() };
        let (v, _) = decide(&all, &f.cat).unwrap();
        assert_eq!(v.manifests, BTreeSet::from([gone.clone()]));
        assert!(!v.manifests.contains(&live) && !v.manifests.contains(&c1) && !v.manifests.contains(&c2));
        // Its commit logs: the cluster backup is kept, so entries from its snapshot on stay.
        assert!(v.entries.is_empty(), "{gone_entry} is after the kept cluster backup's snapshot");
        let named = PurgeRequest { departed: Departed::Hosts(vec![H2.parse().unwrap()]), ..base.clone() };
        assert_eq!(decide(&named, &f.cat).unwrap().0.manifests, BTreeSet::from([gone]));
        let in_ring = PurgeRequest { departed: Departed::Hosts(vec![H1.parse().unwrap()]), ..base.clone() };
        assert!(decide(&in_ring, &f.cat).unwrap_err().to_string().contains("in the current ring"));
        let no_ring = PurgeRequest { ring: BTreeMap::new(), departed: Departed::All, ..base };
        assert!(decide(&no_ring, &f.cat).unwrap_err().to_string().contains("unknown"));
    }
}
