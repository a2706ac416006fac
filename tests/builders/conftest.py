"""Fixtures for the back-end tests: tiny specs (2 layers, d_model 64) written as JSON into
a temporary directory and taken through the real front end (load_spec -> resolve), and
helpers to mirror a compiled model in Hugging Face transformers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from minimind_spec import load_spec, resolve
from minimind_spec.config import ResolvedSpec

D_MODEL = 64
N_LAYERS = 2
N_HEADS = 4
VOCAB = 128
SEQ_LEN = 64

TINY_SPEC: dict[str, Any] = {
    "model_name": "Tiny",
    "task": "Causal Language Modeling",
    "backbone": {"type": "Transformer-Decoder-Only", "variants": ["MoE"], "positional_encoding": "RoPE",
                 "norm": "RMSNorm", "activation": "SiLU", "attention_backend": "eager"},
    "hyperparams": {"d_model": D_MODEL, "n_layers": N_LAYERS, "n_heads": N_HEADS, "mlp_ratio": 3.0,
                    "seq_len": SEQ_LEN, "vocab": VOCAB, "rope_theta": 10000.0, "tie_word_embeddings": True,
                    "dtype": "float32"},
}


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; a None value deletes the key."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def tiny(tmp_path: Path) -> Callable[..., ResolvedSpec]:
    """tiny(patch={...}, variant=None) -> ResolvedSpec of the tiny spec with `patch` merged in."""
    counter = iter(range(1000))

    def make(patch: dict[str, Any] | None = None, variant: str | None = None) -> ResolvedSpec:
        path = tmp_path / f"tiny_{next(counter)}.json"
        path.write_text(json.dumps(merge(TINY_SPEC, patch or {})))
        return resolve(load_spec(path), variant)

    return make


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
