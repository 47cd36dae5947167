"""Sweep jobs through the service: the job names its models, its result holds symmetric
matrices with a zero diagonal, each entry and each pair's stored analysis equal that pair's own
analyze job, the pairs are SQL rows served page by page, the heat map is a PNG, bad
submissions are refused with a sentence, and a running sweep reports its pair, keeps its models
from deletion and cancels."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from support.api import (
    LONG_ANALYZE_WIDTHS,
    long_analyze_body,
    run_job,
    submit,
    upload_mlp,
    wait_for_job,
)
from support.security import assert_problem

from llfc_core.plots import PNG_SIGNATURE
from llfc_results import SWEEP_METRICS, AnalysisResult
from llfc_results.sweep import pair_metrics

WIDTHS = [64, 16, 10]
PARAMS = {"match": "weight", "max_examples": 120, "alphas": [0, 0.5, 1], "llfc_alphas": [0.5]}


def _sweep_body(models: list[str], **params: Any) -> dict[str, Any]:
    return {
        "kind": "sweep",
        "models": models,
        "dataset": "builtin:digits",
        "params": {**PARAMS, **params},
    }


@pytest.fixture(scope="module")
def sweep(alice: httpx.Client) -> tuple[list[str], dict[str, Any]]:
    """A succeeded weight-matched sweep of three MLPs of alice, and their ids."""
    models = [upload_mlp(alice, WIDTHS, seed) for seed in (31, 32, 33)]
    return models, run_job(alice, _sweep_body(models))


def test_a_sweep_job_names_its_models_and_holds_symmetric_matrices(sweep) -> None:
    models, job = sweep
    assert job["models"] == models
    assert job["model_a"] is None and job["model_b"] is None
    result = job["result"]
    assert result["models"] == models
    assert result["metrics"] == list(SWEEP_METRICS)
    assert set(result["matrices"]) == {"naive", "matched"}
    for by_metric in result["matrices"].values():
        for matrix in by_metric.values():
            assert [matrix[i][i] for i in range(3)] == [0.0, 0.0, 0.0]
            assert all(matrix[i][j] == matrix[j][i] for i in range(3) for j in range(3))
    assert result["settings"]["match"] == "weight"
    assert result["settings"]["precision"] == "fp32"


def test_each_entry_and_each_stored_pair_equal_that_pairs_own_analyze_job(
    alice: httpx.Client, sweep
) -> None:
    models, job = sweep
    matrices = job["result"]["matrices"]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        alone = run_job(
            alice,
            {
                "kind": "analyze",
                "model_a": models[a],
                "model_b": models[b],
                "dataset": "builtin:digits",
                "params": PARAMS,
            },
        )["result"]
        stored = alice.get(f"/v1/jobs/{job['id']}/pairs/{a}/{b}")
        assert stored.status_code == 200, stored.text
        assert stored.json() == alone
        analysis = AnalysisResult.from_json(alone)
        for kind in ("naive", "matched"):
            for metric, value in pair_metrics(analysis.pairs[kind]).items():
                assert matrices[kind][metric][a][b] == value, (kind, metric, a, b)


def test_the_pairs_are_rows_served_page_by_page_with_the_matrices_numbers(
    alice: httpx.Client, sweep
) -> None:
    models, job = sweep
    matrices = job["result"]["matrices"]
    first = alice.get(f"/v1/jobs/{job['id']}/pairs", params={"limit": 2})
    assert first.status_code == 200, first.text
    page = first.json()
    assert page["next_cursor"] is not None
    rest = alice.get(f"/v1/jobs/{job['id']}/pairs", params={"cursor": page["next_cursor"]}).json()
    assert rest["next_cursor"] is None
    rows = page["items"] + rest["items"]
    assert [(row["index_a"], row["index_b"]) for row in rows] == [(0, 1), (0, 2), (1, 2)]
    for row in rows:
        a, b = row["index_a"], row["index_b"]
        assert (row["model_a"], row["model_b"]) == (models[a], models[b])
        for kind in ("naive", "matched"):
            for metric in SWEEP_METRICS:
                assert row[kind][metric] == matrices[kind][metric][a][b]
    missing = alice.get(f"/v1/jobs/{job['id']}/pairs/1/0")
    assert_problem(missing, 404, "i < j")
    bad_cursor = alice.get(f"/v1/jobs/{job['id']}/pairs", params={"cursor": "nonsense"})
    assert_problem(bad_cursor, 422, "cursor")


def test_the_heat_map_csv_and_metric_routes_answer_for_a_sweep(alice: httpx.Client, sweep) -> None:
    _, job = sweep
    plot = alice.get(f"/v1/jobs/{job['id']}/plots/sweep.png")
    assert plot.status_code == 200, plot.text
    assert plot.content.startswith(PNG_SIGNATURE)
    assert_problem(alice.get(f"/v1/jobs/{job['id']}/plots/lmc.png"), 404, "sweep.png")
    csv = alice.get(f"/v1/jobs/{job['id']}/result.csv")
    assert csv.status_code == 200, csv.text
    lines = csv.text.strip().splitlines()
    assert lines[0] == "pair,metric,model_a,model_b,value"
    assert len(lines) == 1 + 2 * 3 * 9
    assert_problem(alice.get(f"/v1/jobs/{job['id']}/metrics"), 404, "/pairs")


def test_another_owner_sees_no_sweep_and_cannot_sweep_anothers_models(
    bob: httpx.Client, sweep
) -> None:
    models, job = sweep
    assert_problem(bob.get(f"/v1/jobs/{job['id']}/pairs"), 404)
    assert_problem(bob.get(f"/v1/jobs/{job['id']}/pairs/0/1"), 404)
    assert_problem(bob.get(f"/v1/jobs/{job['id']}/plots/sweep.png"), 404)
    assert_problem(submit(bob, _sweep_body(models)), 422, "'models[0]' names no checkpoint")


def test_bad_sweep_submissions_are_refused_with_a_sentence(alice: httpx.Client, sweep) -> None:
    models, _ = sweep
    other_arch = upload_mlp(alice, [64, 8, 10], 34)
    refused = {
        "needs 'models', a list of 2 to 16": _sweep_body(models[:1]),
        # The count is checked before the repeats: 17 ids, over the default limit of 16.
        "got 17": _sweep_body((models * 6)[:17]),
        "more than once": _sweep_body([models[0], models[1], models[0]]),
        "have different archs": _sweep_body([models[0], other_arch]),
        "not as 'model_a' and 'model_b'": {**_sweep_body(models), "model_a": models[0]},
        "'llfc_alphas' must hold": _sweep_body(models, llfc_alphas=[0.25]),
    }
    for phrase, body in refused.items():
        assert_problem(submit(alice, body), 422, phrase)
    analyze = {"kind": "analyze", "models": models[:2], "dataset": "builtin:digits"}
    assert_problem(submit(alice, analyze), 422, "'models' is for jobs on N models")


def test_a_running_sweep_reports_its_pair_keeps_its_models_and_cancels(
    alice: httpx.Client,
) -> None:
    wide = [upload_mlp(alice, LONG_ANALYZE_WIDTHS, seed) for seed in (41, 42, 43)]
    long_params = long_analyze_body(wide[0], wide[1])["params"]
    body = {"kind": "sweep", "models": wide, "dataset": "builtin:digits", "params": long_params}
    job = submit(alice, body).json()
    running = wait_for_job(alice, job["id"], statuses=("running",), timeout=120)
    deadline = time.monotonic() + 60
    while not running["progress"]["stage"].startswith("pair 1 of 3: "):
        assert time.monotonic() < deadline, running["progress"]
        time.sleep(0.2)
        running = alice.get(f"/v1/jobs/{job['id']}").json()
    assert f"{wide[0]} vs {wide[1]}: " in running["progress"]["stage"]
    # The third model is in no pair yet, and still the sweep's.
    assert_problem(alice.delete(f"/v1/checkpoints/{wide[2]}"), 409, job["id"])
    assert alice.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    assert wait_for_job(alice, job["id"])["status"] == "cancelled"
    assert_problem(alice.get(f"/v1/jobs/{job['id']}/pairs"), 409, "cancelled")
    assert alice.delete(f"/v1/checkpoints/{wide[2]}").status_code == 204
    assert alice.get(f"/v1/jobs/{job['id']}").json()["models"] == wide
