"""The engine's parameter limits are the ones every layer applies."""

from __future__ import annotations

import pytest

from llfc_core.analysis.config import ANALYSIS_FIELDS, AnalysisConfig
from llfc_core.errors import ArchitectureError, InvalidParameterError
from llfc_core.params import MAX_BATCH_SIZE, MAX_SEED, check_int
from llfc_core.training import TrainConfig


@pytest.mark.parametrize("value", [0, 11, 1.0, True, "3", None])
def test_check_int_refuses_anything_but_an_integer_in_range(value: object) -> None:
    with pytest.raises(
        InvalidParameterError, match=r"^The parameter 'n' must be an integer from 1 to 10, got "
    ):
        check_int(value, 1, 10, "The parameter 'n'")


def test_check_int_returns_the_value_and_raises_the_callers_error() -> None:
    assert check_int(10, 1, 10, "x") == 10
    with pytest.raises(ArchitectureError, match="The arch field 'depth' must be"):
        check_int(-1, 0, 3, "The arch field 'depth'", ArchitectureError)
    with pytest.raises(InvalidParameterError, match="from 1 to 1,000,000, got 0"):
        check_int(0, 1, 10**6, "Every width", grouped=True)


def test_analysis_and_training_share_the_engine_limits() -> None:
    assert AnalysisConfig(batch_size=MAX_BATCH_SIZE, seed=MAX_SEED).seed == MAX_SEED
    assert TrainConfig(batch_size=MAX_BATCH_SIZE, seed=MAX_SEED).batch_size == MAX_BATCH_SIZE
    with pytest.raises(InvalidParameterError, match=f"from 1 to {MAX_BATCH_SIZE}"):
        AnalysisConfig(batch_size=MAX_BATCH_SIZE + 1)
    with pytest.raises(InvalidParameterError, match=f"from 1 to {MAX_BATCH_SIZE}"):
        TrainConfig(batch_size=MAX_BATCH_SIZE + 1)


def test_the_analysis_fields_are_the_config_fields_and_all_it_accepts() -> None:
    assert ANALYSIS_FIELDS == (
        "alphas",
        "llfc_alphas",
        "match",
        "symmetry",
        "batch_size",
        "reset_bn",
        "repair",
        "seed",
        "layers",
        "epochs",
        "lr",
    )
    with pytest.raises(InvalidParameterError, match="known ones are alphas, batch_size"):
        AnalysisConfig.from_params({"sead": 1})


def test_an_analysis_with_thousands_of_unknown_parameters_is_refused_in_one_short_sentence() -> (
    None
):
    params = {f"typo_{index}_" + "x" * 100: 1 for index in range(10_000)}
    with pytest.raises(InvalidParameterError) as raised:
        AnalysisConfig.from_params(params)
    message = raised.value.message
    assert "and 9,980 more" in message and len(message) < 3_000
    assert "'typo_0_" in message and "..." in message
