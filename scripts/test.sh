#!/usr/bin/env bash
# Full check: setup (packages, pgrx, extension install, mock build), every test of
# the workspace in release mode (one target dir, nothing built twice), then
# formatting and lints. Run as root from anywhere. Ends with cargo test's summary.
set -euo pipefail

cd "$(dirname "$0")/.."
bash scripts/setup.sh

mkdir -p target
start=$(date +%s)
test_status=0
cargo test --release --workspace --no-fail-fast 2>&1 | tee target/test-output.log || test_status=$?
end=$(date +%s)

fmt_status=0
printf '\n==> cargo fmt --all -- --check\n'
cargo fmt --all -- --check || fmt_status=$?
clippy_status=0
printf '\n==> cargo clippy --release --workspace --all-targets -- -D warnings\n'
cargo clippy --release --workspace --all-targets -- -D warnings || clippy_status=$?

printf '\n==> fmt: %s, clippy: %s, cargo test: %s (%ss)\n' \
    "$([ $fmt_status = 0 ] && echo ok || echo FAILED)" \
    "$([ $clippy_status = 0 ] && echo ok || echo FAILED)" \
    "$([ $test_status = 0 ] && echo ok || echo FAILED)" "$((end - start))"
printf '==> test summary\n'
grep -E '^(     Running|   Doc-tests|test result:)|^test .* FAILED$' target/test-output.log || true
# one closing line over every test binary
awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i+1) ~ /^passed/) p += $i
            if ($(i+1) ~ /^failed/) f += $i
            if ($(i+1) ~ /^ignored/) s += $i
        }
     }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' target/test-output.log

if [ $test_status != 0 ] || [ $fmt_status != 0 ] || [ $clippy_status != 0 ]; then
    exit 1
fi
