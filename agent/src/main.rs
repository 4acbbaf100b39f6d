//! `cassette-agent`: the Cassette agent on a Cassandra host.

// One exception, `tune_allocator` (a libc call); the library forbids unsafe code.
#![deny(unsafe_code)]

mod cli;

use clap::{Parser, Subcommand};

use cli::GlobalArgs;

/// The Cassette agent: backs up and restores the Cassandra node it runs on, content-addressed and
/// verified, to S3 (and S3-compatible stores), Azure, GCS or a directory.
#[derive(Debug, Parser)]
#[command(name = "cassette-agent", version, propagate_version = true, max_term_width = 110)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    /// Log filter, e.g. `info` or `cassette_agent=debug` (also RUST_LOG).
    #[arg(long, global = true, env = "RUST_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Back up this node: snapshot, store new blobs, write the manifest, clear the snapshot.
    Backup(cli::backup::BackupArgs),
    /// Restore a backup onto this node: in place (stopped node), with hard links or with nodetool import.
    Restore(cli::restore::RestoreArgs),
    /// Store commit-log segments (as Cassandra's archive_command, or sweeping a directory).
    CommitlogBackup(cli::commitlog::CommitLogBackupArgs),
    /// Prepare a point-in-time restore: download segments, write commitlog_archiving.properties.
    CommitlogRestore(cli::commitlog::CommitLogRestoreArgs),
    /// List backups with their size, unique and reclaimable bytes.
    List(cli::catalog::ListArgs),
    /// Check that a backup's blobs exist (--deep: download and hash them).
    Verify(cli::catalog::VerifyArgs),
    /// Remove backups and the blobs nothing else references.
    RemoveBackup(cli::catalog::RemoveArgs),
    /// Apply retention policies to a repository shared by clusters and standalone agents.
    Purge(cli::catalog::PurgeArgs),
    /// Use a storage location directly: check it, store files as blobs, fetch them back.
    #[command(subcommand)]
    Storage(cli::storage::StorageCommand),
    /// Serve the agent API to the coordinator (mutual TLS).
    Serve(cli::serve::ServeArgs),
}

/// glibc's allocator, tuned for many small per-file records freed from many threads: a fixed
/// mmap threshold and trim threshold (the dynamic ones let freed memory stay resident) and two
/// arenas. Measured on a backup of 80,000 files: 166 MiB resident for 89 MiB of live heap
/// untuned, 117 MiB tuned (docs/benchmarks.md). Called before any thread starts.
#[allow(unsafe_code)]
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() {
    tune_allocator();
    cassette_agent::install_crypto_provider();
    let args = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "warn".into()))
        // Secrets the agent read (password files) are replaced in every log line.
        .with_writer(|| cassette_common::redact::Redacting(std::io::stderr()))
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async {
        let result = match args.command {
            Command::Backup(a) => cli::backup::run(a, &args.global).await,
            Command::Restore(a) => cli::restore::run(a, &args.global).await,
            Command::CommitlogBackup(a) => cli::commitlog::backup(a, &args.global).await,
            Command::CommitlogRestore(a) => cli::commitlog::restore(a, &args.global).await,
            Command::List(a) => cli::catalog::list(a, &args.global).await,
            Command::Verify(a) => cli::catalog::verify(a, &args.global).await,
            Command::RemoveBackup(a) => cli::catalog::remove(a, &args.global).await,
            Command::Purge(a) => cli::catalog::purge(a, &args.global).await,
            Command::Storage(cmd) => cli::storage::run(cmd, &args.global).await,
            Command::Serve(cmd) => cli::serve::run(cmd, &args.global).await,
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                report_error(&e, args.global.output);
                1
            }
        }
    });
    std::process::exit(code);
}

/// Prints an error with its causes: on stderr as text, and also as JSON on stdout for scripts.
fn report_error(e: &anyhow::Error, output: cli::OutputFormat) {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !message.contains(&c) {
            message.push_str(": ");
            message.push_str(&c);
        }
    }
    let message = cassette_common::redact::redact(&message).into_owned();
    eprintln!("error: {message}");
    if output == cli::OutputFormat::Json {
        println!("{}", serde_json::json!({ "error": message }));
    }
}
