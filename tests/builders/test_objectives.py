"""The causal-LM objective (`builders.techniques.causal_lm`) against values computed by hand
from log-softmax, and the model outputs objectives read: hidden states equal Hugging Face
Llama's, and the loss does not depend on whether it is computed by the model or outside it."""

from __future__ import annotations

import math

import pytest
import torch

from builders.techniques import IGNORE_INDEX, causal_lm_loss, sequence_log_probs, token_log_probs
from minimind_spec import compile_model

from .helpers import hf_llama, load_into_hf, randomize

B, T, V = 2, 5, 7


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(B, T, V, generator=generator)
    labels = torch.randint(0, V, (B, T), generator=generator)
    labels[0, :2] = IGNORE_INDEX  # a prompt
    labels[1, 4] = IGNORE_INDEX  # padding
    return logits, labels


def by_hand(logits, labels, smoothing=0.0, weights=None):
    """Next-token cross-entropy in plain Python loops: position t predicts labels[t + 1]."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    total = weight_sum = 0.0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == IGNORE_INDEX:
                continue
            nll = -float(log_probs[b, t, target])
            uniform = -float(log_probs[b, t].mean())
            loss = (1 - smoothing) * nll + smoothing * uniform
            w = 1.0 if weights is None else float(weights[b, t + 1])
            total += w * loss
            weight_sum += w
    return total / weight_sum


def test_loss_is_the_mean_over_trained_positions(batch):
    logits, labels = batch
    assert float(causal_lm_loss(logits, labels)) == pytest.approx(by_hand(logits, labels), rel=1e-6)


def test_label_smoothing(batch):
    logits, labels = batch
    assert float(causal_lm_loss(logits, labels, label_smoothing=0.1)) == pytest.approx(by_hand(logits, labels, 0.1), rel=1e-6)


def test_token_weights_give_a_weighted_mean(batch):
    logits, labels = batch
    weights = torch.ones(B, T)
    weights[0, 3] = 0.5  # e.g. a reasoning token
    weights[1, 2] = 2.0
    got = float(causal_lm_loss(logits, labels, label_smoothing=0.05, token_weights=weights))
    assert got == pytest.approx(by_hand(logits, labels, 0.05, weights), rel=1e-6)
    assert got != pytest.approx(float(causal_lm_loss(logits, labels, label_smoothing=0.05)), rel=1e-6)
    # uniform weights change nothing: a weight only counts relative to the others
    uniform = float(causal_lm_loss(logits, labels, token_weights=torch.full((B, T), 0.5)))
    assert uniform == pytest.approx(float(causal_lm_loss(logits, labels)), rel=1e-6)


def test_token_and_sequence_log_probs(batch):
    logits, labels = batch
    log_probs, mask = token_log_probs(logits, labels)
    reference = torch.log_softmax(logits.double(), dim=-1)
    expected_mask = torch.tensor([[False, True, True, True, False], [True, True, True, False, False]])
    assert torch.equal(mask, expected_mask)
    for b in range(B):
        expected = sum(float(reference[b, t, labels[b, t + 1]]) for t in range(T - 1) if labels[b, t + 1] != IGNORE_INDEX)
        count = int(expected_mask[b].sum())
        assert float(sequence_log_probs(logits, labels)[b]) == pytest.approx(expected, rel=1e-6)
        assert float(sequence_log_probs(logits, labels, average=True)[b]) == pytest.approx(expected / count, rel=1e-6)
        assert float(log_probs[b][~mask[b]].abs().sum()) == 0.0


def test_all_ignored_is_zero_not_nan():
    logits = torch.randn(1, 3, V, requires_grad=True)
    labels = torch.full((1, 3), IGNORE_INDEX)
    assert float(causal_lm_loss(logits, labels)) == 0.0
    assert float(causal_lm_loss(logits, labels, token_weights=torch.ones(1, 3))) == 0.0
    assert float(sequence_log_probs(logits, labels, average=True)[0]) == 0.0
    causal_lm_loss(logits, labels).backward()  # still differentiable: a step on an all-padding batch is a no-op
    assert float(logits.grad.abs().sum()) == 0.0


def test_uniform_distribution_gives_log_vocab():
    logits = torch.zeros(1, 4, V)
    labels = torch.tensor([[1, 2, 3, 4]])
    assert float(causal_lm_loss(logits, labels)) == pytest.approx(math.log(V))


def test_model_loss_is_the_next_token_cross_entropy_by_hand(tiny):
    model = compile_model(tiny(), seed=0)
    input_ids = torch.randint(0, 128, (2, 12))
    labels = input_ids.clone()
    labels[:, :4] = IGNORE_INDEX
    out = model(input_ids, labels=labels)
    assert float(out.loss) == pytest.approx(by_hand(out.logits.detach(), labels), rel=1e-5)


def test_hidden_states_match_hf_llama(tiny):
    pytest.importorskip("transformers")
    resolved = tiny({"hyperparams": {"n_kv_heads": 2}})
    ours = compile_model(resolved, seed=0).eval()
    randomize(ours)
    hf = hf_llama(resolved.model)
    load_into_hf(ours, hf)
    input_ids = torch.randint(0, resolved.model.vocab_size, (2, 16))
    with torch.no_grad():
        mine = ours(input_ids, output_hidden_states=True)
        theirs = hf(input_ids, output_hidden_states=True)
    assert mine.hidden_states is not None and len(mine.hidden_states) == resolved.model.n_layers + 1
    assert len(theirs.hidden_states) == len(mine.hidden_states)
    for a, b in zip(mine.hidden_states, theirs.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert ours(input_ids).hidden_states is None
