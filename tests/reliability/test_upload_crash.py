"""The API killed in the middle of a large upload: no half file ever becomes a checkpoint, and the
partial file it leaves is removed once nothing has written to it for a while."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time
from pathlib import Path

from support.api import client, mlp_arch, mlp_state, safetensors_file, upload_checkpoint
from support.servers import llfc, service_env, start, wait_ready, wait_until

from llfc_cli.embedded import free_port
from service.storage import FolderBlobStore

WIDE = [64, 1024, 1024, 10]
"""About 4.5 MB as safetensors: large enough to be caught half received."""
BOUNDARY = "llfc-reliability-boundary"


def _multipart_parts(content: bytes, arch: str) -> tuple[bytes, bytes]:
    """The body of a checkpoint upload, split as (everything up to the file's bytes, the rest)."""
    head = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="arch"\r\n\r\n'
        f"{arch}\r\n"
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="model.safetensors"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return head, content + tail


def _files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def test_an_api_killed_mid_upload_leaves_no_checkpoint_and_its_partial_file_is_removed(
    tmp_path: Path,
) -> None:
    env = service_env(
        tmp_path,
        LLFC_DEVICE="cpu",
        LLFC_INCOMING_MAX_AGE_SECONDS="2",
        LLFC_MAINTENANCE_INTERVAL_SECONDS="0.5",
    )
    assert llfc("migrate", env=env).returncode == 0
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    api = start(["api", "--port", str(port)], env, tmp_path / "api.log")
    wait_ready(base_url, api)
    store = FolderBlobStore(tmp_path.resolve() / "blobs")

    content = safetensors_file(mlp_state(WIDE, seed=1))
    head, rest = _multipart_parts(content, '{"name": "mlp", "widths": [64, 1024, 1024, 10]}')
    half = len(content) // 2
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(
            (
                "POST /v1/checkpoints HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                f"Content-Length: {len(head) + len(rest)}\r\n\r\n"
            ).encode()
            + head
            + rest[:half]
        )

        def half_received() -> bool:
            partial = _files_under(store.incoming_dir)
            return len(partial) == 1 and partial[0].stat().st_size >= half - 64 * 1024

        wait_until(half_received, 30, "the API to write the first half to disk")
        os.killpg(api.popen.pid, signal.SIGKILL)
        api.popen.wait()

    # What the killed API left: one partial file in incoming/, nothing else in the store.
    partial = _files_under(store.incoming_dir)
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < len(content)
    assert _files_under(store.root) == partial

    restarted = start(["api", "--port", str(port)], env, tmp_path / "api-restarted.log")
    try:
        wait_ready(base_url, restarted)
        wait_until(lambda: not partial[0].exists(), 20, "the partial upload to be removed")
        assert "Removed 1 abandoned partial file(s)" in restarted.log()
        with client(base_url) as http:
            assert http.get("/v1/checkpoints").json()["items"] == []
            # The same file sent whole is accepted, and stored exactly.
            response = upload_checkpoint(
                http, content, mlp_arch(WIDE), filename="model.safetensors"
            )
            assert response.status_code == 201, response.text
            checkpoint = response.json()
            assert checkpoint["sha256"] == hashlib.sha256(content).hexdigest()
            listed = http.get("/v1/checkpoints").json()["items"]
            assert [item["id"] for item in listed] == [checkpoint["id"]]
    finally:
        assert restarted.stop(signal.SIGTERM) == 0, restarted.log()[-3000:]


def test_only_temporary_files_left_alone_long_enough_are_removed(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    stale = store.temporary_path(".part")
    fresh = store.temporary_path(".part")
    stale.write_bytes(b"half an upload")
    fresh.write_bytes(b"an upload in progress")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    with store.incoming(max_bytes=1024) as incoming:
        incoming.write(b"x" * 10)
        sha256 = incoming.finish()
        store.commit(incoming.path, sha256)

    assert store.remove_abandoned(max_age_s=60) == [str(stale)]
    assert not stale.exists()
    assert fresh.exists()
    assert store.exists(sha256)
