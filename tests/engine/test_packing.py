"""Packing changes speed, never the objective: inside a packed row every sample attends to itself
only and its positions start at 0, so its logits and its loss are those of the sample run alone
(SFT, distillation, MoE), and one training step on packed rows logs the same loss as the same
samples one per padded row (`--no-pack`). Pretraining rows isolate their documents with
`--doc-mask` and attend across them without it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from minimind_spec import build_graph, load_spec, resolve
from minimind_spec.cli import app
from minimind_spec.engine import compile_graph
from minimind_spec.engine.data.packing import sample_layout, sample_row, stream_layout, stream_row
from minimind_spec.engine.data.token_cache import build_token_cache
from minimind_spec.engine.data.tokenizer import load_tokenizer
from minimind_spec.engine.train.stages.batches import collate_rows
from minimind_spec.engine.train.stages.distillation import DistillationLoss
from minimind_spec.engine.train.stages.language_model import LanguageModelLoss
from minimind_spec.objectives import DistillObjective

from .conftest import metrics

SEQ_LEN = 256


def _spec(workspace, tmp_path, **hyperparams):
    spec = json.loads((workspace / "tiny.json").read_text())
    spec["hyperparams"] |= {"seq_len": SEQ_LEN, **hyperparams}
    spec["moe"] = {"num_experts": 4, "top_k": 2}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _model(spec, variant=None, seed=0):
    return compile_graph(build_graph(resolve(load_spec(spec), variant)), seed=seed).eval()


@pytest.fixture(scope="module")
def conversations(workspace, tmp_path_factory):
    tokenizer = load_tokenizer(workspace / "tok")
    cache = build_token_cache(workspace / "sft_uneven.jsonl", tokenizer, "conversation", tmp_path_factory.mktemp("cache"),
                              max_length=SEQ_LEN)
    packed, alone = sample_layout(cache, SEQ_LEN, packed=True), sample_layout(cache, SEQ_LEN, packed=False)
    row = next(i for i, (first, end) in enumerate(packed.spans) if end - first >= 4)  # a row of at least 4 samples
    return cache, tokenizer.pad_id, packed, alone, row


def _packed_and_alone(conversations):
    cache, pad, packed, alone, row = conversations
    first, end = packed.spans[row]
    together = collate_rows([sample_row(cache, packed, row, pad)], "cpu")
    singles = [collate_rows([sample_row(cache, alone, i, pad)], "cpu") for i in range(first, end)]
    return together, singles, [int(n) for n in cache.lengths[first:end]]


@pytest.mark.parametrize("variant", [None, "MoE"])
def test_each_sample_of_a_packed_row_has_its_logits_alone(workspace, tmp_path, conversations, variant):
    model = _model(_spec(workspace, tmp_path), variant)
    together, singles, lengths = _packed_and_alone(conversations)
    assert together.packed is not None and together.packed.samples == len(singles) + 1  # + the padding tail
    with torch.no_grad():
        packed_logits = model(together.input_ids, packed=together.packed).logits[0]  # (T, V)
        plain_logits = model(together.input_ids).logits[0]  # the same row with plain causal attention
        offset = 0
        for single, length in zip(singles, lengths):
            alone = model(single.input_ids).logits[0, :length]
            torch.testing.assert_close(packed_logits[offset:offset + length], alone, atol=1e-5, rtol=1e-5)
            offset += length
    second = slice(lengths[0], lengths[0] + lengths[1])  # without the mask the second sample sees the first
    assert (plain_logits[second] - packed_logits[second]).abs().max() > 1e-2


@pytest.mark.parametrize("variant", [None, "MoE"])
def test_a_packed_rows_loss_is_the_sum_of_its_samples_losses(workspace, tmp_path, conversations, variant):
    model = _model(_spec(workspace, tmp_path), variant)
    objective = LanguageModelLoss(0.0)
    together, singles, _ = _packed_and_alone(conversations)
    with torch.no_grad():
        packed = objective(model, together)
        alone = [objective(model, single) for single in singles]
    count = objective.count(together)
    assert count == sum(objective.count(single) for single in singles) > 0
    # the LM part (MoE: the balance loss is a statistic of the whole forward's routing and is left out)
    lm_packed = packed.metrics["lm_loss"] * count
    lm_alone = sum(out.metrics["lm_loss"] * objective.count(single) for out, single in zip(alone, singles))
    assert lm_packed == pytest.approx(lm_alone, rel=1e-5)
    if variant is None:
        assert float(packed.loss_sum) == pytest.approx(sum(float(out.loss_sum) for out in alone), rel=1e-5)


def test_a_distillation_rows_loss_is_the_sum_of_its_samples_losses(workspace, tmp_path, conversations):
    spec = _spec(workspace, tmp_path)
    student, teacher = _model(spec, seed=0), _model(spec, seed=1)
    objective = DistillationLoss(teacher, DistillObjective("logit", 0.5, 2.0, "KL", 0.5))
    together, singles, _ = _packed_and_alone(conversations)
    assert bool(together.reasoning.any())  # the row holds <think> tokens: their weights are part of the check
    with torch.no_grad():
        packed = objective(student, together)
        alone = [objective(student, single) for single in singles]
    assert objective.count(together) == pytest.approx(sum(objective.count(s) for s in singles), rel=1e-6)
    assert float(packed.loss_sum) == pytest.approx(sum(float(out.loss_sum) for out in alone), rel=1e-5)


def test_one_step_on_packed_rows_logs_the_loss_of_the_same_samples_unpacked(workspace, tmp_path):
    twelve = tmp_path / "twelve.jsonl"
    twelve.write_text("".join((workspace / "sft_uneven.jsonl").read_text().splitlines(keepends=True)[:12]))
    spec = _spec(workspace, tmp_path, seq_len=1024)
    common = ["train", str(spec), "--stage", "sft", "--sft-data", str(twelve), "--tokenizer", str(workspace / "tok"),
              "--max-steps", "1", "--eval-every", "0", "--no-progress", "--grad-clip", "1000"]
    packed = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "packed"), "--batch-size", "1"])  # one row: all 12
    unpacked = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "unpacked"), "--batch-size", "12", "--no-pack"])
    assert packed.exit_code == 0 and unpacked.exit_code == 0, packed.output + unpacked.output
    assert "12 samples packed into 1 rows" in packed.output
    one, twelve_rows = metrics(tmp_path / "packed" / "sft" / "metrics.jsonl")[0], metrics(tmp_path / "unpacked" / "sft" / "metrics.jsonl")[0]
    assert one["tokens"] == twelve_rows["tokens"]  # the same real tokens
    assert one["loss"] == pytest.approx(twelve_rows["loss"], rel=1e-5)
    assert one["grad_norm"] == pytest.approx(twelve_rows["grad_norm"], rel=1e-4)


def test_pretraining_rows_isolate_their_documents_only_with_the_document_mask(workspace, tmp_path):
    tokenizer = load_tokenizer(workspace / "tok")
    cache = build_token_cache(workspace / "pretrain.jsonl", tokenizer, "pretrain", tmp_path / "cache")
    layout = stream_layout(cache, 64)
    assert stream_row(cache, layout, 3).positions is None  # default: documents attend across (nanoGPT, MiniMind)
    row = stream_row(cache, layout, 3, document_mask=True)
    starts = [int(s) - 3 * 64 for s in cache.offsets if 3 * 64 < s < 4 * 64]
    assert starts and [i for i, p in enumerate(row.positions) if p == 0] == [0, *starts]
    assert all(row.labels[s] == -100 for s in starts)  # a document's first token is not predicted from the one before
    model = _model(workspace / "tiny.json")
    batch = collate_rows([row], "cpu")
    document = slice(starts[0], starts[1] if len(starts) > 1 else 64)
    with torch.no_grad():
        inside = model(batch.input_ids, packed=batch.packed).logits[0, document]
        alone = model(batch.input_ids[:, document]).logits[0]
    torch.testing.assert_close(inside, alone, atol=1e-5, rtol=1e-5)
    assert np.array_equal(row.input_ids, stream_row(cache, layout, 3).input_ids)  # the same tokens either way
