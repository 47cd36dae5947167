"""`llfc serve` keeping its blobs in an S3 bucket (moto in server mode, reached as MinIO would be):
uploads land under their content address and nothing in the data folder's blobs/, refused
uploads leave nothing in the bucket, jobs read through the worker's cache, downloads stream from
the bucket, and the last reference's delete removes the object."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.api import (
    client,
    mlp_arch,
    mlp_state,
    run_job,
    safetensors_file,
    submit,
    torch_file,
    upload_checkpoint,
    wait_for_job,
)
from support.s3 import MotoS3, moto_s3
from support.servers import serve

PREFIX = "service"
BLOBS = f"{PREFIX}/blobs/"
MAX_UPLOAD_BYTES = 4 * 1024 * 1024
WIDTHS = [64, 16, 10]


@dataclass
class S3Service:
    alice: httpx.Client
    bob: httpx.Client
    moto: MotoS3
    data_dir: Path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    data_dir = tmp_path_factory.mktemp("s3-service")
    with (
        moto_s3() as moto,
        serve(
            data_dir,
            ("alice", "bob"),
            data_dir / "serve.log",
            LLFC_AUTH="on",
            LLFC_DEVICE="cpu",
            LLFC_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
            LLFC_WORKER_STOP_GRACE_SECONDS="2",
            **moto.env(PREFIX),
        ) as served,
        client(served.base_url, served.keys["alice"]) as alice,
        client(served.base_url, served.keys["bob"]) as bob,
    ):
        yield S3Service(alice, bob, moto, data_dir)


def _key(sha256: str) -> str:
    return f"{BLOBS}{sha256[:2]}/{sha256}"


def _blob_of(http: httpx.Client, checkpoint_id: str) -> str:
    response = http.get(f"/v1/checkpoints/{checkpoint_id}/file")
    assert response.status_code == 200, response.text
    return response.headers["x-checkpoint-sha256"]


def _dataset_file() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x=rng.random((40, 64), dtype=np.float32), y=np.arange(40) % 10)
    return buffer.getvalue()


def _files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()] if folder.exists() else []


def test_the_service_is_ready_with_its_bucket(service: S3Service) -> None:
    response = service.alice.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["storage"] == "ok"


def test_uploads_land_in_the_bucket_under_their_content_address_and_nowhere_else(
    service: S3Service,
) -> None:
    checkpoint = upload_checkpoint(
        service.alice, torch_file(mlp_state(WIDTHS, 0)), mlp_arch(WIDTHS)
    )
    assert checkpoint.status_code == 201, checkpoint.text
    dataset = service.alice.post("/v1/datasets", files={"file": ("d.npz", _dataset_file())})
    assert dataset.status_code == 201, dataset.text

    checkpoint_blob = _blob_of(service.alice, checkpoint.json()["id"])
    # A torch upload is converted: the blob is the float32 safetensors file, not the upload.
    assert checkpoint_blob != checkpoint.json()["sha256"]
    keys = service.moto.keys(BLOBS)
    assert _key(checkpoint_blob) in keys
    assert len(keys) == 2, "the checkpoint's and the dataset's normalised copy"
    assert _files_under(service.data_dir / "blobs") == []
    assert _files_under(service.data_dir / "incoming") == []


def test_refused_uploads_leave_no_object_and_no_unfinished_upload(service: S3Service) -> None:
    before = service.moto.keys(BLOBS)
    garbage = upload_checkpoint(service.alice, b"not a checkpoint" * 1000, mlp_arch(WIDTHS))
    assert garbage.status_code == 422, garbage.text
    too_large = upload_checkpoint(
        service.alice, b"\0" * (MAX_UPLOAD_BYTES + 1), mlp_arch(WIDTHS), filename="big.pt"
    )
    assert too_large.status_code == 413, too_large.text
    assert service.moto.keys(BLOBS) == before
    assert service.moto.unfinished_uploads(PREFIX) == []
    assert _files_under(service.data_dir / "incoming") == []


def test_a_job_reads_its_inputs_through_the_workers_cache(service: S3Service) -> None:
    models = [
        upload_checkpoint(service.alice, torch_file(mlp_state(WIDTHS, seed)), mlp_arch(WIDTHS))
        for seed in (1, 2)
    ]
    assert [model.status_code for model in models] == [201, 201]
    dataset = service.alice.post("/v1/datasets", files={"file": ("d.npz", _dataset_file())})
    job = run_job(
        service.alice,
        {
            "kind": "analyze",
            "model_a": models[0].json()["id"],
            "model_b": models[1].json()["id"],
            "dataset": dataset.json()["id"],
            "params": {"alphas": [0.0, 0.5, 1.0]},
        },
    )
    assert job["status"] == "succeeded"
    cached = {path.name for path in _files_under(service.data_dir / "cache")}
    blobs = {_blob_of(service.alice, model.json()["id"]) for model in models}
    assert blobs <= cached


def test_a_download_streams_the_blob_from_the_bucket_with_its_headers(
    service: S3Service,
) -> None:
    content = safetensors_file(mlp_state(WIDTHS, 3))
    checkpoint = upload_checkpoint(
        service.alice, content, mlp_arch(WIDTHS), filename="m.safetensors"
    )
    checkpoint_id = checkpoint.json()["id"]
    response = service.alice.get(f"/v1/checkpoints/{checkpoint_id}/file")
    assert response.status_code == 200
    assert response.content == content
    assert response.headers["x-checkpoint-sha256"] == hashlib.sha256(content).hexdigest()
    assert response.headers["x-checkpoint-key-map"] == "none"
    assert response.headers["content-length"] == str(len(content))
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="{checkpoint_id}.safetensors"'
    )


def test_a_shared_blob_survives_the_first_delete_and_goes_with_the_last(
    service: S3Service,
) -> None:
    content = safetensors_file(mlp_state(WIDTHS, 4))
    ids = [
        upload_checkpoint(http, content, mlp_arch(WIDTHS), filename="m.safetensors").json()["id"]
        for http in (service.alice, service.bob)
    ]
    key = _key(hashlib.sha256(content).hexdigest())
    assert key in service.moto.keys(BLOBS)

    assert service.alice.delete(f"/v1/checkpoints/{ids[0]}").status_code == 204
    assert key in service.moto.keys(BLOBS)
    assert service.bob.get(f"/v1/checkpoints/{ids[1]}/file").content == content

    assert service.bob.delete(f"/v1/checkpoints/{ids[1]}").status_code == 204
    assert key not in service.moto.keys(BLOBS)


def test_an_object_removed_behind_the_services_back_is_a_sentence_not_a_500(
    service: S3Service,
) -> None:
    content = safetensors_file(mlp_state(WIDTHS, 5))
    model = upload_checkpoint(service.alice, content, mlp_arch(WIDTHS)).json()["id"]
    other = upload_checkpoint(
        service.alice, safetensors_file(mlp_state(WIDTHS, 6)), mlp_arch(WIDTHS)
    )
    sha256 = hashlib.sha256(content).hexdigest()
    service.moto.client.delete_object(Bucket=service.moto.bucket, Key=_key(sha256))

    download = service.alice.get(f"/v1/checkpoints/{model}/file")
    assert download.status_code == 503
    assert download.json()["type"].endswith("/storage-unavailable")
    assert f"Blob {sha256} is missing" in download.json()["detail"]

    body = {"kind": "match", "model_a": model, "model_b": other.json()["id"], "params": {}}
    body["dataset"] = "builtin:digits"
    job = wait_for_job(service.alice, submit(service.alice, body).json()["id"])
    assert job["status"] == "failed"
    assert f"Blob {sha256} is missing" in job["error"]
    assert "credential" not in job["error"].lower()
