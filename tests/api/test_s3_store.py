"""Blobs in an S3 bucket (moto in server mode): content-addressed keys, multipart uploads that
are aborted when they fail or are abandoned, reads that stream, and errors that name the bucket
but never a credential."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from pydantic import ValidationError
from support.s3 import CREDENTIALS, MotoS3, moto_s3

from llfc_cli.embedded import free_port
from service.api.problems import user_error_response
from service.core.config import Settings
from service.errors import StorageError
from service.storage import BlobStream, open_blob_store
from service.storage.s3 import TRANSFER, S3BlobStore

PREFIX = "tenant/one"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with moto_s3() as server:
        yield server


def _store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto: MotoS3, bucket: str) -> Any:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    settings = Settings(
        data_dir=tmp_path / "data",
        blob_url=f"s3://{bucket}/{PREFIX}",
        s3_endpoint_url=moto.endpoint_url,
    )
    store = open_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    return store


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto: MotoS3) -> S3BlobStore:
    return _store(tmp_path, monkeypatch, moto, moto.bucket)


def _staged(store: S3BlobStore, payload: bytes) -> tuple[Path, str]:
    path = store.temporary_path(".bin")
    path.write_bytes(payload)
    return path, hashlib.sha256(payload).hexdigest()


def test_a_large_blob_goes_up_in_parts_under_its_content_address(
    store: S3BlobStore, moto: MotoS3
) -> None:
    payload = os.urandom(TRANSFER.multipart_threshold * 2 + 12345)
    source, sha256 = _staged(store, payload)
    store.prepare(source, sha256)
    store.commit(source, sha256)

    key = f"{PREFIX}/blobs/{sha256[:2]}/{sha256}"
    assert key in moto.keys(PREFIX)
    head = moto.client.head_object(Bucket=moto.bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3"), "three parts: a multipart upload"
    assert store.exists(sha256)
    download = store.download(sha256)
    assert isinstance(download, BlobStream) and download.size == len(payload)
    assert b"".join(download.chunks) == payload
    assert moto.unfinished_uploads(PREFIX) == []
    # The staged file is the caller's to remove; nothing of it was moved.
    assert source.read_bytes() == payload


def test_a_failed_part_aborts_the_multipart_upload_and_leaves_no_object(
    store: S3BlobStore, moto: MotoS3
) -> None:
    payload = os.urandom(TRANSFER.multipart_threshold * 2)
    source, sha256 = _staged(store, payload)
    parts: list[int] = []

    def refuse_the_second_part(**_kwargs: Any) -> None:
        parts.append(1)
        if len(parts) == 2:
            raise EndpointConnectionError(endpoint_url=moto.endpoint_url)

    events = store.client.meta.events
    events.register("before-call.s3.UploadPart", refuse_the_second_part)
    try:
        with pytest.raises(StorageError, match=r"could not store a blob \(EndpointConnection"):
            store.commit(source, sha256)
    finally:
        events.unregister("before-call.s3.UploadPart", refuse_the_second_part)

    assert len(parts) >= 2
    assert not store.exists(sha256)
    assert moto.unfinished_uploads(PREFIX) == []


def test_the_sweep_aborts_an_unfinished_upload_once_it_is_old_enough(
    store: S3BlobStore, moto: MotoS3
) -> None:
    key = store.key("ab" * 32)
    started = moto.client.create_multipart_upload(Bucket=moto.bucket, Key=key)
    moto.client.upload_part(
        Bucket=moto.bucket, Key=key, UploadId=started["UploadId"], PartNumber=1, Body=b"half"
    )
    elsewhere = moto.client.create_multipart_upload(Bucket=moto.bucket, Key="other/app/file")

    # Ages are counted from the start the server reports (moto reports one fixed date).
    listed = moto.client.list_multipart_uploads(Bucket=moto.bucket, Prefix=PREFIX)["Uploads"]
    initiated = listed[0]["Initiated"].timestamp()

    assert store.remove_abandoned(max_age_s=3600, now=initiated + 3000) == []
    assert moto.unfinished_uploads(PREFIX) == [key]

    removed = store.remove_abandoned(max_age_s=3600, now=initiated + 3700)
    assert removed == [f"s3://{moto.bucket}/{key} (unfinished upload)"]
    assert moto.unfinished_uploads(PREFIX) == []
    # Another application's upload in the same bucket, outside the prefix, is not ours.
    assert moto.unfinished_uploads("other/") == ["other/app/file"]
    moto.client.abort_multipart_upload(
        Bucket=moto.bucket, Key="other/app/file", UploadId=elsewhere["UploadId"]
    )


def test_delete_removes_the_object_and_small_blobs_read_whole(
    store: S3BlobStore, moto: MotoS3
) -> None:
    source, sha256 = _staged(store, b"an onnx graph")
    store.commit(source, sha256)
    assert store.read_bytes(sha256) == b"an onnx graph"
    store.delete(sha256)
    assert not store.exists(sha256)
    assert store.key(sha256) not in moto.keys(PREFIX)


def test_a_missing_bucket_is_named_by_readiness_and_by_an_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto: MotoS3
) -> None:
    store = _store(tmp_path, monkeypatch, moto, "no-such-bucket")
    assert store.problem() == "the blob store's bucket 'no-such-bucket' does not exist"
    source, sha256 = _staged(store, b"bytes")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        store.commit(source, sha256)


def test_the_readiness_of_a_reachable_bucket(store: S3BlobStore) -> None:
    assert store.problem() is None


def test_wrong_credentials_are_refused_without_being_repeated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto: MotoS3
) -> None:
    store = _store(tmp_path, monkeypatch, moto, moto.bucket)

    # moto accepts any key; a server refusing one answers 403, as this hook makes it.
    def forbid(**_kwargs: Any) -> None:
        raise ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "key"}}, "HeadBucket")

    store.probe_client.meta.events.register("before-call.s3.HeadBucket", forbid)
    try:
        problem = store.problem()
    finally:
        store.probe_client.meta.events.unregister("before-call.s3.HeadBucket", forbid)
    assert problem is not None and "InvalidAccessKeyId" in problem
    assert CREDENTIALS["AWS_ACCESS_KEY_ID"] not in problem
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in problem


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("s3://", "must name a bucket"),
        ("s3:///prefix", "must name a bucket"),
        ("s3://Bad_Bucket/x", "must name a bucket"),
        ("ftp://x", "must be file:///folder or s3://bucket/prefix"),
        ("file://relative/folder", "absolute folder"),
        ("s3://bucket/a/../b", "without '.' or '..'"),
        ("s3://AKIAKEY:hunter2secret@bucket/p", "must not hold credentials"),
    ],
)
def test_a_misconfigured_blob_url_is_refused_with_a_sentence(url: str, says: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(blob_url=url)
    message = raised.value.errors()[0]["msg"]
    assert says in message
    assert "hunter2secret" not in message


def test_blob_urls_name_a_folder_or_a_bucket_and_prefix(tmp_path: Path) -> None:
    default = Settings(data_dir=tmp_path)
    assert default.s3_location is None and default.blob_dir == tmp_path.resolve() / "blobs"
    folder = Settings(data_dir=tmp_path, blob_url=f"file://{tmp_path}/elsewhere")
    assert folder.s3_location is None and folder.blob_dir == tmp_path.resolve() / "elsewhere"
    bucket = Settings(data_dir=tmp_path, blob_url="s3://llfc-blobs/a/b/")
    assert bucket.s3_location is not None
    assert (bucket.s3_location.bucket, bucket.s3_location.prefix) == ("llfc-blobs", "a/b")
    assert bucket.s3_location.key("blobs/x") == "a/b/blobs/x"
    assert Settings(blob_url="s3://llfc-blobs").s3_location.key("blobs/x") == "blobs/x"  # type: ignore[union-attr]


def test_an_unreachable_server_makes_readiness_say_so_within_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    # A loopback port nothing listens on: connections are refused at once.
    settings = Settings(
        data_dir=tmp_path,
        blob_url="s3://llfc-blobs/p",
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
    )
    started = time.monotonic()
    problem = open_blob_store(settings).problem()
    assert problem is not None and "could not answer a readiness check" in problem
    assert "EndpointConnectionError" in problem
    assert time.monotonic() - started < 5


def test_a_store_error_is_a_503_problem_with_its_sentence() -> None:
    response = user_error_response(StorageError("The blob store's bucket 'b' does not exist."))
    assert response.status_code == 503
    assert b"storage-unavailable" in response.body
