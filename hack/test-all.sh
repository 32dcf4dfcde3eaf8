#!/usr/bin/env bash
# Runs every test tier, in order of cost. CI runs exactly this (.ci/run).
#
#   1. formatting and lints (cargo fmt, cargo clippy -D warnings)
#   2. unit tests of every crate, and the server's integration tests: real
#      switchboard-server instances on loopback ports driven by real WebSocket clients
#      (server/tests/gateway), including the binary itself (flags, exit codes, SIGTERM),
#      and replicas sharing a real nats-server (server/tests/gateway/nats.rs)
#   3. the control plane (tests/): real etcd + kube-apiserver, the RealtimeApp CRD
#      applied and exercised (structural schema, CEL rules, scale subresource)
#
# Third-party test binaries (nats-server; later the control plane and Jaeger) come from
# hack/tools.sh, pinned and cached outside the repo, and are put first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

tools_bin=$(bash hack/tools.sh | tail -n 1)
export PATH="$tools_bin:$PATH"

# rustfmt and clippy ship as rustup components; install them when missing.
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

echo "== tier 1: format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== tier 2 and 3: unit, server integration (NATS) and control-plane tests"
cargo test --workspace
