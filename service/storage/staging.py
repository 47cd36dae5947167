"""Files on this host's disk that are not blobs yet: uploads being received, files being written.

No path is ever built from a client's filename. Incoming bytes go to a temporary file of the
staging folder, are hashed on the way in, and are refused as soon as they pass the size cap,
before the rest is read. Validating a checkpoint or dataset needs random access to the whole
file (a torch zip, an npz), so every upload is staged here whichever store keeps the blobs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from types import TracebackType

CHUNK_BYTES = 1024 * 1024


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
