"""Commands on trained models: `generate`, `export`, `import` (a MiniMind checkpoint in) and `lora merge`.

A MiniMind `.pth` (or a directory MiniMind's `convert_model.py` wrote) holds no spec: `generate`
and `export` take one with `--spec`, and import it for that one command; `import` writes it
once as our model directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import typer

from ..errors import Problem, SpecError
from ..model_files import ModelFiles, find_model, is_foreign_checkpoint
from .app import app, console, guarded
from .options import Variant

ForSpec = Annotated[Path | None, typer.Option("--spec", help="The spec a MiniMind .pth (or convert_model.py directory) was "
                                              "trained with; its weights must fit it exactly.", show_default=False)]


@contextlib.contextmanager
def model_source(path: Path, spec: Path | None, variant: str | None, tokenizer: Path | None = None) -> Iterator[ModelFiles]:
    """The model files at `path`: ours as they are, a MiniMind checkpoint imported for `spec` for the command's duration."""
    if not is_foreign_checkpoint(path):
        if spec is not None:
            raise SpecError(Problem("", f"--spec is for MiniMind checkpoints; {path} carries its own config"))
        yield find_model(path)
        return
    if spec is None:
        find_model(path)  # says what the file is and what to give
    assert spec is not None
    from ..engine.minimind_import import imported_model
    from ..loader import load_spec
    from ..resolve import resolve

    with imported_model(path, resolve(load_spec(spec), variant), tokenizer) as files:
        yield files


@app.command("generate")
@guarded
def generate_command(
    run: Annotated[Path, typer.Argument(help="A run directory (its latest stage), a stage directory, or a model directory.",
                                        show_default=False)],
    prompt: Annotated[str, typer.Argument(help="The prompt (a user message with --chat).", show_default=False)],
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Wrap the prompt in the ChatML template "
                                       "(for SFT models) and stop at <|im_end|>.")] = True,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, max=1_000_000, help="Tokens to generate at most.")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", help="0 for greedy decoding.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling threshold.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Seed of the sampling.")] = 0,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="Tokenizer directory, if the run has none beside "
                                                   "the model.", show_default=False)] = None,
    think: Annotated[bool, typer.Option("--think/--no-think", help="With --chat: open a <think> block for the answer "
                                        "(the chat template's thinking switch); off, MiniMind's template closes an empty "
                                        "one first.")] = False,
    spec: ForSpec = None,
    variant: Variant = None,
) -> None:
    """Generate text from a trained model, with its own tokenizer.

    Examples: `minimind-spec generate runs/tiny "what is 2 plus 3"`,
    `minimind-spec generate runs/tiny/pretrain "the cat" --no-chat --temperature 0.8`,
    `minimind-spec generate out/full_sft_768.pth "hello" --spec spec/minimind3.json --tokenizer minimind/model`.
    """
    from ..engine.chat import generate_text

    with model_source(run, spec, variant, tokenizer) as files:
        console.print(generate_text(files.config.parent if spec is not None else run, prompt, chat=chat,
                                    tokenizer_dir=tokenizer, max_new_tokens=max_new_tokens, temperature=temperature,
                                    top_p=top_p, seed=seed, thinking=think))


@app.command("export")
@guarded
def export_command(
    source: Annotated[Path, typer.Argument(help="A trained model: a run directory (its newest finished stage), a stage "
                                           "directory, a checkpoint or a model directory.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write config.json, model.safetensors and the "
                                      "run's tokenizer into (gguf: a FILE.gguf, or a directory for NAME-QUANT.gguf).",
                                      show_default=False)],
    lora: Annotated[str, typer.Option("--lora", help="For a model with LoRA adapters: merged (folded into the weights), "
                                      "base (adapters dropped) or adapter (the adapters alone, in PEFT's layout).")] = "merged",
    layout: Annotated[Literal["hf", "minimind", "gguf"], typer.Option(
        "--format", help="hf: the Hugging Face architecture that computes the model exactly (Llama, Qwen3, Qwen2-MoE, "
        "Qwen3-MoE); minimind: this package's own layout, for any spec; gguf: one .gguf file for llama.cpp / Ollama "
        "(architecture llama, or qwen3 / qwen3moe with QK-norm; tokenizer and chat template inside).")] = "hf",
    quant: Annotated[Literal["f16", "q8_0"], typer.Option("--quant", help="GGUF only: the matrices' encoding, f16 or "
                                                          "q8_0 (8-bit blocks of 32, about half the size); norms stay f32.")] = "f16",
    spec: ForSpec = None,
    variant: Variant = None,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="With --spec: the tokenizer directory to ship "
                                                   "alongside (MiniMind's model/).", show_default=False)] = None,
) -> None:
    """Write a trained model as a model directory that loads anywhere.

    config.json carries the Hugging Face Llama keys (dense RoPE/RMSNorm/SiLU models load with
    `transformers.AutoModelForCausalLM.from_pretrained(DIR)`) and, under "minimind_spec", the
    whole resolved model, from which `generate`, `build --weights` and `--init` rebuild it; the
    weights are safetensors (a tied lm_head stored once); the run's tokenizer goes along. Files
    are written to a temporary directory first, so a failure leaves nothing half-written.

    A model with LoRA adapters never leaks adapter tensors into a base model: `--lora merged`
    (the default) folds them in, `base` drops them, `adapter` writes them alone in PEFT's layout.

    Examples: `minimind-spec export runs/tiny --out models/tiny`,
    `minimind-spec export runs/tiny/sft/checkpoints/step-00000040 --out models/tiny-step40`,
    `minimind-spec export full_sft_768.pth --spec spec/minimind3.json --tokenizer minimind/model --out hf/` (Qwen3),
    `minimind-spec export runs/tiny --format gguf --quant q8_0 --out tiny.gguf` (then `llama-cli -m tiny.gguf`).
    """
    from ..engine.export import export_model

    with model_source(source, spec, variant, tokenizer) as found:
        written = export_model(found.config, found.weights, out, lora, extra_files=found.tokenizer_files, layout=layout,
                               quant=quant)
    console.print(f"exported {found.weights if spec is None else source}")
    for path in written:
        console.print(f"wrote {path}")


lora_app = typer.Typer(help="LoRA adapters: fold them into the base weights.", no_args_is_help=True)
app.add_typer(lora_app, name="lora")


@lora_app.command("merge")
@guarded
def lora_merge(
    source: Annotated[Path, typer.Argument(help="A LoRA-trained model (a run, stage, checkpoint or model directory), or, "
                                           "with --adapter, the base model.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the merged model (config.json without LoRA, "
                                      "model.safetensors, the tokenizer).", show_default=False)],
    adapter: Annotated[Path | None, typer.Option("--adapter", help="An adapter directory in PEFT's layout (a LoRA "
                                                 "stage's final/adapter/) to attach to SOURCE first; it must have been "
                                                 "trained on SOURCE's model.", show_default=False)] = None,
) -> None:
    """Fold LoRA adapters into the base weights: W + (alpha / r) B A, one dense model.

    The result has the same outputs as the adapted model (up to float rounding) and loads
    anywhere a dense model does (dense RoPE/RMSNorm/SiLU: transformers' LlamaForCausalLM).

    Examples: `minimind-spec lora merge runs/lora --out models/merged`,
    `minimind-spec lora merge models/base --adapter runs/lora/sft/final/adapter --out models/merged`.
    """
    from ..engine.export import load_model, read_model_config
    from ..engine.writer import save_model_dir
    from ..engine.lora_io import merge_model, with_adapter

    found = find_model(source)
    resolved = read_model_config(found.config)
    model = load_model(found.config, found.weights)
    if adapter is not None:
        if resolved.model.lora is not None:
            raise typer.BadParameter("SOURCE already has adapters; --adapter attaches one to a base without LoRA",
                                     param_hint="--adapter")
        model, resolved = with_adapter(model, resolved, adapter)
    merged, dense = merge_model(model, resolved)
    for path in save_model_dir(merged, dense, out, extra_files=found.tokenizer_files):
        console.print(f"wrote {path}")


@app.command("import")
@guarded
def import_command(
    checkpoint: Annotated[Path, typer.Argument(help="A MiniMind checkpoint: a .pth state dict its trainers saved "
                                               "(MiniMind2 or MiniMind-3, dense or MoE, fp16/bf16/fp32, a _resume.pth "
                                               "too), or a directory its convert_model.py wrote.", show_default=False)],
    spec: Annotated[Path, typer.Option("--spec", help="The spec of the model the checkpoint holds (e.g. spec/minimind3.json); "
                                       "its weights must fit it exactly.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write (config.json, model.safetensors, "
                                      "the tokenizer).", show_default=False)],
    variant: Variant = None,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="Tokenizer directory to ship alongside (MiniMind's "
                                                   "model/ holds tokenizer.json and tokenizer_config.json).",
                                                   show_default=False)] = None,
) -> None:
    """Import a MiniMind checkpoint as a minimind-spec model directory.

    The weights are read with `torch.load(weights_only=True)` (tensors only: a checkpoint cannot
    run code), converted to float32 and loaded into the spec's model through the exact fit check:
    every missing, unexpected or mis-shaped tensor is listed, with the spec values that explain
    it (`hyperparams.qk_norm: spec false, checkpoint has q_norm weights`). The directory then
    works everywhere a trained model does: `generate`, `export` (Qwen3 / Llama / GGUF), `train --init`.

    Examples: `minimind-spec import out/full_sft_768.pth --spec spec/minimind3.json --tokenizer minimind/model --out models/m3`,
    `... out/full_sft_768_moe.pth --spec spec/minimind3.json --variant MoE --out models/m3-moe`.
    """
    from ..engine.minimind_import import import_checkpoint
    from ..loader import load_spec
    from ..resolve import resolve

    written = import_checkpoint(checkpoint, resolve(load_spec(spec), variant), out, tokenizer)
    console.print(f"imported {checkpoint} (it fits {spec})")
    for path in written:
        console.print(f"wrote {path}")
