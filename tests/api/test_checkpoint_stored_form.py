"""Uploads that already are the stored float32 safetensors file are kept byte for byte."""

from __future__ import annotations

import hashlib

import httpx
import torch
from support.api import (
    mlp_arch,
    mlp_state,
    read_safetensors,
    safetensors_file,
    torch_file,
    upload_checkpoint,
)

WIDTHS = [48, 24, 10]


def test_a_float32_safetensors_upload_is_stored_as_uploaded(alice: httpx.Client) -> None:
    state = mlp_state(WIDTHS, seed=301)
    content = safetensors_file(state)
    response = upload_checkpoint(alice, content, mlp_arch(WIDTHS))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "safetensors"
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["num_params"] == 48 * 24 + 24 + 24 * 10 + 10
    download = alice.get(f"/v1/checkpoints/{body['id']}/file")
    assert download.status_code == 200
    # The blob is the upload itself: same hash, same bytes, same tensors.
    assert download.headers["X-Checkpoint-Sha256"] == body["sha256"]
    assert download.content == content
    downloaded = read_safetensors(download.content)
    assert all(torch.equal(downloaded[key], state[key]) for key in state)


def test_a_file_needing_conversion_is_stored_as_a_new_float32_blob(alice: httpx.Client) -> None:
    state = {key: value.double() for key, value in mlp_state(WIDTHS, seed=302).items()}
    content = safetensors_file(state)
    body = upload_checkpoint(alice, content, mlp_arch(WIDTHS)).json()
    assert body["format"] == "safetensors"
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    download = alice.get(f"/v1/checkpoints/{body['id']}/file")
    assert download.headers["X-Checkpoint-Sha256"] != body["sha256"]
    downloaded = read_safetensors(download.content)
    assert {value.dtype for value in downloaded.values()} == {torch.float32}


def test_a_nan_in_a_stored_form_upload_is_refused_naming_the_tensor(alice: httpx.Client) -> None:
    state = mlp_state(WIDTHS, seed=303)
    state["2.weight"][9, 23] = float("nan")
    response = upload_checkpoint(alice, safetensors_file(state), mlp_arch(WIDTHS))
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "/problems/unreadable-checkpoint"
    assert "NaN or infinite values" in problem["detail"]
    assert "2.weight" in problem["detail"]
    assert "0.weight" not in problem["detail"]
    listed = alice.get("/v1/checkpoints", params={"limit": 100}).json()["items"]
    assert all(
        item["sha256"] != hashlib.sha256(safetensors_file(state)).hexdigest() for item in listed
    )


def test_a_torch_upload_still_takes_the_general_path(alice: httpx.Client) -> None:
    content = torch_file(mlp_state(WIDTHS, seed=304))
    body = upload_checkpoint(alice, content, mlp_arch(WIDTHS)).json()
    assert body["format"] == "torch"
    download = alice.get(f"/v1/checkpoints/{body['id']}/file")
    assert download.headers["X-Checkpoint-Sha256"] != body["sha256"]
