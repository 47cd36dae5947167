"""The production stack the crash tests break: PostgreSQL (database `llfc_reliability`), a private
Redis on a free port, `llfc api` with leases of seconds; each test starts its own workers."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

# The HTTP, model and job helpers of the service tests (tests/ holds no packages).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from reliability_testing import (
    RedisServer,
    Stack,
    fresh_database,
    port_open,
    production_env,
)
from servers import create_key, llfc, start, wait_ready

from llfc_cli.embedded import free_port


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not port_open(5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432 (scripts/services)")
    data_dir = tmp_path_factory.mktemp("reliability")
    redis = RedisServer(data_dir)
    redis.start()
    database_url = fresh_database()
    env = production_env(data_dir, database_url, redis.url)
    migrated = llfc("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    api_key = create_key("lab", env)
    port = free_port()
    api = start(["api", "--port", str(port)], env, data_dir / "api.log")
    database = create_engine(database_url)
    stack = Stack(f"http://127.0.0.1:{port}", env, api_key, data_dir, redis, api, database)
    try:
        wait_ready(stack.base_url, api)
        yield stack
    finally:
        stack.kill_worker()
        api.stop(signal.SIGTERM)
        database.dispose()
        redis.kill()
