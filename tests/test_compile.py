"""compile_model: the graph/module invariant, meta builds, initialisation, trainable flags,
export and reload of the seeded weights, and one training step under torch.compile."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from minimind_spec import build_graph, compile_model, load_spec, resolve
from minimind_spec.engine import load_model_files, write_model_files
from minimind_spec.graph import ParamRole
from minimind_spec.graph import nodes

ROOT = Path(__file__).resolve().parents[1]
TINY: dict[str, Any] = {
    "model_name": "tiny-compile",
    "task": "Causal Language Modeling",
    "backbone": {"type": "Transformer-Decoder-Only", "variants": ["MoE"], "positional_encoding": "RoPE",
                 "norm": "RMSNorm", "activation": "SiLU", "attention_backend": "sdpa"},
    "hyperparams": {"d_model": 64, "n_layers": 2, "n_heads": 4, "mlp_ratio": 3.0, "seq_len": 32, "vocab": 128,
                    "dtype": "float32"},
}
LORA = {"enabled": True, "placements": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "rank": 4, "alpha": 8}


def write(tmp_path: Path, data: dict[str, Any], name: str = "spec.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def variant_specs() -> dict[str, tuple[dict[str, Any], str | None]]:
    lora = copy.deepcopy(TINY) | {"techniques": {"lora": LORA}}
    moe = copy.deepcopy(lora) | {"moe": {"num_experts": 4, "top_k": 2, "num_shared_experts": 1, "aux_loss": True}}
    absolute = copy.deepcopy(TINY)
    absolute["backbone"] |= {"positional_encoding": "Absolute", "norm": "LayerNorm"}
    absolute["hyperparams"] |= {"tie_word_embeddings": False}
    return {"dense": (TINY, None), "lora": (lora, None), "moe-lora-shared": (moe, "MoE"), "absolute-layernorm": (absolute, None)}


@pytest.mark.parametrize("data,variant", variant_specs().values(), ids=variant_specs().keys())
def test_graph_nodes_with_parameters_are_the_modules_with_parameters(tmp_path, data, variant):
    resolved = resolve(load_spec(write(tmp_path, data)), variant)
    graph = build_graph(resolved)
    model = compile_model(resolved, device="meta")
    from_graph = {op.id for op in nodes(graph) if op.params > 0 or op.tied_to}
    from_model = {name for name, module in model.named_modules() if list(module.parameters(recurse=False))}
    assert from_graph == from_model
    by_id = {op.id: op for op in nodes(graph)}
    for name, module in model.named_modules():
        op = by_id.get(name)
        if op is not None and op.params:
            assert sum(p.numel() for p in module.parameters(recurse=False)) == op.params, name
            trains = op.role == ParamRole.LORA if resolved.model.lora is not None else True  # the spec's LoRA freezes the base
            assert all(p.requires_grad == trains for p in module.parameters(recurse=False)), name
    total = sum(op.params for op in nodes(graph))
    assert sum(p.numel() for p in model.parameters()) == total


def test_card_spec_compiles_with_hf_names(tmp_path):
    resolved = resolve(load_spec(ROOT / "spec" / "minimind.json"))
    model = compile_model(resolved, device="meta")
    state = model.state_dict()
    for key in ("model.embed_tokens.weight", "model.layers.7.self_attn.q_proj.weight", "model.layers.0.mlp.gate_proj.weight",
                "model.layers.0.input_layernorm.weight", "model.norm.weight", "lm_head.weight",
                "model.layers.3.mlp.down_proj.lora.A"):
        assert key in state, key
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_meta_build_of_a_billion_parameters_allocates_nothing(tmp_path):
    big = copy.deepcopy(TINY)
    big["hyperparams"] |= {"d_model": 2048, "n_layers": 20, "n_heads": 16, "n_kv_heads": 4, "mlp_ratio": 4.0,
                           "vocab": 32000, "seq_len": 4096}
    resolved = resolve(load_spec(write(tmp_path, big)))
    started = time.perf_counter()
    model = compile_model(resolved, device="meta")
    elapsed = time.perf_counter() - started
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 1_000_000_000
    assert all(p.is_meta for p in model.parameters())
    assert all(b.is_meta for b in model.buffers())
    print(f"meta build of {n_params / 1e9:.2f}B parameters took {elapsed:.3f}s")  # informative, not asserted


def test_initialisation_is_seeded_normal_002_with_unit_norms(tmp_path):
    resolved = resolve(load_spec(write(tmp_path, copy.deepcopy(TINY) | {"techniques": {"lora": LORA}})))
    a = compile_model(resolved, seed=7)
    b = compile_model(resolved, seed=7)
    c = compile_model(resolved, seed=8)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    weights = torch.cat([p.flatten() for n, p in a.named_parameters() if p.dim() == 2 and not n.endswith(".lora.B")])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert abs(weights.mean().item()) < 1e-3
    assert all(torch.all(p == 1) for n, p in a.named_parameters() if n.endswith("layernorm.weight") or n == "model.norm.weight")
    assert all(torch.all(p == 0) for n, p in a.named_parameters() if n.endswith(".lora.B"))


def test_dtype_argument_casts_parameters(tmp_path):
    resolved = resolve(load_spec(write(tmp_path, TINY)))
    model = compile_model(resolved, dtype=torch.bfloat16, seed=0)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    logits = model(torch.randint(0, 128, (1, 8))).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("data,variant", [variant_specs()["lora"], variant_specs()["absolute-layernorm"]], ids=["lora", "absolute"])
def test_build_out_writes_weights_that_load_back(tmp_path, data, variant):
    resolved = resolve(load_spec(write(tmp_path, data)), variant)
    written = write_model_files(resolved, tmp_path / "out", seed=3)
    assert sorted(p.name for p in written) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["hidden_size"] == 64 and config["num_hidden_layers"] == 2
    loaded = load_model_files(tmp_path / "out")
    original = compile_model(resolved, seed=3)
    for (name, p), q in zip(original.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), name
    tokens = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).logits, original(tokens).logits)
    if resolved.model.tie_word_embeddings:
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_build_out_on_meta_writes_config_only(tmp_path):
    resolved = resolve(load_spec(write(tmp_path, TINY)))
    written = write_model_files(resolved, tmp_path / "out", device="meta")
    assert [p.name for p in written] == ["config.json"]
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert json.loads(written[0].read_text())["minimind_spec"]["weights"] is None


def test_exported_dense_config_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is needed for the reference tests")
    data = copy.deepcopy(TINY)
    data["hyperparams"] |= {"rope_scaling": {"type": "ntk", "factor": 4.0}, "n_kv_heads": 2}
    resolved = resolve(load_spec(write(tmp_path, data)))
    write_model_files(resolved, tmp_path / "out", seed=1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ours = load_model_files(tmp_path / "out").eval()
    tokens = torch.randint(0, 128, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens).logits, hf(input_ids=tokens).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # about 50 s of compilation on a 2-core CPU
def test_one_training_step_under_torch_compile(tmp_path):
    resolved = resolve(load_spec(write(tmp_path, TINY)))
    model = compile_model(resolved, seed=0)
    compiled = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 128, (2, 16))
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    out = compiled(tokens, labels=tokens)
    (out.loss + out.aux_loss).backward()
    optimizer.step()
    assert torch.isfinite(out.loss)
    assert not torch.equal(before, model.model.layers[0].self_attn.q_proj.weight)
    with torch.no_grad():
        eager = model(tokens, labels=tokens).loss
        again = compiled(tokens, labels=tokens).loss
    torch.testing.assert_close(again, eager, atol=1e-5, rtol=1e-5)


def test_forward_past_max_positions_is_a_clear_error(write_spec):
    import pytest
    import torch

    from minimind_spec import compile_model, load_spec, resolve

    model = compile_model(resolve(load_spec(write_spec())), seed=0)  # TINY: seq_len 32
    with pytest.raises(ValueError, match="exceed max_position_embeddings"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_config_versions_load_or_are_refused(tmp_path):
    from minimind_spec import SpecError

    resolved = resolve(load_spec(write(tmp_path, TINY)))
    write_model_files(resolved, tmp_path / "out", seed=0)
    config_path = tmp_path / "out" / "config.json"
    config = json.loads(config_path.read_text())
    reference = load_model_files(tmp_path / "out").state_dict()

    old = copy.deepcopy(config)  # as version 1 wrote it: two fields that version 2 dropped
    old["minimind_spec"]["format_version"] = 1
    old["minimind_spec"]["model"] |= {"label_smoothing": 0.0, "static_kv_cache": False}
    config_path.write_text(json.dumps(old))
    loaded = load_model_files(tmp_path / "out").state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)

    for change in ({"format_version": 99}, {"model": {**config["minimind_spec"]["model"], "surprise": 1}}):
        bad = copy.deepcopy(config)
        bad["minimind_spec"] |= change
        config_path.write_text(json.dumps(bad))
        with pytest.raises(SpecError):
            load_model_files(tmp_path / "out")


def test_save_pretrained_and_from_pretrained_round_trip(tmp_path):
    from safetensors.torch import load_file

    from minimind_spec.engine import from_pretrained

    resolved = resolve(load_spec(write(tmp_path, TINY)))
    model = compile_model(resolved, seed=5).eval()
    written = model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in written) == ["config.json", "model.safetensors"]
    keys = set(load_file(str(tmp_path / "saved" / "model.safetensors")))
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys  # tied: stored once
    again = from_pretrained(tmp_path / "saved").eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    assert again.lm_head.weight is again.model.embed_tokens.weight  # tied again after loading


def test_save_pretrained_refuses_merged_adapters(tmp_path):
    from builders import merge_lora

    spec = {**TINY, "techniques": {"lora": {"enabled": True, "rank": 4, "placements": ["q_proj"]}}}
    model = compile_model(resolve(load_spec(write(tmp_path, spec))), seed=0)
    merge_lora(model)
    with pytest.raises(ValueError, match="apply them twice"):
        model.save_pretrained(tmp_path / "merged")
