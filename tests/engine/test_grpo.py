"""The GRPO stage in the engine: prompt records and their cache, sampled batches whose labels cover the
completion tokens only, exactly zero gradient when every group's rewards are equal, a CLI run from an SFT'd
model that writes the named metrics, and its executed.json equal to what `train --plan --json` printed."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from builders.techniques import IGNORE_INDEX
from minimind_spec.cli import app
from minimind_spec.engine.data.records import DataError, Prompt, read_records
from minimind_spec.engine.data.token_cache import build_token_cache
from minimind_spec.engine.data.tokenizer import load_tokenizer

from .conftest import metrics, stage_setup

GROUP, NEW_TOKENS = 3, 12
NAMED = ("rewards/exact_match", "rewards/format", "reward", "reward_std", "frac_reward_zero_std", "kl", "clip_fraction",
         "completion_length", "generation_tokens_per_s")


@pytest.fixture(scope="module")
def grpo_files(workspace):
    """(spec, prompts): the workspace's tiny spec with a GRPO section, and 24 prompts with answers (one held out)."""
    prompts = workspace / "grpo_prompts.jsonl"
    lines = [json.dumps({"conversations": [{"role": "user", "content": f"what is {a} plus {b}"}], "answer": a + b})
             for a in range(4) for b in range(6)]
    prompts.write_text("\n".join(lines) + "\n")
    spec = json.loads((workspace / "tiny.json").read_text())
    spec["techniques"]["grpo"] = {"enabled": True, "num_generations": GROUP, "max_new_tokens": NEW_TOKENS, "beta": 0.04}
    path = workspace / "grpo_tiny.json"
    path.write_text(json.dumps(spec))
    return path, prompts


def test_prompt_records_and_their_errors_name_file_and_line(tmp_path):
    good = {"conversations": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+5?"}], "answer": 7}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(good) + "\n")
    ((line, record),) = list(read_records(path, "prompt"))
    assert line == 1 and isinstance(record, Prompt) and record.answer == "7" and record.conversation.turns[-1].role == "user"
    for bad, words in ((dict(good, answer=None), '"answer"'), ({"answer": "7"}, '"conversations"'),
                       (dict(good, conversations=good["conversations"] + [{"role": "assistant", "content": "7"}]),
                        "ends with a assistant turn")):
        path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=f"{path}:2: .*{words}"):
            list(read_records(path, "prompt"))


def test_a_long_prompt_keeps_its_end(workspace, tmp_path):
    tokenizer = load_tokenizer(workspace / "tok")
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"conversations": [{"role": "user", "content": "the cat sat on a mat " * 20 + "what is 2 plus 3"}],
                                "answer": "5"}) + "\n")
    cache = build_token_cache(path, tokenizer, "prompt", tmp_path / "cache", max_length=16)
    ids, trained, _ = cache.sample(0)
    assert len(ids) == 16 and cache.meta.truncated == 1 and not trained.any()
    assert tokenizer.decode(ids).endswith("what is 2 plus 3<|im_end|>\n")


def _setup(grpo_files, tmp_path):
    spec, prompts = grpo_files
    return stage_setup(spec, "grpo", prompts, tmp_path, batch_size=4, micro_batch=4)


def test_a_sampled_batch_labels_the_completion_tokens_only(grpo_files, tmp_path):
    _, model, plan, parts, _ = _setup(grpo_files, tmp_path)
    tokenizer = load_tokenizer(grpo_files[1].parent / "tok")
    torch.manual_seed(0)
    batch = parts.data.batch([0, 1, 2, 3], "cpu")
    assert batch.input_ids.shape[0] == 4 * GROUP and batch.group == GROUP
    assert model.training  # sampling ran in eval mode and put the policy back
    labelled = batch.labels != IGNORE_INDEX  # (N, T)
    prompt_length = int(labelled.int().argmax(dim=1).min())  # every completion's first token is labelled
    assert (labelled.int().argmax(dim=1) == prompt_length).all()  # prompts are left-padded to one length
    completion = batch.input_ids.shape[1] - prompt_length
    assert completion <= NEW_TOKENS and (batch.labels[:, :prompt_length] == IGNORE_INDEX).all()
    for row in range(batch.input_ids.shape[0]):
        ids, labels = batch.input_ids[row, prompt_length:], batch.labels[row, prompt_length:]
        eos = (ids == tokenizer.eos_id).nonzero()
        length = int(eos[0]) + 1 if len(eos) else completion  # through its first <|im_end|>
        assert (labels[:length] == ids[:length]).all() and (labels[length:] == IGNORE_INDEX).all()
        assert batch.attention_mask[row, prompt_length:].sum() == length
    assert batch.completion_tokens == int((batch.labels != IGNORE_INDEX).sum()) == parts.objective.count(batch)
    assert batch.advantages.view(4, GROUP).sum(dim=1).abs().max() < 1e-5
    held_out = parts.data.batch(parts.data.eval_rows.tolist(), "cpu")
    assert held_out.group == 1 and held_out.input_ids.shape[0] == len(parts.data.eval_rows)  # greedy, one each


def test_equal_rewards_in_every_group_give_exactly_zero_gradient(grpo_files, tmp_path):
    """An untrained model never writes "The answer is" nor a think block: every reward is 0, every advantage 0, and at
    the start the policy is its reference, so the KL term's gradient is 0 too."""
    _, model, _, parts, _ = _setup(grpo_files, tmp_path)
    torch.manual_seed(0)
    batch = parts.data.batch([0, 1, 2, 3], "cpu")
    assert batch.metrics["frac_reward_zero_std"] == 1.0 and float(batch.advantages.abs().max()) == 0.0
    out = parts.objective(model, batch)
    out.loss_sum.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is None or float(g.abs().max()) == 0.0 for g in grads)
    model.zero_grad(set_to_none=True)
    signal = replace(batch, advantages=torch.linspace(-1, 1, batch.input_ids.shape[0]))  # some signal: gradients flow
    parts.objective(model, signal).loss_sum.backward()
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in model.parameters())


@pytest.fixture(scope="module")
def sft_model(workspace, grpo_files, tmp_path_factory):
    """A few SFT steps: a model that has seen the chat format (the CLI path's --init)."""
    out = tmp_path_factory.mktemp("grpo_init") / "run"
    result = CliRunner().invoke(app, ["train", str(grpo_files[0]), "--stage", "sft", "--sft-data", str(workspace / "sft.jsonl"),
                                      "--tokenizer", str(workspace / "tok"), "--out", str(out), "--max-steps", "3",
                                      "--no-progress", "--eval-every", "0"])
    assert result.exit_code == 0, result.output
    return out


def test_train_stage_grpo_from_an_sft_model_writes_the_named_metrics(workspace, grpo_files, sft_model, tmp_path):
    spec, prompts = grpo_files
    command = ["train", str(spec), "--stage", "grpo", "--grpo-data", str(prompts), "--init", str(sft_model),
               "--tokenizer", str(workspace / "tok"), "--max-steps", "2", "--warmup", "1", "--micro-batch", "2"]
    planned = CliRunner().invoke(app, [*command, "--plan", "--json"])
    assert planned.exit_code == 0, planned.output
    (stage,) = json.loads(planned.stdout)["stages"]
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [*command, "--out", str(out), "--no-progress", "--eval-every", "2"])
    assert result.exit_code == 0, result.output
    rows = metrics(out / "grpo" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert all(key in row for key in NAMED), sorted(row)
        assert row["completion_length"] <= NEW_TOKENS and row["kl"] >= 0 and row["clip_fraction"] == 0.0  # one update per batch
    assert "eval_reward" in rows[-1] and "eval_rewards/exact_match" in rows[-1]
    assert (out / "grpo" / "final" / "model.safetensors").is_file()
    executed = json.loads((out / "grpo" / "executed.json").read_text())
    assert executed["reference"] == stage["reference"] == "copy"
    assert executed["precision"] == stage["precision"] and executed["trainable_params"] == stage["trainable_params"]
    assert executed["peak_lr"] == pytest.approx(stage["lr"], rel=1e-12)
    assert (executed["micro_batch"], executed["grad_accumulation"]) == (stage["micro_batch"], stage["grad_accumulation"]) == (2, 2)


def test_the_watch_warns_on_drift_and_on_no_learning_signal():
    from minimind_spec.engine.train.monitors import GRPOWatch
    from minimind_spec.metrics import MetricsRow

    def row(step, kl, equal):
        return MetricsRow(step, 0.0, 1e-6, 0, None, None, values={"kl": kl, "frac_reward_zero_std": equal})

    watch = GRPOWatch(window=3, kl_limit=0.5)
    warnings = [watch.update(step, row(step, kl, equal)) for step, (kl, equal) in
                enumerate([(0.1, 0.5), (0.9, 1.0), (0.95, 1.0), (0.2, 1.0), (0.2, 1.0), (0.7, 0.0)], 1)]
    assert [len(w) for w in warnings] == [0, 1, 0, 1, 0, 1]  # drift at 2 (once while it lasts) and again at 6; no signal at 4
    assert "drifting" in warnings[1][0] and "no learning signal" in warnings[3][0] and "drifting" in warnings[5][0]
