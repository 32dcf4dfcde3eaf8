#!/usr/bin/env bash
# Builds switchboard-server:0.1.0 and switchboard-operator:0.1.0 from the current tree
# with the Dockerfile's own targets, on a machine with no registry: the bases come from
# here instead of Docker Hub and gcr.io.
#
#   RUNTIME_IMAGE  switchboard-runtime:bookworm-<hash>, assembled from pinned Debian 12
#                  packages the way distroless/cc is: glibc, libgcc, CA certificates,
#                  /etc/passwd with the nonroot user 65532, and no shell or package
#                  manager. Built once per package list.
#   BINARIES       switchboard-binaries:local, /out/switchboard-{server,operator} from
#                  `cargo build --release --locked` on the host (Debian 12, the same
#                  glibc as the base).
#
#   bash hack/images.sh     prints the two image references, one per line, last
#
# Uses the engine of hack/docker.sh (started when not running).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! docker_out=$(bash hack/docker.sh up); then
  echo "hack/images.sh: hack/docker.sh up failed (see above)" >&2
  exit 1
fi
export DOCKER_HOST="${docker_out##*$'\n'}"
TOOLS_DIR="${SWITCHBOARD_TOOLS_DIR:-$HOME/.cache/switchboard/tools}"
DOCKER="$TOOLS_DIR/docker/usr/bin/docker"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

# Debian 12 packages of the runtime base, by exact version.
RUNTIME_PACKAGES=(
  "libc6=2.36-9+deb12u14"
  "libgcc-s1=12.2.0-14+deb12u1"
  "ca-certificates=20250419~deb12u2"
)
runtime_tag="switchboard-runtime:bookworm-$(printf '%s\n' "${RUNTIME_PACKAGES[@]}" "$(sha256sum hack/images.sh)" | sha256sum | cut -c1-12)"

log() { echo "hack/images.sh: $*" >&2; }

build_runtime() {
  if "$DOCKER" image inspect "$runtime_tag" >/dev/null 2>&1; then
    return
  fi
  log "assembling $runtime_tag from ${RUNTIME_PACKAGES[*]}"
  local tmp root
  tmp=$(mktemp -d)
  root="$tmp/root"
  mkdir -p "$root"
  (cd "$tmp" && apt-get download "${RUNTIME_PACKAGES[@]}" >&2)
  for deb in "$tmp"/*.deb; do
    dpkg-deb -x "$deb" "$root"
  done
  # What the packages' maintainer scripts would have made: the CA bundle (what
  # update-ca-certificates writes) and the files glibc reads.
  mkdir -p "$root/etc/ssl/certs" "$root/tmp"
  cat "$root"/usr/share/ca-certificates/mozilla/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  mkdir -p "$root/home/nonroot"
  chown 65532:65532 "$root/home/nonroot"
  # Documentation and the like are not needed at run time.
  rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/lintian" "$root/usr/share/locale"
  tar -C "$root" --numeric-owner -c . | "$DOCKER" import - "$runtime_tag" >/dev/null
  rm -rf "$tmp"
}

build_binaries() {
  log "cargo build --release (server and operator)"
  cargo build --release --locked -p switchboard-server -p switchboard-operator >&2
  local tmp
  tmp=$(mktemp -d)
  install -D -m 0755 target/release/switchboard-server "$tmp/out/switchboard-server"
  install -D -m 0755 target/release/switchboard-operator "$tmp/out/switchboard-operator"
  tar -C "$tmp" --numeric-owner -c out | "$DOCKER" import - switchboard-binaries:local >/dev/null
  rm -rf "$tmp"
}

build_runtime
build_binaries
for target in server operator; do
  log "docker build --target $target"
  DOCKER_BUILDKIT=1 "$DOCKER" build --quiet --target "$target" \
    --build-arg RUNTIME_IMAGE="$runtime_tag" \
    --build-arg BINARIES=switchboard-binaries:local \
    --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    -t "switchboard-$target:$VERSION" . >&2
done
echo "switchboard-server:$VERSION"
echo "switchboard-operator:$VERSION"
