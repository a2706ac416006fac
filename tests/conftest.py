"""Shared fixtures: paths of the shipped specs and a writer of small spec files."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "spec" / "minimind.json"
CARD = ROOT.parent / "shared" / "seeds" / "000_ce1ca7b2d6714134.txt"
needs_card = pytest.mark.skipif(not CARD.is_file(), reason="the design card (../shared/seeds) is not beside this checkout")

# A tiny spec keeps graph and model tests fast: 2 layers, d_model 64.
TINY: dict[str, Any] = {
    "model_name": "tiny",
    "task": "Causal Language Modeling",
    "backbone": {"type": "Transformer-Decoder-Only", "variants": ["MoE"], "positional_encoding": "RoPE",
                 "norm": "RMSNorm", "activation": "SiLU"},
    "hyperparams": {"d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_ratio": 3.0, "seq_len": 32, "vocab": 128},
}


def card_data() -> dict[str, Any]:
    """The card's spec as a dict (trailing comma removed by the loader)."""
    from minimind_spec.loader import load_document

    return load_document(SPEC).data


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec dict (default: TINY, patched with `changes` merged at top level) to a file."""

    def write(data: dict[str, Any] | None = None, name: str = "spec.json", **changes: Any) -> Path:
        doc = copy.deepcopy(TINY if data is None else data)
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key] = {**doc[key], **value}
            else:
                doc[key] = value
        path = tmp_path / name
        path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        return path

    return write
