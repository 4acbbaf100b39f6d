#!/usr/bin/env bash
# Benchmarks that print tables, Cassette side by side with other tools in the same run.
#
#   scripts/bench.sh transfer [--datasets small,large] [--tools cassette,raw,raw-unsigned,rclone,aws] [--json]
#   scripts/bench.sh node [--sstables 10000] [--size 8GiB] [--tools cassette,rclone,aws] [--json]
#   scripts/bench.sh coordinator [--agents 10,100,1000] [--phase-ms 500] [--insecure] [--json]
#
# Installs what the comparison needs (s3s-fs 0.14.1, rclone, the AWS CLI) into .tools/ or via
# apt, then runs `cassette-bench` in release mode. Data (about 5 GiB) goes to $TMPDIR/cassette-bench
# unless --work-dir says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=$PWD/.tools
mkdir -p "$TOOLS/bin"
export PATH="$TOOLS/bin:$TOOLS/venv/bin:$PATH"

if ! command -v s3s-fs >/dev/null 2>&1 || ! s3s-fs --version | grep -q '0\.14\.1'; then
    cargo install --quiet --root "$TOOLS" s3s-fs@0.14.1 --features binary --locked
fi
if ! command -v rclone >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone >/dev/null
fi
if ! command -v aws >/dev/null 2>&1; then
    [ -x "$TOOLS/venv/bin/pip" ] || python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check awscli
fi
exec cargo run --release --locked -p cassette-integration --bin cassette-bench -- "${@:-transfer}"
