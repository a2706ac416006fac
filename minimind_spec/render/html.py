"""A self-contained HTML page that renders a Mermaid diagram in the browser and shows its source.

mermaid.js is inlined from the `mermaid` npm package's dist file when one is found at render
time (`$MINIMIND_MERMAID_JS`, or `node_modules/mermaid/dist/mermaid.min.js` in the current
directory or the repository), so the page needs no network. Without it the page shows the
Mermaid source and says how to get the drawing (install the npm package, render again).
"""

from __future__ import annotations

import html
import os
from pathlib import Path

MERMAID_DIST = Path("node_modules", "mermaid", "dist", "mermaid.min.js")


def find_mermaid_js() -> Path | None:
    """The mermaid.min.js to inline, or None when no npm install of mermaid is found."""
    env = os.environ.get("MINIMIND_MERMAID_JS")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd() / MERMAID_DIST, Path(__file__).resolve().parents[2] / MERMAID_DIST]
    return next((p for p in candidates if p.is_file()), None)


def to_html(mermaid_text: str, title: str, mermaid_js: Path | None = None) -> str:
    """The page: the diagram rendered by mermaid.js, then its source in a <details> block."""
    mermaid_js = mermaid_js or find_mermaid_js()
    if mermaid_js is not None:
        code = mermaid_js.read_text(encoding="utf-8").replace("</script", "<\\/script")
        script = f"<script>{code}</script>"
        note = f"mermaid.js inlined from {html.escape(mermaid_js.name)}"
    else:
        script = "<script>window.mermaid = null;</script>"
        note = ("mermaid.js was not found when this page was written, so only the source is shown: "
                "run `npm ci` in the repository (or set MINIMIND_MERMAID_JS) and render again")
    source = html.escape(mermaid_text)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
  body {{ font-family: system-ui, sans-serif; margin: 24px; color: #111827; }}
  pre.source {{ background: #f8fafc; border: 1px solid #e5e7eb; padding: 12px; overflow: auto; font-size: 12px; }}
  .note {{ color: #6b7280; font-size: 12px; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<pre class="mermaid">
{source}</pre>
<details><summary>Mermaid source</summary>
<pre class="source">{source}</pre>
</details>
<p class="note">Rendered by minimind-spec; {note}.</p>
{script}
<script>
  if (window.mermaid) {{
  mermaid.initialize({{ startOnLoad: false, securityLevel: "strict", maxTextSize: 10000000, maxEdges: 100000,
                       flowchart: {{ htmlLabels: true, useMaxWidth: false, wrappingWidth: 400 }} }});
  mermaid.run({{ querySelector: "pre.mermaid" }}).then(
    () => {{ document.body.dataset.rendered = "ok"; }},
    (error) => {{ document.body.dataset.rendered = "error"; document.body.insertAdjacentText("beforeend", String(error)); }});
  }}
</script>
</body>
</html>
"""
