"""Service latency: from ``POST /v1/jobs`` returning to the job running, with an idle worker.

Workload: the production shape on this machine: ``llfc migrate``, then ``llfc api`` (auth on)
and ``llfc worker`` (prefork, one child) on PostgreSQL
(``postgresql+psycopg://postgres@127.0.0.1:5432/llfc_bench``, emptied first) and Redis
(``redis://127.0.0.1:6379/11``, flushed first). Small ``interpolate`` jobs (two MLPs 8-4-2) are
submitted one at a time (``full``: 30, ``tiny``: 3, after two warm-up jobs), each once the worker
has been idle for a moment, and followed until they succeed.

Latency of one job: ``started_at`` (set by the worker's claim, the moment the row shows
``running``) minus the wall-clock time at which the client sent ``POST /v1/jobs``. Also
reported: ``started_at`` minus the moment the client had the ``202`` in hand (negative when the
worker claimed the job before the answer arrived: the task is published before the response is
sent), ``started_at - created_at`` (the server's view, from the row's creation) and the ``POST``
round trip.

Baseline, in the same run: a bare Celery app in this file with the same broker, the same
delivery settings (prefork with one child, late acks, one prefetched message, no gossip, mingle
or heartbeat) and a task that only records the time it started: the floor that publishing
through Redis to a prefork worker puts under any job system built this way. Its latency is the
task's start minus the moment ``send_task`` was called.

    PYTHONPATH=tests python benchmarks/service_latency.py [--size tiny|full]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from measure import emit
from service_servers import (
    BENCH_SECRET_KEY,
    POSTGRES_URL,
    REDIS_URL,
    Server,
    ServerGroup,
    benchmark_env,
    create_key,
    flush_redis,
    free_port,
    machine_load,
    reachable,
    reset_postgres,
    run_llfc,
    server_group,
)

JOBS = {"full": 30, "tiny": 3}
WARM_UP_JOBS = 2
IDLE_BEFORE_SUBMIT_S = 0.3
"""Long enough for the worker to be back in its blocking wait on the broker."""
POLL_INTERVAL_S = 0.01
JOB_TIMEOUT_S = 60.0
MODEL_WIDTHS = [8, 4, 2]
TARGETS = {"p50_ms": 100.0}
BASELINE_QUEUE = "llfc-bench-latency"
BASELINE_TASK = "llfc_bench.record_start"
BASELINE_KEY_PREFIX = "llfc-bench-latency:"


# --- The baseline: a bare Celery app --------------------------------------------------------


def baseline_celery(redis_url: str) -> Any:
    """A Celery app delivering like ``service/broker.py``, with one task that writes its
    start time (``time.time()``) to Redis under the token it was sent."""
    import redis
    from celery import Celery

    app = Celery("llfc_bench_latency", broker=redis_url)
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    store = redis.Redis.from_url(redis_url)

    @app.task(name=BASELINE_TASK)
    def record_start(token: str) -> None:
        store.set(BASELINE_KEY_PREFIX + token, repr(time.time()))

    return app


def run_baseline_worker(redis_url: str) -> None:
    baseline_celery(redis_url).worker_main(
        [
            "worker",
            "--pool=prefork",
            "--concurrency=1",
            f"--queues={BASELINE_QUEUE}",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


def _until(check: Callable[[], Any], what: str, timeout: float = JOB_TIMEOUT_S) -> Any:
    """Call ``check`` every ``POLL_INTERVAL_S`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(POLL_INTERVAL_S)
    raise RuntimeError(f"Timed out after {timeout}s waiting for {what}.")


def measure_baseline(redis_url: str, jobs: int) -> list[float]:
    """Seconds from calling ``send_task`` to the task starting, one task at a time."""
    import redis

    app = baseline_celery(redis_url)
    store = redis.Redis.from_url(redis_url)
    latencies = []
    for index in range(WARM_UP_JOBS + jobs):
        time.sleep(IDLE_BEFORE_SUBMIT_S)
        token = f"{os.getpid()}-{index}"
        sent = time.time()
        app.send_task(BASELINE_TASK, args=[token], queue=BASELINE_QUEUE)
        started = _until(partial(store.get, BASELINE_KEY_PREFIX + token), "the baseline task")
        if index >= WARM_UP_JOBS:
            latencies.append(float(started) - sent)
    return latencies


# --- The service side ---------------------------------------------------------------------------


def _upload_models(http: httpx.Client) -> list[str]:
    import torch
    from safetensors.torch import save

    ids = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        layers = [torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)]
        state = torch.nn.Sequential(*layers).state_dict()
        content = save({name: value.contiguous() for name, value in state.items()})
        uploaded = http.post(
            "/v1/checkpoints",
            files={"file": ("model.safetensors", io.BytesIO(content))},
            data={"arch": json.dumps({"name": "mlp", "widths": MODEL_WIDTHS})},
        )
        uploaded.raise_for_status()
        ids.append(str(uploaded.json()["id"]))
    return ids


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def submit_and_follow(http: httpx.Client, body: dict[str, Any]) -> dict[str, float]:
    """Submit one job, follow it until it succeeded; its latencies in seconds."""
    posted = time.time()
    response = http.post("/v1/jobs", json=body)
    returned = time.time()
    response.raise_for_status()
    job_id = response.json()["id"]

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    job = _until(finished, f"job {job_id}")
    if job["status"] != "succeeded":
        raise RuntimeError(f"Job {job_id} ended {job['status']}: {job['error']}")
    started = _timestamp(job["started_at"])
    return {
        "submit_to_running": started - posted,
        "answered_to_running": started - returned,
        "created_to_running": started - _timestamp(job["created_at"]),
        "post_round_trip": returned - posted,
    }


def start_service(servers: ServerGroup, work_dir: Path) -> tuple[Server, str]:
    """Empty stores, migrate, a key, then ``llfc api`` and ``llfc worker``."""
    reset_postgres(POSTGRES_URL)
    flush_redis(REDIS_URL)
    env = benchmark_env(
        work_dir / "data",
        LLFC_DATABASE_URL=POSTGRES_URL,
        LLFC_BROKER_URL=REDIS_URL,
        LLFC_AUTH="on",
        LLFC_SECRET_KEY=BENCH_SECRET_KEY,
    )
    run_llfc("migrate", env=env)
    key = create_key("bench", env)
    port = free_port()
    api = servers.start_llfc("llfc-api", ["api", "--port", str(port)], env, port)
    servers.start_llfc("llfc-worker", ["worker"], env)
    api.wait_ready("/readyz")
    return api, key


def measure_service(api: Server, key: str, jobs: int) -> list[dict[str, float]]:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=str(api.base_url), headers=headers, timeout=30) as http:
        model_a, model_b = _upload_models(http)
        body = {
            "kind": "interpolate",
            "model_a": model_a,
            "model_b": model_b,
            "params": {"alpha": 0.5},
        }
        measured = []
        for index in range(WARM_UP_JOBS + jobs):
            time.sleep(IDLE_BEFORE_SUBMIT_S)
            latencies = submit_and_follow(http, body)
            if index >= WARM_UP_JOBS:
                measured.append(latencies)
    return measured


def summary_ms(seconds: list[float]) -> dict[str, float]:
    """Median, 90th percentile, extremes and mean, in milliseconds."""
    ordered = sorted(seconds)

    def at(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1e3, 2)

    return {
        "p50_ms": round(statistics.median(ordered) * 1e3, 2),
        "p90_ms": at(0.9),
        "min_ms": round(ordered[0] * 1e3, 2),
        "max_ms": round(ordered[-1] * 1e3, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1e3, 2),
    }


def run(size: str, work_dir: Path) -> dict[str, Any]:
    jobs = JOBS[size]
    with server_group(work_dir) as servers:
        api, key = start_service(servers, work_dir)
        load = machine_load()
        service = measure_service(api, key, jobs)
        servers.stop_all()
        command = [sys.executable, __file__, "--baseline-worker", REDIS_URL]
        servers.start("baseline-worker", command, os.environ)
        baseline = measure_baseline(REDIS_URL, jobs)
    submitted = summary_ms([job["submit_to_running"] for job in service])
    ours: dict[str, Any] = {
        **load,
        **submitted,
        "answered_to_running": summary_ms([job["answered_to_running"] for job in service]),
        "created_to_running": summary_ms([job["created_to_running"] for job in service]),
        "post_round_trip": summary_ms([job["post_round_trip"] for job in service]),
    }
    baseline_summary = summary_ms(baseline)
    return {
        "benchmark": "service_latency",
        "size": size,
        "jobs": jobs,
        "job": {"kind": "interpolate", "arch": {"name": "mlp", "widths": MODEL_WIDTHS}},
        "server": "llfc api (auth on) + llfc worker (prefork, 1 child), PostgreSQL, Redis",
        "measure": "started_at minus the moment the client sent POST /v1/jobs",
        "ours": ours,
        "baseline": {
            "what": "a bare Celery task on the same Redis with the same delivery settings, "
            "recording its start; from calling send_task to the task starting",
            **baseline_summary,
        },
        "ratio_p50": round(submitted["p50_ms"] / max(baseline_summary["p50_ms"], 0.01), 2),
        "targets": TARGETS,
        "meets_targets": {"p50_ms": submitted["p50_ms"] < TARGETS["p50_ms"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(JOBS), default="full")
    parser.add_argument("--baseline-worker", metavar="REDIS_URL")
    args = parser.parse_args()
    if args.baseline_worker:
        run_baseline_worker(args.baseline_worker)
        return
    if not (reachable(5432) and reachable(6379)):
        parser.error("this benchmark needs PostgreSQL and Redis on 127.0.0.1 (5432, 6379)")
    with tempfile.TemporaryDirectory(prefix="llfc-latency-bench-") as work_dir:
        emit(run(args.size, Path(work_dir)))


if __name__ == "__main__":
    main()
