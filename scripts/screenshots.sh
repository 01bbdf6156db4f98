#!/usr/bin/env bash
# Renders the dashboard of a demo ledger (a realistic month of calls over
# nine models and five providers) and screenshots it with headless Chromium
# into assets/screenshots/dashboard.png.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome)}"
BIN="${AICO_BIN:-target/debug/ai-cost-optimizer}"
[ -x "$BIN" ] || cargo build --locked --bin ai-cost-optimizer
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export COST_OPTIMIZER_DATA_DIR="$WORK/data" COST_OPTIMIZER_CONFIG= COST_OPTIMIZER_OLLAMA_PROBE=0
"$BIN" budget --set 40 >/dev/null
python3 scripts/seed_ledger.py --db "$WORK/data/ledger.sqlite3" --rows 2500 --days 30
"$BIN" dashboard --days 30 --out "$WORK/dashboard.html"
mkdir -p assets/screenshots
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --user-data-dir="$WORK/profile" --force-device-scale-factor=1 \
  --window-size=1280,${HEIGHT:-1600} --screenshot="$PWD/assets/screenshots/dashboard.png" \
  "file://$WORK/dashboard.html" 2>/dev/null
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --user-data-dir="$WORK/profile-dark" --force-device-scale-factor=1 --force-dark-mode \
  --blink-settings=preferredColorScheme=0 \
  --window-size=1280,${HEIGHT:-1600} --screenshot="$PWD/assets/screenshots/dashboard-dark.png" \
  "file://$WORK/dashboard.html" 2>/dev/null
echo "wrote assets/screenshots/dashboard.png and dashboard-dark.png"
