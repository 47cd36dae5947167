"""A worker host's copies of remote blobs (``LLFC_CACHE_DIR``), least recently used out first.

A job reads a checkpoint or dataset with random access (safetensors and normalised datasets are
memory-mapped), so a blob kept in a bucket is copied to this host first, as ``<folder>/<sha256>``.
A copy is written to a temporary file of the same folder, hashed while written, and renamed into
place only when its sha256 is its name: several worker processes sharing the folder may fetch
one blob at once, and whichever rename lands last leaves the same good file. A copy is checked
again when a store hands it out (once per store, i.e. once per job): one whose bytes changed on
disk is deleted and fetched again.

Each use touches the copy's modification time, and after each fetch the oldest copies are
removed until the folder holds at most ``max_bytes``, except those this cache handed out (the
running job's); a file removed while another process reads it stays readable to that process
(POSIX unlink), and a copy that vanishes before its use is fetched again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from service.errors import StorageError
from service.storage.base import checked_sha256
from service.storage.staging import CHUNK_BYTES

logger = logging.getLogger(__name__)

FETCH_PREFIX = ".fetch-"


class BlobCache:
    """Copies of blobs in ``folder``, fetched by ``fetch(sha256)`` (the blob's chunks)."""

    def __init__(
        self,
        folder: Path,
        max_bytes: int,
        fetch: Callable[[str], Iterator[bytes]],
        abandoned_after_s: float,
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._fetch = fetch
        self._abandoned_after_s = abandoned_after_s
        self._handed_out: set[str] = set()

    def path(self, sha256: str) -> Path:
        """A checked copy of blob ``sha256`` on this host, fetched when there is none."""
        target = self.folder / checked_sha256(sha256)
        if sha256 in self._handed_out and _touch(target):
            return target
        if target.is_file() and not _matches(target, sha256):
            logger.warning("The cached copy of blob %s is corrupt; fetching it again", sha256)
            target.unlink(missing_ok=True)
        if not _touch(target):
            self._download(sha256, target)
        self._handed_out.add(sha256)
        self.evict()
        return target

    def _download(self, sha256: str, target: Path) -> None:
        # Readable by this user only, as the data folder: the copies are the owners' uploads.
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=self.folder, prefix=FETCH_PREFIX)
        temporary = Path(name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(handle, "wb") as file:
                for chunk in self._fetch(sha256):
                    digest.update(chunk)
                    file.write(chunk)
            if digest.hexdigest() != sha256:
                raise StorageError(
                    f"The blob store's copy of blob {sha256} does not match its sha256: it was "
                    "altered in the store; the operators must restore it."
                )
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)

    def evict(self) -> None:
        """Remove the least recently used copies past ``max_bytes`` (never one this cache
        handed out) and fetches abandoned by a killed process."""
        copies: list[tuple[float, int, Path]] = []
        abandoned_before = time.time() - self._abandoned_after_s
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            if entry.name.startswith(FETCH_PREFIX):
                if stat.st_mtime < abandoned_before:
                    Path(entry.path).unlink(missing_ok=True)
            elif entry.name not in self._handed_out:
                copies.append((stat.st_mtime, stat.st_size, Path(entry.path)))
            else:
                copies.append((float("inf"), stat.st_size, Path(entry.path)))
        total = sum(size for _mtime, size, _path in copies)
        for mtime, size, path in sorted(copies):
            if total <= self.max_bytes or mtime == float("inf"):
                break
            path.unlink(missing_ok=True)
            total -= size


def _touch(path: Path) -> bool:
    """Mark ``path`` as just used; False when it is not there."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def _matches(path: Path, sha256: str) -> bool:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
    except FileNotFoundError:
        return False
    return digest.hexdigest() == sha256
