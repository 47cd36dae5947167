"""/v1/jobs over real HTTP against the real worker: every kind, idempotency, refusals, cancel."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import torch
from support.api import (
    LONG_ANALYZE_WIDTHS,
    EmbeddedService,
    long_analyze_body,
    mlp_arch,
    mlp_model,
    read_safetensors,
    run_job,
    submit,
    upload_mlp,
    wait_for_job,
)

SMALL = [64, 24, 10]
TRAIN_WIDTHS = [64, 32, 32, 10]


@pytest.fixture(scope="module")
def trained(alice: httpx.Client) -> dict[str, Any]:
    """A train job: two independently trained digit MLPs, a few epochs each."""
    return run_job(
        alice,
        {
            "kind": "train",
            "dataset": "builtin:digits",
            "params": {
                "arch": mlp_arch(TRAIN_WIDTHS),
                "epochs": 8,
                "batch_size": 32,
                "seed": 3,
                "num_modes": 2,
            },
        },
    )


def test_submission_answers_202_with_location_and_retry_after(alice: httpx.Client) -> None:
    model_a, model_b = upload_mlp(alice, SMALL, 1), upload_mlp(alice, SMALL, 2)
    response = submit(alice, {"kind": "match", "model_a": model_a, "model_b": model_b})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert int(response.headers["retry-after"]) >= 1
    assert job["status"] in ("queued", "running")
    assert job["params"] == {
        "method": "weight",
        "symmetry": "permutation",
        "repair": "none",
        "seed": 0,
        "batch_size": 256,
        "split": "train",
        "max_examples": None,
    }
    finished = wait_for_job(alice, job["id"])
    assert finished["status"] == "succeeded"
    assert finished["progress"] == {"fraction": 1.0, "stage": "done"}
    assert finished["started_at"] >= finished["created_at"]
    assert finished["finished_at"] >= finished["started_at"]
    done = alice.get(response.headers["location"])
    assert "retry-after" not in done.headers


def test_train_job_makes_checkpoints_of_the_owner(
    alice: httpx.Client, bob: httpx.Client, trained: dict[str, Any]
) -> None:
    assert [a["name"] for a in trained["artifacts"]] == ["model_0", "model_1"]
    modes = trained["result"]["modes"]
    assert [mode["name"] for mode in modes] == ["model_0", "model_1"]
    for mode in modes:
        # A few epochs on digits already beat chance (90% error) by far.
        assert mode["train_error"] < 0.3
        assert mode["test_error"] < 0.4
    for artifact in trained["artifacts"]:
        checkpoint = alice.get(f"/v1/checkpoints/{artifact['checkpoint_id']}").json()
        assert checkpoint["arch"] == mlp_arch(TRAIN_WIDTHS)
        assert checkpoint["source_job_id"] == trained["id"]
        assert bob.get(f"/v1/checkpoints/{artifact['checkpoint_id']}").status_code == 404
    assert bob.get(f"/v1/jobs/{trained['id']}").status_code == 404


def _barrier(values: list[float], alphas: list[float], at_a: float, at_b: float) -> float:
    return max(v - (a * at_a + (1 - a) * at_b) for v, a in zip(values, alphas, strict=True))


def test_analyze_of_trained_modes_has_the_api_result_shape(
    alice: httpx.Client, trained: dict[str, Any]
) -> None:
    model_a, model_b = (a["checkpoint_id"] for a in trained["artifacts"])
    job = run_job(
        alice,
        {
            "kind": "analyze",
            "model_a": model_a,
            "model_b": model_b,
            "dataset": "builtin:digits",
            "params": {"match": "weight", "llfc_alphas": [0.5], "max_examples": 200},
        },
    )
    result = job["result"]
    assert set(result["pairs"]) == {"naive", "matched"}
    assert set(result["endpoints"]) == {"a", "b"}
    endpoints = result["endpoints"]
    for pair in result["pairs"].values():
        lmc = pair["lmc"]
        assert lmc["alphas"] == pytest.approx([i / 10 for i in range(11)])
        assert len(lmc["loss"]) == len(lmc["error"]) == 11
        assert lmc["loss_barrier"] == pytest.approx(
            _barrier(lmc["loss"], lmc["alphas"], endpoints["a"]["loss"], endpoints["b"]["loss"])
        )
        assert lmc["error_barrier"] == pytest.approx(
            _barrier(lmc["error"], lmc["alphas"], endpoints["a"]["error"], endpoints["b"]["error"])
        )
        llfc = pair["llfc"]
        assert llfc["layers"][-1] == "logits"
        assert len(llfc["layers"]) == 3  # two ReLU outputs, then the logits
        assert len(llfc["cos_ab"]) == 3
        assert set(llfc["cos_alpha"]) == set(llfc["scale_c"]) == {"0.5"}
        assert len(llfc["cos_alpha"]["0.5"]) == 3
        assert set(pair["weak_additivity"]) == {"0.5"}
        assert len(pair["weak_additivity"]["0.5"]) == 2
        assert len(pair["commutativity"]) >= 1
        assert set(pair["lemma"]) >= {"epsilon", "max_error_on_path", "holds"}
    # Matching aligns features: B's features move towards A's.
    naive, matched = result["pairs"]["naive"]["llfc"], result["pairs"]["matched"]["llfc"]
    assert matched["cos_ab"][0] < naive["cos_ab"][0]

    rows = alice.get(f"/v1/jobs/{job['id']}/metrics", params={"metric": "cos_alpha"}).json()
    assert len(rows["items"]) == 2 * 3  # two pairs, three layers, one alpha
    one = alice.get(
        f"/v1/jobs/{job['id']}/metrics",
        params={"pair": "matched", "metric": "cos_ab", "layer": "logits"},
    ).json()["items"]
    assert [row["value"] for row in one] == pytest.approx([matched["cos_ab"][-1]])


def test_match_artifact_is_a_usable_checkpoint(alice: httpx.Client) -> None:
    model_a, model_b = upload_mlp(alice, SMALL, 11), upload_mlp(alice, SMALL, 12)
    job = run_job(alice, {"kind": "match", "model_a": model_a, "model_b": model_b})
    assert job["result"]["objective_after"] <= job["result"]["objective_before"]
    assert len(job["result"]["permutation"]["P_0"]) == SMALL[1]
    [artifact] = job["artifacts"]
    assert artifact["name"] == "model_b_permuted"
    permuted_id = artifact["checkpoint_id"]
    permuted = read_safetensors(alice.get(f"/v1/checkpoints/{permuted_id}/file").content)

    # A permutation of hidden units leaves B's function unchanged but moves its weights.
    original = mlp_model(SMALL, 12)
    moved = mlp_model(SMALL, 0)
    moved.load_state_dict(permuted)
    inputs = torch.rand(32, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(moved(inputs), original(inputs), atol=1e-5)
    assert not torch.equal(permuted["0.weight"], original.state_dict()["0.weight"])

    # ...and it is a checkpoint later jobs take.
    mixed_job = run_job(
        alice,
        {
            "kind": "interpolate",
            "model_a": model_a,
            "model_b": permuted_id,
            "params": {"alpha": 0.25},
        },
    )
    mixed = read_safetensors(
        alice.get(f"/v1/checkpoints/{mixed_job['artifacts'][0]['checkpoint_id']}/file").content
    )
    state_a = mlp_model(SMALL, 11).state_dict()
    for key, value in mixed.items():
        assert torch.allclose(value, 0.25 * state_a[key] + 0.75 * permuted[key], atol=1e-6)


def test_the_same_idempotency_key_and_body_give_the_same_job(alice: httpx.Client) -> None:
    model_a, model_b = upload_mlp(alice, SMALL, 21), upload_mlp(alice, SMALL, 22)
    body = {"kind": "interpolate", "model_a": model_a, "model_b": model_b}
    first = submit(alice, body, **{"Idempotency-Key": "key-1"})
    again = submit(alice, body, **{"Idempotency-Key": "key-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    other_body = {**body, "params": {"alpha": 0.9}}
    reused = submit(alice, other_body, **{"Idempotency-Key": "key-1"})
    assert reused.status_code == 422
    assert "different request body" in reused.json()["detail"]
    assert (
        submit(alice, other_body, **{"Idempotency-Key": "key-2"}).json()["id"]
        != (first.json()["id"])
    )


def test_incompatible_inputs_are_refused_at_submission(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    small_a, small_b = upload_mlp(alice, SMALL, 31), upload_mlp(alice, SMALL, 32)
    other_arch = upload_mlp(alice, [64, 12, 10], 33)
    wrong_inputs = upload_mlp(alice, [10, 12, 10], 34)
    bobs = upload_mlp(bob, SMALL, 35)
    before = len(alice.get("/v1/jobs", params={"limit": 200}).json()["items"])
    cases = [
        ({"kind": "match", "model_a": small_a, "model_b": other_arch}, "incompatible-pair"),
        (
            {
                "kind": "analyze",
                "model_a": wrong_inputs,
                "model_b": wrong_inputs,
                "dataset": "builtin:digits",
            },
            "invalid-dataset",
        ),
        (
            {
                "kind": "analyze",
                "model_a": small_a,
                "model_b": small_b,
                "dataset": "builtin:digits",
                "params": {"alphas": [0.5, 1.5]},
            },
            "invalid-parameter",
        ),
        (
            {
                "kind": "analyze",
                "model_a": small_a,
                "model_b": small_b,
                "dataset": "builtin:nothing",
            },
            "invalid-dataset",
        ),
        ({"kind": "analyze", "model_a": small_a, "model_b": small_b}, "invalid-dataset"),
        (
            {
                "kind": "match",
                "model_a": small_a,
                "model_b": small_b,
                "params": {"method": "activation"},
            },
            "invalid-dataset",
        ),
        (
            {"kind": "match", "model_a": small_a, "model_b": small_b, "params": {"sede": 1}},
            "invalid-parameter",
        ),
        ({"kind": "match", "model_a": small_a, "model_b": bobs}, "invalid-parameter"),
        ({"kind": "interpolate", "model_a": small_a}, "invalid-parameter"),
        (
            {
                "kind": "train",
                "dataset": "builtin:digits",
                "params": {"arch": mlp_arch(SMALL), "lr": -1},
            },
            "invalid-parameter",
        ),
        ({"kind": "train", "dataset": "builtin:digits", "params": {}}, "invalid-parameter"),
        ({"kind": "translate", "model_a": small_a}, "validation"),
    ]
    for body, problem_type in cases:
        response = submit(alice, body)
        assert response.status_code == 422, (body, response.text)
        problem = response.json()
        assert problem["type"] == f"/problems/{problem_type}", (body, problem)
        assert problem["detail"].endswith((".", ")")), problem
    # Another owner's checkpoint reads exactly like one that does not exist.
    missing = {"kind": "match", "model_a": small_a, "model_b": "ckpt_missing"}
    assert submit(alice, cases[7][0]).json()["detail"].replace(bobs, "ID") == (
        submit(alice, missing).json()["detail"].replace("ckpt_missing", "ID")
    )
    assert len(alice.get("/v1/jobs", params={"limit": 200}).json()["items"]) == before


def test_jobs_are_listed_newest_first_and_filtered(carol: httpx.Client) -> None:
    model_a, model_b = upload_mlp(carol, SMALL, 41), upload_mlp(carol, SMALL, 42)
    match = run_job(carol, {"kind": "match", "model_a": model_a, "model_b": model_b})
    mixed = run_job(carol, {"kind": "interpolate", "model_a": model_a, "model_b": model_b})
    listing = carol.get("/v1/jobs").json()
    assert [job["id"] for job in listing["items"]] == [mixed["id"], match["id"]]
    only_match = carol.get("/v1/jobs", params={"kind": "match"}).json()["items"]
    assert [job["id"] for job in only_match] == [match["id"]]
    assert carol.get("/v1/jobs", params={"status": "failed"}).json()["items"] == []
    page = carol.get("/v1/jobs", params={"limit": 1}).json()
    rest = carol.get("/v1/jobs", params={"limit": 1, "cursor": page["next_cursor"]}).json()
    assert [page["items"][0]["id"], rest["items"][0]["id"]] == [mixed["id"], match["id"]]
    assert carol.get("/v1/jobs", params={"status": "sleeping"}).status_code == 422


def test_cancel_stops_a_running_job_and_a_queued_one_never_runs(alice: httpx.Client) -> None:
    wide_a = upload_mlp(alice, LONG_ANALYZE_WIDTHS, 51)
    wide_b = upload_mlp(alice, LONG_ANALYZE_WIDTHS, 52)
    running = submit(alice, long_analyze_body(wide_a, wide_b)).json()
    wait_for_job(alice, running["id"], statuses=("running",), timeout=120)

    # The worker is busy: the next job waits in the queue.
    queued = submit(alice, {"kind": "match", "model_a": wide_a, "model_b": wide_b}).json()
    assert alice.get(f"/v1/jobs/{queued['id']}").json()["status"] == "queued"
    in_use = alice.delete(f"/v1/checkpoints/{wide_a}")
    assert in_use.status_code == 409
    assert running["id"] in in_use.json()["detail"] or queued["id"] in in_use.json()["detail"]

    cancelled = alice.post(f"/v1/jobs/{queued['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert "retry-after" not in cancelled.headers

    asked = alice.post(f"/v1/jobs/{running['id']}/cancel")
    assert asked.status_code == 202
    assert asked.json()["cancel_requested"] is True
    asked_at = time.monotonic()
    stopped = wait_for_job(alice, running["id"], timeout=60)
    assert stopped["status"] == "cancelled"
    assert stopped["error"] is None
    assert stopped["progress"]["fraction"] < 1.0
    assert time.monotonic() - asked_at < 30

    # The queued job was never claimed, even though its message reached the worker.
    time.sleep(1.0)
    never_ran = alice.get(f"/v1/jobs/{queued['id']}").json()
    assert never_ran["status"] == "cancelled"
    assert never_ran["started_at"] is None
    assert never_ran["attempts"] == 0
    assert alice.post(f"/v1/jobs/{queued['id']}/cancel").status_code == 200
    assert alice.delete(f"/v1/checkpoints/{wide_a}").status_code == 204


def test_a_finished_job_cannot_be_cancelled(alice: httpx.Client) -> None:
    model_a, model_b = upload_mlp(alice, SMALL, 61), upload_mlp(alice, SMALL, 62)
    job = run_job(alice, {"kind": "interpolate", "model_a": model_a, "model_b": model_b})
    response = alice.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    assert "already succeeded" in response.json()["detail"]


def test_a_run_time_failure_is_stored_as_a_sentence(
    alice: httpx.Client, embedded: EmbeddedService
) -> None:
    # MNIST files that are there (so the submission is accepted) but are not idx files.
    mnist_files = [
        embedded.data_dir / "datasets" / f"{prefix}-{kind}"
        for prefix in ("train", "t10k")
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
    ]
    mnist_files[0].parent.mkdir(exist_ok=True)
    for path in mnist_files:
        path.write_bytes(b"not an idx file")
    try:
        response = submit(
            alice,
            {
                "kind": "train",
                "dataset": "builtin:mnist",
                "params": {"arch": mlp_arch([784, 8, 10]), "epochs": 1},
            },
        )
        assert response.status_code == 202, response.text
        job = wait_for_job(alice, response.json()["id"])
    finally:
        for path in mnist_files:
            path.unlink()
    assert job["status"] == "failed"
    assert job["error"].startswith("The file ")
    assert "is not an idx file of unsigned bytes" in job["error"]
    assert "Traceback" not in job["error"]
    assert job["result"] is None
    assert job["artifacts"] == []
    assert job["finished_at"] is not None
