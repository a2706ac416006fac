#!/usr/bin/env bash
# Render a spec's diagram to PNG with headless Chromium and the local mermaid.js (no network).
#
#   examples/render_png.sh [SPEC] [OUT.png] [WIDTHxHEIGHT] [extra `render` options...]
#   examples/render_png.sh spec/minimind.json docs/minimind.png 1400x2200
#
# Needs: `npm ci` at the repository root (mermaid), Debian's `chromium`, and minimind-spec.
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${1:-spec/minimind.json}
out=${2:-docs/minimind.png}
size=${3:-1400x2200}
shift $(( $# < 3 ? $# : 3 ))

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The page inlines node_modules/mermaid/dist/mermaid.min.js, so it renders offline.
minimind-spec render "$spec" --format html -o "$work/diagram.html" "$@"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --force-device-scale-factor=1 --user-data-dir="$work/profile" \
  --virtual-time-budget=15000 --window-size="${size/x/,}" \
  --screenshot="$PWD/$out" "file://$work/diagram.html" 2>/dev/null
echo "wrote $out ($size)"
