"""Checkpoint uploads in the service: validation holds no write lock, a checkpoint is its owner's
bytes under one arch, and an old torch refuses ``.pt`` files but keeps serving safetensors."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from sqlalchemy import Engine
from support.api import mlp_arch, mlp_state, safetensors_file, torch_file, upload_checkpoint
from support.stores import migrated_engine

import service.checkpoints
from llfc_core.archs import parse_arch
from llfc_core.errors import CheckpointFormatError
from llfc_core.key_maps import fit_state_dict
from service.checkpoints import ingest_checkpoint, warn_if_torch_files_are_refused
from service.core.config import Settings
from service.db.models import Owner
from service.db.session import make_sessionmaker
from service.storage import FolderBlobStore

ARCH = mlp_arch([8, 6, 3])
VGG_32 = {"name": "vgg", "depth": 11, "width": 0.125, "in_channels": 1, "input_size": 32}
VGG_64 = {**VGG_32, "input_size": 64}


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture()
def engine(settings: Settings) -> Iterator[Engine]:
    with migrated_engine(settings.resolved_database_url, {"own_1": "lab"}) as engine:
        yield engine


def _ingest(engine: Engine, settings: Settings, payload: bytes, arch: dict[str, Any]) -> Any:
    store = FolderBlobStore(settings.blob_dir)
    with make_sessionmaker(engine)() as session:
        incoming = store.incoming(max_bytes=len(payload))
        incoming.write(payload)
        return ingest_checkpoint(
            session, store, settings, "own_1", incoming, json.dumps(arch), None, None
        )


def test_a_slow_validation_does_not_hold_the_embedded_write_lock(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    validating, other_write_done = threading.Event(), threading.Event()

    def slow_validation(*args: Any) -> Any:
        validating.set()
        # Stands for seconds of work on a large file; waits for the other write, or gives up.
        other_write_done.wait(5.0)
        return fit_state_dict(*args)

    monkeypatch.setattr(service.checkpoints, "fit_state_dict", slow_validation)
    float64_state = {key: value.double() for key, value in mlp_state([8, 6, 3], 0).items()}
    uploaded: list[Any] = []
    upload = threading.Thread(
        target=lambda: uploaded.append(
            _ingest(engine, settings, safetensors_file(float64_state), ARCH)
        )
    )
    upload.start()
    assert validating.wait(30)
    started = time.monotonic()
    with make_sessionmaker(engine)() as other:
        other.add(Owner(id="own_2", name="another lab"))
        other.commit()
    waited = time.monotonic() - started
    other_write_done.set()
    upload.join(30)
    assert waited < 1.0, f"another owner's write waited {waited:.1f} s for the upload"
    checkpoint, created = uploaded[0]
    assert created and checkpoint.format == "safetensors"


def test_torch_uploads_are_refused_on_an_old_torch_and_safetensors_still_accepted(
    engine: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with caplog.at_level(logging.WARNING, logger="service.checkpoints"):
        warn_if_torch_files_are_refused()
    assert [record.getMessage() for record in caplog.records] == [
        "PyTorch checkpoint uploads are refused. This server runs PyTorch 2.5.1, whose "
        "torch.load is not safe for files from others (it needs 2.10 or later), so it accepts "
        "only safetensors checkpoints; convert the file with safetensors.torch.save_file, or ask "
        "the operator to upgrade PyTorch."
    ]
    state = mlp_state([8, 6, 3], 1)
    with pytest.raises(CheckpointFormatError, match="accepts only safetensors"):
        _ingest(engine, settings, torch_file(state), ARCH)
    checkpoint, created = _ingest(engine, settings, safetensors_file(state), ARCH)
    assert created and checkpoint.format == "safetensors"


def test_a_current_torch_logs_nothing_at_start(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="service.checkpoints"):
        warn_if_torch_files_are_refused()
    assert caplog.records == []


def _vgg_bytes() -> bytes:
    torch.manual_seed(3)
    return torch_file(parse_arch(VGG_32).build().state_dict())


def test_bytes_stored_under_one_arch_that_do_not_fit_another_are_a_422_naming_tensors(
    alice: httpx.Client,
) -> None:
    payload = torch_file(mlp_state([64, 16, 10], 40))
    first = upload_checkpoint(alice, payload, mlp_arch([64, 16, 10]))
    assert first.status_code == 201, first.text
    other = upload_checkpoint(alice, payload, mlp_arch([64, 32, 10]))
    assert other.status_code == 422, other.text
    problem = other.json()
    assert "does not fit the mlp arch" in problem["detail"]
    assert "0.weight (expected [32, 64], got [16, 64])" in problem["detail"]


def test_the_same_bytes_fitting_two_archs_are_two_checkpoints_sharing_one_blob(
    alice: httpx.Client,
) -> None:
    payload = _vgg_bytes()
    under_32 = upload_checkpoint(alice, payload, VGG_32)
    under_64 = upload_checkpoint(alice, payload, VGG_64)
    again_32 = upload_checkpoint(alice, payload, VGG_32)
    assert [r.status_code for r in (under_32, under_64, again_32)] == [201, 201, 201]
    assert under_32.json()["id"] != under_64.json()["id"]
    assert again_32.json()["id"] == under_32.json()["id"]
    assert under_64.json()["arch"]["input_size"] == 64
    files = [alice.get(f"/v1/checkpoints/{r.json()['id']}/file") for r in (under_32, under_64)]
    assert files[0].headers["X-Checkpoint-Sha256"] == files[1].headers["X-Checkpoint-Sha256"]
    assert files[0].content == files[1].content

    # Deleting one leaves the other's shared blob in place.
    assert alice.delete(f"/v1/checkpoints/{under_32.json()['id']}").status_code == 204
    kept = alice.get(f"/v1/checkpoints/{under_64.json()['id']}/file")
    assert kept.status_code == 200 and kept.content == files[1].content
