"""Shared by the engine tests: a generated corpus (pretraining text, arithmetic conversations,
preference pairs), a tokenizer trained on it, a tiny spec, and one finished two-stage run."""

from __future__ import annotations

import copy
import json
import random

import pytest
from typer.testing import CliRunner

from minimind_spec.cli import app
from minimind_spec.engine.data.tokenizer import train_tokenizer

from ..conftest import TINY

WORDS = "the cat sat on a mat dog ran to big red ball two plus three is five four six".split()


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    rng = random.Random(0)
    pretrain = root / "pretrain.jsonl"
    pretrain.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))}) + "\n"
                                for _ in range(400)))
    sft = root / "sft.jsonl"
    rows = []
    for _ in range(120):
        a, b = rng.randint(0, 4), rng.randint(0, 4)
        rows.append(json.dumps({"conversations": [{"role": "user", "content": f"what is {a} plus {b}"},
                                                  {"role": "assistant", "content": f"{a} plus {b} is {a + b}"}]}))
    sft.write_text("\n".join(rows) + "\n")
    uneven, rng_uneven = [], random.Random(1)  # answers of very different lengths, some with reasoning: what token weighting is about
    for i in range(60):
        a, b = rng_uneven.randint(0, 4), rng_uneven.randint(0, 4)
        answer = " ".join(f"{a} plus {b} is {a + b}" for _ in range(rng_uneven.choice([1, 1, 2, 5, 9])))
        turn = {"role": "assistant", "content": answer}
        if i % 3 == 0:
            turn["reasoning_content"] = f"{a} and {b} make {a + b}"
        uneven.append(json.dumps({"conversations": [{"role": "user", "content": f"what is {a} plus {b}"}, turn]}))
    (root / "sft_uneven.jsonl").write_text("\n".join(uneven) + "\n")
    tokenizer = train_tokenizer([pretrain, sft], 320, root / "tok", min_frequency=1)
    spec = copy.deepcopy(TINY)
    spec["hyperparams"] |= {"vocab": tokenizer.vocab_size, "dtype": "float32", "seq_len": 64}
    spec["techniques"] = {"sft": {"enabled": True, "datasets": ["sft"], "epochs": 1}}
    spec["optim"] = {"lr": 3e-3, "warmup": 2, "batch_size": 4}
    (root / "tiny.json").write_text(json.dumps(spec))
    pairs = []
    for _ in range(80):  # the right sum against a wrong one
        a, b = rng.randint(0, 4), rng.randint(0, 4)
        prompt = [{"role": "user", "content": f"what is {a} plus {b}"}]
        pairs.append(json.dumps({"chosen": prompt + [{"role": "assistant", "content": f"{a} plus {b} is {a + b}"}],
                                 "rejected": prompt + [{"role": "assistant", "content": f"{a} plus {b} is {a + b + 1}"}]}))
    (root / "pairs.jsonl").write_text("\n".join(pairs) + "\n")
    return root


def args(root, out, *extra):
    return ["train", str(root / "tiny.json"), "--pretrain-data", str(root / "pretrain.jsonl"), "--sft-data",
            str(root / "sft.jsonl"), "--tokenizer", str(root / "tok"), "--out", str(out), "--no-progress", *extra]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="session")
def trained(workspace, tmp_path_factory):
    """A finished two-stage run (30 pretraining steps, then 30 SFT steps) through the CLI."""
    out = tmp_path_factory.mktemp("trained") / "run"
    result = CliRunner().invoke(app, args(workspace, out, "--max-steps", "30", "--eval-every", "10", "--save-every", "10"))
    assert result.exit_code == 0, result.output
    return out


def stage_setup(spec, kind, data, run_dir, *, variant=None, seed=0, inputs=None, **plan_changes):
    """The planned stage `kind` of `spec` on `data`, its input model (seeded init) and its parts, as `train` builds
    them; `plan_changes` replace plan fields (batch_size, micro_batch, max_steps, ...). Returns
    (graph, model, stage plan, parts, loop settings)."""
    from dataclasses import replace

    from minimind_spec import build_graph, load_spec, resolve
    from minimind_spec.engine import compile_graph, set_trainable
    from minimind_spec.engine.data.token_cache import build_token_cache
    from minimind_spec.engine.data.tokenizer import load_tokenizer
    from minimind_spec.engine.train.loop import LoopSettings
    from minimind_spec.engine.train.precision import PrecisionRuntime
    from minimind_spec.engine.train.stages import StageInputs, build_stage
    from minimind_spec.graph import ParamRole
    from minimind_spec.plan import PlanInputs, build_plan
    from minimind_spec.stages import StageKind, stage

    resolved = resolve(load_spec(spec), variant)
    graph = build_graph(resolved)
    plan = build_plan(resolved, PlanInputs(data={StageKind(kind): data}, stages=(StageKind(kind),), **(inputs or {})), graph)
    planned = replace(plan.stages[0], **plan_changes)
    tokenizer = load_tokenizer(data.parent / "tok") if (data.parent / "tok").is_dir() else None
    records = stage(kind).records
    cache = build_token_cache(data, tokenizer, records, run_dir / "cache",
                              max_length=None if records == "pretrain" else planned.seq_len)
    model = compile_graph(graph, seed=seed)
    set_trainable(model, graph, {ParamRole(r) for r in planned.trainable_roles})
    precision = PrecisionRuntime(planned.precision, "cpu")
    parts = build_stage(StageInputs(planned, model, cache, tokenizer.pad_id, "cpu", precision, resolved.model.moe is not None,
                                    tokenizer))
    settings = LoopSettings(run_dir / kind, eval_every=0, save_every=2, progress=False)
    return graph, model, planned, parts, settings


def lm_eval_choice_task(name: str, data) -> str:
    """An lm-eval multiple-choice task YAML over a local JSONL file of {question, choices, answer} records; the
    question follows `<|im_start|>` (lm-eval gives a non-empty context no BOS of its own)."""
    return f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "<|im_start|>{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""
