"""Blob storage: hashing on the way in, the size cap, atomic placement by hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.errors import StorageError
from service.storage import FolderBlobStore, UploadTooLargeError, hash_file


def test_incoming_bytes_are_hashed_and_committed_under_their_hash(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path / "blobs")
    payload = [b"first chunk ", b"second chunk"]
    with store.incoming(max_bytes=1000) as incoming:
        for chunk in payload:
            incoming.write(chunk)
        sha256 = incoming.finish()
        assert incoming.size == len(b"".join(payload))
        store.commit(incoming.path, sha256)
    assert sha256 == hashlib.sha256(b"".join(payload)).hexdigest()
    final = tmp_path / "blobs" / sha256[:2] / sha256
    assert final.read_bytes() == b"".join(payload)
    assert list(store.incoming_dir.iterdir()) == []


def test_passing_the_cap_raises_at_once_and_leaves_nothing_behind(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    with pytest.raises(UploadTooLargeError) as raised, store.incoming(max_bytes=10) as incoming:
        incoming.write(b"12345678")
        incoming.write(b"901")
    assert raised.value.max_bytes == 10
    assert list(store.incoming_dir.iterdir()) == []


def test_a_written_file_is_hashed_and_moved_into_place(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    temporary = store.temporary_path(".bin")
    temporary.write_bytes(b"artifact")
    sha256, size = hash_file(temporary)
    assert (sha256, size) == (hashlib.sha256(b"artifact").hexdigest(), 8)
    store.commit(temporary, sha256)
    assert store.exists(sha256) and not temporary.exists()
    store.delete(sha256)
    assert not store.exists(sha256)


def test_blob_paths_are_never_built_from_anything_but_a_hex_digest(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    for name in ("../../etc/passwd", "a" * 63, "A" * 64, "g" * 64):
        with pytest.raises(ValueError):
            store.path_for(name)


def test_a_blob_removed_behind_the_stores_back_is_a_storage_error_naming_it(
    tmp_path: Path,
) -> None:
    store = FolderBlobStore(tmp_path)
    sha256 = hashlib.sha256(b"gone").hexdigest()
    for read in (store.download, store.local_path):
        with pytest.raises(StorageError, match=f"Blob {sha256} is missing"):
            read(sha256)
