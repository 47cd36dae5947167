"""Content-addressed blob storage: a folder of this host or an S3-compatible bucket
(``LLFC_BLOB_URL``), chosen once by :func:`open_blob_store`."""

from __future__ import annotations

from service.core.config import Settings
from service.storage.base import BlobStore, BlobStream
from service.storage.folder import FolderBlobStore
from service.storage.staging import IncomingBlob, UploadTooLargeError, hash_file

__all__ = [
    "BlobStore",
    "BlobStream",
    "FolderBlobStore",
    "IncomingBlob",
    "UploadTooLargeError",
    "hash_file",
    "open_blob_store",
]


def open_blob_store(settings: Settings) -> BlobStore:
    """The store ``settings`` name: the bucket of an ``s3://`` LLFC_BLOB_URL, else the folder."""
    location = settings.s3_location
    if location is None:
        return FolderBlobStore(settings.blob_dir)
    # boto3 takes a while to import: only processes that keep blobs in a bucket load it.
    from service.storage.s3 import S3BlobStore, s3_client

    return S3BlobStore(
        s3_client(settings.s3_endpoint_url),
        s3_client(settings.s3_endpoint_url, probe=True),
        location,
        settings.staging_dir,
        settings.resolved_cache_dir,
        settings.cache_max_bytes,
        settings.incoming_max_age_seconds,
    )
