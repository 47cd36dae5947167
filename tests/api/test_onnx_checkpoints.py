"""ONNX checkpoints over real HTTP against the real worker: a lab's .onnx files uploaded with the
arch {"name": "onnx"} run jobs to the end; different graphs, and files or archs that do not go
together, are refused with a sentence."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from support.api import (
    mlp_arch,
    mlp_state,
    read_safetensors,
    run_job,
    safetensors_file,
    submit,
    upload_checkpoint,
    upload_mlp,
)
from support.onnx_models import DigitsMLP, exported_mlp

ONNX = {"name": "onnx"}


def upload_onnx(http: httpx.Client, content: bytes, name: str) -> dict[str, Any]:
    response = upload_checkpoint(http, content, ONNX, filename=f"{name}.onnx")
    assert response.status_code == 201, response.text
    checkpoint: dict[str, Any] = response.json()
    return checkpoint


@pytest.fixture(scope="module")
def onnx_pair(alice: httpx.Client) -> tuple[dict[str, Any], dict[str, Any]]:
    return upload_onnx(alice, exported_mlp(1), "lab-a"), upload_onnx(
        alice, exported_mlp(2), "lab-b"
    )


def test_an_onnx_upload_is_stored_as_its_weights_under_the_graphs_arch(
    alice: httpx.Client, onnx_pair: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    model_a, model_b = onnx_pair
    assert model_a["format"] == "onnx" and model_a["name"] == "lab-a"
    assert set(model_a["arch"]) == {"name", "graph_sha256"} and model_a["arch"]["name"] == "onnx"
    assert model_a["arch"] == model_b["arch"]  # two seeds of one class: one graph
    assert model_a["num_params"] == sum(p.numel() for p in DigitsMLP().parameters())
    stored = read_safetensors(alice.get(f"/v1/checkpoints/{model_a['id']}/file").content)
    assert set(stored) == set(DigitsMLP().state_dict())
    # The same file again is the same checkpoint, with {"name": "onnx"} or the stored arch.
    again = upload_checkpoint(alice, exported_mlp(1), model_a["arch"], filename="again.onnx")
    assert again.status_code == 201 and again.json()["id"] == model_a["id"]


def test_an_analyze_job_on_two_onnx_checkpoints_runs_to_the_end(
    alice: httpx.Client, onnx_pair: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    model_a, model_b = onnx_pair
    job = run_job(
        alice,
        {
            "kind": "analyze",
            "model_a": model_a["id"],
            "model_b": model_b["id"],
            "dataset": "builtin:digits",
            "params": {"match": "weight", "alphas": [0, 0.5, 1], "llfc_alphas": [0.5]},
        },
    )
    pairs = job["result"]["pairs"]
    assert set(pairs) == {"naive", "matched"}
    # Each call of the model's one ReLU module is a feature layer of its own.
    assert pairs["matched"]["llfc"]["layers"] == ["relu_0", "relu_1", "logits"]
    assert pairs["matched"]["llfc"]["cos_ab"][0] < pairs["naive"]["llfc"]["cos_ab"][0]


def test_a_matched_onnx_checkpoint_outlives_the_uploads_it_came_from(
    alice: httpx.Client,
) -> None:
    model_a = upload_onnx(alice, exported_mlp(3), "short-lived-a")
    model_b = upload_onnx(alice, exported_mlp(4), "short-lived-b")
    job = run_job(alice, {"kind": "match", "model_a": model_a["id"], "model_b": model_b["id"]})
    permuted = job["artifacts"][0]["checkpoint_id"]
    assert alice.get(f"/v1/checkpoints/{permuted}").json()["arch"] == model_a["arch"]
    for checkpoint in (model_a, model_b):
        assert alice.delete(f"/v1/checkpoints/{checkpoint['id']}").status_code == 204
    # The graph the artifact is built from is still stored: a job on it runs.
    run_job(
        alice,
        {"kind": "interpolate", "model_a": permuted, "model_b": permuted, "params": {"alpha": 0.5}},
    )


def test_two_onnx_graphs_that_differ_are_refused_naming_where(
    alice: httpx.Client, onnx_pair: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    narrow = upload_onnx(alice, exported_mlp(1, width=16), "narrow")
    assert narrow["arch"] != onnx_pair[0]["arch"]
    response = submit(
        alice, {"kind": "match", "model_a": onnx_pair[0]["id"], "model_b": narrow["id"]}
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "/problems/incompatible-pair"
    assert "not the same graph" in problem["detail"]
    assert "'fc1.weight' has shape [32, 64] in the first and [16, 64]" in problem["detail"]


def test_an_onnx_checkpoint_and_another_arch_make_no_pair(
    alice: httpx.Client, onnx_pair: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    mlp = upload_mlp(alice, [64, 32, 32, 10], seed=1)
    response = submit(alice, {"kind": "match", "model_a": onnx_pair[0]["id"], "model_b": mlp})
    assert response.status_code == 422
    assert response.json()["type"] == "/problems/incompatible-pair"
    assert "different archs" in response.json()["detail"]


@pytest.mark.parametrize(
    ("content", "arch", "key_map", "problem", "phrase"),
    [
        (exported_mlp(5), mlp_arch([64, 32, 32, 10]), None, "unreadable-checkpoint", "ONNX"),
        (
            safetensors_file(mlp_state([64, 32, 10], seed=5)),
            ONNX,
            None,
            "unreadable-checkpoint",
            "a safetensors file, not an ONNX model",
        ),
        (exported_mlp(5), {**ONNX, "graph_sha256": "0" * 64}, None, "invalid-arch", "not that"),
        (exported_mlp(5), ONNX, "by_order", "invalid-key-map", "takes no key_map"),
    ],
    ids=["onnx-file-with-mlp-arch", "safetensors-with-onnx-arch", "wrong-digest", "key-map"],
)
def test_an_onnx_file_and_its_arch_go_together_or_are_refused(
    alice: httpx.Client,
    content: bytes,
    arch: dict[str, Any],
    key_map: str | None,
    problem: str,
    phrase: str,
) -> None:
    response = upload_checkpoint(alice, content, arch, filename="model.onnx", key_map=key_map)
    assert response.status_code == 422
    assert response.json()["type"] == f"/problems/{problem}"
    assert phrase in response.json()["detail"]


def test_a_train_job_cannot_build_an_onnx_arch_without_its_file(alice: httpx.Client) -> None:
    response = submit(
        alice, {"kind": "train", "dataset": "builtin:digits", "params": {"arch": ONNX}}
    )
    assert response.status_code == 422
    assert response.json()["type"] == "/problems/invalid-arch"
    assert "uploaded .onnx file" in response.json()["detail"]
