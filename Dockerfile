# syntax=docker/dockerfile:1
#
# One image for every role: `querywatch agent` (the sidecar),
# `querywatch collector` (the central service), `querywatch analyze`.
#
#   docker build -t querywatch:local .
#   docker run --rm querywatch:local                     # prints the help
#   docker run --rm -p 4317:4317 -p 4318:4318 -p 8080:8080 querywatch:local collector
#
# The build is the one CI runs (`cargo build --release --locked`), on the
# toolchain CI uses (Rust 1.95, Debian bookworm); pg_query's bindgen needs
# libclang. Only the debug line tables are stripped afterwards (symbols stay,
# so backtraces keep function names): 87 MB -> 17 MB.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin querywatch \
    && objcopy --strip-debug target/release/querywatch /querywatch

FROM debian:bookworm-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="querywatch" \
      org.opencontainers.image.description="PostgreSQL query observability: sidecar agent, collector and offline log analyzer" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/querywatch" \
      org.opencontainers.image.documentation="https://example.invalid/querywatch/blob/main/README.md#deployment" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# The binary links only libc, libm and libgcc_s (all in the base image).
# No ca-certificates: TLS is rustls with the webpki roots compiled in, and a
# private CA comes from [export] ca_file; nothing reads /etc/ssl.
# A fixed non-root uid/gid (10001) for runAsUser / fsGroup in Kubernetes.
RUN groupadd --system --gid 10001 querywatch \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/querywatch \
       --no-create-home --shell /usr/sbin/nologin querywatch \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/querywatch

COPY --from=build /querywatch /usr/local/bin/querywatch

USER 10001:10001
WORKDIR /var/lib/querywatch
# The agent's checkpoint and spool (state_dir): the only path written, so
# the root filesystem can be read-only.
VOLUME ["/var/lib/querywatch"]

# OTLP/gRPC, OTLP/HTTP, and /metrics + API + page (collector).
EXPOSE 4317 4318 8080

# For the collector: GET /healthz on its HTTP port (QUERYWATCH_HEALTH_PORT,
# default 8080) with bash's /dev/tcp and builtins only: no curl or wget in
# the image. The agent has no HTTP port: disable it there (compose:
# `healthcheck: disable: true`; Kubernetes ignores HEALTHCHECK and uses the
# probes in deploy/kubernetes/).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${QUERYWATCH_HEALTH_PORT:-8080} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r -t 4 status <&3 && [[ $status == HTTP/1.?' 200'* ]]"]

ENTRYPOINT ["querywatch"]
CMD ["--help"]
