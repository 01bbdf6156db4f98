#!/usr/bin/env bash
# Do reports hold calls up? Calls through `serve --http` (paced wrk, as in
# scripts/bench-http.sh) on a ledger seeded with ROWS calls, first alone,
# then while a client asks for usage reports back to back (GET /v1/usage
# and /dashboard, which read the whole period). Prints wrk's latency
# distributions for both runs and how long the reports took: if reports
# held the connection the calls' holds and settlements need, the second
# run's tail is the reports' duration.
#
#   scripts/bench-reports.sh                        # ROWS=1000000 USERS=2000 RATE=200 DURATION=15s
#   AICO_BIN=/path/to/other/build scripts/bench-reports.sh   # compare builds
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS="${ROWS:-1000000}"
USERS="${USERS:-2000}"
RATE="${RATE:-200}"
DURATION="${DURATION:-15s}"
CONNS="${CONNS:-10}"
BIN="${AICO_BIN:-target/release/ai-cost-optimizer}"
FAKE_BIN="${FAKE_BIN:-target/release/examples/fake_openai}"
command -v wrk >/dev/null || { echo "needs wrk (Debian: apt-get install wrk)"; exit 1; }
command -v curl >/dev/null || { echo "needs curl"; exit 1; }
[ -x "$BIN" ] || cargo build --release --locked --bin ai-cost-optimizer
[ -x "$FAKE_BIN" ] || cargo build --release --locked --example fake_openai

WORK="$(mktemp -d)"
DATA="$WORK/data"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
. scripts/bench-common.sh

env_run() {
  env -i PATH="$PATH" HOME="$WORK" COST_OPTIMIZER_DATA_DIR="$DATA" COST_OPTIMIZER_CONFIG= \
    COST_OPTIMIZER_OLLAMA_PROBE=0 COST_OPTIMIZER_LOG=warn \
    COST_OPTIMIZER_MONTHLY_BUDGET=1000000 "$@"
}

echo "== seeding $ROWS calls over 30 days, $USERS users"
env_run "$BIN" doctor >/dev/null
python3 scripts/seed_ledger.py --db "$DATA/ledger.sqlite3" --rows "$ROWS" --days 30 --users "$USERS"

"$FAKE_BIN" 127.0.0.1:0 >"$WORK/fake.addr" &
PIDS+=($!)
FAKE="$(first_line_of "$WORK/fake.addr")"
env_run DEEPSEEK_API_KEY=sk-bench-FAKE-0000000000 DEEPSEEK_BASE_URL="$FAKE" \
  "$BIN" serve --http 127.0.0.1:0 2>"$WORK/server.log" &
PIDS+=($!)
PROXY="$(listening_address "$WORK/server.log")"

DELAY_MS=$(( CONNS * 1000 / RATE ))
write_post_lua "$WORK/post.lua" "$DELAY_MS"
wrk -t1 -c2 -d2s -s "$WORK/post.lua" "$PROXY/v1/chat/completions" >/dev/null

echo "== calls alone"
wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" "$PROXY/v1/chat/completions"

echo "== calls while reports run back to back"
(
  while true; do
    for path in /v1/usage /dashboard; do
      curl -s -o /dev/null -w "%{time_total} $path\n" "$PROXY$path" >>"$WORK/reports.txt" || exit 0
    done
  done
) &
PIDS+=($!)
sleep 1
wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" "$PROXY/v1/chat/completions"
echo "== report durations (s): count, median, max per path"
for path in /v1/usage /dashboard; do
  grep " $path\$" "$WORK/reports.txt" | awk '{print $1}' | sort -n |
    awk -v p="$path" '{a[NR]=$1} END {if (NR) printf "%s: %d reports, median %.3f, max %.3f\n", p, NR, a[int((NR+1)/2)], a[NR]}'
done
