"""theta_alpha = alpha A + (1 - alpha) B, and BatchNorm statistics re-estimated on data."""

from __future__ import annotations

import pytest
import torch

from llfc_core.archs import parse_arch
from llfc_core.data import digits, fit_to_arch
from llfc_core.errors import InvalidParameterError
from llfc_core.interpolation import (
    batch_norm_modules,
    interpolate_checkpoint,
    interpolate_states,
    reset_batch_norm,
)
from llfc_core.models import load_model

CPU = torch.device("cpu")
MLP = {"name": "mlp", "widths": [64, 16, 10]}
VGG = {"name": "vgg", "depth": 11, "width": 0.125, "in_channels": 1, "input_size": 8}


def _state(arch_json: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return parse_arch(arch_json).build().state_dict()


def test_alpha_one_is_a_and_alpha_zero_is_b() -> None:
    state_a, state_b = _state(MLP, 0), _state(MLP, 1)
    at_one = interpolate_states(state_a, state_b, 1.0)
    at_zero = interpolate_states(state_a, state_b, 0.0)
    at_quarter = interpolate_states(state_a, state_b, 0.25)
    for key in state_a:
        assert torch.equal(at_one[key], state_a[key])
        assert torch.equal(at_zero[key], state_b[key])
        assert torch.allclose(at_quarter[key], 0.25 * state_a[key] + 0.75 * state_b[key])


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "0.5", True])
def test_alpha_outside_the_unit_interval_is_refused(alpha: object) -> None:
    state = _state(MLP, 0)
    with pytest.raises(InvalidParameterError, match="from 0 to 1"):
        interpolate_states(state, state, alpha)  # type: ignore[arg-type]


def test_batch_norm_statistics_are_re_estimated_on_the_data() -> None:
    arch = parse_arch(VGG)
    state_a, state_b = _state(VGG, 0), _state(VGG, 1)
    data = digits("train").limit(300)

    mixed = interpolate_checkpoint(arch, state_a, state_b, 0.5, data, batch_size=64, device=CPU)

    # The first conv's output statistics over the data are what the first BatchNorm must hold.
    weight = mixed["features.0.weight"]
    bias = mixed["features.0.bias"]
    conv_out = torch.nn.functional.conv2d(data.x.reshape(-1, 1, 8, 8), weight, bias, padding=1)
    expected_mean = conv_out.mean(dim=(0, 2, 3))
    expected_var = conv_out.var(dim=(0, 2, 3), unbiased=True)
    assert torch.allclose(mixed["features.1.running_mean"], expected_mean, atol=1e-4)
    assert torch.allclose(mixed["features.1.running_var"], expected_var, rtol=1e-3, atol=1e-4)
    naive = interpolate_states(state_a, state_b, 0.5)
    assert not torch.allclose(naive["features.1.running_mean"], expected_mean, atol=1e-2)


def test_batch_norm_re_estimation_is_bit_identical_to_pytorchs_cumulative_average() -> None:
    # momentum=None is PyTorch's own exact cumulative average (but syncs a GPU on every forward);
    # momentum 1/k before batch k must give the very same bits, and leave the momenta as they were.
    arch = parse_arch(VGG)
    data = fit_to_arch(arch, digits("train").limit(300))  # 5 batches of 64, the last one short
    mixed = interpolate_states(_state(VGG, 0), _state(VGG, 1), 0.5)
    ours, reference = load_model(arch, mixed, CPU), load_model(arch, mixed, CPU)

    reset_batch_norm(ours, data, batch_size=64, device=CPU)

    layers = batch_norm_modules(reference)
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    reference.train()
    with torch.no_grad():
        for inputs, _ in data.batches(64):
            reference(inputs)
    for (name, value), (_, expected) in zip(
        ours.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(value, expected), name
    assert [layer.momentum for layer in batch_norm_modules(ours)] == [0.1] * len(layers)
    assert not ours.training
