//! Backup schedules wired end to end, as processes: an emulated cluster with agents, a
//! coordinator whose leader ticks the schedules, real storage, and the `cassette` CLI.
//!
//! What it proves (t80): bad schedules are refused with clear errors; `schedule run-now` makes
//! the leader start a real cluster backup tagged with the schedule's name; the same slot asked
//! twice starts one operation; with keep-last 2 the third run's retention (the purge phase on
//! one agent, recorded as an operation) removes the oldest backup from the catalog and its
//! manifests from storage, and the two kept backups pass `backup verify --deep`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cassette_integration::lab::{Lab, LabOptions};
use cassette_integration::node::step;
use cassette_integration::servers::Backend;
use serde_json::Value;

const EMULATOR: &str = env!("CARGO_BIN_EXE_cassandra-emulator");

fn ok(lab: &Lab, args: &[&str]) -> Value {
    let (code, v, err) = lab.cli_json(args);
    assert_eq!(code, 0, "cassette {args:?} failed: {v}\nstderr: {err}\n{}", lab.logs());
    v
}

fn refused(lab: &Lab, args: &[&str], wanted: &str) {
    let (code, v, err) = lab.cli_json(args);
    assert_ne!(code, 0, "cassette {args:?} should fail: {v}");
    assert!(err.contains(wanted), "cassette {args:?}: wanted {wanted:?} in: {err}");
}

/// Waits until the run of `slot` ends; returns it.
fn wait_run(lab: &Lab, slot: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = ok(lab, &["schedule", "show", "nightly"]);
        let run = s["runs"].as_array().unwrap().iter().find(|r| r["slot_ms"] == slot).cloned();
        if let Some(r) = run
            && (r["state"] == "succeeded" || r["state"] == "failed")
        {
            return r;
        }
        assert!(Instant::now() < deadline, "run {slot} did not end: {s}\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tagged(lab: &Lab) -> Vec<String> {
    let list = ok(lab, &["backup", "list", "--cluster", "prod"]);
    list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["labels"]["tag"] == "nightly")
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t80_schedule_run_now_backup_and_retention() {
    let mut o = LabOptions::new("t80", EMULATOR, Backend::Local);
    o.coordinator_args.extend(["--schedule-interval".into(), "200ms".into()]);
    let Some(lab) = Lab::start(&o).unwrap() else { return };
    lab.register("prod", None).unwrap();
    lab.admin(&["create-keyspace", "shop", "--rf", "2"]).unwrap();
    lab.admin(&["create-table", "shop.users", "--columns", "id int, email text", "--pk", "id"]).unwrap();
    lab.admin(&["write-sstables", "shop.users", "--count", "2", "--size", "20000"]).unwrap();

    step("bad schedules are refused");
    fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        ["schedule", "create", "nightly", "--cluster", "prod"].iter().chain(extra.iter()).copied().collect()
    }
    refused(&lab, &with(&["--cron", "0 2 * *", "--keep-last", "2"]), "invalid cron expression");
    refused(
        &lab,
        &with(&["--cron", "0 2 * * *", "--timezone", "Mars/Olympus", "--keep-last", "2"]),
        "unknown time zone",
    );
    refused(&lab, &with(&["--cron", "0 2 * * *"]), "give a retention policy");
    refused(
        &lab,
        &["schedule", "create", "nightly", "--cluster", "nope", "--cron", "0 2 * * *", "--keep-last", "2"],
        "no cluster named nope",
    );

    step("create, list, pause, resume");
    let s = ok(&lab, &with(&["--cron", "0 2 * * *", "--timezone", "Europe/Paris", "--keep-last", "2"]));
    assert_eq!(s["name"], "nightly");
    assert!(s["next_slot_ms"].as_u64().is_some(), "{s}");
    let l = ok(&lab, &["schedule", "list"]);
    assert_eq!(l["schedules"].as_array().unwrap().len(), 1, "{l}");
    assert_eq!(ok(&lab, &["schedule", "pause", "nightly"])["paused"], true);
    assert_eq!(ok(&lab, &["schedule", "resume", "nightly"])["paused"], false);

    step("run-now: a real cluster backup tagged with the schedule's name");
    let r = ok(&lab, &["schedule", "run-now", "nightly", "--slot", "1000"]);
    assert_eq!(r["operation_id"], "sched-nightly-1000", "{r}");
    let run = wait_run(&lab, 1000);
    assert_eq!(run["state"], "succeeded", "{run}");
    let first = tagged(&lab);
    assert_eq!(first.len(), 1, "{first:?}");
    let op = ok(&lab, &["operations", "show", "sched-nightly-1000"]);
    assert_eq!(op["state"], "succeeded", "{op}");

    step("the same slot again starts nothing");
    refused(&lab, &["schedule", "run-now", "nightly", "--slot", "1000"], "already claimed");
    let ops = ok(&lab, &["operations", "list", "--cluster", "prod"]);
    let backups = ops["operations"]
        .as_array()
        .unwrap_or_else(|| panic!("{ops}"))
        .iter()
        .filter(|o| o["kind"] == "backup")
        .count();
    assert_eq!(backups, 1, "{ops}");

    step("two more runs: keep-last 2 removes the oldest");
    ok(&lab, &["schedule", "run-now", "nightly", "--slot", "2000"]);
    assert_eq!(wait_run(&lab, 2000)["state"], "succeeded");
    assert_eq!(tagged(&lab).len(), 2);
    ok(&lab, &["schedule", "run-now", "nightly", "--slot", "3000"]);
    let third = wait_run(&lab, 3000);
    assert_eq!(third["state"], "succeeded", "{third}");
    let retention = third["retention"].as_str().unwrap();
    assert!(retention.contains("removed 1 backup") && retention.contains(&first[0]), "{retention}");
    let kept = tagged(&lab);
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(!kept.contains(&first[0]), "{kept:?}");
    let repo = lab.storage.repository(&lab.prefix, &Default::default());
    let keys: Vec<String> = repo.list("clusters/").await.unwrap().into_iter().map(|m| m.location.to_string()).collect();
    assert!(!keys.iter().any(|k| k.contains(&first[0])), "manifests of {} left: {keys:?}", first[0]);
    for id in &kept {
        assert!(keys.iter().any(|k| k.contains(id.as_str()) && k.ends_with("cluster.json")), "{id}: {keys:?}");
        let v = ok(&lab, &["backup", "verify", id, "--cluster", "prod", "--deep"]);
        assert_eq!(v["result"]["ok"], true, "{v}");
    }

    step("delete");
    ok(&lab, &["schedule", "delete", "nightly"]);
    refused(&lab, &["schedule", "show", "nightly"], "no schedule nightly");
}
