"""Batch-1 decode speed against the memory-bandwidth bound, and int8's cost in perplexity.

For the card's spec (spec/minimind.json, dense base build, no LoRA, SDPA), in one process:

- speed: `model.generate` of 256 greedy tokens after a 16-token prompt, for fp32 weights,
  bf16 weights and int8 weights (`quant="int8"`, fp32 model), each through the eager fast
  path and through the compiled step (`compile_decode=True`); `--runs` runs, the forms
  interleaved within each run so the machine's load hits them alike; compilation is done
  (and timed) before the first run;
- the bound, measured in the same run: streaming read bandwidth (sum of a 512 MiB fp32
  tensor, best of 5) / bytes of weights one decode step reads (every packed linear: fused
  q/k/v, o, fused gate/up, down per layer, and the head; the embedding row is gathered, not
  streamed): 4 bytes per weight at fp32, 2 at bf16, the int8 pack's own bytes (int8 + scales);
- also the read bandwidth of a tensor the size of the fp32 weights, which a large last-level
  cache can hold (then the weights need not come from DRAM every token);
- quality: held-out perplexity of fp32, bf16 and int8 decoding (teacher-forced through the
  decode step, every prediction from it) on the card's spec with its seeded random weights and
  after `--train-steps` AdamW steps on a 4-successor Markov language over 512 of its token ids.

    python benchmarks/bench_decode.py                       # 3 runs, quality check included
    python benchmarks/bench_decode.py --profile fp32        # + torch.profiler table of one form
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
FORMS = {  # name -> (weights dtype, generate options)
    "fp32": (torch.float32, {}),
    "fp32 compiled": (torch.float32, {"compile_decode": True}),
    "bf16": (torch.bfloat16, {}),
    "bf16 compiled": (torch.bfloat16, {"compile_decode": True}),
    "int8": (torch.float32, {"quant": "int8"}),
    "int8 compiled": (torch.float32, {"quant": "int8", "compile_decode": True}),
}


def card_model(spec: str) -> Any:
    from minimind_spec import compile_model, load_spec, resolve

    resolved = resolve(load_spec(spec))
    resolved = dataclasses.replace(resolved, model=dataclasses.replace(resolved.model, lora=None, attention_backend="sdpa"))
    return compile_model(resolved, device="cpu", seed=0).eval()


def read_bandwidth(numel: int, repeats: int = 5) -> float:
    """Bytes/s of the fastest of `repeats` sums over an fp32 tensor of `numel` elements."""
    data = torch.ones(numel)
    data.sum()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return numel * 4 / best


def decode_tokens_per_s(model: Any, prompt: torch.Tensor, new_tokens: int, options: dict[str, Any]) -> float:
    started = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=new_tokens, **options)
    elapsed = time.perf_counter() - started
    assert out.shape[1] == prompt.shape[1] + new_tokens
    return new_tokens / elapsed


def markov_tokens(n: int, length: int, successors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(n, length) ids: each next id one of its 4 successors, with probabilities .55 .25 .15 .05."""
    probs = torch.tensor([0.55, 0.25, 0.15, 0.05])
    tokens = torch.empty(n, length, dtype=torch.long)
    tokens[:, 0] = successors[torch.randint(0, successors.shape[0], (n,), generator=generator), 0]
    picks = torch.multinomial(probs, n * length, replacement=True, generator=generator).view(n, length)
    for t in range(1, length):
        tokens[:, t] = successors[tokens[:, t - 1], picks[:, t]]
    return tokens


def decode_logits(model: Any, tokens: torch.Tensor, quant: str) -> torch.Tensor:
    """Logits (B, L - 1, V) for tokens[:, 1:], every one from the decode step (teacher-forced)."""
    from builders.inference.decode import DecodeStep

    B, L = tokens.shape
    with torch.inference_mode():
        step = DecodeStep(model, model.new_cache(B, L), None, quant="int8" if quant == "int8" else "none")
        return torch.stack([step(tokens[:, i]) for i in range(L - 1)], 1).float()


def perplexity(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    return float(torch.exp(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))))


def quality(spec: str, train_steps: int) -> list[tuple[str, dict[str, float], float]]:
    """(model, {form: perplexity}, share of positions where int8's top token is fp32's) before and after training."""
    import copy

    model = card_model(spec)
    vocab = model.model.embed_tokens.num_embeddings
    generator = torch.Generator().manual_seed(0)
    ids = torch.randperm(vocab, generator=generator)[:512]
    successors = ids[torch.randint(0, 512, (vocab, 4), generator=generator)]  # every id leads into the 512
    held_out = markov_tokens(8, 128, successors, torch.Generator().manual_seed(1))
    results = []
    for label, steps in (("random weights (seed 0)", 0), (f"after {train_steps} AdamW steps", train_steps)):
        if steps:
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
            for _ in range(steps):
                batch = markov_tokens(8, 64, successors, generator)
                model(batch, labels=batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            model.eval()
        logits = {"fp32": decode_logits(model, held_out, "none"),
                  "bf16": decode_logits(copy.deepcopy(model).to(torch.bfloat16), held_out, "none"),
                  "int8": decode_logits(model, held_out, "int8")}
        same_top = float((logits["int8"].argmax(-1) == logits["fp32"].argmax(-1)).float().mean())
        results.append((label, {form: perplexity(value, held_out) for form, value in logits.items()}, same_top))
    return results


def profile(model: Any, prompt: torch.Tensor, options: dict[str, Any]) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model.generate(prompt, max_new_tokens=16, **options)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        model.generate(prompt, max_new_tokens=128, **options)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "spec" / "minimind.json"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--forms", default=",".join(FORMS), help=f"comma-separated, of: {', '.join(FORMS)}")
    parser.add_argument("--train-steps", type=int, default=200, help="for the quality check; 0 skips the check")
    parser.add_argument("--profile", choices=list(FORMS), help="print a torch.profiler table of this form")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    forms = [name.strip() for name in args.forms.split(",")]
    unknown = [name for name in forms if name not in FORMS]
    if unknown:
        raise SystemExit(f"unknown form(s) {unknown}; expected some of {list(FORMS)}")

    from builders.inference.decode import packed_weights

    fp32 = card_model(args.spec)
    models = {torch.float32: fp32, torch.bfloat16: card_model(args.spec).to(torch.bfloat16)}
    prompt = torch.randint(0, fp32.model.embed_tokens.num_embeddings, (1, 16), generator=torch.Generator().manual_seed(0))
    linear_weights = sum(linear.out_features * linear.in_features for linear in packed_weights(fp32).linears())
    bytes_per_token = {"fp32": 4 * linear_weights, "bf16": 2 * linear_weights,
                       "int8": packed_weights(fp32, "int8").nbytes}

    where = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}"
    print(f"# {Path(args.spec).name} (dense base, no LoRA, SDPA) | {where}")
    print(f"# weights read per token: fp32 {bytes_per_token['fp32'] / 1e6:.1f} MB, bf16 {bytes_per_token['bf16'] / 1e6:.1f} MB, "
          f"int8 {bytes_per_token['int8'] / 1e6:.1f} MB ({bytes_per_token['int8'] / bytes_per_token['fp32']:.3f}x fp32)")
    for name in forms:  # warm-up: packing, kernel choice, and compilation for the compiled forms
        dtype, options = FORMS[name]
        started = time.perf_counter()
        models[dtype].generate(prompt, max_new_tokens=8, **options)
        print(f"# warm-up {name}: {time.perf_counter() - started:.1f} s")
    if args.profile:
        dtype, options = FORMS[args.profile]
        profile(models[dtype], prompt, options)

    results: dict[str, list[float]] = {name: [] for name in forms}
    bandwidths, cached = [], []
    print(f"\n| run | stream GB/s | {' | '.join(f'{name} tok/s (of bound)' for name in forms)} |")
    print(f"|---|---|{'---|' * len(forms)}")
    for run in range(1, args.runs + 1):
        bandwidth = read_bandwidth(128 * 2**20)
        cells = []
        for name in forms:
            dtype, options = FORMS[name]
            tokens_per_s = decode_tokens_per_s(models[dtype], prompt, args.new_tokens, options)
            results[name].append(tokens_per_s)
            bound = bandwidth / bytes_per_token[name.split()[0]]
            cells.append(f"{tokens_per_s:.0f} ({tokens_per_s / bound:.0%})")
        bandwidth = max(bandwidth, read_bandwidth(128 * 2**20))  # before and after the forms, the better
        bandwidths.append(bandwidth)
        cached.append(read_bandwidth(linear_weights))
        print(f"| {run} | {bandwidth / 1e9:.1f} | {' | '.join(cells)} |", flush=True)

    bandwidth = statistics.median(bandwidths)
    print(f"\nstreaming read bandwidth (512 MiB), median of runs: {bandwidth / 1e9:.1f} GB/s; a read of "
          f"{4 * linear_weights / 1e6:.0f} MB (the fp32 weights' size, cache-resident here): "
          f"{statistics.median(cached) / 1e9:.1f} GB/s")
    print("\n| form | bound tok/s | median tok/s | best tok/s | median / bound |")
    print("|---|---|---|---|---|")
    for name in forms:
        bound = bandwidth / bytes_per_token[name.split()[0]]
        median = statistics.median(results[name])
        print(f"| {name} | {bound:.0f} | {median:.0f} | {max(results[name]):.0f} | {median / bound:.0%} |")

    if args.train_steps:
        started = time.perf_counter()
        rows = quality(args.spec, args.train_steps)
        print(f"\nquality ({time.perf_counter() - started:.0f} s): held-out perplexity, 8 x 128 tokens, "
              "teacher-forced through the decode step")
        print("| model | fp32 | bf16 | int8 | int8 / fp32 - 1 | int8's top token = fp32's |")
        print("|---|---|---|---|---|---|")
        for label, values, same_top in rows:
            delta = values["int8"] / values["fp32"] - 1
            print(f"| {label} | {values['fp32']:.3f} | {values['bf16']:.3f} | {values['int8']:.3f} | "
                  f"{delta:+.3%} | {same_top:.1%} |")


if __name__ == "__main__":
    main()
