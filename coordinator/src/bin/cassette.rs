//! `cassette`: the operator CLI.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = cassette_coordinator::cli::OperatorCli::parse();
    let (log, output) = (cli.log.clone(), cli.output);
    std::process::exit(cassette_coordinator::cli::main_with(&log, output, || {
        cassette_coordinator::cli::run_operator(cli)
    }));
}
