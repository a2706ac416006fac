"""The study's measurements, against hand-computed values."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from minimind_spec.engine.compile import compile_model
from minimind_spec.metrics import MetricsRow, read_metrics
from minimind_spec.engine.study.evaluate import HeldOut, norm_saved_bytes, position_losses, preference, score_answer, training_curve
from minimind_spec.loader import load_spec
from minimind_spec.resolve import resolve

from ..conftest import TINY


def tiny_model(tmp_path: Path, **backbone: str) -> torch.nn.Module:
    spec = copy.deepcopy(TINY)
    spec["backbone"] |= backbone
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return compile_model(resolve(load_spec(path)), seed=0).eval()


@pytest.mark.parametrize("norm, floats_per_token", [("RMSNorm", 64 + 1), ("LayerNorm", 64 + 2)])
def test_norm_memory_is_the_normalised_output_and_statistics(tmp_path: Path, norm: str, floats_per_token: int) -> None:
    # each of the 5 norms (2 per layer, 2 layers, and the final one) keeps its fp32 normalised
    # output (d_model 64, for the weight's gradient) and per token 1/sqrt(mean x^2) (RMSNorm) or
    # the mean and 1/std (LayerNorm)
    measured = norm_saved_bytes(tiny_model(tmp_path, norm=norm), seq_len=32)
    assert measured.exact and measured.value == 5 * floats_per_token * 4


def test_answers_are_scored_with_their_reasoning_steps() -> None:
    assert score_answer("5 + 3 = 8. 8 - 2 = 6. The answer is 6.", 6) == (True, 2, 2)
    assert score_answer("5 + 3 = 9. 9 - 2 = 7. The answer is 7.", 6) == (False, 2, 1)
    assert score_answer("The answer is 6. 1 + 1 = 3.", 6) == (True, 0, 0)  # steps after the answer do not count
    assert score_answer("5 + 3 = 8.", 8) == (False, 1, 1)


def test_training_curve_metrics(tmp_path: Path) -> None:
    losses = [2.0] * 30
    losses[25] = 2.5  # one spike: over 1.1 x the median of the 20 before
    rows = [MetricsRow(step=i + 1, loss=loss, lr=1e-3, tokens=100 * (i + 1), tokens_per_s=50.0 if i % 2 else 100.0,
                       grad_norm=float(i % 3), eval_loss=2.0 if i == 9 else None) for i, loss in enumerate(losses)]
    rows[-1] = replace(rows[-1], warnings=("diverging", "collapsing"))
    file = tmp_path / "metrics.jsonl"
    file.write_text("".join(json.dumps(r.to_json()) + "\n" for r in rows))
    curve = training_curve(read_metrics(file))
    assert curve["loss_spikes"].value == 1
    seconds = np.array([1.0 if i % 2 == 0 else 2.0 for i in range(5, 30)])  # 100 tokens at 100 or 50 tokens/s
    assert curve["step_seconds"].value == pytest.approx(float(np.median(seconds)))
    assert curve["grad_norm_variance"].value == pytest.approx(float(np.var([i % 3 for i in range(15, 30)], ddof=1)))
    assert curve["divergence_warnings"].value == 2


def _held(documents: list[list[int]], pairs=(), pad_id: int = 0) -> HeldOut:  # noqa: ANN001
    return HeldOut({"story": documents}, [p[0] for p in pairs], list(pairs), [], eos_id=1, pad_id=pad_id, decode=str)


def test_positions_a_model_lacks_are_reported_as_such(tmp_path: Path) -> None:
    model = tiny_model(tmp_path, positional_encoding="Absolute")  # TINY: seq_len 32, 32 positions
    rng = np.random.default_rng(0)
    documents = [rng.integers(2, 128, 40).tolist() for _ in range(10)]
    losses, curve = position_losses(model, _held(documents), seq_len=16)  # windows of min(4 x 16, 32) tokens
    assert losses["loss_4x"] is None  # positions 32..63 do not exist in the table
    assert all(value is None for end, value in curve if end > 32)
    # by hand: the stream of the 10 documents in 12 windows of 32; position p predicts token p + 1
    stream = [t for d in documents for t in d]
    windows = torch.tensor([stream[i:i + 32] for i in range(0, len(stream) - 31, 32)])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(windows).logits.double(), dim=-1)
    nll = -log_probs[:, :-1].gather(-1, windows[:, 1:, None])[..., 0]  # (12, 31)
    assert losses["loss_1x"].value == pytest.approx(float(nll[:, :15].mean()), rel=1e-5)  # predictions of tokens 1..15
    assert losses["loss_2x"].value == pytest.approx(float(nll[:, 15:31].mean()), rel=1e-5)  # tokens 16..31


@torch.no_grad()
def test_preference_metrics_against_hand_computed_log_probs(tmp_path: Path) -> None:
    policy, reference = tiny_model(tmp_path), tiny_model(tmp_path)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rng = np.random.default_rng(1)
    pairs = []
    for _ in range(6):
        prompt = rng.integers(2, 128, 5).tolist()
        sides = []
        for _ in range(2):
            response = rng.integers(2, 128, 4).tolist()
            sides.append((prompt + response, [-100] * 5 + response))
        pairs.append((sides[0], sides[1]))
    got = preference(policy, reference, _held([], pairs))

    def logp(model, ids, labels):  # noqa: ANN001, ANN202
        log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        return sum(float(log_probs[t - 1, labels[t]]) for t in range(len(ids)) if labels[t] != -100)

    wins, margins, kls = [], [], []
    for chosen, rejected in pairs:
        pc, pr = logp(policy, *chosen), logp(policy, *rejected)
        rc, rr = logp(reference, *chosen), logp(reference, *rejected)
        wins.append(pc > pr)
        margins.append((pc - rc) - (pr - rr))
        ids, labels = chosen
        p = torch.log_softmax(policy(torch.tensor([ids])).logits[0].float(), -1)
        q = torch.log_softmax(reference(torch.tensor([ids])).logits[0].float(), -1)
        kls.append(np.mean([float((p[t - 1].exp() * (p[t - 1] - q[t - 1])).sum()) for t in range(len(ids)) if labels[t] != -100]))
    assert got["preference_accuracy"].value == pytest.approx(np.mean(wins))
    assert got["logratio_margin"].value == pytest.approx(np.mean(margins), abs=1e-4)
    assert got["reward_accuracy"].value == pytest.approx(np.mean(np.array(margins) > 0))
    assert got["kl_to_reference"].value == pytest.approx(np.mean(kls), rel=1e-4)
    same = preference(reference, reference, _held([], pairs))
    assert same["logratio_margin"].value == 0 and same["kl_to_reference"].value == pytest.approx(0, abs=1e-7)
    assert math.isfinite(got["logratio_margin"].error)
