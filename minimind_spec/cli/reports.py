"""Rendering of the build report (rich tables or JSON) and the files `build --out` writes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from rich.table import Table

from ..explain import resolved_to_json
from ..graph import graph_to_json, nodes
from ..pipeline import BuildResult
from .app import console, err_console, print_problems


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"


def build_report_json(result: BuildResult) -> dict[str, Any]:
    c, costs = result.resolved.model, result.costs
    op_counts = Counter(str(n.op) for n in nodes(result.graph))
    return {
        "name": result.resolved.name,
        "variant": result.resolved.variant,
        "nodes": result.graph.number_of_nodes(),
        "params": {"total": costs.total_params, "trainable": costs.trainable_params, "frozen": costs.frozen_params,
                   "lora": costs.lora_params, "trainable_percent": round(costs.trainable_percent, 4),
                   "by_op": costs.params_by_op},
        "op_counts": dict(op_counts),
        "flops_per_token": costs.flops_per_token,
        "kv_cache_bytes_per_token": costs.kv_cache_bytes_per_token,
        "activation_bytes_per_sequence": costs.activation_bytes,
        "dtype": costs.dtype,
        "seq_len": c.seq_len,
        "warnings": [p.as_dict() for p in result.warnings],
        "declared_vs_compiled": [p.as_dict() for p in result.declared],
    }


def print_build_report(result: BuildResult, source: str) -> None:
    r, costs = result.resolved, result.costs
    c = r.model
    mlp = f"MoE {c.moe.num_experts} experts top-{c.moe.top_k}" if c.moe else f"SwiGLU hidden {c.mlp_hidden}"
    console.print(f"[bold]{r.name}[/bold] ({r.variant or 'base'}) from {source}")
    console.print(f"  {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads ({c.n_kv_heads} kv), {mlp}, "
                  f"{c.norm}, {c.positional_encoding}, vocab {c.vocab_size}, {result.graph.number_of_nodes()} graph nodes")

    table = Table(title="Parameters by op type")
    table.add_column("op")
    table.add_column("nodes", justify="right")
    table.add_column("parameters", justify="right")
    table.add_column("share", justify="right")
    counts = Counter(str(n.op) for n in nodes(result.graph))
    for op, params in sorted(costs.params_by_op.items(), key=lambda kv: -kv[1]):
        table.add_row(op, str(counts[op]), f"{params:,}", f"{100 * params / costs.total_params:.1f}%")
    table.add_row("[bold]total[/bold]", str(result.graph.number_of_nodes()), f"[bold]{costs.total_params:,}[/bold]", "100%")
    console.print(table)

    summary = Table(show_header=False, box=None, padding=(0, 2))
    summary.add_row("total parameters", f"{costs.total_params:,}")
    if c.lora:
        summary.add_row("trainable (LoRA)", f"{costs.trainable_params:,} ({costs.trainable_percent:.2f}%), rank {c.lora.rank} on {', '.join(c.lora.targets)}")
    else:
        summary.add_row("trainable", f"{costs.trainable_params:,}")
    summary.add_row("frozen", f"{costs.frozen_params:,}")
    summary.add_row("forward FLOPs / token", f"{costs.flops_per_token:,} (attention at seq_len {c.seq_len}; training ~3x)")
    summary.add_row("KV cache / token", f"{fmt_bytes(costs.kv_cache_bytes_per_token)} ({c.dtype}); {fmt_bytes(costs.kv_cache_bytes_per_token * c.seq_len)} at seq_len {c.seq_len}")
    summary.add_row("activations / sequence", f"{fmt_bytes(costs.activation_bytes)} at seq_len {c.seq_len} ({c.dtype}, estimate)")
    console.print(summary)

    if result.warnings:
        print_problems(result.warnings, "[yellow]Spec warnings[/yellow]")
    if result.declared:
        print_problems(result.declared, f"[yellow]Declared vs compiled: {len(result.declared)} mismatch{'es' if len(result.declared) != 1 else ''} (the model is built as specified; --strict makes these errors)[/yellow]")
    else:
        err_console.print("[green]Declared vs compiled: every declared number matches[/green]")


def write_build_outputs(result: BuildResult, out: Path, device: str, seed: int, weights: Any = None) -> list[Path]:
    """resolved.json and graph.json always; weights and config.json when the back end is installed.
    `weights` (an `model_files.ModelFiles`, already checked to fit) replaces the seeded init.
    Everything is written into a temporary directory beside `out` first and moved in only when
    all of it succeeded: an error leaves `out` as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.is_dir():
        raise FileExistsError(17, "exists and is not a directory", str(out))
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        names = ["resolved.json", "graph.json"]
        (staging / names[0]).write_text(json.dumps(resolved_to_json(result.resolved), indent=2, default=str) + "\n", encoding="utf-8")
        (staging / names[1]).write_text(json.dumps(graph_to_json(result.graph), indent=2, default=str) + "\n", encoding="utf-8")
        try:
            from ..engine import write_model_files
        except ImportError as exc:  # the PyTorch back end is optional for the front end
            err_console.print(f"[yellow]weights not written: {exc}[/yellow]")
        else:
            extra = weights.tokenizer_files if weights is not None else ()
            names += [p.name for p in write_model_files(result.resolved, staging, device=device, seed=seed,
                                                        weights=weights.weights if weights is not None else None,
                                                        extra_files=extra)]
        out.mkdir(exist_ok=True)
        for name in names:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in names]
