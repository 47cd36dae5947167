"""Helpers of the reliability tests: a production stack (`llfc api` + `llfc worker` processes)
with short leases on the run's own Redis and PostgreSQL database, and a look into the job rows."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text

from support.api import client, submit, upload_mlp
from support.servers import Process, start, wait_until
from support.stores import RedisServer

HEARTBEAT_S = 0.5
LEASE_S = 5.0
MAX_ATTEMPTS = 2
VISIBILITY_TIMEOUT_S = 2
REPUBLISH_AFTER_S = 2.0
FAST_RECOVERY = {
    "LLFC_HEARTBEAT_SECONDS": str(HEARTBEAT_S),
    "LLFC_LEASE_SECONDS": str(LEASE_S),
    "LLFC_MAINTENANCE_INTERVAL_SECONDS": "0.5",
    "LLFC_REPUBLISH_AFTER_SECONDS": str(REPUBLISH_AFTER_S),
    "LLFC_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "LLFC_BROKER_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_TIMEOUT_S),
    # Kombu looks for expired unacknowledged messages every interval * throttle seconds
    # (100 s by default); every second here, so the visibility timeout shows within a test.
    "LLFC_BROKER_TRANSPORT_OPTIONS": json.dumps(
        {"unacked_restore_interval": 1, "unacked_restore_throttle": 1}
    ),
}
"""Leases, republishing and Redis' redelivery in seconds instead of minutes."""

SMALL = [64, 16, 10]


@dataclass
class Stack:
    """The production shape on one machine: PostgreSQL, a private Redis, `llfc api`, and one
    `llfc worker` at a time, shared by the tests that want the same worker settings."""

    base_url: str
    env: dict[str, str]
    api_key: str
    data_dir: Path
    redis: RedisServer
    api: Process
    database: Engine
    current_worker: Process | None = None
    worker_settings: dict[str, str] = field(default_factory=dict)
    workers_started: int = 0

    def http(self) -> httpx.Client:
        return client(self.base_url, self.api_key)

    def worker(self, **settings: str) -> Process:
        """The running worker if it has these extra settings, else a new one (the old one is
        killed); two pool children. Returns once it consumes from Redis."""
        current = self.current_worker
        if current and current.popen.poll() is None and self.worker_settings == settings:
            return current
        self.kill_worker()
        self.workers_started += 1
        log_path = self.data_dir / f"worker-{self.workers_started}.log"
        worker = start(["worker"], {**self.env, **settings}, log_path)
        self.current_worker, self.worker_settings = worker, dict(settings)
        wait_until(
            lambda: worker.popen.poll() is not None or " ready." in worker.log(),
            120,
            "the worker to be ready",
            every=0.25,
        )
        assert worker.popen.poll() is None, worker.log()[-3000:]
        return worker

    def kill_worker(self) -> None:
        """SIGKILL the worker and its pool children, as a machine that dies would."""
        if self.current_worker is not None:
            kill_group(self.current_worker)
        self.current_worker = None

    def job_row(self, job_id: str) -> dict[str, Any]:
        """The job's row as the worker and the API see it (``claimed_by`` is not in the API)."""
        with self.database.connect() as connection:
            row = (
                connection.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id})
                .mappings()
                .one()
            )
        return dict(row)

    def running_child_pid(self, job_id: str, attempt: int, timeout: float = 60) -> int:
        """The pid of the pool child running attempt ``attempt`` of the job, once it runs."""

        def claimed() -> int | None:
            row = self.job_row(job_id)
            if row["status"] == "running" and row["attempts"] == attempt and row["claimed_by"]:
                return int(str(row["claimed_by"]).rsplit(":", 1)[1])
            return None

        return int(wait_until(claimed, timeout, f"attempt {attempt} of {job_id} to run"))


def kill_group(process: Process) -> None:
    """SIGKILL a process and its whole group (a Celery worker and its pool children)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.popen.pid, signal.SIGKILL)
    process.popen.wait()


def train_body(epochs: int, seed: int = 0) -> dict[str, Any]:
    """A train job on the built-in digits whose length is set by ``epochs``."""
    return {
        "kind": "train",
        "dataset": "builtin:digits",
        "params": {
            "arch": {"name": "mlp", "widths": [64, 64, 10]},
            "epochs": epochs,
            "num_modes": 1,
            "seed": seed,
            "batch_size": 16,
        },
    }


def submitted(http: httpx.Client, body: dict[str, Any]) -> str:
    response = submit(http, body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def interpolate_body(http: httpx.Client, seed: int) -> dict[str, Any]:
    """A quick job: interpolate two small uploaded MLPs."""
    model_a, model_b = upload_mlp(http, SMALL, seed), upload_mlp(http, SMALL, seed + 1)
    return {"kind": "interpolate", "model_a": model_a, "model_b": model_b}
