"""The production shape under load: the run's own PostgreSQL database and Redis (support.stores),
`llfc api` and two `llfc worker` processes, one API key per client."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from support.load import NUM_CLIENTS, NUM_WORKERS, LoadStack
from support.servers import Process, llfc, start, wait_ready
from support.stores import production_stores

from llfc_cli.embedded import free_port
from service.security import create_api_key

WORKER_READY_TIMEOUT_S = 120


def _create_keys(database_url: str, secret_key: str) -> list[str]:
    """A key for each client's owner, written straight to the database (one process, not 20)."""
    engine = create_engine(database_url)
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
    data_dir = tmp_path_factory.mktemp("load")
    with production_stores("load", data_dir) as stores:
        env = stores.env(data_dir, LLFC_WORKER_CONCURRENCY="1")
        migrated = llfc("migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        keys = _create_keys(stores.database_url, stores.secret_key)
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
            yield LoadStack(base_url, stores.database_url, keys, api, workers)
        finally:
            api.stop(signal.SIGTERM)
            for worker in workers:
                worker.stop(signal.SIGTERM)
