"""Blob references on PostgreSQL: one owner's delete racing another owner's upload of the same
bytes never leaves the upload's checkpoint without its file.

Each test forces one interleaving with events: a hook in the blob store stops one side just
before it touches the file, the other side runs until it has finished or is waiting for a row
lock (seen in ``pg_stat_activity``), and then the first side goes on. With the old
count-then-unlink deletion both interleavings unlink the file the new row names.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session
from support.stores import migrated_engine, own_database, port_open

from llfc_core.archs import parse_arch
from llfc_core.checkpoints import save_safetensors
from service.checkpoints import delete_checkpoint, ingest_checkpoint
from service.core.config import Settings
from service.db.models import Blob, Checkpoint
from service.db.session import make_sessionmaker
from service.storage import FolderBlobStore

pytestmark = pytest.mark.postgres

ARCH_TEXT = '{"name": "mlp", "widths": [4, 3, 2]}'
WAIT_S = 20.0


class PausingBlobStore(FolderBlobStore):
    """A blob store that can stop just before an unlink or just after a file is placed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.before_delete: Callable[[], None] = lambda: None
        self.after_commit: Callable[[], None] = lambda: None

    def delete(self, sha256: str) -> None:
        self.before_delete()
        super().delete(sha256)

    def commit(self, temporary: Path, sha256: str) -> None:
        super().commit(temporary, sha256)
        self.after_commit()


@pytest.fixture()
def engine() -> Iterator[Engine]:
    if not port_open(5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432 (scripts/services)")
    owners = {"own_alice": "alice", "own_bob": "bob"}
    with own_database("blob_refs") as url, migrated_engine(url, owners) as engine:
        yield engine


def _checkpoint_file(tmp_path: Path) -> bytes:
    """Bytes of a checkpoint of ``ARCH_TEXT`` (a float64 state dict, so it is converted)."""
    torch.manual_seed(0)
    state = parse_arch({"name": "mlp", "widths": [4, 3, 2]}).build().state_dict()
    path = tmp_path / "source.safetensors"
    save_safetensors({key: value.double() for key, value in state.items()}, path)
    return path.read_bytes()


def _upload(engine: Engine, store: FolderBlobStore, owner_id: str, payload: bytes) -> Checkpoint:
    settings = Settings(data_dir=store.root.parent)
    with make_sessionmaker(engine)() as session:
        incoming = store.incoming(max_bytes=len(payload))
        incoming.write(payload)
        checkpoint, _created = ingest_checkpoint(
            session, store, settings, owner_id, incoming, ARCH_TEXT, None, "model.safetensors"
        )
        return checkpoint


def _delete(engine: Engine, store: FolderBlobStore, checkpoint_id: str) -> None:
    with make_sessionmaker(engine)() as session:
        checkpoint = session.get(Checkpoint, checkpoint_id)
        assert checkpoint is not None
        delete_checkpoint(session, store, checkpoint)


def _wait_until_done_or_waiting_for_a_lock(engine: Engine, done: threading.Event) -> None:
    """Return once ``done`` is set or a session of this database waits for a row lock."""
    deadline = time.monotonic() + WAIT_S
    with engine.connect() as connection:
        while not done.is_set():
            waiting = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            connection.rollback()
            if waiting:
                return
            assert time.monotonic() < deadline, "neither side finished nor waited for a lock"
            time.sleep(0.02)


def _run(target: Callable[[], object], done: threading.Event) -> threading.Thread:
    def body() -> None:
        try:
            target()
        finally:
            done.set()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def _blob_of(engine: Engine, checkpoint_id: str) -> str:
    with Session(engine) as session:
        blob_sha256 = session.scalar(
            select(Checkpoint.blob_sha256).where(Checkpoint.id == checkpoint_id)
        )
        assert blob_sha256 is not None
        return blob_sha256


def test_an_upload_committed_between_the_delete_count_and_its_unlink_keeps_its_file(
    engine: Engine, tmp_path: Path
) -> None:
    store = PausingBlobStore(tmp_path / "blobs")
    payload = _checkpoint_file(tmp_path)
    alices = _upload(engine, store, "own_alice", payload)
    about_to_unlink, upload_done, delete_done = (threading.Event() for _ in range(3))

    def pause_before_unlink() -> None:
        about_to_unlink.set()
        _wait_until_done_or_waiting_for_a_lock(engine, upload_done)

    store.before_delete = pause_before_unlink
    deleting = _run(lambda: _delete(engine, store, alices.id), delete_done)
    assert about_to_unlink.wait(WAIT_S)
    bobs: list[Checkpoint] = []
    uploading = _run(lambda: bobs.append(_upload(engine, store, "own_bob", payload)), upload_done)
    deleting.join(WAIT_S)
    uploading.join(WAIT_S)

    assert bobs, "bob's upload failed"
    blob_sha256 = _blob_of(engine, bobs[0].id)
    assert blob_sha256 == alices.blob_sha256
    assert store.exists(blob_sha256), "the delete unlinked the file bob's new checkpoint names"
    with Session(engine) as session:
        assert session.get(Blob, blob_sha256) is not None


def test_a_delete_during_an_upload_of_the_same_bytes_leaves_the_upload_its_file(
    engine: Engine, tmp_path: Path
) -> None:
    store = PausingBlobStore(tmp_path / "blobs")
    payload = _checkpoint_file(tmp_path)
    alices = _upload(engine, store, "own_alice", payload)
    file_placed, upload_done, delete_done = (threading.Event() for _ in range(3))

    def pause_after_placing() -> None:
        file_placed.set()
        _wait_until_done_or_waiting_for_a_lock(engine, delete_done)

    store.after_commit = pause_after_placing
    bobs: list[Checkpoint] = []
    uploading = _run(lambda: bobs.append(_upload(engine, store, "own_bob", payload)), upload_done)
    assert file_placed.wait(WAIT_S)
    deleting = _run(lambda: _delete(engine, store, alices.id), delete_done)
    uploading.join(WAIT_S)
    deleting.join(WAIT_S)

    assert bobs, "bob's upload failed"
    blob_sha256 = _blob_of(engine, bobs[0].id)
    assert store.exists(blob_sha256), "the delete unlinked the file bob's upload had placed"


def test_deleting_the_last_reference_removes_the_file_and_its_row(
    engine: Engine, tmp_path: Path
) -> None:
    store = FolderBlobStore(tmp_path / "blobs")
    payload = _checkpoint_file(tmp_path)
    alices = _upload(engine, store, "own_alice", payload)
    bobs = _upload(engine, store, "own_bob", payload)
    assert alices.blob_sha256 == bobs.blob_sha256

    _delete(engine, store, alices.id)
    assert store.exists(bobs.blob_sha256)
    _delete(engine, store, bobs.id)
    assert not store.exists(bobs.blob_sha256)
    with Session(engine) as session:
        assert session.get(Blob, bobs.blob_sha256) is None
