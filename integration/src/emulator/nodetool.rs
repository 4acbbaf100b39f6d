//! The emulated `nodetool`: global options, per-version commands, outputs and exit codes
//! (research §2, §3).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::Outcome;
use super::format::{self, file_size, percent_1};
use super::ops::{self, Entities, Fail, OpResult};
use super::state::{Cluster, StateDir, Version};

/// An option a command accepts: its spellings, canonical name, whether it takes a value.
type Spec = (&'static [&'static str], &'static str, bool);

#[derive(Debug, Default)]
struct Parsed {
    opts: BTreeMap<&'static str, String>,
    positional: Vec<String>,
}

impl Parsed {
    fn flag(&self, k: &str) -> bool {
        self.opts.contains_key(k)
    }
    fn value(&self, k: &str) -> Option<&str> {
        self.opts.get(k).map(String::as_str)
    }
}

fn parse(args: &[String], specs: &[Spec]) -> OpResult<Parsed> {
    let mut p = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            p.positional.extend(args[i..].iter().cloned());
            break;
        }
        if a.starts_with('-') && a.len() > 1 && !a[1..].starts_with(|c: char| c.is_ascii_digit()) {
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (a.as_str(), None),
            };
            let Some((_, canonical, takes)) = specs.iter().find(|(names, _, _)| names.contains(&name)) else {
                return Err(Fail::Usage(format!("Found unexpected parameters: [{a}]")));
            };
            let v = if *takes {
                match inline {
                    Some(v) => v,
                    None => {
                        let v = args
                            .get(i)
                            .cloned()
                            .ok_or_else(|| Fail::Usage(format!("Required values for option '{name}' not provided")))?;
                        i += 1;
                        v
                    }
                }
            } else {
                String::new()
            };
            p.opts.insert(canonical, v);
        } else {
            p.positional.push(a.clone());
        }
    }
    Ok(p)
}

/// Runs `nodetool <args>` against the cluster in `state`, with the JVM's start-up notes first on
/// standard error, as every real nodetool prints them: `Picked up JAVA_TOOL_OPTIONS: <value>`
/// (the value verbatim, secrets included) and `NOTE: Picked up JDK_JAVA_OPTIONS: <value>` (an
/// `@argfile` shows as its path only).
pub fn run(state: &StateDir, args: &[String]) -> Outcome {
    let mut out = run_command(state, args);
    let mut notes = String::new();
    if let Ok(v) = std::env::var("JDK_JAVA_OPTIONS")
        && !v.is_empty()
    {
        notes.push_str(&format!("NOTE: Picked up JDK_JAVA_OPTIONS: {v}\n"));
    }
    if let Ok(v) = std::env::var("JAVA_TOOL_OPTIONS")
        && !v.is_empty()
    {
        notes.push_str(&format!("Picked up JAVA_TOOL_OPTIONS: {v}\n"));
    }
    if !notes.is_empty() {
        out.stderr = format!("{notes}{}", out.stderr);
    }
    out
}

fn run_command(state: &StateDir, args: &[String]) -> Outcome {
    const GLOBAL: &[Spec] = &[
        (&["-h", "--host"], "host", true),
        (&["-p", "--port"], "port", true),
        (&["-u", "--username"], "username", true),
        (&["-pw", "--password"], "password", true),
        (&["-pwf", "--password-file"], "password-file", true),
        (&["-pp", "--print-port"], "print-port", false),
        (&["--ssl"], "ssl", false),
    ];
    // Global options come before the command name (after it, `-p` may mean something else).
    let split = {
        let mut i = 0;
        while i < args.len() && args[i].starts_with('-') {
            let takes = GLOBAL.iter().find(|(n, _, _)| n.contains(&args[i].as_str())).is_some_and(|(_, _, t)| *t);
            i += if takes && !args[i].contains('=') { 2 } else { 1 };
        }
        i.min(args.len())
    };
    let globals = match parse(&args[..split], GLOBAL) {
        Ok(g) => g,
        Err(f) => return fail(f),
    };
    let host = globals.value("host").unwrap_or("127.0.0.1").to_owned();
    let port = globals.value("port").unwrap_or("7199").to_owned();
    let Some(command) = args.get(split).cloned() else {
        return Outcome {
            stdout: "usage: nodetool [(-h <host> | --host <host>)] <command> [<args>]\n".into(),
            stderr: String::new(),
            code: 1,
        };
    };
    let rest = args[split + 1..].to_vec();

    // Injected delays happen before taking the lock, so a killed command leaves no lock behind.
    if let Ok(peek) = state.load()
        && let Some(n) = peek.node_index(&host)
        && let Some(ms) = peek.nodes[n].faults.delay_ms.get(&command)
    {
        std::thread::sleep(std::time::Duration::from_millis(*ms));
    }
    let lock = match state.lock() {
        Ok(l) => l,
        Err(e) => return internal(e),
    };
    let mut c = match state.load() {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let refused = |c: &Cluster| {
        let detail =
            if c.version == Version::V311 { "Connection refused (Connection refused)" } else { "Connection refused" };
        Outcome {
            stdout: String::new(),
            stderr: format!("nodetool: Failed to connect to '{host}:{port}' - ConnectException: '{detail}'.\n"),
            code: 1,
        }
    };
    let Some(node) = c.node_index(&host) else { return refused(&c) };
    if !c.nodes[node].up {
        return refused(&c);
    }
    if let Some((user, password)) = c.nodes[node].jmx_credentials.clone() {
        let given_user = globals.value("username");
        let given_pw = match (globals.value("password"), globals.value("password-file")) {
            (Some(p), _) => Some(p.to_owned()),
            (None, Some(f)) => std::fs::read_to_string(f).ok().and_then(|t| {
                t.lines().find_map(|l| {
                    let mut it = l.split_whitespace();
                    (it.next() == given_user).then(|| it.next().unwrap_or_default().to_owned())
                })
            }),
            _ => None,
        };
        let detail = match (given_user, given_pw) {
            (None, _) | (_, None) => Some("Authentication failed! Credentials required"),
            (Some(u), Some(p)) if u != user || p != password => {
                Some("Authentication failed! Invalid username or password")
            }
            _ => None,
        };
        if let Some(d) = detail {
            return Outcome {
                stdout: String::new(),
                stderr: format!("nodetool: Failed to connect to '{host}:{port}' - SecurityException: '{d}'.\n"),
                code: 1,
            };
        }
    }
    let faults = c.nodes[node].faults.clone();
    if let Some((code, stderr)) = faults.fail.get(&command) {
        return Outcome { stdout: String::new(), stderr: stderr.clone(), code: *code };
    }
    if c.version >= Version::V41
        && let Err(e) = ops::expire_snapshots(&mut c, node)
    {
        return internal(e);
    }
    let result = dispatch(&mut c, node, &command, &rest, globals.flag("print-port"));
    if let Err(e) = state.save(&c) {
        return internal(e);
    }
    drop(lock);
    let mut out = match result {
        Ok(o) => o,
        Err(f) => fail(f),
    };
    if let Some((code, stderr)) = faults.fail_after.get(&command) {
        out = Outcome { stdout: String::new(), stderr: stderr.clone(), code: *code };
    }
    if faults.noisy {
        out.stdout = format!(
            "WARN  [main] 2024-01-01 00:00:00,000 Only 7.8 GiB free across all data volumes. Consider adding more capacity to your cluster or removing obsolete snapshots\n{}Unexpected: extra line from a newer nodetool\n",
            out.stdout
        );
        out.stderr = format!("Picked up JAVA_TOOL_OPTIONS: -Dcom.sun.jndi.rmiURLParsing=legacy\n{}", out.stderr);
    }
    out
}

fn internal(e: anyhow::Error) -> Outcome {
    Outcome { stdout: String::new(), stderr: format!("emulator: {e:#}\n"), code: 3 }
}

fn fail(f: Fail) -> Outcome {
    match f {
        Fail::Usage(m) => Outcome {
            stdout: format!("nodetool: {m}\nSee 'nodetool help' or 'nodetool help <command>'.\n"),
            stderr: String::new(),
            code: 1,
        },
        Fail::Server(m) => Outcome {
            stdout: String::new(),
            stderr: format!(
                "error: {m}\n-- StackTrace --\njava.lang.RuntimeException: {m}\n\tat org.apache.cassandra.tools.NodeProbe.emulated(NodeProbe.java:1)\n"
            ),
            code: 2,
        },
    }
}

fn ok(stdout: String) -> OpResult<Outcome> {
    Ok(Outcome { stdout, stderr: String::new(), code: 0 })
}

fn dispatch(c: &mut Cluster, node: usize, command: &str, args: &[String], print_port: bool) -> OpResult<Outcome> {
    let v = c.version;
    match command {
        "version" => {
            let p = parse(args, &[(&["-v", "--verbose"], "verbose", false)])?;
            if p.flag("verbose") && v < Version::V50 {
                return Err(Fail::Usage("Found unexpected parameters: [-v]".into()));
            }
            let mut s = format!("ReleaseVersion: {}\n", v.release());
            if p.flag("verbose") {
                s.push_str("GitSHA: 0000000000000000000000000000000000000000\n");
            }
            ok(s)
        }
        "info" => {
            let p = parse(args, &[(&["-T", "--tokens"], "tokens", false)])?;
            ok(info(c, node, p.flag("tokens")))
        }
        "status" => {
            let p = parse(args, &[(&["-r", "--resolve-ip"], "resolve", false)])?;
            if let Some(ks) = p.positional.first()
                && !c.keyspaces.contains_key(ks)
            {
                return Err(Fail::Server(format!("The keyspace {ks}, does not exist")));
            }
            ok(status(c, p.positional.first().map(String::as_str), print_port))
        }
        "describecluster" => ok(describe_cluster(c)),
        "ring" => {
            let p = parse(args, &[(&["-r", "--resolve-ip"], "resolve", false)])?;
            if let Some(ks) = p.positional.first()
                && !c.keyspaces.contains_key(ks)
            {
                return Err(Fail::Server(format!("The keyspace {ks}, does not exist")));
            }
            ok(ring(c, p.positional.first().map(String::as_str)))
        }
        "describering" => {
            let p = parse(args, &[])?;
            let [ks] = p.positional.as_slice() else {
                return Err(Fail::Usage("describering requires a keyspace argument".into()));
            };
            ok(describe_ring(c, ks, print_port)?)
        }
        "flush" => {
            let p = parse(args, &[])?;
            let (ks, tables) = match p.positional.split_first() {
                Some((ks, t)) => (Some(ks.as_str()), t.to_vec()),
                None => (None, Vec::new()),
            };
            ops::flush(c, node, ks, &tables)?;
            ok(String::new())
        }
        "snapshot" => snapshot(c, node, args),
        "listsnapshots" => list_snapshots(c, node, args),
        "clearsnapshot" => clear_snapshot(c, node, args),
        "import" if v >= Version::V40 => import(c, node, args),
        "refresh" => {
            let p = parse(args, &[(&["--reset-levels"], "reset", false)])?;
            let [ks, t] = p.positional.as_slice() else {
                return Err(Fail::Usage("refresh requires ks and cf args".into()));
            };
            ops::refresh(c, node, ks, t)?;
            ok(if v >= Version::V40 {
                "nodetool refresh is deprecated, use nodetool import instead\n".into()
            } else {
                String::new()
            })
        }
        "statusbackup" => {
            ok(if c.nodes[node].incremental_backups { "running\n".into() } else { "not running\n".into() })
        }
        "enablebackup" | "disablebackup" => {
            c.nodes[node].incremental_backups = command == "enablebackup";
            ok(String::new())
        }
        "drain" => {
            ops::flush(c, node, None, &[])?;
            ok(String::new())
        }
        _ => Err(Fail::Usage(format!(
            "Found unexpected parameters: [{}]",
            std::iter::once(command.to_owned()).chain(args.iter().cloned()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn info(c: &Cluster, node: usize, all_tokens: bool) -> String {
    let n = &c.nodes[node];
    let v = c.version;
    let mut lines: Vec<(String, String)> =
        vec![("ID".into(), n.host_id.clone()), ("Gossip active".into(), "true".into())];
    if v == Version::V311 {
        lines.push(("Thrift active".into(), "false".into()));
    }
    lines.push(("Native Transport active".into(), "true".into()));
    let load = ops::load(c, node);
    lines.push(("Load".into(), file_size(load)));
    if v == Version::V50 {
        lines.push(("Uncompressed load".into(), file_size(load)));
    }
    lines.push(("Generation No".into(), (n.started_at_ms / 1000).to_string()));
    lines.push(("Uptime (seconds)".into(), ((c.now_ms() - n.started_at_ms).max(0) / 1000).to_string()));
    lines.push(("Heap Memory (MB)".into(), "121.30 / 975.13".into()));
    lines.push(("Off Heap Memory (MB)".into(), "0.00".into()));
    lines.push(("Data Center".into(), n.datacenter.clone()));
    lines.push(("Rack".into(), n.rack.clone()));
    lines.push(("Exceptions".into(), "0".into()));
    lines.push(("Key Cache".into(), "entries 25, size 2.12 KiB, capacity 48 MiB, 190 hits, 234 requests, 0.812 recent hit rate, 14400 save period in seconds".into()));
    lines.push((
        "Row Cache".into(),
        "entries 0, size 0 bytes, capacity 0 bytes, 0 hits, 0 requests, NaN recent hit rate, 0 save period in seconds"
            .into(),
    ));
    lines.push(("Counter Cache".into(), "entries 0, size 0 bytes, capacity 24 MiB, 0 hits, 0 requests, NaN recent hit rate, 7200 save period in seconds".into()));
    // Real 4.0.19, 4.1.10 and 5.0.9 print no "Chunk Cache" line with the default file cache
    // settings; 3.11's line is from the research samples (it cannot run here). Nothing reads it.
    if v == Version::V311 {
        lines.push(("Chunk Cache".into(), "entries 20, size 1.25 MiB, capacity 211 MiB, 138 misses, 898 requests, 0.846 recent hit rate, NaN microseconds miss latency".into()));
    }
    if v >= Version::V40 {
        lines.push(("Network Cache".into(), "size 8 MiB, overflow size: 0 bytes, capacity 16 MiB".into()));
    }
    lines.push(("Percent Repaired".into(), "100.0%".into()));
    if all_tokens || n.tokens.len() == 1 {
        for t in &n.tokens {
            lines.push(("Token".into(), t.clone()));
        }
    } else {
        lines.push(("Token".into(), format!("(invoke with -T/--tokens to see all {} tokens)", n.tokens.len())));
    }
    if v == Version::V50 {
        for (k, val) in [
            ("Bootstrap state", "COMPLETED"),
            ("Bootstrap failed", "false"),
            ("Decommissioning", "false"),
            ("Decommission failed", "false"),
        ] {
            lines.push((k.into(), val.into()));
        }
    }
    lines.iter().map(|(k, val)| format!("{k:<23}: {val}\n")).collect()
}

/// The ring: every (token, node) sorted by token.
fn ring_tokens(c: &Cluster) -> Vec<(i128, usize)> {
    let mut ring: Vec<(i128, usize)> = c
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.tokens.iter().filter_map(move |t| t.parse::<i64>().ok().map(|t| (t as i128, i))))
        .collect();
    ring.sort();
    ring
}

/// Replicas of the range ending at `ring[k]`: walk clockwise picking distinct nodes per
/// datacenter (NetworkTopologyStrategy without racks), or any datacenter (SimpleStrategy).
fn replicas(c: &Cluster, ring: &[(i128, usize)], k: usize, replication: Option<&BTreeMap<String, u32>>) -> Vec<usize> {
    let mut need: BTreeMap<String, u32> = match replication {
        Some(r) if r.contains_key("replication_factor") => BTreeMap::from([("*".to_owned(), r["replication_factor"])]),
        Some(r) if !r.contains_key("LocalStrategy") => r.clone(),
        _ => BTreeMap::from([("*".to_owned(), 1)]),
    };
    let mut chosen = Vec::new();
    for step in 0..ring.len() {
        let (_, n) = ring[(k + step) % ring.len()];
        if chosen.contains(&n) {
            continue;
        }
        let dc = if need.contains_key("*") { "*".to_owned() } else { c.nodes[n].datacenter.clone() };
        if let Some(left) = need.get_mut(&dc)
            && *left > 0
        {
            *left -= 1;
            chosen.push(n);
        }
    }
    chosen
}

/// Fraction of the Murmur3 ring each node replicates for a replication map (per-DC RF, or
/// `replication_factor` for SimpleStrategy; LocalStrategy or none counts as RF 1).
fn ownership(c: &Cluster, replication: Option<&BTreeMap<String, u32>>) -> Vec<f64> {
    let ring = ring_tokens(c);
    let mut owns = vec![0f64; c.nodes.len()];
    let total = (u64::MAX as f64) + 1.0;
    for (k, (tok, _)) in ring.iter().enumerate() {
        let prev = if k == 0 { ring[ring.len() - 1].0 - (u64::MAX as i128 + 1) } else { ring[k - 1].0 };
        let width = (tok - prev) as f64 / total;
        for n in replicas(c, &ring, k, replication) {
            owns[n] += width;
        }
    }
    owns
}

/// `nodetool ring [ks]` (research §3.4).
fn ring(c: &Cluster, keyspace: Option<&str>) -> String {
    let replication = keyspace.and_then(|k| c.keyspaces.get(k)).map(|k| &k.replication);
    let owns = ownership(c, replication);
    let ring = ring_tokens(c);
    let max_addr = c.nodes.iter().map(|n| n.address.len()).max().unwrap_or(0);
    let row = |a: &str, r: &str, st: &str, state: &str, l: &str, o: &str, t: &str| {
        format!("{a:<max_addr$}  {r:<12}{st:<7}{state:<8}{l:<16}{o:<20}{t:<44}\n")
    };
    let mut dcs: BTreeMap<&str, Vec<(i128, usize)>> = BTreeMap::new();
    for (t, n) in &ring {
        dcs.entry(&c.nodes[*n].datacenter).or_default().push((*t, *n));
    }
    let mut out = String::from("\n");
    for (dc, tokens) in dcs {
        out.push_str(&format!("Datacenter: {dc}\n==========\n"));
        out.push_str(&row("Address", "Rack", "Status", "State", "Load", "Owns", "Token"));
        let hosts: std::collections::BTreeSet<usize> = tokens.iter().map(|(_, n)| *n).collect();
        if hosts.len() > 1
            && let Some((last, _)) = tokens.last()
        {
            out.push_str(&row("", "", "", "", "", "", &last.to_string()));
        }
        for (t, n) in tokens {
            let node = &c.nodes[n];
            let (status, load) = if node.up { ("Up", file_size(ops::load(c, n))) } else { ("Down", "?".to_owned()) };
            out.push_str(&row(
                &node.address,
                &node.rack,
                status,
                "Normal",
                &load,
                &format!("{:.2}%", owns[n] * 100.0),
                &t.to_string(),
            ));
        }
        out.push('\n');
    }
    if c.nodes.iter().any(|n| n.tokens.len() > 1) {
        out.push_str("  Warning: \"nodetool ring\" is used to output all the tokens of a node.\n");
        out.push_str("  To view status related info of a node use \"nodetool status\" instead.\n\n");
    }
    out
}

/// `nodetool describering <ks>` (research §3.5).
fn describe_ring(c: &Cluster, keyspace: &str, print_port: bool) -> OpResult<String> {
    let k =
        c.keyspaces.get(keyspace).ok_or_else(|| Fail::Server(format!("The keyspace {keyspace}, does not exist")))?;
    let ring = ring_tokens(c);
    let mut out = format!("Schema Version:{}\nTokenRange: \n", c.schema_version);
    let addr = |n: usize| if print_port { format!("{}:7000", c.nodes[n].address) } else { c.nodes[n].address.clone() };
    for (i, (end, _)) in ring.iter().enumerate() {
        let start = ring[(i + ring.len() - 1) % ring.len()].0;
        let reps = replicas(c, &ring, i, Some(&k.replication));
        let eps: Vec<String> = reps.iter().map(|n| addr(*n)).collect();
        let details: Vec<String> = reps
            .iter()
            .map(|n| {
                format!(
                    "EndpointDetails(host:{}, datacenter:{}, rack:{})",
                    addr(*n),
                    c.nodes[*n].datacenter,
                    c.nodes[*n].rack
                )
            })
            .collect();
        out.push_str(&format!(
            "\tTokenRange(start_token:{start}, end_token:{end}, endpoints:[{0}], rpc_endpoints:[{0}], endpoint_details:[{1}])\n",
            eps.join(", "),
            details.join(", ")
        ));
    }
    Ok(out)
}

fn status(c: &Cluster, keyspace: Option<&str>, print_port: bool) -> String {
    let v = c.version;
    let user: Vec<&BTreeMap<String, u32>> = c
        .keyspaces
        .iter()
        .filter(|(k, _)| {
            cassette_common::datadir::KeyspaceClass::of(k) == cassette_common::datadir::KeyspaceClass::User
        })
        .map(|(_, k)| &k.replication)
        .collect();
    let (replication, effective, note) = match keyspace {
        Some(ks) => (c.keyspaces.get(ks).map(|k| &k.replication), true, None),
        None if user.windows(2).any(|w| w[0] != w[1]) => (
            None,
            false,
            Some(
                "Note: Non-system keyspaces don't have the same replication settings, effective ownership information is meaningless",
            ),
        ),
        None => (user.first().copied(), true, None),
    };
    let owns = ownership(c, replication);
    let vnodes = c.nodes.iter().map(|n| n.tokens.len()).max().unwrap_or(1) > 1;
    let owns_header = if effective { "Owns (effective)" } else { "Owns" };
    let mut dcs: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, n) in c.nodes.iter().enumerate() {
        dcs.entry(&n.datacenter).or_default().push(i);
    }
    let addr = |i: usize| if print_port { format!("{}:7000", c.nodes[i].address) } else { c.nodes[i].address.clone() };
    let load = |i: usize| if c.nodes[i].up { file_size(ops::load(c, i)) } else { "?".to_owned() };
    let code = |i: usize| if c.nodes[i].up { "UN" } else { "DN" };
    let mut out = String::new();
    if v == Version::V311 {
        let max_addr = (0..c.nodes.len()).map(|i| addr(i).len()).max().unwrap_or(0);
        let row = |a: &str, b: &str, ad: &str, l: &str, tk: &str, ow: &str, h: &str, tok: &str, r: &str| {
            let mut s = format!("{a}{b}  {ad:<max_addr$}  {l:<9}  ");
            if vnodes {
                s.push_str(&format!("{tk:<11}  "));
            }
            if effective {
                s.push_str(&format!("{ow:<16}  "));
            } else {
                s.push_str(&format!("{ow:<6}  "));
            }
            s.push_str(&format!("{h:<36}  "));
            if !vnodes {
                s.push_str(&format!("{tok:<39}  "));
            }
            s.push_str(r);
            s.push('\n');
            s
        };
        for (dc, nodes) in &dcs {
            out.push_str(&format!("Datacenter: {dc}\n{}\n", "=".repeat(dc.len() + 12)));
            out.push_str("Status=Up/Down\n|/ State=Normal/Leaving/Joining/Moving\n");
            out.push_str(&row("-", "-", "Address", "Load", "Tokens", owns_header, "Host ID", "Token", "Rack"));
            for &i in nodes {
                let n = &c.nodes[i];
                let (a, b) = code(i).split_at(1);
                out.push_str(&row(
                    a,
                    b,
                    &addr(i),
                    &load(i),
                    &n.tokens.len().to_string(),
                    &percent_1(owns[i]),
                    &n.host_id,
                    &n.tokens[0],
                    &n.rack,
                ));
            }
        }
    } else {
        let header: Vec<String> = if vnodes {
            ["--", "Address", "Load", "Tokens", owns_header, "Host ID", "Rack"].map(String::from).to_vec()
        } else {
            ["--", "Address", "Load", owns_header, "Host ID", "Token", "Rack"].map(String::from).to_vec()
        };
        let mut tables = Vec::new();
        for nodes in dcs.values() {
            let mut rows = vec![header.clone()];
            for &i in nodes {
                let n = &c.nodes[i];
                rows.push(if vnodes {
                    vec![
                        code(i).into(),
                        addr(i),
                        load(i),
                        n.tokens.len().to_string(),
                        percent_1(owns[i]),
                        n.host_id.clone(),
                        n.rack.clone(),
                    ]
                } else {
                    vec![
                        code(i).into(),
                        addr(i),
                        load(i),
                        percent_1(owns[i]),
                        n.host_id.clone(),
                        n.tokens[0].clone(),
                        n.rack.clone(),
                    ]
                });
            }
            tables.push(rows);
        }
        let all: Vec<Vec<String>> = tables.iter().flatten().cloned().collect();
        let widths = format::widths(&all);
        for (k, ((dc, _), rows)) in dcs.iter().zip(&tables).enumerate() {
            if k > 0 {
                out.push('\n');
            }
            out.push_str(&format!("Datacenter: {dc}\n{}\n", "=".repeat(dc.len() + 12)));
            out.push_str("Status=Up/Down\n|/ State=Normal/Leaving/Joining/Moving\n");
            out.push_str(&format::table_with_widths(rows, "  ", &widths));
        }
    }
    out.push('\n');
    if let Some(n) = note {
        out.push_str(n);
        out.push('\n');
    }
    out
}

fn describe_cluster(c: &Cluster) -> String {
    let mut s = format!(
        "Cluster Information:\n\tName: {}\n\tSnitch: {}\n\tDynamicEndPointSnitch: enabled\n\tPartitioner: {}\n\tSchema versions:\n",
        c.cluster_name, c.snitch, c.partitioner
    );
    let up: Vec<&str> = c.nodes.iter().filter(|n| n.up).map(|n| n.address.as_str()).collect();
    let down: Vec<&str> = c.nodes.iter().filter(|n| !n.up).map(|n| n.address.as_str()).collect();
    s.push_str(&format!("\t\t{}: [{}]\n\n", c.schema_version, up.join(", ")));
    if !down.is_empty() {
        s.push_str(&format!("\t\tUNREACHABLE: [{}]\n\n", down.join(", ")));
    }
    if c.version >= Version::V40 {
        s.push_str(&format!(
            "Stats for all nodes:\n\tLive: {}\n\tJoining: 0\n\tMoving: 0\n\tLeaving: 0\n\tUnreachable: {}\n\nData Centers: \n",
            up.len(),
            down.len()
        ));
        let mut dcs: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for n in &c.nodes {
            let e = dcs.entry(&n.datacenter).or_default();
            e.0 += 1;
            if !n.up {
                e.1 += 1;
            }
        }
        for (dc, (n, d)) in dcs {
            s.push_str(&format!("\t{dc} #Nodes: {n} #Down: {d}\n"));
        }
        s.push_str(&format!(
            "\nDatabase versions:\n\t{}: [{}]\n\nKeyspaces:\n",
            c.version.release(),
            up.iter().map(|a| format!("{a}:7000")).collect::<Vec<_>>().join(", ")
        ));
        for (name, k) in &c.keyspaces {
            let r = if k.replication.contains_key("LocalStrategy") {
                "LocalStrategy {}".to_owned()
            } else if let Some(rf) = k.replication.get("replication_factor") {
                format!("SimpleStrategy {{replication_factor={rf}}}")
            } else {
                format!(
                    "NetworkTopologyStrategy {{{}}}",
                    k.replication.iter().map(|(d, rf)| format!("{d}={rf}")).collect::<Vec<_>>().join(", ")
                )
            };
            s.push_str(&format!("\t{name} -> Replication class: {r}\n"));
        }
    }
    s
}

/// Parses `DurationSpec`-style values (`30m`, `1h`, `2d`, `90s`, `500ms`) to milliseconds.
fn duration_ms(s: &str) -> Option<i64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().ok()?;
    let ms = match unit.to_ascii_lowercase().as_str() {
        "d" | "days" => n * 86_400_000,
        "h" | "hours" => n * 3_600_000,
        "m" | "minutes" => n * 60_000,
        "s" | "seconds" => n * 1000,
        "ms" | "milliseconds" => n,
        _ => return None,
    };
    Some(ms)
}

fn snapshot(c: &mut Cluster, node: usize, args: &[String]) -> OpResult<Outcome> {
    let v = c.version;
    let mut specs: Vec<Spec> = vec![
        (&["-t", "--tag"], "tag", true),
        (&["-cf", "--column-family", "--table"], "table", true),
        (&["-kt", "--kt-list", "-kc", "--kc.list"], "kt", true),
        (&["-sf", "--skip-flush"], "skip-flush", false),
    ];
    if v >= Version::V41 {
        specs.push((&["--ttl"], "ttl", true));
    }
    let p = parse(args, &specs)?;
    let now = c.now_ms();
    let tag = p.value("tag").map(str::to_owned).unwrap_or_else(|| now.to_string());
    if v == Version::V40 && tag.contains(':') {
        return Err(Fail::Server("Snapshot name cannot contain :".into()));
    }
    if v >= Version::V41 && tag.contains('/') {
        return Err(Fail::Server("Snapshot name cannot contain /".into()));
    }
    let skip = p.flag("skip-flush");
    let ttl = match p.value("ttl") {
        Some(t) => {
            let ms = duration_ms(t).ok_or_else(|| Fail::Server(format!("Invalid duration: {t}")))?;
            if ms < 60_000 {
                return Err(Fail::Server(format!("ttl for snapshot must be at least 60 seconds, got {t}")));
            }
            Some((t.to_owned(), ms))
        }
        None => None,
    };
    let (entities, what) = if let Some(kt) = p.value("kt") {
        if !p.positional.is_empty() {
            return Err(Fail::Server("When specifying the Keyspace table list (using -kt,--kt-list,-kc,--kc.list), you must not also specify keyspaces to snapshot".into()));
        }
        let mut list = Vec::new();
        for e in kt.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (ks, t) = e.split_once('.').ok_or_else(|| {
                Fail::Server(format!("Cannot take a snapshot on secondary index or invalid column family name: {e}"))
            })?;
            list.push((ks.to_owned(), t.to_owned()));
        }
        (Entities::Tables(list), format!("[{kt}]"))
    } else if let Some(t) = p.value("table") {
        if p.positional.len() != 1 {
            return Err(Fail::Server(
                "When specifying the table for a snapshot, you must specify one and only one keyspace".into(),
            ));
        }
        (Entities::Tables(vec![(p.positional[0].clone(), t.to_owned())]), format!("[{}]", p.positional[0]))
    } else if p.positional.is_empty() {
        (Entities::All, "[all keyspaces]".to_owned())
    } else {
        (Entities::Keyspaces(p.positional.clone()), format!("[{}]", p.positional.join(", ")))
    };
    ops::snapshot(c, node, &tag, &entities, skip, ttl.as_ref().map(|(_, ms)| *ms), false)?;
    let options = match &ttl {
        Some((t, _)) => format!("{{skipFlush={skip}, ttl={t}}}"),
        None => format!("{{skipFlush={skip}}}"),
    };
    ok(format!(
        "Requested creating snapshot(s) for {what} with snapshot name [{tag}] and options {options}\nSnapshot directory: {tag}\n"
    ))
}

fn list_snapshots(c: &mut Cluster, node: usize, args: &[String]) -> OpResult<Outcome> {
    let v = c.version;
    let mut specs: Vec<Spec> = Vec::new();
    if v >= Version::V41 {
        specs.push((&["-nt", "--no-ttl"], "no-ttl", false));
    }
    if v >= Version::V50 {
        specs.push((&["-e", "--ephemeral"], "ephemeral", false));
    }
    let p = parse(args, &specs)?;
    let all = ops::snapshot_rows(c, node);
    let total: u64 = all.iter().map(|r| r.true_size).sum();
    let rows: Vec<_> = all
        .into_iter()
        .filter(|r| !(p.flag("no-ttl") && r.expires_ms.is_some()))
        .filter(|r| !(v >= Version::V50 && r.ephemeral && !p.flag("ephemeral")))
        .collect();
    ok(render_snapshot_details(v, &rows, total, p.flag("ephemeral")))
}

/// The output of `nodetool listsnapshots` for these rows (research §2.5): `Snapshot Details: `,
/// a `TableBuilder` table with the version's columns (5.0 `Ephemeral` only with `-e`), then the
/// total true size.
pub fn render_snapshot_details(v: Version, rows: &[ops::SnapshotRow], total: u64, ephemeral_column: bool) -> String {
    let mut out = String::from("Snapshot Details: \n");
    if rows.is_empty() {
        out.push_str("There are no snapshots\n");
        return out;
    }
    let ephemeral_column = ephemeral_column && v >= Version::V50;
    let mut header: Vec<String> = ["Snapshot name", "Keyspace name", "Column family name", "True size", "Size on disk"]
        .map(String::from)
        .to_vec();
    if v >= Version::V41 {
        header.extend(["Creation time".into(), "Expiration time".into()]);
    }
    if ephemeral_column {
        header.push("Ephemeral".into());
    }
    let mut table = vec![header];
    for r in rows {
        let mut row =
            vec![r.tag.clone(), r.keyspace.clone(), r.table.clone(), file_size(r.true_size), file_size(r.size_on_disk)];
        if v >= Version::V41 {
            row.push(r.created_ms.map(format::iso_instant).unwrap_or_default());
            row.push(r.expires_ms.map(format::iso_instant).unwrap_or_default());
        }
        if ephemeral_column {
            row.push(r.ephemeral.to_string());
        }
        table.push(row);
    }
    out.push_str(&format::table(&table, " "));
    out.push_str(&format!("\nTotal TrueDiskSpaceUsed: {}\n\n", file_size(total)));
    out
}

fn clear_snapshot(c: &mut Cluster, node: usize, args: &[String]) -> OpResult<Outcome> {
    let v = c.version;
    let mut specs: Vec<Spec> = vec![(&["-t"], "tag", true)];
    if v >= Version::V40 {
        specs.push((&["--all"], "all", false));
    }
    if v >= Version::V50 {
        specs.push((&["--older-than"], "older-than", true));
        specs.push((&["--older-than-timestamp"], "older-than-timestamp", true));
    }
    let p = parse(args, &specs)?;
    let tag = p.value("tag").filter(|t| !t.is_empty());
    let all = p.flag("all");
    let older = p.value("older-than");
    let older_ts = p.value("older-than-timestamp");
    if v >= Version::V40 {
        if tag.is_none() && !all && older.is_none() && older_ts.is_none() {
            // 5.0 refuses it as a usage error (exit 1, on stdout), 4.x from the command (exit 2).
            if v >= Version::V50 {
                return Err(Fail::Usage("Specify snapshot name or --all".into()));
            }
            return Err(Fail::Server("Specify snapshot name or --all".into()));
        }
        if tag.is_some() && all {
            return Err(Fail::Server("Specify only one of snapshot name or --all".into()));
        }
        if tag.is_some() && (older.is_some() || older_ts.is_some()) {
            return Err(Fail::Server(
                "Specifying a snapshot name together with --older-than or --older-than-timestamp is not allowed".into(),
            ));
        }
    }
    let now = c.now_ms();
    let (limit, suffix) = match (older, older_ts) {
        (Some(_), Some(_)) => {
            return Err(Fail::Server("Specify only one of --older-than or --older-than-timestamp".into()));
        }
        (Some(d), None) => {
            let ms = duration_ms(d).ok_or_else(|| Fail::Server(format!("Invalid duration: {d}")))?;
            (Some(now - ms), format!(" older than {} seconds.", ms / 1000))
        }
        (None, Some(ts)) => {
            let t = chrono::DateTime::parse_from_rfc3339(ts)
                .map_err(|_| Fail::Server(format!("Invalid timestamp: {ts}")))?;
            (Some(t.timestamp_millis()), format!(" older than timestamp {ts}"))
        }
        (None, None) => (None, String::new()),
    };
    ops::clear(c, node, tag, &p.positional, limit, false)?;
    let mut s = String::from("Requested clearing snapshot(s) for ");
    if p.positional.is_empty() {
        s.push_str("[all keyspaces]");
    } else {
        s.push_str(&format!("[{}]", p.positional.join(", ")));
    }
    if let Some(t) = tag {
        s.push_str(&format!(" with snapshot name [{t}]"));
    }
    if all {
        s.push_str(" with [all snapshots]");
    }
    s.push_str(&suffix);
    s.push('\n');
    ok(s)
}

fn import(c: &mut Cluster, node: usize, args: &[String]) -> OpResult<Outcome> {
    let mut specs: Vec<Spec> = vec![
        (&["-l", "--keep-level"], "keep-level", false),
        (&["-r", "--keep-repaired"], "keep-repaired", false),
        (&["-v", "--no-verify"], "no-verify", false),
        (&["-t", "--no-tokens"], "no-tokens", false),
        (&["-c", "--no-invalidate-caches"], "no-invalidate-caches", false),
        (&["-q", "--quick"], "quick", false),
        (&["-e", "--extended-verify"], "extended-verify", false),
        (&["-p", "--copy-data"], "copy-data", false),
    ];
    if c.version >= Version::V50 {
        specs.push((&["-ri", "--require-index-components"], "require-index-components", false));
        specs.push((&["-niv", "--no-index-validation"], "no-index-validation", false));
    }
    let p = parse(args, &specs)?;
    if p.positional.len() < 3 {
        return Err(Fail::Usage("import requires keyspace, table name and directories".into()));
    }
    let (ks, t) = (&p.positional[0], &p.positional[1]);
    let dirs: Vec<PathBuf> = p.positional[2..].iter().map(PathBuf::from).collect();
    let quick = p.flag("quick");
    let opts = ops::ImportOptions {
        no_verify: quick || p.flag("no-verify"),
        copy_data: p.flag("copy-data"),
        extended_verify: p.flag("extended-verify"),
    };
    let failed = ops::import(c, node, ks, t, &dirs, &opts)?;
    let stdout = if quick {
        "Doing a quick import - skipping sstable verification and row cache invalidation\n".to_owned()
    } else {
        String::new()
    };
    if !failed.is_empty() {
        let mut e = String::from("Some directories failed to import, check server logs for details:\n");
        for d in failed {
            e.push_str(&format!("{}\n", d.display()));
        }
        return Ok(Outcome { stdout, stderr: e, code: 1 });
    }
    ok(stdout)
}
