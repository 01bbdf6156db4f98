#!/usr/bin/env bash
# Every test, as CI runs it: formatting, lints, Rust unit and integration
# tests (the real binary over stdio against fake providers), the official
# Python MCP SDK and the openai package as clients, the MCP conformance
# suite against `serve --http`, the packaging (release build, .mcpb bundle,
# skill ZIP) and the routing-metric unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --all-targets --locked
cargo build --locked --bin ai-cost-optimizer

echo "== MCP conformance (streamable HTTP)"
scripts/conformance.sh

if [ "${AICO_SKIP_PACKAGE:-0}" != 1 ]; then
  # The release build, the .mcpb and the skill ZIP, which
  # tests/python/test_packaging.py unpacks and starts (AICO_SKIP_PACKAGE=1
  # skips this; those tests then skip too).
  echo "== scripts/package.sh"
  scripts/package.sh
fi

echo "== Python MCP SDK client tests"
VENV="${AICO_VENV:-target/py-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
"$VENV/bin/python" -m pytest tests/python -q

if ls scripts/test_*.py >/dev/null 2>&1; then
  echo "== routing metric unit tests"
  python3 -m unittest discover -s scripts -p 'test_*.py'
fi
