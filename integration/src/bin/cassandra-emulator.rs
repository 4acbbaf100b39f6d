//! The Cassandra emulator, multi-call: `nodetool`, `cqlsh` or `admin`.
//!
//! ```text
//! cassandra-emulator [--state DIR] nodetool [-h HOST] <command> ...
//! cassandra-emulator [--state DIR] cqlsh [HOST [PORT]] -e <statement>
//! cassandra-emulator [--state DIR] admin <init|create-table|write-sstables|...>
//! ```
//! Called through a link or copy named `nodetool` or `cqlsh`, the mode comes from the name. The
//! state directory comes from `--state` or `CASSETTE_EMULATOR_STATE`.

use std::io::Write;
use std::process::ExitCode;

use cassette_integration::emulator::{self, Outcome, StateDir};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_owned()).unwrap_or_default();
    args.remove(0);
    let mut state = std::env::var("CASSETTE_EMULATOR_STATE").ok();
    if args.first().map(String::as_str) == Some("--state") && args.len() >= 2 {
        state = Some(args[1].clone());
        args.drain(0..2);
    }
    let mode = if argv0 == "nodetool" || argv0 == "cqlsh" {
        argv0
    } else if args.is_empty() {
        String::new()
    } else {
        args.remove(0)
    };
    let Some(state) = state else {
        eprintln!("cassandra-emulator: no state directory: pass --state DIR or set CASSETTE_EMULATOR_STATE");
        return ExitCode::from(3);
    };
    let state = StateDir::new(state);
    let out: Outcome = match mode.as_str() {
        "nodetool" => emulator::nodetool::run(&state, &args),
        "cqlsh" => emulator::cqlsh::run(&state, &args),
        "admin" => emulator::admin::run(&state, &args),
        other => Outcome {
            stdout: String::new(),
            stderr: format!("cassandra-emulator: unknown mode {other:?}: use nodetool, cqlsh or admin\n"),
            code: 3,
        },
    };
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    ExitCode::from(u8::try_from(out.code).unwrap_or(1))
}
