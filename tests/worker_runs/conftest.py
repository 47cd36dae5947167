"""A worker child's view, in this process: see ``support/worker.py``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic.command import upgrade
from support.s3 import MotoS3, moto_s3
from support.worker import WorkerData, upload_model

from service.core.config import get_settings
from service.db.migrate import alembic_config
from service.db.session import session_scope
from service.security import get_or_create_owner


@contextmanager
def _worker_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]
) -> Iterator[WorkerData]:
    monkeypatch.setenv("LLFC_DATA_DIR", str(tmp_path / "data"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    settings = get_settings()
    settings.create_data_dir()
    upgrade(alembic_config(settings.resolved_database_url), "head")
    with session_scope() as session:
        owner_id = get_or_create_owner(session, "alice").id
        session.commit()
    try:
        yield WorkerData(
            settings,
            owner_id,
            upload_model(settings, owner_id, 0, tmp_path),
            upload_model(settings, owner_id, 1, tmp_path),
        )
    finally:
        get_settings.cache_clear()


@pytest.fixture()
def worker_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerData]:
    with _worker_data(tmp_path, monkeypatch, {}) as data:
        yield data


@pytest.fixture()
def moto() -> Iterator[MotoS3]:
    with moto_s3() as server:
        yield server


@pytest.fixture()
def worker_data_on_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto: MotoS3
) -> Iterator[WorkerData]:
    """:func:`worker_data` with the blobs in a bucket of ``moto``, under the prefix ``jobs``."""
    with _worker_data(tmp_path, monkeypatch, moto.env("jobs")) as data:
        yield data
