//! Planning cluster operations: pure functions from the registry and the catalog to a [`Plan`]
//! (no I/O), which the executor persists as the operation's spec and then drives.

use std::collections::{BTreeMap, BTreeSet};

use cassette_common::phases as ph;
use serde::{Deserialize, Serialize};

use crate::model::{BackupRecord, ClusterRecord, NodeRecord};

/// Operation kinds.
pub const KIND_BACKUP: &str = "backup";
/// A restore.
pub const KIND_RESTORE: &str = "restore";
/// A verification of a backup's blobs.
pub const KIND_VERIFY: &str = "verify";
/// A removal of a backup.
pub const KIND_DELETE: &str = "delete";
/// Applying retention rules to a cluster's backups (one node, for the whole cluster).
pub const KIND_PURGE: &str = "purge";

/// `cassette backup create`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupSpec {
    /// Registered cluster.
    pub cluster: String,
    /// `ks1,ks2.t1`; empty: every user keyspace.
    pub entities: String,
    /// Only these datacenters (empty: all).
    pub datacenters: Vec<String>,
    /// Operator label.
    pub tag: Option<String>,
    /// Nodes uploading at once per datacenter (0: all).
    pub parallel: usize,
    /// Upload bandwidth per node (`50MiB/s`).
    pub bandwidth: Option<String>,
    /// Complete without the nodes that stay unreachable, recording what is missing.
    pub allow_partial: bool,
    /// Refuse a node whose data file systems have less free space than this.
    pub min_free_bytes: u64,
    /// Include system keyspaces.
    pub system_keyspaces: bool,
}

/// `cassette restore create`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreSpec {
    /// The cluster whose backup is restored.
    pub cluster: String,
    /// Backup id, `latest`, or a tag.
    pub backup: String,
    /// Restore onto this other registered cluster (in-place, same nodes per datacenter and rack).
    pub target_cluster: Option<String>,
    /// `ks1,ks2.t1`; empty: every user table in the backup.
    pub entities: String,
    /// `ks.t=ks.t2` each.
    pub renames: Vec<String>,
    /// `import` (default), `hardlinks` or `in-place`.
    pub strategy: String,
    /// `source=target` pairs (host ids or addresses); default: matched by datacenter and rack.
    pub node_map: Vec<String>,
    /// Live: add to the tables instead of truncating them first.
    pub no_truncate: bool,
    /// Restore even if a table's primary key or column types differ.
    pub ignore_schema_mismatch: bool,
    /// Restore even if a node's tokens differ from its backup's.
    pub ignore_token_mismatch: bool,
    /// Live: create missing tables from the backup's schema (once, in the truncate phase).
    pub create_tables: bool,
    /// In-place onto another cluster: the nodes start as a new cluster with the backup's
    /// schema, roles, data and tokens (`system_schema` and `system_auth` restored, the nodes'
    /// own `system` keyspace cleared: new host ids), e.g. onto an empty cluster.
    pub new_cluster: bool,
    /// Nodes downloading at once per datacenter (0: all).
    pub parallel: usize,
}

/// `cassette backup verify` and `delete`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupRefSpec {
    /// Registered cluster.
    pub cluster: String,
    /// Backup id or `latest`.
    pub backup: String,
    /// Verify: download and hash every blob.
    pub deep: bool,
}

/// A node an operation runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanNode {
    /// Host id.
    pub host_id: String,
    /// Address in the ring.
    pub address: String,
    /// Its agent.
    pub agent_address: String,
    /// Datacenter.
    pub datacenter: String,
    /// Rack.
    pub rack: String,
    /// Restore: the node whose backup this node restores.
    pub source_host: String,
}

/// On which nodes a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Every node of the plan still in the operation.
    Every,
    /// One node (the first still in the operation).
    One,
}

/// One step: a phase on some nodes; the next step starts when every node finished this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Phase name ([`cassette_common::phases`]).
    pub phase: String,
    /// Where.
    pub scope: Scope,
    /// At most `parallel_per_dc` nodes at once in each datacenter.
    pub per_dc_limit: bool,
    /// With `allow_partial`, a node failing it leaves the operation instead of failing it.
    pub droppable: bool,
    /// Runs at the end whatever happened (on every node that started the operation).
    pub always: bool,
}

impl Step {
    fn every(phase: &str) -> Self {
        Self { phase: phase.into(), scope: Scope::Every, per_dc_limit: false, droppable: false, always: false }
    }
    fn one(phase: &str) -> Self {
        Self { scope: Scope::One, ..Self::every(phase) }
    }
}

/// The plan of an operation, persisted as its spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Plan {
    /// Kind.
    pub kind: String,
    /// The registered cluster the phases run on.
    pub cluster: String,
    /// Clusters no other exclusive operation may run on meanwhile.
    pub exclusive_clusters: Vec<String>,
    /// The backup made, restored, verified or deleted.
    pub backup_id: String,
    /// Restore, verify, delete: the Cassandra cluster name of the backup (its repository segment).
    pub storage_cluster: String,
    /// Nodes, ordered by datacenter, rack, address.
    pub nodes: Vec<PlanNode>,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Per-datacenter limit for steps that have one (0: none).
    pub parallel_per_dc: usize,
    /// See [`BackupSpec::allow_partial`].
    pub allow_partial: bool,
    /// The backup request.
    pub backup: Option<BackupSpec>,
    /// The restore request.
    pub restore: Option<RestoreSpec>,
    /// The verify or delete request.
    pub reference: Option<BackupRefSpec>,
    /// The purge request.
    pub purge: Option<PurgeSpec>,
    /// Remarks found while planning.
    pub warnings: Vec<String>,
}

/// A retention run over a cluster's backups (`cassette backup purge`, and schedules after
/// each successful run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PurgeSpec {
    /// The registered cluster.
    pub cluster: String,
    /// Only the backups with this tag (a schedule's); none: every backup of the cluster.
    pub tag: Option<String>,
    /// Keep the newest N.
    pub keep_last: Option<u32>,
    /// Keep those started within this long (`30d`, `12h`).
    pub keep_within: Option<String>,
    /// Departed nodes to purge: host ids, or `all`.
    pub departed: Vec<String>,
    /// Backup ids to keep whatever the rules say (besides those of running operations).
    pub protect: Vec<String>,
    /// Only report.
    pub dry_run: bool,
}

/// A request that cannot be planned. The message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

/// The plan's view of a registered node (no restore source).
pub(crate) fn plan_node(n: &NodeRecord) -> PlanNode {
    PlanNode {
        host_id: n.host_id.clone(),
        address: n.address.clone(),
        agent_address: n.agent_address.clone(),
        datacenter: n.datacenter.clone(),
        rack: n.rack.clone(),
        source_host: String::new(),
    }
}

/// The node that does a whole-cluster job alone: one whose agent answered last, the first by
/// address among them.
pub(crate) fn one_node<'a>(cluster: &str, nodes: &'a [NodeRecord]) -> Result<&'a NodeRecord, PlanError> {
    nodes
        .iter()
        .min_by_key(|n| (!n.health.agent_reachable, n.address.clone()))
        .ok_or_else(|| PlanError(format!("cluster {cluster} has no nodes")))
}

fn sorted(mut nodes: Vec<PlanNode>) -> Vec<PlanNode> {
    nodes.sort_by(|a, b| (&a.datacenter, &a.rack, &a.address).cmp(&(&b.datacenter, &b.rack, &b.address)));
    nodes
}

fn check_entities(list: &str) -> Result<(), PlanError> {
    for e in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ok = e.split('.').count() <= 2
            && e.split('.')
                .all(|p| !p.is_empty() && p.len() <= 48 && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !ok {
            return Err(PlanError(format!(
                "invalid entity {e:?} in --entities: keyspace or keyspace.table, letters, digits and '_' (example: --entities shop,audit.events)"
            )));
        }
    }
    Ok(())
}

/// Plans a cluster backup.
pub fn plan_backup(
    cluster: &ClusterRecord,
    nodes: &[NodeRecord],
    spec: &BackupSpec,
    backup_id: &str,
) -> Result<Plan, PlanError> {
    check_entities(&spec.entities)?;
    if let Some(b) = &spec.bandwidth {
        b.parse::<cassette_common::units::Rate>()
            .map_err(|e| PlanError(format!("--bandwidth {b:?}: {e} (example: --bandwidth 50MiB/s)")))?;
    }
    let known: BTreeSet<&str> = nodes.iter().map(|n| n.datacenter.as_str()).collect();
    for dc in &spec.datacenters {
        if !known.contains(dc.as_str()) {
            return Err(PlanError(format!(
                "cluster {} has no datacenter {dc:?}; it has {}",
                cluster.name,
                known.iter().copied().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let chosen: Vec<PlanNode> = nodes
        .iter()
        .filter(|n| spec.datacenters.is_empty() || spec.datacenters.contains(&n.datacenter))
        .map(plan_node)
        .collect();
    if chosen.is_empty() {
        return Err(PlanError(format!(
            "cluster {} has no nodes registered: cassette cluster add {} --agent host:port --replace",
            cluster.name, cluster.name
        )));
    }
    let mut upload = Step::every(ph::BACKUP_UPLOAD);
    upload.per_dc_limit = true;
    upload.droppable = true;
    let mut check = Step::every(ph::BACKUP_CHECK);
    check.droppable = true;
    let mut snapshot = Step::every(ph::BACKUP_SNAPSHOT);
    snapshot.droppable = true;
    let mut clear = Step::every(ph::BACKUP_CLEAR_SNAPSHOT);
    clear.always = true;
    Ok(Plan {
        kind: KIND_BACKUP.into(),
        cluster: cluster.name.clone(),
        exclusive_clusters: vec![cluster.name.clone()],
        backup_id: backup_id.to_owned(),
        storage_cluster: cluster.cassandra_cluster_name.clone(),
        nodes: sorted(chosen),
        steps: vec![check, snapshot, upload, Step::one(ph::BACKUP_CLUSTER_MANIFEST), clear],
        parallel_per_dc: spec.parallel,
        allow_partial: spec.allow_partial,
        backup: Some(spec.clone()),
        ..Plan::default()
    })
}

/// Picks a backup of the catalog: an id, `latest`, or the newest with a tag.
pub fn select_backup<'a>(
    backups: &'a [BackupRecord],
    cluster: &str,
    which: &str,
) -> Result<&'a BackupRecord, PlanError> {
    let usable = || backups.iter().filter(|b| b.status != "failed");
    let found = match which {
        "" | "latest" => usable().max_by(|a, b| a.id.cmp(&b.id)),
        w => backups.iter().find(|b| b.id == w).or_else(|| {
            usable().filter(|b| b.labels.get("tag").is_some_and(|t| t == w)).max_by(|a, b| a.id.cmp(&b.id))
        }),
    };
    found.ok_or_else(|| {
        let ids: Vec<&str> = backups.iter().rev().take(5).map(|b| b.id.as_str()).collect();
        PlanError(if backups.is_empty() {
            format!("cluster {cluster} has no backups in the catalog (cassette backup create --cluster {cluster})")
        } else {
            format!(
                "no backup {which:?} of cluster {cluster}; the newest are {} (cassette backup list --cluster {cluster})",
                ids.join(", ")
            )
        })
    })
}

/// The nodes a backup holds, as the backup's operation planned them.
pub fn backup_nodes(backup: &BackupRecord, backup_plan: &Plan) -> Vec<PlanNode> {
    backup_plan.nodes.iter().filter(|n| backup.nodes.contains(&n.host_id)).cloned().collect()
}

/// Plans a restore of `backup` (whose nodes are `source`) onto `target` with its `nodes`.
pub fn plan_restore(
    backup: &BackupRecord,
    source: &[PlanNode],
    target: &ClusterRecord,
    nodes: &[NodeRecord],
    spec: &RestoreSpec,
) -> Result<Plan, PlanError> {
    check_entities(&spec.entities)?;
    let strategy = match spec.strategy.as_str() {
        "" | "import" => "import",
        "hardlinks" => "hardlinks",
        "in-place" => "in-place",
        s => return Err(PlanError(format!("--strategy {s:?}: use import, hardlinks or in-place"))),
    };
    let other_cluster = target.name != backup.cluster;
    if other_cluster && strategy != "in-place" {
        return Err(PlanError(format!(
            "restoring backup {} of cluster {} onto cluster {} needs --strategy in-place: each node is rebuilt with its source's tokens (stop Cassandra on every node of {} first)",
            backup.id, backup.cluster, target.name, target.name
        )));
    }
    if strategy == "in-place" && !spec.renames.is_empty() {
        return Err(PlanError("--rename needs a live restore (--strategy import or hardlinks)".into()));
    }
    if spec.new_cluster && strategy != "in-place" {
        return Err(PlanError(
            "--new-cluster rebuilds stopped nodes from the backup (schema, roles, data, tokens): add --strategy in-place and stop Cassandra on every target node".into(),
        ));
    }
    for r in &spec.renames {
        let ok = r.split_once('=').is_some_and(|(a, b)| a.split('.').count() == 2 && b.split('.').count() == 2);
        if !ok {
            return Err(PlanError(format!(
                "--rename {r:?} is not ks.table=ks.table (example: --rename shop.users=shop.users_restored)"
            )));
        }
    }
    let mut warnings = Vec::new();
    let missing = backup.labels.get("missing_nodes").filter(|m| !m.is_empty());
    if let Some(m) = missing {
        warnings
            .push(format!("backup {} is partial: it lacks nodes {m}; their token ranges are not restored", backup.id));
    }
    let targets: Vec<PlanNode> = nodes.iter().map(plan_node).collect();
    let mapping: Vec<(PlanNode, PlanNode)> = if !spec.node_map.is_empty() {
        explicit_mapping(source, &targets, &spec.node_map)?
    } else if other_cluster {
        topology_mapping(source, &targets, &backup.cluster, &target.name)?
    } else {
        let mut m = Vec::new();
        for s in source {
            let t = targets.iter().find(|t| t.host_id == s.host_id).ok_or_else(|| {
                PlanError(format!(
                    "node {} ({}, {}) of backup {} is no longer in cluster {}: restore onto other nodes with --node-map {}=<host id>",
                    s.host_id, s.address, s.datacenter, backup.id, target.name, s.host_id
                ))
            })?;
            m.push((s.clone(), t.clone()));
        }
        for t in &targets {
            if !source.iter().any(|s| s.host_id == t.host_id) {
                warnings.push(format!(
                    "node {} ({}) is not in backup {}: nothing is restored on it",
                    t.host_id, t.address, backup.id
                ));
            }
        }
        m
    };
    let planned: Vec<PlanNode> = mapping.into_iter().map(|(s, t)| PlanNode { source_host: s.host_id, ..t }).collect();
    let mut download = Step::every(ph::RESTORE_DOWNLOAD);
    download.per_dc_limit = true;
    let mut steps = vec![Step::every(ph::RESTORE_CHECK), download];
    if strategy != "in-place" && !spec.no_truncate {
        steps.push(Step::one(ph::RESTORE_TRUNCATE));
    }
    steps.push(Step::every(ph::RESTORE_IMPORT));
    steps.push(Step::every(ph::RESTORE_CLEANUP));
    let mut spec = spec.clone();
    spec.strategy = strategy.into();
    Ok(Plan {
        kind: KIND_RESTORE.into(),
        cluster: target.name.clone(),
        exclusive_clusters: vec![target.name.clone()],
        backup_id: backup.id.clone(),
        storage_cluster: backup.labels.get("cassandra_cluster").cloned().unwrap_or_default(),
        nodes: sorted(planned),
        steps,
        parallel_per_dc: spec.parallel,
        restore: Some(spec),
        warnings,
        ..Plan::default()
    })
}

fn explicit_mapping(
    source: &[PlanNode],
    targets: &[PlanNode],
    pairs: &[String],
) -> Result<Vec<(PlanNode, PlanNode)>, PlanError> {
    let find = |list: &[PlanNode], key: &str| list.iter().find(|n| n.host_id == key || n.address == key).cloned();
    let mut out = Vec::new();
    let mut used = BTreeSet::new();
    for p in pairs {
        let (a, b) = p
            .split_once('=')
            .ok_or_else(|| PlanError(format!("--node-map {p:?} is not source=target (host ids or addresses)")))?;
        let s = find(source, a.trim())
            .ok_or_else(|| PlanError(format!("--node-map {p:?}: {a} is not a node of the backup")))?;
        let t = find(targets, b.trim())
            .ok_or_else(|| PlanError(format!("--node-map {p:?}: {b} is not a node of the target cluster")))?;
        if !used.insert(t.host_id.clone()) {
            return Err(PlanError(format!("--node-map names target {b} twice")));
        }
        out.push((s, t));
    }
    if out.len() != source.len() {
        return Err(PlanError(format!(
            "--node-map maps {} of the backup's {} nodes: map every one",
            out.len(),
            source.len()
        )));
    }
    Ok(out)
}

/// Source and target nodes matched within each (datacenter, rack), in address order.
fn topology_mapping(
    source: &[PlanNode],
    targets: &[PlanNode],
    from: &str,
    to: &str,
) -> Result<Vec<(PlanNode, PlanNode)>, PlanError> {
    let group = |list: &[PlanNode]| {
        let mut g: BTreeMap<(String, String), Vec<PlanNode>> = BTreeMap::new();
        for n in list {
            g.entry((n.datacenter.clone(), n.rack.clone())).or_default().push(n.clone());
        }
        for v in g.values_mut() {
            v.sort_by(|a, b| a.address.cmp(&b.address));
        }
        g
    };
    let (s, t) = (group(source), group(targets));
    let count = |g: &BTreeMap<(String, String), Vec<PlanNode>>| {
        g.iter().map(|((dc, rack), v)| format!("{dc}/{rack}: {}", v.len())).collect::<Vec<_>>().join(", ")
    };
    let shape =
        |g: &BTreeMap<(String, String), Vec<PlanNode>>| g.iter().map(|(k, v)| (k.clone(), v.len())).collect::<Vec<_>>();
    if shape(&s) != shape(&t) {
        return Err(PlanError(format!(
            "the topologies differ: the backup of {from} has {}, cluster {to} has {}; an in-place restore onto another cluster needs the same number of nodes per datacenter and rack (or an explicit --node-map)",
            count(&s),
            count(&t)
        )));
    }
    Ok(s.into_values().zip(t.into_values()).flat_map(|(a, b)| a.into_iter().zip(b)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeHealth;

    fn node(host: &str, dc: &str, rack: &str) -> NodeRecord {
        NodeRecord {
            cluster: "c".into(),
            host_id: host.into(),
            address: format!("10.0.0.{}", host.len()),
            agent_address: String::new(),
            datacenter: dc.into(),
            rack: rack.into(),
            token_count: 16,
            release_version: "4.1.7".into(),
            health: NodeHealth::default(),
        }
    }

    fn cluster(name: &str) -> ClusterRecord {
        ClusterRecord {
            name: name.into(),
            cassandra_cluster_name: "Test Cluster".into(),
            agent_pattern: String::new(),
            created_at_ms: 0,
        }
    }

    #[test]
    fn backup_plans_check_snapshot_upload_manifest_clear_and_filters_datacenters() {
        let nodes = vec![node("a", "dc1", "r1"), node("bb", "dc2", "r1"), node("ccc", "dc1", "r1")];
        let spec = BackupSpec { cluster: "prod".into(), datacenters: vec!["dc1".into()], ..Default::default() };
        let p = plan_backup(&cluster("prod"), &nodes, &spec, "20260101T000000Z-00000001").unwrap();
        let phases: Vec<&str> = p.steps.iter().map(|s| s.phase.as_str()).collect();
        assert_eq!(
            phases,
            [
                ph::BACKUP_CHECK,
                ph::BACKUP_SNAPSHOT,
                ph::BACKUP_UPLOAD,
                ph::BACKUP_CLUSTER_MANIFEST,
                ph::BACKUP_CLEAR_SNAPSHOT
            ]
        );
        assert_eq!(p.nodes.iter().map(|n| n.host_id.as_str()).collect::<Vec<_>>(), ["a", "ccc"]);
        let e =
            plan_backup(&cluster("prod"), &nodes, &BackupSpec { datacenters: vec!["dc9".into()], ..spec.clone() }, "x")
                .unwrap_err();
        assert!(e.0.contains("no datacenter \"dc9\"") && e.0.contains("dc1, dc2"), "{e}");
        let e = plan_backup(&cluster("prod"), &nodes, &BackupSpec { entities: "bad-name".into(), ..spec }, "x")
            .unwrap_err();
        assert!(e.0.contains("--entities"), "{e}");
    }

    #[test]
    fn restores_onto_another_cluster_match_datacenters_and_racks() {
        let source = vec![
            PlanNode {
                host_id: "s1".into(),
                address: "1".into(),
                datacenter: "dc1".into(),
                rack: "r1".into(),
                ..Default::default()
            },
            PlanNode {
                host_id: "s2".into(),
                address: "2".into(),
                datacenter: "dc2".into(),
                rack: "r1".into(),
                ..Default::default()
            },
        ];
        let backup = BackupRecord {
            cluster: "prod".into(),
            id: "b1".into(),
            operation_id: "op".into(),
            status: "complete".into(),
            location: String::new(),
            nodes: vec!["s1".into(), "s2".into()],
            bytes_total: 0,
            started_at_ms: 0,
            finished_at_ms: 0,
            labels: Default::default(),
        };
        let targets = vec![node("t2", "dc2", "r1"), node("t1", "dc1", "r1")];
        let spec = RestoreSpec { strategy: "in-place".into(), ..Default::default() };
        let p = plan_restore(&backup, &source, &cluster("copy"), &targets, &spec).unwrap();
        let pairs: Vec<(&str, &str)> = p.nodes.iter().map(|n| (n.source_host.as_str(), n.host_id.as_str())).collect();
        assert_eq!(pairs, [("s1", "t1"), ("s2", "t2")]);
        let e = plan_restore(&backup, &source, &cluster("copy"), &targets, &RestoreSpec::default()).unwrap_err();
        assert!(e.0.contains("--strategy in-place"), "{e}");
        let e = plan_restore(&backup, &source, &cluster("copy"), &targets[..1], &spec).unwrap_err();
        assert!(e.0.contains("topologies differ"), "{e}");
    }
}
