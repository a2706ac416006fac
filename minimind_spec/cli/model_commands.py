"""`generate`: text from a trained run (or any model directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from .app import app, console, guarded


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
) -> None:
    """Generate text from a trained model, with its own tokenizer.

    Examples: `minimind-spec generate runs/tiny "what is 2 plus 3"`,
    `minimind-spec generate runs/tiny/pretrain "the cat" --no-chat --temperature 0.8`.
    """
    from ..engine.chat import generate_text

    console.print(generate_text(run, prompt, chat=chat, tokenizer_dir=tokenizer, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_p=top_p, seed=seed))


@app.command("export")
@guarded
def export_command(
    source: Annotated[Path, typer.Argument(help="A trained model: a run directory (its newest finished stage), a stage "
                                           "directory, a checkpoint or a model directory.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write config.json, model.safetensors and the "
                                      "run's tokenizer into.", show_default=False)],
    lora: Annotated[str, typer.Option("--lora", help="For a model with LoRA adapters: merged (folded into the weights), "
                                      "base (adapters dropped) or adapter (the adapters alone, in PEFT's layout).")] = "merged",
    layout: Annotated[Literal["hf", "minimind"], typer.Option("--format", help="hf: the Hugging Face architecture that "
                                                               "computes the model exactly (Llama, Qwen2-MoE); minimind: "
                                                               "this package's own layout, for any spec.")] = "hf",
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
    `minimind-spec export runs/tiny/sft/checkpoints/step-00000040 --out models/tiny-step40`.
    """
    from ..engine.export import export_model
    from ..model_files import find_model

    found = find_model(source)
    written = export_model(found.config, found.weights, out, lora, extra_files=found.tokenizer_files, layout=layout)
    console.print(f"exported {found.weights}")
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
    from ..model_files import find_model

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
