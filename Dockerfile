# ai-cost-optimizer as an HTTP server: MCP at /mcp, the OpenAI-compatible API
# at /v1, /health, /ready, /metrics. See docs/DEPLOY.md.
#
#   docker build -t ai-cost-optimizer .
#   docker run --rm -v aco-data:/data ai-cost-optimizer keys create --user me
#   docker run -d -p 8080:8080 -v aco-data:/data -e DEEPSEEK_API_KEY=... ai-cost-optimizer

# ---- build ------------------------------------------------------------------
FROM rust:1.95-slim-trixie AS build
WORKDIR /src
# The crate (SQLite is compiled in by rusqlite's `bundled` feature; TLS is
# rustls, so no OpenSSL is needed).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin ai-cost-optimizer \
 && install -m 0755 target/release/ai-cost-optimizer /usr/local/bin/ai-cost-optimizer

# ---- run --------------------------------------------------------------------
FROM debian:trixie-slim
# CA roots for SMTP alert delivery; provider calls carry their own roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin aco \
 && mkdir -p /data && chown aco:aco /data && chmod 0700 /data
COPY --from=build /usr/local/bin/ai-cost-optimizer /usr/local/bin/ai-cost-optimizer

# The ledger (every call's cost, budgets, API key hashes) and the logs.
ENV COST_OPTIMIZER_DATA_DIR=/data \
    HOME=/data \
    COST_OPTIMIZER_OLLAMA_PROBE=0
VOLUME ["/data"]
USER aco
EXPOSE 8080
# /health needs no key; the binary probes itself, so the image needs no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["ai-cost-optimizer", "healthcheck", "http://127.0.0.1:8080/health"]
# Any command can be run in place of the server, e.g. `keys create --user me`.
ENTRYPOINT ["ai-cost-optimizer"]
CMD ["serve", "--http", "0.0.0.0:8080"]
