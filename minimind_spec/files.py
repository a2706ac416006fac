"""Write a file whole or not at all: into a temporary file beside it, flushed to disk, then
renamed over it. Used by every writer of a single file (schema, render, checkpoint metadata)."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8); a crash leaves the old file or the new one, never half of it."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    with open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)
