"""What every blob store offers: blobs named by the sha256 of their bytes, stored once.

A blob reaches the store only whole and validated: callers stage the bytes in a file of this
host (:meth:`BlobStore.incoming`, :meth:`BlobStore.temporary_path`), check them there, and then
:meth:`BlobStore.commit` them under their hash (``service/blob_refs.py`` does so under the lock on
the blob's row). A process killed at any point leaves at most a staged file, or a multipart upload
nobody completes, never a half blob; :meth:`BlobStore.remove_abandoned` deletes those once nothing
has touched them for a while. Callers never build a blob's path: a job reads a blob from
:meth:`BlobStore.local_path`, a file of this host that holds it.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from service.errors import StorageError
from service.storage.staging import IncomingBlob

_SHA256_HEX = re.compile(r"\A[0-9a-f]{64}\Z")


def checked_sha256(sha256: str) -> str:
    """``sha256`` if it is a lowercase hex digest: the only text a blob's name is built from."""
    if not _SHA256_HEX.match(sha256):
        raise ValueError(f"Not a sha256 hex digest: {sha256!r}.")
    return sha256


def blob_key(sha256: str) -> str:
    """A blob's name relative to the store's root: ``<sha[:2]>/<sha256>``."""
    return f"{sha256[:2]}/{checked_sha256(sha256)}"


def missing_blob_error(sha256: str, store: str) -> StorageError:
    """A blob a row names is not in the store: removed outside the service."""
    return StorageError(
        f"Blob {sha256} is missing from {store}: it was removed outside the service; the "
        "operators must restore it (from a backup), or delete what names it."
    )


@dataclass(frozen=True)
class BlobStream:
    """A blob's bytes as they are read, for a download: its size, then its chunks."""

    size: int
    chunks: Iterator[bytes]


class BlobStore(ABC):
    """Content-addressed blobs, with a staging folder on this host for bytes not validated yet."""

    def __init__(self, staging_dir: Path) -> None:
        self.incoming_dir = staging_dir

    def ensure(self) -> None:
        self.incoming_dir.mkdir(parents=True, exist_ok=True)

    def incoming(self, max_bytes: int, suffix: str = "") -> IncomingBlob:
        """A staged file for bytes that are not validated yet (hashed and capped as written)."""
        self.ensure()
        return IncomingBlob(self.incoming_dir, max_bytes, suffix)

    def temporary_path(self, suffix: str) -> Path:
        """A fresh, unused staged path for a file the service is about to write."""
        self.ensure()
        handle, name = tempfile.mkstemp(dir=self.incoming_dir, prefix="writing-", suffix=suffix)
        os.close(handle)
        return Path(name)

    def remove_abandoned(self, max_age_s: float, now: float | None = None) -> list[str]:
        """Delete staged files nobody has written to for ``max_age_s`` seconds, and whatever
        else of the backend a killed process left; returns what was removed.

        An upload in progress writes every chunk, so its file's modification time stays fresh.
        """
        cutoff = (time.time() if now is None else now) - max_age_s
        removed: list[str] = []
        if not self.incoming_dir.is_dir():
            return removed
        for path in self.incoming_dir.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(str(path))
            except FileNotFoundError:
                continue
        return removed

    def staging_problem(self) -> str | None:
        """Why no file can be staged here (the readiness check), or None."""
        try:
            path = self.temporary_path(".probe")
            path.unlink()
        except OSError:
            return "the staging folder for uploads is not writable"
        return None

    @abstractmethod
    def prepare(self, source: Path, sha256: str) -> None:
        """Copy a staged, validated file towards the store before :meth:`commit` is called
        under the blob's lock, so that lock is not held through a long transfer; the file
        stays staged."""

    @abstractmethod
    def commit(self, source: Path, sha256: str) -> None:
        """Make sure blob ``sha256`` holds the staged file ``source`` (which the caller
        removes if it is still there afterwards)."""

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove blob ``sha256``; nothing happens when it is not there."""

    @abstractmethod
    def read_bytes(self, sha256: str) -> bytes:
        """A small blob's bytes (an ONNX graph), read whole."""

    @abstractmethod
    def download(self, sha256: str) -> Path | BlobStream:
        """What a download of blob ``sha256`` sends: a file of this host (served with ranges)
        when the store is a folder, else the blob's bytes chunk by chunk, never whole in
        memory."""

    @abstractmethod
    def local_path(self, sha256: str) -> Path:
        """A file of this host holding blob ``sha256``, to read it with random access."""

    @abstractmethod
    def problem(self) -> str | None:
        """Why blobs cannot be stored now (the readiness check), or None."""
