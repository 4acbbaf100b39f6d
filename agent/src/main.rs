//! `cassette-agent`: the Cassette agent on a Cassandra host.

#![forbid(unsafe_code)]

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
    /// Use a storage location directly: check it, store files as blobs, fetch them back.
    #[command(subcommand)]
    Storage(cli::storage::StorageCommand),
    /// Serve the agent API to the coordinator (mutual TLS).
    Serve(cli::serve::ServeArgs),
}

fn main() {
    cassette_agent::install_crypto_provider();
    let args = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
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
    eprintln!("error: {message}");
    if output == cli::OutputFormat::Json {
        println!("{}", serde_json::json!({ "error": message }));
    }
}
