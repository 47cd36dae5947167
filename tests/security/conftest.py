"""One embedded `llfc serve` for the security tests: auth on, a 1 MiB upload cap, three owners.

Every hostile request goes to this one process, so a request that crashed or wedged it would
fail every test after it, not only its own.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import httpx
import pytest
from security_testing import MAX_UPLOAD_BYTES, OWNERS, GuardedService
from service_testing import client, create_key, free_port, llfc, service_env, start, wait_ready


@pytest.fixture(scope="session")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedService]:
    data_dir = tmp_path_factory.mktemp("guarded") / "data"
    data_dir.mkdir()
    env = service_env(
        data_dir,
        LLFC_AUTH="on",
        LLFC_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
        LLFC_DEVICE="cpu",
        LLFC_WORKER_STOP_GRACE_SECONDS="2",
    )
    migrated = llfc("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    keys = {owner: create_key(owner, env) for owner in OWNERS}
    port = free_port()
    process = start(["serve", "--port", str(port)], env, data_dir.parent / "serve.log")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, process)
        yield GuardedService(base_url, data_dir, env, keys, process)
    finally:
        code = process.stop(signal.SIGINT)
    assert code == 0, process.log()[-3000:]


@pytest.fixture(scope="session")
def alice(guarded: GuardedService) -> Iterator[httpx.Client]:
    with client(guarded.base_url, guarded.keys["alice"]) as http:
        yield http


@pytest.fixture(scope="session")
def bob(guarded: GuardedService) -> Iterator[httpx.Client]:
    with client(guarded.base_url, guarded.keys["bob"]) as http:
        yield http
