//! Coordinator replicas and agents as separate processes, with per-run certificates.
//!
//! ```ignore
//! let pki = TestPki::new(dir)?;                         // CA + operator certificate
//! let mut group = CoordinatorGroup::start(&pki, dir, 3, &[])?;   // three replicas, one group
//! let client = group.client()?;                          // follows the leader
//! let leader = group.wait_for_leader(Duration::from_secs(10)).await?;
//! group.kill9(leader);
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cassette_common::tls::{Role, TlsMode, TlsPaths};
use cassette_coordinator::certs::{self, IssueRequest};
use cassette_coordinator::client::OperatorClient;
use cassette_proto::v1 as pb;

use crate::process::ManagedProcess;
use crate::tools::{free_port, workspace_binary};

/// A CA for one test run, and certificates issued from it.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA directory (ca.pem, ca.key, and every issued certificate).
    pub dir: PathBuf,
}

impl TestPki {
    /// Creates a CA in `dir`, an operator certificate `operator` and an admin certificate `admin`.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        // Longer than the 30 days within which expiry is warned about: warnings mean something.
        certs::init_ca(dir, "test-ca", 90, false)?;
        let pki = Self { dir: dir.to_owned() };
        pki.issue(Role::Operator, "operator", &[])?;
        pki.issue(Role::Admin, "admin", &[])?;
        Ok(pki)
    }

    /// Issues `<name>.pem`/`<name>.key` (no-op if they exist).
    pub fn issue(&self, role: Role, name: &str, sans: &[&str]) -> anyhow::Result<TlsPaths> {
        let paths = TlsPaths::in_dir(&self.dir, name);
        if !paths.cert.exists() {
            let req = IssueRequest::valid_for_days(role, name, sans.iter().map(|s| s.to_string()).collect(), 90);
            certs::issue(&self.dir, &self.dir, &req, false)?;
        }
        Ok(paths)
    }

    /// The operator's material.
    pub fn operator(&self) -> anyhow::Result<TlsMode> {
        Ok(TlsMode::load(Some(&TlsPaths::in_dir(&self.dir, "operator")), false)?)
    }

    /// The admin's material (membership changes, fault injection, deletions).
    pub fn admin(&self) -> anyhow::Result<TlsMode> {
        Ok(TlsMode::load(Some(&TlsPaths::in_dir(&self.dir, "admin")), false)?)
    }

    /// `--ca/--cert/--key` arguments for `name`.
    pub fn args(&self, name: &str) -> Vec<String> {
        let p = TlsPaths::in_dir(&self.dir, name);
        vec![
            "--ca".into(),
            p.ca.display().to_string(),
            "--cert".into(),
            p.cert.display().to_string(),
            "--key".into(),
            p.key.display().to_string(),
        ]
    }
}

/// One replica process.
#[derive(Debug)]
pub struct ReplicaProcess {
    /// Raft id.
    pub id: u64,
    /// Its address.
    pub address: String,
    /// State directory.
    pub state_dir: PathBuf,
    /// Log file.
    pub log: PathBuf,
    /// The process (None while stopped).
    pub process: Option<ManagedProcess>,
    args: Vec<String>,
}

/// A group of replica processes.
#[derive(Debug)]
pub struct CoordinatorGroup {
    /// The replicas by id.
    pub replicas: BTreeMap<u64, ReplicaProcess>,
    pki: TestPki,
    dir: PathBuf,
    extra: Vec<String>,
}

/// Raft settings for tests: fast ticks, small snapshots optional.
pub const FAST_RAFT: &[&str] = &["--tick", "50ms", "--election-ticks", "10", "--heartbeat-ticks", "2"];

impl CoordinatorGroup {
    /// Starts `n` replicas (ids 1..=n) bootstrapped as one group. `extra` is passed to every
    /// `serve` (e.g. `--snapshot-interval 20`).
    ///
    /// A free port can be taken by another process between the check and the bind; then the
    /// whole group is started again on new ports (the peer list names every port).
    pub fn start(pki: &TestPki, dir: &Path, n: u64, extra: &[&str]) -> anyhow::Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut g = Self {
                replicas: BTreeMap::new(),
                pki: pki.clone(),
                dir: dir.to_owned(),
                extra: extra.iter().map(|s| s.to_string()).collect(),
            };
            let mut ports = Vec::new();
            for _ in 0..n {
                ports.push(free_port()?);
            }
            let peers: Vec<String> = (1..=n).zip(&ports).map(|(id, p)| format!("{id}=127.0.0.1:{p}")).collect();
            for (id, port) in (1..=n).zip(ports) {
                let address = format!("127.0.0.1:{port}");
                let mut args = vec!["--peers".to_owned(), peers.join(",")];
                if n == 1 {
                    args.clear();
                }
                g.add_process(id, address, args)?;
            }
            match g.wait_listening(Duration::from_secs(30)) {
                Ok(()) => return Ok(g),
                Err(e) if attempt < 4 && e.to_string().contains("Address already in use") => {
                    eprintln!("a port was taken while starting the group; retrying on new ports: {e}");
                    for r in g.replicas.values_mut() {
                        if let Some(mut p) = r.process.take() {
                            p.kill9();
                        }
                        let _ = std::fs::remove_dir_all(&r.state_dir);
                        let _ = std::fs::remove_file(&r.log);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until every started replica prints that it listens; fails with its log if one exits.
    fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for r in self.replicas.values_mut() {
            loop {
                let text = std::fs::read_to_string(&r.log).unwrap_or_default();
                if text.contains("cassette-coordinator listening on") {
                    break;
                }
                let running = r.process.as_mut().is_some_and(|p| p.is_running());
                if !running || Instant::now() > deadline {
                    bail!("replica {} did not start: {}", r.id, crate::process::tail(&r.log, 2000));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn add_process(&mut self, id: u64, address: String, bootstrap_args: Vec<String>) -> anyhow::Result<()> {
        let name = format!("coordinator{id}");
        self.pki.issue(Role::Coordinator, &name, &["127.0.0.1", "localhost"])?;
        let state_dir = self.dir.join(format!("replica{id}"));
        let mut args = vec![
            "serve".to_owned(),
            "--listen".into(),
            address.clone(),
            "--id".into(),
            id.to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--enable-fault-injection".into(),
            "--health-interval".into(),
            "2s".into(),
        ];
        args.extend(self.pki.args(&name));
        // CASSETTE_TEST_DEFAULT_RAFT=1 runs with the production timing (100 ms ticks) instead;
        // a test that sets its own timing (`--election-ticks` in `extra`) gets 50 ms ticks only.
        let own_timing = self.extra.iter().any(|a| a == "--election-ticks");
        if own_timing {
            args.extend(["--tick".to_owned(), "50ms".into(), "--heartbeat-ticks".into(), "2".into()]);
        } else if std::env::var("CASSETTE_TEST_DEFAULT_RAFT").map_or(true, |v| v != "1") {
            args.extend(FAST_RAFT.iter().map(|s| s.to_string()));
        }
        args.extend(self.extra.iter().cloned());
        args.extend(bootstrap_args);
        let log = self.dir.join(format!("replica{id}.log"));
        let mut r = ReplicaProcess { id, address, state_dir, log, process: None, args };
        spawn_replica(&mut r)?;
        self.replicas.insert(id, r);
        Ok(())
    }

    /// Starts a new empty replica with `--join` (add it with [`OperatorClient`] `add_replica`).
    pub fn start_joining(&mut self, id: u64) -> anyhow::Result<String> {
        let address = format!("127.0.0.1:{}", free_port()?);
        self.add_process(id, address.clone(), vec!["--join".into()])?;
        Ok(address)
    }

    /// Starts a new replica with neither --peers nor --join: it founds a one-replica group of its own.
    pub fn start_alone(&mut self, id: u64) -> anyhow::Result<String> {
        let address = format!("127.0.0.1:{}", free_port()?);
        self.add_process(id, address.clone(), vec![])?;
        Ok(address)
    }

    /// Every replica's address.
    pub fn endpoints(&self) -> Vec<String> {
        self.replicas.values().map(|r| r.address.clone()).collect()
    }

    /// A client over every replica with the admin certificate (it may do everything, replica
    /// membership included), waiting up to 10 s for a leader.
    pub fn client(&self) -> anyhow::Result<OperatorClient> {
        Ok(OperatorClient::new(self.endpoints(), self.pki.admin()?, Duration::from_secs(10))?)
    }

    /// A replica's own status (no redirect).
    pub async fn status(&self, id: u64) -> anyhow::Result<pb::ReplicaStatusResponse> {
        let r = self.replicas.get(&id).context("no such replica")?;
        let c = OperatorClient::new(vec![r.address.clone()], self.pki.operator()?, Duration::from_secs(2))?;
        Ok(c.at(&r.address, |mut c| async move { c.replica_status(pb::ReplicaStatusRequest {}).await }).await?)
    }

    /// Sets fault injection on replica `id`.
    pub async fn faults(&self, id: u64, isolate: bool, drop_rate: f64) -> anyhow::Result<()> {
        let r = self.replicas.get(&id).context("no such replica")?;
        let c = OperatorClient::new(vec![r.address.clone()], self.pki.admin()?, Duration::from_secs(2))?;
        c.at(&r.address, |mut c| async move {
            c.set_faults(pb::SetFaultsRequest { isolate, drop_rate, delay_ms: 0 }).await
        })
        .await?;
        Ok(())
    }

    /// Waits until the running replicas (except `excluding`) agree on one leader; returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration, excluding: &[u64]) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let mut leaders = Vec::new();
            let mut ok = true;
            for (id, r) in &self.replicas {
                if excluding.contains(id) || r.process.is_none() {
                    continue;
                }
                match self.status(*id).await {
                    Ok(s) if s.role == "removed" => {}
                    Ok(s) => leaders.push(s.leader_id),
                    Err(e) => {
                        last = e.to_string();
                        ok = false;
                    }
                }
            }
            if ok
                && !leaders.is_empty()
                && leaders[0] != 0
                && leaders.iter().all(|l| *l == leaders[0])
                && !excluding.contains(&leaders[0])
            {
                return Ok(leaders[0]);
            }
            last = format!("leaders seen: {leaders:?} {last}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("no agreed leader within {timeout:?}: {last}")
    }

    /// Waits until replica `id` has applied at least `index`.
    pub async fn wait_applied(
        &self,
        id: u64,
        index: u64,
        timeout: Duration,
    ) -> anyhow::Result<pb::ReplicaStatusResponse> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(id).await;
            if let Ok(s) = &s
                && s.applied_index >= index
            {
                return Ok(s.clone());
            }
            if Instant::now() >= deadline {
                bail!("replica {id} did not apply index {index} within {timeout:?}: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL.
    pub fn kill9(&mut self, id: u64) {
        if let Some(r) = self.replicas.get_mut(&id)
            && let Some(mut p) = r.process.take()
        {
            p.kill9();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self, id: u64) {
        if let Some(r) = self.replicas.get_mut(&id)
            && let Some(mut p) = r.process.take()
        {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Starts a stopped replica again from its state directory.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let r = self.replicas.get_mut(&id).context("no such replica")?;
        spawn_replica(r)
    }

    /// The tail of every replica's log, for failure messages.
    pub fn logs(&self) -> String {
        self.replicas
            .values()
            .map(|r| format!("--- replica {} ({}):\n{}", r.id, r.log.display(), crate::process::tail(&r.log, 3000)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn spawn_replica(r: &mut ReplicaProcess) -> anyhow::Result<()> {
    let bin = workspace_binary("cassette-coordinator", "cassette-coordinator");
    let mut cmd = Command::new(bin);
    cmd.args(&r.args).env("RUST_LOG", "info,raft=info").env("NO_COLOR", "1");
    // After the first start the bootstrap flags are ignored (state exists), which is what a
    // restart from the directory must do.
    r.process = Some(ManagedProcess::spawn(&format!("coordinator{}", r.id), cmd, &r.log)?);
    Ok(())
}

/// Runs the `cassette` CLI with `args`; returns (exit code, stdout, stderr).
pub fn cassette_cli(args: &[String]) -> anyhow::Result<(i32, String, String)> {
    let bin = workspace_binary("cassette-coordinator", "cassette");
    let out = Command::new(bin).args(args).env("NO_COLOR", "1").output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

impl TestPki {
    /// Issues a certificate that expired yesterday (`<name>.pem`/`<name>.key`, replacing any).
    pub fn issue_expired(&self, role: Role, name: &str, sans: &[&str]) -> anyhow::Result<TlsPaths> {
        let now = time::OffsetDateTime::now_utc();
        let req = IssueRequest {
            role,
            name: name.to_owned(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            not_before: now - time::Duration::days(10),
            not_after: now - time::Duration::days(1),
        };
        let (cert, key) = certs::issue_pem(
            &std::fs::read_to_string(self.dir.join("ca.pem"))?,
            &std::fs::read_to_string(self.dir.join("ca.key"))?,
            &req,
        )?;
        let paths = TlsPaths::in_dir(&self.dir, name);
        std::fs::write(&paths.key, key)?;
        std::fs::write(&paths.cert, cert)?;
        Ok(paths)
    }

    /// Re-issues a valid certificate over `<name>.pem`/`<name>.key` (for reload tests).
    pub fn reissue(&self, role: Role, name: &str, sans: &[&str]) -> anyhow::Result<TlsPaths> {
        let req = IssueRequest::valid_for_days(role, name, sans.iter().map(|s| s.to_string()).collect(), 90);
        certs::issue(&self.dir, &self.dir, &req, true)?;
        Ok(TlsPaths::in_dir(&self.dir, name))
    }

    /// Mutual-TLS material for `name` (any role).
    pub fn mode(&self, name: &str) -> anyhow::Result<TlsMode> {
        Ok(TlsMode::load(Some(&TlsPaths::in_dir(&self.dir, name)), false)?)
    }
}

/// An agent process (`cassette-agent serve`) for one emulated node.
#[derive(Debug)]
pub struct AgentProcess {
    /// `host:port` it listens on.
    pub address: String,
    /// Log file.
    pub log: PathBuf,
    /// The process (None while stopped).
    pub process: Option<ManagedProcess>,
    args: Vec<String>,
    name: String,
    env: Vec<(String, String)>,
}

impl AgentProcess {
    /// Like [`Self::start`], with environment variables (storage credentials) for the process.
    #[allow(clippy::too_many_arguments)]
    pub fn start_with_env(
        cluster: &crate::harness::EmulatedCluster,
        node: &str,
        port: u16,
        pki: &TestPki,
        cert_name: &str,
        dir: &Path,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        Self::start_for(&cluster.cassandra_config(node), node, port, pki, cert_name, dir, extra, env)
    }

    /// Starts an agent for the emulated node at `node` (e.g. `127.0.0.2`), listening on
    /// `node:port`, with certificate `cert_name` from `pki`, state in `dir/<name>`.
    pub fn start(
        cluster: &crate::harness::EmulatedCluster,
        node: &str,
        port: u16,
        pki: &TestPki,
        cert_name: &str,
        dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_for(&cluster.cassandra_config(node), node, port, pki, cert_name, dir, extra, Vec::new())
    }

    /// Starts an agent for the node `cassandra` reaches (its nodetool, cqlsh and hosts), listening
    /// on `node:port`; `extra` adds flags (`--config <file>` for settings without a flag, such as
    /// the JMX port), `env` the storage credentials.
    #[allow(clippy::too_many_arguments)]
    pub fn start_for(
        cassandra: &cassette_agent::cassandra::CassandraConfig,
        node: &str,
        port: u16,
        pki: &TestPki,
        cert_name: &str,
        dir: &Path,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let name = format!("agent-{node}");
        let address = format!("{node}:{port}");
        let mut args = vec![
            "--state-dir".to_owned(),
            dir.join(&name).display().to_string(),
            "serve".into(),
            "--listen".into(),
            address.clone(),
            "--nodetool".into(),
            cassandra.nodetool.display().to_string(),
            "--cqlsh".into(),
            cassandra.cqlsh.display().to_string(),
            "--jmx-host".into(),
            cassandra.jmx_host.clone(),
            "--cql-host".into(),
            cassandra.cql_host.clone(),
            "--enable-test-phases".into(),
            "--tls-reload-interval".into(),
            "200ms".into(),
        ];
        args.extend(pki.args(cert_name));
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.join(format!("{name}.log"));
        let mut a = Self { address, log, process: None, args, name, env };
        a.restart()?;
        Ok(a)
    }

    /// Starts it (again), and waits until it listens.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let bin = workspace_binary("cassette-agent", "cassette-agent");
        let mut cmd = Command::new(bin);
        cmd.args(&self.args).env("RUST_LOG", "info").env("NO_COLOR", "1").envs(self.env.iter().cloned());
        let before = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let mut p = ManagedProcess::spawn(&self.name, cmd, &self.log)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.get(before as usize..).is_some_and(|t| t.contains("cassette-agent listening on")) {
                break;
            }
            if !p.is_running() || Instant::now() > deadline {
                bail!("agent {} did not start:\n{}", self.name, p.log_tail(3000));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.process = Some(p);
        Ok(())
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill9();
        }
    }

    /// The log without terminal colour codes.
    pub fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

/// Removes terminal colour sequences (`ESC [ … m`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' && it.peek() == Some(&'[') {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// A port that is free on every one of `hosts` (loopback aliases such as 127.0.0.2).
pub fn free_port_on(hosts: &[&str]) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let p = free_port()?;
        if hosts.iter().all(|h| std::net::TcpListener::bind((*h, p)).is_ok()) {
            return Ok(p);
        }
    }
    bail!("no port free on all of {hosts:?}")
}

/// Opens a TLS connection to `address` trusting `ca` but presenting NO client certificate, and
/// returns how the failure is explained to the client (the server must refuse it).
pub async fn connect_without_certificate(address: &str, ca: &Path) -> anyhow::Result<String> {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let host = cassette_common::tls::host_of(address).context("host")?.to_owned();
    let name = rustls::pki_types::ServerName::try_from(host)?;
    let err = match connector.connect(name, tcp).await {
        Err(e) => e,
        Ok(mut s) => {
            // TLS 1.3: the client finishes its side first; the refusal arrives on the next read.
            s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
            let mut buf = [0u8; 64];
            match s.read(&mut buf).await {
                Err(e) => e,
                Ok(n) => bail!("the server accepted a connection without a client certificate (read {n} bytes)"),
            }
        }
    };
    Ok(cassette_common::tls::explain_transport_error(&err, cassette_common::tls::Side::Client)
        .unwrap_or_else(|| err.to_string()))
}
