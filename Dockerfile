# Build stage: a release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
RUN cargo build --release --locked --bin corral

# Runtime stage: the binary, a data volume, Rancher's container ports.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/corral /usr/local/bin/corral
ENV CORRAL_DATA_DIR=/var/lib/corral
VOLUME /var/lib/corral
EXPOSE 80 443
ENTRYPOINT ["corral"]
CMD ["serve", "--https-port", "443", "--http-port", "80"]
