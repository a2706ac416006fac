"""Pretraining and SFT: rows of tokens and the causal-LM objective.

Rows come from the stage's token cache as the plan lays them out: consecutive slices of the
token stream (pretraining; documents isolated with `document_mask`), or whole samples packed
into rows (each isolated; `pack` off: one padded sample per row). The objective is the summed
next-token cross-entropy over the labelled tokens (`builders.causal_lm_loss_sum`), its count the
labelled tokens, plus the MoE balance loss weighted by that count.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from builders.techniques import IGNORE_INDEX, causal_lm_loss_sum

from ....errors import InputError
from ....objectives import CausalLMObjective
from ....stages import RowLayout
from ...data.packing import Row, sample_layout, sample_row, stream_layout, stream_row
from ..monitors import ExpertLoadWatch
from .base import ObjectiveOutput, StageData, StageInputs, StageParts, held_out_split, balance_loss_metric
from .batches import TokenBatch, collate_rows


def token_rows(inputs: StageInputs) -> StageData:
    """The stage's rows of `seq_len` tokens, as its plan lays them out."""
    plan, cache = inputs.plan, inputs.cache
    if plan.rows == RowLayout.STREAM:
        layout = stream_layout(cache, plan.seq_len)
        row = partial(stream_row, cache, layout, document_mask=plan.document_mask)
        what = f"{layout.rows:,} rows of {plan.seq_len} tokens cut from the token stream" + (
            ", documents isolated" if plan.document_mask else "")
    else:
        layout = sample_layout(cache, plan.seq_len, plan.pack)
        row = partial(sample_row, cache, layout, pad_id=inputs.pad_id)
        what = (f"{len(cache):,} samples {'packed into' if plan.pack else 'padded to'} {layout.rows:,} rows of {plan.seq_len} "
                f"tokens ({layout.efficiency:.0%} of the positions are data)")
    if layout.rows == 0:
        raise InputError(f"{cache.meta.source}: {cache.meta.tokens:,} tokens, not one row of {plan.seq_len}")
    train, held_out = held_out_split(layout.rows)

    def make_batch(indices: list[int], device: str) -> TokenBatch:
        rows: list[Row] = [row(i) for i in indices]
        return collate_rows(rows, device)

    return StageData(train, held_out, make_batch, f"{what}; {len(held_out)} held out")


def trained_targets(batch: TokenBatch) -> float:
    """The positions whose next token is labelled: what a causal-LM loss sum is normalised by."""
    return float((batch.labels[:, 1:] != IGNORE_INDEX).sum())


@dataclass(frozen=True)
class LanguageModelLoss:
    label_smoothing: float

    def count(self, batch: TokenBatch) -> float:
        return trained_targets(batch)

    def __call__(self, model: nn.Module, batch: TokenBatch) -> ObjectiveOutput:
        out = model(batch.input_ids, packed=batch.packed)  # logits (B, T, V)
        total, count = causal_lm_loss_sum(out.logits, batch.labels, label_smoothing=self.label_smoothing)
        lm = float(total.detach()) / max(float(count), 1.0)
        loss_sum = total + out.aux_loss * count
        return ObjectiveOutput(loss_sum, {"lm_loss": lm, **balance_loss_metric(out.aux_loss, out.expert_counts)}, out.expert_counts)


def language_model_stage(inputs: StageInputs) -> StageParts:
    settings = inputs.plan.objective
    assert isinstance(settings, CausalLMObjective)
    watches = (ExpertLoadWatch(),) if inputs.moe else ()
    return StageParts(token_rows(inputs), LanguageModelLoss(settings.label_smoothing), watches)


def no_grad_logits(model: nn.Module, batch: TokenBatch) -> torch.Tensor:
    """A frozen model's logits (B, T, V) on the batch's rows, isolated like the student's."""
    with torch.no_grad():
        return model(batch.input_ids, packed=batch.packed).logits
