//! A deterministic data set written through a real CQL driver (`scylla`, which speaks to Apache
//! Cassandra) and read back row by row, so restore tests compare **rows**, not only files.
//!
//! Tables of [`DataSet`] (in one keyspace):
//! - `users`: a simple table with a secondary index on `email` (SAI on 5.0), rows with a TTL,
//!   rows written then deleted, a deleted cell;
//! - `events`: a composite partition key and a clustering column in descending order, a range
//!   tombstone and a deleted partition;
//! - `profiles`: set, map, list and a frozen user-defined type;
//! - `hits`: a counter table.
//!
//! [`DataSet::read`] reads every table at consistency ALL into sorted lines, one per row; two
//! reads are equal exactly when the tables hold the same rows with the same values.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::{Consistency, Statement};
use scylla::value::{Counter, CqlTimestamp, Row};

use super::Series;

/// A session to the given nodes, waiting up to 60 s for the first connection.
pub async fn connect(nodes: &[SocketAddr]) -> anyhow::Result<Session> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = SessionBuilder::new()
            .known_nodes_addr(nodes.iter().copied())
            .connection_timeout(Duration::from_secs(10))
            .build()
            .await;
        match r {
            Ok(s) => return Ok(s),
            Err(e) if tokio::time::Instant::now() > deadline => {
                bail!("cannot open a CQL session to {nodes:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Runs one statement (DDL waits for schema agreement).
pub async fn exec(session: &Session, cql: &str) -> anyhow::Result<()> {
    let mut st = Statement::new(cql);
    st.set_request_timeout(Some(Duration::from_secs(60)));
    session.query_unpaged(st, &[]).await.with_context(|| format!("cql: {cql}"))?;
    let ddl = ["CREATE", "DROP", "ALTER"].iter().any(|k| cql.trim_start().to_ascii_uppercase().starts_with(k));
    if ddl {
        session.await_schema_agreement().await.with_context(|| format!("schema agreement after: {cql}"))?;
    }
    Ok(())
}

/// The data set: keyspace, replication, and how many rows.
#[derive(Debug, Clone)]
pub struct DataSet {
    /// Keyspace name.
    pub keyspace: String,
    /// Replication as CQL (`{'class': 'NetworkTopologyStrategy', 'dc1': 1}`).
    pub replication: String,
    /// Rows of `users` that stay (more are written with a TTL and deleted).
    pub users: u32,
    /// Partitions of `events` (each with [`DataSet::events_per_partition`] rows).
    pub event_partitions: u32,
    /// Rows per `events` partition.
    pub events_per_partition: u32,
    /// Rows of `profiles`.
    pub profiles: u32,
    /// Rows of `hits` (each incremented a few times).
    pub counters: u32,
    /// Bytes of the `users.avatar` blob per row (to make SSTables bigger for benchmarks).
    pub blob_bytes: usize,
}

/// The tables of the data set.
pub const TABLES: [&str; 4] = ["users", "events", "profiles", "hits"];

/// Rows read back: table -> sorted lines.
pub type Rows = BTreeMap<String, Vec<String>>;

impl DataSet {
    /// A small data set in `keyspace` with `SimpleStrategy`-like placement on `dc1` with `rf`.
    pub fn new(keyspace: &str, dcs: &[(&str, u32)]) -> Self {
        let repl = dcs.iter().map(|(dc, rf)| format!(", '{dc}': {rf}")).collect::<String>();
        Self {
            keyspace: keyspace.to_owned(),
            replication: format!("{{'class': 'NetworkTopologyStrategy'{repl}}}"),
            users: 400,
            event_partitions: 8,
            events_per_partition: 60,
            profiles: 60,
            counters: 40,
            blob_bytes: 64,
        }
    }

    /// The CQL creating the keyspace, the type, the tables and the index. Kept as text: tests
    /// recreate the schema from it, and compare it with the backup's `schema.cql`.
    pub fn schema(&self, series: Series) -> Vec<String> {
        let ks = &self.keyspace;
        let index = if series >= Series::V50 {
            format!("CREATE INDEX IF NOT EXISTS users_by_email ON {ks}.users (email) USING 'sai'")
        } else {
            format!("CREATE INDEX IF NOT EXISTS users_by_email ON {ks}.users (email)")
        };
        vec![
            format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}", self.replication),
            format!("CREATE TYPE IF NOT EXISTS {ks}.address (street text, zip int, city text)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.users (id int PRIMARY KEY, name text, email text, age int, \
                 score double, active boolean, joined timestamp, avatar blob)"
            ),
            index,
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.events (device text, day int, seq int, ts timestamp, kind text, \
                 payload blob, PRIMARY KEY ((device, day), seq)) WITH CLUSTERING ORDER BY (seq DESC)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.profiles (id int PRIMARY KEY, tags set<text>, attrs map<text, int>, \
                 history list<int>, home frozen<address>)"
            ),
            format!("CREATE TABLE IF NOT EXISTS {ks}.hits (page text PRIMARY KEY, views counter)"),
        ]
    }

    /// Creates the schema.
    pub async fn create_schema(&self, session: &Session, series: Series) -> anyhow::Result<()> {
        for stmt in self.schema(series) {
            exec(session, &stmt).await?;
        }
        Ok(())
    }

    /// Writes generation `gen` of the data (0 first; a later generation adds rows with other
    /// keys and updates some, so an incremental backup has something new). Writes at CL ALL.
    pub async fn write(&self, session: &Session, generation: u32) -> anyhow::Result<()> {
        let ks = &self.keyspace;
        let base = generation * 100_000;
        let prep = |cql: String| async move {
            let mut p = session.prepare(cql.as_str()).await.with_context(|| format!("prepare {cql}"))?;
            p.set_consistency(Consistency::All);
            anyhow::Ok(p)
        };

        let users = prep(format!(
            "INSERT INTO {ks}.users (id, name, email, age, score, active, joined, avatar) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .await?;
        let users_ttl = prep(format!(
            "INSERT INTO {ks}.users (id, name, email, age, score, active, joined, avatar) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL 864000"
        ))
        .await?;
        let user_row = |id: i32| {
            let n = mix(id as u64);
            (
                id,
                format!("user {id} {:x}", n & 0xffff),
                format!("u{id}@example.org"),
                (n % 90) as i32 + 10,
                (n % 10_000) as f64 / 7.0,
                !n.is_multiple_of(3),
                CqlTimestamp(1_700_000_000_000 + (n % 1_000_000_000) as i64),
                bytes(n, self.blob_bytes),
            )
        };
        let n = self.users as i32;
        let b = base as i32;
        run_all((0..n).map(|i| session.execute_unpaged(&users, user_row(b + i)))).await?;
        // Rows with a TTL long enough to survive the test: their TTL must come back too.
        run_all((0..n / 10).map(|i| session.execute_unpaged(&users_ttl, user_row(b + 50_000 + i)))).await?;
        // Rows written, then deleted: the tombstones must come back and keep them deleted.
        run_all((0..n / 10).map(|i| session.execute_unpaged(&users, user_row(b + 60_000 + i)))).await?;
        let del = prep(format!("DELETE FROM {ks}.users WHERE id = ?")).await?;
        run_all((0..n / 10).map(|i| session.execute_unpaged(&del, (b + 60_000 + i,)))).await?;
        // A deleted cell.
        let del_cell = prep(format!("DELETE email FROM {ks}.users WHERE id = ?")).await?;
        session.execute_unpaged(&del_cell, (b + 1,)).await?;
        if generation > 0 {
            // Updates of rows of generation 0.
            let upd = prep(format!("UPDATE {ks}.users SET name = ? WHERE id = ?")).await?;
            run_all((0..n / 20).map(|i| session.execute_unpaged(&upd, (format!("renamed in gen {generation}"), i))))
                .await?;
        }

        let events =
            prep(format!("INSERT INTO {ks}.events (device, day, seq, ts, kind, payload) VALUES (?, ?, ?, ?, ?, ?)"))
                .await?;
        let parts = self.event_partitions;
        let per = self.events_per_partition as i32;
        let rows: Vec<(String, i32, i32)> = (0..parts)
            .flat_map(|p| (0..per).map(move |s| (format!("device-{}", base + p), (p % 3) as i32, s)))
            .collect();
        run_all(rows.iter().map(|(d, day, s)| {
            let n = mix((*s as u64) << 20 ^ d.len() as u64 ^ *day as u64);
            session.execute_unpaged(
                &events,
                (
                    d.as_str(),
                    *day,
                    *s,
                    CqlTimestamp(1_750_000_000_000 + i64::from(*s) * 1000),
                    ["open", "close", "ping"][(n % 3) as usize],
                    bytes(n, 24),
                ),
            )
        }))
        .await?;
        // A range tombstone and a deleted partition.
        exec(session, &format!("DELETE FROM {ks}.events WHERE device = 'device-{base}' AND day = 0 AND seq < 10"))
            .await?;
        if parts > 1 {
            exec(session, &format!("DELETE FROM {ks}.events WHERE device = 'device-{}' AND day = 1", base + 1)).await?;
        }

        // Collections and a user-defined type, as CQL literals.
        let lits: Vec<String> = (0..self.profiles)
            .map(|i| {
                let id = base + i;
                let n = mix(u64::from(id));
                format!(
                    "INSERT INTO {ks}.profiles (id, tags, attrs, history, home) VALUES ({id}, {{'t{}', 't{}'}}, \
                     {{'a': {}, 'b': {}}}, [{}, {}, {}], {{street: 'Main St {}', zip: {}, city: 'C{}'}})",
                    n % 7,
                    n % 11,
                    n % 100,
                    n % 1000,
                    n % 5,
                    n % 6,
                    n % 7,
                    n % 500,
                    10_000 + n % 90_000,
                    n % 9
                )
            })
            .collect();
        run_all(lits.iter().map(|s| {
            let mut st = Statement::new(s.as_str());
            st.set_consistency(Consistency::All);
            session.query_unpaged(st, &[])
        }))
        .await?;

        let hit = prep(format!("UPDATE {ks}.hits SET views = views + ? WHERE page = ?")).await?;
        let incs: Vec<(i64, String)> = (0..self.counters)
            .flat_map(|i| (1..=3).map(move |k| (i64::from(k * (i + 1)), format!("/page/{}", base + i))))
            .collect();
        // Counter updates are not idempotent: no retries beyond the driver's defaults.
        run_all(incs.iter().map(|(by, page)| session.execute_unpaged(&hit, (Counter(*by), page.as_str())))).await?;
        Ok(())
    }

    /// Every row of every table, read at CL ALL, as sorted lines (`TTL(name)` is read as
    /// present-or-absent: its value falls by the second).
    pub async fn read(&self, session: &Session) -> anyhow::Result<Rows> {
        let ks = &self.keyspace;
        let mut out = Rows::new();
        for (table, cql) in [
            ("users", format!("SELECT id, name, email, age, score, active, joined, avatar, TTL(name) FROM {ks}.users")),
            ("events", format!("SELECT * FROM {ks}.events")),
            ("profiles", format!("SELECT * FROM {ks}.profiles")),
            ("hits", format!("SELECT * FROM {ks}.hits")),
        ] {
            let lines = read_rows(session, &cql, table == "users").await?;
            out.insert(table.to_owned(), lines);
        }
        Ok(out)
    }

    /// Ids found through the `email` index for a few rows of generation `generation`.
    pub async fn read_by_index(&self, session: &Session, generation: u32) -> anyhow::Result<Vec<String>> {
        let ks = &self.keyspace;
        let mut found = Vec::new();
        for id in [0u32, 2, 7, self.users - 1] {
            let id = generation * 100_000 + id;
            let cql = format!("SELECT id FROM {ks}.users WHERE email = 'u{id}@example.org'");
            found.extend(read_rows(session, &cql, false).await?);
        }
        found.sort();
        Ok(found)
    }
}

/// Reads every row of a query at CL ALL into sorted lines. With `ttl_last`, the last column (a
/// TTL) becomes `ttl` or `no-ttl`.
pub async fn read_rows(session: &Session, cql: &str, ttl_last: bool) -> anyhow::Result<Vec<String>> {
    let mut st = Statement::new(cql);
    st.set_consistency(Consistency::All);
    st.set_page_size(1000);
    st.set_request_timeout(Some(Duration::from_secs(60)));
    let pager = session.query_iter(st, &[]).await.with_context(|| format!("cql: {cql}"))?;
    let rows: Vec<Row> = pager.rows_stream::<Row>().with_context(|| format!("rows of {cql}"))?.try_collect().await?;
    let mut lines: Vec<String> = rows
        .into_iter()
        .map(|mut r| {
            if ttl_last {
                let ttl = r.columns.pop().flatten();
                let mut s = format!("{:?}", r.columns);
                s.push_str(if ttl.is_some() { " ttl" } else { " no-ttl" });
                s
            } else {
                format!("{:?}", r.columns)
            }
        })
        .collect();
    lines.sort();
    Ok(lines)
}

/// Describes how two reads differ (table, rows only on one side), or `None` when equal.
pub fn diff(expected: &Rows, got: &Rows) -> Option<String> {
    let mut out = String::new();
    for (table, want) in expected {
        let have = got.get(table).map(Vec::as_slice).unwrap_or_default();
        if want.as_slice() == have {
            continue;
        }
        let missing: Vec<&String> = want.iter().filter(|r| have.binary_search(r).is_err()).collect();
        let extra: Vec<&String> = have.iter().filter(|r| want.binary_search(r).is_err()).collect();
        out.push_str(&format!(
            "{table}: expected {} rows, got {}; {} missing, {} unexpected\n",
            want.len(),
            have.len(),
            missing.len(),
            extra.len()
        ));
        for r in missing.iter().take(3) {
            out.push_str(&format!("  missing    {r}\n"));
        }
        for r in extra.iter().take(3) {
            out.push_str(&format!("  unexpected {r}\n"));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Total rows of a read.
pub fn count(rows: &Rows) -> usize {
    rows.values().map(Vec::len).sum()
}

async fn run_all<F, T, E>(futs: impl Iterator<Item = F>) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut s = futures::stream::iter(futs).buffer_unordered(32);
    while let Some(r) = s.next().await {
        r?;
    }
    Ok(())
}

/// A deterministic 64-bit mix (splitmix64).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    let mut x = seed;
    while v.len() < n {
        x = mix(x);
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}
