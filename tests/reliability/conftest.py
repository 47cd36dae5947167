"""The production stack the crash tests break: the run's own PostgreSQL database and Redis
(support.stores), `llfc api` with leases of seconds; each test starts its own workers."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from support.reliability import FAST_RECOVERY, Stack
from support.servers import create_key, llfc, start, wait_ready
from support.stores import production_stores

from llfc_cli.embedded import free_port


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("reliability")
    with production_stores("reliability", data_dir) as stores:
        env = stores.env(data_dir, LLFC_WORKER_CONCURRENCY="2", **FAST_RECOVERY)
        migrated = llfc("migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        api_key = create_key("lab", env)
        port = free_port()
        api = start(["api", "--port", str(port)], env, data_dir / "api.log")
        database = create_engine(stores.database_url)
        base_url = f"http://127.0.0.1:{port}"
        stack = Stack(base_url, env, api_key, data_dir, stores.redis, api, database)
        try:
            wait_ready(stack.base_url, api)
            yield stack
        finally:
            stack.kill_worker()
            api.stop(signal.SIGTERM)
            database.dispose()
