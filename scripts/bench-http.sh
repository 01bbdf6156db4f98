#!/usr/bin/env bash
# Load on loopback: the proxy overhead of `serve --http`.
#
# Starts a minimal fake OpenAI-compatible provider (examples/fake_openai.rs)
# and the release binary in front of it (DeepSeek pointed at the fake), then
# drives both with wrk at the same paced rate and the same body:
#   direct: wrk → fake /chat/completions
#   floor:  wrk → bare_proxy → fake (examples/bare_proxy.rs: the same axum +
#           reqwest stack forwarding bytes, no work of ours: what any proxy
#           pays on this machine for the two extra hops)
#   proxy:  wrk → ai-cost-optimizer /v1/chat/completions → fake
# and prints wrk's latency distributions. Overhead = proxy − direct at the
# same percentile.
#
#   scripts/bench-http.sh                      # RATE=500 DURATION=20s CONNS=20
#   RATE=200 DURATION=10s scripts/bench-http.sh
#   DATA_ROOT=/dev/shm scripts/bench-http.sh  # ledger on tmpfs: the cost of fsync
#   WORK_US="50 100 150" scripts/bench-http.sh # also the forwarder burning that
#                                              # much CPU per request: what a
#                                              # proxy may spend for a p99 target
#
# wrk has no fixed-rate mode; each connection waits CONNS*1000/RATE ms between
# requests (a Lua `delay`), so the offered rate is at most RATE and drops when
# responses are slow. The achieved rate is printed: compare it with RATE.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE="${RATE:-500}"
DURATION="${DURATION:-20s}"
CONNS="${CONNS:-20}"
BIN="${AICO_BIN:-target/release/ai-cost-optimizer}"
command -v wrk >/dev/null || { echo "needs wrk (Debian: apt-get install wrk)"; exit 1; }
[ -x "$BIN" ] || cargo build --release --locked --bin ai-cost-optimizer
FAKE_BIN="${FAKE_BIN:-target/release/examples/fake_openai}"
[ -x "$FAKE_BIN" ] || cargo build --release --locked --example fake_openai
BARE_BIN="${BARE_BIN:-target/release/examples/bare_proxy}"
[ -x "$BARE_BIN" ] || cargo build --release --locked --example bare_proxy

WORK="$(mktemp -d)"
DATA="$(mktemp -d "${DATA_ROOT:-$WORK}/aco-bench-XXXXXX")"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DATA" "$WORK"; }
trap cleanup EXIT
. scripts/bench-common.sh

"$FAKE_BIN" 127.0.0.1:0 >"$WORK/fake.addr" &
PIDS+=($!)
FAKE="$(first_line_of "$WORK/fake.addr")"
"$BARE_BIN" 127.0.0.1:0 "$FAKE" >"$WORK/bare.addr" &
PIDS+=($!)
BARE="$(first_line_of "$WORK/bare.addr")"

env -i PATH="$PATH" HOME="$WORK" COST_OPTIMIZER_DATA_DIR="$DATA" COST_OPTIMIZER_CONFIG= \
  COST_OPTIMIZER_OLLAMA_PROBE=0 COST_OPTIMIZER_LOG=warn \
  COST_OPTIMIZER_MONTHLY_BUDGET=100000 \
  DEEPSEEK_API_KEY=sk-bench-FAKE-0000000000 DEEPSEEK_BASE_URL="$FAKE" \
  "$BIN" serve --http 127.0.0.1:0 2>"$WORK/server.log" &
SERVER_PID=$!
PIDS+=($SERVER_PID)
PROXY="$(listening_address "$WORK/server.log")"

DELAY_MS=$(( CONNS * 1000 / RATE ))
THREADS=$(( CONNS < 2 ? CONNS : 2 ))   # wrk needs connections >= threads
write_post_lua "$WORK/post.lua" "$DELAY_MS"

# Warm up both (tokenizer, connections, SQLite pages).
wrk -t1 -c2 -d2s -s "$WORK/post.lua" "$PROXY/v1/chat/completions" >/dev/null
wrk -t1 -c2 -d2s -s "$WORK/post.lua" "$FAKE/chat/completions" >/dev/null
wrk -t1 -c2 -d2s -s "$WORK/post.lua" "$BARE/v1/chat/completions" >/dev/null

echo "== rate target ${RATE}/s, ${CONNS} connections, ${DURATION}, delay ${DELAY_MS} ms per connection"
echo "== direct: fake provider"
wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" "$FAKE/chat/completions"
echo "== floor: bare forwarder (axum + reqwest, no work; examples/bare_proxy.rs)"
wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" "$BARE/v1/chat/completions"
for us in ${WORK_US:-}; do
  "$BARE_BIN" 127.0.0.1:0 "$FAKE" "$us" >"$WORK/work.addr" &
  WORK_PID=$!
  PIDS+=($WORK_PID)
  WORKED="$(first_line_of "$WORK/work.addr")"
  wrk -t1 -c2 -d2s -s "$WORK/post.lua" "$WORKED/v1/chat/completions" >/dev/null
  echo "== floor + ${us} us of CPU per request (bare forwarder spinning; compare with the proxy's CPU per request)"
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" "$WORKED/v1/chat/completions"
  kill "$WORK_PID" 2>/dev/null || true
  wait "$WORK_PID" 2>/dev/null || true
  : >"$WORK/work.addr"
done
echo "== server stack only: ai-cost-optimizer GET /health (no core, no ledger)"
cat >"$WORK/get.lua" <<LUA
function delay() return ${DELAY_MS} end
LUA
wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$WORK/get.lua" "$PROXY/health"
echo "== proxy: ai-cost-optimizer /v1/chat/completions (forced model, so the same upstream call)"
# The server's CPU time (user + system, from /proc) over the run, per
# request: what the latency is made of once the machine is busy.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
T0=$(cpu_ticks)
wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" "$PROXY/v1/chat/completions" | tee "$WORK/proxy.txt"
T1=$(cpu_ticks)
N=$(grep -o '[0-9]* requests in' "$WORK/proxy.txt" | awk '{print $1}')
echo "server CPU per request: $(( (T1 - T0) * 1000000 / $(getconf CLK_TCK) / N )) us (user + system)"
# The WAL must start over while calls keep coming (it grew without bound
# before the syncer's locked pass; the file is trimmed to 16 MiB on restart).
echo "ledger WAL after the run: $(( $(stat -c %s "$DATA/ledger.sqlite3-wal" 2>/dev/null || echo 0) / 1024 )) KiB"
echo "== ledger rows written"
COST_OPTIMIZER_DATA_DIR="$DATA" COST_OPTIMIZER_CONFIG= COST_OPTIMIZER_OLLAMA_PROBE=0 \
  "$BIN" usage --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print("calls", d["calls"], "failed", d["totals"].get("failed_attempts"))' \
  || true
