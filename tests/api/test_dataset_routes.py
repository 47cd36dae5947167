"""/v1/datasets over real HTTP: .npz and .safetensors uploads, built-ins, refusals, delete."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import httpx
import numpy as np
from safetensors.numpy import save as save_numpy_safetensors
from support.api import EmbeddedService

from llfc_core.data import inspect_array_file, write_normalised


def npz_file(x: np.ndarray, y: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    return buffer.getvalue()


def normalised_copy(content: bytes, tmp_path: Path) -> bytes:
    """The normalised copy the engine makes of an uploaded file (float32 x, int64 y)."""
    upload, normalised = tmp_path / "upload", tmp_path / "normalised"
    upload.write_bytes(content)
    with normalised.open("wb") as file:
        write_normalised(inspect_array_file(upload), file)
    return normalised.read_bytes()


def upload_dataset(http: httpx.Client, content: bytes, name: str | None = None) -> httpx.Response:
    data = {"name": name} if name else {}
    return http.post("/v1/datasets", files={"file": ("data.bin", content)}, data=data)


def test_npz_upload_answers_201_with_shape_classes_and_hash(alice: httpx.Client) -> None:
    rng = np.random.default_rng(0)
    content = npz_file(rng.random((30, 8, 8), dtype=np.float32), np.arange(30) % 7)
    response = upload_dataset(alice, content, name="small digits")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "small digits"
    assert body["num_examples"] == 30
    assert body["input_shape"] == [8, 8]
    assert body["num_classes"] == 7
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["format"] == "npz"
    assert alice.get(f"/v1/datasets/{body['id']}").json() == body
    again = upload_dataset(alice, content)
    assert again.json()["id"] == body["id"]


def test_safetensors_upload_is_accepted(alice: httpx.Client) -> None:
    x = np.linspace(0, 1, 40 * 64, dtype=np.float32).reshape(40, 64)
    content = save_numpy_safetensors({"x": x, "y": (np.arange(40) % 10).astype(np.int64)})
    response = upload_dataset(alice, content)
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "safetensors"
    assert response.json()["input_shape"] == [64]


def test_listing_shows_the_builtins_and_the_owners_uploads(carol: httpx.Client) -> None:
    content = npz_file(np.zeros((5, 3), dtype=np.float32), np.array([0, 1, 2, 1, 0]))
    uploaded = upload_dataset(carol, content).json()
    listing = carol.get("/v1/datasets").json()
    ids = [item["id"] for item in listing["items"]]
    assert {"builtin:digits", "builtin:mnist", "builtin:cifar10"} <= set(ids)
    assert uploaded["id"] in ids
    digits = carol.get("/v1/datasets/builtin:digits").json()
    assert digits["input_shape"] == [64]
    assert digits["num_classes"] == 10
    assert digits["builtin"] is True
    assert carol.get("/v1/datasets/builtin:imagenet").status_code == 404


def test_files_that_are_not_x_and_y_arrays_are_422(alice: httpx.Client) -> None:
    garbage = upload_dataset(alice, b"certainly not an array file")
    assert garbage.status_code == 422
    assert garbage.json()["type"] == "/problems/invalid-dataset"
    mismatched = upload_dataset(alice, npz_file(np.zeros((4, 2), np.float32), np.zeros(3)))
    assert mismatched.status_code == 422
    assert "y" in mismatched.json()["detail"]


def test_delete_and_other_owners(alice: httpx.Client, bob: httpx.Client) -> None:
    content = npz_file(np.ones((6, 4), dtype=np.float32), np.array([0, 1, 0, 1, 0, 1]))
    dataset_id = upload_dataset(alice, content).json()["id"]
    assert bob.get(f"/v1/datasets/{dataset_id}").status_code == 404
    assert bob.delete(f"/v1/datasets/{dataset_id}").status_code == 404
    assert alice.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    assert alice.get(f"/v1/datasets/{dataset_id}").status_code == 404


def test_an_upload_is_kept_as_its_normalised_copy_and_charged_its_size(
    embedded: EmbeddedService, alice: httpx.Client, tmp_path: Path
) -> None:
    # uint8 examples and labels: the float32/int64 copy is larger than the upload.
    content = npz_file(np.arange(200, dtype=np.uint8).reshape(50, 4), np.arange(50) % 3)
    body = upload_dataset(alice, content).json()
    normalised = normalised_copy(content, tmp_path)
    assert body["size_bytes"] == len(content)
    assert body["stored_bytes"] == len(normalised) > 50 * (4 * 4 + 8)
    copy_sha256 = hashlib.sha256(normalised).hexdigest()
    assert (embedded.data_dir / "blobs" / copy_sha256[:2] / copy_sha256).read_bytes() == normalised
    upload_sha256 = hashlib.sha256(content).hexdigest()
    assert not (embedded.data_dir / "blobs" / upload_sha256[:2] / upload_sha256).exists()


def test_a_blob_two_owners_uploaded_goes_with_the_last_dataset_naming_it(
    embedded: EmbeddedService, alice: httpx.Client, bob: httpx.Client, tmp_path: Path
) -> None:
    content = npz_file(np.zeros((6, 4), dtype=np.float32), np.array([1, 0, 1, 0, 1, 0]))
    ids = [upload_dataset(http, content).json()["id"] for http in (alice, bob)]
    sha256 = hashlib.sha256(normalised_copy(content, tmp_path)).hexdigest()
    blob = embedded.data_dir / "blobs" / sha256[:2] / sha256
    assert alice.delete(f"/v1/datasets/{ids[0]}").status_code == 204
    assert blob.is_file()
    assert bob.delete(f"/v1/datasets/{ids[1]}").status_code == 204
    assert not blob.exists()
