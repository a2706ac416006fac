"""QLoRA end to end: `techniques.quant` (nf4, where base) with LoRA holds the frozen base's
projections in NF4 while the adapters train. The plan's bytes are the live tensors' bytes; the
NF4 base stays bit-identical through training and only adapters get gradients; a CLI SFT run
saves its base dequantised, so `lora merge` gives dequantised base + update and the merged
model computes our logits in transformers' LlamaForCausalLM; what is not implemented is
refused with its JSON path."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from builders.lora import Projection
from builders.moe import Router
from builders.nf4 import dequantize_nf4, quantize_nf4
from minimind_spec.cli import app
from minimind_spec.engine.compile import compile_graph
from minimind_spec.engine.export import load_model_files, load_weights_into, write_model_files
from minimind_spec.engine.quantize import base_projections, quantize_base
from minimind_spec.engine.trainability import set_trainable
from minimind_spec.graph import ParamRole, build_graph
from minimind_spec.loader import load_spec
from minimind_spec.plan import PlanInputs, build_plan
from minimind_spec.resolve import resolve
from minimind_spec.stages import StageKind

QLORA = {"lora": {"enabled": True, "placements": ["q_proj", "v_proj"], "rank": 4, "alpha": 8.0},
         "quant": {"enabled": True, "scheme": "nf4", "where": ["base"]},
         "sft": {"enabled": True, "datasets": ["sft"]}}
IDS = torch.tensor([[1, 5, 9, 12, 7, 30, 2, 44]])


def _qlora_model(write_spec, variant: str | None = None):  # noqa: ANN001, ANN202
    resolved = resolve(load_spec(write_spec(techniques=QLORA)), variant)
    graph = build_graph(resolved)
    return resolved, graph, compile_graph(graph, seed=0)


@pytest.mark.parametrize("variant", [None, "MoE"])
def test_the_plan_counts_the_bytes_the_quantised_base_holds(write_spec, variant) -> None:  # noqa: ANN001
    resolved, graph, model = _qlora_model(write_spec, variant)
    planned = build_plan(resolved, PlanInputs(stages=(StageKind.SFT,)), graph).stage(StageKind.SFT)
    measured = quantize_base(model, graph)
    assert planned.base_quant is not None
    assert (planned.base_quant.matrices, planned.base_quant.params, planned.base_quant.bytes) == \
           (measured.matrices, measured.params, measured.bytes)
    assert measured.ratio < 0.135  # 4 bits + an 8-bit scale per 64 + an fp32 factor per 16,384 weights
    quantised = {name for name, module in model.named_modules() if isinstance(module, Projection) and module.quantized}
    assert quantised == {name for name, module in model.named_modules() if isinstance(module, Projection)} - {"lm_head"}
    if variant == "MoE":  # the experts too; the router stays at full precision
        routers = [m for m in model.modules() if isinstance(m, Router)]
        assert any(".experts." in name for name in quantised) and routers
        assert all(isinstance(router.weight, torch.nn.Parameter) for router in routers)
    fp32 = sum(p.numel() for p in model.parameters())  # embeddings, norms, router, head, adapters
    assert planned.memory.weights == 4 * fp32 + measured.bytes
    assert planned.decisions()["base_quant"] == "nf4"


def test_training_moves_only_the_adapters_and_leaves_the_nf4_base_bit_identical(write_spec) -> None:  # noqa: ANN001
    _, graph, model = _qlora_model(write_spec)
    quantize_base(model, graph)
    set_trainable(model, graph, {ParamRole.LORA})
    buffers = {name: tensor.clone() for name, tensor in model.named_buffers() if ".nf4_" in name}
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if ".lora." not in name}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
        assert with_grad and all(".lora." in name for name in with_grad)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert buffers and all(torch.equal(buffers[n], t) for n, t in model.named_buffers() if n in buffers)
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n in frozen)
    assert any(name.endswith(".lora.B") and bool(p.abs().sum() > 0) for name, p in model.named_parameters())


@pytest.fixture(scope="module")
def qlora_run(workspace, tmp_path_factory):  # noqa: ANN001, ANN201
    """A base model, a spec extending the workspace's with LoRA + NF4, its plan, and a 2-step SFT run."""
    root = tmp_path_factory.mktemp("qlora")
    init = root / "init"
    write_model_files(resolve(load_spec(workspace / "tiny.json")), init, seed=3)
    spec = root / "qlora.json"
    spec.write_text(json.dumps({"extends": os.path.relpath(workspace / "tiny.json", root), "techniques": QLORA}))
    where = ["--init", str(init), "--sft-data", str(workspace / "sft.jsonl"), "--tokenizer", str(workspace / "tok")]
    plan = CliRunner().invoke(app, ["train", str(spec), "--stage", "sft", "--plan", *where])
    assert plan.exit_code == 0, plan.output
    out = root / "run"
    result = CliRunner().invoke(app, ["train", str(spec), "--stage", "sft", "--max-steps", "2", "--eval-every", "0",
                                      "--out", str(out), "--no-progress", *where])
    assert result.exit_code == 0, result.output
    return init, out, plan.output, result.output


def test_the_cli_plans_and_runs_a_qlora_sft_stage(qlora_run) -> None:  # noqa: ANN001
    init, out, plan_output, run_output = qlora_run
    assert "base in NF4:" in plan_output and "0.13 x fp32" in " ".join(plan_output.split())
    assert "base in NF4:" in run_output
    executed = json.loads((out / "sft" / "executed.json").read_text())
    planned = json.loads((out / "sft" / "plan.json").read_text())["plan"]["base_quant"]
    assert executed["base_quant"] == {"scheme": "nf4", **{k: planned[k] for k in ("matrices", "params", "bytes")}}
    base, final = load_file(str(init / "model.safetensors")), load_file(str(out / "sft" / "final" / "model.safetensors"))
    for name, tensor in final.items():  # saved: the base dequantised, everything else as loaded, the adapters trained
        if ".lora." in name:
            continue
        projection = name.endswith("_proj.weight") and name.startswith("model.layers.")
        expected = dequantize_nf4(quantize_nf4(base[name])) if projection else base[name]
        assert torch.equal(tensor, expected), name
    assert any(name.endswith(".lora.B") and bool(t.abs().sum() > 0) for name, t in final.items())

    resolved = resolve(load_spec(out.parent / "qlora.json"))  # a resume: the input model quantised, then a checkpoint loaded
    graph = build_graph(resolved)
    model = compile_graph(graph, seed=0)
    load_weights_into(model, init / "model.safetensors", fresh_adapters=True)
    quantize_base(model, graph)
    codes = {name: tensor.clone() for name, tensor in model.named_buffers() if ".nf4_" in name}
    load_weights_into(model, out / "sft" / "final" / "model.safetensors")
    assert codes and all(torch.equal(codes[n], t) for n, t in model.named_buffers() if n in codes)


def test_lora_merge_and_export_fold_the_update_into_the_dequantised_base(qlora_run, tmp_path) -> None:  # noqa: ANN001
    transformers = pytest.importorskip("transformers")
    _, out, _, _ = qlora_run
    final = load_file(str(out / "sft" / "final" / "model.safetensors"))
    merged = CliRunner().invoke(app, ["lora", "merge", str(out), "--out", str(tmp_path / "merged")])
    assert merged.exit_code == 0, merged.output
    dense = load_file(str(tmp_path / "merged" / "model.safetensors"))
    q = "model.layers.0.self_attn.q_proj"
    delta = final[f"{q}.lora.B"] @ final[f"{q}.lora.A"] * (8.0 / 4)
    torch.testing.assert_close(dense[f"{q}.weight"], final[f"{q}.weight"] + delta, rtol=0, atol=1e-7)
    with torch.no_grad():
        ours = load_model_files(out / "sft" / "final").eval()(IDS).logits
        for directory in (tmp_path / "merged", tmp_path / "exported"):
            if directory.name == "exported":
                exported = CliRunner().invoke(app, ["export", str(out), "--out", str(directory)])
                assert exported.exit_code == 0, exported.output
            hf = transformers.LlamaForCausalLM.from_pretrained(directory)
            torch.testing.assert_close(hf.eval()(IDS).logits, ours, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("quant", "lora", "path"), [
    ({"scheme": "int4", "where": ["base"]}, True, "/techniques/quant/scheme"),
    ({"scheme": "nf4", "where": ["lm_head"]}, True, "/techniques/quant/where/0"),
    ({"scheme": "nf4", "where": []}, True, "/techniques/quant/where"),
    ({"scheme": "nf4", "where": ["base"]}, False, "/techniques/quant/enabled"),
])
def test_what_is_not_implemented_is_refused_with_its_path(write_spec, quant, lora, path) -> None:  # noqa: ANN001
    techniques = {**QLORA, "quant": {"enabled": True, **quant}, "lora": {**QLORA["lora"], "enabled": lora}}
    result = CliRunner().invoke(app, ["train", str(write_spec(techniques=techniques)), "--plan"])
    assert result.exit_code != 0
    assert f"{path}:" in result.output and "Traceback" not in result.output


def test_a_base_without_quant_is_untouched(write_spec) -> None:  # noqa: ANN001
    resolved = resolve(load_spec(write_spec(techniques={**QLORA, "quant": {"enabled": False}})))
    assert resolved.training is not None and resolved.training.quant is None
    graph = build_graph(resolved)
    assert build_plan(resolved, PlanInputs(stages=(StageKind.SFT,)), graph).stage(StageKind.SFT).base_quant is None
    assert not any(p.quantized for p in base_projections(compile_graph(graph, seed=0), graph))
