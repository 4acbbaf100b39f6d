//! `cassette schedule`: backup schedules kept in the replicated state and run by the leader.

use cassette_proto::v1 as pb;
use clap::Subcommand;
use serde_json::{Value, json};

use super::{OutputFormat, print};
use crate::client::OperatorClient;
use crate::service::ScheduleCreate;

/// `cassette schedule`.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: cluster backups at each cron slot, tagged with the schedule's name,
    /// then its retention applied to the backups carrying that tag.
    ///
    /// Example: cassette schedule create nightly --cluster prod --cron "0 2 * * *" --timezone Europe/Paris --keep-last 14 --keep-within 30d
    Create {
        /// Name (letters, digits, '.', '_', '-'); also the tag of its backups.
        name: String,
        /// The cluster (as registered).
        #[arg(long)]
        cluster: String,
        /// Cron expression: minute hour day-of-month month day-of-week (6 fields: seconds first).
        #[arg(long)]
        cron: String,
        /// IANA time zone the expression is read in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// How long after its slot a run may still start.
        #[arg(long, default_value = "1h")]
        window: String,
        /// Keyspaces and tables (`shop,audit.events`); default: every user keyspace.
        #[arg(long, value_delimiter = ',')]
        entities: Vec<String>,
        /// Only these datacenters.
        #[arg(long = "dc", value_delimiter = ',')]
        datacenters: Vec<String>,
        /// Retention: keep the newest N backups of this schedule.
        #[arg(long)]
        keep_last: Option<u32>,
        /// Retention: keep this schedule's backups started within this long (30d, 12h).
        #[arg(long)]
        keep_within: Option<String>,
        /// Missed slots (no leader in time): `latest` runs the newest once, `none` waits.
        #[arg(long, default_value = "latest")]
        catch_up: String,
        /// Launch attempts per run.
        #[arg(long, default_value_t = 5)]
        max_attempts: u32,
        /// Replace the schedule of that name.
        #[arg(long)]
        replace: bool,
    },
    /// Every schedule with its next slot and last run.
    List,
    /// One schedule: settings, next slot, runs (with what retention did), missed slots.
    Show {
        /// Name.
        name: String,
    },
    /// Stop claiming slots (run-now still works).
    Pause {
        /// Name.
        name: String,
    },
    /// Claim slots again.
    Resume {
        /// Name.
        name: String,
    },
    /// Delete a schedule and its run records (its backups stay).
    Delete {
        /// Name.
        name: String,
    },
    /// Run a schedule now (the leader starts the backup within its schedule interval).
    ///
    /// With --slot, the request names its run: sending it again starts nothing twice.
    RunNow {
        /// Name.
        name: String,
        /// The run's slot (ms since the epoch); default: now.
        #[arg(long)]
        slot: Option<u64>,
    },
}

async fn call(client: &OperatorClient, action: &str, name: &str, request: Value) -> anyhow::Result<Value> {
    let req = pb::ScheduleRequest {
        action: action.into(),
        name: name.into(),
        request_json: if request.is_null() { String::new() } else { request.to_string() },
    };
    let f = |mut c: cassette_proto::v1::operator_client::OperatorClient<tonic::transport::Channel>| {
        let r = req.clone();
        async move { c.schedule(r).await }
    };
    // create (without --replace) and delete refuse a second time: sent again only when they
    // certainly did not run; reads, pause/resume and run-now (a slot claims once) are idempotent.
    let v = if matches!(action, "create" | "delete") { client.call_once(f).await? } else { client.call(f).await? };
    Ok(serde_json::from_str(&v.json)?)
}

fn when(ms: &Value) -> String {
    ms.as_u64()
        .and_then(|m| chrono::DateTime::from_timestamp_millis(m as i64))
        .map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

fn schedule_text(s: &Value) -> String {
    let mut keep = Vec::new();
    if let Some(n) = s["keep_last"].as_u64() {
        keep.push(format!("keep-last {n}"));
    }
    if let Some(ms) = s["keep_within_ms"].as_u64() {
        keep.push(format!("keep-within {}", humantime::format_duration(std::time::Duration::from_millis(ms))));
    }
    let runs = s["runs"].as_array().cloned().unwrap_or_default();
    let last = runs.last().map_or_else(
        || "never run".to_owned(),
        |r| format!("last run {} {} ({})", when(&r["slot_ms"]), r["state"].as_str().unwrap_or(""), r["operation_id"]),
    );
    format!(
        "{} cluster {} cron {:?} {}{} — {}; next {}; {last}",
        s["name"].as_str().unwrap_or(""),
        s["cluster"].as_str().unwrap_or(""),
        s["cron"].as_str().unwrap_or(""),
        s["timezone"].as_str().unwrap_or(""),
        if s["paused"].as_bool() == Some(true) { " (paused)" } else { "" },
        keep.join(", "),
        when(&s["next_slot_ms"]),
    )
}

fn show_text(s: &Value) -> String {
    let mut out = schedule_text(s);
    for r in s["runs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  run {} {}{} {} attempts {}{}{}",
            when(&r["slot_ms"]),
            r["state"].as_str().unwrap_or(""),
            if r["manual"].as_bool() == Some(true) { " (run-now)" } else { "" },
            r["operation_id"].as_str().unwrap_or(""),
            r["attempts"],
            r["error"].as_str().filter(|e| !e.is_empty()).map(|e| format!("; error: {e}")).unwrap_or_default(),
            r["retention"].as_str().filter(|e| !e.is_empty()).map(|e| format!("; retention: {e}")).unwrap_or_default(),
        ));
    }
    for m in s["missed"].as_array().into_iter().flatten() {
        out.push_str(&format!("\n  missed {}: {}", when(&m["slot_ms"]), m["reason"].as_str().unwrap_or("")));
    }
    out
}

/// Runs `cassette schedule …`.
pub async fn run(c: ScheduleCommand, client: &OperatorClient, out: OutputFormat) -> anyhow::Result<i32> {
    match c {
        ScheduleCommand::Create {
            name,
            cluster,
            cron,
            timezone,
            window,
            entities,
            datacenters,
            keep_last,
            keep_within,
            catch_up,
            max_attempts,
            replace,
        } => {
            let req = ScheduleCreate {
                name,
                cluster,
                cron,
                timezone,
                window,
                entities,
                datacenters,
                keep_last,
                keep_within,
                catch_up,
                max_attempts,
                replace,
            };
            // Refused here with the same message the coordinator would give.
            req.record().map_err(anyhow::Error::msg)?;
            let v = call(client, "create", "", serde_json::to_value(&req)?).await?;
            print(out, &v, || format!("created {}", schedule_text(&v)));
        }
        ScheduleCommand::List => {
            let v = call(client, "list", "", Value::Null).await?;
            print(out, &v, || {
                let all = v["schedules"].as_array().cloned().unwrap_or_default();
                if all.is_empty() {
                    return "no schedules (cassette schedule create NAME --cluster C --cron \"0 2 * * *\" --keep-last 14)"
                        .into();
                }
                all.iter().map(schedule_text).collect::<Vec<_>>().join("\n")
            });
        }
        ScheduleCommand::Show { name } => {
            let v = call(client, "show", &name, Value::Null).await?;
            print(out, &v, || show_text(&v));
        }
        ScheduleCommand::Pause { name } => {
            let v = call(client, "pause", &name, Value::Null).await?;
            print(out, &v, || format!("paused {}", schedule_text(&v)));
        }
        ScheduleCommand::Resume { name } => {
            let v = call(client, "resume", &name, Value::Null).await?;
            print(out, &v, || format!("resumed {}", schedule_text(&v)));
        }
        ScheduleCommand::Delete { name } => {
            let v = call(client, "delete", &name, Value::Null).await?;
            print(out, &v, || format!("deleted schedule {name} (its backups stay)"));
        }
        ScheduleCommand::RunNow { name, slot } => {
            // The slot is fixed here, so that a retry claims the same one (once).
            let slot = slot.unwrap_or_else(crate::model::now_ms);
            let req = json!({ "slot_ms": slot });
            let v = call(client, "run-now", &name, req).await?;
            print(out, &v, || {
                format!(
                    "run of {name} claimed as operation {} (cassette schedule show {name}; cassette operations watch {})",
                    v["operation_id"].as_str().unwrap_or(""),
                    v["operation_id"].as_str().unwrap_or("")
                )
            });
        }
    }
    Ok(0)
}
