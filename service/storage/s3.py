"""Blobs as objects of an S3-compatible bucket: ``<prefix>/blobs/<sha[:2]>/<sha256>``.

The client is boto3 (README "Blob storage" says why). A staged, validated file goes to the bucket
as a multipart upload read from the file part by part (``TRANSFER``: at most
``max_concurrency`` parts of ``multipart_chunksize`` bytes in memory), skipped when the object is
there already; s3transfer aborts the multipart upload when any part fails, and
:meth:`S3BlobStore.remove_abandoned` aborts those a killed process left unfinished. No error
message carries the server's text or a credential: only the bucket and the error's code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from service.core.config import S3Location
from service.errors import StorageError
from service.storage.base import BlobStore, BlobStream, blob_key, missing_blob_error
from service.storage.cache import BlobCache
from service.storage.staging import CHUNK_BYTES

logger = logging.getLogger(__name__)

TRANSFER = TransferConfig(
    multipart_threshold=8 * 1024**2, multipart_chunksize=8 * 1024**2, max_concurrency=4
)
"""Files past 8 MiB go up in 8 MiB parts, four at a time (so about 32 MiB in memory at most);
10,000 parts, S3's limit, make 80 GB, past any upload cap."""

_MISSING = {"404", "NoSuchKey", "NotFound"}


@lru_cache
def s3_client(endpoint_url: str | None, probe: bool = False) -> Any:
    """One client per process, endpoint and use (boto3 clients are thread-safe); credentials
    and region come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).

    Transfers retry in botocore's standard mode; a ``probe`` client (the readiness check) tries
    once with short timeouts, so an unreachable server makes /readyz answer in seconds. With a
    custom endpoint, buckets are addressed by path (MinIO, Ceph and most S3-compatible servers
    expect it), and checksums are sent only where S3 requires them: several such servers refuse
    the CRC32 trailers boto3 adds by default, and every read of a blob is checked against its
    sha256 anyway.
    """
    custom = endpoint_url is not None
    config = Config(
        retries={"mode": "standard", "max_attempts": 1 if probe else 5},
        connect_timeout=3 if probe else 10,
        read_timeout=3 if probe else 60,
        s3={"addressing_style": "path"} if custom else None,
        request_checksum_calculation="when_required" if custom else "when_supported",
        response_checksum_validation="when_required" if custom else "when_supported",
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


class S3BlobStore(BlobStore):
    """Blobs in ``location``'s bucket, staged in ``staging_dir``; jobs read them through copies
    in ``cache_dir`` (:class:`BlobCache`); ``probe_client`` answers the readiness check."""

    def __init__(
        self,
        client: Any,
        probe_client: Any,
        location: S3Location,
        staging_dir: Path,
        cache_dir: Path,
        cache_max_bytes: int,
        abandoned_after_s: float,
    ) -> None:
        super().__init__(staging_dir)
        self.client = client
        self.probe_client = probe_client
        self.location = location
        self.cache = BlobCache(cache_dir, cache_max_bytes, self._chunks, abandoned_after_s)

    def key(self, sha256: str) -> str:
        return self.location.key(f"blobs/{blob_key(sha256)}")

    @contextmanager
    def _requests(self, doing: str) -> Iterator[None]:
        """Turn the client's errors into a :class:`StorageError` naming the bucket and the
        error's code, never the server's message or the credentials."""
        bucket = self.location.bucket
        try:
            yield
        except NoCredentialsError as error:
            raise StorageError(
                f"The blob store (bucket '{bucket}') has no credentials to {doing}; the "
                "operators set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
            ) from error
        except (ClientError, S3UploadFailedError) as error:
            # upload_file wraps the client's error, which stays the context of its own.
            client_error = error if isinstance(error, ClientError) else error.__context__
            code = _error_code(client_error)
            if code == "NoSuchBucket":
                raise StorageError(
                    f"The blob store's bucket '{bucket}' does not exist; the operators create "
                    "it (LLFC_BLOB_URL names it)."
                ) from client_error
            raise StorageError(
                f"The blob store (bucket '{bucket}') refused to {doing} ({code})."
            ) from client_error
        except BotoCoreError as error:
            raise StorageError(
                f"The blob store (bucket '{bucket}') could not {doing} "
                f"({type(error).__name__}); retry later."
            ) from error

    def prepare(self, source: Path, sha256: str) -> None:
        self.commit(source, sha256)

    def commit(self, source: Path, sha256: str) -> None:
        if self.exists(sha256):
            return
        with self._requests("store a blob"):
            self.client.upload_file(
                str(source), self.location.bucket, self.key(sha256), Config=TRANSFER
            )

    def exists(self, sha256: str) -> bool:
        try:
            with self._requests("look up a blob"):
                self.client.head_object(Bucket=self.location.bucket, Key=self.key(sha256))
        except StorageError as error:
            if _is_missing(error):
                return False
            raise
        return True

    def delete(self, sha256: str) -> None:
        with self._requests("delete a blob"):
            self.client.delete_object(Bucket=self.location.bucket, Key=self.key(sha256))

    def read_bytes(self, sha256: str) -> bytes:
        with self._requests("read a blob"):
            response = self.client.get_object(Bucket=self.location.bucket, Key=self.key(sha256))
            return bytes(response["Body"].read())

    def _open(self, sha256: str) -> tuple[int, Any]:
        try:
            with self._requests("read a blob"):
                response = self.client.get_object(Bucket=self.location.bucket, Key=self.key(sha256))
        except StorageError as error:
            if _is_missing(error):
                raise missing_blob_error(
                    sha256, f"the blob store (bucket '{self.location.bucket}')"
                ) from error.__cause__
            raise
        return int(response["ContentLength"]), response["Body"]

    def _chunks(self, sha256: str) -> Iterator[bytes]:
        _size, body = self._open(sha256)
        yield from self._body_chunks(body)

    def _body_chunks(self, body: Any) -> Iterator[bytes]:
        try:
            with self._requests("read a blob"):
                yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()

    def download(self, sha256: str) -> BlobStream:
        size, body = self._open(sha256)
        return BlobStream(size, self._body_chunks(body))

    def local_path(self, sha256: str) -> Path:
        return self.cache.path(sha256)

    def remove_abandoned(self, max_age_s: float, now: float | None = None) -> list[str]:
        """Staged files, and multipart uploads under the prefix, untouched (started) more than
        ``max_age_s`` seconds ago: what a process killed mid-transfer leaves."""
        removed = super().remove_abandoned(max_age_s, now)
        cutoff = (time.time() if now is None else now) - max_age_s
        bucket = self.location.bucket
        with self._requests("list and abort unfinished uploads"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket, Prefix=self.location.key("blobs/")
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() < cutoff:
                        self.client.abort_multipart_upload(
                            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed.append(f"s3://{bucket}/{upload['Key']} (unfinished upload)")
        return removed

    def problem(self) -> str | None:
        try:
            with self._requests("answer a readiness check"):
                self.probe_client.head_bucket(Bucket=self.location.bucket)
        except StorageError as error:
            logger.warning("Readiness: %s", error.message)
            if _is_missing(error):
                return f"the blob store's bucket '{self.location.bucket}' does not exist"
            return "the blob store cannot be used: " + error.message.rstrip(".")
        return self.staging_problem()


def _error_code(error: BaseException | None) -> str:
    if not isinstance(error, ClientError):
        return "unknown"
    return str(error.response.get("Error", {}).get("Code", "unknown"))


def _is_missing(error: StorageError) -> bool:
    return _error_code(error.__cause__) in _MISSING
