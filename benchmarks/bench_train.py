"""Benchmark the training engine (`minimind_spec/engine/train`, `minimind_spec/engine/data`).

Three modes, each printing a markdown table headed by the date, the machine and the command:

- `packing`: SFT throughput with packed rows against one padded sample per row (`packed=False`,
  how MiniMind's own trainer batches). The script writes SFT-shaped data (deterministic seed):
  many short conversations and a long tail (assistant answers of log-normally distributed
  length, some multi-turn, some with reasoning), trains a byte-level BPE tokenizer of 512 ids
  on it (the vocab of examples/demo/tiny.json) and uses the tiny spec with `seq_len` set to
  `--seq-len`. Both layouts train the same number of optimizer steps through `train_stage`, from
  the same cache; useful tokens/s = the non-padding tokens the loop saw (the cumulative
  `tokens` of the last metrics.jsonl row) / the wall time of `train_stage`.
- `overhead`: the engine's cost over a bare training step on the same model, batch shape and
  precision. Bare: one batch collated once, then forward, `causal_lm_loss`, backward,
  `clip_grad_norm_`, AdamW step, `zero_grad`. Engine: `train_stage` (progress off, no
  evaluation, a checkpoint only at the last step) on pretraining rows of the same shape.
  Overhead = engine time / bare time - 1, for the whole `train_stage` call (optimizer set-up and
  the final checkpoint included) and for the loop's own per-step times (metrics.jsonl).
- `memory`: peak RSS of `build_token_cache` on pretraining JSONL files of 10 MB and `--big-mb`
  MB, each built in a fresh subprocess: the builder's own high-water mark (/proc VmHWM) and the
  largest tokenizer worker's (`getrusage(RUSAGE_CHILDREN)` inside the subprocess).

Timed runs of the two sides of a comparison alternate, `--repeats` times, and every table
gives each repetition and the median with its range: the machine is shared and noisy, so
read the ratios, not the absolute figures. Nothing here is asserted by the test suite.

    python benchmarks/bench_train.py packing
    python benchmarks/bench_train.py overhead
    python benchmarks/bench_train.py memory [--big-mb 1024]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

from make_demo_data import sentence  # noqa: E402  (examples/make_demo_data.py: the demo's word world)

TINY_SPEC = ROOT / "examples" / "demo" / "tiny.json"
VOCAB = 512
NO_SAVE = 10**9  # save_every: a checkpoint only at the last step


# ---------------------------------------------------------------- report helpers


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?") if Path("/proc/cpuinfo").is_file() else "?"
    return (f"{platform.machine()}, {cpu}, {os.cpu_count()} CPU threads (torch uses {torch.get_num_threads()}), "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def print_header(title: str) -> None:
    print(f"### {title}\n")
    print(f"- date: {datetime.date.today().isoformat()}")
    print(f"- machine: {machine()}")
    print(f"- command: `{' '.join(shlex.quote(a) for a in ['python', *sys.argv])}`\n")


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """Median and range of repeated measurements."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def table(header: list[str], rows: list[list[Any]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()


# ---------------------------------------------------------------- data


def sentences(rng: random.Random, median: float, sigma: float, cap: int) -> str:
    """Demo-world sentences, a log-normally distributed number of them (many few, a long tail)."""
    count = min(cap, max(1, round(rng.lognormvariate(math.log(median), sigma))))
    return " ".join(sentence(rng) for _ in range(count))


def conversation(rng: random.Random) -> dict[str, Any]:
    """One SFT record: optional system prompt, 1-3 exchanges, answers mostly short, some long."""
    turns: list[dict[str, str]] = []
    if rng.random() < 0.2:
        turns.append({"role": "system", "content": "you are a helpful assistant who knows the village."})
    exchanges = rng.choices([1, 2, 3], weights=[0.75, 0.18, 0.07])[0]
    for _ in range(exchanges):
        turns.append({"role": "user", "content": sentences(rng, 1.5, 0.6, 6).replace(".", "?", 1)})
        answer = {"role": "assistant", "content": sentences(rng, 3.0, 1.0, 60)}
        if rng.random() < 0.2:
            answer["reasoning_content"] = sentences(rng, 2.0, 0.8, 20)
        turns.append(answer)
    return {"conversations": turns}


def write_sft(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(count):
            out.write(json.dumps(conversation(rng)) + "\n")
    return path


def write_pretrain(path: Path, megabytes: float, seed: int, pool_size: int = 20_000) -> Path:
    """Pretraining JSONL of about `megabytes` MB: documents drawn (seeded) from a pool of
    `pool_size` generated ones, so even a GB writes in seconds."""
    rng = random.Random(seed)
    pool = [(json.dumps({"text": sentences(rng, 6.0, 0.8, 200)}) + "\n").encode() for _ in range(pool_size)]
    target, written = int(megabytes * 1e6), 0
    with open(path, "wb") as out:
        while written < target:
            block = b"".join(rng.choices(pool, k=1000))
            out.write(block)
            written += len(block)
    return path


def head_bytes(path: Path, out: Path, limit: int = 2_000_000) -> Path:
    """The first whole lines of `path` up to `limit` bytes (a tokenizer corpus)."""
    with open(path, "rb") as src, open(out, "wb") as dst:
        size = 0
        for line in src:
            if size + len(line) > limit:
                break
            dst.write(line)
            size += len(line)
    return out


def tokenizer_for(corpus: Path, out_dir: Path) -> Any:
    from minimind_spec.engine.data.tokenizer import train_tokenizer

    return train_tokenizer([corpus], VOCAB, out_dir)


# ---------------------------------------------------------------- spec, model, loop


def spec_with(workdir: Path, seq_len: int | None, batch_size: int | None) -> Path:
    """examples/demo/tiny.json with seq_len / batch_size replaced, written to `workdir`."""
    spec = json.loads(TINY_SPEC.read_text())
    if seq_len is not None:
        spec["hyperparams"]["seq_len"] = seq_len
    if batch_size is not None:
        spec["optim"]["batch_size"] = batch_size
    path = workdir / "spec.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


@dataclass
class Setup:
    resolved: Any
    graph: Any
    stage: Any  # StagePlan of the benchmarked stage


def plan_stage(spec_path: Path, kind: str, data: Path, bf16: bool, pack: bool = True, device: str = "cpu") -> Setup:
    """The stage as `minimind-spec train` would plan it (batch, seq_len, optimizer settings, precision)."""
    from minimind_spec import build_graph, load_spec, resolve
    from minimind_spec.config import TrainingOverrides
    from minimind_spec.engine.train.devices import device_facts
    from minimind_spec.plan import PlanInputs, build_plan
    from minimind_spec.stages import StageKind

    resolved = resolve(load_spec(spec_path), overrides=TrainingOverrides(bf16=bf16 or None))
    graph = build_graph(resolved)
    plan = build_plan(resolved, PlanInputs(data={StageKind(kind): data}, stages=(StageKind(kind),), tokenizer_vocab=VOCAB,
                                           pack=pack, device=device_facts(device)), graph)
    return Setup(resolved, graph, plan.stages[0])


def new_model(setup: Setup, seed: int, device: str = "cpu") -> Any:
    from minimind_spec.engine import compile_graph

    return compile_graph(setup.graph, device=device, seed=seed)


def stage_parts(setup: Setup, cache: Any, tokenizer: Any, device: str = "cpu") -> Any:
    """The stage's rows and objective from the stage registry's factory, as a run builds them."""
    from minimind_spec.engine.train.precision import PrecisionRuntime
    from minimind_spec.engine.train.stages import StageInputs, build_stage

    return build_stage(StageInputs(setup.stage, new_model(setup, 0, device), cache, tokenizer.pad_id, device,
                                   PrecisionRuntime(setup.stage.precision, device), setup.resolved.model.moe is not None))


@dataclass
class EngineRun:
    seconds: float  # the whole train_stage call
    loop_seconds: float  # sum of the loop's per-step times (metrics.jsonl: tokens / tokens_per_s)
    tokens: int  # non-padding tokens trained on (the last row's cumulative `tokens`)
    steps: int


def time_engine(setup: Setup, parts: Any, steps: int, seed: int, workdir: Path, device: str = "cpu",
                compile_model: bool = False) -> EngineRun:
    """train_stage on a fresh model in a fresh run directory (no evaluation, a checkpoint at the last step only), timed."""
    from minimind_spec.engine.train.loop import LoopSettings, train_stage
    from minimind_spec.engine.train.precision import PrecisionRuntime
    from minimind_spec.metrics import METRICS_FILE, read_metrics

    model = new_model(setup, seed, device)
    run_dir = Path(tempfile.mkdtemp(prefix="run.", dir=workdir))
    stage = replace(setup.stage, max_steps=steps)
    settings = LoopSettings(run_dir, device, seed, eval_every=0, save_every=NO_SAVE, progress=False, compile=compile_model)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    started = time.perf_counter()
    result = train_stage(stage, parts, model, setup.graph, settings, PrecisionRuntime(stage.precision, device))
    seconds = time.perf_counter() - started
    rows = read_metrics(run_dir / METRICS_FILE)
    shutil.rmtree(run_dir)
    step_tokens = [rows[0].tokens] + [b.tokens - a.tokens for a, b in zip(rows, rows[1:])]
    loop_seconds = sum(t / row.tokens_per_s for t, row in zip(step_tokens, rows))
    return EngineRun(seconds, loop_seconds, rows[-1].tokens, result.steps)


def interleave(repeats: int, sides: dict[str, Callable[[], Any]]) -> list[dict[str, Any]]:
    """Run every side once per repetition, alternating which goes first."""
    results = []
    for rep in range(repeats):
        names = list(sides) if rep % 2 == 0 else list(reversed(sides))
        results.append({name: sides[name]() for name in names})
    return results


# ---------------------------------------------------------------- mode: packing


def length_summary(lengths: Any, seq_len: int) -> str:
    import numpy as np

    q = np.percentile(lengths, [50, 90, 99])
    return (f"{len(lengths):,} conversations, tokens per conversation: median {q[0]:.0f}, mean {lengths.mean():.0f}, "
            f"p90 {q[1]:.0f}, p99 {q[2]:.0f}, max {lengths.max()} (cut at seq_len {seq_len})")


def run_packing(args: argparse.Namespace) -> None:
    from minimind_spec.engine.data.token_cache import build_token_cache

    workdir = args.workdir
    data = write_sft(workdir / "sft.jsonl", args.conversations, args.seed)
    tokenizer = tokenizer_for(data, workdir / "tokenizer")
    spec = spec_with(workdir, args.seq_len, args.batch_size)
    setups = {name: plan_stage(spec, "sft", data, args.bf16, pack=packed) for name, packed in (("packed", True), ("no-pack", False))}
    stage = setups["packed"].stage
    cache = build_token_cache(data, tokenizer, "conversation", workdir / "cache", max_length=stage.seq_len)
    parts = {name: stage_parts(setup, cache, tokenizer) for name, setup in setups.items()}
    time_engine(setups["packed"], parts["packed"], 2, args.seed, workdir)  # warm-up: kernels, allocator
    runs = interleave(args.repeats, {name: (lambda n=name: time_engine(setups[n], parts[n], args.steps, args.seed, workdir))
                                     for name in setups})

    print_header("Training engine: packed SFT rows (each sample isolated) vs one padded sample per row")
    print(f"- data: {length_summary(cache.lengths, stage.seq_len)}; {cache.meta.truncated} cut")
    print(f"- model: {TINY_SPEC.relative_to(ROOT)} with seq_len {stage.seq_len}, vocab {VOCAB}, "
          f"{stage.total_params:,} parameters, {stage.precision}; batch {stage.batch_size} rows x {stage.seq_len} tokens, "
          f"{args.steps} optimizer steps per run, {args.repeats} runs each (alternating)")
    for name, part in parts.items():
        print(f"- {name}: {part.data.summary}")
    print("- packed rows attend block-diagonally (each sample to itself, positions from 0): SDPA with a (B, 1, T, T) mask "
          "on the CPU; a row of one sample needs no mask\n")
    useful = {name: [r[name].tokens / r[name].seconds for r in runs] for name in ("packed", "no-pack")}
    step_s = {name: [r[name].seconds / r[name].steps for r in runs] for name in ("packed", "no-pack")}
    ratios = [p / n for p, n in zip(useful["packed"], useful["no-pack"])]
    table(["run", "packed useful tok/s", "no-pack useful tok/s", "packed / no-pack", "packed s/step", "no-pack s/step"],
          [[i + 1, f"{useful['packed'][i]:,.0f}", f"{useful['no-pack'][i]:,.0f}", f"{ratios[i]:.2f}x",
            f"{step_s['packed'][i]:.3f}", f"{step_s['no-pack'][i]:.3f}"] for i in range(args.repeats)]
          + [["median (range)", spread(useful["packed"], "{:,.0f}"), spread(useful["no-pack"], "{:,.0f}"),
              spread(ratios) + "x", spread(step_s["packed"], "{:.3f}"), spread(step_s["no-pack"], "{:.3f}")]])


# ---------------------------------------------------------------- mode: overhead


def time_bare(setup: Setup, batch: Any, steps: int, seed: int) -> float:
    """The bare step on a fresh model: fixed batch, forward, loss, backward, clip, AdamW, zero_grad."""
    import torch
    from contextlib import nullcontext

    from builders.techniques import causal_lm_loss

    stage = setup.stage
    model = new_model(setup, seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage.lr, betas=stage.betas, weight_decay=stage.weight_decay)
    clip = stage.grad_clip if stage.grad_clip is not None else float("inf")
    dtype = torch.bfloat16 if setup.resolved.model.dtype == "bfloat16" else None
    started = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=dtype) if dtype is not None else nullcontext():
            loss = causal_lm_loss(model(batch.input_ids).logits, batch.labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def run_overhead(args: argparse.Namespace) -> None:
    from minimind_spec.engine.data.token_cache import build_token_cache

    workdir = args.workdir
    data = write_pretrain(workdir / "pretrain.jsonl", args.data_mb, args.seed)
    tokenizer = tokenizer_for(head_bytes(data, workdir / "corpus.jsonl"), workdir / "tokenizer")
    setup = plan_stage(spec_with(workdir, args.seq_len, args.batch_size), "pretrain", data, args.bf16)
    stage = setup.stage
    cache = build_token_cache(data, tokenizer, "pretrain", workdir / "cache")
    parts = stage_parts(setup, cache, tokenizer)
    batch = parts.data.batch(parts.data.train_rows[:stage.batch_size].tolist(), "cpu")
    time_bare(setup, batch, 3, args.seed)  # warm-up: kernels, allocator
    runs = interleave(args.repeats, {"bare": lambda: time_bare(setup, batch, args.steps, args.seed),
                                     "engine": lambda: time_engine(setup, parts, args.steps, args.seed, workdir)})

    print_header("Training engine: train_stage vs a bare training step")
    print(f"- model: {TINY_SPEC.relative_to(ROOT)} with seq_len {stage.seq_len}, vocab {VOCAB}, "
          f"{stage.total_params:,} parameters, {stage.precision}; batch {stage.batch_size} x {stage.seq_len} "
          f"(micro-batch {stage.micro_batch}); {args.steps} optimizer steps per run, {args.repeats} runs each (alternating)")
    print(f"- engine data: {cache.meta.tokens:,} pretraining tokens, {len(parts.data.train_rows):,} training rows")
    print("- engine (call): the whole train_stage call, optimizer set-up and final checkpoint included; "
          "engine (loop): the sum of its per-step times in metrics.jsonl\n")
    bare = [args.steps / r["bare"] for r in runs]
    call = [r["engine"].steps / r["engine"].seconds for r in runs]
    loop = [r["engine"].steps / r["engine"].loop_seconds for r in runs]
    over_call = [100 * (r["engine"].seconds / r["bare"] - 1) for r in runs]
    over_loop = [100 * (r["engine"].loop_seconds / r["bare"] - 1) for r in runs]
    table(["run", "bare steps/s", "engine (call) steps/s", "engine (loop) steps/s", "overhead (call)", "overhead (loop)"],
          [[i + 1, f"{bare[i]:.2f}", f"{call[i]:.2f}", f"{loop[i]:.2f}", f"{over_call[i]:+.1f}%", f"{over_loop[i]:+.1f}%"]
           for i in range(args.repeats)]
          + [["median (range)", spread(bare), spread(call), spread(loop), spread(over_call, "{:+.1f}") + "%",
              spread(over_loop, "{:+.1f}") + "%"]])


# ---------------------------------------------------------------- mode: memory


def proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_child(data: str, tokenizer_dir: str, cache_dir: str) -> None:
    """In a fresh process: build the cache of `data`, print what it cost as one JSON line."""
    from minimind_spec.engine.data.token_cache import build_token_cache
    from minimind_spec.engine.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    before = proc_status_kb("VmRSS")
    started = time.perf_counter()
    cache = build_token_cache(data, tokenizer, "pretrain", cache_dir)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "samples": cache.meta.samples, "tokens": cache.meta.tokens,
                      "rss_before_mb": before / 1024, "peak_mb": proc_status_kb("VmHWM") / 1024,
                      "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def measure_build(data: Path, tokenizer_dir: Path, cache_dir: Path) -> dict[str, float]:
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_train; "
            f"bench_train.memory_child({str(data)!r}, {str(tokenizer_dir)!r}, {str(cache_dir)!r})")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    shutil.rmtree(cache_dir, ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_memory(args: argparse.Namespace) -> None:
    workdir = args.workdir
    sizes = [args.small_mb, args.big_mb]
    corpus = head_bytes(write_pretrain(workdir / "corpus-src.jsonl", 2, args.seed), workdir / "corpus.jsonl")
    tokenizer_dir = workdir / "tokenizer"
    tokenizer_for(corpus, tokenizer_dir)
    rows = []
    for megabytes in sizes:
        data = write_pretrain(workdir / f"pretrain-{megabytes}mb.jsonl", megabytes, args.seed)
        result = measure_build(data, tokenizer_dir, workdir / "cache")
        result["mb"] = data.stat().st_size / 1e6
        data.unlink()
        rows.append(result)

    print_header("Token cache: peak memory of build_token_cache against the data size")
    print("- pretraining JSONL (demo-world documents, median ~6 sentences), vocab-512 BPE tokenizer; "
          "each build in a fresh subprocess with the default workers (min(4, CPUs) spawned processes)")
    print("- builder peak: the building process's VmHWM; RSS before: after imports and tokenizer load; "
          "worker peak: the largest worker's max RSS (getrusage RUSAGE_CHILDREN in the subprocess)\n")
    table(["data MB", "samples", "tokens", "build s", "MB/s", "builder RSS before MB", "builder peak MB",
           "builder growth MB", "worker peak MB"],
          [[f"{r['mb']:,.0f}", f"{r['samples']:,}", f"{r['tokens']:,}", f"{r['seconds']:.1f}", f"{r['mb'] / r['seconds']:.2f}",
            f"{r['rss_before_mb']:.0f}", f"{r['peak_mb']:.0f}", f"{r['peak_mb'] - r['rss_before_mb']:.0f}",
            f"{r['worker_peak_mb']:.0f}"] for r in rows])


# ---------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = main.add_subparsers(dest="mode", required=True, metavar="MODE")

    def mode(name: str, help_text: str, steps: int | None = None) -> argparse.ArgumentParser:
        sub = modes.add_parser(name, help=help_text, description=help_text,
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        sub.add_argument("--seed", type=int, default=0, help="seed of the generated data and the model weights")
        sub.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temporary one, removed)")
        if steps is not None:
            sub.add_argument("--steps", type=int, default=steps, help="optimizer steps per timed run")
            sub.add_argument("--repeats", type=int, default=3, help="timed runs of each side, alternating")
            sub.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (default fp32, the spec's dtype)")
        return sub

    packing = mode("packing", "useful (non-padding) tokens/s of SFT with packed rows vs one padded sample per row", steps=20)
    packing.add_argument("--conversations", type=int, default=4000, help="SFT records generated")
    packing.add_argument("--seq-len", type=int, default=512, help="row length (the spec's seq_len)")
    packing.add_argument("--batch-size", type=int, default=None, help="rows per step (default: the spec's, 16)")

    overhead = mode("overhead", "steps/s of the engine's train_stage vs a bare forward/backward/AdamW loop", steps=60)
    overhead.add_argument("--data-mb", type=float, default=4, help="pretraining data generated for the engine's rows")
    overhead.add_argument("--seq-len", type=int, default=None, help="row length (default: the spec's, 128)")
    overhead.add_argument("--batch-size", type=int, default=None, help="rows per step (default: the spec's, 16)")

    memory = mode("memory", "peak RSS of build_token_cache on a small and a big pretraining file, fresh process each")
    memory.add_argument("--small-mb", type=int, default=10, help="size of the small file")
    memory.add_argument("--big-mb", type=int, default=200, help="size of the big file (up to 1024)")
    return main


def main() -> None:
    args = parser().parse_args()
    if args.mode == "memory" and not 0 < args.big_mb <= 1024:
        raise SystemExit("--big-mb must be in 1..1024")
    temporary = args.workdir is None
    args.workdir = Path(tempfile.mkdtemp(prefix="bench_train.")) if temporary else args.workdir
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        {"packing": run_packing, "overhead": run_overhead, "memory": run_memory}[args.mode](args)
    finally:
        if temporary:
            shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
