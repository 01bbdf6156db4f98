#!/usr/bin/env bash
# Builds what a user installs in one step:
#   dist/ai-cost-optimizer-<os>-<cpu>.mcpb  Claude Desktop extension (MCPB
#                                      bundle: manifest, icon, release binary,
#                                      licences), e.g. ...-linux-x86_64.mcpb
#   dist/ai-cost-optimizer-skill.zip   the Agent Skill, folder at the top level
# The bundle holds this machine's binary, so its manifest lists only this
# platform. mcpb (npm @anthropic-ai/mcpb) is installed under target/npm.
set -euo pipefail
cd "$(dirname "$0")/.."

case "$(uname -s)" in
  Linux) platform=linux; exe= ;;
  Darwin) platform=darwin; exe= ;;
  MINGW*|MSYS*|CYGWIN*) platform=win32; exe=.exe ;;
  *) echo "unsupported platform $(uname -s)" >&2; exit 1 ;;
esac
# MCPB manifests name an OS but no CPU: the file name says which CPU the
# binary inside is for (an arm64 bundle fails to start on x86_64).
case "$(uname -m)" in
  x86_64|amd64) arch=x86_64 ;;
  arm64|aarch64) arch=arm64 ;;
  *) arch="$(uname -m)" ;;
esac
bundle="dist/ai-cost-optimizer-$platform-$arch.mcpb"

echo "== skill files in sync"
if ! cmp -s SKILL.md skill/ai-cost-optimizer/SKILL.md; then
  echo "SKILL.md and skill/ai-cost-optimizer/SKILL.md differ; edit the skill folder's copy and copy it to the top" >&2
  exit 1
fi

echo "== cargo build --release"
cargo build --release --locked --bin ai-cost-optimizer
bin="target/release/ai-cost-optimizer$exe"

echo "== stage dist/mcpb"
stage=dist/mcpb
rm -rf "$stage"
mkdir -p "$stage/server"
cp "$bin" "$stage/server/"
chmod 755 "$stage/server/ai-cost-optimizer$exe"
cp assets/icon.png "$stage/icon.png"
mkdir -p "$stage/screenshots"
# Only the screenshots the manifest lists (the dashboard shots are for the
# README and would add ~400 KB to every install).
python3 -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["screenshots"]))' \
  packaging/manifest.json | tr -d '\r' | while read -r shot; do
  cp "assets/$shot" "$stage/$shot"
done
cp LICENSE "$stage/LICENSE"
cp src/pricing/LICENSE-litellm.txt "$stage/LICENSE-litellm.txt"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
python3 - "$platform" "$version" packaging/manifest.json "$stage/manifest.json" "$exe" <<'PY'
import json, sys
platform, version, src, dst, exe = sys.argv[1:]
m = json.load(open(src))
if m["version"] != version:
    sys.exit(f"packaging/manifest.json version {m['version']} != Cargo.toml {version}")
# The bundle carries one platform's binary.
m["compatibility"]["platforms"] = [platform]
m["server"]["entry_point"] = "server/ai-cost-optimizer" + exe
m["server"]["mcp_config"]["platform_overrides"] = {
    k: v for k, v in m["server"]["mcp_config"]["platform_overrides"].items() if k == platform
}
with open(dst, "w") as f:
    json.dump(m, f, indent=2, ensure_ascii=False)
    f.write("\n")
PY

mcpb=target/npm/node_modules/.bin/mcpb
if [ ! -x "$mcpb" ]; then
  echo "== npm install @anthropic-ai/mcpb (local prefix target/npm)"
  npm install --prefix target/npm --no-save --no-audit --no-fund @anthropic-ai/mcpb@2 >/dev/null
fi
echo "== mcpb validate"
"$mcpb" validate "$stage/manifest.json"
echo "== mcpb pack"
rm -f dist/ai-cost-optimizer*.mcpb
"$mcpb" pack "$stage" "$bundle"

echo "== skill ZIP"
rm -f dist/ai-cost-optimizer-skill.zip
python3 - skill/ai-cost-optimizer dist/ai-cost-optimizer-skill.zip <<'PY'
import os, sys, zipfile
src, out = sys.argv[1:]
top = os.path.basename(src.rstrip("/"))
skip_dirs = {"__pycache__", ".git", ".pytest_cache"}
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs and not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.endswith((".pyc", ".pyo")) or name in ("Thumbs.db", "desktop.ini"):
                continue
            path = os.path.join(root, name)
            arc = os.path.join(top, os.path.relpath(path, src))
            info = zipfile.ZipInfo(arc, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, open(path, "rb").read())
    for n in z.namelist():
        print("   ", n)
PY

echo "== built"
for f in "$bin" "$bundle" dist/ai-cost-optimizer-skill.zip; do
  printf '%-40s %10d bytes (%s)\n' "$f" "$(wc -c <"$f")" "$(du -h "$f" | cut -f1)"
done
