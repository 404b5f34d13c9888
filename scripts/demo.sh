#!/usr/bin/env bash
# Demo: a throwaway PostgreSQL 15 cluster with etlify preloaded, the mock CRM
# registered as HubSpot, a users table mirrored as contacts; prints what the CRM
# holds and etlify's views after each step, then stops everything it started.
set -euo pipefail

cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p etlify-e2e --bin etlify-demo
exec target/release/etlify-demo
