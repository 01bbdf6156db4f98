#!/usr/bin/env bash
# The dashboard in a real browser: seeds a ledger, renders the page with the
# built binary, loads it in headless Chromium and checks the DOM against the
# ledger (scripts/check_dashboard.py). Also renders an empty ledger.
# Needs chromium (CI installs it: see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}"
if [ -z "$CHROMIUM" ]; then
  echo "test-dashboard: chromium not found; install it (apt-get install -y chromium)" >&2
  exit 1
fi
BIN="${AICO_BIN:-target/debug/ai-cost-optimizer}"
[ -x "$BIN" ] || cargo build --locked --bin ai-cost-optimizer
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export COST_OPTIMIZER_CONFIG= COST_OPTIMIZER_OLLAMA_PROBE=0

echo "== empty ledger"
export COST_OPTIMIZER_DATA_DIR="$WORK/empty"
"$BIN" doctor >/dev/null
"$BIN" dashboard --out "$WORK/empty.html" >/dev/null
grep -q 'id="empty-state"' "$WORK/empty.html"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --user-data-dir="$WORK/profile" \
  --enable-logging=stderr --v=0 --dump-dom "file://$WORK/empty.html" >"$WORK/empty.dom" 2>"$WORK/empty.log"
grep -q 'No calls in the last 30 days' "$WORK/empty.dom"
if grep -E 'CONSOLE|Uncaught' "$WORK/empty.log"; then echo "console messages on the empty page" >&2; exit 1; fi
echo "ok   empty ledger renders the empty state without console messages"

echo "== seeded ledger (hostile ids included)"
export COST_OPTIMIZER_DATA_DIR="$WORK/seeded"
"$BIN" doctor >/dev/null
python3 scripts/seed_ledger.py --db "$WORK/seeded/ledger.sqlite3" --rows 3000 --days 14
# A model and user id that would break the page if not escaped.
python3 - "$WORK/seeded/ledger.sqlite3" <<'PY'
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1])
with con:
    con.execute("""INSERT INTO calls (ts_ms, user_id, request_id, attempt, provider, model, tier,
      score, cost_nanos, cost_source, baseline_cost_nanos, latency_ms, outcome, prompt_sha256)
      VALUES (?, '<img src=x onerror=alert(1)>', 'r', 1, 'openrouter', 'openrouter/<script>alert(1)</script>',
      'cheap', 0.3, 1000, 'catalog', 5000, 10, 'ok', 'x')""", (int(time.time() * 1000) - 60000,))
PY
"$BIN" dashboard --days 14 --out "$WORK/dash.html" >/dev/null
if grep -q '<script>alert' "$WORK/dash.html"; then echo "unescaped model id in the page" >&2; exit 1; fi
python3 scripts/check_dashboard.py --html "$WORK/dash.html" --db "$WORK/seeded/ledger.sqlite3" \
  --days 14 --chromium "$CHROMIUM"
