# Container images for Switchboard's two binaries. Build from the repository root:
#
#   docker build --target server   -t switchboard-server:0.1.0 .
#   docker build --target operator -t switchboard-operator:0.1.0 .
#
# 0.1.0 is the workspace version (Cargo.toml) and the chart's appVersion, and
# `switchboard-server:0.1.0` is the operator's default server image, so these tags work
# with the chart and the operator without further settings. Without --target you get
# the server (the last stage).
#
# Both targets start from the same `builder` stage, which compiles both binaries in one
# cargo invocation: the second `docker build` finds that step in the layer cache and
# does not compile again. BuildKit is required (the default builder since Docker 23)
# for the cache mounts below; the Dockerfile syntax is the engine's built-in one, so no
# frontend image is pulled.
#
# Without a registry (as on the project's CI machine), `bash hack/images.sh` builds the
# same two targets from local bases instead: a runtime base assembled from Debian
# packages (RUNTIME_IMAGE) and the binaries built on the host (BINARIES, an image holding
# /out/switchboard-server and /out/switchboard-operator), so the `builder` stage and its
# Rust image are skipped.
#
# Base images are pinned by version tag. For builds that never change underneath you,
# pin them by digest as well: look it up with
#   docker buildx imagetools inspect rust:1.95.0-bookworm
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot
# and write `FROM <image>:<tag>@sha256:<digest>`, or pass the pinned references with
# `--build-arg RUST_IMAGE=... --build-arg RUNTIME_IMAGE=...`.
#
# Optional: `--build-arg REVISION=$(git rev-parse HEAD)` records the commit in the
# image's OCI labels.

# The toolchain the project is developed and tested with. The workspace's
# rust-version is 1.88 and its dependencies need at least 1.89 (kube 5, async-nats
# 0.51); using the tested compiler avoids surprises from anything newer than the MSRV.
# Bookworm, because the runtime image is Debian 12: the binaries link against the
# glibc they are run with.
ARG RUST_IMAGE=rust:1.95.0-bookworm
# glibc, libgcc and CA certificates only: no shell, no package manager. `nonroot`
# variant: uid/gid 65532.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
# Where the binaries come from: the `builder` stage below, or an image holding them in
# /out (hack/images.sh).
ARG BINARIES=builder

# ---------------------------------------------------------------------------- builder
FROM ${RUST_IMAGE} AS builder
WORKDIR /src

# Only what the build reads, so that edits to the chart, docs or manifests other than
# the example app do not invalidate the compile step. Every workspace member must be
# present (cargo loads them all to resolve the workspace, even with -p); add a new
# member directory here when one is added to Cargo.toml.
COPY Cargo.toml Cargo.lock ./
COPY spec/ spec/
COPY ops/ ops/
COPY server/ server/
COPY operator/ operator/
COPY tests/ tests/
COPY bench/ bench/
# The example chat app is compiled into both crates (include_str!): the server serves
# it when started without --app.
COPY manifests/examples/chat.yaml manifests/examples/chat.yaml

# The registry and target directories are BuildKit cache mounts: they survive between
# builds (incremental rebuilds after a source change) but are not part of any layer,
# so the binaries are copied out to /out within the same step. `sharing=locked`
# because two concurrent builds writing one target directory would corrupt it.
RUN --mount=type=cache,id=switchboard-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=switchboard-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=switchboard-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p switchboard-server -p switchboard-operator \
    && install -D -m 0755 target/release/switchboard-server /out/switchboard-server \
    && install -D -m 0755 target/release/switchboard-operator /out/switchboard-operator

# ---------------------------------------------------------------------------- binaries
FROM ${BINARIES} AS binaries

# --------------------------------------------------------------------------- operator
FROM ${RUNTIME_IMAGE} AS operator
ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
ARG REVISION=""
LABEL org.opencontainers.image.title="switchboard-operator" \
      org.opencontainers.image.description="Reconciles RealtimeApp resources into running Switchboard servers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=binaries /out/switchboard-operator /usr/local/bin/switchboard-operator
# Numeric, so that a pod with runAsNonRoot can verify it without a runAsUser.
USER 65532:65532
# Admin listener: /healthz, /readyz, /metrics.
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/switchboard-operator"]
# `run` starts the controller; `docker run IMAGE crd` prints the CRD instead.
CMD ["run"]

# ----------------------------------------------------------------------------- server
FROM ${RUNTIME_IMAGE} AS server
ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
ARG REVISION=""
LABEL org.opencontainers.image.title="switchboard-server" \
      org.opencontainers.image.description="Switchboard's WebSocket gateway: validates, routes and fans out every message" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=binaries /out/switchboard-server /usr/local/bin/switchboard-server
USER 65532:65532
# 8080: WebSocket listener (path /ws). 9090: admin (/healthz, /readyz, /metrics).
EXPOSE 8080 9090
# No arguments: the server reads its configuration from the environment
# (SWITCHBOARD_APP, SWITCHBOARD_LISTEN, NATS_URL, ..., set by the operator's
# Deployment) and, with none set, serves the built-in example chat app, so
# `docker run -p 8080:8080 switchboard-server:0.1.0` is a working demo.
ENTRYPOINT ["/usr/local/bin/switchboard-server"]
