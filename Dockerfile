# Build stage: a release binary, with the Rust release the project is tested with, and the etcd
# store (`--store`, for HA replicas), whose client is built from etcd's protobufs.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
RUN cargo build --release --locked --features etcd --bin corral

# Runtime stage: the binary, a data volume, Rancher's container ports, as a user that is not root.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libcap2-bin \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/corral /usr/local/bin/corral
# Ports below 1024 without root: the binary carries the one capability it needs.
RUN setcap cap_net_bind_service=+ep /usr/local/bin/corral \
    && useradd --system --uid 10001 --home-dir /var/lib/corral --create-home corral \
    && chmod 0700 /var/lib/corral
USER corral
# Settings go in the environment (-e CORRAL_TLS=external, -e CORRAL_HTTPS_PORT=…), where both the
# server and its health check read them.
ENV CORRAL_DATA_DIR=/var/lib/corral CORRAL_HTTPS_PORT=443 CORRAL_HTTP_PORT=80
VOLUME /var/lib/corral
EXPOSE 80 443
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s CMD ["corral", "healthcheck"]
ENTRYPOINT ["corral"]
CMD ["serve"]
