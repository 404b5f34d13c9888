#!/usr/bin/env bash
# Benchmark: drain throughput, trigger write overhead, commit-to-CRM latency and the
# worker's memory, each next to a baseline measured in the same run. Prints a table
# and writes it to bench/results.md. Options: --rows N, --quick (smoke run), --stats.
# Starts its own throwaway cluster and mock CRM (loopback only) and stops them.
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -f scripts/setup.sh ]]; then
    bash scripts/setup.sh
fi
exec cargo run --release -p etlify-bench -- "$@"
