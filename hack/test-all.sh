#!/usr/bin/env bash
# Runs every test tier, in order of cost. CI runs exactly this (.ci/run).
#
#   1. formatting, lints and hygiene: cargo fmt, cargo clippy -D warnings (with the
#      workspace lints), cargo doc -D warnings (intra-doc links), cargo machete (unused
#      dependencies), cargo deny (licenses, duplicate majors, sources; deny.toml)
#   2. unit tests of every crate, and the server's integration tests: real
#      switchboard-server instances on loopback ports driven by real WebSocket clients
#      (server/tests/gateway), including the binary itself (flags, exit codes, SIGTERM),
#      and replicas sharing a real nats-server (server/tests/gateway/nats.rs); the load
#      generator against a real server (bench/tests); the TypeScript client package
#      (clients/typescript: npm ci from its lockfile, node's test runner against the
#      server binary and nats-server; the AsyncAPI documents checked by the official
#      parser; the demo page in Debian's chromium, from hack/browser.sh)
#   3. the control plane (tests/, operator/tests): real etcd + kube-apiserver (+
#      kube-controller-manager's garbage collector): the CRD and its CEL rules, the
#      operator's reconcile, leader election, the operator binary; the Helm chart
#      (lint, the rendered install bundle, install/upgrade/uninstall); and the install
#      journey end to end: helm install, the operator under the chart's own service
#      account, kubectl apply, servers started from the ConfigMap it wrote, clients
#      across two replicas over a real nats-server, scale, roll, delete; and the
#      container images (hack/images.sh builds them with the Dockerfile's targets on the
#      Docker engine of hack/docker.sh, stopped again at the end): `docker run` of the
#      server serves the example app as nonroot on a read-only root and drains on
#      `docker stop`; the operator image prints this tree's CRD (tests/tests/images.rs)
#
#   bash hack/test-all.sh          every tier (what CI runs)
#   bash hack/test-all.sh --fast   tiers 1 and 2 only: no Go, no control plane; the only
#                                  third-party binary is nats-server (a download)
#
# Third-party test binaries come from hack/tools.sh, pinned and cached outside the
# repo, and are put first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

fast=false
case "${1:-}" in
  "") ;;
  --fast) fast=true ;;
  *)
    echo "usage: bash hack/test-all.sh [--fast]" >&2
    exit 2
    ;;
esac

tools=()
if $fast; then
  tools=(nats-server cargo-machete cargo-deny)
fi
# Its last line is the directory of the binaries; a failure or an empty answer stops
# here, loudly, instead of running the tests without their tools.
if ! tools_out=$(bash hack/tools.sh "${tools[@]}"); then
  echo "hack/test-all.sh: hack/tools.sh failed (see its messages above)" >&2
  exit 1
fi
tools_bin=${tools_out##*$'\n'}
if [[ -z "$tools_bin" || ! -d "$tools_bin" ]]; then
  echo "hack/test-all.sh: hack/tools.sh printed no tools directory (got '$tools_bin')" >&2
  exit 1
fi
export PATH="$tools_bin:$PATH"

# The TypeScript package needs Node.js 20 or later with npm (packages come from the npm
# registry, pinned by clients/typescript/package-lock.json, cached in ~/.npm).
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if (( node_major < 20 )) || ! command -v npm >/dev/null 2>&1; then
  echo "hack/test-all.sh: Node.js >= 20 with npm is required (found: $(node --version 2>&1 || echo none))" >&2
  exit 1
fi

# rustfmt and clippy ship as rustup components; install them when missing.
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

echo "== tier 1: format, lints and hygiene"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
cargo machete
# Advisories need the RustSec database from GitHub, which this machine cannot reach;
# the rest of the policy is checked offline.
# cargo deny reads the metadata of every target's dependencies, Windows ones
# included, which a build never downloads: fetch them first (crates.io only).
cargo fetch --locked --quiet
cargo deny --offline check licenses bans sources

# The end-to-end tests run the binaries themselves; build them first so they are fresh.
cargo build --workspace --bins
if $fast; then
  echo "== tier 2: unit and server integration tests (nats-server)"
  cargo test -p switchboard-spec -p switchboard-ops -p switchboard-server -p switchboard-bench -p switchboard-client
  cargo test -p switchboard-operator --lib
else
  echo "== tier 3: the container images (hack/images.sh, hack/docker.sh)"
  trap 'bash hack/docker.sh down' EXIT
  if ! images_out=$(bash hack/images.sh); then
    echo "hack/test-all.sh: hack/images.sh failed (see its messages above)" >&2
    exit 1
  fi
  echo "$images_out"
  DOCKER_HOST=$(bash hack/docker.sh status)
  export DOCKER_HOST
  echo "== tier 2 and 3: unit, server integration (NATS), control-plane and image tests"
  cargo test --workspace
fi
echo "== tier 2: the TypeScript client package"
if ! browser_out=$(bash hack/browser.sh); then
  echo "hack/test-all.sh: hack/browser.sh failed (see its messages above)" >&2
  exit 1
fi
npm ci --prefix clients/typescript --no-audit --no-fund --loglevel=error
(cd clients/typescript && CHROMIUM="${browser_out##*$'\n'}" \
  SWITCHBOARD_SERVER="$PWD/../../target/debug/switchboard-server" npm test --silent)
