"""Commutativity matching minimises the poster's Eq. (2) itself: lower than weight and activation
matching reach on it, never increasing along its descent, zero on a shuffled copy."""

from __future__ import annotations

import itertools
import statistics

import pytest
import torch

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.data import digits, fit_to_arch
from llfc_core.errors import InvalidParameterError
from llfc_core.matching import match_models
from llfc_core.matching.commutativity import commutativity_matching
from llfc_core.models import load_model
from llfc_core.permutation import (
    apply_permutation,
    identity_permutation,
    invert_permutation,
    random_permutation,
)
from llfc_core.training import TrainConfig, train_modes

CPU = torch.device("cpu")
MLP = {"name": "mlp", "widths": [64, 128, 128, 10]}
ARCHS = {
    "mlp": {"name": "mlp", "widths": [64, 48, 32, 10]},
    "vgg-no-bn": dict(
        name="vgg", depth=11, width=0.125, batch_norm=False, in_channels=1, input_size=8
    ),
    "resnet": {"name": "resnet", "depth": 8, "width": 1, "in_channels": 1, "input_size": 8},
}


@pytest.fixture(scope="module")
def digit_mlps() -> tuple:
    arch = parse_arch(MLP)
    state_a, state_b = train_modes(
        arch, digits("train"), TrainConfig(epochs=10, seed=0), device=CPU
    )
    return arch, state_a, state_b


def _equation_two(arch, state_a, state_b, data) -> float:
    """sum over the MLP's Linear layers of ||(W_A - W_B)(H_A - H_B)||_F^2 on all of ``data``,
    H the layer's input, computed from the models' own forward passes."""
    inputs = fit_to_arch(arch, data).x
    total = 0.0
    with torch.no_grad():
        layers_a = [
            m for m in load_model(arch, state_a, CPU).modules() if isinstance(m, torch.nn.Linear)
        ]
        layers_b = [
            m for m in load_model(arch, state_b, CPU).modules() if isinstance(m, torch.nn.Linear)
        ]
        h_a = h_b = inputs.double()
        for index, (layer_a, layer_b) in enumerate(zip(layers_a, layers_b, strict=True)):
            w_a, w_b = layer_a.weight.double(), layer_b.weight.double()
            total += float(((h_a - h_b) @ (w_a - w_b).T).pow(2).sum())
            h_a = h_a @ w_a.T + layer_a.bias.double()
            h_b = h_b @ w_b.T + layer_b.bias.double()
            if index < len(layers_a) - 1:
                h_a, h_b = h_a.relu(), h_b.relu()
    return total


def test_commutativity_matching_reaches_a_lower_equation_two_than_weight_and_activation_matching(
    digit_mlps,
) -> None:
    arch, state_a, state_b = digit_mlps
    train, test = digits("train"), digits("test")
    reached = {}
    distance = {}
    for method in ("weight", "activation", "commutativity"):
        matched = match_models(arch, state_a, state_b, method, train, device=CPU)
        reached[method] = _equation_two(arch, state_a, matched.permuted_b, train)
        if method == "commutativity":
            assert matched.objective_after == pytest.approx(
                reached[method] / train.num_examples, rel=1e-4
            )
        pair = analyze_pair(
            arch,
            state_a,
            matched.permuted_b,
            test,
            AnalysisConfig(alphas=(0.0, 0.5, 1.0), llfc_alphas=(0.5,)),
            device=CPU,
        ).to_json()["pairs"]["naive"]
        distance[method] = statistics.mean(pair["commutativity"])
    assert reached["commutativity"] < min(reached["weight"], reached["activation"])
    # Analyze's Condition II on held-out data (relative, per layer) agrees.
    assert distance["commutativity"] < min(distance["weight"], distance["activation"])


def test_the_objective_never_increases_along_the_descent(digit_mlps) -> None:
    arch, state_a, state_b = digit_mlps
    spec = arch.permutation_spec()
    found = commutativity_matching(
        spec,
        load_model(arch, state_a, CPU),
        load_model(arch, state_b, CPU),
        fit_to_arch(arch, digits("train")),
        identity_permutation(spec, state_a),
        batch_size=256,
        device=CPU,
    )
    history = found.objective_history
    assert history[0] == pytest.approx(found.objective_identity)
    assert len(history) >= 3
    assert all(after <= before for before, after in itertools.pairwise(history))
    assert history[-1] < 0.8 * history[0]
    permuted = apply_permutation(spec, found.permutation, state_b)
    assert history[-1] == pytest.approx(
        _equation_two(arch, state_a, permuted, digits("train")) / digits("train").num_examples,
        rel=1e-4,
    )


@pytest.mark.parametrize("arch_name", list(ARCHS))
def test_commutativity_matching_recovers_a_known_shuffle(arch_name: str) -> None:
    arch = parse_arch(ARCHS[arch_name])
    torch.manual_seed(0)
    state_a = arch.build().state_dict()
    spec = arch.permutation_spec()
    shuffle = random_permutation(spec, state_a, seed=7)
    state_b = apply_permutation(spec, shuffle, state_a)

    data = digits("test").limit(128)
    result = match_models(arch, state_a, state_b, "commutativity", data, device=CPU)

    expected = invert_permutation(shuffle)
    assert result.permutation == {name: indices.tolist() for name, indices in expected.items()}
    assert result.objective_before > 0.1
    assert result.objective_after == pytest.approx(0.0, abs=1e-6)
    assert result.unobserved == []
    assert result.function_check["passed"]


def test_commutativity_matching_needs_data() -> None:
    arch = parse_arch(ARCHS["mlp"])
    state = arch.build().state_dict()
    with pytest.raises(InvalidParameterError, match="Commutativity matching needs a dataset"):
        match_models(arch, state, state, "commutativity", device=CPU)
