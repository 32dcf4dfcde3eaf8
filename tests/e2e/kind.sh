#!/usr/bin/env bash
# End-to-end journey on a throwaway kind cluster, for machines with Docker. CI does not
# run it (CI has no Docker; hack/test-all.sh covers the server and the operator against
# real NATS and a real control plane instead). Run from anywhere:
#
#   bash tests/e2e/kind.sh
#
# Needs docker (with BuildKit), kind, kubectl, helm, and python3 with the `websockets`
# package, 10 or later (`pip install websockets`), for the WebSocket clients.
#
# What it does: creates a kind cluster, builds both images from the Dockerfile and
# loads them into the cluster, starts NATS (manifests/dev/nats.yaml), installs the Helm
# chart, applies the example chat app and scales it to 2 replicas over NATS, then has
# two WebSocket clients chat through the app's Service and across two replicas, and
# finally scales the app to 3 through the scale subresource.
#
# Environment:
#   CLUSTER=switchboard-e2e    name of the kind cluster (must not exist yet)
#   KEEP_CLUSTER=1             keep the cluster afterwards (default: deleted at exit)
#   KIND_NODE_IMAGE=...        node image for kind (default: kind's own default)
#   LOCAL_PORT=18080           first of three local ports used for port-forwards
#   PYTHON=python3             interpreter that has `websockets`
set -Eeuo pipefail

CLUSTER=${CLUSTER:-switchboard-e2e}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}
LOCAL_PORT=${LOCAL_PORT:-18080}
PYTHON=${PYTHON:-python3}
# The workspace version; also the chart's appVersion and the operator's default server
# image tag. The chart is told the tags explicitly below, so they only have to agree
# with each other.
VERSION=0.1.0
SERVER_IMAGE=switchboard-server:$VERSION
OPERATOR_IMAGE=switchboard-operator:$VERSION
OPERATOR_NS=switchboard-system

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

log() { printf '\n== %s\n' "$*" >&2; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}

# --------------------------------------------------------------------- preflight
missing=()
for tool in docker kind kubectl helm "$PYTHON"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  fail "missing tools: ${missing[*]} (this script needs docker, kind, kubectl, helm and python3)"
fi
if ! "$PYTHON" -c 'import websockets' 2>/dev/null; then
  fail "$PYTHON cannot import the 'websockets' package: pip install websockets (or set PYTHON to an interpreter that has it)"
fi
docker info >/dev/null 2>&1 || fail "docker is installed but its daemon does not answer (docker info failed)"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  # Never reuse or delete a cluster this run did not create.
  fail "a kind cluster named $CLUSTER already exists: delete it (kind delete cluster --name $CLUSTER) or set CLUSTER"
fi

# A kubeconfig of our own, so the user's current context is never changed.
work=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-e2e.XXXXXX")
export KUBECONFIG=$work/kubeconfig
cluster_created=0
pf_pids=()

diagnostics() {
  set +e
  log "diagnostics"
  kubectl get all,rtapp -A -o wide
  kubectl describe rtapp chat
  kubectl get events -A --sort-by=.lastTimestamp | tail -n 60
  log "operator logs"
  kubectl logs -n "$OPERATOR_NS" deploy/switchboard-operator --all-containers --tail=300
  log "server logs"
  kubectl logs -l switchboard.dev/app=chat --all-containers --prefix --tail=200
  log "nats logs"
  kubectl logs statefulset/nats --tail=50
  for f in "$work"/port-forward-*.log; do
    if [[ -e $f ]]; then
      log "$(basename "$f")"
      cat "$f"
    fi
  done
  return 0
}

on_error() {
  # First line only: for the embedded client, the command is the whole heredoc.
  printf 'FAIL: line %s: %s\n' "$1" "${2%%$'\n'*}" >&2
}

on_exit() {
  local rc=$?
  # Clean-up is best effort: no more failure reports from here on.
  trap - ERR
  set +e
  if ((rc != 0)) && ((cluster_created)) && [[ -s $KUBECONFIG ]]; then
    diagnostics >&2
  fi
  # Only the port-forwards this script started, by pid.
  # (The +"..." form: bash 3.2, macOS's, treats an empty array as unset under set -u.)
  for pid in ${pf_pids[@]+"${pf_pids[@]}"}; do
    kill "$pid" 2>/dev/null
  done
  if ((cluster_created)); then
    if [[ $KEEP_CLUSTER == 1 ]]; then
      log "keeping cluster $CLUSTER: export KUBECONFIG=$KUBECONFIG (or: kind export kubeconfig --name $CLUSTER)"
    else
      log "deleting cluster $CLUSTER"
      kind delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
      rm -rf "$work"
    fi
  else
    rm -rf "$work"
  fi
  if ((rc == 0)); then
    log "PASS"
  fi
  exit "$rc"
}
trap 'on_error "$LINENO" "$BASH_COMMAND"' ERR
trap on_exit EXIT

# Polls a command until its output equals the expected value.
wait_for_output() {
  local want=$1 timeout=$2 what=$3
  shift 3
  local got="" deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    got=$("$@" 2>/dev/null) || got=""
    [[ $got == "$want" ]] && return 0
    sleep 2
  done
  fail "$what: expected '$want' within ${timeout}s, last saw '$got'"
}

# Starts `kubectl port-forward TARGET LOCAL:REMOTE` in the background and waits until
# it listens.
port_forward() {
  local target=$1 ports=$2 logfile
  logfile="$work/port-forward-${target//\//-}.log"
  kubectl port-forward "$target" "$ports" >"$logfile" 2>&1 &
  local pid=$!
  pf_pids+=("$pid")
  for _ in $(seq 1 60); do
    grep -q '^Forwarding from' "$logfile" && return 0
    kill -0 "$pid" 2>/dev/null || fail "kubectl port-forward $target $ports exited: $(cat "$logfile")"
    sleep 0.5
  done
  fail "kubectl port-forward $target $ports did not start listening"
}

# Two WebSocket clients, A and B. Both join room "lobby"; A says "hello" and B must
# receive it as ROOM_MESSAGE. With --distinct-replicas, A and B must also have landed on
# different server replicas (the $ws:open `instance`), so the message crossed NATS.
chat_journey() {
  "$PYTHON" - "$@" <<'PY'
import asyncio
import json
import sys

try:  # websockets >= 13
    from websockets.asyncio.client import connect
except ImportError:  # older releases
    from websockets import connect

url_a, url_b = sys.argv[1], sys.argv[2]
distinct = "--distinct-replicas" in sys.argv[3:]
TIMEOUT = 10


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


async def recv_json(ws, who, what):
    try:
        raw = await asyncio.wait_for(ws.recv(), TIMEOUT)
    except asyncio.TimeoutError:
        fail(f"{who}: no frame within {TIMEOUT}s while waiting for {what}")
    return json.loads(raw)


async def wait_for(ws, who, what, match):
    """Skips unrelated frames (e.g. A's own copy of its message) until one matches;
    an ERROR or RPC_ERROR frame fails at once."""
    while True:
        frame = await recv_json(ws, who, what)
        if frame.get("type") in ("ERROR", "RPC_ERROR"):
            fail(f"{who}: got {frame} while waiting for {what}")
        if match(frame):
            return frame


async def open_client(url, who):
    # The port-forward may need a moment for its first connection.
    for attempt in range(20):
        try:
            ws = await connect(url, open_timeout=TIMEOUT)
            break
        except Exception as e:  # refused, reset by the port-forward, timed out
            last = e
            await asyncio.sleep(0.5)
    else:
        fail(f"{who}: cannot connect to {url}: {last!r}")
    hello = await recv_json(ws, who, "$ws:open")
    if hello.get("type") != "$ws:open":
        fail(f"{who}: first frame is not $ws:open: {hello}")
    p = hello["payload"]
    print(f"{who}: connected to {p['instance']} as {p['user']['id']}", file=sys.stderr)
    return ws, p


async def join(ws, who):
    await ws.send(json.dumps({"type": "JOIN_ROOM", "meta": {"correlationId": "j1"},
                              "payload": {"roomId": "lobby"}}))
    ack = await wait_for(ws, who, "the JOIN_ROOM ack",
                         lambda f: f.get("type") == "$ws:ack"
                         and f.get("meta", {}).get("correlationId") == "j1")
    if ack.get("payload") != {"topic": "room:lobby"}:
        fail(f"{who}: unexpected ack payload: {ack}")


async def main():
    a, open_a = await open_client(url_a, "A")
    b, open_b = await open_client(url_b, "B")
    if distinct and open_a["instance"] == open_b["instance"]:
        fail(f"A and B are both on {open_a['instance']}; expected two replicas")
    await join(a, "A")
    await join(b, "B")
    await a.send(json.dumps({"type": "SEND_MESSAGE",
                             "payload": {"roomId": "lobby", "text": "hello"}}))
    msg = await wait_for(b, "B", "A's ROOM_MESSAGE",
                         lambda f: f.get("type") == "ROOM_MESSAGE")
    if msg.get("payload") != {"roomId": "lobby", "text": "hello"}:
        fail(f"B: unexpected ROOM_MESSAGE payload: {msg}")
    meta = msg.get("meta", {})
    if meta.get("topic") != "room:lobby" or meta.get("publisher") != open_a["user"]["id"]:
        fail(f"B: unexpected ROOM_MESSAGE meta: {msg}")
    print(f"B: received {json.dumps(msg)}", file=sys.stderr)
    await a.close()
    await b.close()


asyncio.run(main())
PY
}

# ------------------------------------------------------------------- the cluster
log "creating kind cluster $CLUSTER"
kind_args=(create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait 120s)
if [[ -n $KIND_NODE_IMAGE ]]; then
  kind_args+=(--image "$KIND_NODE_IMAGE")
fi
# Marked before creating: a half-created cluster must be cleaned up too.
cluster_created=1
kind "${kind_args[@]}"

log "building images"
# Both targets share the Dockerfile's builder stage: the second build is a cache hit.
docker build --target server -t "$SERVER_IMAGE" .
docker build --target operator -t "$OPERATOR_IMAGE" .
kind load docker-image "$SERVER_IMAGE" "$OPERATOR_IMAGE" --name "$CLUSTER"

log "starting NATS"
kubectl apply -f manifests/dev/nats.yaml
kubectl rollout status statefulset/nats --timeout=180s

log "installing the chart"
helm install switchboard charts/switchboard \
  --namespace "$OPERATOR_NS" --create-namespace \
  --set image.repository=switchboard-operator \
  --set image.tag="$VERSION" \
  --set image.pullPolicy=IfNotPresent \
  --set serverImage.repository=switchboard-server \
  --set serverImage.tag="$VERSION" \
  --wait --timeout 5m
kubectl wait --for=condition=Established crd/realtimeapps.switchboard.dev --timeout=60s

log "deploying the example chat app with 2 replicas over NATS"
kubectl apply -f manifests/examples/chat.yaml
kubectl patch rtapp chat --type merge \
  -p '{"spec":{"replicas":2,"nats":{"url":"nats://nats.default.svc:4222"}}}'
# Ready can still describe the previous generation (one replica, no NATS) until the
# operator has seen the patch, and Ready counts old pods during the roll: wait for the
# operator to catch up and for the roll to finish as well.
generation=$(kubectl get rtapp chat -o jsonpath='{.metadata.generation}')
wait_for_output "$generation" 120 "rtapp/chat status.observedGeneration" \
  kubectl get rtapp chat -o jsonpath='{.status.observedGeneration}'
kubectl wait --for=condition=Ready rtapp/chat --timeout=180s
kubectl rollout status deploy/chat --timeout=180s
wait_for_output 2 60 "deploy/chat readyReplicas" \
  kubectl get deploy chat -o jsonpath='{.status.readyReplicas}'
wait_for_output nats://nats.default.svc:4222 10 "NATS_URL of the chat pods" \
  kubectl get deploy chat -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="NATS_URL")].value}'
kubectl get rtapp chat

log "client journey through the Service"
# A port-forward to a Service picks one pod, so both clients share a replica here.
port_forward svc/chat "$LOCAL_PORT:80"
chat_journey "ws://127.0.0.1:$LOCAL_PORT/ws" "ws://127.0.0.1:$LOCAL_PORT/ws"

log "client journey across two replicas (NATS fan-out)"
# Current pods only: pods of the previous ReplicaSet may still be draining.
# (A read loop rather than mapfile, which bash 3.2 lacks.)
pod_list=$(kubectl get pods -l switchboard.dev/app=chat \
  -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}}{{"\n"}}{{end}}{{end}}')
pods=()
while IFS= read -r pod; do
  if [[ -n $pod ]]; then pods+=("$pod"); fi
done <<<"$pod_list"
((${#pods[@]} == 2)) || fail "expected 2 chat pods, found ${#pods[@]}: ${pods[*]:-}"
port_forward "pod/${pods[0]}" "$((LOCAL_PORT + 1)):8080"
port_forward "pod/${pods[1]}" "$((LOCAL_PORT + 2)):8080"
chat_journey "ws://127.0.0.1:$((LOCAL_PORT + 1))/ws" "ws://127.0.0.1:$((LOCAL_PORT + 2))/ws" \
  --distinct-replicas

log "scaling to 3 replicas through the scale subresource"
kubectl scale rtapp/chat --replicas=3
wait_for_output 3 60 "deploy/chat spec.replicas" \
  kubectl get deploy chat -o jsonpath='{.spec.replicas}'
kubectl rollout status deploy/chat --timeout=180s
wait_for_output 3 120 "deploy/chat readyReplicas" \
  kubectl get deploy chat -o jsonpath='{.status.readyReplicas}'
wait_for_output 3 120 "rtapp/chat status.readyReplicas" \
  kubectl get rtapp chat -o jsonpath='{.status.readyReplicas}'
kubectl get rtapp chat
