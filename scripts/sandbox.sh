#!/usr/bin/env bash
# The main job: Cassette end to end on this machine (see integration/src/bin/sandbox.rs).
#
#   scripts/sandbox.sh                      # six emulated nodes in two datacenters (nothing to install)
#   scripts/sandbox.sh --cassandra real     # three real Cassandra 5.0 nodes (installed into .tools/ on first use)
#   scripts/sandbox.sh --keep               # leave everything running and print how to drive it
#   scripts/sandbox.sh --output json        # the figures as JSON
#
# Every binary is built in one cargo invocation, with its progress shown, so nothing is compiled
# twice; the sandbox then uses those binaries as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo --version >/dev/null 2>&1; then
    echo "sandbox.sh: cargo is missing: install the Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi
echo "== building the binaries (release; the first build takes about 10 minutes)" >&2
cargo build --release --locked -p cassette-integration -p cassette-agent -p cassette-coordinator --bins
CASSETTE_PREBUILT_BINARIES=1 exec target/release/sandbox "$@"
