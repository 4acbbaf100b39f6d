#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine, then runs the whole
# suite (format, lints, unit, conformance, fault, multi-process and real-Cassandra tests).
#
#   scripts/test.sh                       # run everything; tests whose program is missing skip loudly
#   CASSETTE_REQUIRE_EMULATORS=1 scripts/test.sh   # (CI) a missing program fails instead
#   scripts/test.sh -- <cargo test args>  # pass a filter, e.g. -- -p cassette-agent hashcache
#
# scripts/install.sh puts every external program into .tools/ (git-ignored): s3s-fs, moto,
# Azurite, rclone, the AWS CLI, Cassandra 4.0/4.1/5.0 with Java 11 and 17, nodetool and cqlsh.
# Then it lists each program and where it was found, before any test starts.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS

log() { printf '\n== %s\n' "$*" >&2; }

if ! cargo --version >/dev/null 2>&1; then
    echo "test.sh: cargo is missing: install the Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi
for c in clippy:clippy fmt:rustfmt; do
    if ! cargo "${c%%:*}" --version >/dev/null 2>&1; then
        echo "test.sh: 'cargo ${c%%:*}' is missing: run 'rustup component add ${c#*:}'" >&2
        exit 1
    fi
done

log "installing the external programs (scripts/install.sh)"
scripts/install.sh all
log "install: $((SECONDS - t0)) s"
if ! scripts/install.sh --check; then
    if [ "${CASSETTE_REQUIRE_EMULATORS:-0}" = 1 ]; then
        echo "test.sh: a program above is MISSING and CASSETTE_REQUIRE_EMULATORS=1" >&2
        exit 1
    fi
    echo "test.sh: a program above is MISSING: the tests that need it will print SKIPPED" >&2
fi
export PATH="$PWD/.tools/bin:$PWD/.tools/venv/bin:$PATH"

cargo_args=()
if [ "${1:-}" = "--" ]; then shift; cargo_args=("$@"); fi

if [ ${#cargo_args[@]} -eq 0 ]; then
    t=$SECONDS
    log "cargo fmt --check"
    cargo fmt --all -- --check
    log "cargo clippy"
    cargo clippy --workspace --all-targets --locked -- -D warnings
    log "fmt and clippy: $((SECONDS - t)) s"
    t=$SECONDS
    log "cargo test (CASSETTE_REQUIRE_EMULATORS=${CASSETTE_REQUIRE_EMULATORS:-0})"
    cargo test --workspace --locked --no-fail-fast
    log "cargo test: $((SECONDS - t)) s"
else
    cargo test --locked "${cargo_args[@]}"
fi
log "test.sh: $((SECONDS - t0)) s in all"
