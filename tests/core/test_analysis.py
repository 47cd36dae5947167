"""The analysis pipeline: LMC barriers, LLFC, Conditions I and II and the Lemma, checked against
direct full-batch computations and against the paper's claims on real digits."""

from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.analysis.pair_metrics import barrier
from llfc_core.archs import parse_arch
from llfc_core.data import ArrayDataset, digits
from llfc_core.errors import CancelledError, InvalidParameterError
from llfc_core.interpolation import interpolate_states
from llfc_core.models import load_model
from llfc_core.progress import Reporter
from llfc_core.training import TrainConfig, train_modes

CPU = torch.device("cpu")
SMALL_MLP = {"name": "mlp", "widths": [64, 32, 24, 10]}


def _state(arch_json: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return parse_arch(arch_json).build().state_dict()


def test_a_model_against_itself_has_zero_barriers_and_zero_distances() -> None:
    for arch_json in (SMALL_MLP, {"name": "resnet", "depth": 8, "in_channels": 1, "input_size": 8}):
        arch = parse_arch(arch_json)
        state = _state(arch_json, 0)
        result = analyze_pair(arch, state, state, digits("test").limit(100), device=CPU).to_json()
        pair = result["pairs"]["naive"]
        assert pair["lmc"]["loss_barrier"] == pytest.approx(0.0, abs=1e-6)
        assert pair["lmc"]["error_barrier"] == pytest.approx(0.0, abs=1e-9)
        assert max(pair["llfc"]["cos_ab"]) == pytest.approx(0.0, abs=1e-9)
        for values in pair["llfc"]["cos_alpha"].values():
            assert max(values) == pytest.approx(0.0, abs=1e-9)
        for values in pair["weak_additivity"].values():
            assert max(values) == pytest.approx(0.0, abs=1e-9)
        assert max(pair["commutativity"]) == pytest.approx(0.0, abs=1e-12)
        assert pair["lemma"]["holds"] is True


def test_a_flat_path_has_a_barrier_of_exactly_zero() -> None:
    # A model with itself: every theta_alpha is A, so every value is A's. The sweep's diagonal
    # is this 0, not computed; alpha a + (1 - alpha) a would round away from a for some a.
    alphas = AnalysisConfig().alphas
    for value in (1.6365169429513404, 0.1, 0.7, 2.3026654876157204):
        assert barrier([value] * len(alphas), alphas, value, value) == 0.0
    # Endpoints far apart (a model scaled until its loss is 5.9e34): the line is still exact at
    # each end, so a path below it has no barrier, not the smaller endpoint's loss.
    at_a, at_b = 1.4444985987416217, 5.899427497390803e34
    path = [at_b, *(at_b / 10 ** (i + 1) for i in range(len(alphas) - 2)), at_a]
    assert barrier(path, alphas, at_a, at_b) == 0.0
    assert barrier(path[::-1], alphas, at_b, at_a) == 0.0


def _direct_metrics(arch, state_a, state_b, data: ArrayDataset, alphas):
    """Loss and error of theta_alpha over the whole data in one batch, with no engine code."""
    losses, errors = [], []
    for alpha in alphas:
        model = load_model(arch, interpolate_states(state_a, state_b, alpha), CPU)
        with torch.no_grad():
            logits = model(data.x)
        losses.append(float(F.cross_entropy(logits, data.y)))
        errors.append(float((logits.argmax(1) != data.y).double().mean()))
    return losses, errors


def _hand_made_modes(data: ArrayDataset) -> tuple[dict, dict]:
    """A: hidden = relu(x), logits from class centroids (a decent classifier, built by hand).
    B: the same function with its hidden units reversed, so the midpoint mixes unrelated pixels."""
    centroids = torch.stack([data.x[data.y == c].mean(0) for c in range(10)])
    weight_out = 20.0 * (centroids - centroids.mean(0))
    bias_out = -0.5 * (weight_out * centroids).sum(1)
    state_a = {
        "0.weight": torch.eye(64),
        "0.bias": torch.zeros(64),
        "2.weight": weight_out,
        "2.bias": bias_out,
    }
    reverse = torch.arange(63, -1, -1)
    state_b = {
        "0.weight": torch.eye(64)[reverse],
        "0.bias": torch.zeros(64),
        "2.weight": weight_out[:, reverse],
        "2.bias": bias_out,
    }
    return state_a, state_b


def test_barrier_and_curve_match_a_direct_full_batch_computation() -> None:
    arch = parse_arch({"name": "mlp", "widths": [64, 64, 10]})
    data = digits("test")
    state_a, state_b = _hand_made_modes(digits("train"))
    alphas = [0.0, 0.2, 0.5, 0.9, 1.0]
    config = AnalysisConfig(alphas=alphas, batch_size=50)

    result = analyze_pair(arch, state_a, state_b, data, config, device=CPU).to_json()
    lmc = result["pairs"]["naive"]["lmc"]

    losses, errors = _direct_metrics(arch, state_a, state_b, data, alphas)
    assert errors[0] == errors[-1] < 0.15  # both ends classify digits well
    assert lmc["loss"] == pytest.approx(losses, rel=1e-5)
    assert lmc["error"] == pytest.approx(errors, abs=1e-9)
    expected_barrier = max(
        loss - (alpha * losses[-1] + (1 - alpha) * losses[0])
        for loss, alpha in zip(losses, alphas, strict=True)
    )
    assert lmc["loss_barrier"] == pytest.approx(expected_barrier, rel=1e-5)
    assert lmc["loss_barrier"] > 0.1
    assert lmc["error_barrier"] == pytest.approx(max(errors) - errors[0], abs=1e-9)


def test_llfc_and_conditions_match_direct_computations() -> None:
    arch = parse_arch(SMALL_MLP)
    state_a, state_b = _state(SMALL_MLP, 3), _state(SMALL_MLP, 4)
    data = digits("test")
    alpha = 0.25
    config = AnalysisConfig(llfc_alphas=[alpha], batch_size=64)

    pair = analyze_pair(arch, state_a, state_b, data, config, device=CPU).pairs["naive"].to_json()

    def hidden(state, x):
        pre = F.linear(x, state["0.weight"], state["0.bias"])
        return pre, torch.relu(pre)

    mixed = interpolate_states(state_a, state_b, alpha)
    pre_a, f_a = hidden(state_a, data.x)
    pre_b, f_b = hidden(state_b, data.x)
    _, f_mixed = hidden(mixed, data.x)
    target = alpha * f_a + (1 - alpha) * f_b
    expected_llfc = float((1 - F.cosine_similarity(f_mixed, target, dim=1)).mean())
    expected_baseline = float((1 - F.cosine_similarity(f_a, f_b, dim=1)).mean())
    expected_scale = float((f_mixed * target).sum() / f_mixed.pow(2).sum())
    relu_of_mix = torch.relu(alpha * pre_a + (1 - alpha) * pre_b)
    difference = (relu_of_mix - target).pow(2).sum(1)
    expected_weak = float(
        (difference / (0.5 * (relu_of_mix.pow(2).sum(1) + target.pow(2).sum(1)))).mean()
    )
    # Condition II on the second Linear, whose input H is the first hidden layer.
    w_a, w_b = state_a["2.weight"], state_b["2.weight"]
    same = f_a @ w_a.T + f_b @ w_b.T
    crossed = f_b @ w_a.T + f_a @ w_b.T
    expected_comm = float(
        (same - crossed).pow(2).sum() / (0.5 * (same.pow(2).sum() + crossed.pow(2).sum()))
    )

    assert pair["llfc"]["layers"] == ["1", "3", "logits"]
    assert pair["llfc"]["cos_alpha"]["0.25"][0] == pytest.approx(expected_llfc, rel=1e-4)
    assert pair["llfc"]["cos_ab"][0] == pytest.approx(expected_baseline, rel=1e-4)
    assert pair["llfc"]["scale_c"]["0.25"][0] == pytest.approx(expected_scale, rel=1e-4)
    assert pair["weak_additivity"]["0.25"][0] == pytest.approx(expected_weak, rel=1e-4)
    assert pair["commutativity_layers"] == ["0", "2", "4"]
    assert pair["commutativity"][0] == pytest.approx(0.0, abs=1e-12)  # both see the same input
    assert pair["commutativity"][1] == pytest.approx(expected_comm, rel=1e-4)


def test_invalid_parameters_are_refused_with_a_sentence() -> None:
    with pytest.raises(InvalidParameterError, match="from 0 to 1"):
        AnalysisConfig(alphas=[0.0, 1.2])
    with pytest.raises(InvalidParameterError, match="at most 101"):
        AnalysisConfig(alphas=[i / 200 for i in range(201)])
    with pytest.raises(InvalidParameterError, match="'match'"):
        AnalysisConfig.from_params({"match": "nearest"})
    with pytest.raises(InvalidParameterError, match="Unknown analyze parameter"):
        AnalysisConfig.from_params({"alpha": [0.5]})
    assert AnalysisConfig.from_params({"split": "test", "max_examples": 10}) == AnalysisConfig()


def test_progress_grows_to_one_and_cancellation_stops_the_analysis() -> None:
    arch = parse_arch(SMALL_MLP)
    state_a, state_b = _state(SMALL_MLP, 0), _state(SMALL_MLP, 1)
    fractions: list[float] = []
    analyze_pair(
        arch,
        state_a,
        state_b,
        digits("test"),
        AnalysisConfig(match="weight", batch_size=64),
        device=CPU,
        reporter=Reporter(callback=lambda fraction, stage: fractions.append(fraction)),
    )
    assert fractions == sorted(fractions)
    assert fractions[-1] == pytest.approx(1.0)

    calls = {"count": 0}

    def stop_after_five() -> bool:
        calls["count"] += 1
        return calls["count"] > 5

    with pytest.raises(CancelledError):
        analyze_pair(
            arch,
            state_a,
            state_b,
            digits("test"),
            AnalysisConfig(batch_size=16),
            device=CPU,
            reporter=Reporter(should_stop=stop_after_five),
        )


@pytest.fixture(scope="module")
def digits_modes() -> tuple:
    arch = parse_arch({"name": "mlp", "widths": [64, 512, 512, 512, 10]})
    state_a, state_b = train_modes(arch, digits("train"), TrainConfig(epochs=10, seed=0))
    return arch, state_a, state_b


@pytest.mark.slow
@pytest.mark.parametrize("method", ["weight", "activation"])
def test_matching_makes_independently_trained_digit_mlps_connected(digits_modes, method) -> None:
    arch, state_a, state_b = digits_modes
    result = analyze_pair(
        arch,
        state_a,
        state_b,
        digits("test"),
        AnalysisConfig(match=method),
        train_dataset=digits("train"),
        device=CPU,
    ).to_json()
    naive, matched = result["pairs"]["naive"], result["pairs"]["matched"]
    assert result["endpoints"]["a"]["error"] < 0.15
    assert naive["lmc"]["loss_barrier"] > 0.1
    assert matched["lmc"]["loss_barrier"] <= 0.5 * naive["lmc"]["loss_barrier"]
    naive_llfc = statistics.mean(naive["llfc"]["cos_alpha"]["0.5"])
    matched_llfc = statistics.mean(matched["llfc"]["cos_alpha"]["0.5"])
    assert matched_llfc * 3 <= naive_llfc
    assert statistics.mean(matched["commutativity"]) < statistics.mean(naive["commutativity"])
    # LLFC co-occurs with LMC: the interpolated features stay far closer than A's and B's.
    assert matched_llfc < statistics.mean(matched["llfc"]["cos_ab"])


def test_params_layers_restrict_the_feature_layers_and_unknown_ones_are_refused() -> None:
    arch = parse_arch(
        {"name": "resnet", "depth": 8, "width": 0.5, "in_channels": 1, "input_size": 8}
    )
    torch.manual_seed(0)
    state_a, state_b = arch.build().state_dict(), arch.build().state_dict()
    data = digits("test").limit(32)
    chosen = ["layer1.0.relu2", "layer3.0.relu1"]
    result = analyze_pair(
        arch, state_a, state_b, data, AnalysisConfig(layers=chosen, batch_size=16), device=CPU
    ).to_json()
    naive = result["pairs"]["naive"]
    assert naive["llfc"]["layers"] == [*chosen, "logits"]
    assert naive["weak_additivity_layers"] == chosen
    assert arch.feature_layers()[:3] == ["relu", "layer1.0.relu1", "layer1.0.relu2"]
    with pytest.raises(InvalidParameterError, match=r"'layer9\.relu', not a feature layer"):
        analyze_pair(arch, state_a, state_b, data, AnalysisConfig(layers=["layer9.relu"]))
    with pytest.raises(InvalidParameterError, match="non-empty list"):
        AnalysisConfig(layers=[])


def test_a_restricted_analysis_gives_the_numbers_of_the_full_one_at_its_layers() -> None:
    # In an MLP each Linear's output is its ReLU's input; restricting to the last ReLU must not
    # reuse the second one's (unmeasured) pre-activation for Condition II of the Linear "2".
    arch = parse_arch({"name": "mlp", "widths": [64, 32, 16, 12, 10]})
    torch.manual_seed(0)
    state_a, state_b = arch.build().state_dict(), arch.build().state_dict()
    data = digits("test").limit(48)
    config = {"match": "weight", "alphas": [0, 0.5, 1], "llfc_alphas": [0.5], "batch_size": 16}
    full = analyze_pair(arch, state_a, state_b, data, AnalysisConfig(**config), device=CPU)
    part = analyze_pair(
        arch, state_a, state_b, data, AnalysisConfig(layers=["5"], **config), device=CPU
    )
    full_pair, part_pair = full.to_json()["pairs"]["matched"], part.to_json()["pairs"]["matched"]
    assert part_pair["llfc"]["layers"] == ["5", "logits"]
    assert part_pair["llfc"]["cos_alpha"]["0.5"] == full_pair["llfc"]["cos_alpha"]["0.5"][2:]
    assert part_pair["weak_additivity"]["0.5"] == full_pair["weak_additivity"]["0.5"][2:]
    assert part_pair["commutativity"] == pytest.approx(full_pair["commutativity"], rel=1e-5)
