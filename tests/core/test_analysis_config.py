"""AnalysisConfig's parameter shapes: alpha lists given as one number or null, and the seed's
range, are refused with a sentence instead of a TypeError from inside."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from llfc_core.analysis import AnalysisConfig
from llfc_core.errors import InvalidParameterError
from llfc_core.training import MAX_SEED


@pytest.mark.parametrize("name", ["alphas", "llfc_alphas"])
@pytest.mark.parametrize("value", [0.5, None, "0.5", {"0": 0.5}, []])
def test_an_alpha_list_that_is_not_a_list_is_refused_saying_how_to_write_one(
    name: str, value: Any
) -> None:
    with pytest.raises(InvalidParameterError, match=f"'{name}' must be a non-empty list"):
        AnalysisConfig.from_params({name: value})


def test_alphas_may_be_any_sequence_of_numbers() -> None:
    assert AnalysisConfig(alphas=np.linspace(0.0, 1.0, 3)).alphas == (0.0, 0.5, 1.0)
    assert AnalysisConfig.from_params({"llfc_alphas": [0.5]}).llfc_alphas == (0.5,)


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 10**30, 1.5, True])
def test_a_seed_outside_0_to_2_31_minus_1_is_refused(seed: Any) -> None:
    with pytest.raises(InvalidParameterError, match=f"from 0 to {MAX_SEED}"):
        AnalysisConfig.from_params({"seed": seed})


def test_the_seed_range_ends_are_accepted() -> None:
    assert AnalysisConfig.from_params({"seed": 0}).seed == 0
    assert AnalysisConfig.from_params({"seed": MAX_SEED}).seed == MAX_SEED


def test_too_many_layer_names_are_refused_naming_the_limit() -> None:
    # A body may repeat one layer 100,000 times; the sentence said 'non-empty', which it was.
    with pytest.raises(InvalidParameterError, match="at most 10,000 feature layer names"):
        AnalysisConfig(layers=["logits"] * 100_000)
    assert AnalysisConfig(layers=["logits"] * 10).layers == ("logits",)
