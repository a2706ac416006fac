"""The one "did you mean" matcher of the front end.

Validation (unknown keys, closed choices) and the cross-field rules (LoRA placements) both
suggest the closest allowed word for a misspelled one; they share this function so that the
same typo gets the same suggestion wherever it is written.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

SIMILARITY_CUTOFF = 0.6


def closest(word: str, options: Iterable[str]) -> str | None:
    """The option most similar to `word` (exact case first, then ignoring case), or None."""
    options = list(options)
    matches = difflib.get_close_matches(word, options, n=1, cutoff=SIMILARITY_CUTOFF)
    if matches:
        return matches[0]
    lowered = {option.lower(): option for option in options}
    matches = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=SIMILARITY_CUTOFF)
    return lowered[matches[0]] if matches else None


def did_you_mean(word: str, options: Iterable[str], fallback: str | None = None) -> str | None:
    """A hint: "did you mean 'x'?" when a close option exists, else `fallback`."""
    guess = closest(word, options)
    return f"did you mean {guess!r}?" if guess is not None else fallback
