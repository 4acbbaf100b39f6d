//! The benchmarks still run: `cassette-bench node` on a tiny node (Cassette and rclone) and
//! `cassette-bench coordinator` with 5 agents, failover included. Figures are not checked here
//! (benchmarks are commands that print tables, see docs/benchmarks.md); only that every step
//! ran and the tables came out.

use std::process::Command;

use cassette_integration::tools::{Found, Tool, require};

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cassette-bench"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run cassette-bench: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cassette-bench {} failed:\n{stdout}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn t90_node_benchmark_runs_on_a_tiny_node() {
    for tool in [Tool::S3sFs, Tool::Rclone] {
        if let Found::Skip = require(tool, "t90") {
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("node");
    let work = work.to_string_lossy();
    let out = bench(&[
        "node",
        "--sstables",
        "40",
        "--size",
        "16MiB",
        "--tools",
        "cassette,rclone",
        "--work-dir",
        &work,
        "--json",
    ]);
    for row in ["| cassette-agent | full |", "| cassette-agent | incremental |", "| cassette-agent | restore |"] {
        assert!(out.contains(row), "no row {row} in:\n{out}");
    }
    assert!(out.contains("| rclone copy --transfers 8 | restore |"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&out[out.find("\n{").unwrap()..]).unwrap();
    let inc = json["steps"].as_array().unwrap().iter().find(|s| s["step"] == "incremental").unwrap().clone();
    // The incremental sends the new SSTables and the compaction's output, nothing else.
    assert!(inc["reported_uploaded"].as_u64().unwrap() <= json["node"]["changed_bytes"].as_u64().unwrap());
    assert!(!std::path::Path::new(&*work).exists(), "the benchmark left its work directory behind");
}

#[test]
fn t91_coordinator_benchmark_runs_with_five_agents() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("coord");
    let out = bench(&["coordinator", "--agents", "5", "--phase-ms", "100", "--work-dir", &work.to_string_lossy()]);
    assert!(out.contains("\n| 5 |"), "no row for 5 agents:\n{out}");
    assert!(out.contains("operation succeeded"), "the failover operation did not succeed:\n{out}");
}

#[test]
fn t92_real_node_benchmark_runs_on_a_small_real_node() {
    // A real Cassandra 5.0 node with 32 MiB written through CQL: the table and the time from
    // restore to queryable rows come out (figures are not checked: see docs/benchmarks.md).
    for tool in [Tool::S3sFs, Tool::Rclone] {
        if let Found::Skip = require(tool, "t92") {
            return;
        }
    }
    if cassette_integration::real::Install::require(cassette_integration::real::Series::V50, "t92").is_none() {
        return;
    }
    let out = bench(&["node", "--cassandra", "real", "--size", "32MiB", "--json"]);
    for row in
        ["| cassette-agent | backup |", "| cassette-agent | restore |", "| rclone copy --transfers 8 | restore |"]
    {
        assert!(out.contains(row), "no row {row} in:\n{out}");
    }
    let json: serde_json::Value = serde_json::from_str(&out[out.find("\n{").unwrap()..]).unwrap();
    assert!(json["queryable_seconds"].as_f64().unwrap() > 0.0, "{json}");
}
