"""Merging many models: MergeMany's weight average and feature averaging, on models trained on
the digits in seconds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llfc_core.archs import parse_arch
from llfc_core.data import digits
from llfc_core.errors import (
    CancelledError,
    DatasetError,
    IncompatiblePairError,
    InvalidParameterError,
)
from llfc_core.merging import merge_many
from llfc_core.merging.averaging import repair_step
from llfc_core.merging.evaluation import evaluate_merge
from llfc_core.merging.layer_maps import ConvMap, fitting_sites, layer_map
from llfc_core.models import load_model
from llfc_core.permutation import apply_permutation, random_permutation
from llfc_core.progress import Reporter
from llfc_core.symmetry.proof import PROOF_TOLERANCE
from llfc_core.training import TrainConfig, train_modes

CPU = torch.device("cpu")
MLP = {"name": "mlp", "widths": [64, 128, 128, 10]}
VGG_BN = {"name": "vgg", "depth": 11, "width": 0.125, "in_channels": 1, "input_size": 8}
RESNET = {"name": "resnet", "depth": 8, "width": 1, "in_channels": 1, "input_size": 8}
FAST = TrainConfig(epochs=5, seed=0, batch_size=64)


@pytest.fixture(scope="module")
def digit_mlps() -> tuple:
    arch = parse_arch(MLP)
    return arch, train_modes(arch, digits("train"), FAST, num_modes=3, device=CPU)


@pytest.fixture(scope="module")
def vgg_pair() -> tuple:
    arch = parse_arch(VGG_BN)
    return arch, train_modes(arch, digits("train"), FAST, num_modes=2, device=CPU)


def _evaluate(arch, result, states):
    repair = repair_step(arch, digits("train"), "reset", batch_size=256, device=CPU)
    return evaluate_merge(arch, result, states, digits("test"), repair, batch_size=256, device=CPU)


def _outputs(arch, state) -> torch.Tensor:
    inputs = digits("test").x[:128].reshape(-1, *arch.input_shape)
    with torch.inference_mode():
        return load_model(arch, state, CPU)(inputs)


def test_merge_many_of_three_digit_mlps_beats_their_unmatched_average(digit_mlps) -> None:
    arch, states = digit_mlps
    result = merge_many(arch, states, digits("train"), device=CPU)
    scores = _evaluate(arch, result, states)
    assert scores.merged.loss < scores.naive_average.loss
    assert scores.merged.error < scores.naive_average.error
    assert scores.merged == scores.matched_average  # a weight average is its own midpoint
    assert result.rounds >= 2  # the last round confirmed that no model moves any more
    assert len(result.permutations) == 3
    json = result.to_json()
    assert json["method"] == "weight_average" and json["fitted_layers"] == []


def test_each_permuted_input_computes_its_own_function(digit_mlps) -> None:
    arch, states = digit_mlps
    result = merge_many(arch, states, digits("train"), seed=3, device=CPU)
    spec = arch.permutation_spec()
    for state, perm, check in zip(states, result.permutations, result.function_checks, strict=True):
        permuted = apply_permutation(spec, {k: torch.tensor(v) for k, v in perm.items()}, state)
        assert torch.allclose(_outputs(arch, permuted), _outputs(arch, state), atol=1e-5)
        assert check["relative_change"] <= PROOF_TOLERANCE
        assert sorted(perm["P_0"]) == list(range(128)) and perm["P_0"] != list(range(128))


def test_merging_copies_of_one_model_returns_that_model(digit_mlps) -> None:
    arch, (state, *_) = digit_mlps
    result = merge_many(arch, [state, state, state], digits("train"), device=CPU)
    assert result.rounds == 1
    for perm in result.permutations:
        assert all(indices == list(range(len(indices))) for indices in perm.values())
    for key, value in state.items():
        assert torch.allclose(result.merged[key], value, atol=1e-6), key


def test_merge_many_recovers_a_model_from_its_permuted_copies(digit_mlps) -> None:
    arch, (state, *_) = digit_mlps
    spec = arch.permutation_spec()
    copies = [
        apply_permutation(spec, random_permutation(spec, state, seed), state) for seed in (1, 2, 3)
    ]
    result = merge_many(arch, copies, digits("train"), device=CPU)
    assert torch.allclose(_outputs(arch, result.merged), _outputs(arch, state), atol=1e-5)


def test_feature_average_of_a_pair_fits_the_mean_features_better_than_the_midpoint(
    digit_mlps,
) -> None:
    arch, states = digit_mlps
    pair = states[:2]
    result = merge_many(arch, pair, digits("train"), method="feature_average", device=CPU)
    scores = _evaluate(arch, result, pair)
    assert result.fitted_layers == ["0", "2", "4"] and result.unfitted_layers == {}
    # Measured on held-out digits, not on the fitting data.
    assert scores.feature_error["merged"] < 0.1 * scores.feature_error["matched_average"]
    assert scores.merged.loss < scores.matched_average.loss


def test_feature_average_of_a_model_with_itself_returns_it(digit_mlps) -> None:
    arch, (state, *_) = digit_mlps
    result = merge_many(arch, [state, state], digits("train"), method="feature_average", device=CPU)
    for key, value in state.items():
        assert torch.allclose(result.merged[key], value, atol=1e-5), key


def test_feature_averaging_fits_a_batch_norm_vggs_convolutions_through_their_batch_norms(
    vgg_pair,
) -> None:
    arch, states = vgg_pair
    result = merge_many(arch, states, digits("train"), method="feature_average", device=CPU)
    scores = _evaluate(arch, result, states)
    convs = [name for name in result.fitted_layers if name.startswith("features.")]
    assert len(convs) == 8 and result.fitted_layers[-1] == "classifier"
    assert scores.feature_error["merged"] < 0.5 * scores.feature_error["matched_average"]
    assert scores.merged.error < scores.matched_average.error < scores.naive_average.error


def test_a_batch_norm_resnet_merges_and_a_feature_average_with_itself_keeps_its_function() -> None:
    arch = parse_arch(RESNET)
    (state,) = train_modes(arch, digits("train"), TrainConfig(epochs=2), num_modes=1, device=CPU)
    averaged = merge_many(arch, [state, state], digits("train"), device=CPU)
    fitted = merge_many(arch, [state, state], digits("train"), method="feature_average", device=CPU)
    assert "layer2.0.shortcut.0" in fitted.fitted_layers
    reference = _outputs(arch, state)
    for result in (averaged, fitted):
        assert torch.isfinite(_outputs(arch, result.merged)).all()
    # Its BatchNorm statistics were re-estimated, so the average differs a little from the
    # model; the fit through them brings back the model's own features.
    fitted_change = (_outputs(arch, fitted.merged) - reference).abs().max()
    assert fitted_change < 1e-3 * reference.abs().max()


def test_a_convolution_as_rows_reproduces_the_convolution() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, kernel_size=3, stride=2, padding=1, dilation=2)
    inputs = torch.randn(4, 3, 9, 9)
    mapped = layer_map(conv)
    assert isinstance(mapped, ConvMap)
    with torch.no_grad():
        rows = mapped.input_rows(inputs) @ mapped.weight_matrix().T + conv.bias
        assert torch.allclose(rows, mapped.output_rows(conv(inputs)), atol=1e-5)


class _Shared(nn.Module):
    """A grouped convolution, a Linear called twice and two Linears sharing one weight (as
    GPT-2's output layer shares its embedding's): none of them can be fitted."""

    def __init__(self) -> None:
        super().__init__()
        self.grouped = nn.Conv2d(4, 4, 3, groups=2)
        self.plain = nn.Conv2d(4, 4, 1)
        self.norm = nn.BatchNorm2d(4)
        self.twice = nn.Linear(4, 4)
        self.tied = nn.Linear(4, 4)
        self.tied_copy = nn.Linear(4, 4)
        self.tied_copy.weight = self.tied.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.norm(self.plain(self.grouped(x))).mean((2, 3))
        return self.tied_copy(self.tied(self.twice(self.twice(features))))


def test_layers_that_cannot_be_fitted_are_named_with_the_reason() -> None:
    sites, unfitted = fitting_sites(_Shared().eval(), torch.randn(2, 4, 5, 5))
    assert [(site.layer, site.norm) for site in sites] == [("plain", "norm")]
    assert "2 groups" in unfitted["grouped"]
    assert "called 2 times" in unfitted["twice"]
    assert unfitted["tied"] == "its weights are tied to tied_copy's"
    assert unfitted["tied_copy"] == "its weights are tied to tied's"


def test_feature_averaging_reports_progress_and_can_be_cancelled(digit_mlps) -> None:
    arch, states = digit_mlps
    seen: list[tuple[float, str]] = []
    merge_many(
        arch,
        states[:2],
        digits("train").limit(200),
        method="feature_average",
        device=CPU,
        reporter=Reporter(callback=lambda fraction, stage: seen.append((fraction, stage))),
    )
    fractions = [fraction for fraction, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert any(stage == "fitting 2 to the average features" for _, stage in seen)
    stages: list[str] = []
    cancel_in_the_fit = Reporter(
        callback=lambda _, stage: stages.append(stage),
        should_stop=lambda: any(stage.startswith("fitting") for stage in stages),
    )
    with pytest.raises(CancelledError):
        merge_many(
            arch,
            states[:2],
            digits("train"),
            method="feature_average",
            device=CPU,
            reporter=cancel_in_the_fit,
        )
    assert stages[-1] == "fitting 0 to the average features"


def test_merge_refuses_bad_methods_counts_layouts_and_ridges(digit_mlps) -> None:
    arch, states = digit_mlps
    data = digits("train")
    with pytest.raises(InvalidParameterError, match="weight_average, feature_average"):
        merge_many(arch, states, data, method="magic", device=CPU)
    with pytest.raises(InvalidParameterError, match="at least 2 models"):
        merge_many(arch, states[:1], data, device=CPU)
    other = parse_arch({"name": "mlp", "widths": [64, 96, 128, 10]}).build().state_dict()
    with pytest.raises(IncompatiblePairError):
        merge_many(arch, [states[0], other], data, device=CPU)
    with pytest.raises(DatasetError, match="no examples"):
        merge_many(arch, states, data.limit(0), device=CPU)
    with pytest.raises(InvalidParameterError, match="'ridge'"):
        merge_many(arch, states, data, method="feature_average", ridge=0.0, device=CPU)
    # A ridge of 1e308 made the penalty infinite and the merged model NaN.
    with pytest.raises(InvalidParameterError, match="at most 1e"):
        merge_many(arch, states, data, method="feature_average", ridge=1e308, device=CPU)
