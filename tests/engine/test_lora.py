"""LoRA end to end: the card's recipe command trains only the adapters; the adapters load with
peft onto the base in transformers and give the same logits; `lora merge` folds them into a
dense model with the same logits that loads as a plain LlamaForCausalLM; an adapter is refused
on another base."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from minimind_spec.cli import app
from minimind_spec.engine.export import load_model_files

from .conftest import metrics

IDS = torch.tensor([[1, 5, 9, 12, 7, 30, 2]])


@pytest.fixture(scope="module")
def lora_run(workspace, trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    recipe = ["train", str(workspace / "tiny.json"), "--stage", "lora", "--lora_rank", "8", "--lr", "1e-4",
              "--batch_size", "8", "--epochs", "3", "--bf16"]  # the card's command, as written
    where = ["--init", str(trained / "pretrain"), "--sft-data", str(workspace / "sft.jsonl"), "--tokenizer",
             str(workspace / "tok"), "--out", str(out), "--no-progress", "--eval-every", "0"]
    result = CliRunner().invoke(app, recipe + where)
    assert result.exit_code == 0, result.output
    assert "trained lora:" in result.output and "%)" in result.output
    return out


def _logits(model):
    with torch.no_grad():
        return model.eval()(IDS).logits


def test_the_recipe_trains_only_the_adapters(trained, lora_run):
    from minimind_spec.engine.train.checkpoint import read_state
    from minimind_spec.model_files import latest_checkpoint

    state = read_state(latest_checkpoint(lora_run / "sft"))
    # --epochs 3: ceil(3 x rows / 8) steps, so the last step ends 3 epochs and takes under 8 rows of a fourth
    assert state.epoch == 3 and state.position < 8 and len(metrics(lora_run / "sft" / "metrics.jsonl")) == state.step
    base = load_model_files(trained / "pretrain" / "final").state_dict()
    tuned = load_model_files(lora_run / "sft" / "final").state_dict()
    adapters = [k for k in tuned if ".lora." in k]
    assert adapters and all(".self_attn.q_proj." in k or ".self_attn.v_proj." in k for k in adapters)  # the card's targets
    assert all(torch.equal(base[k], tuned[k]) for k in base)  # the base did not move
    assert any(k.endswith(".lora.B") and tuned[k].abs().sum() > 0 for k in adapters)  # B left zero: the adapters trained
    config = json.loads((lora_run / "sft" / "final" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["peft_type"] == "LORA"


def test_peft_loads_the_adapters_onto_the_exported_base(trained, lora_run, tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    exported = CliRunner().invoke(app, ["export", str(trained / "pretrain"), "--out", str(tmp_path / "base")])
    assert exported.exit_code == 0, exported.output
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    adapted = peft.PeftModel.from_pretrained(base, lora_run / "sft" / "final" / "adapter")
    ours = load_model_files(lora_run / "sft" / "final")
    assert torch.allclose(_logits(adapted), _logits(ours), atol=1e-5)


def test_lora_merge_gives_the_same_model_dense(workspace, trained, lora_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    merged = CliRunner().invoke(app, ["lora", "merge", str(lora_run), "--out", str(tmp_path / "merged")])
    assert merged.exit_code == 0, merged.output
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["minimind_spec"]["model"]["lora"] is None and config["architectures"] == ["LlamaForCausalLM"]
    ours = load_model_files(lora_run / "sft" / "final")
    assert torch.allclose(_logits(load_model_files(tmp_path / "merged")), _logits(ours), atol=1e-5)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.allclose(_logits(hf), _logits(ours), atol=1e-5)

    again = CliRunner().invoke(app, ["lora", "merge", str(trained / "pretrain"), "--adapter",
                                     str(lora_run / "sft" / "final" / "adapter"), "--out", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output  # the base + its PEFT adapter: the same merged weights
    assert torch.allclose(_logits(load_model_files(tmp_path / "again")), _logits(ours), atol=1e-5)

    other = json.loads((workspace / "tiny.json").read_text())
    other["hyperparams"]["n_layers"] = 3
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert CliRunner().invoke(app, ["build", str(tmp_path / "other.json"), "--out", str(tmp_path / "otherbase")]).exit_code == 0
    refused = CliRunner().invoke(app, ["lora", "merge", str(tmp_path / "otherbase"), "--adapter",
                                       str(lora_run / "sft" / "final" / "adapter"), "--out", str(tmp_path / "bad")])
    assert refused.exit_code == 2 and "another base model" in refused.output and "n_layers" in refused.output


def test_dpo_after_a_lora_stage_starts_from_its_input_model(workspace, lora_run, tmp_path):
    # the input adapters are trained: disabling them would give the base, not the input model
    result = CliRunner().invoke(app, ["train", str(workspace / "tiny.json"), "--stage", "dpo", "--lora", "--lora-rank", "8",
                                      "--init", str(lora_run), "--dpo-data", str(workspace / "pairs.jsonl"), "--tokenizer",
                                      str(workspace / "tok"), "--out", str(tmp_path / "dpo"), "--no-progress",
                                      "--max-steps", "2", "--eval-every", "0"])
    assert result.exit_code == 0, result.output
    first = metrics(tmp_path / "dpo" / "dpo" / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5) and first["rewards/margins"] == pytest.approx(0, abs=1e-5)


def test_export_never_leaks_adapters_into_a_base_model(trained, lora_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = load_model_files(lora_run / "sft" / "final")
    base = load_model_files(trained / "pretrain" / "final")
    for mode, expected in (("merged", ours), ("base", base)):
        done = CliRunner().invoke(app, ["export", str(lora_run), "--lora", mode, "--out", str(tmp_path / mode)])
        assert done.exit_code == 0, done.output
        hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / mode, output_loading_info=True)
        assert not info["unexpected_keys"] and not info["missing_keys"], info  # no lora tensors, nothing left out
        assert torch.allclose(_logits(hf), _logits(expected), atol=1e-5), mode
    generation = json.loads((tmp_path / "merged" / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}  # the run's tokenizer's ids
    assert (tmp_path / "merged" / "tokenizer.json").is_file()
    adapter = CliRunner().invoke(app, ["export", str(lora_run), "--lora", "adapter", "--out", str(tmp_path / "adapter")])
    assert adapter.exit_code == 0 and (tmp_path / "adapter" / "adapter_config.json").is_file(), adapter.output
    bad = CliRunner().invoke(app, ["export", str(trained), "--lora", "adapter", "--out", str(tmp_path / "none")])
    assert bad.exit_code == 2 and "no LoRA adapters" in bad.output


def test_untrained_adapters_of_another_rank_start_fresh_and_trained_ones_are_refused(tmp_path) -> None:  # noqa: ANN001
    """A base trained with rank-8 adapters in place (B = 0) starts a rank-4 run: the base weights
    load, the rank-4 adapters keep their initial values; trained rank-8 adapters are refused."""
    import copy as _copy
    import json as _json

    from safetensors.torch import save_file

    from minimind_spec.engine.compile import compile_model
    from minimind_spec.engine.export import load_weights_into
    from minimind_spec.errors import InputError
    from minimind_spec.loader import load_spec
    from minimind_spec.resolve import resolve

    from ..conftest import TINY

    models = {}
    for rank in (8, 4):
        spec = _copy.deepcopy(TINY)
        spec["techniques"] = {"lora": {"enabled": True, "rank": rank, "alpha": 16, "placements": ["q_proj", "v_proj"]}}
        path = tmp_path / f"r{rank}.json"
        path.write_text(_json.dumps(spec))
        models[rank] = compile_model(resolve(load_spec(path)), seed=rank)
    source = {k: v.contiguous() for k, v in models[8].state_dict().items() if k != "lm_head.weight"}
    save_file(source, str(tmp_path / "r8.safetensors"))
    fresh = {k: v.clone() for k, v in models[4].state_dict().items() if ".lora." in k}
    load_weights_into(models[4], tmp_path / "r8.safetensors")
    loaded = models[4].state_dict()
    assert all(torch.equal(loaded[k], source[k]) for k in source if ".lora." not in k)
    assert all(torch.equal(loaded[k], v) for k, v in fresh.items())
    trained = next(k for k in source if k.endswith(".lora.B"))
    source[trained] = torch.ones_like(source[trained])
    save_file(source, str(tmp_path / "r8_trained.safetensors"))
    with pytest.raises(InputError, match="trained LoRA adapters of another rank"):
        load_weights_into(models[4], tmp_path / "r8_trained.safetensors")
