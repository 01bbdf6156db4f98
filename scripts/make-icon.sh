#!/usr/bin/env bash
# Renders assets/icon.svg to assets/icon.png (512×512), the icon of the
# Claude Desktop extension. Uses rsvg-convert (Debian: librsvg2-bin), else
# resvg (cargo install resvg), else ImageMagick.
set -euo pipefail
cd "$(dirname "$0")/.."
svg=assets/icon.svg
png=assets/icon.png
if command -v rsvg-convert >/dev/null; then
  rsvg-convert -w 512 -h 512 -o "$png" "$svg"
elif command -v resvg >/dev/null; then
  resvg -w 512 -h 512 "$svg" "$png"
elif command -v convert >/dev/null; then
  convert -background none -density 96 "$svg" -resize 512x512 "$png"
else
  echo "need rsvg-convert (apt-get install librsvg2-bin), resvg (cargo install resvg) or ImageMagick" >&2
  exit 1
fi
echo "$png: $(python3 -c 'import struct,sys; d=open(sys.argv[1],"rb").read(24); print("%dx%d" % struct.unpack(">II", d[16:24]))' "$png")"
