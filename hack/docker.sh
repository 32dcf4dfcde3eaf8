#!/usr/bin/env bash
# A Docker engine for the tests: Debian's docker.io, containerd and runc, pinned,
# unpacked (never installed) into the tool cache, and run as one dockerd whose state
# lives under one directory outside the repo. Nothing is changed on the host beyond
# that directory: no iptables rules and no bridge (containers use the host's network,
# `docker run --network host`, which is all the tests need: loopback ports).
#
#   bash hack/docker.sh up       start it unless it runs; prints DOCKER_HOST as the last line
#                                (and links its client as docker into the tool cache's bin)
#   bash hack/docker.sh status   prints DOCKER_HOST when it answers; exit 1 when it does not
#   bash hack/docker.sh down     stop it (by PID: SIGTERM, wait, then SIGKILL)
#
# Needs root (dockerd does), as on the CI machine. Images and build cache persist in the
# state directory between runs, so a second `hack/images.sh` is quick.
set -euo pipefail

TOOLS_DIR="${SWITCHBOARD_TOOLS_DIR:-$HOME/.cache/switchboard/tools}"
STATE="${SWITCHBOARD_DOCKER_STATE:-$HOME/.cache/switchboard/docker}"
PREFIX="$TOOLS_DIR/docker"
SOCKET="$STATE/docker.sock"
export DOCKER_HOST="unix://$SOCKET"

# Debian 12 (bookworm) packages, by exact version.
PACKAGES=(
  "docker.io=20.10.24+dfsg1-1+deb12u1+b6"
  "containerd=1.6.20~ds1-1+deb12u3"
  "runc=1.1.5+ds1-1+deb12u1"
  # docker-init (`docker run --init`) is tini.
  "tini=0.19.0-1+b3"
)

log() { echo "hack/docker.sh: $*" >&2; }

install_packages() {
  local stamp="$PREFIX/.installed-$(printf '%s\n' "${PACKAGES[@]}" | sha256sum | cut -c1-16)"
  if [[ -f "$stamp" && -x "$PREFIX/usr/sbin/dockerd" ]]; then
    return
  fi
  log "unpacking ${PACKAGES[*]} into $PREFIX"
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download "${PACKAGES[@]}" >&2)
  rm -rf "$PREFIX"
  mkdir -p "$PREFIX"
  for deb in "$tmp"/*.deb; do
    dpkg-deb -x "$deb" "$PREFIX"
  done
  rm -rf "$tmp"
  touch "$stamp"
}

answers() {
  "$PREFIX/usr/bin/docker" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

up() {
  if [[ $(id -u) != 0 ]]; then
    log "dockerd needs root"
    exit 1
  fi
  install_packages
  mkdir -p "$STATE" "$TOOLS_DIR/bin"
  # The client beside the other test tools (hack/tools.sh's directory, first on PATH).
  ln -sf "$PREFIX/usr/bin/docker" "$TOOLS_DIR/bin/docker"
  export PATH="$PREFIX/usr/bin:$PREFIX/usr/sbin:$PATH"
  if answers; then
    echo "$DOCKER_HOST"
    return
  fi
  stop_pid "$STATE/containerd.pid"
  stop_pid "$STATE/dockerd.pid"
  log "starting dockerd (state in $STATE, log in $STATE/dockerd.log)"
  # Its own containerd, with its state in ours: never one another tool started.
  containerd --root "$STATE/containerd" --state "$STATE/containerd-run" \
    --address "$STATE/containerd.sock" >"$STATE/containerd.log" 2>&1 &
  echo $! >"$STATE/containerd.pid"
  for _ in $(seq 100); do
    [[ -S "$STATE/containerd.sock" ]] && break
    sleep 0.1
  done
  dockerd --host "$DOCKER_HOST" --containerd "$STATE/containerd.sock" \
    --data-root "$STATE/data" --exec-root "$STATE/exec" --pidfile "$STATE/dockerd.pid" \
    --iptables=false --ip6tables=false --bridge=none \
    >"$STATE/dockerd.log" 2>&1 &
  for _ in $(seq 300); do
    if answers; then
      echo "$DOCKER_HOST"
      return
    fi
    sleep 0.1
  done
  log "dockerd did not answer within 30 s; its log:"
  tail -20 "$STATE/dockerd.log" >&2
  exit 1
}

# Stops the process in a PID file: SIGTERM, up to 15 s, then SIGKILL.
stop_pid() {
  local file=$1 pid
  [[ -f "$file" ]] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

case "${1:-}" in
  up) up ;;
  status)
    if [[ -x "$PREFIX/usr/bin/docker" ]] && answers; then
      echo "$DOCKER_HOST"
    else
      log "not running"
      exit 1
    fi
    ;;
  down)
    stop_pid "$STATE/dockerd.pid"
    stop_pid "$STATE/containerd.pid"
    ;;
  *)
    echo "usage: bash hack/docker.sh up|status|down" >&2
    exit 2
    ;;
esac
