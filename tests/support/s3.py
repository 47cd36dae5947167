"""An S3-compatible server for the tests: moto in server mode on a free loopback port, holding
one empty bucket, reached by the service through ``LLFC_S3_ENDPOINT_URL`` as MinIO would be."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from llfc_cli.embedded import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "llfc-test-access-key",
    "AWS_SECRET_ACCESS_KEY": "llfc-test-secret-access-key",
    "AWS_REGION": "us-east-1",
}


@dataclass
class MotoS3:
    """The server's URL, its bucket, and a client of our own to look inside it."""

    endpoint_url: str
    bucket: str
    client: Any

    def env(self, prefix: str) -> dict[str, str]:
        """The settings of an `llfc` process keeping its blobs under ``prefix`` here."""
        return {
            "LLFC_BLOB_URL": f"s3://{self.bucket}/{prefix}",
            "LLFC_S3_ENDPOINT_URL": self.endpoint_url,
            **CREDENTIALS,
        }

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def unfinished_uploads(self, prefix: str = "") -> list[str]:
        listed = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return sorted(upload["Key"] for upload in listed.get("Uploads", []))


@contextmanager
def moto_s3() -> Iterator[MotoS3]:
    """A moto server on 127.0.0.1 with one new bucket, stopped on the way out."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint_url = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_REGION"],
        )
        bucket = f"llfc-test-{secrets.token_hex(4)}"
        client.create_bucket(Bucket=bucket)
        yield MotoS3(endpoint_url, bucket, client)
    finally:
        server.stop()
