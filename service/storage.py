"""Content-addressed blob storage under the data folder: ``blobs/<sha[:2]>/<sha256>``.

No path is ever built from a client's filename. Incoming bytes go to a temporary file inside the
store (same filesystem, so the final ``os.replace`` is atomic), are hashed on the way in, and are
refused as soon as they pass the size cap, before the rest is read. A file reaches its final name
only whole and flushed to disk, so a process killed mid-upload leaves at most a temporary file in
``incoming/``, never a half blob; :meth:`BlobStore.remove_abandoned` deletes those once nothing
has written to them for a while.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from pathlib import Path
from types import TracebackType

CHUNK_BYTES = 1024 * 1024
_SHA256_HEX = re.compile(r"\A[0-9a-f]{64}\Z")


def hash_file(path: Path) -> tuple[str, int]:
    """The sha256 and size of a file the service wrote itself, after flushing it to disk (so
    it reaches the store whole)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
        os.fsync(handle.fileno())
    return digest.hexdigest(), path.stat().st_size


class UploadTooLargeError(Exception):
    """More bytes arrived than the configured cap allows."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"The upload is larger than the limit of {max_bytes:,} bytes.")
        self.max_bytes = max_bytes


class IncomingBlob:
    """A temporary file being written; hashes and counts every byte, refuses past ``max_bytes``.

    Use as a context manager: whatever was not committed to the store is deleted on exit.
    """

    def __init__(self, directory: Path, max_bytes: int, suffix: str = "") -> None:
        handle, name = tempfile.mkstemp(dir=directory, prefix="incoming-", suffix=suffix)
        self._file = os.fdopen(handle, "wb")
        self.path = Path(name)
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise UploadTooLargeError(self.max_bytes)
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> str:
        """Flush the file to disk, close it and return the sha256 of everything written."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._hash.hexdigest()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> IncomingBlob:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.discard()


class BlobStore:
    """Blobs named by the sha256 of their bytes; identical content is stored once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming_dir = root / "incoming"

    def ensure(self) -> None:
        self.incoming_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        if not _SHA256_HEX.match(sha256):
            raise ValueError(f"Not a sha256 hex digest: {sha256!r}.")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def incoming(self, max_bytes: int, suffix: str = "") -> IncomingBlob:
        """A temporary file inside the store for bytes that are not validated yet."""
        self.ensure()
        return IncomingBlob(self.incoming_dir, max_bytes, suffix)

    def commit(self, temporary: Path, sha256: str) -> Path:
        """Move a fully written, validated file into place under its hash."""
        target = self.path_for(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temporary, target)
        return target

    def temporary_path(self, suffix: str) -> Path:
        """A fresh, unused path inside the store for a file the service is about to write."""
        self.ensure()
        handle, name = tempfile.mkstemp(dir=self.incoming_dir, prefix="writing-", suffix=suffix)
        os.close(handle)
        return Path(name)

    def remove_abandoned(self, max_age_s: float, now: float | None = None) -> list[Path]:
        """Delete temporary files nobody has written to for ``max_age_s`` seconds.

        They are what a process killed mid-upload or mid-artifact leaves behind. An upload in
        progress writes every chunk, so its file's modification time stays fresh. Returns the
        paths removed.
        """
        if not self.incoming_dir.is_dir():
            return []
        cutoff = (time.time() if now is None else now) - max_age_s
        removed = []
        for path in self.incoming_dir.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                continue
        return removed

    def delete(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)

    def is_writable(self) -> bool:
        """Whether a file can be created and removed here (the readiness check)."""
        try:
            path = self.temporary_path(".probe")
            path.unlink()
        except OSError:
            return False
        return True
