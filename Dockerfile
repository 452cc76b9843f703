# Builds the firebreak binary for docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin firebreak

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/firebreak firebreak && mkdir -p /var/lib/firebreak && chown firebreak /var/lib/firebreak
COPY --from=build /src/target/release/firebreak /usr/local/bin/firebreak
COPY templates /etc/firebreak/templates
USER firebreak
# Listening on every address needs authentication: set
# FIREBREAK_AUTH__BOOTSTRAP_TOKEN (a secret), or the process refuses to start.
ENV FIREBREAK_LISTEN=0.0.0.0:8080 FIREBREAK_DATA_DIR=/var/lib/firebreak FIREBREAK_TEMPLATES=/etc/firebreak/templates
EXPOSE 8080
ENTRYPOINT ["firebreak"]
CMD ["serve"]
