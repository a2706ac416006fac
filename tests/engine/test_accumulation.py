"""The gradient does not depend on how a step's batch is split: every micro-batch's loss sum is
divided by the step's total count (all micro-batches, all processes), so one step with
`--micro-batch 1`, with the whole batch in one forward, or over two gloo processes gives the
same loss and gradients. The data are conversations with answers of very different lengths,
where weighting each micro-batch's mean equally (the old rule) gives another gradient."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from builders.techniques import causal_lm_loss
from minimind_spec.engine.train.loop import set_up, train_step
from minimind_spec.engine.train.precision import PrecisionRuntime

from ..conftest import ROOT
from .conftest import metrics, stage_setup

BATCH = 12


def _step(workspace, run_dir, micro_batch, kind="sft", data="sft_uneven.jsonl"):
    """One step (lr 0: the gradient stays in .grad) of BATCH unpacked rows in micro-batches of `micro_batch`."""
    graph, model, stage, parts, settings = stage_setup(
        workspace / "tiny.json", kind, workspace / data, run_dir, inputs={"pack": False}, batch_size=BATCH,
        micro_batch=micro_batch, grad_accumulation=BATCH // micro_batch, grad_clip=None, max_steps=1)
    trainer = set_up(stage, parts, model, graph, settings, PrecisionRuntime(stage.precision, "cpu"))
    rows = parts.data.train_rows[:BATCH].tolist()
    loss, _, _, norm = train_step(trainer, rows, lr=0.0)
    return loss, norm, {name: p.grad.clone() for name, p in model.named_parameters()}, parts, model, rows


@pytest.mark.parametrize("micro_batch", [1, 4])
def test_a_step_gives_the_same_loss_and_gradients_whatever_the_micro_batch(workspace, tmp_path, micro_batch):
    whole_loss, whole_norm, whole, *_ = _step(workspace, tmp_path / "whole", BATCH)
    split_loss, split_norm, split, *_ = _step(workspace, tmp_path / "split", micro_batch)
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    assert split_norm == pytest.approx(whole_norm, rel=1e-5)
    for name, gradient in whole.items():
        torch.testing.assert_close(split[name], gradient, rtol=1e-5, atol=1e-6 * float(gradient.abs().max()))


def test_the_old_rule_of_equal_micro_batch_means_would_not(workspace, tmp_path):
    """The data discriminate: averaging per-micro-batch means moves the gradient by far more than the tolerance."""
    _, whole_norm, whole, parts, model, rows = _step(workspace, tmp_path / "whole", BATCH)
    model.zero_grad(set_to_none=True)
    for row in rows:  # micro-batch 1, each mean weighted 1 / BATCH
        batch = parts.data.batch([row], "cpu")
        (causal_lm_loss(model(batch.input_ids).logits, batch.labels) / BATCH).backward()
    old = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
    assert abs(float(old) - whole_norm) / whole_norm > 1e-3  # (here 0.7%: a hundred times the tolerance above)


def test_two_gloo_processes_give_the_same_steps_as_one(workspace, tmp_path):
    common = ["train", str(workspace / "tiny.json"), "--stage", "sft", "--sft-data", str(workspace / "sft_uneven.jsonl"),
              "--tokenizer", str(workspace / "tok"), "--no-pack", "--batch-size", "4", "--max-steps", "4", "--eval-every", "0",
              "--save-every", "4", "--deterministic", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "minimind_spec", *common, "--out", str(tmp_path / "one")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                          "minimind_spec", *common, "--micro-batch", "1", "--out", str(tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    single, ddp = metrics(tmp_path / "one" / "sft" / "metrics.jsonl"), metrics(tmp_path / "two" / "sft" / "metrics.jsonl")
    assert [row["step"] for row in ddp] == [1, 2, 3, 4] and [r["tokens"] for r in ddp] == [r["tokens"] for r in single]
    for a, b in zip(single, ddp):  # one forward of 4 rows against 2 processes x 2 micro-batches of 1 row
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    assert (tmp_path / "two" / "sft" / "final" / "model.safetensors").is_file()  # rank 0 wrote the result
