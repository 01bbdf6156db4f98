#!/usr/bin/env bash
# Ledger analytics on a big ledger: seeds ROWS calls (default 1,000,000) over
# the last 30 days with one INSERT … SELECT over a recursive CTE (in time
# order, as the program writes them), then times
# `usage --json`, `usage --group-by band --json` and `dashboard` (each the
# median of RUNS runs of the real binary, process start included) beside
# baselines measured in the same run: `doctor` (process start + ledger open +
# count(*)) and plain SQL scans over the same table.
#
#   scripts/bench-ledger.sh            # release binary (cargo build --release)
#   ROWS=100000 RUNS=3 scripts/bench-ledger.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS="${ROWS:-1000000}"
RUNS="${RUNS:-5}"
BIN="${AICO_BIN:-target/release/ai-cost-optimizer}"
[ -x "$BIN" ] || cargo build --release --locked --bin ai-cost-optimizer
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export COST_OPTIMIZER_DATA_DIR="$WORK" COST_OPTIMIZER_CONFIG= COST_OPTIMIZER_OLLAMA_PROBE=0
"$BIN" doctor >/dev/null   # creates and migrates the ledger

python3 - "$WORK/ledger.sqlite3" "$ROWS" "$RUNS" "$BIN" <<'PY'
import os, sqlite3, statistics, subprocess, sys, time
db, rows, runs, binary = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
now = int(time.time() * 1000)
span = 30 * 86_400_000 - 60_000

con = sqlite3.connect(db)
con.execute("PRAGMA synchronous=OFF")
t0 = time.perf_counter()
with con:
    con.execute(f"""
    WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {rows} - 1),
    m(k, provider, model, tier, pin, pout) AS (VALUES
      (0, 'ollama', 'ollama/llama3.1', 'free', 0, 0),
      (1, 'gemini', 'gemini/gemini-2.5-flash-lite', 'cheap', 100, 400),
      (2, 'deepseek', 'deepseek/deepseek-v3.2', 'cheap', 280, 420),
      (3, 'cerebras', 'cerebras/gpt-oss-120b', 'cheap', 350, 750),
      (4, 'anthropic', 'anthropic/claude-haiku-4-5', 'medium', 1000, 5000),
      (5, 'deepseek', 'deepseek/deepseek-v4-pro', 'medium', 1320, 3960),
      (6, 'gemini', 'gemini/gemini-3-flash-preview', 'medium', 500, 3000),
      (7, 'anthropic', 'anthropic/claude-sonnet-4-6', 'premium', 3000, 15000),
      (8, 'openrouter', 'openrouter/anthropic/claude-sonnet-4.6', 'premium', 3000, 15000)),
    -- MATERIALIZED: each row's random() values are drawn once, not per use.
    r AS MATERIALIZED (SELECT i, {now} - 1000 - abs(random()) % {span} AS ts, abs(random()) % 9 AS k,
             abs(random()) % 4000 + 50 AS tin, abs(random()) % 1500 + 20 AS tout,
             (abs(random()) % 10000) / 10000.0 AS score, abs(random()) % 100 AS fate FROM n)
    INSERT INTO calls (ts_ms, user_id, request_id, attempt, provider, model, tier, score,
        input_tokens, output_tokens, cost_nanos, cost_source, baseline_cost_nanos, latency_ms,
        outcome, error_kind, prompt_sha256)
    SELECT ts, CASE i % 4 WHEN 0 THEN 'default' WHEN 1 THEN 'alice' WHEN 2 THEN 'bob' ELSE 'ci-bot' END,
        hex(randomblob(16)), 1, provider, model, CASE WHEN fate = 99 THEN NULL ELSE tier END, score,
        tin, tout, CASE WHEN fate < 3 THEN 0 ELSE tin * pin + tout * pout END,
        CASE WHEN k = 0 THEN 'local' ELSE 'catalog' END,
        CASE WHEN fate < 3 THEN NULL ELSE tin * 3000 + tout * 15000 END,
        abs(random()) % 5000, CASE WHEN fate < 3 THEN 'error' ELSE 'ok' END,
        CASE WHEN fate < 3 THEN 'timeout' END, hex(randomblob(32))
    FROM r JOIN m USING (k) ORDER BY ts""")
seed_s = time.perf_counter() - t0
con.execute("ANALYZE")
con.close()
size_mb = os.path.getsize(db) / 1e6
print(f"seeded {rows:,} rows in {seed_s:.1f}s (ledger {size_mb:.0f} MB)")

def median_ms(fn):
    fn()  # warm the page cache once
    xs = []
    for _ in range(runs):
        t = time.perf_counter(); fn(); xs.append((time.perf_counter() - t) * 1000)
    return statistics.median(xs)

def cli(*args):
    def run():
        subprocess.run([binary, *args], check=True, stdout=subprocess.DEVNULL)
    return run

def sql(q):
    def run():
        c = sqlite3.connect(db); c.execute(q).fetchall(); c.close()
    return run

html = os.path.join(os.path.dirname(db), "bench.html")
results = [
    ("baseline: SELECT count(*) FROM calls (python sqlite3)", sql("SELECT count(*) FROM calls")),
    ("baseline: SELECT sum(cost_nanos) FROM calls, full scan", sql("SELECT sum(cost_nanos) FROM calls")),
    ("baseline: ai-cost-optimizer doctor (start + open + count)", cli("doctor")),
    ("usage --json (30 days: totals, model, provider, day, top 5)", cli("usage", "--json")),
    ("usage --group-by band --json", cli("usage", "--group-by", "band", "--json")),
    ("dashboard --days 30", cli("dashboard", "--days", "30", "--out", html)),
]
print(f"\n| command ({rows:,} rows, median of {runs}) | ms |\n|---|---|")
for name, fn in results:
    print(f"| {name} | {median_ms(fn):.0f} |")
print(f"\ndashboard.html: {os.path.getsize(html) / 1024:.0f} KiB")
PY
