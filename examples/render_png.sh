#!/usr/bin/env bash
# Render a spec's diagram to PNG with headless Chromium and the local mermaid.js (no network).
#
#   examples/render_png.sh [SPEC] [OUT.png] [extra `render` options, e.g. --variant MoE]
#   (relative paths are taken from the repository root)
#   examples/render_png.sh spec/minimind.json docs/minimind.png
#
# Needs: `npm ci` at the repository root (mermaid), Debian's `chromium`, and the package
# importable by ${PY:-python3}. The page inlines node_modules/mermaid/dist/mermaid.min.js;
# a first Chromium pass reads the rendered SVG's size, the second takes the screenshot.
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${1:-spec/minimind.json}
out=$(realpath -m "${2:-docs/minimind.png}")
shift $(( $# < 2 ? $# : 2 ))

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"${PY:-python3}" -m minimind_spec render "$spec" --format html -o "$work/diagram.html" "$@"

browse() {
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --force-device-scale-factor=1 --user-data-dir="$work/profile" \
    --virtual-time-budget=15000 "$@" "file://$work/diagram.html" 2>/dev/null
}

dom=$(browse --dump-dom)
grep -q 'data-rendered="ok"' <<<"$dom" || { echo "mermaid did not render the diagram" >&2; exit 1; }
svg=$(grep -o '<svg id="mermaid[^>]*>' <<<"$dom" | head -1)
width=$(sed -E 's/.* width="([0-9]+).*/\1/' <<<"$svg")
height=$(sed -E 's/.* height="([0-9]+).*/\1/' <<<"$svg")
size="$(( width + 60 )),$(( height + 110 ))"  # the page margin and title above the diagram
browse --window-size="$size" --screenshot="$out"
[ -s "$out" ] || { echo "chromium wrote no screenshot to $out" >&2; exit 1; }
echo "wrote $out (${size/,/x})"
