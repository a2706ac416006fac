"""Benchmark the compiled model side by side with Hugging Face `LlamaForCausalLM` of the
same config and weights.

Measures, for the card's spec (spec/minimind.json, dense base build):
- training step tokens/s: forward + backward + AdamW, B=4, T=512, fp32 and bf16 autocast;
- batch-1 greedy decode tokens/s for 256 new tokens (ours: static KV cache; HF: `generate`);
- peak memory of each measurement (CPU: max RSS of a fresh worker process; CUDA: max allocated).
Each (implementation, measurement) runs in its own subprocess so peak memory is its own.
Both models get the same weights; LoRA is left out so both do the same work (the card
trains adapters only, which would make our step cheaper for the wrong reason).

    python benchmarks/bench_model.py                  # CPU, full table
    python benchmarks/bench_model.py --device cuda    # + MFU, bf16, flash-attn2 (SDPA if not installed)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def bench_resolved(spec_path: str, device: str) -> Any:
    """The card's spec as benchmarked: dense base build, LoRA left out, SDPA (flash-attn2 on CUDA)."""
    from minimind_spec import load_spec, resolve

    resolved = resolve(load_spec(spec_path))
    backend = "flash-attn2" if device == "cuda" else "sdpa"
    return dataclasses.replace(resolved, model=dataclasses.replace(resolved.model, lora=None, attention_backend=backend))


def write_weights(spec_path: str, path: Path) -> None:
    """Seeded weights both implementations load, so each worker holds one model plus one transient copy."""
    from safetensors.torch import save_file

    from minimind_spec import compile_model

    resolved = bench_resolved(spec_path, "cpu")
    state = {k: v.detach().contiguous() for k, v in compile_model(resolved, device="cpu", seed=0).state_dict().items()}
    if resolved.model.tie_word_embeddings:
        state.pop("lm_head.weight")  # the same tensor as model.embed_tokens.weight
    save_file(state, str(path))


def load_weights(model: Any, weights: str, device: str, tied: bool) -> None:
    from safetensors.torch import load_file

    state = load_file(weights, device=device)
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = {"lm_head.weight"} if tied else set()
    if unexpected or set(missing) - allowed:
        raise SystemExit(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    del state


def build(impl: str, device: str, spec_path: str, weights: str | None = None) -> tuple[Any, Any]:
    """One implementation's model with the shared seeded weights (none on meta)."""
    import torch

    from minimind_spec import compile_model

    resolved = bench_resolved(spec_path, device)
    model_config = resolved.model
    if impl == "ours":
        ours = compile_model(resolved, device=device, seed=0)
        if weights is not None:
            load_weights(ours, weights, device, model_config.tie_word_embeddings)
        return ours, model_config
    import transformers

    c = model_config
    config = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.mlp_hidden, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim, hidden_act="silu",
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.norm_eps,
        tie_word_embeddings=c.tie_word_embeddings, rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
    )
    config._attn_implementation = "sdpa"
    hf = transformers.LlamaForCausalLM(config).to(device)
    if weights is not None:
        load_weights(hf, weights, device, model_config.tie_word_embeddings)
    hf.tie_weights()
    torch.manual_seed(0)
    return hf, model_config


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def train_flops_per_token(model: Any, c: Any, seq: int) -> float:
    """6 N per token for the matmuls (N excludes the input embedding lookup) + 12 L d T for attention."""
    n = sum(p.numel() for p in model.parameters()) - (0 if c.tie_word_embeddings else c.vocab_size * c.d_model)
    return 6 * n + 12 * c.n_layers * c.d_model * seq


def measure_train(impl: str, device: str, spec: str, precision: str, batch: int, seq: int, steps: int, weights: str) -> dict[str, float]:
    import torch

    model, c = build(impl, device, spec, weights)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    tokens = torch.randint(0, c.vocab_size, (batch, seq), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        with autocast:
            out = model(input_ids=tokens, labels=tokens)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, AdamW state
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    elapsed = time.perf_counter() - started
    result = {"tokens_per_s": batch * seq * steps / elapsed}
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        if peak is not None and precision == "bf16":
            result["mfu"] = result["tokens_per_s"] * train_flops_per_token(model, c, seq) / peak
    return result


def measure_decode(impl: str, device: str, spec: str, precision: str, new_tokens: int, weights: str) -> dict[str, float]:
    import torch

    model, c = build(impl, device, spec, weights)
    model.eval()
    if precision == "bf16":
        model.to(torch.bfloat16)
    prompt = torch.randint(0, c.vocab_size, (1, 16), device=device)

    def run(n: int) -> Any:
        if impl == "ours":
            return model.generate(prompt, max_new_tokens=n)
        import transformers

        config = transformers.GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
        with torch.inference_mode():
            return model.generate(prompt, generation_config=config)

    run(8)  # warm-up
    sync(device)
    started = time.perf_counter()
    out = run(new_tokens)
    sync(device)
    elapsed = time.perf_counter() - started
    assert out.shape[1] == 16 + new_tokens
    return {"tokens_per_s": new_tokens / elapsed}


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(0)
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    if args.measure == "train":
        result = measure_train(args.impl, args.device, args.spec, args.precision, args.batch, args.seq, args.steps, args.weights)
    else:
        result = measure_decode(args.impl, args.device, args.spec, args.precision, args.new_tokens, args.weights)
    if args.device == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def run_worker(args: argparse.Namespace, impl: str, measure: str, precision: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--measure", measure, "--precision", precision,
           "--device", args.device, "--spec", args.spec, "--batch", str(args.batch), "--seq", str(args.seq),
           "--steps", str(args.steps), "--new-tokens", str(args.new_tokens), "--weights", args.weights]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"worker failed: {impl} {measure} {precision}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def memory_bandwidth() -> float:
    """Bytes/s of a streaming read of a 512 MiB tensor (the bound for batch-1 decoding)."""
    import torch

    data = torch.ones(128 * 2**20)
    data.sum()
    started = time.perf_counter()
    for _ in range(5):
        data.sum()
    return 5 * data.numel() * 4 / (time.perf_counter() - started)


def weight_bytes(spec: str) -> int:
    """fp32 bytes of the weights one decode step reads (the embedding row lookup excluded, the head included)."""
    model, c = build("ours", "meta", spec)
    return 4 * sum(p.numel() for p in model.parameters()) - (0 if c.tie_word_embeddings else 4 * c.vocab_size * c.d_model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--spec", default=str(ROOT / "spec" / "minimind.json"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up step)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["train", "decode"], help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--write-weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_weights:
        write_weights(args.spec, Path(args.write_weights))
        return
    if args.worker:
        worker(args)
        return

    import torch
    import transformers

    if args.device == "cuda":
        where = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
        try:
            import flash_attn  # noqa: F401
            where += ", flash-attn2"
        except Exception:  # noqa: BLE001
            where += ", flash_attn not installed: SDPA used (one-time notice)"
    else:
        where = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}"
    print(f"# {Path(args.spec).name} (dense base, no LoRA) | {where} | transformers {transformers.__version__}")
    rows = [("train fp32", "train", "fp32"), ("train bf16 autocast", "train", "bf16"),
            ("decode fp32 (B=1, 256 new)", "decode", "fp32"), ("decode bf16 weights (B=1, 256 new)", "decode", "bf16")]
    print(f"| measurement | ours tok/s | HF tok/s | ours/HF | ours peak MB | HF peak MB |{' ours MFU |' if args.device == 'cuda' else ''}")
    print(f"|---|---|---|---|---|---|{'---|' if args.device == 'cuda' else ''}")
    # the shared weights are written by a child process: the parent's RSS high-water mark would
    # otherwise carry into every worker it starts
    tmp = tempfile.TemporaryDirectory()
    args.weights = str(Path(tmp.name) / "weights.safetensors")
    subprocess.run([sys.executable, __file__, "--spec", args.spec, "--write-weights", args.weights], check=True, cwd=ROOT)
    for label, measure, precision in rows:
        ours = run_worker(args, "ours", measure, precision)
        hf = run_worker(args, "hf", measure, precision)
        line = (f"| {label} | {ours['tokens_per_s']:.0f} | {hf['tokens_per_s']:.0f} | "
                f"{ours['tokens_per_s'] / hf['tokens_per_s']:.2f}x | {ours['peak_mb']:.0f} | {hf['peak_mb']:.0f} |")
        if args.device == "cuda":
            line += f" {ours['mfu'] * 100:.1f}% |" if "mfu" in ours else " - |"
        print(line, flush=True)
    if args.device == "cpu":  # after the workers: a fork inherits the parent's RSS high-water mark
        bandwidth = memory_bandwidth()
        weights = weight_bytes(args.spec)
        print(f"# streaming read bandwidth {bandwidth / 1e9:.1f} GB/s -> decode bound (fp32 weights read once per token): "
              f"fp32 {bandwidth / weights:.0f} tok/s, bf16 {2 * bandwidth / weights:.0f} tok/s")


if __name__ == "__main__":
    main()
