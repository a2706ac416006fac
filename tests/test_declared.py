"""Declared vs compiled: every contradicted number becomes a warning with both numbers."""

from __future__ import annotations

import pytest

from minimind_spec import SpecError
from minimind_spec.pipeline import build

from .conftest import CARD, SPEC, needs_card

D, H, V, L = 512, 1536, 6400, 8


@pytest.fixture(scope="module")
def card():
    return build(SPEC)


def by_path(result):
    return {p.path: p.message for p in result.declared}


def test_mlp_mismatch_gives_both_numbers_and_the_reason(card):
    message = by_path(card)["/modules/2/params"]
    assert "1,572,864" in message and f"{3 * D * H:,}" in message
    assert f"three {D}x{H} matrices" in message


def test_matching_declarations_are_silent(card):
    found = by_path(card)
    assert "/modules/0/params" not in found  # embedding 6400 x 512 = 3,276,800, as declared
    assert "/modules/1/params" not in found  # attention 4 x 512 x 512 = 1,048,576, as declared
    assert "/modules/3/params" not in found  # lm_head 512 x 6400 weights (tied)
    assert not any("shape" in path for path in found)


def test_totals_and_lora_numbers(card):
    found = by_path(card)
    lora = L * (4 * 8 * 2 * D + 3 * 8 * (D + H))
    total = V * D + L * (4 * D * D + 3 * D * H + 2 * D) + D + lora
    assert "14,000,000" in found["/total_params/all"] and f"{total:,}" in found["/total_params/all"]
    assert f"{lora:,}" in found["/total_params/trainable"]
    assert f"{total - lora:,}" in found["/total_params/frozen"]
    assert "28,000" in found["/techniques/lora/trainable_params"] and f"{lora:,}" in found["/techniques/lora/trainable_params"]
    assert f"{100 * lora / total:.2f}%" in found["/techniques/lora/percentage"]


def test_dense_build_points_at_moe_only_declarations(card):
    found = by_path(card)
    assert "--variant MoE" in found["/free_parameters/0"]
    assert "--variant MoE" in found["/concat_merge_points/1"]


def test_moe_build_checks_router_shape():
    found = by_path(build(SPEC, "MoE"))
    assert "(8, 512)" in found["/free_parameters/0/shape"]
    assert "/concat_merge_points/1" not in found


@needs_card
def test_the_design_card_itself_builds_with_the_same_warnings(card):
    assert by_path(build(CARD)) == by_path(card)


def test_strict_turns_mismatches_into_errors():
    with pytest.raises(SpecError) as info:
        build(SPEC, strict=True)
    assert "/total_params/all" in {p.path for p in info.value.problems}


def test_correct_declarations_give_no_warnings(write_spec):
    d, hidden, vocab, layers = 64, 192, 128, 2
    total = vocab * d + layers * (4 * d * d + 3 * d * hidden + 2 * d) + d
    path = write_spec(
        modules=[
            {"name": "Embedding", "type": "Token Embedding", "params": vocab * d, "in_shape": "(B, seq_len)", "out_shape": "(B, seq_len, 64)"},
            {"name": "Attention", "type": "Multi-Head Self-Attention", "params": 4 * d * d},
            {"name": "MLP", "type": "FeedForward", "params": 3 * d * hidden},
            {"name": "LM Head", "type": "Linear Projection", "params": vocab * d, "out_shape": "(B, seq_len, vocab_size)"},
        ],
        total_params={"all": total, "trainable": total, "frozen": 0},
        io={"input_spec": {"shapes": ["(B, seq_len)"]}, "output_spec": {"shapes": ["(B, seq_len, vocab_size)"]}},
    )
    assert build(path).declared == ()


def test_wrong_shape_is_reported(write_spec):
    path = write_spec(modules=[{"name": "Embedding", "type": "Token Embedding", "out_shape": "(B, seq_len, 32)"}])
    (problem,) = build(path).declared
    assert problem.path == "/modules/0/out_shape" and "(B, T, 64)" in problem.message
