"""One embedded `llfc serve` for the security tests: auth on, a 1 MiB upload cap, three owners.

Every hostile request goes to this one process, so a request that crashed or wedged it would
fail every test after it, not only its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from support.api import client
from support.security import MAX_UPLOAD_BYTES, OWNERS, GuardedService
from support.servers import serve


@pytest.fixture(scope="session")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedService]:
    data_dir = tmp_path_factory.mktemp("guarded") / "data"
    data_dir.mkdir()
    with serve(
        data_dir,
        OWNERS,
        data_dir.parent / "serve.log",
        LLFC_AUTH="on",
        LLFC_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
        LLFC_DEVICE="cpu",
        LLFC_WORKER_STOP_GRACE_SECONDS="2",
    ) as served:
        yield GuardedService(served.base_url, data_dir, served.env, served.keys, served.process)


@pytest.fixture(scope="session")
def alice(guarded: GuardedService) -> Iterator[httpx.Client]:
    with client(guarded.base_url, guarded.keys["alice"]) as http:
        yield http


@pytest.fixture(scope="session")
def bob(guarded: GuardedService) -> Iterator[httpx.Client]:
    with client(guarded.base_url, guarded.keys["bob"]) as http:
        yield http
