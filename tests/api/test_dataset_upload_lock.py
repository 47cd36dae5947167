"""In embedded mode (SQLite, every writing transaction BEGIN IMMEDIATE) a dataset upload checks
and converts its file with no transaction open, so other writers never wait for it; the owner's
quota is then charged for the normalised copy kept."""

from __future__ import annotations

import io
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic.command import upgrade

import service.datasets
from service.core.config import Settings
from service.datasets import ingest_dataset
from service.db.migrate import alembic_config
from service.db.models import Dataset, Owner
from service.db.session import make_engine, make_sessionmaker
from service.quotas import stored_bytes
from service.storage import FolderBlobStore

WAIT_S = 20.0
OTHER_WRITER_TIMEOUT_S = 0.5


def npz_bytes() -> bytes:
    """100 examples of 64 bytes: the float32 copy kept is about four times the upload."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buffer, x=rng.integers(0, 256, (100, 64), dtype=np.uint8), y=np.arange(100) % 10)
    return buffer.getvalue()


def write_as_another_owner(database: Path) -> float:
    """Seconds a write of another connection took; it gives up (raises) after half a second."""
    started = time.monotonic()
    connection = sqlite3.connect(database, timeout=OTHER_WRITER_TIMEOUT_S, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("UPDATE owners SET name = 'bob the second' WHERE id = 'own_bob'")
        connection.execute("COMMIT")
    finally:
        connection.close()
    return time.monotonic() - started


@pytest.mark.parametrize("slow_step", ["inspect_array_file", "write_normalised"])
def test_another_writer_is_not_blocked_while_an_upload_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_step: str
) -> None:
    database = tmp_path / "llfc.db"
    url = f"sqlite:///{database}"
    upgrade(alembic_config(url), "head")
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        session.add_all([Owner(id="own_alice", name="alice"), Owner(id="own_bob", name="bob")])
        session.commit()
    settings = Settings(data_dir=tmp_path, database_url=url)
    store = FolderBlobStore(tmp_path / "blobs")

    # The step stops until the other writer is done: a large file's check takes that long.
    checking, checked = threading.Event(), threading.Event()
    real_step: Callable[..., Any] = getattr(service.datasets, slow_step)

    def slow(*args: Any) -> Any:
        checking.set()
        assert checked.wait(WAIT_S)
        return real_step(*args)

    monkeypatch.setattr(service.datasets, slow_step, slow)
    incoming = store.incoming(settings.max_upload_bytes)
    incoming.write(npz_bytes())
    outcome: dict[str, Any] = {}

    def upload() -> None:
        with sessions() as session:
            try:
                outcome["created"] = ingest_dataset(
                    session, store, settings, "own_alice", incoming, None, "data.npz"
                )[1]
            except BaseException as error:
                outcome["error"] = error

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        assert checking.wait(WAIT_S)
        seconds = write_as_another_owner(database)
    finally:
        checked.set()
        uploader.join(WAIT_S)
    assert seconds < OTHER_WRITER_TIMEOUT_S
    assert outcome == {"created": True}
    with sessions() as session:
        (dataset,) = session.query(Dataset).all()
        assert (dataset.owner_id, dataset.num_examples, dataset.num_classes) == (
            "own_alice",
            100,
            10,
        )
        assert store.path_for(dataset.blob_sha256).stat().st_size == dataset.stored_bytes
        # The quota is charged for the copy kept, not for the smaller upload.
        assert stored_bytes(session, "own_alice") == dataset.stored_bytes > 3 * dataset.size_bytes
        assert session.get(Owner, "own_bob").name == "bob the second"
    engine.dispose()
