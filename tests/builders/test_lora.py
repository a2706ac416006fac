"""LoRA against peft on the Hugging Face twin: same r, lora_alpha and target_modules, our
adapter weights copied in; the trainable-parameter count and the forward output must agree.
Also merge/unmerge and the adapter-only state dict."""

from __future__ import annotations

import pytest
import torch

from minimind_spec import compile_model

from .helpers import hf_llama, randomize

peft = pytest.importorskip("peft", reason="peft is needed for the LoRA reference tests")
pytest.importorskip("transformers", reason="transformers is needed for the LoRA reference tests")

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_patch(targets: list[str], rank: int = 4, alpha: float = 16.0) -> dict:
    return {"techniques": {"lora": {"enabled": True, "placements": targets, "rank": rank, "alpha": alpha}}}


@pytest.mark.parametrize("targets", [ALL, ["q_proj", "v_proj"], ["down_proj", "o_proj"]], ids=["all", "qv", "down-o"])
def test_lora_matches_peft(tiny, targets):
    resolved = tiny(lora_patch(targets) | {"hyperparams": {"n_kv_heads": 2}})
    c = resolved.model
    ours = compile_model(resolved, seed=0).eval()
    randomize(ours)  # B non-zero, so the adapters really change the output
    hf = hf_llama(c)
    base_state = {k: v for k, v in ours.state_dict().items() if ".lora." not in k}
    assert not hf.load_state_dict(base_state, strict=False).unexpected_keys
    config = peft.LoraConfig(r=c.lora.rank, lora_alpha=c.lora.alpha, target_modules=targets, lora_dropout=0.0, bias="none")
    peft_model = peft.get_peft_model(hf, config).eval()

    peft_trainable, _ = peft_model.get_nb_trainable_parameters()
    ours_trainable = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    assert ours_trainable == peft_trainable

    with torch.no_grad():
        for name, module in ours.named_modules():
            if getattr(module, "lora", None) is not None:
                target = peft_model.base_model.model.get_submodule(name)
                target.lora_A["default"].weight.copy_(module.lora.A)
                target.lora_B["default"].weight.copy_(module.lora.B)
    input_ids = torch.randint(0, c.vocab_size, (2, 20))
    with torch.no_grad():
        mine = ours(input_ids).logits
        theirs = peft_model(input_ids=input_ids).logits
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_lora_freezes_base_and_starts_as_identity(tiny):
    resolved = tiny(lora_patch(ALL))
    model = compile_model(resolved, seed=0)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora.A", ".lora.B")) for n in trainable)
    assert "model.embed_tokens.weight" in frozen
    base = tiny({})
    plain = compile_model(base, seed=0)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".lora." not in k})
    input_ids = torch.randint(0, resolved.model.vocab_size, (1, 12))
    with torch.no_grad():  # B starts at zero: the adapted model equals the base model
        torch.testing.assert_close(model(input_ids).logits, plain(input_ids).logits)
    out = model(input_ids, labels=input_ids)
    out.loss.backward()
    assert model.get_submodule("model.layers.0.self_attn.q_proj").lora.B.grad.abs().sum() > 0
    assert model.get_submodule("model.layers.0.self_attn.q_proj").weight.grad is None


def test_merge_unmerge_and_adapter_state_dict(tiny):
    resolved = tiny(lora_patch(ALL))
    model = compile_model(resolved, seed=0).eval()
    randomize(model)
    input_ids = torch.randint(0, resolved.model.vocab_size, (2, 10))
    q_proj = model.get_submodule("model.layers.1.self_attn.q_proj")
    weight_before = q_proj.weight.detach().clone()
    with torch.no_grad():
        before = model(input_ids).logits
        assert model.merge_lora() == 7 * resolved.model.n_layers
        assert not torch.equal(q_proj.weight, weight_before)
        merged = model(input_ids).logits
        model.unmerge_lora()
        after = model(input_ids).logits
    torch.testing.assert_close(merged, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, before)
    torch.testing.assert_close(q_proj.weight, weight_before, atol=1e-6, rtol=0)

    adapters = model.lora_state_dict()
    assert set(adapters) == {n for n, _ in model.named_parameters() if ".lora." in n}
    fresh = compile_model(resolved, seed=1)
    from builders import load_lora_state_dict

    load_lora_state_dict(fresh, adapters)
    torch.testing.assert_close(fresh.get_submodule("model.layers.1.self_attn.q_proj").lora.B, q_proj.lora.B)


def test_lora_on_moe_experts(tiny):
    resolved = tiny(lora_patch(["gate_proj", "up_proj", "down_proj"]) | {"moe": {"num_experts": 4, "top_k": 2}},
                    variant="MoE")
    model = compile_model(resolved, seed=0)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.layers.0.mlp.experts.3.down_proj.lora.B" in names
    assert "model.layers.0.mlp.gate.weight" not in names
    expected = resolved.model.n_layers * 4 * 3 * resolved.model.lora.rank * (resolved.model.d_model + resolved.model.moe.expert_hidden)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
