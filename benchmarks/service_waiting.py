"""Service waiting: 500 jobs waited on by 32 clients, long polls against today's 2-second polling.

Workload: 500 job rows of one owner, ``running``, written straight into the service's database;
no worker runs. A finisher thread in this process marks them ``succeeded`` (status, stage
``done``, fraction 1, ``finished_at``: the columns a worker's last write sets) one after the
other at evenly spaced, known times from 5 to 35 seconds after the clients started waiting,
noting when each commit returned: a fake worker, so that a job's end is known to the
millisecond. 32 clients wait on all the jobs at once, client c on jobs c, c + 32, ..., one
thread per job:

- ``long_poll``: ``llfc_client.Client.wait`` as it is now (``GET /v1/jobs/{id}?wait=30`` with
  the last ``ETag``, again until the job is finished);
- ``polling``: what ``Client.wait`` did before, ``GET /v1/jobs/{id}`` then a sleep of the
  answer's ``Retry-After`` (2 s, the default ``LLFC_RETRY_AFTER_SECONDS``) until it is
  finished.

Each mode runs against a fresh ``llfc api`` (auth on, one process) over PostgreSQL (its own
database ``llfc_bench_waiting``, emptied and migrated first) or the embedded mode's SQLite file.
For each database and mode the one JSON line reports the server's CPU seconds per finished wait
(user + system of the API process over the run, ``/proc``, divided by the jobs), the requests
the clients sent, and the delay from a job's end (its commit) to its client holding the
finished job: p50, p99, max. The clients run on the same cores as the server.

    PYTHONPATH=tests python benchmarks/service_waiting.py [--size tiny|full]
        [--modes postgres,sqlite]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from measure import emit
from service_servers import (
    BENCH_SECRET_KEY,
    Server,
    ServerGroup,
    benchmark_env,
    cpu_seconds,
    create_key,
    free_port,
    machine_load,
    reachable,
    reset_postgres,
    run_llfc,
    server_group,
)
from sqlalchemy import Engine, select, update

from llfc_client import Client
from llfc_client.client import poll_delay, retry_after_seconds
from service.db.models import Job, Owner, utcnow
from service.db.session import make_engine, make_sessionmaker

SIZES = {
    "full": {"jobs": 500, "clients": 32, "ends_s": (5.0, 35.0)},
    "tiny": {"jobs": 64, "clients": 32, "ends_s": (1.0, 3.0)},
}
"""The jobs end one after the other at even intervals between ``ends_s`` seconds after the
clients start waiting (all of them by the first end)."""
POLL_RETRY_AFTER_S = 2
TARGETS = {"p99_delay_ms": 100.0}
DATABASES = ("postgres", "sqlite")
WAIT_MODES = ("long_poll", "polling")
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/llfc_bench_waiting"
POSTGRES_PORT = 5432


def _add_jobs(engine: Engine, count: int) -> list[str]:
    """``count`` running jobs of the owner ``bench``, in the order they will end."""
    with make_sessionmaker(engine)() as session:
        owner_id = session.scalar(select(Owner.id).where(Owner.name == "bench"))
        jobs = [
            Job(
                id=f"job_wait_{index:04d}",
                owner_id=owner_id,
                kind="match",
                queue="cpu",
                status="running",
                progress_stage="matching",
                progress_fraction=0.5,
                params={},
                created_at=utcnow(),
                started_at=utcnow(),
            )
            for index in range(count)
        ]
        session.add_all(jobs)
        session.commit()
        return [job.id for job in jobs]


def _finish_jobs(
    engine: Engine, schedule: list[tuple[float, str]], ended: dict[str, float]
) -> None:
    """Mark each job succeeded at its time (``time.time()`` seconds); note when each commit
    returned."""
    sessions = make_sessionmaker(engine)
    for at, job_id in schedule:
        time.sleep(max(at - time.time(), 0.0))
        with sessions() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    status="succeeded",
                    progress_stage="done",
                    progress_fraction=1.0,
                    finished_at=utcnow(),
                )
            )
            session.commit()
        ended[job_id] = time.time()


def _poll_until_finished(http: httpx.Client, job_id: str) -> None:
    """``Client.wait`` before long polls: read, sleep the Retry-After, again."""
    while True:
        response = http.get(f"/v1/jobs/{job_id}")
        response.raise_for_status()
        if response.json()["status"] in ("succeeded", "failed", "cancelled"):
            return
        time.sleep(poll_delay(retry_after_seconds(response.headers.get("Retry-After"))))


class _CountingTransport(httpx.HTTPTransport):
    """Counts the requests a client sends (``itertools.count`` is safe across threads)."""

    def __init__(self, sent: itertools.count[int]) -> None:
        super().__init__()
        self.sent = sent

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        next(self.sent)
        return super().handle_request(request)


def _wait_for_job(
    mode: str, client: Client, http: httpx.Client, job_id: str, seen: dict[str, float]
) -> None:
    if mode == "long_poll":
        client.wait(job_id)
    else:
        _poll_until_finished(http, job_id)
    seen[job_id] = time.time()


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run_mode(
    servers: ServerGroup, database: str, mode: str, work_dir: Path, size: dict[str, Any]
) -> dict[str, Any]:
    """One fresh API over ``database``, its jobs waited on in ``mode``."""
    settings = {
        "LLFC_AUTH": "on",
        "LLFC_SECRET_KEY": BENCH_SECRET_KEY,
        "LLFC_RETRY_AFTER_SECONDS": str(POLL_RETRY_AFTER_S),
    }
    data_dir = work_dir / f"data-{database}-{mode}"
    if database == "postgres":
        reset_postgres(POSTGRES_URL)
        settings["LLFC_DATABASE_URL"] = POSTGRES_URL
        url = POSTGRES_URL
    else:
        url = f"sqlite:///{data_dir / 'llfc.db'}"
    env = benchmark_env(data_dir, **settings)
    run_llfc("migrate", env=env)
    key = create_key("bench", env)
    port = free_port()
    api: Server = servers.start_llfc(
        f"llfc-api-{database}-{mode}", ["api", "--port", str(port)], env, port
    )
    api.wait_ready("/readyz")
    engine = make_engine(url)
    try:
        job_ids = _add_jobs(engine, size["jobs"])
        clients = size["clients"]
        started = time.time()
        first_end, last_end = size["ends_s"]
        step = (last_end - first_end) / len(job_ids)
        schedule = [
            (started + first_end + index * step, job_id) for index, job_id in enumerate(job_ids)
        ]
        ended: dict[str, float] = {}
        seen: dict[str, float] = {}
        sent = itertools.count()
        with contextlib.ExitStack() as stack:
            connections = [
                (
                    stack.enter_context(
                        Client(str(api.base_url), key, transport=_CountingTransport(sent))
                    ),
                    stack.enter_context(
                        httpx.Client(
                            base_url=str(api.base_url),
                            headers={"Authorization": f"Bearer {key}"},
                            transport=_CountingTransport(sent),
                            timeout=30,
                        )
                    ),
                )
                for _ in range(clients)
            ]
            # Client c waits on jobs c, c + clients, ... all at once, one thread each.
            threads = [
                threading.Thread(
                    target=_wait_for_job,
                    args=(mode, *connections[index % clients], job_id, seen),
                )
                for index, job_id in enumerate(job_ids)
            ]
            finisher = threading.Thread(target=_finish_jobs, args=(engine, schedule, ended))
            cpu_before = cpu_seconds(api.pid)
            for thread in [*threads, finisher]:
                thread.start()
            for thread in [*threads, finisher]:
                thread.join()
        server_cpu_s = cpu_seconds(api.pid) - cpu_before
        elapsed = time.time() - started
    finally:
        engine.dispose()
        servers.stop(api)
    delays_ms = [(seen[job_id] - ended[job_id]) * 1e3 for job_id in job_ids]
    requests = next(sent)
    return {
        "server": f"llfc api, auth on, {database}, one process",
        "seconds": round(elapsed, 2),
        **machine_load(),
        "server_cpu_s": round(server_cpu_s, 3),
        "server_cpu_ms_per_wait": round(server_cpu_s / len(job_ids) * 1e3, 3),
        "requests": requests,
        "requests_per_wait": round(requests / len(job_ids), 2),
        "delay_ms": {
            "p50": round(_percentile(delays_ms, 0.50), 1),
            "p99": round(_percentile(delays_ms, 0.99), 1),
            "max": round(max(delays_ms), 1),
        },
    }


def run(size_name: str, databases: list[str], work_dir: Path) -> dict[str, Any]:
    """One record: per database, both modes and how they compare."""
    size = SIZES[size_name]
    compared: dict[str, Any] = {}
    with server_group(work_dir) as servers:
        for database in databases:
            long_poll, polling = (
                run_mode(servers, database, mode, work_dir, size) for mode in WAIT_MODES
            )
            compared[database] = {
                "long_poll": long_poll,
                "polling": polling,
                "cpu_ratio": round(
                    long_poll["server_cpu_s"] / max(polling["server_cpu_s"], 1e-9), 3
                ),
                "requests_ratio": round(long_poll["requests"] / max(polling["requests"], 1), 3),
                "meets_targets": {
                    "p99_delay_ms": long_poll["delay_ms"]["p99"] < TARGETS["p99_delay_ms"]
                },
            }
    return {
        "benchmark": "service_waiting",
        "size": size_name,
        **{name: size[name] for name in ("jobs", "clients", "ends_s")},
        "finisher": "a thread of the benchmark marking rows succeeded at known times (no worker)",
        "targets": TARGETS,
        "databases": compared,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--modes", default=",".join(DATABASES), help="comma-separated databases")
    args = parser.parse_args()
    databases = args.modes.split(",")
    unknown = set(databases) - set(DATABASES)
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    if "postgres" in databases and not reachable(POSTGRES_PORT):
        parser.error("PostgreSQL is not running on 127.0.0.1:5432; pass --modes sqlite")
    with tempfile.TemporaryDirectory(prefix="llfc-waiting-bench-") as work_dir:
        emit(run(args.size, databases, Path(work_dir)))


if __name__ == "__main__":
    main()
