"""Time the front end: load + validate + resolve + graph (+ checks), render and diff of a
spec, after imports, and how graph building scales with the layer count.

    python benchmarks/bench_frontend.py [SPEC] [--repeat N]

Prints the median of N runs per stage for the card's spec, then graph build time and node
count for 8, 64 and 512 layers (time per layer should stay flat: linear growth).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from minimind_spec import build_graph, load_spec, resolve
from minimind_spec.graph import check_declared, check_graph, graph_costs
from minimind_spec.diff import diff_specs, format_text
from minimind_spec.render import render
from minimind_spec.loader import load_document

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", default=str(ROOT / "spec" / "minimind.json"))
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    load_spec(args.spec)  # warm caches (JSON Schema generation happens once per process)
    spec = load_spec(args.spec)
    resolved = resolve(spec)
    graph = build_graph(resolved)

    def everything():
        r = resolve(load_spec(args.spec))
        g = build_graph(r)
        check_graph(g)
        check_declared(r, g)

    stages = {
        "load + validate": lambda: load_spec(args.spec),
        "resolve": lambda: resolve(spec),
        "build_graph": lambda: build_graph(resolved),
        "check_graph + declared": lambda: (check_graph(graph), check_declared(resolved, graph)),
        "all of the above": everything,
        "render (load..graph + mermaid)": lambda: render(build_graph(resolve(load_spec(args.spec)))),
        "render --variant MoE --expand": lambda: render(build_graph(resolve(load_spec(args.spec), "MoE")), "mermaid", True),
        "diff base vs MoE (text)": lambda: format_text(diff_specs(args.spec, args.spec, None, "MoE")),
    }
    print(f"front end on {args.spec} (median of {args.repeat}, after imports)")
    for name, fn in stages.items():
        print(f"  {name:<32} {median_ms(fn, args.repeat):8.2f} ms")

    print("\ngraph building vs layer count")
    print(f"  {'layers':>6} {'nodes':>7} {'build ms':>9} {'ms/layer':>9}")
    data = load_document(args.spec).data
    with tempfile.TemporaryDirectory() as tmp:
        for layers in (8, 64, 512):
            data["hyperparams"]["n_layers"] = layers
            path = Path(tmp) / f"l{layers}.json"
            path.write_text(json.dumps(data), encoding="utf-8")
            r = resolve(load_spec(path))
            ms = median_ms(lambda: graph_costs(build_graph(r), r.model), max(3, args.repeat // 4))
            nodes = build_graph(r).number_of_nodes()
            print(f"  {layers:>6} {nodes:>7} {ms:>9.2f} {ms / layers:>9.3f}")


if __name__ == "__main__":
    main()
