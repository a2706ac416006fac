"""Benchmark `minimind-spec serve` against one-request-at-a-time serving, side by side in one run.

The card's spec (spec/minimind.json, dense base build, seeded weights) with MiniMind's own
tokenizer (../shared/minimind, vocab 6400), served three ways on loopback:

- **ours**: `minimind-spec serve --max-batch 16`: continuous batching, every decode step runs all
  active requests together;
- **thread per request**: the design of MiniMind's `scripts/serve_openai_api.py` written out
  here (its script needs its own model class and downloads): a FastAPI server that runs each
  request's Hugging Face `generate` (the exported `LlamaForCausalLM`, same weights) in its own
  thread with a streamer, no batching;
- **HF one at a time**: `generate` on each request in turn, no server (the sequential floor).

For 1, 4 and 16 concurrent streaming clients (each asks for `--max-tokens` greedy tokens of a
different prompt): aggregate tokens/s, time to first token (median and p95) and per-request
tokens/s. Every greedy answer of ours is compared with `generate` on its prompt alone.

    python benchmarks/bench_serve.py [--max-tokens 64] [--clients 1 4 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MINIMIND = ROOT.parent / "shared" / "minimind"
PROMPTS = [f"Tell me about item {i}: what is {i} plus {i + 3}, and why?" for i in range(16)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, process: subprocess.Popen[bytes] | None = None, seconds: float = 120) -> None:
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def prepare(work: Path) -> tuple[Path, Path]:
    """Our model directory (seeded card weights + MiniMind's tokenizer) and its Llama export."""
    spec = work / "card.json"
    from minimind_spec.loader import load_document

    data = load_document(ROOT / "spec" / "minimind.json").data  # the card's text, trailing comma included
    data["techniques"]["lora"]["enabled"] = False  # the dense model both sides serve
    spec.write_text(json.dumps(data))
    ours = work / "ours"
    run = [sys.executable, "-m", "minimind_spec"]
    subprocess.run([*run, "build", str(spec), "--out", str(ours), "--seed", "0"], check=True, capture_output=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(MINIMIND / name, ours / name)
    subprocess.run([*run, "export", str(ours), "--out", str(work / "hf")], check=True, capture_output=True)
    return ours, work / "hf"


async def one_client(client: Any, url: str, prompt: str, max_tokens: int, model: str) -> dict[str, Any]:
    started = time.perf_counter()
    first = None
    text = []
    tokens = 0
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True, "temperature": 0,
            "max_tokens": max_tokens, "stream_options": {"include_usage": True}}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                piece = choice["delta"].get("content")
                if piece:
                    first = first or time.perf_counter()
                    text.append(piece)
    done = time.perf_counter()
    tokens = tokens or len(text)
    return {"ttft": (first or done) - started, "seconds": done - started, "tokens": tokens, "text": "".join(text)}


async def load(url: str, clients: int, max_tokens: int, model: str) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(one_client(client, url, PROMPTS[i % len(PROMPTS)], max_tokens, model)
                                         for i in range(clients)))
        wall = time.perf_counter() - started
    ttfts = sorted(r["ttft"] for r in results)
    return {"aggregate": sum(r["tokens"] for r in results) / wall, "ttft_median": statistics.median(ttfts),
            "ttft_p95": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
            "per_request": statistics.median(r["tokens"] / r["seconds"] for r in results), "results": results}


def thread_per_request_app(hf_dir: Path) -> Any:
    """MiniMind's serving design: each request generates in its own thread through a streamer; no batching."""
    import torch
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> StreamingResponse:
        prompt = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        worker = threading.Thread(target=model.generate, kwargs=dict(
            **inputs, max_new_tokens=body["max_tokens"], do_sample=False, streamer=streamer,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=0))
        worker.start()

        def events() -> Any:
            for piece in streamer:
                if piece:
                    yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": piece}}]}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def hf_sequential(hf_dir: Path, clients: int, max_tokens: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokens, started, per = 0, time.perf_counter(), []
    for i in range(clients):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                               add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        one = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=eos, pad_token_id=0)
        new = out.shape[1] - ids["input_ids"].shape[1]
        tokens += new
        per.append(new / (time.perf_counter() - one))
    return {"aggregate": tokens / (time.perf_counter() - started), "per_request": statistics.median(per)}


def solo_texts(ours_dir: Path, max_tokens: int) -> dict[str, str]:
    """Each prompt's greedy answer from `generate` alone (the reference for the batched answers)."""
    import torch

    from minimind_spec.model_files import find_model
    from minimind_spec.engine.serve.model import chat_prompt, load_served

    served = load_served(find_model(ours_dir), "bench")
    out = {}
    for prompt in PROMPTS:
        ids = chat_prompt(served.tokenizer, [{"role": "user", "content": prompt}])
        with torch.no_grad():
            tokens = served.model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, temperature=0.0,
                                           eos_token_id=served.tokenizer.eos_id)[0, len(ids):].tolist()
        if served.tokenizer.eos_id in tokens:
            tokens = tokens[:tokens.index(served.tokenizer.eos_id)]
        out[prompt] = served.tokenizer.decode(tokens)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    import torch
    import uvicorn

    print(f"# {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {args.max_tokens} greedy tokens per request")
    with tempfile.TemporaryDirectory() as scratch:
        ours_dir, hf_dir = prepare(Path(scratch))
        reference = solo_texts(ours_dir, args.max_tokens)
        rows: list[tuple[str, int, dict[str, Any]]] = []
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "minimind_spec", "serve", str(ours_dir), "--port", str(port),
                                   "--max-batch", str(max(args.clients)), "--name", "bench", "--max-len", "512"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        mismatches = 0
        try:
            wait_up(f"http://127.0.0.1:{port}/health", server)
            for clients in args.clients:
                result = asyncio.run(load(f"http://127.0.0.1:{port}", clients, args.max_tokens, "bench"))
                mismatches += sum(r["text"] != reference[PROMPTS[i % len(PROMPTS)]] for i, r in enumerate(result["results"]))
                rows.append(("ours (continuous batching)", clients, result))
        finally:
            server.terminate()
            server.wait()
        port = free_port()
        baseline = uvicorn.Server(uvicorn.Config(thread_per_request_app(hf_dir), host="127.0.0.1", port=port,
                                                 log_level="warning"))
        thread = threading.Thread(target=baseline.run, daemon=True)
        thread.start()
        wait_up(f"http://127.0.0.1:{port}/health")
        for clients in args.clients:
            rows.append(("thread per request (HF)", clients, asyncio.run(load(f"http://127.0.0.1:{port}", clients,
                                                                              args.max_tokens, "bench"))))
        baseline.should_exit = True
        thread.join(timeout=10)
        sequential = {clients: hf_sequential(hf_dir, clients, args.max_tokens) for clients in args.clients}
    print("\n| server | clients | aggregate tok/s | TTFT median s | TTFT p95 s | per-request tok/s |")
    print("|---|---|---|---|---|---|")
    for name, clients, r in rows:
        print(f"| {name} | {clients} | {r['aggregate']:.0f} | {r['ttft_median']:.2f} | {r['ttft_p95']:.2f} | {r['per_request']:.0f} |")
    for clients, r in sequential.items():
        print(f"| HF generate, one at a time | {clients} | {r['aggregate']:.0f} | - | - | {r['per_request']:.0f} |")
    ours_max = next(r for name, c, r in rows if name.startswith("ours") and c == max(args.clients))
    floor = sequential[max(args.clients)]["aggregate"]
    print(f"\nours at {max(args.clients)} clients / HF one at a time: {ours_max['aggregate'] / floor:.2f}x")
    print(f"greedy answers differing from their solo run: {mismatches} of {sum(c for c in args.clients)}")


if __name__ == "__main__":
    main()
