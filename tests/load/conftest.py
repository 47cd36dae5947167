"""The production shape under load: its own PostgreSQL database `llfc_load`, Redis database 10,
`llfc api` and two `llfc worker` processes, one API key per client."""

from __future__ import annotations

import secrets
import signal
import socket
import time
from collections.abc import Iterator

import pytest
import redis
from load_testing import (
    ADMIN_URL,
    DATABASE,
    DATABASE_URL,
    NUM_CLIENTS,
    NUM_WORKERS,
    REDIS_URL,
    LoadStack,
)
from servers import Process, llfc, service_env, start, wait_ready
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from llfc_cli.embedded import free_port
from service.security import create_api_key

WORKER_READY_TIMEOUT_S = 120


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _recreate_stores() -> None:
    """An empty database `llfc_load` and an empty Redis database 10."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
            connection.execute(text(f"CREATE DATABASE {DATABASE}"))
    finally:
        admin.dispose()
    redis.Redis.from_url(REDIS_URL).flushdb()


def _drop_stores() -> None:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
    finally:
        admin.dispose()
    redis.Redis.from_url(REDIS_URL).flushdb()


def _create_keys(secret_key: str) -> list[str]:
    """A key for each client's owner, written straight to the database (one process, not 20)."""
    engine = create_engine(DATABASE_URL)
    try:
        with Session(engine) as session:
            keys = [
                create_api_key(session, f"lab-{index:02d}", secret_key)
                for index in range(NUM_CLIENTS)
            ]
            session.commit()
    finally:
        engine.dispose()
    return keys


def _wait_worker_ready(worker: Process) -> None:
    """Until Celery says the worker is ready to take tasks."""
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    while " ready." not in worker.log():
        if worker.popen.poll() is not None:
            raise AssertionError(f"A worker exited early:\n{worker.log()[-5000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"A worker was not ready in time:\n{worker.log()[-5000:]}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def load_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadStack]:
    if not (_reachable(5432) and _reachable(6379)):
        pytest.skip("PostgreSQL and Redis are not running on 127.0.0.1 (scripts/services)")
    _recreate_stores()
    data_dir = tmp_path_factory.mktemp("load")
    secret_key = secrets.token_urlsafe(32)
    env = service_env(
        data_dir,
        LLFC_DATABASE_URL=DATABASE_URL,
        LLFC_BROKER_URL=REDIS_URL,
        LLFC_AUTH="on",
        LLFC_SECRET_KEY=secret_key,
        LLFC_DEVICE="cpu",
        LLFC_WORKER_CONCURRENCY="1",
    )
    migrated = llfc("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    keys = _create_keys(secret_key)
    port = free_port()
    api = start(["api", "--port", str(port)], env, data_dir / "api.log")
    workers = [
        start(["worker"], env, data_dir / f"worker-{index}.log") for index in range(NUM_WORKERS)
    ]
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, api)
        for worker in workers:
            _wait_worker_ready(worker)
        yield LoadStack(base_url, keys, api, workers)
    finally:
        api.stop(signal.SIGTERM)
        for worker in workers:
            worker.stop(signal.SIGTERM)
        _drop_stores()
