"""Blobs as files of a folder: ``<root>/<sha[:2]>/<sha256>`` (the default, ``LLFC_DATA_DIR/blobs``).

Files are staged in ``<root>/incoming``, on the same filesystem, so committing one is an atomic
``os.replace``: a blob file is whole or absent.
"""

from __future__ import annotations

import os
from pathlib import Path

from service.storage.base import BlobStore, blob_key, missing_blob_error


class FolderBlobStore(BlobStore):
    """Blobs in the folder ``root``, staged in ``root/incoming``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root / "incoming")
        self.root = root

    def path_for(self, sha256: str) -> Path:
        return self.root / blob_key(sha256)

    def prepare(self, source: Path, sha256: str) -> None:
        """Nothing to copy ahead: committing is a rename."""

    def commit(self, source: Path, sha256: str) -> None:
        target = self.path_for(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def delete(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)

    def read_bytes(self, sha256: str) -> bytes:
        return self.path_for(sha256).read_bytes()

    def download(self, sha256: str) -> Path:
        return self.local_path(sha256)

    def local_path(self, sha256: str) -> Path:
        path = self.path_for(sha256)
        if not path.is_file():
            raise missing_blob_error(sha256, "the blob storage folder")
        return path

    def problem(self) -> str | None:
        if self.staging_problem() is not None:
            return "the blob storage folder is not writable"
        return None
