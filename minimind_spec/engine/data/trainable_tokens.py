"""Which tokens LoRA trains rows for: `techniques.lora.trainable_tokens` (or `--trainable-tokens`)
made concrete with the run's tokenizer and the history of the model LoRA starts from.

Torch-free; `train` calls it before resolving, and the ids it returns reach the resolved spec as a
command-line value with the reason as provenance (`explain` and the plan show it):
- a list of ids or token strings: each string must be one token of the tokenizer;
- "none": no rows train (LoRA as the card describes it);
- "auto" (the default): the tokenizer's special tokens when the model LoRA starts from never
  trained on conversations (its recorded stages are pretraining only, or the run pretrains first):
  such a base has random rows for the chat markers, and adapters on the projections cannot make up
  for that. A model that went through SFT (or a model whose history is unknown) gets none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from ...errors import Problem, SpecError
from ...model_files import find_model
from ...stages import StageKind, stage

HISTORY_KEY = "trained_stages"  # config.json's minimind_spec.trained_stages: the stages that made the model, in order


def trained_stages(model_path: Path) -> tuple[str, ...] | None:
    """The stages recorded in a trained model's config.json (None: not recorded, or not a model of ours)."""
    try:
        config = json.loads(find_model(model_path).config.read_text(encoding="utf-8"))
    except (OSError, ValueError, SpecError):
        return None
    history = config.get("minimind_spec", {}).get(HISTORY_KEY) if isinstance(config, dict) else None
    return tuple(history) if isinstance(history, list) else None


def saw_conversations(stages: Sequence[str]) -> bool:
    kinds = {kind.value for kind in StageKind}
    return any(stage(name).records != "pretrain" for name in stages if name in kinds)


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """The tokenizer's special tokens by string (its added tokens marked special)."""
    return {token.content: token_id for token_id, token in sorted(tokenizer.get_added_tokens_decoder().items())
            if token.special}


def choose_trainable_tokens(entries: Sequence[int | str] | str, tokenizer_dir: Path, start_history: Sequence[str] | None,
                            where: str) -> tuple[tuple[int, ...], str]:
    """(token ids, why) for the spec's entries or the flag's value; `start_history`: the stages behind the
    model LoRA starts from (None: unknown); `where` names the source in messages."""
    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    if entries == "none":
        return (), f"{where}: none"
    if entries == "auto":
        special = special_token_ids(tokenizer)
        if start_history is None:
            return (), f"{where}: auto -> none (the start model's training history is not recorded)"
        if saw_conversations(start_history):
            return (), f"{where}: auto -> none (the start model trained on conversations: {', '.join(start_history)})"
        trained = ", ".join(start_history) or "nothing (random init)"
        return tuple(special.values()), (f"{where}: auto -> the tokenizer's special tokens {', '.join(special)} (the start "
                                         f"model trained on {trained} only: their rows were never trained)")
    assert not isinstance(entries, str)
    ids: list[int] = []
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    for i, entry in enumerate(entries):
        if isinstance(entry, int):
            if entry >= vocab:
                raise SpecError(Problem(f"/techniques/lora/trainable_tokens/{i}", f"token id {entry} is beyond the "
                                        f"tokenizer's {vocab} tokens"))
            ids.append(entry)
            continue
        found = tokenizer.token_to_id(entry)
        if found is None:
            pieces = tokenizer.encode(entry, add_special_tokens=False).tokens
            raise SpecError(Problem(f"/techniques/lora/trainable_tokens/{i}", f"{entry!r} is not one token of "
                                    f"{tokenizer_dir} (it splits into {pieces})", "name single tokens or their ids"))
        ids.append(found)
    ids = list(dict.fromkeys(ids))
    return tuple(ids), f"{where}: {', '.join(str(e) for e in entries)}"


def parse_flag(value: str) -> Sequence[int | str] | str:
    """`--trainable-tokens auto|none|<t1,t2,...>` (numbers are ids, anything else a token string)."""
    value = value.strip()
    if value in ("auto", "none"):
        return value
    return [int(t) if t.strip().isdigit() else t.strip() for t in value.split(",") if t.strip()]


__all__ = ["HISTORY_KEY", "choose_trainable_tokens", "parse_flag", "saw_conversations", "special_token_ids",
           "trained_stages"]
