# syntax=docker/dockerfile:1
# Builds the firebreak binary for docker-compose.yml. The crate registry and
# the build directory are BuildKit caches: a source change rebuilds
# Firebreak's own crates, not its ~300 dependencies.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin firebreak \
    && cp target/release/firebreak /usr/local/bin/firebreak

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home /var/lib/firebreak firebreak && mkdir -p /var/lib/firebreak && chown firebreak /var/lib/firebreak
COPY --from=build /usr/local/bin/firebreak /usr/local/bin/firebreak
COPY templates /etc/firebreak/templates
USER firebreak
# Listening on every address needs authentication: set
# FIREBREAK_AUTH__BOOTSTRAP_TOKEN (a secret), or the process refuses to start.
ENV FIREBREAK_LISTEN=0.0.0.0:8080 FIREBREAK_DATA_DIR=/var/lib/firebreak FIREBREAK_TEMPLATES=/etc/firebreak/templates
EXPOSE 8080
ENTRYPOINT ["firebreak"]
CMD ["serve"]
