//! Parsers of `nodetool` and `cqlsh` output (research §2.5, §3.2–3.6).
//!
//! Rule: parse what matters, ignore everything else (JVM warnings, extra lines, extra columns),
//! and fail with a clear error when what matters is missing.

use std::collections::BTreeMap;

use cassette_common::ids::HostId;

use super::{Liveness, ReleaseVersion, RingMember, RingState, SchemaVersion};

/// A parse failure: what was missing or malformed. The caller adds the command and an excerpt.
pub type ParseResult<T> = Result<T, String>;

/// The first lines of `output`, for error messages.
pub fn excerpt(output: &str) -> String {
    let mut s: String = output.lines().take(4).collect::<Vec<_>>().join("\n");
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// `nodetool version`: `ReleaseVersion: 4.1.7` (5.0 `-v` adds `GitSHA: …`).
pub fn version(out: &str) -> ParseResult<ReleaseVersion> {
    let v =
        out.lines().find_map(|l| l.trim().strip_prefix("ReleaseVersion:")).ok_or("no 'ReleaseVersion:' line")?.trim();
    ReleaseVersion::parse(v).ok_or_else(|| format!("release version {v:?} is not <major>.<minor>[.<patch>]"))
}

/// What `nodetool info -T` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// `ID`.
    pub host_id: HostId,
    /// `Gossip active`.
    pub gossip_active: bool,
    /// `Native Transport active`.
    pub native_transport_active: bool,
    /// `Load`.
    pub load: Option<String>,
    /// `Generation No`.
    pub generation: Option<i64>,
    /// `Uptime (seconds)`.
    pub uptime_seconds: Option<u64>,
    /// `Data Center`.
    pub datacenter: String,
    /// `Rack`.
    pub rack: String,
    /// Every `Token` line (with `-T`, or when the node has one token).
    pub tokens: Vec<String>,
    /// `false` when the node says `(node is not joined to the cluster)`.
    pub joined: bool,
    /// The token count announced by `(invoke with -T/--tokens to see all N tokens)`, when `-T` was not given.
    pub hidden_token_count: Option<u32>,
}

/// `nodetool info [-T]`: `printf("%-23s: %s%n", key, value)` lines.
pub fn info(out: &str) -> ParseResult<Info> {
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut tokens = Vec::new();
    let mut joined = true;
    let mut hidden = None;
    for line in out.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if k == "Token" {
            if v == "(node is not joined to the cluster)" {
                joined = false;
            } else if let Some(rest) = v.strip_prefix("(invoke with -T/--tokens to see all ") {
                hidden = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            } else if is_token(v) {
                tokens.push(v.to_owned());
            }
            continue;
        }
        fields.entry(k.to_owned()).or_insert_with(|| v.to_owned());
    }
    let get = |k: &str| fields.get(k).cloned().ok_or_else(|| format!("no '{k}' line"));
    let id = get("ID")?;
    let host_id = id.parse().map_err(|_| format!("ID {id:?} is not a host id (UUID)"))?;
    let bool_of = |k: &str| fields.get(k).map(|v| v == "true").unwrap_or(false);
    Ok(Info {
        host_id,
        gossip_active: bool_of("Gossip active"),
        native_transport_active: bool_of("Native Transport active"),
        load: fields.get("Load").cloned(),
        generation: fields.get("Generation No").and_then(|v| v.parse().ok()),
        uptime_seconds: fields.get("Uptime (seconds)").and_then(|v| v.parse().ok()),
        datacenter: get("Data Center")?,
        rack: get("Rack")?,
        tokens,
        joined,
        hidden_token_count: hidden,
    })
}

/// A token of any partitioner: Murmur3/Random are (signed) decimals, ByteOrdered is hex.
fn is_token(s: &str) -> bool {
    let d = s.strip_prefix('-').unwrap_or(s);
    !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_uuid(s: &str) -> bool {
    s.parse::<HostId>().is_ok()
}

/// `nodetool status`: every node of every datacenter.
pub fn status(out: &str) -> ParseResult<Vec<RingMember>> {
    let mut members = Vec::new();
    let mut dc: Option<String> = None;
    let mut vnodes = true;
    let mut saw_header = false;
    for line in out.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("Datacenter:") {
            dc = Some(name.trim().to_owned());
            continue;
        }
        if t.starts_with("--") && t.contains("Address") {
            saw_header = true;
            vnodes = t.contains("Tokens");
            continue;
        }
        let cols: Vec<&str> = t.split_whitespace().collect();
        let Some(code) = cols.first() else { continue };
        let code = code.as_bytes();
        if code.len() != 2 || !b"UD?".contains(&code[0]) || !b"NLJM".contains(&code[1]) {
            continue;
        }
        let liveness = match code[0] {
            b'U' => Liveness::Up,
            b'D' => Liveness::Down,
            _ => Liveness::Unknown,
        };
        let state = match code[1] {
            b'N' => RingState::Normal,
            b'L' => RingState::Leaving,
            b'J' => RingState::Joining,
            _ => RingState::Moving,
        };
        let datacenter = dc.clone().ok_or("a node row before any 'Datacenter:' line")?;
        let address = cols.get(1).ok_or_else(|| format!("row {t:?} has no address"))?.to_string();
        // Columns between the address and the host id: load (1-2 words or '?'), [tokens], owns.
        let hid =
            cols.iter().position(|c| is_uuid(c) || *c == "null").ok_or_else(|| format!("row {t:?} has no host id"))?;
        let mid = &cols[2..hid];
        let (owns, mid) = match mid.split_last() {
            Some((o, rest)) if o.ends_with('%') || *o == "?" => ((*o != "?").then(|| o.to_string()), rest),
            _ => return Err(format!("row {t:?} has no ownership column before the host id")),
        };
        let (token_count, mid) = if vnodes {
            match mid.split_last() {
                Some((n, rest)) if n.parse::<u32>().is_ok() => (n.parse().ok(), rest),
                _ => return Err(format!("row {t:?} has no token count")),
            }
        } else {
            (None, mid)
        };
        let load = mid.join(" ");
        let load = (!load.is_empty() && load != "?").then_some(load);
        let host_id = cols[hid].parse().ok();
        let after = &cols[hid + 1..];
        let (token, rack) =
            if vnodes { (None, after.first()) } else { (after.first().map(|s| s.to_string()), after.get(1)) };
        let rack = rack.ok_or_else(|| format!("row {t:?} has no rack"))?.to_string();
        members.push(RingMember {
            datacenter,
            address,
            liveness,
            state,
            load,
            token_count,
            token,
            owns,
            host_id,
            rack,
        });
    }
    if !saw_header {
        return Err("no '--  Address …' header line".into());
    }
    Ok(members)
}

/// What `nodetool describecluster` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    /// Cluster name.
    pub name: String,
    /// Snitch class.
    pub snitch: Option<String>,
    /// Partitioner class.
    pub partitioner: Option<String>,
    /// Schema versions and their endpoints.
    pub schema_versions: Vec<SchemaVersion>,
}

/// `nodetool describecluster`.
pub fn describe_cluster(out: &str) -> ParseResult<ClusterDescription> {
    let mut name = None;
    let mut snitch = None;
    let mut partitioner = None;
    let mut versions = Vec::new();
    let mut in_versions = false;
    for line in out.lines() {
        let t = line.trim();
        if in_versions {
            // `\t\t<uuid>: [ip, ip]`; the section ends at the first line that is not one.
            if t.is_empty() {
                continue;
            }
            if let Some((v, eps)) = t.split_once(": [")
                && let Some(eps) = eps.strip_suffix(']')
                && (is_uuid(v) || v == "UNREACHABLE")
            {
                let endpoints = eps.split(',').map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()).collect();
                versions.push(SchemaVersion { version: v.to_owned(), endpoints });
                continue;
            }
            in_versions = false;
        }
        if let Some(v) = t.strip_prefix("Name:") {
            name.get_or_insert_with(|| v.trim().to_owned());
        } else if let Some(v) = t.strip_prefix("Snitch:") {
            snitch.get_or_insert_with(|| v.trim().to_owned());
        } else if let Some(v) = t.strip_prefix("Partitioner:") {
            partitioner.get_or_insert_with(|| v.trim().to_owned());
        } else if t == "Schema versions:" {
            in_versions = true;
        }
    }
    let name = name.ok_or("no 'Name:' line")?;
    if versions.is_empty() {
        return Err("no schema versions under 'Schema versions:'".into());
    }
    Ok(ClusterDescription { name, snitch, partitioner, schema_versions: versions })
}

/// One row of `nodetool listsnapshots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSnapshot {
    /// Tag.
    pub tag: String,
    /// Keyspace.
    pub keyspace: String,
    /// Table.
    pub table: String,
    /// True size as printed.
    pub true_size: String,
    /// Size on disk as printed.
    pub size_on_disk: String,
    /// Creation time (4.1+).
    pub created_at: Option<String>,
    /// Expiration time (4.1+; blank = none).
    pub expires_at: Option<String>,
    /// Ephemeral (5.0 with `-e`).
    pub ephemeral: Option<bool>,
}

/// `nodetool listsnapshots`: a fixed-width table (every column padded, one space between).
pub fn list_snapshots(out: &str) -> ParseResult<Vec<ListedSnapshot>> {
    if !out.lines().any(|l| l.trim_end() == "Snapshot Details:") {
        return Err("no 'Snapshot Details:' line".into());
    }
    if out.lines().any(|l| l.trim() == "There are no snapshots") {
        return Ok(Vec::new());
    }
    let lines: Vec<&str> = out.lines().collect();
    let h = lines
        .iter()
        .position(|l| l.starts_with("Snapshot name"))
        .ok_or("neither a table header nor 'There are no snapshots'")?;
    let header = lines[h];
    let labels = [
        "Snapshot name",
        "Keyspace name",
        "Column family name",
        "True size",
        "Size on disk",
        "Creation time",
        "Expiration time",
        "Ephemeral",
    ];
    let mut starts: Vec<(usize, &str)> = labels.iter().filter_map(|l| header.find(l).map(|i| (i, *l))).collect();
    starts.sort();
    for required in &labels[..5] {
        if !starts.iter().any(|(_, l)| l == required) {
            return Err(format!("the header has no '{required}' column"));
        }
    }
    let mut rows = Vec::new();
    for line in &lines[h + 1..] {
        if line.trim().is_empty() {
            break;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut cell: BTreeMap<&str, String> = BTreeMap::new();
        for (i, (start, label)) in starts.iter().enumerate() {
            let end = starts.get(i + 1).map(|(s, _)| *s).unwrap_or(chars.len()).min(chars.len());
            let v: String = chars.get(*start..end).map(|c| c.iter().collect()).unwrap_or_default();
            cell.insert(label, v.trim().to_owned());
        }
        let get = |l: &str| cell.get(l).cloned().unwrap_or_default();
        let tag = get("Snapshot name");
        if tag.is_empty() {
            return Err(format!("row {line:?} has no snapshot name"));
        }
        let opt = |l: &str| cell.get(l).filter(|v| !v.is_empty()).cloned();
        rows.push(ListedSnapshot {
            tag,
            keyspace: get("Keyspace name"),
            table: get("Column family name"),
            true_size: get("True size"),
            size_on_disk: get("Size on disk"),
            created_at: opt("Creation time"),
            expires_at: opt("Expiration time"),
            ephemeral: opt("Ephemeral").map(|v| v == "true"),
        });
    }
    Ok(rows)
}

/// The failed directories listed after `Some directories failed to import, check server logs for details:`.
pub fn import_failures(out: &str) -> Option<Vec<String>> {
    let mut lines = out.lines();
    lines.find(|l| l.trim_start().starts_with("Some directories failed to import"))?;
    Some(lines.map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
}

/// A cqlsh result table: column names and rows of cell texts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CqlRows {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, each with one text per column.
    pub rows: Vec<Vec<String>>,
}

impl CqlRows {
    /// The value of `column` in `row`.
    pub fn get(&self, row: usize, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.rows.get(row)?.get(i).map(String::as_str)
    }
}

/// A cqlsh result table: a header, a `----+----` separator whose `+` mark the column boundaries,
/// rows, a blank line and `(N rows)`. Cells are trimmed; values may contain `|`.
pub fn cql_rows(out: &str) -> ParseResult<CqlRows> {
    let lines: Vec<&str> = out.lines().collect();
    let Some(sep) = lines.iter().position(|l| {
        let t = l.trim_end();
        !t.is_empty() && t.bytes().all(|b| b == b'-' || b == b'+') && t.contains('-')
    }) else {
        if out.lines().any(|l| l.trim() == "(0 rows)") {
            return Ok(CqlRows::default());
        }
        return Err("no result table (header and '---+---' line)".into());
    };
    let header = lines[..sep].iter().rev().find(|l| !l.trim().is_empty()).ok_or("no header above the table")?;
    let bounds: Vec<usize> = lines[sep].char_indices().filter(|(_, c)| *c == '+').map(|(i, _)| i).collect();
    let split = |line: &str| -> Vec<String> {
        let chars: Vec<char> = line.chars().collect();
        let mut cells = Vec::with_capacity(bounds.len() + 1);
        let mut start = 0;
        for b in bounds.iter().copied().chain(std::iter::once(usize::MAX)) {
            let end = b.min(chars.len());
            let cell: String = chars.get(start.min(chars.len())..end).map(|c| c.iter().collect()).unwrap_or_default();
            cells.push(cell.trim().to_owned());
            start = b.saturating_add(1);
        }
        cells
    };
    let columns = split(header);
    let mut rows = Vec::new();
    for line in &lines[sep + 1..] {
        if line.trim().is_empty() {
            break;
        }
        rows.push(split(line));
    }
    Ok(CqlRows { columns, rows })
}

/// Java's `List.toString()` / `Arrays.toString()`: `[a, b]` → `["a", "b"]`; a bare value is one item.
pub fn java_list(v: &str) -> Vec<String> {
    let v = v.trim();
    if v == "null" || v.is_empty() {
        return Vec::new();
    }
    let inner = v.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(v);
    inner.split(", ").map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// A cqlsh error: `<stdin>:1:InvalidRequest: Error from server: …` → (`InvalidRequest`, message).
pub fn cql_error(out: &str) -> Option<(String, String)> {
    for line in out.lines() {
        let t = line.trim();
        let rest = t.strip_prefix("<stdin>:").map(|r| r.trim_start_matches(|c: char| c.is_ascii_digit() || c == ':'));
        let rest = rest.or_else(|| t.strip_prefix("Traceback").map(|_| "Traceback: python error"));
        if let Some(rest) = rest
            && let Some((kind, msg)) = rest.split_once(':')
            && !kind.is_empty()
            && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            let msg = msg.trim();
            // `Error from server: code=2200 [Invalid query] message="…"`: keep the message part.
            let msg = msg.split_once("message=\"").and_then(|(_, m)| m.split('"').next()).unwrap_or(msg);
            return Some((kind.to_owned(), msg.to_owned()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3";

    #[test]
    fn version_lines() {
        assert_eq!(version("ReleaseVersion: 4.1.7\n").unwrap().raw, "4.1.7");
        let v = version("Picked up JAVA_TOOL_OPTIONS: -Xmx1g\nReleaseVersion: 5.0.1\nGitSHA: 4d2c0f7\n").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (5, 0, 1));
        assert!(version("").unwrap_err().contains("ReleaseVersion"));
        assert!(version("ReleaseVersion: unknown").is_err());
    }

    fn info_sample(version: &str, tokens: &str) -> String {
        let mut s = format!("ID                     : {HOST}\nGossip active          : true\n");
        if version == "3.11" {
            s.push_str("Thrift active          : false\n");
        }
        s.push_str("Native Transport active: true\nLoad                   : 104.51 KiB\n");
        if version == "5.0" {
            s.push_str("Uncompressed load      : 180.2 KiB\n");
        }
        s.push_str(
            "Generation No          : 1700000000\nUptime (seconds)       : 3600\nHeap Memory (MB)       : 121.30 / 975.13\nOff Heap Memory (MB)   : 0.00\nData Center            : dc1\nRack                   : rack1\nExceptions             : 0\n",
        );
        s.push_str("Key Cache              : entries 25, size 2.12 KiB, capacity 48 MiB, 190 hits, 234 requests, 0.812 recent hit rate, 14400 save period in seconds\n");
        s.push_str("Chunk Cache            : entries 20, size 1.25 MiB, capacity 211 MiB, 138 misses, 898 requests, 0.846 recent hit rate, NaN microseconds miss latency\n");
        if version != "3.11" {
            s.push_str("Network Cache          : size 8 MiB, overflow size: 0 bytes, capacity 16 MiB\n");
        }
        s.push_str("Percent Repaired       : 100.0%\n");
        s.push_str(tokens);
        if version == "5.0" {
            s.push_str("Bootstrap state        : COMPLETED\nBootstrap failed       : false\nDecommissioning        : false\nDecommission failed    : false\n");
        }
        s
    }

    #[test]
    fn info_of_every_version() {
        let all = "Token                  : -9223372036854775808\nToken                  : -3074457345618258603\nToken                  : 3074457345618258602\n";
        for v in ["3.11", "4.0", "4.1", "5.0"] {
            let i = info(&info_sample(v, all)).unwrap();
            assert_eq!(i.host_id.as_str(), HOST, "{v}");
            assert_eq!((i.datacenter.as_str(), i.rack.as_str()), ("dc1", "rack1"));
            assert!(i.gossip_active && i.native_transport_active && i.joined);
            assert_eq!(i.tokens.len(), 3);
            assert_eq!(i.tokens[0], "-9223372036854775808");
            assert_eq!(i.load.as_deref(), Some("104.51 KiB"));
            assert_eq!((i.generation, i.uptime_seconds), (Some(1700000000), Some(3600)));
        }
        let i = info(&info_sample("4.1", "Token                  : (invoke with -T/--tokens to see all 16 tokens)\n"))
            .unwrap();
        assert_eq!((i.tokens.len(), i.hidden_token_count), (0, Some(16)));
        let i = info(&info_sample("4.0", "Token                  : (node is not joined to the cluster)\n")).unwrap();
        assert!(!i.joined);
        let e = info("Gossip active          : true\n").unwrap_err();
        assert!(e.contains("'ID'"), "{e}");
        let e = info("ID : not-a-uuid\nData Center : d\nRack : r\n").unwrap_err();
        assert!(e.contains("not-a-uuid"), "{e}");
    }

    const STATUS_40: &str = "Datacenter: datacenter1
=======================
Status=Up/Down
|/ State=Normal/Leaving/Joining/Moving
--  Address    Load       Tokens  Owns (effective)  Host ID                               Rack 
UN  127.0.0.1  104.5 KiB  16      100.0%            1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3  rack1

";

    #[test]
    fn status_40_sample_from_the_research() {
        let m = status(STATUS_40).unwrap();
        assert_eq!(
            m,
            vec![RingMember {
                datacenter: "datacenter1".into(),
                address: "127.0.0.1".into(),
                liveness: Liveness::Up,
                state: RingState::Normal,
                load: Some("104.5 KiB".into()),
                token_count: Some(16),
                token: None,
                owns: Some("100.0%".into()),
                host_id: Some(HOST.parse().unwrap()),
                rack: "rack1".into(),
            }]
        );
    }

    #[test]
    fn status_311_two_dcs_down_node_and_unknown_load() {
        let out = "Datacenter: dc1
===============
Status=Up/Down
|/ State=Normal/Leaving/Joining/Moving
--  Address    Load       Tokens       Owns (effective)  Host ID                               Rack
UN  10.0.0.1   104.51 KiB  256          66.7%             1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3  r1
DN  10.0.0.2   ?          256          66.7%             2b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3  r2
Datacenter: dc2
===============
Status=Up/Down
|/ State=Normal/Leaving/Joining/Moving
--  Address    Load       Tokens       Owns (effective)  Host ID                               Rack
UJ  10.0.1.1   1.2 GiB    256          ?                 3b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3  r1

Note: Non-system keyspaces don't have the same replication settings, effective ownership information is meaningless
";
        let m = status(out).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!((m[1].liveness, m[1].load.as_deref(), m[1].rack.as_str()), (Liveness::Down, None, "r2"));
        assert_eq!((m[2].datacenter.as_str(), m[2].state, m[2].owns.as_deref()), ("dc2", RingState::Joining, None));
        assert_eq!(m[2].load.as_deref(), Some("1.2 GiB"));
    }

    #[test]
    fn status_single_token_layout_and_extra_columns() {
        let out = "Datacenter: dc1\n=======\n--  Address    Load       Owns  Host ID                               Token                 Rack  Extra\nUN  127.0.0.1:7000  5 KiB  100.0%  1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3  -9223372036854775808  rack1  whatever\n";
        let m = status(out).unwrap();
        assert_eq!(m[0].token.as_deref(), Some("-9223372036854775808"));
        assert_eq!((m[0].rack.as_str(), m[0].address.as_str(), m[0].token_count), ("rack1", "127.0.0.1:7000", None));
        // A newer nodetool with an extra trailing column in the vnode layout: ignored.
        let extra = STATUS_40.replace("Rack \n", "Rack   Zone\n").replace("rack1\n", "rack1  zone-a\n");
        let m = status(&extra).unwrap();
        assert_eq!((m[0].rack.as_str(), m[0].token_count), ("rack1", Some(16)));
        // What matters missing: a row without a host id.
        let bad = STATUS_40.replace("1b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3  rack1", "");
        assert!(status(&bad).unwrap_err().contains("host id"));
        assert!(status("WARN something\n").unwrap_err().contains("header"));
    }

    const DESCRIBE_40: &str = "Cluster Information:
\tName: Test Cluster
\tSnitch: org.apache.cassandra.locator.SimpleSnitch
\tDynamicEndPointSnitch: enabled
\tPartitioner: org.apache.cassandra.dht.Murmur3Partitioner
\tSchema versions:
\t\t2207c2a9-f598-3971-986b-2926e09e239d: [127.0.0.1, 127.0.0.2]

\t\tUNREACHABLE: [127.0.0.3]

Stats for all nodes:
\tLive: 2
\tJoining: 0
\tMoving: 0
\tLeaving: 0
\tUnreachable: 1

Data Centers: 
\tdatacenter1 #Nodes: 3 #Down: 1

Database versions:
\t4.0.14: [127.0.0.1:7000, 127.0.0.2:7000]

Keyspaces:
\tsystem_auth -> Replication class: SimpleStrategy {replication_factor=1}
";

    #[test]
    fn describecluster_311_and_40() {
        let d = describe_cluster(DESCRIBE_40).unwrap();
        assert_eq!(d.name, "Test Cluster");
        assert_eq!(d.partitioner.as_deref(), Some("org.apache.cassandra.dht.Murmur3Partitioner"));
        assert_eq!(d.schema_versions.len(), 2);
        assert_eq!(d.schema_versions[0].endpoints, ["127.0.0.1", "127.0.0.2"]);
        assert_eq!(d.schema_versions[1].version, "UNREACHABLE");
        let v311 = DESCRIBE_40.split("Stats for all nodes").next().unwrap();
        assert_eq!(describe_cluster(v311).unwrap().schema_versions.len(), 2);
        assert!(describe_cluster("Cluster Information:\n\tName: x\n").unwrap_err().contains("schema versions"));
    }

    #[test]
    fn listsnapshots_of_every_version() {
        // 4.0 doc sample (research §2.5).
        let v40 = "Snapshot Details: \nSnapshot name Keyspace name   Column family name True size Size on disk\nmulti-table   cqlkeyspace     t2                 4.86 KiB  5.67 KiB    \ncatalog-ks    catalogkeyspace journal            4.9 KiB   5.73 KiB    \n\nTotal TrueDiskSpaceUsed: 44.02 KiB\n\n";
        let r = list_snapshots(v40).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].tag.as_str(), r[0].keyspace.as_str(), r[0].table.as_str()),
            ("multi-table", "cqlkeyspace", "t2")
        );
        assert_eq!((r[1].true_size.as_str(), r[1].size_on_disk.as_str()), ("4.9 KiB", "5.73 KiB"));
        assert_eq!(r[0].created_at, None);

        let v41 = "Snapshot Details: \nSnapshot name Keyspace name Column family name True size Size on disk Creation time            Expiration time         \nb1            ks            t                  0 bytes   5.7 KiB      2024-03-01T10:15:30.123Z 2024-03-01T11:15:30.123Z\nb2            ks            t                  0 bytes   5.7 KiB      2024-03-01T10:15:31Z                             \n\nTotal TrueDiskSpaceUsed: 0 bytes\n\n";
        let r = list_snapshots(v41).unwrap();
        assert_eq!(r[0].expires_at.as_deref(), Some("2024-03-01T11:15:30.123Z"));
        assert_eq!((r[1].created_at.as_deref(), r[1].expires_at.as_deref()), (Some("2024-03-01T10:15:31Z"), None));

        let v50 = "Snapshot Details: \nSnapshot name Keyspace name Column family name True size Size on disk Creation time        Expiration time Ephemeral\nrepair-1      ks            t                  812 bytes 812 bytes    2024-10-01T08:00:00Z                 true     \n\nTotal TrueDiskSpaceUsed: 812 bytes\n\n";
        let r = list_snapshots(v50).unwrap();
        assert_eq!(r[0].ephemeral, Some(true));
        assert!(list_snapshots("Snapshot Details: \nThere are no snapshots\n").unwrap().is_empty());
        assert!(list_snapshots("garbage").is_err());
        assert!(
            list_snapshots("Snapshot Details: \nSnapshot name Keyspace name\nx y\n")
                .unwrap_err()
                .contains("Column family")
        );
    }

    #[test]
    fn import_failure_lists() {
        let err = "Some directories failed to import, check server logs for details:\n/tmp/a\n/tmp/b\n";
        assert_eq!(import_failures(err).unwrap(), ["/tmp/a", "/tmp/b"]);
        assert_eq!(import_failures("error: x"), None);
    }

    #[test]
    fn cqlsh_tables_and_errors() {
        let out = "\n name                  | value\n-----------------------+--------------------------------------\n data_file_directories | [/var/lib/cassandra/data, /data | odd]\n   commitlog_directory |            /var/lib/cassandra/commitlog\n\n(2 rows)\n";
        let r = cql_rows(out).unwrap();
        assert_eq!(r.columns, ["name", "value"]);
        assert_eq!(r.get(0, "value"), Some("[/var/lib/cassandra/data, /data | odd]"));
        assert_eq!(r.get(1, "name"), Some("commitlog_directory"));
        assert_eq!(java_list(r.get(0, "value").unwrap()), ["/var/lib/cassandra/data", "/data | odd"]);
        assert_eq!(java_list("null"), Vec::<String>::new());
        assert_eq!(java_list("/single"), ["/single"]);
        assert!(cql_rows("\n(0 rows)\n").unwrap().rows.is_empty());
        assert!(cql_rows("Warnings: x\n").is_err());

        let e = "<stdin>:1:InvalidRequest: Error from server: code=2200 [Invalid query] message=\"unconfigured table nope\"\n";
        assert_eq!(cql_error(e), Some(("InvalidRequest".into(), "unconfigured table nope".into())));
        let e = "<stdin>:1:Unavailable: Error from server: code=1000 [Unavailable exception] message=\"Cannot achieve consistency level ALL\" info={'consistency': 'ALL'}\n";
        assert_eq!(cql_error(e), Some(("Unavailable".into(), "Cannot achieve consistency level ALL".into())));
        assert_eq!(cql_error("all good"), None);
    }
}
