"""`serve` (the OpenAI-compatible server and its chat page) and `chat` (a conversation in the terminal)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from .app import app, console, err_console, guarded
from .model_commands import ForSpec, model_source
from .options import Variant

ModelPath = Annotated[Path, typer.Argument(help="A trained model: a run directory (its newest finished stage), a stage "
                                           "directory, a checkpoint, a model directory, or a MiniMind .pth with --spec.",
                                           show_default=False)]
Tokenizer = Annotated[Path | None, typer.Option("--tokenizer", help="Tokenizer directory, if none is beside the model.",
                                                show_default=False)]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")]
Dtype = Annotated[Literal["float32", "bfloat16"], typer.Option("--dtype", help="The weights' dtype while serving.")]
MaxLen = Annotated[int, typer.Option("--max-len", min=2, help="Context per request (prompt + answer), at most the "
                                     "model's positions; the KV cache holds max-batch x max-len positions.")]


@contextlib.contextmanager
def _served(model: Path, spec: Path | None, variant: str | None, tokenizer: Path | None, device: str, dtype: str,
            name: str | None) -> Iterator[Any]:
    """The model to serve or chat with (an `engine.serve.model.ServedModel`), its source imported if need be."""
    from ..engine.export import read_model_config
    from ..engine.serve.model import load_served

    with model_source(model, spec, variant, tokenizer) as files:
        yield load_served(files, name or read_model_config(files.config).name, tokenizer, device, dtype)


@app.command("serve")
@guarded
def serve_command(
    model: ModelPath,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free port).")] = 8998,
    api_key: Annotated[str | None, typer.Option("--api-key", help="Require `Authorization: Bearer KEY` on /v1/.",
                                                show_default=False)] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, max=256, help="Requests decoded together (rows of the "
                                           "KV cache); the rest wait in the queue.")] = 8,
    max_queue: Annotated[int, typer.Option("--max-queue", min=0, help="Requests that may wait; beyond it the server "
                                           "answers 503.")] = 64,
    max_len: MaxLen = 2048,
    name: Annotated[str | None, typer.Option("--name", help="The model id clients send (default: the spec's model_name).",
                                             show_default=False)] = None,
    device: Device = "cpu",
    dtype: Dtype = "float32",
    quant: Annotated[Literal["none", "int8"], typer.Option("--quant", help="int8: decode through per-row int8 copies "
                                                           "of the linear weights (about a quarter of their bytes); "
                                                           "the prompt's prefill keeps the model's own.")] = "none",
    tokenizer: Tokenizer = None,
    spec: ForSpec = None,
    variant: Variant = None,
) -> None:
    """Serve a trained model over an OpenAI-compatible HTTP API, with continuous batching.

    `POST /v1/chat/completions` (streaming, reasoning_content, tool calls, logprobs, n, seed,
    stop), `POST /v1/completions` (text or token ids, echo and logprobs for scoring),
    `GET /v1/models`, `GET /health`, and a chat page at `/`. Every decode step runs all active
    requests together; a new one joins as soon as its prompt is read.

    Examples: `minimind-spec serve runs/tiny`, then `curl localhost:8998/v1/models`, or with the
    official client: `OpenAI(base_url="http://127.0.0.1:8998/v1", api_key="-")`;
    `minimind-spec serve runs/tiny --max-batch 16 --api-key s3cret --port 9000`.
    """
    import threading

    import uvicorn

    from ..engine.serve.api import create_app
    from ..engine.serve.scheduler import Scheduler

    with _served(model, spec, variant, tokenizer, device, dtype, name) as served:
        scheduler = Scheduler(served.model, served.decode, served.stop_ids, max_batch, max_len, max_queue, quant)
        server = uvicorn.Server(uvicorn.Config(create_app(served, scheduler, api_key), host=host, port=port,
                                               log_level="warning"))
        http = threading.Thread(target=server.run, name="http", daemon=True)  # the model stays on the main thread
        http.start()
        err_console.print(f"serving {served.name} at http://{host}:{port}/ (OpenAI API under /v1, {max_batch} rows of "
                          f"{scheduler.max_length} positions); Ctrl-C stops")
        try:
            scheduler.run()
        except KeyboardInterrupt:
            err_console.print("stopped")
        finally:
            server.should_exit = True
            http.join(timeout=5)


@app.command("chat")
@guarded
def chat_command(
    model: ModelPath,
    think: Annotated[bool, typer.Option("--think/--no-think", help="The chat template's thinking switch: open a <think> "
                                        "block for each answer (its reasoning shows dimmed).")] = False,
    history: Annotated[int, typer.Option("--history", min=0, help="Earlier exchanges kept in the prompt.")] = 4,
    system: Annotated[str | None, typer.Option("--system", help="A system message.", show_default=False)] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens per answer at most.")] = 512,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, max=2.0, help="0 for greedy decoding.")] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", min=0.01, max=1.0, help="Nucleus sampling threshold.")] = 0.9,
    max_len: MaxLen = 2048,
    device: Device = "cpu",
    dtype: Dtype = "float32",
    tokenizer: Tokenizer = None,
    spec: ForSpec = None,
    variant: Variant = None,
) -> None:
    """Talk with a trained model in the terminal.

    Answers stream as they are written, reasoning dimmed; after each, its length and tokens/s.
    `/reset` forgets the conversation, `/system TEXT` sets the system message, `/exit` leaves;
    a line ending in `\\` continues, and `\"\"\"` opens and closes a block of lines.

    Examples: `minimind-spec chat runs/tiny`, `minimind-spec chat runs/tiny --think --history 8`.
    """
    from ..engine.serve.chat import chat_loop
    from ..engine.serve.scheduler import Scheduler

    with _served(model, spec, variant, tokenizer, device, dtype, None) as served:
        scheduler = Scheduler(served.model, served.decode, served.stop_ids, 1, max_len, 4)  # driven on this thread
        chat_loop(served, scheduler, console, input, history=history, thinking=think, max_tokens=max_new_tokens,
                  temperature=temperature, top_p=top_p, system=system)
