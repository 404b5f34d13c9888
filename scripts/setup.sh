#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine (run as root) to build, install and test etlify:
# PostgreSQL 15 and its headers, clang, cargo-pgrx 0.18.1 initialised for the system
# PG 15, the extension installed into it, and the mock CRM built. Idempotent.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PGRX_VERSION=0.18.1

log() { printf '==> %s\n' "$*"; }

# --- system packages (only the missing ones) ---
packages=(postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo pkg-config build-essential)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    log "system packages present"
fi

# --- cargo-pgrx ---
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
    log "cargo install cargo-pgrx $PGRX_VERSION"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
else
    log "cargo-pgrx $PGRX_VERSION present"
fi
if ! grep -qs '^pg15' "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    log "cargo pgrx init --pg15 $PG_CONFIG"
    cargo pgrx init --pg15 "$PG_CONFIG"
else
    log "cargo pgrx already knows pg15"
fi

# --- the extension, into the system PostgreSQL 15 ---
log "cargo pgrx install --release (into $($PG_CONFIG --sharedir)/extension)"
cargo pgrx install --release --pg-config "$PG_CONFIG"

# --- the mock CRM ---
log "cargo build --release -p etlify-mock"
cargo build --release -p etlify-mock
test -x "$REPO/target/release/etlify-mock"
log "setup done"
