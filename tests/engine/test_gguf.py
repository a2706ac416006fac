"""GGUF export: one file llama.cpp reads, checked with the `gguf` package's own reader and
with transformers' GGUF loader (an independent dequantiser and de-permuter). Llama models
are written with llama.cpp's interleaved q/k row order, MiniMind-3's QK-norm models as
`qwen3`; the tokenizer (byte-level BPE, its merges and specials) and the chat template ride
in the metadata, and transformers rebuilds a tokenizer from them that encodes as ours does.

Tolerances: f16 logits equal ours on the same f16-rounded weights to 1e-4 and ours unrounded
to 1e-3 (at the initial weights' scale); q8_0 (blocks of 32 with one scale) within 5% of the
largest logit at most and 1% on average (random weights at 5x the initial scale: a hard case). transformers' GGUF reader takes no head_dim for `qwen3` (it assumes Qwen3's 128)
and no expert width for `qwen3moe`: the test models use those values; llama.cpp reads both."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from minimind_spec.cli import app
from minimind_spec.engine.export import load_model_files

from ..conftest import TINY

gguf = pytest.importorskip("gguf", reason="the gguf package writes and reads GGUF files")
transformers = pytest.importorskip("transformers")
MINIMIND = Path(__file__).resolve().parents[3] / "shared" / "minimind"
needs_minimind = pytest.mark.skipif(not (MINIMIND / "tokenizer.json").is_file(), reason="../shared/minimind is not here")

QWEN3 = {"qk_norm": True, "n_heads": 2, "n_kv_heads": 1, "head_dim": 128, "mlp_ratio": None, "mlp_hidden": 160}


def model_dir(tmp_path: Path, hyper: dict, scale: float | None = 0.1, tokenizer: Path = MINIMIND) -> Path:
    """A built model with a tokenizer beside it (MiniMind's unless given; random weights at `scale`, or the initial ones)."""
    vocab = len(json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"])
    spec = copy.deepcopy(TINY)
    spec["hyperparams"] = {k: v for k, v in {**spec["hyperparams"], "vocab": vocab, "dtype": "float32", **hyper}.items()
                           if v is not None}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    built = CliRunner().invoke(app, ["build", str(tmp_path / "spec.json"), "--out", str(tmp_path / "m"), "--seed", "1"])
    assert built.exit_code == 0, built.output
    model = load_model_files(tmp_path / "m")
    if scale is not None:
        generator = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(scale * torch.randn(p.shape, generator=generator) if p.dim() > 1 else 1 + 0.1 * torch.randn(p.shape, generator=generator))
    from minimind_spec.engine.export import read_model_config
    from minimind_spec.engine.writer import save_model_dir

    save_model_dir(model, read_model_config(tmp_path / "m" / "config.json"), tmp_path / "model",
                   extra_files=(tokenizer / "tokenizer.json", tokenizer / "tokenizer_config.json"))
    return tmp_path / "model"


def export(source: Path, out: Path, quant: str = "f16") -> Path:
    done = CliRunner().invoke(app, ["export", str(source), "--format", "gguf", "--quant", quant, "--out", str(out)])
    assert done.exit_code == 0, done.output
    return out


def logits_of_file(path: Path, ids: torch.Tensor) -> torch.Tensor:
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(ids).logits


def rounded_logits(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Our logits as they are, and on the f16-rounded weights the file holds."""
    with torch.no_grad():
        plain = model(ids).logits
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(p.half().float())
        return plain, model(ids).logits


@needs_minimind
def test_the_file_reads_back_with_its_metadata_tokenizer_and_template(tmp_path):
    path = export(model_dir(tmp_path, QWEN3), tmp_path / "m3.gguf")
    reader = gguf.GGUFReader(str(path))
    fields = {name: field for name, field in reader.fields.items()}

    def text(name):
        field = fields[name]
        return bytes(field.parts[field.data[0]]).decode("utf-8")

    assert text("general.architecture") == "qwen3"
    assert int(fields["qwen3.attention.key_length"].parts[-1][0]) == 128
    assert text("tokenizer.chat_template") == json.loads((MINIMIND / "tokenizer_config.json").read_text())["chat_template"]
    tokens = fields["tokenizer.ggml.tokens"]
    vocab = json.loads((MINIMIND / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(tokens.data) == 6400 and bytes(tokens.parts[tokens.data[vocab["Ġthe"]]]).decode() == "Ġthe"
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "blk.0.attn_q_norm.weight", "blk.1.attn_k_norm.weight", "output_norm.weight"} <= names
    assert "output.weight" not in names  # tied: llama.cpp reads the embedding
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m3.gguf")
    reference = transformers.AutoTokenizer.from_pretrained(str(MINIMIND))
    sample = "<|im_start|>user\nWhat is 2 + 3? 你好<|im_end|>\n"
    assert hf_tokenizer(sample)["input_ids"] == reference(sample)["input_ids"]


@pytest.mark.parametrize("case", ["llama", "qwen3"])
def test_f16_logits_equal_ours(workspace, tmp_path, case):
    tok = workspace / "tok"
    source = model_dir(tmp_path, {} if case == "llama" else QWEN3, tokenizer=tok)
    path = export(source, tmp_path / f"{case}.gguf")
    assert gguf.GGUFReader(str(path)).fields["general.architecture"].parts[-1].tobytes().decode() == case
    ids = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(0))
    theirs = logits_of_file(path, ids)
    _, rounded = rounded_logits(load_model_files(source).eval(), ids)
    torch.testing.assert_close(theirs, rounded, atol=1e-4, rtol=0)  # the same arithmetic on the weights the file holds
    initial = model_dir(tmp_path / "initial", {} if case == "llama" else QWEN3, scale=None, tokenizer=tok)
    plain, _ = rounded_logits(load_model_files(initial).eval(), ids)
    torch.testing.assert_close(logits_of_file(export(initial, tmp_path / "i.gguf"), ids), plain, atol=1e-3, rtol=0)


def test_q8_0_matrices_take_about_half_the_bytes_and_stay_close(workspace, tmp_path):
    source = model_dir(tmp_path, {}, tokenizer=workspace / "tok")
    f16, q8 = export(source, tmp_path / "f16.gguf"), export(source, tmp_path / "q8.gguf", "q8_0")
    def matrix_bytes(path):
        return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors if len(t.shape) > 1)

    assert matrix_bytes(q8) <= 0.54 * matrix_bytes(f16)  # Q8_0: 34 bytes per 32 values against f16's 64
    ids = torch.randint(0, 320, (1, 16), generator=torch.Generator().manual_seed(0))
    plain, _ = rounded_logits(load_model_files(source).eval(), ids)
    error = (logits_of_file(q8, ids) - plain).abs()
    assert error.max() <= 0.05 * plain.abs().max() and error.mean() <= 0.01 * plain.abs().max()


def test_qwen3_moe_loads_with_equal_logits(workspace, tmp_path):
    spec = copy.deepcopy(TINY)
    spec["hyperparams"] = {k: v for k, v in {**spec["hyperparams"], "vocab": 320, "dtype": "float32", **QWEN3}.items()
                           if v is not None}
    spec["moe"] = {"num_experts": 4, "top_k": 1, "norm_topk_prob": True, "expert_hidden": 768}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert CliRunner().invoke(app, ["build", str(tmp_path / "spec.json"), "--variant", "MoE", "--out", str(tmp_path / "m")]).exit_code == 0
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "m" / name).write_bytes((workspace / "tok" / name).read_bytes())
    path = export(tmp_path / "m", tmp_path / "moe.gguf")
    ids = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(0))
    plain, _ = rounded_logits(load_model_files(tmp_path / "m").eval(), ids)
    torch.testing.assert_close(logits_of_file(path, ids), plain, atol=1e-3, rtol=0)


def test_a_model_no_gguf_architecture_computes_is_refused(tmp_path):
    spec = copy.deepcopy(TINY)
    spec["backbone"]["norm"] = "LayerNorm"
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert CliRunner().invoke(app, ["build", str(tmp_path / "spec.json"), "--out", str(tmp_path / "m")]).exit_code == 0
    done = CliRunner().invoke(app, ["export", str(tmp_path / "m"), "--format", "gguf", "--out", str(tmp_path / "x.gguf")])
    assert done.exit_code == 2 and "norm LayerNorm" in done.output and "Traceback" not in done.output
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf*"))


@pytest.mark.parametrize("hyper", [{}, {**QWEN3, "n_heads": 4, "n_kv_heads": 2, "head_dim": 24}], ids=["llama", "qwen3-head_dim-24"])
def test_llama_cpp_generates_our_greedy_tokens(workspace, tmp_path, hyper):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it builds llama.cpp from source)")
    source = model_dir(tmp_path, hyper, tokenizer=workspace / "tok")
    path = export(source, tmp_path / "m.gguf")
    prompt = [1, 100, 150, 200, 250]
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False, logits_all=False)
    theirs = [t for _, t in zip(range(8), llm.generate(prompt, temp=0.0, top_k=1))]
    with torch.no_grad():
        ours = load_model_files(source).eval().generate(torch.tensor([prompt]), max_new_tokens=8, temperature=0.0)
    assert theirs == ours[0, len(prompt):].tolist()
