//! The emulator held to real Cassandra: one script of every nodetool and cqlsh command the
//! agent's adapter runs (and the error paths it relies on), played against a real node and
//! against the emulator of the same series, each result normalized the same way and compared.
//!
//! Real results are recorded by `real_fidelity` (`CASSETTE_RECORD_FIDELITY=1` rewrites
//! `integration/fidelity/<series>.txt`, otherwise the real node must still match the recording);
//! `emulator_fidelity` plays the script on the emulator and fails on any difference from the
//! recordings, without Java.
//!
//! What normalization keeps: the commands' exit codes, every line's words, separators and order,
//! the names of files a command leaves on disk. What it masks: values that differ between any two
//! runs (numbers, UUIDs, host ids, tokens, sizes, the node's directories), the run of spaces that
//! pads a column (its width follows the masked values), cqlsh's "built against" warning (the
//! adapter skips it) and the rows of tables and settings the script does not create.

use std::path::{Path, PathBuf};

/// Which program a probe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// `nodetool -h <jmx host> -p <jmx port> …`.
    Nodetool,
    /// `cqlsh <host> <port> -e …`.
    Cqlsh,
}

/// What the node under test does for the script.
pub trait Target {
    /// Runs the program; (exit code, stdout, stderr).
    fn run(&mut self, program: Program, args: &[String]) -> (i32, String, String);
    /// Directories to show as placeholders, most specific first (`(path, "<dataA>")`).
    fn paths(&self) -> Vec<(PathBuf, String)>;
    /// The first data directory.
    fn data_dir(&self) -> PathBuf;
    /// A scratch directory for the import step.
    fn scratch(&self) -> PathBuf;
    /// Stops the node (for the stopped-node probes).
    fn stop(&mut self);
}

/// One step: a command, which lines of its output to compare, and what to show of the disk.
#[derive(Debug, Clone)]
struct Probe {
    name: &'static str,
    program: Program,
    args: Vec<String>,
    /// Keep only result rows containing one of these (and every line above a table's rule).
    keep: Option<&'static [&'static str]>,
    /// Show the files of this directory (relative to the table directory) after the command.
    disk: Option<&'static str>,
}

fn probe(name: &'static str, program: Program, args: &[&str]) -> Probe {
    Probe { name, program, args: args.iter().map(|s| (*s).to_owned()).collect(), keep: None, disk: None }
}

/// `<dataA>`, `<dataB>`, …: letters, since digits are masked.
fn data_placeholder(i: usize) -> String {
    format!("<data{}>", char::from(b'A' + (i % 26) as u8))
}

/// The result of one probe, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// Probe name.
    pub name: String,
    /// The command, as run.
    pub command: String,
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error (only compared when the command failed: successful nodetool runs print
    /// JVM warnings that nothing reads).
    pub stderr: String,
    /// Files on disk after the command, if the probe looks.
    pub disk: String,
}

/// Plays the script against `t`. The keyspace `fid` with table `t` is created by the script
/// itself through cqlsh; the node must not have it yet.
pub fn play(t: &mut dyn Target) -> Vec<Recording> {
    use Program::*;
    let setup = [
        "CREATE KEYSPACE fid WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 1}",
        "CREATE TABLE fid.t (id int PRIMARY KEY, v text)",
        "INSERT INTO fid.t (id, v) VALUES (1, 'one')",
        "INSERT INTO fid.t (id, v) VALUES (2, 'two')",
    ];
    let mut out = Vec::new();
    for s in setup {
        let (code, o, e) = t.run(Cqlsh, &[s.to_owned()]);
        assert_eq!(code, 0, "fidelity setup {s}: {o}{e}");
    }
    let snap = |tag: &'static str| Probe { disk: Some(tag), ..probe("", Nodetool, &[]) };
    let mut probes = vec![
        probe("version", Nodetool, &["version"]),
        probe("info with tokens", Nodetool, &["info", "-T"]),
        probe("describecluster", Nodetool, &["describecluster"]),
        probe("status", Nodetool, &["status"]),
        probe("flush a table", Nodetool, &["flush", "fid", "t"]),
        Probe {
            name: "snapshot of a table",
            args: args(&["snapshot", "--tag", "fid1", "--kt-list", "fid.t"]),
            ..snap("snapshots/fid1")
        },
        Probe {
            name: "snapshot of a keyspace",
            args: args(&["snapshot", "--tag", "fid2", "fid"]),
            ..snap("snapshots/fid2")
        },
        Probe { name: "snapshot with a bad tag", ..probe("", Nodetool, &["snapshot", "--tag", "a/b", "fid"]) },
        probe("listsnapshots", Nodetool, &["listsnapshots"]),
        Probe {
            name: "clearsnapshot of a tag",
            args: args(&["clearsnapshot", "-t", "fid1", "fid"]),
            ..snap("snapshots")
        },
        probe("clearsnapshot without a tag", Nodetool, &["clearsnapshot"]),
        Probe { name: "clearsnapshot --all", args: args(&["clearsnapshot", "--all"]), ..snap("snapshots") },
        Probe {
            keep: Some(&["data_file_directories", "commitlog_directory", "local_system_data_file_directory"]),
            ..probe("settings", Cqlsh, &["PAGING OFF; SELECT name, value FROM system_views.settings;"])
        },
        Probe {
            keep: Some(&["fid |"]),
            ..probe("tables", Cqlsh, &["PAGING OFF; SELECT keyspace_name, table_name, id FROM system_schema.tables;"])
        },
        Probe {
            keep: Some(&["fid |"]),
            ..probe(
                "columns",
                Cqlsh,
                &[
                    "PAGING OFF; SELECT keyspace_name, table_name, column_name, kind, position, type FROM system_schema.columns;",
                ],
            )
        },
        probe("a statement with a space after its ;", Cqlsh, &["PAGING OFF; TRUNCATE fid.t; "]),
        probe("truncate", Cqlsh, &["PAGING OFF; TRUNCATE \"fid\".\"t\";"]),
        probe("an unknown table", Cqlsh, &["PAGING OFF; TRUNCATE fid.nope;"]),
        probe(
            "create a table, its type and its index",
            Cqlsh,
            &[
                "PAGING OFF; CREATE TYPE IF NOT EXISTS fid.addr (zip int);\nCREATE TABLE IF NOT EXISTS fid.u (id int PRIMARY KEY, a frozen<addr>, e text) WITH ID = 6e4e2f30-7cbb-11ee-9858-c9aa1eb53e69;\nCREATE INDEX IF NOT EXISTS u_e ON fid.u (e);",
            ],
        ),
        probe("drop a table", Cqlsh, &["PAGING OFF; DROP TABLE fid.u;"]),
    ];
    let mut stopped = vec![
        probe("info of a stopped node", Nodetool, &["info"]),
        probe("cqlsh to a stopped node", Cqlsh, &["PAGING OFF; SELECT name FROM system_views.settings;"]),
    ];
    for p in probes.drain(..) {
        out.push(run(t, &p));
    }
    // Import: the table's own snapshot copied aside, the table truncated, the copy imported.
    let (code, o, e) = t.run(Program::Nodetool, &args(&["snapshot", "--tag", "fid3", "fid"]));
    assert_eq!(code, 0, "fidelity snapshot for the import: {o}{e}");
    let table = table_dir(&t.data_dir());
    let staged = t.scratch().join("fid").join("t");
    std::fs::create_dir_all(&staged).unwrap_or_else(|e| panic!("create {}: {e}", staged.display()));
    for f in files(&table.join("snapshots/fid3")) {
        if f.ends_with("manifest.json") || f.ends_with("schema.cql") {
            continue;
        }
        let from = table.join("snapshots/fid3").join(&f);
        std::fs::copy(&from, staged.join(&f)).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    out.push(run(t, &probe("truncate before the import", Cqlsh, &["PAGING OFF; TRUNCATE fid.t;"])));
    let mut imp = probe("import", Nodetool, &["import", "fid", "t"]);
    imp.args.push(staged.display().to_string());
    let mut rec = run(t, &imp);
    rec.disk = format!("source directory after the import: [{}]", files(&staged).join(", "));
    out.push(rec);
    out.push(run(t, &probe("refresh", Nodetool, &["refresh", "fid", "t"])));
    t.stop();
    for p in stopped.drain(..) {
        out.push(run(t, &p));
    }
    out
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// `<data>/fid/t-<id>`.
fn table_dir(data: &Path) -> PathBuf {
    std::fs::read_dir(data.join("fid"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("t-")))
        .unwrap_or_else(|| data.join("fid/t-missing"))
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn run(t: &mut dyn Target, p: &Probe) -> Recording {
    let (code, stdout, stderr) = t.run(p.program, &p.args);
    let paths = t.paths();
    let prog = match p.program {
        Program::Nodetool => "nodetool",
        Program::Cqlsh => "cqlsh -e",
    };
    let disk = p
        .disk
        .map(|d| {
            let names: Vec<String> = files(&table_dir(&t.data_dir()).join(d)).iter().map(|n| mask(n, &[])).collect();
            let mut names = names;
            names.sort();
            names.dedup();
            format!("{d}: [{}]", names.join(", "))
        })
        .unwrap_or_default();
    Recording {
        name: p.name.to_owned(),
        command: mask(&format!("{prog} {}", p.args.join(" ")), &paths),
        code,
        stdout: normalize(&stdout, &paths, p.keep),
        stderr: if code == 0 { String::new() } else { normalize(&stderr, &paths, None) },
        disk,
    }
}

/// Masks what differs between runs (see the module documentation) and keeps the chosen rows.
pub fn normalize(text: &str, paths: &[(PathBuf, String)], keep: Option<&[&str]>) -> String {
    let mut lines: Vec<&str> = Vec::new();
    let mut in_trace = false;
    for l in text.lines() {
        // nodetool's Java stack trace after an error line: never parsed.
        if l.starts_with("-- StackTrace --") {
            in_trace = true;
            continue;
        }
        if in_trace && (l.starts_with('\t') || l.starts_with("java.") || l.starts_with("Caused by")) {
            continue;
        }
        in_trace = false;
        // cqlsh's version warning and JVM noise on stderr, never parsed.
        if l.starts_with("WARNING: ") || l.starts_with("Picked up ") {
            continue;
        }
        lines.push(l);
    }
    // `describecluster` lists keyspaces in hash order.
    let mut i = 0;
    while i < lines.len() {
        let is_ks = |l: &str| l.starts_with('\t') && l.contains(" -> Replication class:");
        if is_ks(lines[i]) {
            let j = i + lines[i..].iter().take_while(|l| is_ks(l)).count();
            lines[i..j].sort_unstable();
            i = j;
        } else {
            i += 1;
        }
    }
    let rule = lines.iter().position(|l| {
        let t = l.trim_end();
        !t.is_empty() && t.bytes().all(|b| b == b'-' || b == b'+') && t.contains('-')
    });
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(k) = keep {
            let in_rows = rule.is_none_or(|r| i > r);
            let is_count = l.trim().starts_with('(') && l.trim().ends_with("rows)");
            let wanted = k.iter().any(|w| l.contains(w));
            if in_rows && !wanted && !l.trim().is_empty() && !is_count {
                continue;
            }
        }
        out.push(mask(l, paths));
    }
    // Blank lines at the end (after a dropped stack trace, status's two) are not compared.
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// One line with values masked: directories, UUIDs (dashed or not), numbers, runs of spaces,
/// dashes and `=`.
fn mask(line: &str, paths: &[(PathBuf, String)]) -> String {
    let mut s = line.to_owned();
    for (p, name) in paths {
        s = s.replace(&p.display().to_string(), name);
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        // A UUID, with dashes (36) or without (32 hex), not part of a longer word.
        let hex_run = chars[i..].iter().take_while(|c| c.is_ascii_hexdigit() || **c == '-').count();
        let word_before = i > 0 && chars[i - 1].is_ascii_alphanumeric();
        if !word_before
            && (hex_run == 36 || hex_run == 32)
            && chars[i..i + hex_run].iter().filter(|c| **c == '-').count() == if hex_run == 36 { 4 } else { 0 }
            && chars[i..i + hex_run].iter().any(|c| c.is_ascii_alphabetic())
        {
            out.push_str("<uuid>");
            i += hex_run;
            continue;
        }
        let c = chars[i];
        if c.is_ascii_digit()
            || (c == '-'
                && chars.get(i + 1).is_some_and(char::is_ascii_digit)
                && !chars.get(i.wrapping_sub(1)).is_some_and(char::is_ascii_alphanumeric))
        {
            let mut j = i + 1;
            while j < chars.len()
                && (chars[j].is_ascii_digit()
                    || (chars[j] == '.' && chars.get(j + 1).is_some_and(char::is_ascii_digit))
                    || chars[j] == ',' && chars.get(j + 1).is_some_and(char::is_ascii_digit))
            {
                j += 1;
            }
            out.push('#');
            i = j;
            continue;
        }
        if c == ' ' || c == '-' || c == '=' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] == c {
                j += 1;
            }
            out.push(c);
            if c != ' ' && j - i > 1 {
                out.push(c);
            }
            i = j;
            continue;
        }
        out.push(c);
        i += 1;
    }
    // A size's unit follows its value (`640 bytes`, `1.2 KiB`).
    for unit in [" bytes", " KiB", " MiB", " GiB", " TiB", " KB", " MB", " GB"] {
        out = out.replace(&format!("#{unit}"), "# <size>");
    }
    out.trim_end().to_owned()
}

/// A real node of a [`crate::real::RealCluster`].
#[derive(Debug)]
pub struct RealTarget<'a> {
    /// The cluster (node 0 is played).
    pub cluster: &'a mut crate::real::RealCluster,
}

impl Target for RealTarget<'_> {
    fn run(&mut self, program: Program, args: &[String]) -> (i32, String, String) {
        let r = match program {
            Program::Nodetool => self.cluster.nodetool(0, &args.iter().map(String::as_str).collect::<Vec<_>>()),
            Program::Cqlsh => self.cluster.cqlsh(0, &args.join(" ")),
        };
        match r {
            Ok(o) => (o.code, o.stdout, o.stderr),
            Err(e) => (-1, String::new(), format!("{e:#}")),
        }
    }
    fn paths(&self) -> Vec<(PathBuf, String)> {
        let n = &self.cluster.nodes[0];
        let mut v: Vec<(PathBuf, String)> = vec![(n.dir.join("import"), "<scratch>".into())];
        for (i, d) in self.cluster.data_dirs(0).into_iter().enumerate() {
            v.push((d, data_placeholder(i)));
        }
        v.push((n.commitlog_dir(), "<commitlog>".into()));
        v
    }
    fn data_dir(&self) -> PathBuf {
        self.cluster.data_dirs(0)[0].clone()
    }
    fn scratch(&self) -> PathBuf {
        self.cluster.nodes[0].dir.join("import")
    }
    fn stop(&mut self) {
        if let Err(e) = self.cluster.stop_node(0) {
            panic!("stop the real node: {e:#}");
        }
    }
}

/// The emulated node 127.0.0.1 of an [`crate::harness::EmulatedCluster`], run in-process.
#[derive(Debug)]
pub struct EmulatorTarget<'a> {
    /// The cluster.
    pub cluster: &'a crate::harness::EmulatedCluster,
    /// Scratch space for the import.
    pub scratch: PathBuf,
}

impl EmulatorTarget<'_> {
    fn node(&self) -> crate::emulator::Node {
        match self.cluster.cluster() {
            Ok(c) => c.nodes.into_iter().next().unwrap_or_else(|| panic!("the emulated cluster has no node")),
            Err(e) => panic!("emulator state: {e:#}"),
        }
    }
}

impl Target for EmulatorTarget<'_> {
    fn run(&mut self, program: Program, args: &[String]) -> (i32, String, String) {
        let o = match program {
            Program::Nodetool => {
                let mut a = vec!["-h", "127.0.0.1", "-p", "7199"];
                a.extend(args.iter().map(String::as_str));
                self.cluster.nodetool(&a)
            }
            Program::Cqlsh => {
                let stmt = args.join(" ");
                self.cluster.cqlsh(&["127.0.0.1", "9042", "-e", &stmt])
            }
        };
        (o.code, o.stdout, o.stderr)
    }
    fn paths(&self) -> Vec<(PathBuf, String)> {
        let n = self.node();
        let mut v: Vec<(PathBuf, String)> = vec![(self.scratch.clone(), "<scratch>".into())];
        for (i, d) in n.data_dirs.iter().enumerate() {
            v.push((d.clone(), data_placeholder(i)));
        }
        v.push((n.commitlog_dir.clone(), "<commitlog>".into()));
        v
    }
    fn data_dir(&self) -> PathBuf {
        self.node().data_dirs[0].clone()
    }
    fn scratch(&self) -> PathBuf {
        self.scratch.clone()
    }
    fn stop(&mut self) {
        if let Err(e) = self.cluster.admin(&["stop", "127.0.0.1"]) {
            panic!("stop the emulated node: {e:#}");
        }
    }
}

/// The emulator's cluster for `version`, shaped like the harness's real node: one node in `dc1`,
/// one token, cluster name `fidelity`.
pub fn emulator_spec(version: crate::emulator::Version) -> crate::emulator::ClusterSpec {
    let mut spec = crate::emulator::ClusterSpec::single(version);
    spec.datacenters = vec![("dc1".into(), 1)];
    spec.num_tokens = Some(1);
    spec.cluster_name = "fidelity".into();
    spec
}

/// The recordings as the committed text file.
pub fn render(series: &str, version_note: &str, recs: &[Recording]) -> String {
    let mut s = format!(
        "# Real Cassandra {series} ({version_note}): the adapter's commands and what they printed, normalized\n# (integration/src/fidelity.rs). Regenerate: CASSETTE_RECORD_FIDELITY=1 cargo test -p cassette-integration --test real_fidelity\n"
    );
    for r in recs {
        s.push_str(&format!("\n### {}\n$ {}\nexit {}\n--- stdout\n{}", r.name, r.command, r.code, r.stdout));
        if !r.stderr.is_empty() {
            s.push_str(&format!("--- stderr\n{}", r.stderr));
        }
        if !r.disk.is_empty() {
            s.push_str(&format!("--- disk\n{}\n", r.disk));
        }
    }
    s
}

/// Where the recording of `series` lives.
pub fn recording_path(series: &str) -> PathBuf {
    crate::tools::workspace_root().join("integration/fidelity").join(format!("{series}.txt"))
}

/// Compares two renderings section by section; the differences, or `None`.
pub fn compare(expected: &str, got: &str) -> Option<String> {
    let split = |s: &str| -> Vec<(String, String)> {
        s.split("\n### ")
            .skip(1)
            .map(|sec| {
                let (name, body) = sec.split_once('\n').unwrap_or((sec, ""));
                (name.to_owned(), body.to_owned())
            })
            .collect()
    };
    let (a, b) = (split(expected), split(got));
    let mut out = String::new();
    for (name, body) in &a {
        match b.iter().find(|(n, _)| n == name) {
            None => out.push_str(&format!("### {name}: missing\n")),
            Some((_, other)) if other != body => {
                out.push_str(&format!("### {name}\n--- expected\n{body}--- got\n{other}\n"));
            }
            Some(_) => {}
        }
    }
    for (name, _) in &b {
        if !a.iter().any(|(n, _)| n == name) {
            out.push_str(&format!("### {name}: not in the recording\n"));
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_values_not_structure() {
        let p = vec![(PathBuf::from("/tmp/x/data0"), "<dataA>".to_owned())];
        assert_eq!(mask("Load                   : 114.36 KiB", &p), "Load : # <size>");
        assert_eq!(
            mask(
                "UN  127.0.0.1  68.71 KiB  100.0%  d9507871-9186-4a62-af5b-2ab588880617  -9223372036854775808  rack1",
                &p
            ),
            "UN # # <size> #% <uuid> # rack#"
        );
        assert_eq!(mask(" [/tmp/x/data0]", &p), " [<dataA>]");
        assert_eq!(mask("t-046b0ce0f01511f18da421d1fa6545e1", &p), "t-<uuid>");
        assert_eq!(mask("nb-12-big-Data.db", &p), "nb-#-big-Data.db");
        assert_eq!(mask("-------+------", &p), "--+--");
    }
}
