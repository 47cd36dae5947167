"""The embedded service shared by the end-to-end tests: `llfc serve` with auth on, three owners."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from support.api import MAX_UPLOAD_BYTES, EmbeddedService, client
from support.servers import serve


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedService]:
    """`llfc serve` on a free port with a fresh data folder, LLFC_AUTH on, keys for three owners."""
    data_dir = tmp_path_factory.mktemp("embedded")
    with serve(
        data_dir,
        ("alice", "bob", "carol"),
        data_dir / "serve.log",
        LLFC_AUTH="on",
        LLFC_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
        LLFC_DEVICE="cpu",
        LLFC_WORKER_STOP_GRACE_SECONDS="2",
    ) as served:
        yield EmbeddedService(served.base_url, data_dir, served.keys, served.process)


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
