// Parse Mermaid diagrams with the real `mermaid` package under Node.
//
// Usage: node parse_mermaid.mjs FILE...   (each FILE holds one diagram's text; "-" reads stdin)
// Prints one JSON line per file: {"file": ..., "ok": true, "type": "flowchart-v2"}
// or {"file": ..., "ok": false, "error": "..."}; exits 1 when any file fails to parse.
// mermaid needs a DOM (DOMPurify, d3 selections) even to parse, so jsdom provides one. The edge
// and text limits are raised as the HTML page does: an expanded MoE graph has over 500 edges.
import { readFileSync } from "node:fs";
import { JSDOM } from "jsdom";

const dom = new JSDOM("<!DOCTYPE html><html><body></body></html>", { pretendToBeVisual: true });
for (const key of ["window", "document", "DOMParser", "Element", "HTMLElement", "SVGElement", "Node"]) {
  if (globalThis[key] === undefined) globalThis[key] = key === "window" ? dom.window : dom.window[key];
}

const { default: mermaid } = await import("mermaid");
mermaid.initialize({ startOnLoad: false, securityLevel: "strict", maxEdges: 100000, maxTextSize: 10000000 });

let failed = 0;
for (const file of process.argv.slice(2)) {
  const text = readFileSync(file === "-" ? 0 : file, "utf8");
  try {
    const result = await mermaid.parse(text);
    console.log(JSON.stringify({ file, ok: true, type: result.diagramType }));
  } catch (error) {
    failed += 1;
    console.log(JSON.stringify({ file, ok: false, error: String(error?.message ?? error) }));
  }
}
process.exit(failed ? 1 : 0);
