#!/usr/bin/env bash
# Benchmarks that print tables, Cassette side by side with other tools in the same run.
#
#   scripts/bench.sh transfer [--datasets small,large] [--tools cassette,raw,raw-unsigned,rclone,aws] [--json]
#   scripts/bench.sh node [--sstables 10000] [--size 8GiB] [--tools cassette,rclone,aws] [--json]
#   scripts/bench.sh node --cassandra real [--size 2GiB] [--json]   # a real 5.0 node, beside rclone
#   scripts/bench.sh coordinator [--agents 10,100,1000] [--phase-ms 500] [--insecure] [--json]
#
# Installs what the comparison needs (s3s-fs 0.14.1, rclone, the AWS CLI) into .tools/
# (scripts/install.sh), then runs `cassette-bench` in release mode. Data (about 5 GiB) goes to $TMPDIR/cassette-bench
# unless --work-dir says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh storage bench
case " $* " in *" --cassandra real "*) scripts/install.sh cassandra ;; esac
export PATH="$PWD/.tools/bin:$PWD/.tools/venv/bin:$PATH"
exec cargo run --release --locked -p cassette-integration --bin cassette-bench -- "${@:-transfer}"
