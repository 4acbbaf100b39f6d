#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine, then runs the whole
# suite (format, lints, unit, conformance, fault and multi-process tests).
#
#   scripts/test.sh                       # run everything; tests whose emulator is missing skip loudly
#   CASSETTE_REQUIRE_EMULATORS=1 scripts/test.sh   # (CI) a missing emulator fails instead
#   scripts/test.sh -- <cargo test args>  # pass a filter, e.g. -- -p cassette-agent hashcache
#
# Installs into .tools/ (git-ignored): s3s-fs 0.14.1 (cargo), moto[server] (pip, in a venv) and
# Azurite 3.35.0 (npm). System packages (node, npm, python3-venv) come from apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
mkdir -p "$TOOLS/bin"
export PATH="$TOOLS/bin:$TOOLS/venv/bin:$PATH"

log() { printf '\n== %s\n' "$*" >&2; }

apt_install() {
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        log "apt-get install $*"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        log "cannot install $* (no apt-get or not root): install it by hand"
        return 1
    fi
}

install_s3s_fs() {
    if [ -x "$TOOLS/bin/s3s-fs" ] && "$TOOLS/bin/s3s-fs" --version 2>/dev/null | grep -q '0\.14\.1'; then return; fi
    if command -v s3s-fs >/dev/null 2>&1 && s3s-fs --version 2>/dev/null | grep -q '0\.14\.1'; then
        ln -sf "$(command -v s3s-fs)" "$TOOLS/bin/s3s-fs"
        return
    fi
    # 0.15 and later need rustc 1.96; 0.14.1 is the strict S3 server the suite is written against.
    log "installing s3s-fs 0.14.1 (cargo install, about 2-3 minutes)"
    cargo install --quiet --root "$TOOLS" s3s-fs@0.14.1 --features binary --locked
}

install_moto() {
    if command -v moto_server >/dev/null 2>&1; then return; fi
    if ! python3 -m venv --help >/dev/null 2>&1; then apt_install python3-venv || return 0; fi
    log "installing moto[server] into .tools/venv"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]'
}

install_azurite() {
    if [ -x "$TOOLS/azurite/node_modules/.bin/azurite-blob" ]; then return; fi
    if ! command -v npm >/dev/null 2>&1; then apt_install nodejs npm || return 0; fi
    log "installing azurite 3.35.0 into .tools/azurite"
    npm install --silent --prefix "$TOOLS/azurite" --no-audit --no-fund azurite@3.35.0 >/dev/null
}

install_s3s_fs
install_moto
install_azurite

cargo_args=()
if [ "${1:-}" = "--" ]; then shift; cargo_args=("$@"); fi

if [ ${#cargo_args[@]} -eq 0 ]; then
    log "cargo fmt --check"
    cargo fmt --all -- --check
    log "cargo clippy"
    cargo clippy --workspace --all-targets --locked -- -D warnings
    log "cargo test (CASSETTE_REQUIRE_EMULATORS=${CASSETTE_REQUIRE_EMULATORS:-0})"
    cargo test --workspace --locked --no-fail-fast
else
    cargo test --locked "${cargo_args[@]}"
fi
