"""DPO's options that keep the model: the RPO term (an NLL on the chosen response), length-normalised
log-probs, and a watch that ends the stage when the likelihoods collapse.

The objective is checked against trl's DPOTrainer loss on the same per-token log-probs (its loss
types "sigmoid" + "sft" weighted [1, alpha] are RPO; "sigmoid_norm" is length-normalised DPO), and
against a hand computation; the stop is checked on hand-made metrics and in a CLI run at an lr
that collapses the likelihoods."""

from __future__ import annotations

import json
import math
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from builders.model import CausalLMOutput
from minimind_spec.cli import app
from minimind_spec.engine.train.monitors import DPOWatch
from minimind_spec.engine.train.stages.batches import PairBatch
from minimind_spec.engine.train.stages.preference import DPOLoss, Precomputed
from minimind_spec.metrics import MetricsRow
from minimind_spec.objectives import PreferenceObjective

from ..builders.helpers import trl_dpo_loss
from .conftest import metrics

PAIRS, LENGTH, VOCAB, PROMPT = 3, 7, 11, 2


class FixedLogits(torch.nn.Module):
    """A stand-in policy whose logits are a parameter: (2B, T, V)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, input_ids: torch.Tensor) -> CausalLMOutput:
        return CausalLMOutput(logits=self.logits, loss=None, aux_loss=torch.zeros(()), expert_counts=None)


def _batch(lengths: list[int]) -> tuple[PairBatch, torch.Tensor, torch.Tensor]:
    """A pair batch (chosen, rejected interleaved), each sequence with PROMPT prompt tokens and the given
    response length, then padding; with random logits. Returns (batch, logits, completion mask (2B, T))."""
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (2 * PAIRS, LENGTH), generator=generator)
    labels = torch.full_like(ids, -100)
    completion = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        labels[row, PROMPT:PROMPT + n] = ids[row, PROMPT:PROMPT + n]
        completion[row, PROMPT:PROMPT + n] = 1
    logits = torch.randn(2 * PAIRS, LENGTH, VOCAB, generator=generator)
    batch = PairBatch(ids, labels, np.arange(2 * PAIRS), int(completion.sum()))
    return batch, logits, completion


def _per_token(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """(2B, T - 1) log p of each next token, 0 outside the responses (what trl's model returns)."""
    log_probs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    targets = batch.input_ids[:, 1:]
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked * (batch.labels[:, 1:] != -100)


def _trl_loss(per_token: torch.Tensor, completion: torch.Tensor, ref: torch.Tensor, loss_types: list[str],
              weights: list[float]) -> float:
    """trl's DPO loss on the same log-probs (its batches put the chosen rows first; ours interleave them)."""
    order = torch.cat([torch.arange(0, 2 * PAIRS, 2), torch.arange(1, 2 * PAIRS, 2)])  # interleaved -> chosen first
    return trl_dpo_loss(per_token[order].float(), completion[order], ref[0::2].float(), ref[1::2].float(), loss_types, weights)


def _ours(settings: PreferenceObjective, logits: torch.Tensor, batch: PairBatch, ref: torch.Tensor) -> float:
    loss = DPOLoss(settings, Precomputed(ref.numpy()))
    out = loss(FixedLogits(logits), batch)
    return float(out.loss_sum.detach()) / loss.count(batch)


def test_rpo_equals_trls_sigmoid_plus_sft_on_equal_lengths():
    """trl's 'sft' term is the mean over all chosen tokens of the batch; ours is each pair's mean,
    so they agree when the chosen responses have one length (the rejected may differ)."""
    batch, logits, completion = _batch([4, 3, 4, 2, 4, 5])
    ref = torch.tensor([-9.0, -7.5, -8.0, -6.0, -10.0, -12.0], dtype=torch.float64)
    theirs = _trl_loss(_per_token(logits, batch), completion, ref, ["sigmoid", "sft"], [1.0, 0.7])
    assert _ours(PreferenceObjective(0.1, "sigmoid", rpo_alpha=0.7), logits, batch, ref) == pytest.approx(theirs, rel=1e-5)


def test_length_normalised_dpo_equals_trls_sigmoid_norm():
    batch, logits, completion = _batch([4, 3, 1, 5, 2, 4])
    ref = torch.tensor([-9.0, -7.5, -2.0, -6.0, -3.0, -12.0], dtype=torch.float64)
    theirs = _trl_loss(_per_token(logits, batch), completion, ref, ["sigmoid_norm"], [1.0])
    # trl normalises the summed log-ratio by the length; ours averages policy and reference: the same
    tokens = torch.tensor([4, 3, 1, 5, 2, 4], dtype=torch.float64)
    ours = _ours(PreferenceObjective(0.1, "sigmoid", length_normalized=True), logits, batch, ref / tokens)
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_rpo_by_hand():
    batch, logits, _ = _batch([2, 3, 1, 1, 3, 2])
    ref = torch.zeros(2 * PAIRS, dtype=torch.float64)
    per_token = _per_token(logits, batch)
    total = 0.0
    for pair in range(PAIRS):
        chosen, rejected = per_token[2 * pair].sum().item(), per_token[2 * pair + 1].sum().item()
        nll = -chosen / (batch.labels[2 * pair] != -100).sum().item()
        total += math.log(1 + math.exp(-0.5 * (chosen - rejected))) + 2.0 * nll
    assert _ours(PreferenceObjective(0.5, "sigmoid", rpo_alpha=2.0), logits, batch, ref) == pytest.approx(total / PAIRS, rel=1e-5)


def test_the_rpo_term_raises_the_chosen_likelihood():
    """Plain DPO's gradient can lower log p(chosen) as long as the margin grows; the NLL term pushes it up."""
    batch, logits, _ = _batch([4, 4, 4, 4, 4, 4])
    ref = torch.zeros(2 * PAIRS, dtype=torch.float64)
    chosen_grad = {}
    for alpha in (0.0, 5.0):
        model = FixedLogits(logits)
        DPOLoss(PreferenceObjective(0.1, "sigmoid", rpo_alpha=alpha), Precomputed(ref.numpy()))(model, batch).loss_sum.backward()
        with torch.no_grad():  # a small step against the gradient, then log p(chosen) summed over pairs
            stepped = logits - 1.0 * model.logits.grad
        chosen_grad[alpha] = _per_token(stepped, batch)[0::2].sum().item() - _per_token(logits, batch)[0::2].sum().item()
    assert chosen_grad[5.0] > chosen_grad[0.0] and chosen_grad[5.0] > 0


def _row(step, margin, chosen, dpo_loss=0.6):
    return MetricsRow(step=step, loss=dpo_loss + 1.0, lr=1e-3, tokens=0, tokens_per_s=None, grad_norm=None,
                      values={"rewards/margins": margin, "logps/chosen": chosen, "dpo_loss": dpo_loss})


def test_the_watch_stops_only_when_asked():
    for stop in (False, True):
        watch = DPOWatch(window=5, stop_on_collapse=stop)
        for step in range(1, 7):
            watch.update(step, _row(step, 0.1 * step, -10.0 - step))
        assert (watch.stop_reason is not None) == stop
        assert stop is False or "collapsing" in watch.stop_reason
    watch = DPOWatch(window=5, stop_on_collapse=True)
    watch.update(1, _row(1, 25.0, -10.0))  # diverging, before the window is full
    assert watch.stop_reason is not None and "diverging" in watch.stop_reason
    watch = DPOWatch(window=5, stop_on_collapse=True)  # a loss at ln 2 (not moving) warns, never stops
    for step in range(1, 8):
        watch.update(step, _row(step, 0.0, -10.0, dpo_loss=math.log(2)))
    assert watch.stop_reason is None


def test_the_flat_check_reads_the_dpo_term_not_the_rpo_total():
    watch = DPOWatch(window=5)
    said = [watch.update(step, _row(step, 0.0, -10.0, dpo_loss=math.log(2))) for step in range(1, 6)]
    assert "not moving" in said[-1][0]  # the row's loss is ln 2 + 1 (the NLL term); the DPO term alone is ln 2


def test_a_collapsing_dpo_stage_stops_and_keeps_its_model(workspace, trained, tmp_path):
    spec = json.loads((workspace / "tiny.json").read_text())
    spec["techniques"]["dpo"] = {"lr": 0.05, "stop_on_collapse": True, "warmup": 0}
    (tmp_path / "stop.json").write_text(json.dumps(spec))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "stop.json"), "--stage", "dpo", "--init", str(trained),
                                      "--dpo-data", str(workspace / "pairs.jsonl"), "--tokenizer", str(workspace / "tok"),
                                      "--out", str(tmp_path / "run"), "--no-progress", "--max-steps", "200", "--eval-every", "0"])
    assert result.exit_code == 0, result.output
    executed = json.loads((tmp_path / "run" / "dpo" / "executed.json").read_text())
    rows = metrics(tmp_path / "run" / "dpo" / "metrics.jsonl")
    assert executed["stopped_by"] is not None and executed["steps"] == len(rows) < 200
    assert "stopped early by its watch" in result.output
    assert (tmp_path / "run" / "dpo" / "final" / "model.safetensors").is_file()
    plan = json.loads((tmp_path / "run" / "dpo" / "plan.json").read_text())
    assert "stops the stage if the likelihoods collapse" in json.dumps(plan)
