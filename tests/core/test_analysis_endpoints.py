"""The endpoints of an analysis: measured as the barriers need them (BatchNorm statistics
re-estimated on the job's data) and, labelled beside them, as uploaded (their own statistics)."""

from __future__ import annotations

import pytest
import torch
from support.batch_norm import trained_resnet_pair, with_wrong_running_statistics

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.archs.base import Architecture
from llfc_core.data import digits
from llfc_core.permutation import StateDict
from llfc_core.training import TrainConfig, evaluate, train_modes

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def resnet_modes() -> tuple[Architecture, StateDict, StateDict]:
    return trained_resnet_pair()


def test_a_batch_norm_pair_reports_its_endpoints_as_uploaded_and_re_estimated(
    resnet_modes: tuple[Architecture, StateDict, StateDict],
) -> None:
    arch, state_a, state_b = resnet_modes
    uploaded_a = with_wrong_running_statistics(state_a)
    data = digits("test")

    result = analyze_pair(arch, uploaded_a, state_b, data, device=CPU).to_json()

    endpoints = result["endpoints"]
    for side, uploaded in (("a", uploaded_a), ("b", state_b)):
        loss, error = evaluate(arch, uploaded, data, device=CPU)
        assert endpoints[side]["batch_norm_reestimated"] is True
        assert endpoints[side]["as_uploaded"]["loss"] == pytest.approx(loss, rel=1e-6)
        assert endpoints[side]["as_uploaded"]["error"] == pytest.approx(error, abs=1e-12)
    # A's wrong statistics ruin it as uploaded; re-estimated on the data it classifies digits.
    assert endpoints["a"]["as_uploaded"]["error"] > 0.5
    assert endpoints["a"]["error"] < 0.2
    # The contract's numbers stay the re-estimated ones, which the barriers are measured against:
    # theta_1 is A with its statistics re-estimated.
    lmc = result["pairs"]["naive"]["lmc"]
    assert lmc["alphas"][-1] == 1.0
    assert lmc["error"][-1] == pytest.approx(endpoints["a"]["error"], abs=1e-12)
    assert lmc["loss"][-1] == pytest.approx(endpoints["a"]["loss"], rel=1e-9)
    assert result["settings"]["reset_bn"] is True


def test_a_batch_norm_pair_analysed_without_re_estimation_reports_one_set_of_numbers(
    resnet_modes: tuple[Architecture, StateDict, StateDict],
) -> None:
    arch, state_a, state_b = resnet_modes
    uploaded_a = with_wrong_running_statistics(state_a)
    data = digits("test").limit(200)

    result = analyze_pair(
        arch, uploaded_a, state_b, data, AnalysisConfig(reset_bn=False), device=CPU
    ).to_json()

    endpoint_a = result["endpoints"]["a"]
    assert endpoint_a["batch_norm_reestimated"] is False
    assert endpoint_a["as_uploaded"] == {"loss": endpoint_a["loss"], "error": endpoint_a["error"]}
    loss, error = evaluate(arch, uploaded_a, data, device=CPU)
    assert endpoint_a["loss"] == pytest.approx(loss, rel=1e-5)
    assert endpoint_a["error"] == pytest.approx(error, abs=1e-12)


def test_a_batch_norm_free_mlp_reports_its_endpoints_as_uploaded() -> None:
    arch = parse_arch({"name": "mlp", "widths": [64, 32, 10]})
    state_a, state_b = train_modes(arch, digits("train"), TrainConfig(epochs=2, seed=1), device=CPU)
    data = digits("test")

    result = analyze_pair(arch, state_a, state_b, data, device=CPU).to_json()

    for side, uploaded in (("a", state_a), ("b", state_b)):
        endpoint = result["endpoints"][side]
        assert endpoint["batch_norm_reestimated"] is False
        assert endpoint["as_uploaded"] == {"loss": endpoint["loss"], "error": endpoint["error"]}
        loss, error = evaluate(arch, uploaded, data, device=CPU)
        assert endpoint["loss"] == pytest.approx(loss, rel=1e-5)
        assert endpoint["error"] == pytest.approx(error, abs=1e-12)
    assert result["settings"]["reset_bn"] is False
