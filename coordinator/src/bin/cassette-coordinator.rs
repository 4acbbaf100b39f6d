//! `cassette-coordinator`: one coordinator replica.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = cassette_coordinator::cli::CoordinatorCli::parse();
    let log = cli.log.clone();
    std::process::exit(cassette_coordinator::cli::main_with(&log, Default::default(), || {
        cassette_coordinator::cli::run_coordinator(cli)
    }));
}
