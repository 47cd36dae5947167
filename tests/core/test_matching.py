"""Weight and activation matching recover known permutations and never change B's function."""

from __future__ import annotations

import pytest
import torch

from llfc_core.archs import parse_arch
from llfc_core.data import ArrayDataset, digits
from llfc_core.errors import IncompatiblePairError, InvalidParameterError, SymmetryProofError
from llfc_core.matching import match_models
from llfc_core.models import load_model
from llfc_core.permutation import (
    PermutationSpec,
    apply_permutation,
    invert_permutation,
    random_permutation,
)

CPU = torch.device("cpu")

ARCHS = {
    "mlp": {"name": "mlp", "widths": [64, 48, 32, 10]},
    "vgg-bn": {"name": "vgg", "depth": 11, "width": 0.125, "in_channels": 1, "input_size": 8},
    "resnet": {"name": "resnet", "depth": 8, "width": 1, "in_channels": 1, "input_size": 8},
}


def _random_state(arch_json: dict, seed: int) -> dict[str, torch.Tensor]:
    """A randomly initialised model with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = parse_arch(arch_json).build()
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_()
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
    return state


@pytest.mark.parametrize("arch_name", list(ARCHS))
@pytest.mark.parametrize("method", ["weight", "activation"])
def test_matching_recovers_the_inverse_of_a_known_shuffle(arch_name: str, method: str) -> None:
    arch = parse_arch(ARCHS[arch_name])
    state_a = _random_state(ARCHS[arch_name], seed=0)
    spec = arch.permutation_spec()
    shuffle = random_permutation(spec, state_a, seed=7)
    state_b = apply_permutation(spec, shuffle, state_a)

    result = match_models(arch, state_a, state_b, method, digits("test"), device=CPU)

    expected = invert_permutation(shuffle)
    assert result.permutation == {name: idx.tolist() for name, idx in expected.items()}
    assert result.weight_distance_before > 1.0
    assert result.weight_distance_after == pytest.approx(0.0, abs=1e-9)
    assert result.objective_after <= result.objective_before
    for key, value in state_a.items():
        assert torch.equal(result.permuted_b[key], value), key


def test_matched_b_computes_the_same_function_as_b() -> None:
    arch = parse_arch(ARCHS["resnet"])
    state_a = _random_state(ARCHS["resnet"], seed=1)
    state_b = _random_state(ARCHS["resnet"], seed=2)
    data = digits("test").limit(64)

    result = match_models(arch, state_a, state_b, "weight", device=CPU)

    inputs = data.x.reshape(-1, 1, 8, 8)
    original = load_model(arch, state_b, CPU)(inputs)
    permuted = load_model(arch, result.permuted_b, CPU)(inputs)
    assert torch.allclose(original, permuted, atol=1e-5)
    assert result.weight_distance_after < result.weight_distance_before
    assert result.iterations >= 1


def test_weight_matching_is_reproducible_for_a_seed() -> None:
    arch = parse_arch(ARCHS["mlp"])
    state_a = _random_state(ARCHS["mlp"], seed=3)
    state_b = _random_state(ARCHS["mlp"], seed=4)
    first = match_models(arch, state_a, state_b, "weight", seed=5, device=CPU)
    second = match_models(arch, state_a, state_b, "weight", seed=5, device=CPU)
    assert first.permutation == second.permutation


def test_matching_refuses_an_unknown_method_and_mismatched_models() -> None:
    arch = parse_arch(ARCHS["mlp"])
    state_a = _random_state(ARCHS["mlp"], seed=0)
    with pytest.raises(InvalidParameterError, match="weight, activation"):
        match_models(arch, state_a, state_a, "magic", device=CPU)
    other = _random_state({"name": "mlp", "widths": [64, 40, 32, 10]}, seed=0)
    with pytest.raises(IncompatiblePairError, match=r"0\.weight"):
        match_models(arch, state_a, other, "weight", device=CPU)
    with pytest.raises(InvalidParameterError, match="dataset"):
        match_models(arch, state_a, state_a, "activation", None, device=CPU)


def test_activation_matching_reads_the_data_in_batches() -> None:
    arch = parse_arch(ARCHS["mlp"])
    state_a = _random_state(ARCHS["mlp"], seed=0)
    state_b = _random_state(ARCHS["mlp"], seed=1)
    data = digits("test")
    small_batches = match_models(
        arch, state_a, state_b, "activation", data, batch_size=7, device=CPU
    )
    one_batch = match_models(
        arch, state_a, state_b, "activation", data, batch_size=data.num_examples, device=CPU
    )
    assert small_batches.permutation == one_batch.permutation
    assert small_batches.objective_after == pytest.approx(one_batch.objective_after, rel=1e-6)
    assert isinstance(data, ArrayDataset)


def test_activation_matching_pairs_dead_units_by_their_pre_activations() -> None:
    """Units that are zero on every example correlate with nothing; their pre-activations
    still tell which dead unit of B is which of A, so a known shuffle is recovered exactly."""
    arch_json = ARCHS["mlp"]
    arch = parse_arch(arch_json)
    state_a = _random_state(arch_json, seed=3)
    dead = torch.arange(0, 48, 3)
    state_a["0.bias"][dead] = -1e3  # far below any weighted input: never active
    spec = arch.permutation_spec()
    shuffle = random_permutation(spec, state_a, seed=11)
    state_b = apply_permutation(spec, shuffle, state_a)
    data = digits("test")
    model_a = load_model(arch, state_a, CPU)
    with torch.inference_mode():
        hidden = torch.relu(model_a[0](data.x.flatten(1)))
    assert (hidden.amax(0)[dead] == 0).all()

    result = match_models(arch, state_a, state_b, "activation", data, device=CPU)

    expected = invert_permutation(shuffle)
    assert result.permutation == {name: idx.tolist() for name, idx in expected.items()}


def test_activation_statistics_keep_correlations_of_units_with_a_large_mean() -> None:
    """The streamed float32 moments match a float64 computation over all observations even when
    a unit's mean is 1,000 times its spread (unshifted float32 sums would lose its variance)."""
    from llfc_core.features import Scratch
    from llfc_core.matching.activation import _Moments

    generator = torch.Generator().manual_seed(5)
    shared = torch.randn(4096, 6, generator=generator, dtype=torch.float64)
    units_a = 1000.0 + shared + 0.5 * torch.randn(4096, 6, generator=generator, dtype=torch.float64)
    units_b = -300.0 + shared[:, [2, 0, 1, 5, 3, 4]]
    moments = _Moments.shifted_by_first_of(units_a[:1].float(), units_b[:1].float())
    scratch = Scratch()
    for rows in torch.arange(4096).split(256):
        moments.add(units_a[rows].float(), units_b[rows].float(), scratch)

    centred_a = units_a - units_a.mean(0)
    centred_b = units_b - units_b.mean(0)
    expected = (centred_a.T @ centred_b) / torch.outer(centred_a.norm(dim=0), centred_b.norm(dim=0))
    assert torch.allclose(moments.correlation(), expected, atol=1e-5)
    columns = torch.tensor([1, 2, 0, 4, 5, 3])
    distance = (units_a.float().double() - units_b.float().double()[:, columns]).pow(2).sum()
    assert moments.squared_distance(columns) == pytest.approx(float(distance), rel=1e-6)


def test_a_match_reports_that_permuted_b_keeps_bs_function() -> None:
    arch = parse_arch(ARCHS["resnet"])
    state_a, state_b = _random_state(ARCHS["resnet"], 0), _random_state(ARCHS["resnet"], 1)
    result = match_models(arch, state_a, state_b, "weight", digits("test"), device=CPU)
    check = result.summary()["function_check"]
    assert check["passed"] and check["inputs"] == "data" and check["examples"] == 64
    assert 0 <= check["relative_change"] < check["tolerance"]
    assert result.summary()["symmetry"]["permutations"] == len(arch.permutation_spec().perm_names)


def test_a_spec_that_breaks_bs_function_fails_the_job_naming_the_permutation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arch = parse_arch(ARCHS["resnet"])
    spec = arch.permutation_spec()
    axes = dict(spec.axes_to_perm)
    axes["layer1.0.bn1.running_var"] = (None,)
    broken = PermutationSpec(axes, spec.perm_to_features, spec.statistics_keys, spec.composites)
    monkeypatch.setattr(type(arch), "permutation_spec", lambda self: broken)
    state_a, state_b = _random_state(ARCHS["resnet"], 0), _random_state(ARCHS["resnet"], 1)
    with pytest.raises(SymmetryProofError) as raised:
        match_models(arch, state_a, state_b, "weight", digits("test"), device=CPU)
    assert spec.axes_to_perm["layer1.0.bn1.running_var"][0] in raised.value.message
