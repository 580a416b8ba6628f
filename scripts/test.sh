#!/usr/bin/env bash
# Runs Millrace's whole test suite on a fresh machine: installs what the
# tests need, then builds and runs every test (unit, integration, slt).
set -euo pipefail
cd "$(dirname "$0")/.."

# psql is used by the quickstart check; tests talk to the server through
# tokio-postgres and need nothing else installed.
if ! command -v psql >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "installing postgresql-client" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq postgresql-client >/dev/null
fi

cargo build --locked --all-targets
cargo test --locked --all-targets -- --test-threads=2
