"""Merge jobs through the service: three trained MLPs merged by MergeMany beat their unmatched
average, the merged checkpoint is an artifact that evaluates to the reported numbers, feature
averaging fits the layers, the job reserves its one checkpoint, and bad submissions are refused
with a sentence."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from support.api import mlp_arch, read_safetensors, run_job, submit, upload_mlp
from support.security import assert_problem

from llfc_core.archs import parse_arch
from llfc_core.data import digits
from llfc_core.training import evaluate

WIDTHS = [64, 48, 48, 10]


@pytest.fixture(scope="module")
def trained(alice: httpx.Client) -> list[str]:
    """Three digit MLPs trained from different seeds by one train job, as checkpoint ids."""
    job = run_job(
        alice,
        {
            "kind": "train",
            "dataset": "builtin:digits",
            "params": {
                "arch": mlp_arch(WIDTHS),
                "epochs": 8,
                "batch_size": 32,
                "seed": 11,
                "num_modes": 3,
            },
        },
    )
    return [artifact["checkpoint_id"] for artifact in job["artifacts"]]


def _merge_body(models: list[str], **params: Any) -> dict[str, Any]:
    return {"kind": "merge", "models": models, "dataset": "builtin:digits", "params": params}


def test_a_three_model_merge_beats_the_unmatched_average_and_stores_what_it_scored(
    alice: httpx.Client, trained: list[str]
) -> None:
    job = run_job(alice, _merge_body(trained))
    assert job["models"] == trained
    assert job["params"]["method"] == "weight_average"
    assert job["params"]["repair"] == "none"  # the default of a net without BatchNorm
    result = job["result"]
    assert result["models"] == trained and result["method"] == "weight_average"
    assert len(result["permutations"]) == 3 and result["rounds"] >= 1
    assert all(check["relative_change"] < 1e-4 for check in result["function_checks"])
    test = result["scores"]["test"]
    assert len(test["inputs"]) == 3
    assert test["merged"]["loss"] < test["naive_average"]["loss"]
    assert test["merged"]["error"] < test["naive_average"]["error"]
    # A merge has no plots, whichever plot is asked for ('sweep' was once "no plot of an
    # analysis").
    for name in ("sweep", "lmc"):
        plot = alice.get(f"/v1/jobs/{job['id']}/plots/{name}.png")
        assert_problem(plot, 404, "is a merge job; only analyze and sweep jobs have plots")
    # The artifact is the model the scores describe.
    (artifact,) = job["artifacts"]
    assert artifact["name"] == "merged"
    blob = alice.get(f"/v1/checkpoints/{artifact['checkpoint_id']}/file")
    assert blob.status_code == 200, blob.text
    loss, error = evaluate(
        parse_arch(mlp_arch(WIDTHS)), read_safetensors(blob.content), digits("test")
    )
    assert loss == pytest.approx(test["merged"]["loss"], rel=1e-5)
    assert error == pytest.approx(test["merged"]["error"], abs=1e-9)


def test_feature_averaging_with_repair_fits_every_layer_and_beats_the_unmatched_average(
    alice: httpx.Client, trained: list[str]
) -> None:
    job = run_job(
        alice, _merge_body(trained[:2], method="feature_average", repair="repair", ridge=0.01)
    )
    result = job["result"]
    assert job["params"]["ridge"] == 0.01 and result["repair"] == "repair"
    assert result["fitted_layers"] == ["0", "2", "4"]
    test = result["scores"]["test"]
    assert test["merged"]["loss"] < test["naive_average"]["loss"]
    assert test["feature_error"]["merged"] < test["feature_error"]["matched_average"]


@pytest.mark.parametrize(
    ("params", "sentence"),
    [
        ({"method": "average"}, "merge method must be one of weight_average, feature_average"),
        ({"ridge": 0.1}, "method 'weight_average' fits nothing"),
        ({"method": "feature_average", "ridge": 0}, "'ridge' must be a positive number"),
        ({"method": "feature_average", "ridge": 1e308}, "at most 1e+06"),
        ({"max_rounds": 0}, "'max_rounds' must be an integer from 1 to 1000"),
        ({"repair": "fix"}, "repair"),
        ({"alpha": 0.5}, "does not take the parameter(s) 'alpha'"),
    ],
)
def test_bad_merge_params_are_refused_with_a_sentence(
    alice: httpx.Client, trained: list[str], params: dict[str, Any], sentence: str
) -> None:
    response = submit(alice, _merge_body(trained[:2], **params))
    assert_problem(response, 422, sentence)
    assert response.json()["type"] == "/problems/invalid-parameter"


def test_a_merge_needs_models_and_data(alice: httpx.Client, trained: list[str]) -> None:
    one = submit(alice, _merge_body(trained[:1]))
    assert_problem(one, 422, "needs 'models', a list of 2 to")
    pair = submit(alice, {"kind": "merge", "model_a": trained[0], "model_b": trained[1]})
    assert_problem(pair, 422, "'models', a list of ids")
    repeated = submit(alice, _merge_body([trained[0], trained[1], trained[0]]))
    assert_problem(repeated, 422, "more than once; name each model once (a merge averages")
    assert "matrices" not in repeated.json()["detail"]
    no_data = submit(alice, {"kind": "merge", "models": trained[:2]})
    assert_problem(no_data, 422, "to match, repair and fit the merge on")
    other = upload_mlp(alice, [64, 8, 10], 1)
    mixed = submit(alice, _merge_body([trained[0], other]))
    assert_problem(mixed, 422, "different archs")
    assert mixed.json()["type"] == "/problems/incompatible-pair"


def test_a_merge_on_the_test_split_keys_its_scores_by_that_split(
    alice: httpx.Client, trained: list[str]
) -> None:
    job = run_job(alice, _merge_body(trained[:2], split="test"))
    assert list(job["result"]["scores"]) == ["test"]
