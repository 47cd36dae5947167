"""STE matching trains proxy weights so the midpoint of A and permuted B has low loss: it beats
weight matching's midpoint, keeps B's function, reports each step and stops when cancelled."""

from __future__ import annotations

import pytest
import torch

from llfc_core.analysis import AnalysisConfig
from llfc_core.archs import parse_arch
from llfc_core.data import digits
from llfc_core.errors import CancelledError, InvalidParameterError
from llfc_core.interpolation import interpolate_states
from llfc_core.matching import match_models
from llfc_core.matching.ste import SteConfig
from llfc_core.models import load_model
from llfc_core.progress import Reporter
from llfc_core.training import TrainConfig, evaluate, train_modes

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digit_mlps() -> tuple:
    arch = parse_arch({"name": "mlp", "widths": [64, 128, 128, 10]})
    state_a, state_b = train_modes(
        arch, digits("train"), TrainConfig(epochs=10, seed=0), device=CPU
    )
    return arch, state_a, state_b


def test_ste_lowers_the_midpoint_loss_below_weight_matchings_and_keeps_bs_function(
    digit_mlps,
) -> None:
    arch, state_a, state_b = digit_mlps
    train = digits("train")
    weight = match_models(arch, state_a, state_b, "weight", train, device=CPU)
    ste = match_models(arch, state_a, state_b, "ste", train, ste=SteConfig(epochs=3), device=CPU)

    def midpoint_loss(permuted_b: dict[str, torch.Tensor]) -> float:
        return evaluate(arch, interpolate_states(state_a, permuted_b, 0.5), train, device=CPU)[0]

    # Measured on every training example with the plain (eval-mode) midpoint, not only on the
    # 1,024 examples STE picks its permutation on.
    assert midpoint_loss(ste.permuted_b) < midpoint_loss(weight.permuted_b) - 0.005
    assert ste.objective_after < ste.objective_before
    assert ste.iterations == 3 * train.num_batches(256)
    inputs = train.x[:200]
    with torch.no_grad():
        original = load_model(arch, state_b, CPU)(inputs)
        permuted = load_model(arch, ste.permuted_b, CPU)(inputs)
    torch.testing.assert_close(permuted, original, rtol=1e-5, atol=1e-5)


def test_ste_reports_every_step_and_stops_when_cancelled() -> None:
    arch = parse_arch({"name": "mlp", "widths": [64, 16, 10]})
    state = arch.build().state_dict()
    stages: list[str] = []

    def stop_after_three_steps() -> bool:
        return sum(stage.startswith("STE step") for stage in stages) >= 3

    reporter = Reporter(
        callback=lambda fraction, stage: stages.append(stage), should_stop=stop_after_three_steps
    )
    with pytest.raises(CancelledError):
        match_models(
            arch,
            state,
            state,
            "ste",
            digits("train"),
            batch_size=64,
            ste=SteConfig(epochs=2),
            device=CPU,
            reporter=reporter,
        )
    steps = 2 * digits("train").num_batches(64)
    assert stages[0].startswith(f"STE step 1 of {steps}, midpoint loss ")
    assert sum(stage.startswith("STE step") for stage in stages) == 3


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SteConfig(epochs=0), "'epochs' must be an integer from 1 to 1000"),
        (lambda: SteConfig(epochs=True), "'epochs' must be an integer"),
        (lambda: SteConfig(lr=0.0), "'lr' must be a number above 0 and at most 1"),
        (lambda: SteConfig(lr=2.0), "'lr' must be a number above 0"),
        (lambda: AnalysisConfig(match="weight", epochs=3), "'match' is 'weight'"),
        (lambda: AnalysisConfig(match="ste", lr=-1.0), "'lr' must be a number above 0"),
    ],
)
def test_ste_parameters_are_validated_with_a_sentence(build, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        build()


def test_ste_parameters_are_refused_for_other_methods_and_data_is_required() -> None:
    arch = parse_arch({"name": "mlp", "widths": [64, 16, 10]})
    state = arch.build().state_dict()
    with pytest.raises(InvalidParameterError, match="method 'weight' takes neither"):
        match_models(arch, state, state, "weight", ste=SteConfig(), device=CPU)
    with pytest.raises(InvalidParameterError, match="Ste matching needs a dataset"):
        match_models(arch, state, state, "ste", device=CPU)
    assert AnalysisConfig(match="ste").ste_config() == SteConfig()
