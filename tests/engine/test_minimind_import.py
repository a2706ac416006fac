"""MiniMind's own checkpoints come in: `.pth` state dicts as its trainers save them (fp16, the tied
head stored twice, a `_resume.pth` with the weights under "model"), for MiniMind-3 (QK-norm,
head_dim, an explicit MLP size, the top-1 MoE) and MiniMind2 (the Llama layout). The state
dicts are made by Hugging Face's Qwen3 / Llama classes (the classes MiniMind converts to, whose
tensor names its own model uses), so the reference is independent of our compiler: after
`import`, our logits equal theirs on the same fp16-rounded weights. The exact fit check names
the spec values behind every mismatch, the same for `import`, `build --weights` and `train
--init`; `generate` and `export` take a `.pth` with `--spec`; nothing is unpickled but tensors."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from minimind_spec.cli import app
from minimind_spec.engine.export import load_model_files

from ..conftest import TINY
from .conftest import args

transformers = pytest.importorskip("transformers")

M3 = {"n_heads": 4, "n_kv_heads": 2, "head_dim": 24, "qk_norm": True, "mlp_hidden": 144, "norm_eps": 1e-6, "rope_theta": 1e6}
MOE = {"num_experts": 4, "top_k": 1, "norm_topk_prob": True, "aux_loss": True, "aux_loss_weight": 5e-4}


def write_spec(path, vocab: int, hyper: dict[str, Any], moe: dict[str, Any] | None = None) -> Any:
    spec = copy.deepcopy(TINY)
    spec["hyperparams"] = {k: v for k, v in {**spec["hyperparams"], "vocab": vocab, "dtype": "float32", "seq_len": 64,
                                             **hyper}.items() if v is not None}
    if "mlp_hidden" in hyper:
        spec["hyperparams"].pop("mlp_ratio")
    if moe:
        spec["moe"] = moe
    spec["techniques"] = {"sft": {"enabled": True, "datasets": ["sft"], "epochs": 1}}
    spec["optim"] = {"lr": 1e-3, "warmup": 0, "batch_size": 4}
    path.write_text(json.dumps(spec))
    return path


def hf_model(vocab: int, hyper: dict[str, Any], moe: dict[str, Any] | None = None) -> Any:
    """The Hugging Face class MiniMind converts this shape to, with random (non-initial) weights."""
    common = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=hyper.get("n_heads", 4),
                  num_key_value_heads=hyper.get("n_kv_heads", 4), head_dim=hyper.get("head_dim", 16),
                  intermediate_size=hyper.get("mlp_hidden", 192), rms_norm_eps=hyper.get("norm_eps", 1e-5),
                  rope_parameters={"rope_type": "default", "rope_theta": hyper.get("rope_theta", 1e6)},
                  max_position_embeddings=64, tie_word_embeddings=True)
    if not hyper.get("qk_norm"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    elif moe is None:
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common))
    else:
        model = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
            **common, num_experts=moe["num_experts"], num_experts_per_tok=moe["top_k"], moe_intermediate_size=hyper["mlp_hidden"],
            norm_topk_prob=moe["norm_topk_prob"], decoder_sparse_step=1, mlp_only_layers=[]))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_((1 + 0.1 * torch.randn(param.shape, generator=generator)) if param.dim() == 1
                        else 0.1 * torch.randn(param.shape, generator=generator))
    model.config._attn_implementation = "eager"
    return model.eval()


def minimind_state(model: Any) -> dict[str, torch.Tensor]:
    """The state dict as MiniMind's trainers save it: fp16, per-expert names, lm_head beside the embedding."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith(".experts.gate_up_proj"):  # transformers keeps experts fused in memory; MiniMind names each one
            prefix = key[: -len(".gate_up_proj")]
            for e in range(value.shape[0]):
                gate, up = value[e].chunk(2)
                state[f"{prefix}.{e}.gate_proj.weight"], state[f"{prefix}.{e}.up_proj.weight"] = gate, up
        elif key.endswith(".experts.down_proj"):
            for e in range(value.shape[0]):
                state[f"{key[: -len('.down_proj')]}.{e}.down_proj.weight"] = value[e]
        else:
            state[key] = value
    return {k: v.detach().clone().half() for k, v in state.items()}


def fp16_reference(model: Any) -> Any:
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.half().float())
    return model


CASES = {"minimind3-dense": (M3, None, None), "minimind3-moe": (M3, MOE, "MoE"), "minimind2-dense": ({}, None, None)}


@pytest.mark.parametrize("case", CASES)
def test_a_minimind_pth_imports_with_logits_equal_to_the_hf_class_it_converts_to(workspace, tmp_path, case):
    hyper, moe, variant = CASES[case]
    vocab = 320
    hf = hf_model(vocab, hyper, moe)
    pth = tmp_path / "full_sft_64.pth"
    torch.save(minimind_state(hf), pth)
    spec = write_spec(tmp_path / "spec.json", vocab, hyper, moe)
    command = ["import", str(pth), "--spec", str(spec), "--out", str(tmp_path / "model"), "--tokenizer", str(workspace / "tok")]
    done = CliRunner().invoke(app, command + (["--variant", variant] if variant else []))
    assert done.exit_code == 0, done.output
    assert (tmp_path / "model" / "tokenizer.json").is_file()
    ours = load_model_files(tmp_path / "model").eval()
    ids = torch.randint(0, vocab, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, fp16_reference(hf)(ids).logits, atol=1e-5, rtol=1e-5)


def test_a_resume_file_and_wrapped_names_import_too(workspace, tmp_path):
    hf = hf_model(320, M3)
    state = {f"_orig_mod.{k}": v for k, v in minimind_state(hf).items()}  # saved from a torch.compile'd model
    resume = tmp_path / "full_sft_64_resume.pth"
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "epoch": 0, "step": 7}, resume)
    spec = write_spec(tmp_path / "spec.json", 320, M3)
    done = CliRunner().invoke(app, ["import", str(resume), "--spec", str(spec), "--out", str(tmp_path / "m")])
    assert done.exit_code == 0, done.output
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        torch.testing.assert_close(load_model_files(tmp_path / "m")(ids).logits, fp16_reference(hf)(ids).logits,
                                   atol=1e-5, rtol=1e-5)


def test_every_mismatch_is_listed_with_the_spec_values_behind_it(tmp_path):
    torch.save(minimind_state(hf_model(320, M3)), tmp_path / "m3.pth")
    plain = write_spec(tmp_path / "plain.json", 320, {"n_heads": 4, "n_kv_heads": 2, "head_dim": 24, "mlp_hidden": 144})
    done = CliRunner().invoke(app, ["import", str(tmp_path / "m3.pth"), "--spec", str(plain), "--out", str(tmp_path / "x")])
    assert done.exit_code == 2 and "Traceback" not in done.output
    assert "hyperparams.qk_norm: spec false, checkpoint has q_norm weights" in done.output
    assert "model.layers.0.self_attn.q_norm.weight" in done.output and "(4)" in done.output  # 2 layers x q/k norms
    wider = write_spec(tmp_path / "wide.json", 320, {**M3, "d_model": 96})
    done = CliRunner().invoke(app, ["import", str(tmp_path / "m3.pth"), "--spec", str(wider), "--out", str(tmp_path / "y")])
    assert done.exit_code == 2 and "hyperparams.d_model: spec 96, checkpoint 64" in done.output
    assert "model.embed_tokens.weight [320, 96] vs [320, 64]" in done.output
    dense = write_spec(tmp_path / "dense.json", 320, M3, MOE)
    torch.save(minimind_state(hf_model(320, M3, MOE)), tmp_path / "moe.pth")
    done = CliRunner().invoke(app, ["import", str(tmp_path / "moe.pth"), "--spec", str(dense), "--out", str(tmp_path / "z")])
    assert done.exit_code == 2 and "checkpoint has 4 experts per layer (build with --variant MoE)" in done.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "evil": Payload()}, tmp_path / "evil.pth")
    spec = write_spec(tmp_path / "spec.json", 320, M3)
    done = CliRunner().invoke(app, ["import", str(tmp_path / "evil.pth"), "--spec", str(spec), "--out", str(tmp_path / "m")])
    assert done.exit_code == 2 and "weights_only" in done.output and "this must never run" not in done.output
    assert "Traceback" not in done.output


def test_pth_with_spec_for_init_generate_export_and_build(workspace, tmp_path):
    vocab = 320
    hf = hf_model(vocab, M3)
    pth = tmp_path / "pretrain_64.pth"
    torch.save(minimind_state(hf), pth)
    spec = write_spec(tmp_path / "spec.json", vocab, M3)
    runner = CliRunner()
    built = runner.invoke(app, ["build", str(spec), "--weights", str(pth)])
    assert built.exit_code == 0 and "(they fit this spec)" in built.output, built.output
    without = runner.invoke(app, ["generate", str(pth), "hi"])
    assert without.exit_code == 2 and ".pth" in without.output and "--spec" in without.output
    said = runner.invoke(app, ["generate", str(pth), "what is 1 plus 2", "--spec", str(spec), "--tokenizer",
                               str(workspace / "tok"), "--max-new-tokens", "4"])
    assert said.exit_code == 0, said.output
    exported = runner.invoke(app, ["export", str(pth), "--spec", str(spec), "--tokenizer", str(workspace / "tok"),
                                   "--out", str(tmp_path / "hf")])
    assert exported.exit_code == 0, exported.output
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([[1, 7, 30, 2]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, fp16_reference(hf)(ids).logits, atol=1e-5, rtol=1e-5)
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", str(spec), "--sft-data", str(workspace / "sft.jsonl"), "--tokenizer",
                                  str(workspace / "tok"), "--out", str(run), "--init", str(pth), "--max-steps", "2", "--no-progress"])
    assert trained.exit_code == 0, trained.output
    assert "pretrain" not in [p.name for p in run.iterdir()] and (run / "sft" / "final" / "model.safetensors").is_file()


def test_init_with_a_misfitting_pth_names_the_difference_not_a_size_mismatch(workspace, tmp_path):
    torch.save(minimind_state(hf_model(320, M3)), tmp_path / "m3.pth")
    done = CliRunner().invoke(app, args(workspace, tmp_path / "run", "--init", str(tmp_path / "m3.pth"), "--max-steps", "1"))
    assert done.exit_code == 2 and "Traceback" not in done.output and "size mismatch for" not in done.output
    assert "hyperparams.qk_norm: spec false, checkpoint has q_norm weights" in done.output
    assert "hyperparams.n_kv_heads x head_dim: spec 64, checkpoint 48" in done.output  # 4 x 16 here, 2 x 24 there


def test_a_vocabulary_padded_beyond_the_tokenizer_trains_with_a_warning_and_a_smaller_one_is_refused(workspace, tmp_path):
    padded = write_spec(tmp_path / "padded.json", 384, {})  # the tokenizer has 320 ids: 64 rows stay unused
    runner = CliRunner()
    planned = runner.invoke(app, ["train", str(padded), "--sft-data", str(workspace / "sft.jsonl"), "--tokenizer",
                                  str(workspace / "tok"), "--plan"])
    assert planned.exit_code == 0 and "vocab 384 is larger than the tokenizer's 320 ids" in planned.output, planned.output
    done = runner.invoke(app, ["train", str(padded), "--sft-data", str(workspace / "sft.jsonl"), "--tokenizer",
                               str(workspace / "tok"), "--out", str(tmp_path / "run"), "--max-steps", "2", "--no-progress",
                               "--stage", "sft"])
    assert done.exit_code == 0 and "64 rows no token uses" in done.output, done.output
    assert load_model_files(tmp_path / "run" / "sft" / "final").vocab_size == 384
    small = write_spec(tmp_path / "small.json", 300, {})
    refused = runner.invoke(app, ["train", str(small), "--sft-data", str(workspace / "sft.jsonl"), "--tokenizer",
                                  str(workspace / "tok"), "--plan"])
    assert refused.exit_code == 2 and "/hyperparams/vocab" in refused.output and "Traceback" not in refused.output


@pytest.mark.parametrize("moe", [None, MOE], ids=["qwen3", "qwen3-moe"])
def test_a_convert_model_directory_imports(workspace, tmp_path, moe):
    """What MiniMind's convert_model.py writes: transformers' save_pretrained of Qwen3 / Qwen3-MoE, in bf16 here."""
    hf = hf_model(320, M3, moe)
    with torch.no_grad():  # the reference holds the bf16-rounded weights in fp32 (its RoPE table stays fp32)
        for param in hf.parameters():
            param.copy_(param.to(torch.bfloat16).float())
    copy.deepcopy(hf).to(torch.bfloat16).save_pretrained(tmp_path / "minimind-3")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "minimind-3" / name).write_bytes((workspace / "tok" / name).read_bytes())
    spec = write_spec(tmp_path / "spec.json", 320, M3, moe)
    command = ["import", str(tmp_path / "minimind-3"), "--spec", str(spec), "--out", str(tmp_path / "m")]
    done = CliRunner().invoke(app, command + (["--variant", "MoE"] if moe else []))
    assert done.exit_code == 0, done.output
    assert (tmp_path / "m" / "tokenizer.json").is_file()  # the tokenizer beside the weights came along
    ids = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(load_model_files(tmp_path / "m").eval()(ids).logits, hf(ids).logits,
                                   atol=1e-5, rtol=1e-5)
