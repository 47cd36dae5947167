"""A fleet on one machine: `llfc api` and two `llfc worker` processes on the run's own PostgreSQL
and Redis, one consuming `cpu` only and one `gpu` only. The CPU worker runs the CPU job and never
the GPU one, even when handed its message through the legacy queue; /readyz and /metrics say which
queue has no live worker until one registers, and a worker's row goes when it stops."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text
from support.api import client, wait_for_job
from support.reliability import FAST_RECOVERY, interpolate_body, kill_group, submitted, train_body
from support.servers import (
    TEST_METRICS_TOKEN,
    Process,
    create_key,
    llfc,
    start,
    wait_ready,
    wait_until,
)
from support.stores import ProductionStores, production_stores

from llfc_cli.embedded import free_port
from service.broker import LEGACY_QUEUE, TASK_NAME, make_celery
from service.core.config import Settings


@dataclass
class Fleet:
    base_url: str
    env: dict[str, str]
    api_key: str
    data_dir: Path
    stores: ProductionStores
    database: Engine
    workers: list[Process]

    def worker(self, name: str, **settings: str) -> Process:
        """An `llfc worker` with these settings, once it consumes from Redis."""
        worker = start(["worker"], {**self.env, **settings}, self.data_dir / f"{name}.log")
        self.workers.append(worker)
        wait_until(
            lambda: worker.popen.poll() is not None or " ready." in worker.log(),
            120,
            f"the {name} worker to be ready",
            every=0.25,
        )
        assert worker.popen.poll() is None, worker.log()[-3000:]
        return worker

    def ready(self) -> dict[str, Any]:
        """/readyz as the scrape token sees it: with the queues' counts."""
        headers = {"Authorization": f"Bearer {TEST_METRICS_TOKEN}"}
        answer = httpx.get(f"{self.base_url}/readyz", headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def metrics(self) -> str:
        headers = {"Authorization": f"Bearer {TEST_METRICS_TOKEN}"}
        return httpx.get(f"{self.base_url}/metrics", headers=headers, timeout=30).text

    def worker_names(self) -> list[str]:
        with self.database.connect() as connection:
            return list(connection.scalars(text("SELECT name FROM workers ORDER BY name")))


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with production_stores("queues", tmp_path) as stores:
        env = stores.env(tmp_path, **FAST_RECOVERY)
        migrated = llfc("migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        port = free_port()
        api = start(["api", "--port", str(port)], env, tmp_path / "api.log")
        database = create_engine(stores.database_url)
        fleet = Fleet(
            f"http://127.0.0.1:{port}", env, create_key("lab", env), tmp_path, stores, database, []
        )
        try:
            wait_ready(fleet.base_url, api)
            yield fleet
        finally:
            for worker in fleet.workers:
                kill_group(worker)
            api.stop(signal.SIGTERM)
            database.dispose()


def _sample(metrics: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    match = re.search(
        "^" + re.escape(f"{name}{{{selector}}}") + r" (\S+)$", metrics, flags=re.MULTILINE
    )
    assert match, f"{name} {labels} not in the metrics"
    return float(match.group(1))


def test_a_cpu_worker_runs_cpu_jobs_only_and_readyz_names_the_queue_without_a_worker(
    fleet: Fleet,
) -> None:
    ready = fleet.ready()
    assert ready["queues"] == {
        "cpu": {"consumers": 0, "queued": 0},
        "gpu": {"consumers": 0, "queued": 0},
    }
    assert ready["warning"].startswith(
        "No live worker consumes the queues 'cpu' (0 jobs queued), 'gpu' (0 jobs queued): "
    )
    # Without the scrape token, no counts of every owner's jobs: the warning names the queues.
    anonymous = httpx.get(f"{fleet.base_url}/readyz", timeout=30).json()
    assert anonymous["queues"] is None
    assert anonymous["warning"].startswith("No live worker consumes the queues 'cpu', 'gpu': ")

    cpu_worker = fleet.worker("cpu", LLFC_WORKER_QUEUES="cpu", LLFC_DEVICE="cpu")
    wait_until(lambda: fleet.ready()["queues"]["cpu"]["consumers"] == 1, 30, "a cpu consumer")
    with client(fleet.base_url, fleet.api_key) as http:
        gpu_job = submitted(http, train_body(epochs=1))
        cpu_job = submitted(http, interpolate_body(http, 50))
        assert wait_for_job(http, cpu_job)["status"] == "succeeded"
        waiting = http.get(f"/v1/jobs/{gpu_job}").json()
        assert (waiting["queue"], waiting["status"], waiting["attempts"]) == ("gpu", "queued", 0)
        assert http.get(f"/v1/jobs/{cpu_job}").json()["queue"] == "cpu"

        ready = fleet.ready()
        assert ready["queues"]["gpu"] == {"consumers": 0, "queued": 1}
        assert ready["warning"].startswith("No live worker consumes the queue 'gpu' (1 job queued)")
        metrics = fleet.metrics()
        assert _sample(metrics, "llfc_queue_depth", queue="gpu") == 1
        assert _sample(metrics, "llfc_queue_depth", queue="cpu") == 0
        assert _sample(metrics, "llfc_workers", queue="cpu") == 1
        assert _sample(metrics, "llfc_workers", queue="gpu") == 0
        (cpu_name,) = fleet.worker_names()
        age = _sample(metrics, "llfc_worker_heartbeat_age_seconds", worker=cpu_name, queues="cpu")
        assert 0 <= age < 5

        # A message of the GPU job in the legacy queue, as one queued before the upgrade: the CPU
        # worker refuses the claim and sends the job on to its own queue.
        legacy = make_celery(Settings(broker_url=fleet.stores.redis.url))
        legacy.send_task(TASK_NAME, args=[gpu_job], queue=LEGACY_QUEUE)
        wait_until(
            lambda: f"Job {gpu_job} belongs to the queue 'gpu'" in cpu_worker.log(),
            30,
            "the cpu worker to send the gpu job on",
        )
        assert http.get(f"/v1/jobs/{gpu_job}").json()["status"] == "queued"

        gpu_worker = fleet.worker("gpu", LLFC_WORKER_QUEUES="gpu", LLFC_DEVICE="cpu")
        assert "LLFC_WORKER_QUEUES names the queue 'gpu'" in gpu_worker.log()
        trained = wait_for_job(http, gpu_job)
    assert (trained["status"], trained["attempts"]) == ("succeeded", 1), trained
    assert f"Job {gpu_job} (train) started" in gpu_worker.log()
    assert f"Job {gpu_job} (train) started" not in cpu_worker.log()
    assert f"Job {cpu_job} (interpolate) started" in cpu_worker.log()
    ready = fleet.ready()
    assert ready["warning"] is None
    assert ready["queues"]["gpu"] == {"consumers": 1, "queued": 0}

    # A clean stop deletes the worker's row at once: its queue has no consumer again.
    assert cpu_worker.stop(signal.SIGTERM) == 0
    assert cpu_name not in fleet.worker_names()
    assert len(fleet.worker_names()) == 1
    assert fleet.ready()["warning"].startswith("No live worker consumes the queue 'cpu'")
    assert _sample(fleet.metrics(), "llfc_workers", queue="cpu") == 0
