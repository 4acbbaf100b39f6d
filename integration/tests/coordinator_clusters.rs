//! Clusters, agents and mutual TLS, as processes: an emulated three-node cluster in two
//! datacenters with `cassette-agent serve` on every node (each on its own loopback address),
//! a coordinator replica, and the `cassette` CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cassette_common::tls::{Role, TlsMode};
use cassette_coordinator::agents::{AgentClient, AgentErrorKind, GrpcAgents, JobRequest};
use cassette_coordinator::client::{ClientError, OperatorClient};
use cassette_integration::coordinator::{
    AgentProcess, CoordinatorGroup, TestPki, cassette_cli, connect_without_certificate, free_port_on, strip_ansi,
};
use cassette_integration::emulator::{ClusterSpec, Version};
use cassette_integration::harness::EmulatedCluster;
use cassette_proto::v1 as pb;
use serde_json::Value;

const EMULATOR: &str = env!("CARGO_BIN_EXE_cassandra-emulator");
const NODES: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];

fn step(s: &str) {
    eprintln!("--- step {s}");
}

struct Setup {
    dir: Option<tempfile::TempDir>,
    pki: TestPki,
    cluster: EmulatedCluster,
    group: CoordinatorGroup,
    agents: Vec<AgentProcess>,
    port: u16,
}

impl Setup {
    fn new(name: &str) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::Builder::new().prefix(&format!("cassette-{name}-")).tempdir().unwrap();
        let pki = TestPki::new(&dir.path().join("pki")).unwrap();
        let mut spec = ClusterSpec::single(Version::V41);
        spec.datacenters = vec![("dc1".into(), 2), ("dc2".into(), 1)];
        let cluster = EmulatedCluster::create_in(&dir.path().join("cassandra"), EMULATOR, &spec).unwrap();
        let group = CoordinatorGroup::start(&pki, dir.path(), 1, &[]).unwrap();
        // A free port can be taken before the agents bind it: then all start again on another.
        let mut attempt = 0;
        let (agents, port) = loop {
            attempt += 1;
            let port = free_port_on(&NODES).unwrap();
            let mut agents = Vec::new();
            let mut failed = None;
            for (i, node) in NODES.iter().enumerate() {
                let cert = format!("agent{}", i + 1);
                pki.issue(Role::Agent, &cert, &[node]).unwrap();
                match AgentProcess::start(&cluster, node, port, &pki, &cert, dir.path(), &[]) {
                    Ok(a) => agents.push(a),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => break (agents, port),
                Some(e) if attempt < 4 && e.to_string().contains("Address already in use") => {
                    eprintln!("port {port} taken; starting the agents on another: {e}");
                }
                Some(e) => panic!("{e:#}"),
            }
        };
        Self { dir: Some(dir), pki, cluster, group, agents, port }
    }

    /// `cassette` with the admin certificate (t56 also removes a cluster; t63 covers what an
    /// operator certificate may not do).
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut a: Vec<String> = vec!["--coordinator".into(), self.group.endpoints().join(",")];
        a.extend(self.pki.args("admin"));
        a.extend(args.iter().map(|s| s.to_string()));
        cassette_cli(&a).unwrap()
    }

    fn cli_json(&self, args: &[&str]) -> (i32, Value) {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let (code, out, err) = self.cli(&a);
        let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}\nstderr: {err}"));
        (code, v)
    }

    fn coordinator_log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.group.replicas[&1].log).unwrap_or_default())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.dir.take()
        {
            eprintln!("test failed: its directory (logs, state, certificates) is kept at {}", d.keep().display());
        }
    }
}

fn node<'a>(v: &'a Value, address: &str) -> &'a Value {
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["address"] == address)
        .unwrap_or_else(|| panic!("no node {address} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t56_cluster_add_and_status_through_agents() {
    // - `cassette cluster add` reads the ring through one agent and finds the other two by the
    //   address pattern; every node's dc, rack, tokens, version, disk are reported;
    // - `cluster status` probes again: a stopped Cassandra node shows as down, a killed agent
    //   as unreachable, with the reason; the exit code says something is wrong;
    // - registering twice, or with a pattern that points nowhere, fails with a clear message.
    let mut s = Setup::new("t56");
    s.group.wait_for_leader(Duration::from_secs(20), &[]).await.unwrap();
    let seed = format!("127.0.0.1:{}", s.port);
    step("cluster add");
    let (code, v) = s.cli_json(&["cluster", "add", "prod", "--agent", &seed]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["cassandra_cluster_name"], "Test Cluster");
    assert_eq!(v["agent_pattern"], format!("{{address}}:{}", s.port));
    let state = s.cluster.cluster().unwrap();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
    for n in &state.nodes {
        let j = node(&v, &n.address);
        assert_eq!(j["host_id"], n.host_id);
        assert_eq!(j["datacenter"], n.datacenter);
        assert_eq!(j["rack"], n.rack);
        assert_eq!(j["tokens"], n.tokens.len());
        assert_eq!(j["release_version"], Version::V41.release());
        assert_eq!(j["agent_address"], format!("{}:{}", n.address, s.port));
        assert!(j["agent_reachable"].as_bool().unwrap() && j["cassandra_up"].as_bool().unwrap(), "{j}");
        assert!(j["disk_free_bytes"].as_u64().unwrap() > 0 && j["disk_total_bytes"].as_u64().unwrap() > 0, "{j}");
    }
    step("cluster status (text)");
    let (code, out, _) = s.cli(&["cluster", "status", "prod"]);
    assert_eq!(code, 0, "{out}");
    eprintln!("{out}");
    for h in ["ADDRESS", "DC", "RACK", "AGENT", "CASSANDRA", "VERSION", "TOKENS", "DISK FREE", "dc2", "4.1"] {
        assert!(out.contains(h), "{h} missing from\n{out}");
    }
    step("registering twice is refused");
    let (code, out, err) = s.cli(&["cluster", "add", "prod", "--agent", &seed]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("cluster prod is already registered"), "{err}");
    step("a pattern that points nowhere is refused with every node's problem");
    let (code, _, err) = s.cli(&["cluster", "add", "other", "--agent", &seed, "--agent-pattern", "{address}:1"]);
    assert_eq!(code, 1);
    assert!(err.contains("3 of 3 nodes have a problem") && err.contains("--allow-unhealthy"), "{err}");
    assert!(err.contains("127.0.0.2:1") && err.contains("cannot connect"), "{err}");
    step("stop Cassandra on 127.0.0.3, kill the agent of 127.0.0.2");
    s.cluster.admin(&["stop", "127.0.0.3"]).unwrap();
    s.agents[1].kill9();
    let (code, v) = s.cli_json(&["cluster", "status", "prod"]);
    assert_eq!(code, 2, "{v}");
    let n3 = node(&v, "127.0.0.3");
    assert!(n3["agent_reachable"].as_bool().unwrap() && !n3["cassandra_up"].as_bool().unwrap(), "{n3}");
    assert!(n3["problem"].as_str().unwrap().contains("Cassandra is not up"), "{n3}");
    let n2 = node(&v, "127.0.0.2");
    assert!(!n2["agent_reachable"].as_bool().unwrap(), "{n2}");
    assert!(n2["problem"].as_str().unwrap().contains("cannot connect"), "{n2}");
    assert!(node(&v, "127.0.0.1")["cassandra_up"].as_bool().unwrap());
    step("the leader's health check records it; --cached shows the record");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = s.cli_json(&["cluster", "status", "prod", "--cached"]);
        if !node(&v, "127.0.0.2")["agent_reachable"].as_bool().unwrap() {
            break;
        }
        assert!(Instant::now() < deadline, "health never recorded: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    step("cluster list and remove");
    let (_, v) = s.cli_json(&["cluster", "list"]);
    assert_eq!(v["clusters"][0]["name"], "prod");
    let (code, _, _) = s.cli(&["cluster", "remove", "prod"]);
    assert_eq!(code, 0);
    let (code, _, err) = s.cli(&["cluster", "status", "prod"]);
    assert_eq!(code, 1);
    assert!(err.contains("no cluster named prod"), "{err}");
}

async fn wait_job(
    agents: &GrpcAgents,
    agent: &str,
    job: &str,
    state: pb::JobState,
    timeout: Duration,
) -> pb::JobStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(j) = agents.job(agent, job).await
            && j.state == state as i32
        {
            return j;
        }
        assert!(Instant::now() < deadline, "job {job} on {agent} never reached {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t57_agent_jobs_are_idempotent_and_survive_agent_restarts() {
    // - a job started twice with the same id runs once; the same id with other parameters is refused;
    // - progress streams until the end;
    // - kill -9 of the agent mid-job: after a restart a resumable job resumes (attempt 2) and
    //   finishes, a non-resumable one is reported failed with the reason, finished ones keep
    //   their results;
    // - cancel stops a running job.
    let mut s = Setup::new("t57");
    s.pki.issue(Role::Coordinator, "coordinator1", &["127.0.0.1"]).unwrap();
    let agents = GrpcAgents::new(s.pki.mode("coordinator1").unwrap(), cassette_coordinator::agents::default_timeouts());
    let agent = s.agents[0].address.clone();
    let job = |id: &str, phase: &str, ms: u64| JobRequest {
        job_id: id.into(),
        phase: phase.into(),
        params: serde_json::json!({ "duration_ms": ms, "steps": 20 }),
        operation_id: "op-t57".into(),
        not_before_ms: 0,
    };
    step("idempotent start");
    let a = agents.start_job(&agent, &job("quick", "synthetic.sleep", 300)).await.unwrap();
    let b = agents.start_job(&agent, &job("quick", "synthetic.sleep", 300)).await.unwrap();
    assert_eq!(a.started_at_ms, b.started_at_ms);
    let e = agents.start_job(&agent, &job("quick", "synthetic.sleep", 301)).await.unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Conflict, "{e}");
    step("watch until done");
    let mut stream = agents.watch_job(&agent, "quick").await.unwrap();
    let mut seen = Vec::new();
    while let Some(st) = futures::StreamExt::next(&mut stream).await {
        seen.push(st.unwrap());
    }
    assert_eq!(seen.last().unwrap().state, pb::JobState::Succeeded as i32);
    assert!(seen.len() >= 2, "{seen:?}");
    let e = agents.start_job(&agent, &job("x", "no-such-phase", 1)).await.unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Invalid);
    assert!(e.to_string().contains("synthetic.sleep"), "{e}");

    step("kill -9 the agent with two jobs running");
    agents.start_job(&agent, &job("long", "synthetic.sleep", 3000)).await.unwrap();
    agents.start_job(&agent, &job("once", "synthetic.sleep-once", 60_000)).await.unwrap();
    // Kill it once the long job has made progress.
    let deadline = Instant::now() + Duration::from_secs(10);
    while agents.job(&agent, "long").await.unwrap().progress.unwrap_or_default().done < 2 {
        assert!(Instant::now() < deadline, "job 'long' makes no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.agents[0].kill9();
    let e = agents.job(&agent, "long").await.unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Unreachable, "{e}");
    s.agents[0].restart().unwrap();
    step("after the restart");
    let long = wait_job(&agents, &agent, "long", pb::JobState::Succeeded, Duration::from_secs(20)).await;
    assert_eq!(long.attempt, 2);
    let once = agents.job(&agent, "once").await.unwrap();
    assert_eq!(once.state, pb::JobState::Failed as i32);
    assert!(once.error.unwrap().message.contains("cannot resume"));
    let quick = agents.job(&agent, "quick").await.unwrap();
    assert_eq!((quick.state, quick.attempt), (pb::JobState::Succeeded as i32, 1));
    // Re-attaching to a finished job by starting it again returns its result, it does not rerun.
    let again = agents.start_job(&agent, &job("long", "synthetic.sleep", 3000)).await.unwrap();
    assert_eq!((again.state, again.finished_at_ms), (pb::JobState::Succeeded as i32, long.finished_at_ms));

    step("cancel");
    agents.start_job(&agent, &job("cancel-me", "synthetic.sleep", 60_000)).await.unwrap();
    agents.cancel_job(&agent, "cancel-me").await.unwrap();
    wait_job(&agents, &agent, "cancel-me", pb::JobState::Cancelled, Duration::from_secs(10)).await;
}

/// Waits (up to 5 s) for a server's log to say `needle`: the server may log just after the
/// client has seen the refusal.
async fn assert_log(log: impl Fn() -> String, needle: &str, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = log();
        if text.contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "{who} log lacks {needle:?}:\n{}", &text[text.len().saturating_sub(4000)..]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t58_mtls_rejections_are_clear_on_both_sides() {
    // For the operator API (coordinator) and the agent API, each of: no certificate, a
    // certificate from another CA, the wrong role, an expired certificate is refused, and both
    // the client's error and the server's log say which. Also: a server with the wrong role or
    // an expired certificate is refused by the client; plain text against TLS is explained; a
    // renewed certificate is picked up without a restart.
    let mut s = Setup::new("t58");
    s.group.wait_for_leader(Duration::from_secs(20), &[]).await.unwrap();
    let coord = s.group.endpoints()[0].clone();
    let agent = s.agents[0].address.clone();
    let ca = s.pki.dir.join("ca.pem");
    s.pki.issue(Role::Coordinator, "coordinator-client", &["127.0.0.1"]).unwrap();
    let other = TestPki::new(&s.dir.as_ref().unwrap().path().join("other-pki")).unwrap();
    other.issue(Role::Coordinator, "foreign-coordinator", &[]).unwrap();

    step("no certificate: operator API");
    let client_msg = connect_without_certificate(&coord, &ca).await.unwrap();
    assert!(client_msg.contains("this end presented no certificate"), "{client_msg}");
    assert_log(|| s.coordinator_log(), "the client presented no certificate", "coordinator").await;
    step("no certificate: agent API");
    let client_msg = connect_without_certificate(&agent, &ca).await.unwrap();
    assert!(client_msg.contains("this end presented no certificate"), "{client_msg}");
    assert_log(|| s.agents[0].log_text(), "the client presented no certificate", "agent").await;
    step("plain text against TLS");
    let (code, _, err) = cassette_cli(&[
        "--coordinator".into(),
        coord.clone(),
        "--insecure".into(),
        "--wait".into(),
        "1s".into(),
        "debug".into(),
        "get".into(),
        "debug/".into(),
    ])
    .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("requires mutual TLS"), "{err}");
    assert_log(|| s.coordinator_log(), "does not speak TLS", "coordinator").await;

    step("another CA: operator API (the CLI)");
    let foreign = |name: &str| {
        let p = cassette_common::tls::TlsPaths::in_dir(&other.dir, name);
        vec![
            "--coordinator".to_owned(),
            coord.clone(),
            "--ca".into(),
            ca.display().to_string(),
            "--cert".into(),
            p.cert.display().to_string(),
            "--key".into(),
            p.key.display().to_string(),
        ]
    };
    let mut args = foreign("operator");
    args.extend(["cluster".into(), "list".into()]);
    let (code, _, err) = cassette_cli(&args).unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("not issued by the CA the peer trusts"), "{err}");
    assert_log(|| s.coordinator_log(), "was not issued by our CA", "coordinator").await;
    step("another CA: agent API");
    let mixed = TlsMode::load(
        Some(&cassette_common::tls::TlsPaths {
            ca: ca.clone(),
            cert: other.dir.join("foreign-coordinator.pem"),
            key: other.dir.join("foreign-coordinator.key"),
        }),
        false,
    )
    .unwrap();
    let e =
        GrpcAgents::new(mixed, cassette_coordinator::agents::default_timeouts()).describe(&agent).await.unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Denied, "{e}");
    assert!(e.to_string().contains("not issued by the CA the peer trusts"), "{e}");
    assert_log(|| s.agents[0].log_text(), "was not issued by our CA", "agent").await;

    step("wrong role: an agent certificate on the operator API");
    let as_agent =
        OperatorClient::new(vec![coord.clone()], s.pki.mode("agent1").unwrap(), Duration::from_secs(2)).unwrap();
    let e = as_agent.call(|mut c| async move { c.cluster_list(pb::ClusterListRequest {}).await }).await.unwrap_err();
    assert!(matches!(e, ClientError::Denied { .. }), "{e}");
    assert!(
        e.to_string().contains(
            "accepts only operator or admin certificates, but this connection presented an agent certificate"
        ),
        "{e}"
    );
    assert_log(|| s.coordinator_log(), "refused a request: wrong certificate role", "coordinator").await;
    step("wrong role: an operator certificate on the agent API");
    let e = GrpcAgents::new(s.pki.operator().unwrap(), cassette_coordinator::agents::default_timeouts())
        .describe(&agent)
        .await
        .unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Denied);
    assert!(
        e.to_string()
            .contains("accepts only coordinator certificates, but this connection presented an operator certificate"),
        "{e}"
    );
    assert_log(|| s.agents[0].log_text(), "refused a request: wrong certificate role", "agent").await;
    step("wrong role: an operator certificate on the raft transport");
    let ch = cassette_common::tls::channel(&coord, &s.pki.operator().unwrap(), Role::Coordinator, Default::default())
        .unwrap();
    let e = pb::raft_transport_client::RaftTransportClient::new(ch)
        .send(pb::RaftBatch {
            from: 9,
            from_address: "127.0.0.1:1".into(),
            to: 1,
            messages: vec![],
            group: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("the raft transport accepts only coordinator certificates, but this connection presented an operator certificate"), "{e}");
    step("wrong role: the CLI refuses a non-operator certificate before connecting");
    let mut args = vec!["--coordinator".to_owned(), coord.clone()];
    args.extend(s.pki.args("coordinator-client"));
    args.extend(["cluster".into(), "list".into()]);
    let (_, _, err) = cassette_cli(&args).unwrap();
    assert!(err.contains("is a coordinator certificate, but this program needs an operator certificate"), "{err}");

    step("expired: operator certificate");
    s.pki.issue_expired(Role::Operator, "expired-operator", &[]).unwrap();
    let mut args = vec!["--coordinator".to_owned(), coord.clone()];
    args.extend(s.pki.args("expired-operator"));
    args.extend(["cluster".into(), "list".into()]);
    let (code, _, err) = cassette_cli(&args).unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("certificate has expired"), "{err}");
    assert_log(|| s.coordinator_log(), "the client presented an expired certificate", "coordinator").await;
    step("expired: coordinator certificate at an agent");
    s.pki.issue_expired(Role::Coordinator, "expired-coordinator", &[]).unwrap();
    let e =
        GrpcAgents::new(s.pki.mode("expired-coordinator").unwrap(), cassette_coordinator::agents::default_timeouts())
            .describe(&agent)
            .await
            .unwrap_err();
    assert!(e.to_string().contains("certificate has expired"), "{e}");
    assert_log(|| s.agents[0].log_text(), "the client presented an expired certificate", "agent").await;

    step("the server side: an agent with an expired certificate, then renewed in place");
    let coordinator =
        GrpcAgents::new(s.pki.mode("coordinator-client").unwrap(), cassette_coordinator::agents::default_timeouts());
    s.agents[2].kill9();
    s.pki.issue_expired(Role::Agent, "agent3", &["127.0.0.3"]).unwrap();
    s.agents[2].restart().unwrap();
    let a3 = s.agents[2].address.clone();
    let e = coordinator.describe(&a3).await.unwrap_err();
    assert!(e.to_string().contains("the server presented an expired certificate"), "{e}");
    assert_log(|| s.agents[2].log_text(), "the client rejected the TLS handshake", "agent").await;
    s.pki.reissue(Role::Agent, "agent3", &["127.0.0.3"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while coordinator.describe(&a3).await.is_err() {
        assert!(Instant::now() < deadline, "the renewed certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_log(|| s.agents[2].log_text(), "reloaded TLS certificate", "agent").await;

    step("the server side: a server with the wrong role");
    // A coordinator dialling a coordinator replica as if it were an agent.
    let e = coordinator.describe(&coord).await.unwrap_err();
    assert!(
        e.to_string().contains("expected an agent certificate but the server presented a coordinator certificate"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t59_plain_text_only_behind_insecure_with_a_warning() {
    // - without certificates, the replica, the agent and the CLI refuse to start and say how to
    //   get certificates (or that --insecure exists);
    // - with --insecure everywhere they work, and each prints the warning.
    let dir = tempfile::Builder::new().prefix("cassette-t59-").tempdir().unwrap();
    let coordinator = cassette_integration::tools::workspace_binary("cassette-coordinator", "cassette-coordinator");
    let agent_bin = cassette_integration::tools::workspace_binary("cassette-agent", "cassette-agent");
    let port = cassette_integration::tools::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let state = dir.path().join("state").display().to_string();
    step("no certificates: refused, with the way out");
    let out = std::process::Command::new(&coordinator)
        .args(["serve", "--listen", &addr, "--state-dir", &state])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("mutual TLS needs --ca, --cert and --key") && err.contains("--insecure"),
        "{err}"
    );
    let out = std::process::Command::new(&agent_bin).args(["serve", "--listen", &addr]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--ca"), "{err}");
    let (code, _, err) =
        cassette_cli(&["--coordinator".into(), addr.clone(), "cluster".into(), "list".into()]).unwrap();
    assert!(code == 1 && err.contains("cassette certs init"), "{err}");
    step("--insecure: works, with a warning");
    let log = dir.path().join("coordinator.log");
    let mut cmd = std::process::Command::new(&coordinator);
    cmd.args(["serve", "--listen", &addr, "--state-dir", &state, "--insecure"]);
    let mut p = cassette_integration::process::ManagedProcess::spawn("coordinator", cmd, &log).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, err) = cassette_cli(&[
            "--coordinator".into(),
            addr.clone(),
            "--insecure".into(),
            "--output".into(),
            "json".into(),
            "debug".into(),
            "put".into(),
            "k".into(),
            "v".into(),
        ])
        .unwrap();
        if code == 0 {
            assert!(err.contains("WARNING: --insecure"), "{err}");
            assert!(out.contains("\"index\""), "{out}");
            break;
        }
        assert!(Instant::now() < deadline && p.is_running(), "{err}\n{}", p.log_tail(3000));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(std::fs::read_to_string(&log).unwrap().contains("WARNING: --insecure"));
    p.stop(Duration::from_secs(10));
}

#[test]
fn t60_certs_issue_writes_a_bundle_without_the_ca_key() {
    // - `cassette certs issue` without --out writes `<name>/<name>.pem`, `<name>/<name>.key`
    //   and `<name>/ca.pem` under the current directory: the bundle for one host, without
    //   `ca.key`; nothing is added to the CA's directory;
    // - the key is 0600 and the bundle's directory 0700.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("cassette-t60-").tempdir().unwrap();
    let cli = cassette_integration::tools::workspace_binary("cassette-coordinator", "cassette");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&cli).args(args).current_dir(dir.path()).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "cassette {args:?}: {text}");
        text
    };
    step("certs init, then issue without --out");
    run(&["certs", "init", "--dir", "ca"]);
    let text = run(&["certs", "issue", "--dir", "ca", "--role", "agent", "--name", "node1", "--san", "127.0.0.1"]);
    let names = |d: &str| {
        let mut v: Vec<String> = std::fs::read_dir(dir.path().join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("ca"), ["ca.key", "ca.pem"], "the CA directory changed: {text}");
    assert_eq!(names("node1"), ["ca.pem", "node1.key", "node1.pem"], "{text}");
    let mode = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("node1/node1.key"), 0o600);
    assert_eq!(mode("node1"), 0o700);
    assert!(text.contains("node1/node1.key"), "{text}");
}

/// Runs `cmd` until its log says `needle` (or it exits, or 20 s pass); returns the log, stops it.
fn first_words(name: &str, mut cmd: std::process::Command, log: &std::path::Path, needle: &str) -> String {
    cmd.env("NO_COLOR", "1");
    let mut p = cassette_integration::process::ManagedProcess::spawn(name, cmd, log).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) || !p.is_running() || Instant::now() > deadline {
            p.stop(Duration::from_secs(10));
            return strip_ansi(&std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn t61_insecure_listens_on_loopback_unless_told_otherwise() {
    // - `cassette-agent serve --insecure` without --listen binds 127.0.0.1:7079 (not
    //   0.0.0.0:7079, the TLS default) and says so and how to change it;
    // - `cassette-coordinator serve --insecure` without --listen binds 127.0.0.1:7070 and says so;
    // - an explicit --listen on a non-loopback address is used, with a warning naming it.
    // The default ports are fixed: when another process holds one, that part is skipped visibly.
    let dir = tempfile::Builder::new().prefix("cassette-t61-").tempdir().unwrap();
    let agent = cassette_integration::tools::workspace_binary("cassette-agent", "cassette-agent");
    let coordinator = cassette_integration::tools::workspace_binary("cassette-coordinator", "cassette-coordinator");
    let free = |port: u16| ["127.0.0.1", "0.0.0.0"].iter().all(|h| std::net::TcpListener::bind((*h, port)).is_ok());
    let agent_cmd = |extra: &[&str]| {
        let mut c = std::process::Command::new(&agent);
        c.args(["--state-dir", &dir.path().join("agent").display().to_string(), "serve", "--insecure"]).args(extra);
        c
    };
    // Another process may take a default port between the check and the bind: then it is skipped too.
    let taken = |log: &str| log.contains("Address already in use");
    if free(7079) {
        step("agent, --insecure, no --listen");
        let log = first_words("agent", agent_cmd(&[]), &dir.path().join("agent1.log"), "cassette-agent listening on");
        if taken(&log) {
            eprintln!("SKIPPED the agent's default address: port 7079 was taken meanwhile");
        } else {
            assert!(log.contains("cassette-agent listening on 127.0.0.1:7079"), "{log}");
            assert!(log.contains("loopback") && log.contains("--listen"), "{log}");
        }
    } else {
        eprintln!("SKIPPED the agent's default address: port 7079 is in use on this machine");
    }
    step("agent, --insecure, explicit --listen on every address");
    let port = cassette_integration::tools::free_port().unwrap();
    let all = format!("0.0.0.0:{port}");
    let log = first_words(
        "agent",
        agent_cmd(&["--listen", &all]),
        &dir.path().join("agent2.log"),
        "cassette-agent listening on",
    );
    assert!(log.contains(&format!("cassette-agent listening on {all}")), "{log}");
    assert!(log.contains(&format!("plain text on {all}")), "{log}");
    if free(7070) {
        step("coordinator, --insecure, no --listen");
        let mut c = std::process::Command::new(&coordinator);
        c.args(["serve", "--insecure", "--state-dir", &dir.path().join("state").display().to_string()]);
        let log =
            first_words("coordinator", c, &dir.path().join("coordinator.log"), "cassette-coordinator listening on");
        if taken(&log) {
            eprintln!("SKIPPED the coordinator's default address: port 7070 was taken meanwhile");
        } else {
            assert!(log.contains("cassette-coordinator listening on 127.0.0.1:7070"), "{log}");
            assert!(log.contains("loopback") && log.contains("--listen"), "{log}");
        }
    } else {
        eprintln!("SKIPPED the coordinator's default address: port 7070 is in use on this machine");
    }
}

/// Sends `first` to `path` as a unary call whose body never ends (the message is complete, the
/// stream is not): a server that reads the body before deciding never answers.
async fn call_with_endless_body<M>(
    channel: tonic::transport::Channel,
    path: &'static str,
    first: M,
) -> Result<Result<tonic::Response<pb::RaftAck>, tonic::Status>, tokio::time::error::Elapsed>
where
    M: prost::Message + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let body = futures::StreamExt::chain(futures::stream::once(async move { first }), futures::stream::pending());
    // The answer type does not matter: a refusal is a status.
    let codec = tonic_prost::ProstCodec::<M, pb::RaftAck>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    tokio::time::timeout(Duration::from_secs(10), grpc.client_streaming(tonic::Request::new(body), path, codec)).await
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t62_roles_are_checked_before_a_request_body_is_read() {
    // - the raft transport refuses an agent certificate as soon as the request starts: a body
    //   that never ends is answered with PermissionDenied (it used to be read to its end first);
    // - 128 MiB sent to the raft transport with an agent certificate do not reach the replica's
    //   memory (its peak resident size grows by far less);
    // - the agent API refuses an operator certificate the same way;
    // - the raft transport's decoding limit is a setting: a coordinator's message above it is
    //   refused naming the limit (it used to be unlimited).
    let s = Setup::new("t62");
    s.group.wait_for_leader(Duration::from_secs(20), &[]).await.unwrap();
    let coord = s.group.endpoints()[0].clone();
    let timeouts = cassette_common::tls::ChannelTimeouts { connect: Duration::from_secs(5), request: None };
    let batch = |bytes: usize| pb::RaftBatch {
        from: 9,
        from_address: "127.0.0.1:1".into(),
        to: 1,
        messages: vec![vec![7u8; bytes]],
        group: String::new(),
    };
    step("an endless body to the raft transport with an agent certificate");
    let ch =
        cassette_common::tls::channel(&coord, &s.pki.mode("agent1").unwrap(), Role::Coordinator, timeouts).unwrap();
    let r = call_with_endless_body(ch.clone(), "/cassette.v1.RaftTransport/Send", batch(1 << 20))
        .await
        .expect("the raft transport read the body before checking the caller's role: no answer within 10 s");
    let e = r.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("accepts only coordinator certificates") && e.message().contains("agent"), "{e}");

    step("128 MiB to the raft transport with an agent certificate");
    let pid = s.group.replicas[&1].process.as_ref().unwrap().pid();
    let before = peak_rss(pid);
    let e = pb::raft_transport_client::RaftTransportClient::new(ch)
        .max_encoding_message_size(usize::MAX)
        .send(batch(128 << 20))
        .await
        .unwrap_err();
    assert!(
        e.code() == tonic::Code::PermissionDenied
            || e.code() == tonic::Code::Cancelled
            || e.code() == tonic::Code::Unknown,
        "{e}"
    );
    let grown = peak_rss(pid).saturating_sub(before);
    eprintln!("replica peak RSS {} MiB -> grew by {} MiB", before >> 20, grown >> 20);
    assert!(grown < 32 << 20, "the replica's peak memory grew by {} MiB", grown >> 20);

    step("an endless body to the agent API with an operator certificate");
    let agent = s.agents[0].address.clone();
    let ch = cassette_common::tls::channel(&agent, &s.pki.operator().unwrap(), Role::Agent, timeouts).unwrap();
    let start = pb::StartJobRequest { job_id: "x".into(), phase: "synthetic.sleep".into(), ..Default::default() };
    let r = call_with_endless_body(ch, "/cassette.v1.Agent/StartJob", start)
        .await
        .expect("the agent API read the body before checking the caller's role: no answer within 10 s");
    let e = r.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");

    step("a replica with a 2 MiB raft message limit refuses 3 MiB from a coordinator");
    let dir = s.dir.as_ref().unwrap().path().join("limited");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("replica.json");
    std::fs::write(&cfg, r#"{"limits": {"raft_message_bytes": 2097152}}"#).unwrap();
    let limited = CoordinatorGroup::start(&s.pki, &dir, 1, &["--config", &cfg.display().to_string()]).unwrap();
    let at = limited.endpoints()[0].clone();
    s.pki.issue(Role::Coordinator, "coordinator-client", &["127.0.0.1"]).unwrap();
    let ch =
        cassette_common::tls::channel(&at, &s.pki.mode("coordinator-client").unwrap(), Role::Coordinator, timeouts)
            .unwrap();
    let e = pb::raft_transport_client::RaftTransportClient::new(ch)
        .max_encoding_message_size(usize::MAX)
        .send(batch(3 << 20))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e}");
    assert!(e.message().contains("2097152"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t63_admin_calls_need_an_admin_certificate() {
    // - `cassette certs issue --role admin` makes an admin certificate, which the CLI accepts;
    // - an operator certificate lists and reads, but every admin call (replica membership and
    //   leadership, cluster remove, backup delete and purge, schedule changes) is refused with
    //   PermissionDenied naming the call and the admin role, before anything is planned;
    // - an admin certificate passes the role check of each (what it gets is about the request).
    let s = Setup::new("t63");
    s.group.wait_for_leader(Duration::from_secs(20), &[]).await.unwrap();
    step("certs issue --role admin");
    let root = s.dir.as_ref().unwrap().path().join("root");
    let (code, out, err) = cassette_cli(&[
        "certs".into(),
        "issue".into(),
        "--dir".into(),
        s.pki.dir.display().to_string(),
        "--out".into(),
        root.display().to_string(),
        "--role".into(),
        "admin".into(),
        "--name".into(),
        "root".into(),
    ])
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let as_cert = |cert: &str, args: &[&str]| {
        let mut a: Vec<String> =
            vec!["--coordinator".into(), s.group.endpoints().join(","), "--wait".into(), "2s".into()];
        if cert == "root" {
            let p = cassette_common::tls::TlsPaths::in_dir(&root, "root");
            for (flag, path) in [("--ca", p.ca), ("--cert", p.cert), ("--key", p.key)] {
                a.extend([flag.to_owned(), path.display().to_string()]);
            }
        } else {
            a.extend(s.pki.args(cert));
        }
        a.extend(args.iter().map(|s| s.to_string()));
        cassette_cli(&a).unwrap()
    };
    step("an operator reads");
    let (code, _, err) = as_cert("operator", &["cluster", "list"]);
    assert_eq!(code, 0, "{err}");
    let admin_calls: &[&[&str]] = &[
        &["replica", "remove", "--id", "7"],
        &["replica", "transfer-leader", "--to", "7"],
        &["cluster", "remove", "nosuch"],
        &["backup", "delete", "20260101-000000-aaaa", "--cluster", "nosuch"],
        &["backup", "purge", "--cluster", "nosuch", "--keep-last", "3"],
        &["schedule", "create", "nightly", "--cluster", "nosuch", "--cron", "0 2 * * *", "--keep-last", "3"],
        &["schedule", "delete", "nightly"],
    ];
    for call in admin_calls {
        step(&format!("operator: {}", call.join(" ")));
        let (code, _, err) = as_cert("operator", call);
        assert_eq!(code, 1, "{call:?} was allowed for an operator");
        assert!(err.contains("needs an admin certificate") && err.contains("\"operator\""), "{call:?}: {err}");
        assert!(err.contains("cassette certs issue --role admin"), "{call:?}: {err}");
        step(&format!("admin: {}", call.join(" ")));
        let (_, _, err) = as_cert("root", call);
        assert!(!err.contains("admin certificate") && !err.contains("PermissionDenied"), "{call:?}: {err}");
    }
    assert_log(|| s.coordinator_log(), "refused a request: wrong certificate role", "coordinator").await;
    step("an admin reads too");
    let (code, _, err) = as_cert("root", &["cluster", "list"]);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t64_raft_batches_must_match_the_senders_certificate() {
    // A coordinator certificate alone does not make its holder any replica of the group:
    // - a batch whose `from_address` names a host its certificate does not name is refused;
    // - a batch claiming to come from the receiving replica itself is refused;
    // - a batch carrying a raft message whose own `from` or `to` differs from the batch's is refused;
    // - a batch without a group id from a replica that is not a member is refused;
    // - a well-formed batch from a certificate that names its address is accepted.
    let dir = tempfile::Builder::new().prefix("cassette-t64-").tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki")).unwrap();
    let group = CoordinatorGroup::start(&pki, dir.path(), 1, &[]).unwrap();
    group.wait_for_leader(Duration::from_secs(20), &[]).await.unwrap();
    let coord = group.endpoints()[0].clone();
    let v = group
        .client()
        .unwrap()
        .call(|mut c| async move { c.state_get(pb::StateGetRequest { key: "meta/group".into() }).await })
        .await
        .unwrap();
    let group_id = serde_json::from_str::<Value>(&v.values["meta/group"]).unwrap()["id"].as_str().unwrap().to_owned();
    pki.issue(Role::Coordinator, "elsewhere", &["127.0.0.9"]).unwrap();
    pki.issue(Role::Coordinator, "local", &["127.0.0.1"]).unwrap();
    let send = |cert: &str, b: pb::RaftBatch| {
        let ch = cassette_common::tls::channel(&coord, &pki.mode(cert).unwrap(), Role::Coordinator, Default::default())
            .unwrap();
        async move { pb::raft_transport_client::RaftTransportClient::new(ch).send(b).await }
    };
    let batch = |from: u64, from_address: &str, group: &str, messages: Vec<Vec<u8>>| pb::RaftBatch {
        from,
        from_address: from_address.into(),
        to: 1,
        messages,
        group: group.into(),
    };
    // eraftpb.Message { to: 1 (field 2), from: 3 (field 3) }, hand-encoded.
    let from3 = vec![0x10, 0x01, 0x18, 0x03];
    let from2 = vec![0x10, 0x01, 0x18, 0x02];
    let refused = |r: Result<tonic::Response<pb::RaftAck>, tonic::Status>, what: &str, needle: &str| {
        let e = r.expect_err(&format!("accepted {what}"));
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{what}: {e}");
        assert!(e.message().contains(needle), "{what}: {e}");
    };
    step("an address its certificate does not name");
    refused(
        send("elsewhere", batch(2, "127.0.0.1:7999", &group_id, vec![])).await,
        "a batch from 127.0.0.1 with a certificate for 127.0.0.9",
        "does not name 127.0.0.1",
    );
    step("claiming to be the receiver");
    refused(send("local", batch(1, &coord, &group_id, vec![])).await, "a batch from replica 1 to replica 1", "itself");
    step("a message inside the batch from someone else");
    refused(
        send("local", batch(2, "127.0.0.1:7999", &group_id, vec![from3.clone()])).await,
        "a message from 3 in a batch from 2",
        "from replica 3",
    );
    step("no group id, not a member");
    refused(
        send("local", batch(2, "127.0.0.1:7999", "", vec![from2.clone()])).await,
        "an empty group id from a non-member",
        "group id",
    );
    step("well-formed");
    send("local", batch(2, "127.0.0.1:7999", &group_id, vec![from2])).await.unwrap();
    assert_log(
        || strip_ansi(&std::fs::read_to_string(&group.replicas[&1].log).unwrap_or_default()),
        "refused raft messages",
        "coordinator",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t65_revoked_certificates_are_refused_everywhere_and_expiry_is_warned() {
    // - `cassette certs revoke` needs an admin certificate;
    // - a revoked operator certificate (by its file, i.e. its serial) is refused at its next
    //   handshake on the coordinator, and both ends say it was revoked;
    // - a coordinator certificate revoked by name is refused by every agent (the coordinator
    //   pushes the list), on a connection it already had open too, and still after the agent
    //   restarts (the agent keeps the list);
    // - `cluster status` warns about an agent certificate that expires within 30 days, naming
    //   it and the days left, and the agent logs the same.
    let mut s = Setup::new("t65");
    s.group.wait_for_leader(Duration::from_secs(20), &[]).await.unwrap();
    let seed = format!("127.0.0.1:{}", s.port);
    let (code, v) = s.cli_json(&["cluster", "add", "prod", "--agent", &seed]);
    assert_eq!(code, 0, "{v}");
    let as_cert = |cert: &str, args: &[&str]| {
        let mut a: Vec<String> =
            vec!["--coordinator".into(), s.group.endpoints().join(","), "--wait".into(), "2s".into()];
        a.extend(s.pki.args(cert));
        a.extend(args.iter().map(|s| s.to_string()));
        cassette_cli(&a).unwrap()
    };
    s.pki.issue(Role::Operator, "mallory", &[]).unwrap();
    let mallory = s.pki.dir.join("mallory.pem").display().to_string();
    let (code, _, err) = as_cert("mallory", &["cluster", "list"]);
    assert_eq!(code, 0, "{err}");

    step("an operator may not revoke");
    let (code, _, err) = as_cert("operator", &["certs", "revoke", "--file", &mallory]);
    assert_eq!(code, 1);
    assert!(err.contains("needs an admin certificate"), "{err}");

    step("revoke mallory's certificate by its file");
    let (code, out, err) = as_cert("admin", &["certs", "revoke", "--file", &mallory, "--reason", "laptop stolen"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("3 of 3 agents"), "{out}");
    let (code, _, err) = as_cert("mallory", &["cluster", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("revoked"), "{err}");
    assert_log(|| s.coordinator_log(), "the client presented a revoked certificate", "coordinator").await;
    assert_log(|| s.coordinator_log(), "\"mallory\"", "coordinator").await;
    let (code, _, err) = as_cert("operator", &["cluster", "list"]);
    assert_eq!(code, 0, "other certificates still work: {err}");

    step("revoke a coordinator certificate by name: every agent refuses it");
    s.pki.issue(Role::Coordinator, "rogue", &["127.0.0.1"]).unwrap();
    let rogue = GrpcAgents::new(s.pki.mode("rogue").unwrap(), cassette_coordinator::agents::default_timeouts());
    let agent = s.agents[0].address.clone();
    // Before the revocation it is an ordinary coordinator certificate (retried: the machine may be busy).
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = rogue.describe(&agent).await {
        assert!(Instant::now() < deadline, "the agent refused a valid coordinator certificate: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, out, err) = as_cert("admin", &["certs", "revoke", "--name", "rogue"]);
    assert_eq!(code, 0, "{out}{err}");
    for a in &s.agents {
        let e = rogue.describe(&a.address).await.unwrap_err();
        assert_eq!(e.kind, AgentErrorKind::Denied, "{} accepted a revoked certificate: {e}", a.address);
        assert!(e.to_string().contains("revoked"), "{e}");
    }
    assert_log(|| s.agents[0].log_text(), "revoked", "agent").await;
    step("after an agent restart the list still holds");
    s.agents[0].kill9();
    s.agents[0].restart().unwrap();
    let fresh = GrpcAgents::new(s.pki.mode("rogue").unwrap(), cassette_coordinator::agents::default_timeouts());
    let e = fresh.describe(&agent).await.unwrap_err();
    assert!(e.to_string().contains("revoked"), "{e}");
    let (code, v) = s.cli_json(&["cluster", "status", "prod"]);
    assert_eq!(code, 0, "the coordinator itself still reaches every agent: {v}");

    step("an agent certificate that expires in 10 days");
    let req =
        cassette_coordinator::certs::IssueRequest::valid_for_days(Role::Agent, "agent3", vec!["127.0.0.3".into()], 10);
    cassette_coordinator::certs::issue(&s.pki.dir, &s.pki.dir, &req, true).unwrap();
    assert_log(|| s.agents[2].log_text(), "reloaded TLS certificate", "agent").await;
    assert_log(|| s.agents[2].log_text(), "expires in 9 days", "agent").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out, _) = s.cli(&["cluster", "status", "prod"]);
        if out.contains("certificate \"agent3\"") {
            assert!(out.contains("expires in 9 days") && out.contains("127.0.0.3"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "no expiry warning in:\n{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t66_a_retried_operation_start_returns_the_same_operation() {
    // - `backup create --request-id R` twice starts one operation: the second answer is the
    //   operation the first one started (as a retry after a lost answer would get);
    // - the same request id for another kind of operation is refused, naming the first;
    // - without --request-id every command is a new request.
    let s = Setup::new("t66");
    s.group.wait_for_leader(Duration::from_secs(20), &[]).await.unwrap();
    let seed = format!("127.0.0.1:{}", s.port);
    let (code, v) = s.cli_json(&["cluster", "add", "prod", "--agent", &seed]);
    assert_eq!(code, 0, "{v}");
    step("the same request twice");
    let start = |extra: &[&str]| {
        let mut a = vec!["backup", "create", "--cluster", "prod", "--detach"];
        a.extend(extra);
        let (code, v) = s.cli_json(&a);
        assert_eq!(code, 0, "{v}");
        v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_owned()
    };
    let first = start(&["--request-id", "nightly-2026-12-04"]);
    let again = start(&["--request-id", "nightly-2026-12-04"]);
    assert_eq!(first, again, "a retried start made a second operation");
    let (_, v) = s.cli_json(&["operations", "list", "--cluster", "prod"]);
    let n = v.as_array().or_else(|| v["operations"].as_array()).map(|a| a.len()).unwrap_or(0);
    assert_eq!(n, 1, "{v}");
    step("the same request id for something else");
    let (code, _, err) =
        s.cli(&["--request-id", "nightly-2026-12-04", "backup", "verify", "latest", "--cluster", "prod"]);
    assert_eq!(code, 1);
    assert!(err.contains("nightly-2026-12-04") && err.contains(&first), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t67_concurrent_streams_per_connection_are_bounded() {
    // - an agent started with --max-concurrent-streams 1 serves one request at a time per
    //   connection: while a job is watched (an open stream), a second call on the same
    //   connection waits, and is answered once the stream ends.
    let s = Setup::new("t67");
    let port = cassette_integration::tools::free_port().unwrap();
    let dir = s.dir.as_ref().unwrap().path().join("bounded");
    std::fs::create_dir_all(&dir).unwrap();
    let _bounded =
        AgentProcess::start(&s.cluster, "127.0.0.1", port, &s.pki, "agent1", &dir, &["--max-concurrent-streams", "1"])
            .unwrap();
    let agent = format!("127.0.0.1:{port}");
    s.pki.issue(Role::Coordinator, "coordinator-client", &["127.0.0.1"]).unwrap();
    let agents =
        GrpcAgents::new(s.pki.mode("coordinator-client").unwrap(), cassette_coordinator::agents::default_timeouts());
    let job = JobRequest {
        job_id: "long".into(),
        phase: "synthetic.sleep".into(),
        params: serde_json::json!({ "duration_ms": 3000, "steps": 3 }),
        operation_id: "op-t67".into(),
        not_before_ms: 0,
    };
    agents.start_job(&agent, &job).await.unwrap();
    step("watch the job (one open stream), then describe on the same connection");
    let mut stream = agents.watch_job(&agent, "long").await.unwrap();
    let first = futures::StreamExt::next(&mut stream).await.unwrap().unwrap();
    assert_eq!(first.state, pb::JobState::Running as i32);
    let t = Instant::now();
    let watching = tokio::spawn(async move {
        while let Some(st) = futures::StreamExt::next(&mut stream).await {
            st.unwrap();
        }
        Instant::now()
    });
    agents.describe(&agent).await.unwrap();
    let answered = Instant::now();
    let ended = watching.await.unwrap();
    eprintln!("describe answered after {:?}; the watch ended after {:?}", answered - t, ended - t);
    assert!(answered + Duration::from_millis(200) >= ended, "a second stream ran beside the first");
}
