"""Matching transformers: attention heads move whole (Verma & Elbayad's nested assignment), and
the orthogonal option rotates each head's dimensions, all without changing B's function."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from support.vit import HEAD_SIZE, HEADS, VIT_DIGITS

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.data import digits, fit_to_arch
from llfc_core.errors import InvalidParameterError
from llfc_core.matching import match_models
from llfc_core.matching.activation import activation_matching
from llfc_core.matching.orthogonal import procrustes_maps
from llfc_core.matching.weight import weight_objective
from llfc_core.models import load_model
from llfc_core.permutation import (
    apply_permutation,
    invert_permutation,
    random_permutation,
    split_nested,
)

CPU = torch.device("cpu")


def _vit_state(seed: int) -> dict[str, torch.Tensor]:
    """A random ViT whose LayerNorms are not at their initial ones and zeros, so that they
    carry the residual stream's permutation like any other weight."""
    torch.manual_seed(seed)
    state = parse_arch(VIT_DIGITS).build().state_dict()
    for key, value in state.items():
        if "norm" in key:
            value.normal_(1.0 if key.endswith("weight") else 0.0, 0.1)
    return state


def _assert_heads_move_whole(permutation: dict[str, list[int]]) -> None:
    spec = parse_arch(VIT_DIGITS).permutation_spec()
    assert len(spec.nested) == 4
    for members in spec.head_orders.values():
        orders = []
        for name in members:
            order, within = split_nested(torch.tensor(permutation[name]), spec.nested[name])
            assert sorted(order.tolist()) == list(range(HEADS)), name
            for row in within:
                assert sorted(row.tolist()) == list(range(HEAD_SIZE)), name
            orders.append(order.tolist())
        assert all(order == orders[0] for order in orders), members


@pytest.mark.parametrize("method", ["weight", "activation"])
def test_matching_recovers_a_known_shuffle_of_heads_and_head_dimensions(method: str) -> None:
    arch = parse_arch(VIT_DIGITS)
    spec = arch.permutation_spec()
    state_a = _vit_state(0)
    shuffle = random_permutation(spec, state_a, seed=7)
    order, _ = split_nested(
        shuffle["P_blocks.0.attn.qkv[0:32]"], spec.nested[next(iter(spec.nested))]
    )
    assert order.tolist() != list(range(HEADS))
    state_b = apply_permutation(spec, shuffle, state_a)

    result = match_models(arch, state_a, state_b, method, digits("test").limit(256), device=CPU)

    expected = invert_permutation(shuffle)
    assert result.permutation == {name: indices.tolist() for name, indices in expected.items()}
    assert result.weight_distance_before > 1.0
    assert result.weight_distance_after == pytest.approx(0.0, abs=1e-9)
    for key, value in state_a.items():
        assert torch.equal(result.permuted_b[key], value), key


def test_weight_matching_of_two_vits_keeps_bs_function_and_lowers_the_distance() -> None:
    arch = parse_arch(VIT_DIGITS)
    state_a, state_b = _vit_state(1), _vit_state(2)
    data = digits("test").limit(64)

    result = match_models(arch, state_a, state_b, "weight", data, device=CPU)

    _assert_heads_move_whole(result.permutation)
    assert result.function_check["passed"] is True
    assert result.function_check["relative_change"] < 1e-5
    inputs = fit_to_arch(arch, data).x
    original = load_model(arch, state_b, CPU)(inputs)
    permuted = load_model(arch, result.permuted_b, CPU)(inputs)
    assert torch.allclose(original, permuted, atol=1e-5)
    assert result.weight_distance_after < 0.8 * result.weight_distance_before
    assert result.symmetry_group == "permutation"


def test_orthogonal_heads_lower_the_distance_further_and_keep_bs_function() -> None:
    arch = parse_arch(VIT_DIGITS)
    spec = arch.permutation_spec()
    state_a, state_b = _vit_state(1), _vit_state(2)

    permuted = match_models(arch, state_a, state_b, "weight", device=CPU)
    rotated = match_models(arch, state_a, state_b, "weight", symmetry="orthogonal", device=CPU)

    assert rotated.symmetry_group == "orthogonal"
    assert rotated.permutation == permuted.permutation
    assert rotated.weight_distance_permuted == pytest.approx(permuted.weight_distance_after)
    assert rotated.weight_distance_after < permuted.weight_distance_after - 0.1
    assert rotated.objective_after == rotated.weight_distance_after
    assert rotated.function_check["relative_change"] <= 1e-4
    # The residual stream and the MLP are still the permutation: only heads were rotated.
    for key in ("norm.weight", "blocks.0.mlp.fc1.weight", "blocks.1.mlp.fc2.bias"):
        assert torch.equal(rotated.permuted_b[key], permuted.permuted_b[key]), key
    assert not torch.equal(
        rotated.permuted_b["blocks.0.attn.qkv.weight"],
        permuted.permuted_b["blocks.0.attn.qkv.weight"],
    )
    for name in spec.nested:
        maps = procrustes_maps(spec, name, state_a, permuted.permuted_b)
        identity = torch.eye(HEAD_SIZE, dtype=maps.dtype).expand(HEADS, -1, -1)
        assert torch.allclose(maps.transpose(1, 2) @ maps, identity, atol=1e-10)
    assert rotated.summary()["symmetry_group"] == "orthogonal"


def test_orthogonal_is_refused_for_an_arch_without_attention() -> None:
    arch = parse_arch({"name": "mlp", "widths": [64, 32, 10]})
    torch.manual_seed(0)
    state = arch.build().state_dict()
    with pytest.raises(InvalidParameterError, match="no attention heads"):
        match_models(arch, state, state, "weight", symmetry="orthogonal", device=CPU)
    with pytest.raises(InvalidParameterError, match="'symmetry' must be one of"):
        match_models(arch, state, state, "weight", symmetry="rotation", device=CPU)
    with pytest.raises(InvalidParameterError, match="name a 'match' method"):
        AnalysisConfig(symmetry="orthogonal")
    assert AnalysisConfig(match="weight", symmetry="orthogonal").symmetry == "orthogonal"


def test_activation_matching_of_two_vits_moves_heads_whole_and_keeps_bs_function() -> None:
    arch = parse_arch(VIT_DIGITS)
    state_a, state_b = _vit_state(1), _vit_state(2)

    result = match_models(arch, state_a, state_b, "activation", digits("test"), device=CPU)

    _assert_heads_move_whole(result.permutation)
    assert result.unobserved == []
    assert result.function_check["passed"] is True
    assert result.function_check["inputs"] == "data"
    assert result.objective_after < 0.8 * result.objective_before


def test_activation_matching_leaves_a_permutation_it_cannot_observe_as_the_identity() -> None:
    arch = parse_arch(VIT_DIGITS)
    spec = arch.permutation_spec()
    hidden = "P_blocks.0.mlp.fc1"
    # Without its GELU site and without fc1's weight rows, nothing shows the MLP's units.
    blind = dataclasses.replace(
        spec,
        perm_to_features={k: v for k, v in spec.perm_to_features.items() if k != hidden},
        axes_to_perm={k: v for k, v in spec.axes_to_perm.items() if k != "blocks.0.mlp.fc1.weight"},
    )
    state_a, state_b = _vit_state(1), _vit_state(2)
    data = fit_to_arch(arch, digits("test").limit(128))

    perm, before, after, unobserved = activation_matching(
        blind,
        load_model(arch, state_a, CPU),
        load_model(arch, state_b, CPU),
        data,
        batch_size=64,
        device=CPU,
    )

    assert unobserved == [hidden]
    assert torch.equal(perm[hidden], torch.arange(perm[hidden].numel()))
    assert after < before
    assert weight_objective(blind, perm, state_a, state_b) > 0


def test_an_analysis_with_orthogonal_heads_reports_the_symmetry_it_matched_with() -> None:
    arch = parse_arch(VIT_DIGITS)
    config = AnalysisConfig(
        match="weight", symmetry="orthogonal", alphas=[0, 0.5, 1], llfc_alphas=[0.5]
    )

    result = analyze_pair(
        arch, _vit_state(1), _vit_state(2), digits("test").limit(64), config, device=CPU
    ).to_json()

    assert result["settings"]["symmetry"] == "orthogonal"
    assert result["matching"]["symmetry_group"] == "orthogonal"
    matching = result["matching"]
    assert matching["weight_distance_after"] < matching["weight_distance_permuted"]
    assert result["pairs"]["matched"]["lmc"]["alphas"] == [0.0, 0.5, 1.0]


def test_orthogonal_on_attention_held_in_place_says_what_holds_it() -> None:
    arch = parse_arch({**VIT_DIGITS, "kwargs": {**VIT_DIGITS["kwargs"], "qk_norm": True}})
    torch.manual_seed(0)
    state = arch.build().state_dict()
    with pytest.raises(InvalidParameterError, match=r"heads are held in place \(.*q_norm"):
        match_models(arch, state, state, "weight", symmetry="orthogonal", device=CPU)
