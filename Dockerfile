# mcp-runner container image.
#
#   docker build -t mcp-runner .
#
# Stages (the last one is the default target):
#   runtime   Debian 12 with what the binary needs at run time and every container default
#             (environment, health check, stop signal, entrypoint, labels); no binary yet.
#   prebuilt  runtime + a binary built outside Docker, taken from the build context. Only with
#             `--target prebuilt --build-arg PREBUILT=<path in the context>`; see below.
#   manifests the workspace's Cargo.toml files and Cargo.lock with placeholder sources.
#   build     compiles mcp-runner with the Rust toolchain image; dependencies are compiled from
#             `manifests` in a layer of their own, reused until a manifest or the lock file
#             changes, so a source change recompiles mcp-runner alone.
#   (final)   runtime + the binary from `build`.
#
# The binary is linked against glibc dynamically, so it must run on the Debian release it was
# built on: the Rust image and the runtime image are both bookworm (Debian 12), and so must a
# host that builds a binary for the `prebuilt` stage be.
#
# Build arguments:
#   RUST_IMAGE, RUNTIME_IMAGE  the base images, for mirrors and offline builds (any local image
#                              of the same Debian release will do).
#   PREBUILT                   path of a prebuilt binary in the build context (`prebuilt` only).
#                              target/ is excluded by .dockerignore: copy the binary elsewhere
#                              in the context first, e.g. into tests/container-image/prebuilt/.
#   VERSION, REVISION          written into the OCI labels.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ------------------------------------------------------------------------------- runtime --
FROM ${RUNTIME_IMAGE} AS runtime

# ca-certificates: TLS to Sentry (with the documented `-v /etc:/etc` the host's bundle under
# /etc/ssl is the one used; this one serves containers run without that mount).
# passwd: useradd, userdel, groupadd and groupdel, which mcp-runner runs to give every
# deployment its own host account (nologin, the accounts' shell, is on every Debian system).
# iptables: the firewall rules that keep deployment containers from connecting to the host and
# to each other (FIREWALL); with --network=host they land in the host's tables, and Debian 12's default
# iptables-nft writes the nf_tables backend, as Docker on Debian 12 and Ubuntu 24.04 does. They
# need CAP_NET_ADMIN (--privileged or --cap-add NET_ADMIN); without it start-up logs an error.
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates passwd iptables; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/*; \
    install -d -m 0700 /var/mcp-runner

# The image runs as root (no USER): mcp-runner edits the host's account database through the
# mounted /etc and drives the host's Docker daemon through the mounted socket.
#
# BIND_IP is left at the binary's default, 127.0.0.1: with --network=host that is the host's
# loopback, as for mcp-runner run directly on the host. Set BIND_IP=0.0.0.0 only behind a
# firewall or a reverse proxy.
ENV DB_PATH=/var/mcp-runner/app.db

EXPOSE 3000

# GET /health over bash's /dev/tcp: no HTTP client in the image. It asks the address mcp-runner
# listens on (127.0.0.1 when it listens on every address) at PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/bin/bash", "-c", "host=${BIND_IP:-127.0.0.1}; case $host in 0.0.0.0) host=127.0.0.1 ;; ::|'[::]') host=::1 ;; esac; exec 3<>\"/dev/tcp/$host/${PORT:-3000}\" || exit 1; printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3; reply=$(cat <&3); [[ $reply == 'HTTP/1.'?' 200 '* && $reply == *'\"status\":\"ok\"'* ]]"]

# mcp-runner stops on SIGTERM: it finishes in-flight requests, gives its background tasks up to
# 15 s and closes the database. `docker stop` sends SIGKILL after 10 s unless given --time (or
# the container was run with --stop-timeout). Deployment containers keep running unless
# CLEANUP_ON_SHUTDOWN is set.
STOPSIGNAL SIGTERM

# Exec form: mcp-runner is PID 1 and receives the stop signal itself.
ENTRYPOINT ["/usr/local/bin/mcp-runner"]

ARG VERSION=0.1.0
ARG REVISION=
LABEL org.opencontainers.image.title="mcp-runner" \
      org.opencontainers.image.description="Runs MCP servers from Docker images in gVisor sandboxes and serves them over Streamable HTTP and SSE" \
      org.opencontainers.image.source="https://github.com/tangier-ai/mcp-runner-rs" \
      org.opencontainers.image.url="https://github.com/tangier-ai/mcp-runner-rs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# ------------------------------------------------------------------------------ prebuilt --
# A binary built on a Debian 12 host (`cargo build --release`), for builds without access to
# the Rust image:
#
#   cargo build --release --locked
#   cp target/release/mcp-runner tests/container-image/prebuilt/
#   docker build --target prebuilt \
#       --build-arg PREBUILT=tests/container-image/prebuilt/mcp-runner -t mcp-runner .
#
# The classic builder (DOCKER_BUILDKIT=0) builds every stage before the target, this one too
# when the default target is built. So the default of PREBUILT is a directory that is always in
# the context and empty there, which makes this stage cheap and harmless when it is not used.
FROM runtime AS prebuilt
ARG PREBUILT=tests/container-image/prebuilt
COPY ${PREBUILT} /usr/local/bin/mcp-runner

# ----------------------------------------------------------------------------- manifests --
# The workspace reduced to what decides its dependencies: every Cargo.toml, Cargo.lock, and
# placeholders for the crate roots that exist (src/main.rs, src/lib.rs). Its content, and so
# the dependency layer built from it below, stays the same until the dependencies change.
FROM ${RUST_IMAGE} AS manifests
WORKDIR /src
COPY . .
RUN set -eux; \
    find . -name Cargo.toml -o -name Cargo.lock | while read -r f; do \
        d=$(dirname "$f"); \
        mkdir -p "/skeleton/$d/src"; \
        cp "$f" "/skeleton/$f"; \
        if [ -f "$d/src/main.rs" ]; then echo 'fn main() {}' > "/skeleton/$d/src/main.rs"; fi; \
        if [ -f "$d/src/lib.rs" ]; then : > "/skeleton/$d/src/lib.rs"; fi; \
    done

# --------------------------------------------------------------------------------- build --
FROM ${RUST_IMAGE} AS build
WORKDIR /src

# Dependencies, compiled against the placeholders; the placeholder crates are then forgotten so
# that the real sources are compiled below whatever their modification times.
COPY --from=manifests /skeleton/ ./
RUN set -eux; \
    cargo build --release --locked --bin mcp-runner; \
    rm -rf target/release/.fingerprint/mcp-runner-* target/release/deps/mcp_runner-* \
        target/release/deps/libmcp_runner-* target/release/mcp-runner target/release/mcp-runner.d

# The application itself.
COPY . .
RUN set -eux; \
    cargo build --release --locked --bin mcp-runner; \
    install -D -m 0755 target/release/mcp-runner /out/mcp-runner; \
    /out/mcp-runner --version

# --------------------------------------------------------------------------------- final --
FROM runtime
COPY --from=build /out/mcp-runner /usr/local/bin/mcp-runner
