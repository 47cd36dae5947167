"""Which data a job uses: `train_dataset` for BatchNorm re-estimation and activation matching,
`split` only on built-ins, and built-ins refused at submission while their files are missing."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from support.api import (
    LONG_ANALYZE_WIDTHS,
    long_analyze_body,
    read_safetensors,
    run_job,
    safetensors_file,
    submit,
    upload_checkpoint,
    upload_mlp,
    wait_for_job,
)

from llfc_core.archs import parse_arch

SMALL = [64, 16, 10]


def upload_arrays(http: httpx.Client, x: np.ndarray, y: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    response = http.post("/v1/datasets", files={"file": ("data.npz", buffer.getvalue())})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def pair(alice: httpx.Client) -> tuple[str, str]:
    return upload_mlp(alice, SMALL, 21), upload_mlp(alice, SMALL, 22)


@pytest.fixture(scope="module")
def evaluation_and_training(alice: httpx.Client) -> tuple[str, str]:
    """Two uploads of 64 features: uniform noise to evaluate on, wider Gaussians to train on."""
    rng = np.random.default_rng(5)
    evaluation = upload_arrays(alice, rng.random((40, 64), np.float32), np.arange(40) % 10)
    training = upload_arrays(
        alice, 3 * rng.standard_normal((300, 64), np.float32), np.arange(300) % 10
    )
    return evaluation, training


def match_body(pair: tuple[str, str], dataset: str | None, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "match",
        "model_a": pair[0],
        "model_b": pair[1],
        "params": {"method": "activation", **params},
    }
    if dataset is not None:
        body["dataset"] = dataset
    return body


def test_activation_matching_runs_on_the_train_dataset_not_the_evaluation_data(
    alice: httpx.Client, pair: tuple[str, str], evaluation_and_training: tuple[str, str]
) -> None:
    evaluation, training = evaluation_and_training
    with_train = run_job(alice, match_body(pair, evaluation, train_dataset=training))
    assert with_train["params"]["train_dataset"] == training
    on_training = run_job(alice, match_body(pair, training))
    on_evaluation = run_job(alice, match_body(pair, evaluation))
    permutation = with_train["result"]["permutation"]
    assert permutation == on_training["result"]["permutation"]
    assert permutation != on_evaluation["result"]["permutation"]
    # A train_dataset alone is data enough for activation matching.
    alone = run_job(alice, match_body(pair, None, train_dataset=training))
    assert alone["result"]["permutation"] == permutation


def test_an_analysis_with_a_train_dataset_matches_on_it(
    alice: httpx.Client, pair: tuple[str, str], evaluation_and_training: tuple[str, str]
) -> None:
    evaluation, training = evaluation_and_training
    body = {
        "kind": "analyze",
        "model_a": pair[0],
        "model_b": pair[1],
        "dataset": evaluation,
        "params": {"match": "activation", "train_dataset": training, "alphas": [0, 0.5, 1]},
    }
    analysis = run_job(alice, body)
    assert analysis["dataset"] == evaluation
    assert analysis["params"]["train_dataset"] == training
    assert "matched" in analysis["result"]["pairs"]


SMALL_VGG = {"name": "vgg", "depth": 11, "width": 1 / 16, "in_channels": 1, "input_size": 32}


def test_batch_norm_statistics_are_re_estimated_on_the_train_dataset(alice: httpx.Client) -> None:
    checkpoints = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        state = parse_arch(SMALL_VGG).build().state_dict()
        response = upload_checkpoint(alice, safetensors_file(state), SMALL_VGG, "vgg.safetensors")
        assert response.status_code == 201, response.text
        checkpoints.append(response.json()["id"])
    rng = np.random.default_rng(9)
    evaluation = upload_arrays(alice, rng.random((20, 1, 32, 32), np.float32), np.arange(20) % 10)
    training = upload_arrays(
        alice, 5 + rng.standard_normal((30, 1, 32, 32), np.float32), np.arange(30) % 10
    )

    def running_mean(dataset: str | None, **params: Any) -> torch.Tensor:
        body: dict[str, Any] = {
            "kind": "interpolate",
            "model_a": checkpoints[0],
            "model_b": checkpoints[1],
            "params": params,
        }
        if dataset is not None:
            body["dataset"] = dataset
        job = run_job(alice, body)
        artifact = job["artifacts"][0]["checkpoint_id"]
        file = alice.get(f"/v1/checkpoints/{artifact}/file")
        return read_safetensors(file.content)["features.1.running_mean"]

    with_train = running_mean(evaluation, train_dataset=training)
    assert torch.equal(with_train, running_mean(training))
    assert not torch.allclose(with_train, running_mean(evaluation))
    assert torch.equal(with_train, running_mean(None, train_dataset=training))


@pytest.mark.parametrize(
    ("train_dataset", "phrase"),
    [
        ("ds_doesnotexist", "No dataset with id 'ds_doesnotexist' exists"),
        ("builtin:imagenet", "Unknown built-in dataset 'builtin:imagenet'"),
        (42, "'train_dataset' must be a dataset id"),
        ({"id": "ds_x"}, "'train_dataset' must be a dataset id"),
    ],
)
def test_a_train_dataset_that_names_no_dataset_is_refused(
    alice: httpx.Client, pair: tuple[str, str], train_dataset: Any, phrase: str
) -> None:
    response = submit(alice, match_body(pair, "builtin:digits", train_dataset=train_dataset))
    assert response.status_code == 422, response.text
    assert phrase in response.json()["detail"]


def test_another_owners_dataset_is_no_train_dataset(
    alice: httpx.Client, bob: httpx.Client, pair: tuple[str, str]
) -> None:
    rng = np.random.default_rng(6)
    bobs = upload_arrays(bob, rng.random((10, 64), np.float32), np.arange(10) % 10)
    response = submit(alice, match_body(pair, "builtin:digits", train_dataset=bobs))
    assert response.status_code == 422, response.text
    assert f"No dataset with id '{bobs}' exists" in response.json()["detail"]


def test_a_train_dataset_that_does_not_fit_the_arch_is_refused(
    alice: httpx.Client, pair: tuple[str, str]
) -> None:
    rng = np.random.default_rng(7)
    narrow = upload_arrays(alice, rng.random((10, 32), np.float32), np.arange(10) % 10)
    response = submit(alice, match_body(pair, "builtin:digits", train_dataset=narrow))
    assert response.status_code == 422, response.text
    assert "has examples of shape (32,)" in response.json()["detail"]


def test_a_dataset_a_running_job_trains_on_cannot_be_deleted(alice: httpx.Client) -> None:
    rng = np.random.default_rng(8)
    training = upload_arrays(alice, rng.random((50, 64), np.float32), np.arange(50) % 10)
    model_a = upload_mlp(alice, LONG_ANALYZE_WIDTHS, 1)
    model_b = upload_mlp(alice, LONG_ANALYZE_WIDTHS, 2)
    body = long_analyze_body(model_a, model_b)
    body["params"]["train_dataset"] = training
    response = submit(alice, body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    try:
        refused = alice.delete(f"/v1/datasets/{training}")
        assert refused.status_code == 409, refused.text
        assert f"used by job {job_id}" in refused.json()["detail"]
    finally:
        alice.post(f"/v1/jobs/{job_id}/cancel")
    wait_for_job(alice, job_id)
    assert alice.delete(f"/v1/datasets/{training}").status_code == 204


def test_split_on_an_upload_is_refused_with_a_sentence(
    alice: httpx.Client, pair: tuple[str, str], evaluation_and_training: tuple[str, str]
) -> None:
    evaluation, _ = evaluation_and_training
    body = {
        "kind": "analyze",
        "model_a": pair[0],
        "model_b": pair[1],
        "dataset": evaluation,
        "params": {"split": "test"},
    }
    response = submit(alice, body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "'split' applies only to built-in datasets" in detail
    assert "Upload its train and test parts as two datasets" in detail
    # On a built-in it still chooses the split.
    assert submit(alice, {**body, "dataset": "builtin:digits"}).status_code == 202


@pytest.mark.parametrize(
    ("name", "input_size", "phrase"),
    [("mnist", 784, "train-images-idx3-ubyte"), ("cifar10", 3072, "cifar-10-binary.tar.gz")],
)
def test_a_builtin_without_its_files_is_refused_at_submission_and_listed_not_installed(
    alice: httpx.Client, name: str, input_size: int, phrase: str
) -> None:
    listed = {item["id"]: item for item in alice.get("/v1/datasets").json()["items"]}
    assert listed[f"builtin:{name}"]["installed"] is False
    assert listed["builtin:digits"]["installed"] is True
    assert alice.get(f"/v1/datasets/builtin:{name}").json()["installed"] is False
    train = {
        "kind": "train",
        "dataset": f"builtin:{name}",
        "params": {"arch": {"name": "mlp", "widths": [input_size, 8, 10]}},
    }
    response = submit(alice, train)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert f"'builtin:{name}' is not installed on this service" in detail
    assert phrase in detail and "LLFC_DATASETS_ROOT" in detail
