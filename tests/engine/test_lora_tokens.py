"""LoRA that can learn new tokens: trainable token rows and whole modules to save.

`--trainable-tokens auto` trains the tokenizer's special tokens' rows when the start model never
trained on conversations (and none after SFT); only those rows move, the base embedding does not;
the adapter file is PEFT's layout (`trainable_token_indices`, `modules_to_save`), so
`PeftModel.from_pretrained` on the exported base gives our logits, tied and untied; `lora merge`
writes the rows into a dense model with the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from minimind_spec.cli import app
from minimind_spec.engine.data.trainable_tokens import choose_trainable_tokens, parse_flag, trained_stages
from minimind_spec.engine.export import load_model_files

IDS = torch.tensor([[1, 5, 9, 12, 7, 30, 2, 3, 4]])


def _lora(workspace, trained, out, spec, *extra):
    result = CliRunner().invoke(app, ["train", str(spec), "--stage", "lora", "--lora-rank", "4", "--lr", "1e-2",
                                      "--max-steps", "8", "--init", str(trained / "pretrain"), "--sft-data",
                                      str(workspace / "sft.jsonl"), "--tokenizer", str(workspace / "tok"), "--out", str(out),
                                      "--no-progress", "--eval-every", "0", *extra])
    assert result.exit_code == 0, result.output
    return out / "sft" / "final"


def _logits(model):
    with torch.no_grad():
        return model.eval()(IDS).logits


def test_auto_picks_the_special_tokens_only_for_a_base_that_never_saw_conversations(workspace, trained):
    tok = workspace / "tok"
    assert trained_stages(trained / "pretrain") == ("pretrain",) and trained_stages(trained / "sft") == ("pretrain", "sft")
    ids, why = choose_trainable_tokens("auto", tok, trained_stages(trained / "pretrain"), "default")
    assert ids == (0, 1, 2, 3, 4) and "<think>" in why and "pretrain only" in why  # the five special tokens of our tokenizer
    assert choose_trainable_tokens("auto", tok, trained_stages(trained / "sft"), "default")[0] == ()
    assert choose_trainable_tokens("auto", tok, None, "default")[0] == ()  # history unknown: none, and it says so
    assert choose_trainable_tokens(parse_flag("<think>,7"), tok, None, "cli")[0] == (3, 7)
    with pytest.raises(Exception, match="not one token"):
        choose_trainable_tokens(["<thinking about it>"], tok, None, "cli")


def test_only_the_rows_train_and_peft_loads_them_tied(workspace, trained, tmp_path):
    peft, transformers = pytest.importorskip("peft"), pytest.importorskip("transformers")
    final = _lora(workspace, trained, tmp_path / "run", workspace / "tiny.json")
    base = load_model_files(trained / "pretrain" / "final").state_dict()
    tuned = load_model_files(final).state_dict()
    rows = tuned["model.embed_tokens.token_rows.values"]
    assert rows.shape == (5, base["model.embed_tokens.weight"].shape[1])
    assert torch.equal(base["model.embed_tokens.weight"], tuned["model.embed_tokens.weight"])  # the matrix is frozen
    assert not torch.allclose(rows, base["model.embed_tokens.weight"][:5])  # the rows trained
    config = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == [0, 1, 2, 3, 4]
    plan = json.loads((tmp_path / "run" / "sft" / "plan.json").read_text())
    assert "special tokens" in json.dumps(plan)  # the provenance says why these rows train
    exported = CliRunner().invoke(app, ["export", str(trained / "pretrain"), "--out", str(tmp_path / "base")])
    assert exported.exit_code == 0, exported.output
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    adapted = peft.PeftModel.from_pretrained(hf, final / "adapter")
    assert torch.allclose(_logits(adapted), _logits(load_model_files(final)), atol=1e-5)

    merged = CliRunner().invoke(app, ["lora", "merge", str(tmp_path / "run"), "--out", str(tmp_path / "merged")])
    assert merged.exit_code == 0, merged.output
    dense = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.allclose(_logits(dense), _logits(load_model_files(final)), atol=1e-5)


def test_untied_rows_and_modules_to_save_load_in_peft(workspace, trained, tmp_path):
    peft, transformers = pytest.importorskip("peft"), pytest.importorskip("transformers")
    spec = json.loads((workspace / "tiny.json").read_text())
    spec["hyperparams"]["tie_word_embeddings"] = False
    spec["techniques"]["lora"] = {"trainable_tokens": ["<think>", "</think>", 9], "modules_to_save": ["model.norm"]}
    (tmp_path / "untied.json").write_text(json.dumps(spec))
    base_run = tmp_path / "base_run"
    pre = CliRunner().invoke(app, ["train", str(tmp_path / "untied.json"), "--stage", "pretrain", "--max-steps", "6",
                                   "--pretrain-data", str(workspace / "pretrain.jsonl"), "--tokenizer", str(workspace / "tok"),
                                   "--out", str(base_run), "--no-progress", "--eval-every", "0"])
    assert pre.exit_code == 0, pre.output
    final = _lora(workspace, base_run, tmp_path / "run", tmp_path / "untied.json")
    state = load_model_files(final).state_dict()
    base = load_model_files(base_run / "pretrain" / "final").state_dict()
    assert state["lm_head.token_rows.values"].shape[0] == 3
    assert not torch.equal(state["model.norm.weight"], base["model.norm.weight"])  # the saved module trained whole
    assert torch.equal(state["model.layers.0.input_layernorm.weight"], base["model.layers.0.input_layernorm.weight"])
    config = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == {"embed_tokens": [3, 4, 9], "lm_head": [3, 4, 9]}
    assert config["modules_to_save"] == ["model.norm"]
    exported = CliRunner().invoke(app, ["export", str(base_run / "pretrain"), "--out", str(tmp_path / "base")])
    assert exported.exit_code == 0, exported.output
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    adapted = peft.PeftModel.from_pretrained(hf, final / "adapter")
    assert torch.allclose(_logits(adapted), _logits(load_model_files(final)), atol=1e-5)


def test_none_keeps_the_cards_lora(workspace, trained, tmp_path):
    final = _lora(workspace, trained, tmp_path / "run", workspace / "tiny.json", "--trainable-tokens", "none")
    assert not any("token_rows" in k for k in load_model_files(final).state_dict())
    assert "trainable_token_indices" not in json.loads((final / "adapter" / "adapter_config.json").read_text()) or \
        json.loads((final / "adapter" / "adapter_config.json").read_text())["trainable_token_indices"] is None
