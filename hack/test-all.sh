#!/usr/bin/env bash
# Runs every test tier, in order of cost. CI runs exactly this (.ci/run).
#
#   1. formatting and lints (cargo fmt, cargo clippy -D warnings)
#   2. unit tests of every crate, and the server's integration tests: real
#      switchboard-server instances on loopback ports driven by real WebSocket clients
#      (server/tests/gateway), including the binary itself (flags, exit codes, SIGTERM),
#      and replicas sharing a real nats-server (server/tests/gateway/nats.rs)
#   3. the control plane (tests/, operator/tests): real etcd + kube-apiserver (+
#      kube-controller-manager's garbage collector): the CRD and its CEL rules, the
#      operator's reconcile, leader election, the operator binary; the Helm chart
#      (lint, the rendered install bundle, install/upgrade/uninstall); and the install
#      journey end to end: helm install, the operator under the chart's own service
#      account, kubectl apply, servers started from the ConfigMap it wrote, clients
#      across two replicas over a real nats-server, scale, roll, delete
#
# Third-party test binaries (nats-server, etcd, kube-apiserver, kube-controller-manager,
# kubectl, helm) come from hack/tools.sh, pinned and cached outside the repo, and are
# put first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

# Its last line is the directory of the binaries; a failure or an empty answer stops
# here, loudly, instead of running the tests without their tools.
if ! tools_out=$(bash hack/tools.sh); then
  echo "hack/test-all.sh: hack/tools.sh failed (see its messages above)" >&2
  exit 1
fi
tools_bin=${tools_out##*$'\n'}
if [[ -z "$tools_bin" || ! -d "$tools_bin" ]]; then
  echo "hack/test-all.sh: hack/tools.sh printed no tools directory (got '$tools_bin')" >&2
  exit 1
fi
export PATH="$tools_bin:$PATH"

# rustfmt and clippy ship as rustup components; install them when missing.
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

echo "== tier 1: format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== tier 2 and 3: unit, server integration (NATS) and control-plane tests"
# The end-to-end tests run the binaries themselves; build them first so they are fresh.
cargo build --workspace --bins
cargo test --workspace
