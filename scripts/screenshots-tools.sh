#!/usr/bin/env bash
# Screenshots of tool results as a person reads them: runs the real binary's
# CLI (the same Markdown the MCP tools return as text), renders the Markdown
# to a styled HTML page and photographs it with headless Chromium into
# assets/screenshots/. No network: dummy keys only enable providers for
# routing; recommend, costs, budget and usage never call a model.
# The Markdown is rendered as CommonMark (markdown-it-py from PyPI, with GFM
# tables and line breaks kept, as chat UIs show them).
# Needs: chromium (apt-get install chromium), Python 3 (markdown-it-py is
# installed into target/py-venv).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${AICO_BIN:-target/release/ai-cost-optimizer}"
[ -x "$BIN" ] || cargo build --release --locked --bin ai-cost-optimizer
CHROME="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[ -n "$CHROME" ] || { echo "needs chromium (apt-get install -y chromium)" >&2; exit 1; }
VENV="${AICO_VENV:-target/py-venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import markdown_it' 2>/dev/null ||
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'markdown-it-py>=3'

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export COST_OPTIMIZER_DATA_DIR="$work/data" COST_OPTIMIZER_CONFIG="" COST_OPTIMIZER_OLLAMA_PROBE=0
export HOME="$work/home"
export ANTHROPIC_API_KEY=sk-ant-dummy-0000 DEEPSEEK_API_KEY=sk-dummy-0000 GEMINI_API_KEY=dummy-0000 \
  CEREBRAS_API_KEY=dummy-0000 OPENROUTER_API_KEY=sk-or-dummy-0000

out=assets/screenshots
mkdir -p "$out"

# Shell-quotes an argument for display, only when it needs it.
show_arg() {
  if [[ "$1" =~ ^[A-Za-z0-9._,/=:+-]+$ ]]; then printf ' %s' "$1"; else printf " '%s'" "${1//\'/\'\\\'\'}"; fi
}

# shot NAME HEIGHT TITLE CMD... : runs `ai-cost-optimizer CMD...`, one
# section per call; several calls are separated by "--".
shot() {
  local name="$1" height="$2" title="$3"; shift 3
  local md="$work/$name.md"
  : >"$md"
  local cmd=()
  for a in "$@" --; do
    if [ "$a" = -- ]; then
      printf '```text\n$ ai-cost-optimizer' >>"$md"
      for c in "${cmd[@]}"; do show_arg "$c" >>"$md"; done
      printf '\n```\n\n' >>"$md"
      "$BIN" "${cmd[@]}" >>"$md"
      printf '\n\n' >>"$md"
      cmd=()
    else
      cmd+=("$a")
    fi
  done
  "$VENV/bin/python" - "$md" "$work/$name.html" "$title" <<'PY'
import html, sys
from markdown_it import MarkdownIt
src, dst, title = sys.argv[1:]
md = MarkdownIt("commonmark", {"breaks": True}).enable("table")
body = md.render(open(src, encoding="utf-8").read())
css = """
body { font-family: 'DejaVu Sans', Helvetica, Arial, sans-serif; margin: 0; background: #eef2f5; color: #1f2933; }
.card { margin: 28px; background: white; border-radius: 14px; box-shadow: 0 2px 10px rgba(0,0,0,.12); overflow: hidden; }
.bar { background: #0b3b4f; color: white; padding: 14px 22px; font-size: 18px; font-weight: bold; }
.bar span { color: #fbbf24; margin-right: 8px; }
.content { padding: 8px 26px 18px; font-size: 16px; line-height: 1.5; }
pre { background: #1e293b; color: #e2e8f0; padding: 10px 14px; border-radius: 8px; font-size: 14px; white-space: pre-wrap; }
code { font-family: 'DejaVu Sans Mono', monospace; }
table { border-collapse: collapse; margin: 10px 0 16px; font-size: 14.5px; }
th, td { border: 1px solid #d5dde3; padding: 6px 12px; text-align: left; }
th { background: #f1f5f9; }
tr:nth-child(even) td { background: #fafcfd; }
strong { color: #0b3b4f; }
"""
page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{css}</style></head><body><div class="card"><div class="bar"><span>$</span>AI Cost Optimizer · {html.escape(title)}</div>
<div class="content">{body}</div></div></body></html>"""
open(dst, "w", encoding="utf-8").write(page)
PY
  "$CHROME" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --user-data-dir="$(mktemp -d -p "$work")" --window-size=1200,"$height" \
    --screenshot="$out/$name.png" "file://$work/$name.html" >/dev/null 2>&1
  echo "$out/$name.png"
}

shot recommend 760 "get_recommendation" \
  recommend "Write a Python function that parses ISO 8601 durations like P3DT4H, with tests for edge cases."
shot costs 900 "check_model_costs" \
  costs --prompt "Summarise this meeting transcript in five bullet points and list the action items with owners."
shot budget 480 "set_budget and query_usage" \
  budget --set 20 --thresholds 0.5,0.9,1 --mode downgrade -- usage
