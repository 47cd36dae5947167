"""Match jobs with the methods that need data, end to end: STE (runs, keeps B's function, is
cancelled while running) and commutativity matching, and their parameters refused with 422."""

from __future__ import annotations

import time

import httpx
import pytest
import torch
from support.api import (
    mlp_model,
    read_safetensors,
    run_job,
    submit,
    upload_mlp,
    wait_for_job,
)

WIDTHS = [64, 24, 10]


@pytest.fixture(scope="module")
def pair(alice: httpx.Client) -> tuple[str, str]:
    return upload_mlp(alice, WIDTHS, 61), upload_mlp(alice, WIDTHS, 62)


@pytest.mark.parametrize(
    ("method", "extra"),
    [("ste", {"epochs": 1, "lr": 0.01, "batch_size": 128}), ("commutativity", {})],
)
def test_a_match_job_with_a_data_method_keeps_bs_function(
    alice: httpx.Client, pair: tuple[str, str], method: str, extra: dict
) -> None:
    model_a, model_b = pair
    job = run_job(
        alice,
        {
            "kind": "match",
            "model_a": model_a,
            "model_b": model_b,
            "dataset": "builtin:digits",
            "params": {"method": method, **extra},
        },
    )
    assert job["result"]["method"] == method
    assert job["result"]["objective_after"] <= job["result"]["objective_before"]
    assert job["result"]["function_check"]["passed"] is True
    if method == "ste":
        assert job["params"]["epochs"] == 1 and job["params"]["lr"] == 0.01
        assert job["result"]["iterations"] == 12  # 1,437 training digits in batches of 128
    else:
        assert "epochs" not in job["params"]
    permuted_id = job["artifacts"][0]["checkpoint_id"]
    permuted = read_safetensors(alice.get(f"/v1/checkpoints/{permuted_id}/file").content)
    original, moved = mlp_model(WIDTHS, 62), mlp_model(WIDTHS, 0)
    moved.load_state_dict(permuted)
    inputs = torch.rand(32, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(moved(inputs), original(inputs), rtol=1e-5, atol=1e-5)


def test_a_running_ste_job_is_cancelled(alice: httpx.Client, pair: tuple[str, str]) -> None:
    model_a, model_b = pair
    body = {
        "kind": "match",
        "model_a": model_a,
        "model_b": model_b,
        "dataset": "builtin:digits",
        "params": {"method": "ste", "epochs": 1000, "batch_size": 8},
    }
    job = submit(alice, body).json()
    wait_for_job(alice, job["id"], statuses=("running",), timeout=120)
    deadline = time.monotonic() + 60
    stage = ""
    while not stage.startswith("STE step") and time.monotonic() < deadline:
        time.sleep(0.2)
        stage = alice.get(f"/v1/jobs/{job['id']}").json()["progress"]["stage"]
    assert " of 180000, midpoint loss " in stage, stage  # 1,437 digits in batches of 8
    assert alice.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    stopped = wait_for_job(alice, job["id"], timeout=60)
    assert stopped["status"] == "cancelled", stopped
    assert stopped["progress"]["fraction"] < 1.0


def test_match_parameters_are_refused_with_a_sentence(
    alice: httpx.Client, pair: tuple[str, str]
) -> None:
    model_a, model_b = pair
    digits = {"model_a": model_a, "model_b": model_b, "dataset": "builtin:digits"}
    cases = [
        ({"kind": "match", **digits, "params": {"epochs": 2}}, "takes none"),
        ({"kind": "match", **digits, "params": {"method": "activation", "lr": 0.1}}, "takes none"),
        ({"kind": "match", **digits, "params": {"method": "ste", "lr": 0}}, "above 0"),
        ({"kind": "match", **digits, "params": {"method": "ste", "epochs": 0}}, "from 1 to 1000"),
        ({"kind": "match", **digits, "params": {"method": "sinkhorn"}}, "must be one of"),
        ({"kind": "analyze", **digits, "params": {"match": "weight", "lr": 0.1}}, "'lr'"),
        ({"kind": "analyze", **digits, "params": {"match": "ste", "epochs": -1}}, "from 1"),
    ]
    for body, words in cases:
        response = submit(alice, body)
        assert response.status_code == 422, (body, response.text)
        problem = response.json()
        assert problem["type"] == "/problems/invalid-parameter", problem
        assert words in problem["detail"], problem
    for method in ("ste", "commutativity"):
        response = submit(
            alice,
            {"kind": "match", "model_a": model_a, "model_b": model_b, "params": {"method": method}},
        )
        assert response.status_code == 422
        assert response.json()["type"] == "/problems/invalid-dataset"
        assert f"for {method} matching" in response.json()["detail"]
