//! Simulation of backups, purges, failures and restarts over one shared repository, in process
//! against real stores (a local directory and s3s-fs) and an emulated three-node cluster.
//!
//! Each run is seeded (`CASSETTE_SIM_SEED`, else random; the seed is printed) and takes
//! `CASSETTE_SIM_STEPS` steps (default 36 on a local directory, 16 on s3s-fs) chosen at random among: a standalone backup of one
//! node (new SSTables or a compaction first, sometimes tagged `nightly`), a backup that fails
//! mid-upload (blob writes refused), commit-log segments archived, a purge with a random policy
//! (keep-last 1–3, sometimes keep-within, sometimes only the `nightly` tag), a dry run followed by
//! the same purge, a purge interrupted between batches of deletions (cancelled from its progress
//! messages), a backup and a purge started together, and a "restart" (every context rebuilt).
//! Grace period zero: the locks alone keep running backups safe.
//!
//! After every step:
//! - every node manifest in the repository passes a deep verify (every blob read and hashed);
//! - nothing but a purge removed a manifest; a completed purge kept the newest N backups of each
//!   node that its policy covers (N the smallest keep-last of the purges it finished);
//! - every commit-log entry closed at or after its node's oldest backup's snapshot is still there,
//!   with its blob;
//! - a dry run predicted exactly what the purge after it deleted and freed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cassette_agent::config::AgentConfig;
use cassette_agent::ops::backup::{self, BackupRequest};
use cassette_agent::ops::catalog::{self, BackupSelector};
use cassette_agent::ops::purge::{self, PurgeRequest, RetentionPolicy, RetentionRule};
use cassette_agent::ops::remove::RemoveError;
use cassette_agent::ops::{CancellationToken, OpContext, commitlog, resolve_node, verify};
use cassette_agent::storage::ProgressSink;
use cassette_common::ids::{BackupId, HostId};
use cassette_common::layout;
use cassette_integration::emulator::{ClusterSpec, Version};
use cassette_integration::node::{NodeEnv, step};
use cassette_integration::servers::Backend;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EMU: &str = env!("CARGO_BIN_EXE_cassandra-emulator");
const CLUSTER: &str = "Test Cluster";

/// Refuses blob writes after `allow` more of them while armed: a backup failing mid-upload.
#[derive(Debug)]
struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    armed: AtomicBool,
    allow: AtomicUsize,
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

impl FaultyStore {
    fn fail_blob_write(&self, location: &Path) -> bool {
        location.as_ref().starts_with(layout::BLOBS_PREFIX)
            && self.armed.load(Ordering::SeqCst)
            && self.allow.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err()
    }

    fn refused(location: &Path) -> object_store::Error {
        object_store::Error::PermissionDenied {
            path: location.to_string(),
            source: "injected failure: the simulation refuses this blob write".into(),
        }
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.fail_blob_write(location) {
            return Err(Self::refused(location));
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        if self.fail_blob_write(location) {
            return Err(Self::refused(location));
        }
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// Cancels its operation after `after` deletion progress messages: a purge interrupted between
/// batches (as by Ctrl-C or a killed agent between two batches).
#[derive(Debug)]
struct InterruptAfter {
    cancel: CancellationToken,
    after: AtomicUsize,
}

impl ProgressSink for InterruptAfter {
    fn message(&self, text: &str) {
        if text.starts_with("deleted ") && self.after.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.cancel.cancel();
        }
    }
}

struct Sim {
    env: NodeEnv,
    store: Arc<FaultyStore>,
    cfgs: Vec<AgentConfig>,
    hosts: Vec<HostId>,
    addresses: Vec<String>,
    rng: StdRng,
    /// Manifest keys present after the last step.
    present: BTreeSet<String>,
    /// Commit-log entries archived: key → (node, closed at).
    entries: BTreeMap<String, usize>,
    /// Policies (keep-last, tag) of purges interrupted with a plan left and not finished yet.
    pending: Vec<(usize, Option<String>)>,
    segment_id: i64,
    seg_dir: tempfile::TempDir,
    purges: usize,
    interrupted: usize,
    failed_backups: usize,
}

impl Sim {
    fn context(&self, node: usize) -> OpContext {
        self.env.context(&self.cfgs[node], Arc::clone(&self.store) as Arc<dyn ObjectStore>)
    }

    async fn manifests(&self) -> BTreeMap<String, catalog::ManifestRef> {
        let index = catalog::scan(&self.context(0).repo).await.unwrap();
        index.node_manifests.into_iter().map(|r| (r.key.clone(), r)).collect()
    }

    async fn backup(&mut self, node: usize, fail: bool) {
        let ctx = self.context(node);
        let addr = self.addresses[node].clone();
        if self.rng.random_bool(0.5) {
            let size = self.rng.random_range(2_000..20_000).to_string();
            self.env.admin(&["write-sstables", "shop.users", "--count", "1", "--size", &size, "--node", &addr]);
        } else if self.rng.random_bool(0.3) {
            self.env.admin(&["compact", "shop.users", "--node", &addr]);
        }
        let tag = self.rng.random_bool(0.5).then(|| "nightly".to_owned());
        let req = BackupRequest { tag: tag.clone(), ..BackupRequest::default() };
        if fail {
            self.store.allow.store(self.rng.random_range(0..2), Ordering::SeqCst);
            self.store.armed.store(true, Ordering::SeqCst);
            // New content, so the backup must write blobs.
            self.env.admin(&["write-sstables", "shop.users", "--count", "2", "--size", "3000", "--node", &addr]);
        }
        let r = backup::run(&ctx, &req).await;
        self.store.armed.store(false, Ordering::SeqCst);
        match (fail, r) {
            (false, Ok(rep)) => eprintln!("    node {node}: backup {} ({tag:?})", rep.backup_id),
            (true, Err(e)) => {
                self.failed_backups += 1;
                eprintln!("    node {node}: backup failed as injected: {e}");
            }
            (true, Ok(rep)) => eprintln!("    node {node}: backup {} succeeded (nothing new to write)", rep.backup_id),
            (false, Err(e)) => panic!("backup of node {node} failed: {e}"),
        }
    }

    async fn archive(&mut self, node: usize) {
        let ctx = self.context(node);
        let identity = resolve_node(&ctx, true).await.unwrap();
        let mut files = Vec::new();
        for _ in 0..self.rng.random_range(1..3) {
            self.segment_id += 1;
            let dir = self.seg_dir.path().join(node.to_string());
            files.push(cassette_integration::emulator::files::write_segment(&dir, 7, self.segment_id, 3000).unwrap());
        }
        let rep = commitlog::archive(&ctx, &identity, &files, true).await.unwrap();
        assert!(rep.failures.is_empty(), "{:?}", rep.failures);
        let index = catalog::scan(&ctx.repo).await.unwrap();
        for e in index.commitlog_entries.iter().filter(|e| e.host_id == self.hosts[node]) {
            self.entries.entry(e.key.clone()).or_insert(node);
        }
        eprintln!("    node {node}: archived {} segment(s)", rep.segments.len());
    }

    fn policy(&mut self) -> (PurgeRequest, usize, Option<String>) {
        let keep_last = self.rng.random_range(1..4);
        let keep_within = self.rng.random_bool(0.3).then(|| Duration::from_secs(self.rng.random_range(1..6)));
        let tag = self.rng.random_bool(0.3).then(|| "nightly".to_owned());
        let req = PurgeRequest {
            rules: vec![RetentionRule {
                cluster: CLUSTER.into(),
                tag: tag.clone(),
                policy: RetentionPolicy { keep_last: Some(keep_last), keep_within },
            }],
            ..PurgeRequest::default()
        };
        eprintln!("    policy: keep-last {keep_last}, keep-within {keep_within:?}, tag {tag:?}");
        (req, keep_last, tag)
    }

    /// The newest `n` backups of each node among those `tag` covers.
    async fn newest(&self, n: usize, tag: &Option<String>) -> BTreeSet<String> {
        let ctx = self.context(0);
        let refs: Vec<catalog::ManifestRef> = self.manifests().await.into_values().collect();
        let loaded = catalog::load_manifests(&ctx.repo, &refs, &ctx.settings.manifests, None).await.unwrap();
        let mut per_node: BTreeMap<HostId, Vec<(BackupId, String)>> = BTreeMap::new();
        for (r, m) in loaded {
            if tag.is_none() || &m.tag == tag {
                per_node.entry(r.host_id.clone()).or_default().push((r.backup_id.clone(), r.key.clone()));
            }
        }
        per_node
            .into_values()
            .flat_map(|mut v| {
                v.sort();
                v.into_iter().rev().take(n).map(|(_, k)| k)
            })
            .collect()
    }

    async fn purge(&mut self, mode: PurgeMode) {
        let (mut req, keep_last, tag) = self.policy();
        self.purges += 1;
        // What must survive: the newest N the policy covers (and of a pending plan's policy).
        let mut must_keep = self.newest(keep_last, &tag).await;
        for (n, t) in &self.pending {
            must_keep = must_keep.intersection(&self.newest(*n, t).await).cloned().collect();
        }
        let who = self.rng.random_range(0..3);
        let mut ctx = self.context(who);
        match mode {
            PurgeMode::Plain => {
                let r = purge::purge(&ctx, &req).await.unwrap();
                self.after_purge(&r, &must_keep).await;
            }
            PurgeMode::DryRunFirst => {
                // No time window: the second call must see exactly what the first saw.
                req.rules[0].policy.keep_within = None;
                req.dry_run = true;
                let dry = purge::purge(&ctx, &req).await.unwrap();
                req.dry_run = false;
                let r = purge::purge(&ctx, &req).await.unwrap();
                assert!(dry.removal.dry_run && !r.removal.dry_run);
                assert_eq!(
                    (dry.removal.manifests_deleted, dry.removal.commitlog_entries_deleted, dry.removal.blobs_deleted),
                    (r.removal.manifests_deleted, r.removal.commitlog_entries_deleted, r.removal.blobs_deleted),
                    "the dry run predicts the purge"
                );
                assert_eq!(dry.removal.bytes_freed, r.removal.bytes_freed, "the dry run predicts the bytes freed");
                self.after_purge(&r, &must_keep).await;
            }
            PurgeMode::Interrupted => {
                ctx.settings.removal.delete_batch = 1;
                let cancel = CancellationToken::new();
                ctx.cancel = cancel.clone();
                ctx.progress =
                    Arc::new(InterruptAfter { cancel, after: AtomicUsize::new(self.rng.random_range(1..4)) });
                match purge::purge(&ctx, &req).await {
                    Ok(r) => self.after_purge(&r, &must_keep).await,
                    Err(RemoveError::Interrupted { .. }) => {
                        self.interrupted += 1;
                        let plan = ctx.repo.get_json::<serde_json::Value>(layout::REMOVAL_PLAN_KEY, 1 << 20).await;
                        eprintln!("    purge interrupted; plan left: {}", plan.is_ok());
                        if plan.is_ok() {
                            self.pending.push((keep_last, tag));
                        } else {
                            // Stopped while sweeping blobs: every plan before it is finished.
                            self.pending.clear();
                        }
                        for k in &must_keep {
                            assert!(
                                self.manifests().await.contains_key(k),
                                "an interrupted purge removed {k}, which its policy keeps"
                            );
                        }
                    }
                    Err(e) => panic!("purge failed: {e}"),
                }
            }
        }
    }

    async fn after_purge(&mut self, r: &purge::PurgeReport, must_keep: &BTreeSet<String>) {
        eprintln!(
            "    purge: {} manifests, {} commit-log entries, {} blobs ({} bytes) deleted; resumed: {}",
            r.removal.manifests_deleted,
            r.removal.commitlog_entries_deleted,
            r.removal.blobs_deleted,
            r.removal.bytes_freed,
            r.removal.resumed.is_some()
        );
        if !std::mem::take(&mut self.pending).is_empty() {
            assert!(r.removal.resumed.is_some(), "the purge after an interrupted one finishes its plan");
        }
        let now = self.manifests().await;
        for k in must_keep {
            assert!(now.contains_key(k), "the purge removed {k}, which its policy keeps");
        }
        let ctx = self.context(0);
        assert!(
            ctx.repo.get_json::<serde_json::Value>(layout::REMOVAL_PLAN_KEY, 1 << 20).await.is_err(),
            "a finished purge leaves no plan"
        );
    }

    async fn concurrent(&mut self, node: usize) {
        let (req, _, _) = self.policy();
        let bctx = self.context(node);
        let pctx = self.context((node + 1) % 3);
        self.env.admin(&[
            "write-sstables",
            "shop.users",
            "--count",
            "1",
            "--size",
            "5000",
            "--node",
            &self.addresses[node],
        ]);
        let breq = BackupRequest::default();
        let (b, p) = tokio::join!(backup::run(&bctx, &breq), purge::purge(&pctx, &req));
        let b = b.unwrap_or_else(|e| panic!("a backup racing a purge failed: {e}"));
        match p {
            Ok(r) => {
                // It finished any interrupted purge's plan first.
                self.pending.clear();
                eprintln!(
                    "    backup {} and a purge ran together (purge deleted {} blobs)",
                    b.backup_id, r.removal.blobs_deleted
                );
            }
            Err(RemoveError::Lock(e)) => eprintln!("    backup {} ran; the purge refused: {e}", b.backup_id),
            // The backup's lock appeared after the purge took its own: the purge stops before its
            // next batch (docs/layout.md, rule 4); a plan it left is finished by the next purge.
            Err(RemoveError::Interrupted { reason, .. }) => {
                eprintln!("    backup {} ran; the purge stopped: {reason}", b.backup_id);
                if pctx.repo.get_json::<serde_json::Value>(layout::REMOVAL_PLAN_KEY, 1 << 20).await.is_ok() {
                    self.pending.push((1, None));
                } else {
                    self.pending.clear();
                }
            }
            Err(e) => panic!("purge racing a backup: unexpected error {e}"),
        }
    }

    /// The invariants (see the module documentation).
    async fn check(&mut self, purge_step: bool) {
        let now = self.manifests().await;
        if !purge_step {
            for k in &self.present {
                assert!(now.contains_key(k), "manifest {k} disappeared without a purge");
            }
        }
        // Every backup in the repository is restorable: deep verify.
        let ctx = self.context(0);
        let mut oldest: BTreeMap<HostId, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
        for r in now.values() {
            let scope = verify::Scope::Node(CLUSTER.into(), r.host_id.clone());
            let rep = verify::verify(&ctx, &scope, &BackupSelector::Id(r.backup_id.clone()), true).await.unwrap();
            assert!(rep.ok, "backup {} of node {} lost blobs: {:?}", r.backup_id, r.host_id, rep.backups);
            let m = catalog::load_manifest(&ctx.repo, r, &ctx.settings.manifests, None).await.unwrap();
            let e = oldest.entry(r.host_id.clone()).or_insert(m.snapshot_at);
            *e = (*e).min(m.snapshot_at);
        }
        // Commit-log entries a point-in-time restore from the oldest backup needs are there.
        let index = catalog::scan(&ctx.repo).await.unwrap();
        let present_entries: BTreeSet<&str> = index.commitlog_entries.iter().map(|e| e.key.as_str()).collect();
        let refs: Vec<catalog::EntryRef> = index.commitlog_entries.clone();
        let loaded = catalog::load_entries(&ctx.repo, &refs, &ctx.settings.manifests, None).await.unwrap();
        for e in &loaded {
            assert!(
                ctx.repo.blob_size(&e.sha256).await.unwrap().is_some(),
                "commit-log segment {} lost its blob",
                e.segment
            );
        }
        for (key, node) in &self.entries {
            let closed = commitlog_closed_at(key);
            let needed = oldest.get(&self.hosts[*node]).is_none_or(|o| closed >= *o);
            if needed {
                assert!(present_entries.contains(key.as_str()), "commit-log entry {key} is needed but was removed");
            }
        }
        self.present = now.into_keys().collect();
    }
}

fn commitlog_closed_at(key: &str) -> chrono::DateTime<chrono::Utc> {
    let name = key.rsplit('/').next().unwrap();
    let stamp = name.split('_').next().unwrap();
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.3fZ").unwrap().and_utc()
}

#[derive(Debug, Clone, Copy)]
enum PurgeMode {
    Plain,
    DryRunFirst,
    Interrupted,
}

fn simulate(test: &str, backend: Backend, default_steps: usize) {
    cassette_integration::init_test_logging();
    let seed: u64 = std::env::var("CASSETTE_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let steps: usize = std::env::var("CASSETTE_SIM_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_steps);
    eprintln!("{test}: seed {seed} ({steps} steps; rerun with CASSETTE_SIM_SEED={seed})");
    let mut spec = ClusterSpec::single(Version::V41);
    spec.datacenters = vec![("dc1".into(), 3)];
    let Some(env) = NodeEnv::start(test, EMU, backend, &spec).unwrap() else { return };
    env.admin(&["create-keyspace", "shop"]);
    env.admin(&["create-table", "shop.users", "--columns", "id int, email text", "--pk", "id"]);
    env.admin(&["write-sstables", "shop.users", "--count", "2", "--size", "8000"]);
    let cluster = env.cluster.cluster().unwrap();
    let addresses: Vec<String> = cluster.nodes.iter().map(|n| n.address.clone()).collect();
    let cfgs: Vec<AgentConfig> = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut cfg = env.base_config().unwrap();
            cfg.cassandra = env.cluster.cassandra_config(a);
            cfg.cassandra.cassandra_yaml = Some(env.cluster.write_cassandra_yaml(a).unwrap());
            cfg.state_dir = Some(env.dir.path().join(format!("state-{i}")));
            cfg.removal.grace = Duration::ZERO;
            cfg.removal.delete_batch = 3;
            cfg.locks.refresh = Duration::from_millis(300);
            cfg.locks.poll = Duration::from_millis(100);
            cfg
        })
        .collect();
    let store = Arc::new(FaultyStore {
        inner: Arc::clone(env.repo().store()),
        armed: AtomicBool::new(false),
        allow: AtomicUsize::new(0),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let started = Instant::now();
    rt.block_on(async {
        let mut sim = Sim {
            store,
            cfgs,
            hosts: Vec::new(),
            addresses,
            rng: StdRng::seed_from_u64(seed),
            present: BTreeSet::new(),
            entries: BTreeMap::new(),
            pending: Vec::new(),
            segment_id: 1_700_000_000_000,
            seg_dir: tempfile::tempdir().unwrap(),
            purges: 0,
            interrupted: 0,
            failed_backups: 0,
            env,
        };
        for i in 0..3 {
            let ctx = sim.context(i);
            sim.hosts.push(resolve_node(&ctx, true).await.unwrap().host_id);
        }
        for i in 0..3 {
            sim.backup(i, false).await;
        }
        sim.check(false).await;
        for n in 0..steps {
            let node = sim.rng.random_range(0..3);
            let roll = sim.rng.random_range(0..100);
            let purge_step = roll >= 45;
            match roll {
                0..30 => {
                    step(&format!("{n}: backup of node {node}"));
                    sim.backup(node, false).await;
                }
                30..38 => {
                    step(&format!("{n}: backup of node {node} failing mid-upload"));
                    sim.backup(node, true).await;
                }
                38..45 => {
                    step(&format!("{n}: commit-log segments of node {node}"));
                    sim.archive(node).await;
                }
                45..62 => {
                    step(&format!("{n}: purge"));
                    sim.purge(PurgeMode::Plain).await;
                }
                62..72 => {
                    step(&format!("{n}: dry run, then the same purge"));
                    sim.purge(PurgeMode::DryRunFirst).await;
                }
                72..86 => {
                    step(&format!("{n}: purge interrupted between batches"));
                    sim.purge(PurgeMode::Interrupted).await;
                }
                86..94 => {
                    step(&format!("{n}: backup of node {node} and a purge together"));
                    sim.concurrent(node).await;
                }
                _ => {
                    step(&format!("{n}: restart (contexts rebuilt, hash caches and manifest caches dropped)"));
                    for cfg in &sim.cfgs {
                        if let Some(d) = &cfg.state_dir {
                            let _ = std::fs::remove_dir_all(d.join("manifests"));
                        }
                    }
                }
            }
            sim.check(purge_step).await;
        }
        // Finish any interrupted purge, then check once more.
        sim.purge(PurgeMode::Plain).await;
        sim.check(true).await;
        eprintln!(
            "{test}: seed {seed}: {steps} steps in {:.1}s: {} purges ({} interrupted), {} failed backups, {} backups and {} commit-log entries at the end",
            started.elapsed().as_secs_f64(),
            sim.purges,
            sim.interrupted,
            sim.failed_backups,
            sim.present.len(),
            sim.entries.len()
        );
        let _: PathBuf = sim.seg_dir.path().to_path_buf();
    });
}

#[test]
fn t90_purge_simulation_local_dir() {
    simulate("t90", Backend::Local, 36);
}

#[test]
fn t91_purge_simulation_s3s_fs() {
    // Fewer steps: each request to s3s-fs costs more, and a loaded CI machine multiplies it.
    simulate("t91", Backend::S3sFs, 16);
}

/// The `cassette-agent purge` command: dry run, policy, departed nodes judged against a ring.
#[test]
fn t92_purge_command() {
    cassette_integration::init_test_logging();
    let mut spec = ClusterSpec::single(Version::V41);
    spec.datacenters = vec![("dc1".into(), 1)];
    let Some(env) = NodeEnv::start("t92", EMU, Backend::Local, &spec).unwrap() else { return };
    env.admin(&["create-keyspace", "shop"]);
    env.admin(&["create-table", "shop.users", "--columns", "id int, email text", "--pk", "id"]);
    let mut cfg = env.base_config().unwrap();
    cfg.removal.grace = Duration::ZERO;
    env.write_config(&cfg).unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        env.admin(&["write-sstables", "shop.users", "--count", "1", "--size", &(10_000 + i * 1000).to_string()]);
        if i == 2 {
            // The newest backup shares nothing with the older ones: removing them frees bytes.
            env.admin(&["compact", "shop.users"]);
        }
        ids.push(env.agent_ok(&["backup"])["backup_id"].as_str().unwrap().to_owned());
    }
    step("refused without a policy that keeps something");
    let r = env.agent_err(&["purge", "--keep-last", "0"]);
    assert!(r.error().contains("must keep something"), "{}", r.error());

    step("dry run: verdicts, counts and bytes; nothing deleted");
    let dry = env.agent_ok(&["purge", "--keep-last", "1", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["manifests_deleted"], 2);
    assert!(dry["bytes_freed"].as_u64().unwrap() > 0, "{dry}");
    let verdicts = dry["backups"].as_array().unwrap();
    assert_eq!(verdicts.len(), 3);
    assert_eq!(verdicts.iter().filter(|b| b["kept"] == true).count(), 1);
    assert_eq!(env.agent_ok(&["list"])["backups"].as_array().unwrap().len(), 3);

    step("the purge deletes what the dry run said");
    let real = env.agent_ok(&["purge", "--keep-last", "1"]);
    assert_eq!(real["manifests_deleted"], 2);
    assert_eq!(real["bytes_freed"], dry["bytes_freed"]);
    let list = env.agent_ok(&["list"]);
    let left: Vec<&str> =
        list["backups"].as_array().unwrap().iter().map(|b| b["backup_id"].as_str().unwrap()).collect();
    assert_eq!(left, vec![ids[2].as_str()]);
    env.agent_ok(&["verify", "latest", "--deep"]);

    step("a node absent from the ring is departed: listed, purged only with --departed");
    let other = "0b1c2ce9-e5ab-4b1e-a2cf-0f5cd9f8b1c3";
    let listed = env.agent_ok(&["purge", "--keep-last", "5", "--ring", other, "--dry-run"]);
    let departed = listed["departed_nodes"].as_array().unwrap();
    assert_eq!(departed.len(), 1, "{listed}");
    assert_eq!(departed[0]["purged"], false);
    assert_eq!(listed["manifests_deleted"], 0);
    let gone = env.agent_ok(&["purge", "--ring", other, "--departed", "all"]);
    assert_eq!(gone["manifests_deleted"], 1, "{gone}");
    assert!(env.agent_ok(&["list"])["backups"].as_array().unwrap().is_empty());
}
