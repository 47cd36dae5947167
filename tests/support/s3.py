"""An S3-compatible server on the loopback for the tests: moto's server mode in a process of its
own, as MinIO would run beside the service, with a bucket made for the run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llfc_cli.embedded import free_port
from support.servers import wait_until
from support.stores import port_open

ACCESS_KEY_ID = "llfc-test-access-key"
SECRET_ACCESS_KEY = "llfc-test-secret-access-key"
REGION = "us-east-1"


@dataclass
class S3Server:
    """A running S3 server and the bucket of this run."""

    endpoint_url: str
    bucket: str

    def settings(self, prefix: str) -> dict[str, str]:
        """The environment of an `llfc` process keeping its blobs under ``prefix`` here."""
        return {
            "LLFC_BLOB_URL": f"s3://{self.bucket}/{prefix}",
            "LLFC_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": REGION,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION,
        )

    def keys(self, prefix: str = "") -> set[str]:
        """Every object key in the bucket under ``prefix``."""
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    def open_multipart_uploads(self, prefix: str = "") -> list[str]:
        """Keys of multipart uploads begun and neither completed nor aborted."""
        listed = self.client().list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [upload["Key"] for upload in listed.get("Uploads", [])]


@contextmanager
def s3_server(folder: Path, bucket: str = "llfc-test") -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, with ``bucket`` created; stopped afterwards."""
    port = free_port()
    log = (folder / "s3.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        wait_until(lambda: port_open(port), 30, "the S3 server to listen")
        server = S3Server(f"http://127.0.0.1:{port}", bucket)
        server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
