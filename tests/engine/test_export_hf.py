"""Every variant with an exact Hugging Face equivalent exports to it and loads with
`AutoModelForCausalLM.from_pretrained` (no remote code), logits equal to ours to 1e-5 in fp32:
dense to Llama, MoE to Qwen2-MoE (its routing is ours: softmax, top-k, optional
renormalisation, shared experts), QK-norm models (MiniMind-3) to Qwen3 and Qwen3-MoE; the
exported directory loads back in minimind-spec too. A
variant with no exact equivalent is refused with the setting that differs."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from minimind_spec.cli import app
from minimind_spec.engine.export import load_model_files

from ..conftest import TINY

transformers = pytest.importorskip("transformers")

CASES = {
    "dense": ({}, None),
    "dense-gqa-untied-yarn": ({"hyperparams": {"n_kv_heads": 2, "tie_word_embeddings": False,
                                               "rope_scaling": {"type": "yarn", "factor": 2.0}}}, None),
    "moe-top2-renorm": ({"moe": {"num_experts": 4, "top_k": 2, "norm_topk_prob": True, "aux_loss": True}}, "MoE"),
    "moe-top2-shared": ({"moe": {"num_experts": 4, "top_k": 2, "norm_topk_prob": False, "num_shared_experts": 2,
                                 "expert_hidden": 48}}, "MoE"),
    "moe-top1": ({"moe": {"num_experts": 8, "top_k": 1, "expert_hidden": 32}}, "MoE"),
    "qk-norm-dense": ({"hyperparams": {"qk_norm": True, "head_dim": 24, "n_kv_heads": 2, "mlp_ratio": None,
                                       "mlp_hidden": 80}}, None),
    "qk-norm-moe-top1": ({"hyperparams": {"qk_norm": True, "n_kv_heads": 2},
                          "moe": {"num_experts": 4, "top_k": 1, "norm_topk_prob": True, "aux_loss": True}}, "MoE"),
}
HF_CLASS = {"dense": "LlamaForCausalLM", "dense-gqa-untied-yarn": "LlamaForCausalLM", "moe-top2-renorm": "Qwen2MoeForCausalLM",
            "moe-top2-shared": "Qwen2MoeForCausalLM", "moe-top1": "Qwen2MoeForCausalLM", "qk-norm-dense": "Qwen3ForCausalLM",
            "qk-norm-moe-top1": "Qwen3MoeForCausalLM"}


def _spec(tmp_path, patch):
    spec = copy.deepcopy(TINY)
    for key, value in patch.items():
        spec[key] = {k: v for k, v in {**spec.get(key, {}), **value}.items() if v is not None} if isinstance(value, dict) else value
    spec["hyperparams"]["dtype"] = "float32"
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _build(tmp_path, patch, variant):
    command = ["build", str(_spec(tmp_path, patch)), "--out", str(tmp_path / "ours"), "--seed", "3"]
    done = CliRunner().invoke(app, command + (["--variant", variant] if variant else []))
    assert done.exit_code == 0, done.output
    return tmp_path / "ours"


@pytest.mark.parametrize("case", CASES)
def test_export_loads_in_transformers_with_equal_logits(tmp_path, case):
    patch, variant = CASES[case]
    ours_dir = _build(tmp_path, patch, variant)
    exported = CliRunner().invoke(app, ["export", str(ours_dir), "--out", str(tmp_path / "hf")])
    assert exported.exit_code == 0, exported.output
    ours = load_model_files(ours_dir).eval()
    with torch.no_grad():  # our initial weights are small: randomise them so the comparison means something
        for param in ours.parameters():
            param.normal_(0, 0.2)
    ours_dir2 = tmp_path / "ours2"
    from minimind_spec.engine.export import read_model_config
    from minimind_spec.engine.writer import save_model_dir

    save_model_dir(ours, read_model_config(ours_dir / "config.json"), ours_dir2)
    assert CliRunner().invoke(app, ["export", str(ours_dir2), "--out", str(tmp_path / "hf2")]).exit_code == 0
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf2", output_loading_info=True)
    assert not info["unexpected_keys"] and not [k for k in info["missing_keys"] if k != "lm_head.weight"], info
    assert type(hf).__name__ == HF_CLASS[case]
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = ours(ids).logits
        assert torch.allclose(hf.eval()(ids).logits, reference, atol=1e-5)
        assert torch.allclose(load_model_files(tmp_path / "hf2").eval()(ids).logits, reference, atol=1e-6)  # and back


@pytest.mark.parametrize("patch, mismatch", [
    ({"backbone": {"norm": "LayerNorm"}}, "norm LayerNorm"),
    ({"backbone": {"positional_encoding": "Absolute"}}, "positional_encoding Absolute"),
])
def test_no_exact_equivalent_is_refused_naming_the_difference(tmp_path, patch, mismatch):
    ours_dir = _build(tmp_path, patch, None)
    refused = CliRunner().invoke(app, ["export", str(ours_dir), "--out", str(tmp_path / "hf")])
    assert refused.exit_code == 2 and mismatch in refused.output and "Traceback" not in refused.output
    assert "--format minimind" in refused.output and not (tmp_path / "hf" / "model.safetensors").exists()
    own = CliRunner().invoke(app, ["export", str(ours_dir), "--format", "minimind", "--out", str(tmp_path / "own")])
    assert own.exit_code == 0, own.output  # this package's own layout takes any spec
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(load_model_files(tmp_path / "own").eval()(ids).logits, load_model_files(ours_dir).eval()(ids).logits)


def test_a_checkpoint_transformers_saved_loads_back_and_a_learned_gate_is_refused(tmp_path):
    from minimind_spec.engine.hf_layout import from_hf

    ours_dir = _build(tmp_path, CASES["moe-top2-shared"][0], "MoE")
    assert CliRunner().invoke(app, ["export", str(ours_dir), "--out", str(tmp_path / "hf")]).exit_code == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    hf.save_pretrained(tmp_path / "resaved")  # transformers' own checkpoint layout
    ids = torch.randint(0, 128, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(load_model_files(tmp_path / "resaved").eval()(ids).logits, hf.eval()(ids).logits, atol=1e-5)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    gate = next(k for k in state if k.endswith("shared_expert_gate.weight"))
    state[gate][0, 0] = 0.5
    with pytest.raises(ValueError, match="learned shared-expert gate"):
        from_hf(state, set(load_model_files(ours_dir).state_dict()))
