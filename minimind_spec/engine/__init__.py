"""The torch side of minimind-spec: everything that needs weights or data.

`compile` turns the module graph into an `nn.Module`, `trainability` sets which parameter
roles train, `export` writes and reads model directories, `data/` reads MiniMind's data
formats and trains or loads tokenizers. The front end (everything else in `minimind_spec/`)
never imports this package; the CLI imports it lazily, inside the commands that need it.
Attributes load their module on first use, so `engine.data` (tokenizers, JSONL) does not
load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "assemble": "compile", "compile_graph": "compile", "compile_model": "compile", "materialize": "compile",
    "load_model_files": "export", "write_model_files": "export", "from_pretrained": "export", "find_model": "export",
    "TrainableSummary": "trainability", "parameters_by_role": "trainability", "set_trainable": "trainability",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
