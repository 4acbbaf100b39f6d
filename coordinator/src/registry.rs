//! Registering clusters through their agents, and checking their health.
//!
//! `cassette cluster add <name> --agent host:port` reads the ring through that one agent, then
//! expects an agent on every node at an address made from a pattern (`{address}:7079` by
//! default: the node's address and the seed agent's port), asks each one who it is, and checks
//! that it is the node the ring places there (same host id). The result is recorded through
//! raft; `cassette cluster status` probes every agent again.

use std::sync::Arc;
use std::time::Duration;

use cassette_proto::v1 as pb;
use futures::StreamExt;

use crate::agents::{AgentClient, AgentError};
use crate::model::{self, ClusterRecord, NodeHealth, NodeRecord, now_ms};

/// Agents probed at once.
pub const PROBE_CONCURRENCY: usize = 64;

/// Why a cluster cannot be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The cluster name is unusable.
    #[error("invalid cluster name {0:?}: use letters, digits, '.', '_' and '-'")]
    InvalidName(String),
    /// The pattern is unusable.
    #[error(
        "invalid agent pattern {0:?}: it must contain {{address}} (or {{host_id}}) and a port, e.g. {{address}}:7079"
    )]
    InvalidPattern(String),
    /// The seed agent could not give the ring.
    #[error("read the ring through the agent at {agent}: {source}")]
    Seed {
        /// The seed agent.
        agent: String,
        /// Why.
        #[source]
        source: AgentError,
    },
    /// The ring is empty or lacks host ids.
    #[error("the ring read through {agent} is unusable: {reason}")]
    Ring {
        /// The seed agent.
        agent: String,
        /// What is wrong.
        reason: String,
    },
    /// Some nodes' agents are unreachable or disagree with the ring.
    #[error(
        "cluster {name}: {} of {total} nodes have a problem (pass --allow-unhealthy to register anyway):\n{}",
        problems.len(),
        problems.join("\n")
    )]
    Unhealthy {
        /// The cluster.
        name: String,
        /// Node count.
        total: usize,
        /// One line per node with a problem.
        problems: Vec<String>,
    },
}

/// The agent address of a node from `pattern`.
pub fn agent_address(pattern: &str, node_address: &str, host_id: &str, dc: &str, rack: &str) -> String {
    // The ring shows `ip` or `ip:port` (storage port); the agent runs on the host.
    let host = match node_address.parse::<std::net::SocketAddr>() {
        Ok(sa) => sa.ip().to_string(),
        Err(_) => node_address.to_owned(),
    };
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
    pattern
        .replace("{address}", &host)
        .replace("{host_id}", host_id)
        .replace("{datacenter}", dc)
        .replace("{rack}", rack)
}

/// The default pattern for a seed agent address: `{address}:<its port>`.
pub fn default_pattern(seed: &str) -> Option<String> {
    let (_, port) = seed.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    Some(format!("{{address}}:{port}"))
}

/// Asks a node's agent who it is; turns the answer into health, checking the host id.
pub async fn probe(
    agents: &dyn AgentClient,
    node: &NodeRecord,
    timeout: Duration,
) -> (NodeHealth, Option<pb::NodeIdentity>) {
    let mut h = NodeHealth { checked_at_ms: now_ms(), ..Default::default() };
    let answer = match tokio::time::timeout(timeout, agents.describe(&node.agent_address)).await {
        Ok(r) => r,
        Err(_) => {
            h.problem = format!("agent at {} did not answer within {timeout:?}", node.agent_address);
            return (h, None);
        }
    };
    match answer {
        Err(e) => {
            h.problem = e.to_string();
            (h, None)
        }
        Ok(id) => {
            h.agent_reachable = true;
            h.agent_version = id.agent_version.clone();
            h.certificate_name = id.certificate_name.clone();
            h.certificate_not_after_ms = id.certificate_not_after_ms;
            h.cassandra_up = id.cassandra_up;
            if let Some(d) = id.disks.iter().min_by_key(|d| d.free_bytes) {
                h.disk_free_bytes = d.free_bytes;
                h.disk_total_bytes = d.total_bytes;
            }
            if !id.host_id.is_empty() && id.host_id != node.host_id {
                h.problem = format!(
                    "the agent at {} serves node {} ({}), but the ring has {} at {}: check the agent address pattern",
                    node.agent_address, id.host_id, id.datacenter, node.host_id, node.address
                );
            } else if !id.cassandra_up {
                h.problem = format!("Cassandra is not up: {}", id.cassandra_error);
            }
            (h, Some(id))
        }
    }
}

/// Probes every node, `PROBE_CONCURRENCY` at a time.
pub async fn probe_all(
    agents: Arc<dyn AgentClient>,
    nodes: &[NodeRecord],
    timeout: Duration,
) -> Vec<(NodeHealth, Option<pb::NodeIdentity>)> {
    futures::stream::iter(nodes.iter().cloned().map(|n| {
        let agents = Arc::clone(&agents);
        async move { probe(agents.as_ref(), &n, timeout).await }
    }))
    .buffered(PROBE_CONCURRENCY)
    .collect()
    .await
}

/// Reads the ring through `seed`, finds and checks every node's agent. Returns the records to
/// commit; fails when a node has a problem unless `allow_unhealthy`.
pub async fn discover(
    agents: Arc<dyn AgentClient>,
    name: &str,
    seed: &str,
    pattern: Option<&str>,
    allow_unhealthy: bool,
    timeout: Duration,
) -> Result<(ClusterRecord, Vec<NodeRecord>), RegistryError> {
    if !model::valid_name(name) {
        return Err(RegistryError::InvalidName(name.to_owned()));
    }
    let pattern = match pattern.filter(|p| !p.is_empty()) {
        Some(p) => p.to_owned(),
        None => default_pattern(seed).ok_or_else(|| RegistryError::InvalidPattern(seed.to_owned()))?,
    };
    if !(pattern.contains("{address}") || pattern.contains("{host_id}")) || !pattern.contains(':') {
        return Err(RegistryError::InvalidPattern(pattern));
    }
    let ring = agents.ring(seed).await.map_err(|source| RegistryError::Seed { agent: seed.to_owned(), source })?;
    if ring.members.is_empty() {
        return Err(RegistryError::Ring { agent: seed.to_owned(), reason: "no nodes".into() });
    }
    let mut nodes = Vec::new();
    for m in &ring.members {
        if m.host_id.is_empty() {
            return Err(RegistryError::Ring {
                agent: seed.to_owned(),
                reason: format!(
                    "node {} has no host id yet (still joining?): register the cluster when it has joined",
                    m.address
                ),
            });
        }
        nodes.push(NodeRecord {
            cluster: name.to_owned(),
            host_id: m.host_id.clone(),
            address: m.address.clone(),
            agent_address: agent_address(&pattern, &m.address, &m.host_id, &m.datacenter, &m.rack),
            datacenter: m.datacenter.clone(),
            rack: m.rack.clone(),
            token_count: m.token_count,
            release_version: String::new(),
            health: NodeHealth::default(),
        });
    }
    let probes = probe_all(Arc::clone(&agents), &nodes, timeout).await;
    let mut problems = Vec::new();
    let mut cassandra_cluster_name = ring.cluster_name.clone();
    for (n, (h, id)) in nodes.iter_mut().zip(probes) {
        if let Some(id) = &id {
            n.release_version = id.release_version.clone();
            if id.token_count > 0 {
                n.token_count = id.token_count;
            }
            if cassandra_cluster_name.is_empty() {
                cassandra_cluster_name = id.cluster_name.clone();
            }
        }
        if !h.problem.is_empty() {
            problems.push(format!("  {} ({}, {} {}): {}", n.address, n.host_id, n.datacenter, n.rack, h.problem));
        }
        n.health = h;
    }
    if !problems.is_empty() && !allow_unhealthy {
        return Err(RegistryError::Unhealthy { name: name.to_owned(), total: nodes.len(), problems });
    }
    let cluster = ClusterRecord {
        name: name.to_owned(),
        cassandra_cluster_name,
        agent_pattern: pattern,
        created_at_ms: now_ms(),
    };
    Ok((cluster, nodes))
}

/// The operator's view of a node.
pub fn node_view(n: &NodeRecord) -> pb::NodeView {
    pb::NodeView {
        host_id: n.host_id.clone(),
        address: n.address.clone(),
        agent_address: n.agent_address.clone(),
        datacenter: n.datacenter.clone(),
        rack: n.rack.clone(),
        token_count: n.token_count,
        release_version: n.release_version.clone(),
        agent_reachable: n.health.agent_reachable,
        cassandra_up: n.health.cassandra_up,
        disk_free_bytes: n.health.disk_free_bytes,
        disk_total_bytes: n.health.disk_total_bytes,
        problem: n.health.problem.clone(),
        checked_at_ms: n.health.checked_at_ms,
        agent_version: n.health.agent_version.clone(),
    }
}

/// The operator's view of a cluster.
pub fn cluster_view(c: &ClusterRecord, nodes: &[NodeRecord]) -> pb::ClusterView {
    pb::ClusterView {
        name: c.name.clone(),
        cassandra_cluster_name: c.cassandra_cluster_name.clone(),
        agent_pattern: c.agent_pattern.clone(),
        created_at_ms: c.created_at_ms,
        nodes: nodes.iter().map(node_view).collect(),
    }
}

/// Gives `list` to the agents of `nodes` (at most [`PROBE_CONCURRENCY`] at once); returns the
/// agents that hold it now and, for the others, why not.
pub async fn push_revocations(
    agents: Arc<dyn AgentClient>,
    nodes: &[NodeRecord],
    list: &cassette_common::tls::Revocations,
    timeout: Duration,
) -> (Vec<String>, Vec<String>) {
    let list = Arc::new(list.clone());
    let addresses: Vec<String> = nodes.iter().map(|n| n.agent_address.clone()).collect();
    let results: Vec<(String, Result<u64, String>)> = futures::stream::iter(addresses.into_iter().map(|address| {
        let agents = Arc::clone(&agents);
        let list = Arc::clone(&list);
        async move {
            let r = match tokio::time::timeout(timeout, agents.set_revocations(&address, &list)).await {
                Err(_) => Err(format!("no answer within {timeout:?}")),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(v)) if v < list.version => Err(format!("it holds version {v}, older than {}", list.version)),
                Ok(Ok(_)) => Ok(list.version),
            };
            (address, r)
        }
    }))
    .buffer_unordered(PROBE_CONCURRENCY)
    .collect()
    .await;
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (a, r) in results {
        match r {
            Ok(_) => ok.push(a),
            Err(e) => {
                tracing::warn!(agent = %a, error = %e, "could not give the revocation list to an agent; retrying at the next health check");
                failed.push(format!("{a}: {e}"));
            }
        }
    }
    (ok, failed)
}

/// Warnings about agents' certificates that expire within `within` (or have expired), one
/// sentence each naming the node.
pub fn certificate_warnings(nodes: &[NodeRecord], within: Duration) -> Vec<String> {
    let now = std::time::SystemTime::now();
    nodes
        .iter()
        .filter(|n| n.health.certificate_not_after_ms > 0)
        .filter_map(|n| {
            let end = std::time::UNIX_EPOCH + Duration::from_millis(n.health.certificate_not_after_ms);
            cassette_common::tls::expiry_warning(&n.health.certificate_name, end, within, now)
                .map(|w| format!("agent {} of node {}: {w}", n.agent_address, n.address))
        })
        .collect()
}

/// Whether two observations differ in a way worth recording through raft (reachability, state,
/// problem, or free space by more than 1%): periodic checks do not fill the log with timestamps.
pub fn health_changed(old: &NodeHealth, new: &NodeHealth) -> bool {
    old.agent_reachable != new.agent_reachable
        || old.cassandra_up != new.cassandra_up
        || old.problem != new.problem
        || old.agent_version != new.agent_version
        || old.certificate_not_after_ms != new.certificate_not_after_ms
        || old.disk_free_bytes.abs_diff(new.disk_free_bytes) > old.disk_total_bytes.max(new.disk_total_bytes) / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert_eq!(agent_address("{address}:7079", "10.0.0.5", "h", "dc1", "r1"), "10.0.0.5:7079");
        assert_eq!(agent_address("{address}:7079", "10.0.0.5:7000", "h", "dc1", "r1"), "10.0.0.5:7079");
        assert_eq!(agent_address("{address}:7079", "::1", "h", "dc1", "r1"), "[::1]:7079");
        assert_eq!(agent_address("agent-{host_id}.{datacenter}:1", "x", "h1", "dc1", "r1"), "agent-h1.dc1:1");
        assert_eq!(default_pattern("127.0.0.1:4567").unwrap(), "{address}:4567");
        assert!(default_pattern("nohost").is_none());
    }

    #[test]
    fn health_changes_that_matter() {
        let a =
            NodeHealth { agent_reachable: true, disk_free_bytes: 1000, disk_total_bytes: 10_000, ..Default::default() };
        let mut b = a.clone();
        b.checked_at_ms = 99;
        b.disk_free_bytes = 1050;
        assert!(!health_changed(&a, &b));
        b.disk_free_bytes = 2000;
        assert!(health_changed(&a, &b));
        let mut c = a.clone();
        c.agent_reachable = false;
        assert!(health_changed(&a, &c));
    }
}
