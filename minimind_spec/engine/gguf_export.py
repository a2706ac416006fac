"""GGUF export: one `.gguf` file for llama.cpp, Ollama and transformers' `gguf_file=` loader.

`export RUN --format gguf [--quant f16|q8_0]` writes the model as the llama.cpp architecture
that computes it exactly, with the tokenizer and chat template in the file's metadata:

- dense RoPE / RMSNorm / SiLU models (our names are Llama's) as `llama`. llama.cpp's `llama`
  rotates interleaved pairs of dimensions where Hugging Face (and we) rotate the two halves,
  so, as llama.cpp's own converter does, the rows of attn_q and attn_k are permuted per head
  (within each head, row i of the first half and row i of the second half become neighbours);
  readers undo it (transformers does on load);
- QK-norm models (MiniMind-3) as `qwen3`, and QK-norm MoE models as `qwen3moe` (experts
  stacked into ffn_{gate,up,down}_exps), which rotate halves as we do: no permutation;
- anything else (LayerNorm, absolute positions, GELU, shared experts, ...) is refused with the
  setting named, as the Hugging Face export refuses it.

Matrices are written in f16 or q8_0 (blocks of 32 values with one f16 scale, llama.cpp's
Q8_0); norms stay f32, as llama.cpp writes them. The tokenizer goes in as llama.cpp's `gpt2`
(byte-level BPE) model: every token string, its type (control for special tokens), the merges,
the special ids and the chat template; a vocabulary padded beyond the tokenizer gets unused
`[PAD{id}]` entries. Everything is written to a temporary file in the target directory and
renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import InputError
from ..model_files import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from .hf_layout import hf_mismatches

GgufQuant = Literal["f16", "q8_0"]
GGUF_QUANTS: tuple[GgufQuant, ...] = ("f16", "q8_0")


def _gguf() -> Any:
    """The `gguf` package (an optional extra), or a one-line error saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise InputError("GGUF export needs the gguf package: pip install 'minimind-spec[gguf]' (or pip install gguf)") from None
    return gguf


def gguf_architecture(c: ModelConfig) -> str:
    """The llama.cpp architecture that computes `c` exactly; InputError naming the setting when none does."""
    reasons = hf_mismatches(c)
    if c.moe is not None and not c.qk_norm:
        reasons.append("a mixture of experts without QK-norm (GGUF export covers dense Llama models and MiniMind-3's "
                       "Qwen3 and Qwen3-MoE layouts)")
    if reasons:
        raise InputError("no GGUF architecture computes this model exactly: " + "; ".join(reasons)
                         + ". `--format hf` or `--format minimind` write it instead")
    if c.moe is None:
        return "qwen3" if c.qk_norm else "llama"
    return "qwen3moe"


def _interleave_rope_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q/k projection from rotate-half order to llama.cpp's interleaved pairs, per head."""
    # weight: (heads * head_dim, D) -> same shape; within a head, rows (i, i + head_dim/2) become (2i, 2i + 1)
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _gguf_tensors(state: dict[str, torch.Tensor], c: ModelConfig, architecture: str) -> dict[str, torch.Tensor]:
    """Our state dict under llama.cpp's tensor names (tied head omitted: llama.cpp reads token_embd then)."""
    out = {"token_embd.weight": state["model.embed_tokens.weight"], "output_norm.weight": state["model.norm.weight"]}
    if not c.tie_word_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "mlp.gate": "ffn_gate_inp"}
    for i in range(c.n_layers):
        prefix = f"model.layers.{i}."
        for ours, theirs in names.items():
            key = f"{prefix}{ours}.weight"
            if key in state:
                out[f"blk.{i}.{theirs}.weight"] = state[key]
        if architecture == "llama":
            out[f"blk.{i}.attn_q.weight"] = _interleave_rope_rows(out[f"blk.{i}.attn_q.weight"], c.n_heads)
            out[f"blk.{i}.attn_k.weight"] = _interleave_rope_rows(out[f"blk.{i}.attn_k.weight"], c.n_kv_heads)
        if c.moe is not None:
            for part in ("gate", "up", "down"):
                out[f"blk.{i}.ffn_{part}_exps.weight"] = torch.stack(
                    [state[f"{prefix}mlp.experts.{e}.{part}_proj.weight"] for e in range(c.moe.num_experts)])  # (E, out, in)
    return out


def _encode(name: str, tensor: torch.Tensor, quant: GgufQuant) -> tuple[np.ndarray, Any]:
    """(data, raw dtype) of one tensor: norms and 1-D tensors f32, matrices f16 or q8_0."""
    gguf = _gguf()
    array = tensor.detach().to(torch.float32).cpu().numpy()
    if array.ndim == 1 or name.endswith("_norm.weight") or name == "output_norm.weight":
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    if quant == "q8_0" and array.shape[-1] % 32 == 0 and not name.endswith("ffn_gate_inp.weight"):
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return array.astype(np.float16), gguf.GGMLQuantizationType.F16


def _add_tokenizer(writer: Any, tokenizer_dir: Path, vocab_size: int) -> None:
    """llama.cpp's `gpt2` (byte-level BPE) tokenizer metadata from tokenizer.json, and the chat template."""
    gguf = _gguf()
    data = json.loads((tokenizer_dir / TOKENIZER_FILE).read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise InputError(f"{tokenizer_dir / TOKENIZER_FILE}: a {model.get('type')} tokenizer; GGUF export writes byte-level BPE only")
    by_id = {int(i): token for token, i in model["vocab"].items()}
    special = {int(t["id"]) for t in data.get("added_tokens", []) if t.get("special")}
    for added in data.get("added_tokens", []):
        by_id[int(added["id"])] = added["content"]
    if max(by_id) >= vocab_size:
        raise InputError(f"the tokenizer has ids up to {max(by_id)}, beyond the model's vocab {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    config = json.loads((tokenizer_dir / TOKENIZER_CONFIG_FILE).read_text(encoding="utf-8")) \
        if (tokenizer_dir / TOKENIZER_CONFIG_FILE).is_file() else {}
    ids = {token: i for i, token in by_id.items()}
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("pad_token", writer.add_pad_token_id)):
        token = config.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        if token in ids:
            add(ids[token])
    writer.add_add_bos_token(bool(config.get("add_bos_token", False)))
    if config.get("chat_template"):
        writer.add_chat_template(config["chat_template"])


def write_gguf(model: torch.nn.Module, c: ModelConfig, name: str, out_file: Path, quant: GgufQuant = "f16",
               tokenizer_dir: Path | None = None) -> Path:
    """Write `model` (built from `c`, LoRA merged) as one GGUF file; returns its path."""
    gguf = _gguf()
    if quant not in GGUF_QUANTS:
        raise InputError(f"--quant {quant!r}: one of {', '.join(GGUF_QUANTS)}")
    architecture = gguf_architecture(c)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items()}
    fd, scratch = tempfile.mkstemp(prefix=f".{out_file.name}.", dir=out_file.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(scratch, architecture)
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
        writer.add_context_length(c.max_position_embeddings)
        writer.add_embedding_length(c.d_model)
        writer.add_block_count(c.n_layers)
        writer.add_feed_forward_length(c.mlp_hidden)
        writer.add_head_count(c.n_heads)
        writer.add_head_count_kv(c.n_kv_heads)
        writer.add_key_length(c.head_dim)
        writer.add_value_length(c.head_dim)
        writer.add_rope_dimension_count(c.head_dim)
        writer.add_rope_freq_base(c.rope_theta)
        writer.add_layer_norm_rms_eps(c.norm_eps)
        writer.add_vocab_size(c.vocab_size)
        if c.moe is not None:
            writer.add_expert_count(c.moe.num_experts)
            writer.add_expert_used_count(c.moe.top_k)
            writer.add_expert_feed_forward_length(c.moe.expert_hidden)
        if tokenizer_dir is not None:
            _add_tokenizer(writer, tokenizer_dir, c.vocab_size)
        for tensor_name, tensor in _gguf_tensors(state, c, architecture).items():
            data, raw_dtype = _encode(tensor_name, tensor, quant)
            writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)  # the shape is read from the (quantised) data
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(scratch, out_file)
    finally:
        if os.path.exists(scratch):
            os.remove(scratch)
    return out_file
