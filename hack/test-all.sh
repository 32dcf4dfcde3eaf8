#!/usr/bin/env bash
# Runs every test tier, in order of cost. CI runs exactly this (.ci/run).
#
#   1. formatting and lints (cargo fmt, cargo clippy -D warnings)
#   2. unit tests of every crate, and the server's integration tests: real
#      switchboard-server instances on loopback ports driven by real WebSocket clients
#      (server/tests/gateway), including the binary itself (flags, exit codes, SIGTERM)
#
# Tiers that need third-party binaries (nats-server, control plane, Jaeger) install
# them through hack/tools.sh as they arrive; none is needed yet.
set -euo pipefail
cd "$(dirname "$0")/.."

# rustfmt and clippy ship as rustup components; install them when missing.
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

echo "== tier 1: format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== tier 2: unit and server integration tests"
cargo test --workspace
