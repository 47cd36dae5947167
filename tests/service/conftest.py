"""The embedded service shared by the end-to-end tests: `llfc serve` with auth on, three owners."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import httpx
import pytest
from service_testing import (
    MAX_UPLOAD_BYTES,
    EmbeddedService,
    client,
    create_key,
    free_port,
    llfc,
    service_env,
    start,
    wait_ready,
)


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedService]:
    """`llfc serve` on a free port with a fresh data folder, LLFC_AUTH on, keys for three owners."""
    data_dir = tmp_path_factory.mktemp("embedded")
    env = service_env(
        data_dir,
        LLFC_AUTH="on",
        LLFC_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
        LLFC_DEVICE="cpu",
        LLFC_WORKER_STOP_GRACE_SECONDS="2",
    )
    migrated = llfc("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    keys = {owner: create_key(owner, env) for owner in ("alice", "bob", "carol")}
    port = free_port()
    process = start(["serve", "--port", str(port)], env, data_dir / "serve.log")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, process)
        yield EmbeddedService(base_url, data_dir, keys, process)
    finally:
        code = process.stop(signal.SIGINT)
    assert code == 0, process.log()[-3000:]


@pytest.fixture(scope="session")
def alice(embedded: EmbeddedService) -> Iterator[httpx.Client]:
    with client(embedded.base_url, embedded.keys["alice"]) as http:
        yield http


@pytest.fixture(scope="session")
def bob(embedded: EmbeddedService) -> Iterator[httpx.Client]:
    with client(embedded.base_url, embedded.keys["bob"]) as http:
        yield http


@pytest.fixture(scope="session")
def carol(embedded: EmbeddedService) -> Iterator[httpx.Client]:
    """An owner used only by the pagination tests, so their counts are exact."""
    with client(embedded.base_url, embedded.keys["carol"]) as http:
        yield http


@pytest.fixture(scope="session")
def anonymous(embedded: EmbeddedService) -> Iterator[httpx.Client]:
    with client(embedded.base_url) as http:
        yield http
