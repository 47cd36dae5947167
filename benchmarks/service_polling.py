"""Service polling: ``GET /v1/jobs/{id}`` under 32 concurrent keep-alive clients.

Workload: one queued ``interpolate`` job (small MLPs; no worker runs, so it stays queued and
every answer carries ``Retry-After``, like the polls of a job in progress), read over and over
with its owner's API key by 32 connections for a fixed time, against ``llfc api`` with auth on:

- ``postgres``: PostgreSQL at ``postgresql+psycopg://postgres@127.0.0.1:5432/llfc_bench``
  (emptied and migrated first), the production shape;
- ``sqlite``: the embedded mode's SQLite file and filesystem broker (what ``llfc serve`` runs,
  without its worker, idle here anyway).

Baseline, in the same run, measured right after each mode: a trivial FastAPI app in this file,
served by uvicorn with the same settings, whose sync ``GET /v1/jobs/{id}`` returns the same job
JSON as a constant.

Load generator: ``wrk`` (C, one thread, a Lua script for the Bearer header and a JSON summary)
when it is on the PATH, else an asyncio client in this process with raw keep-alive HTTP/1.1
connections. Each side is warmed up, then measured; a record per database reports requests/s,
latency percentiles, the ratio to the baseline, whether every answer was 200, and the server's
CPU time per request (user + system of the server's processes, ``/proc/<pid>/stat``), which the
machine's other load changes far less than requests/s or p99. ``--api-workers N`` runs ours
with ``LLFC_API_WORKERS=N`` and the baseline with as many uvicorn processes.

    PYTHONPATH=tests python benchmarks/service_polling.py [--size tiny|full]
        [--modes postgres,sqlite] [--load-generator auto|wrk|python] [--api-workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from measure import emit
from service_servers import (
    BENCH_SECRET_KEY,
    POSTGRES_URL,
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

CONNECTIONS = 32
DURATIONS_S = {"full": {"warm_up": 3.0, "measure": 15.0}, "tiny": {"warm_up": 0.5, "measure": 1.0}}
TARGETS = {"requests_per_s": 1000.0, "p99_ms": 50.0}
MODES = ("postgres", "sqlite")
MODEL_WIDTHS = [8, 4, 2]
POSTGRES_PORT = 5432

WRK_SCRIPT = """
wrk.headers["Authorization"] = "Bearer %(key)s"
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %%d, "duration_s": %%.6f, "non_2xx": %%d, "socket_errors": %%d, '
    .. '"mean_ms": %%.3f, "p50_ms": %%.3f, "p90_ms": %%.3f, "p99_ms": %%.3f, "max_ms": %%.3f}\\n',
    summary.requests, summary.duration / 1e6, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency.mean / 1e3, latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3))
end
"""


# --- The baseline server ------------------------------------------------------------------------


BASELINE_JOB_VARIABLE = "LLFC_BENCH_BASELINE_JOB"


def baseline_app() -> Any:
    """A FastAPI app whose ``GET /v1/jobs/{job_id}`` returns the job JSON of the file named by
    ``$LLFC_BENCH_BASELINE_JOB`` (an app factory, so uvicorn can start it in every worker)."""
    from fastapi import FastAPI

    job = json.loads(Path(os.environ[BASELINE_JOB_VARIABLE]).read_text())
    app = FastAPI()

    @app.get("/v1/jobs/{job_id}")
    def read_job(job_id: str) -> dict[str, Any]:
        return job

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve_baseline(port: int, job_path: Path, workers: int) -> None:
    """Serve :func:`baseline_app` with uvicorn, in ``workers`` processes like ours."""
    import uvicorn

    os.environ[BASELINE_JOB_VARIABLE] = str(job_path)
    uvicorn.run(
        "service_polling:baseline_app",
        factory=True,
        app_dir=str(Path(__file__).parent),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        workers=workers,
    )


# --- Load generators ----------------------------------------------------------------------------


def wrk_load(url: str, key: str, seconds: float, script_dir: Path) -> dict[str, Any]:
    """``wrk`` with one thread and ``CONNECTIONS`` connections for ``seconds``."""
    script = script_dir / "bearer.lua"
    script.write_text(WRK_SCRIPT % {"key": key})
    done = subprocess.run(
        [
            "wrk",
            "--threads",
            "1",
            "--connections",
            str(CONNECTIONS),
            "--duration",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "--script",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


async def _client_loop(
    host: str, port: int, request: bytes, deadline: float, latencies: list[float]
) -> tuple[int, int]:
    """One keep-alive connection sending ``request`` until ``deadline``; returns the counts of
    answers other than 200 and of connection errors (after each, it connects again)."""
    failures = errors = 0
    while time.perf_counter() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            errors += 1
            await asyncio.sleep(0.01)
            continue
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if not head.startswith(b"HTTP/1.1 200"):
                    failures += 1
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()
    return failures, errors


def python_load(url: str, key: str, seconds: float) -> dict[str, Any]:
    """``CONNECTIONS`` asyncio connections for ``seconds``; the same summary as ``wrk_load``."""
    target = httpx.URL(url)
    request = (
        f"GET {target.raw_path.decode()} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
        f"Authorization: Bearer {key}\r\n\r\n"
    ).encode()
    latencies: list[float] = []

    async def run_all() -> list[tuple[int, int]]:
        deadline = time.perf_counter() + seconds
        loops = [
            _client_loop(str(target.host), int(target.port or 80), request, deadline, latencies)
            for _ in range(CONNECTIONS)
        ]
        return await asyncio.gather(*loops)

    started = time.perf_counter()
    counts = asyncio.run(run_all())
    duration = time.perf_counter() - started
    latencies.sort()

    def percentile(share: float) -> float:
        # Zero when nothing was answered, as wrk reports it; "requests" then says 0.
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(share * len(latencies)))] * 1e3

    return {
        "requests": len(latencies),
        "duration_s": duration,
        "non_2xx": sum(failures for failures, _ in counts),
        "socket_errors": sum(errors for _, errors in counts),
        "mean_ms": sum(latencies) / max(len(latencies), 1) * 1e3,
        "p50_ms": percentile(0.50),
        "p90_ms": percentile(0.90),
        "p99_ms": percentile(0.99),
        "max_ms": percentile(1.0),
    }


def load(generator: str, url: str, key: str, seconds: float, script_dir: Path) -> dict[str, Any]:
    """Requests/s and latency percentiles (ms) of ``GET url`` under ``CONNECTIONS`` clients."""
    summary = (
        wrk_load(url, key, seconds, script_dir)
        if generator == "wrk"
        else python_load(url, key, seconds)
    )
    return {
        "requests": summary["requests"],
        "requests_per_s": round(summary["requests"] / summary["duration_s"], 1),
        **{name: round(summary[name], 2) for name in ("mean_ms", "p50_ms", "p90_ms", "p99_ms")},
        "max_ms": round(summary["max_ms"], 2),
        "all_200": summary["non_2xx"] == 0 and summary["socket_errors"] == 0,
    }


def measure(
    server: Server,
    generator: str,
    url: str,
    key: str,
    durations: dict[str, float],
    script_dir: Path,
) -> dict[str, Any]:
    """Warm up (connections, caches, the thread pool), then measure.

    The warm-up uses the asyncio client whatever the generator: it waits for every answer
    before closing, whereas wrk stops with up to ``CONNECTIONS`` requests in flight, which the
    server would still be working through when the measurement starts.
    """
    load("python", url, key, durations["warm_up"], script_dir)
    busy_before = cpu_seconds(server.pid)
    measured = {**machine_load(), **load(generator, url, key, durations["measure"], script_dir)}
    busy = cpu_seconds(server.pid) - busy_before
    # CPU time per answer does not depend on how busy the machine was: with one Python
    # process per core (one GIL each), 1,000 / cpu_ms_per_request bounds requests/s per core.
    measured["server_cpu_ms_per_request"] = round(busy / max(measured["requests"], 1) * 1e3, 3)
    return measured


# --- The service side ---------------------------------------------------------------------------


def _queued_job(base_url: str, key: str) -> dict[str, Any]:
    """Upload two small MLPs and submit an interpolation that stays queued (no worker runs)."""
    import torch
    from safetensors.torch import save

    arch = {"name": "mlp", "widths": MODEL_WIDTHS}
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as http:
        ids = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            layers = [torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)]
            state = torch.nn.Sequential(*layers).state_dict()
            content = save({name: value.contiguous() for name, value in state.items()})
            uploaded = http.post(
                "/v1/checkpoints",
                files={"file": ("model.safetensors", io.BytesIO(content))},
                data={"arch": json.dumps(arch)},
            )
            uploaded.raise_for_status()
            ids.append(uploaded.json()["id"])
        body = {"kind": "interpolate", "model_a": ids[0], "model_b": ids[1], "params": {}}
        submitted = http.post("/v1/jobs", json=body)
        submitted.raise_for_status()
        job: dict[str, Any] = http.get(f"/v1/jobs/{submitted.json()['id']}").json()
    return job


def start_api(
    servers: ServerGroup, mode: str, work_dir: Path, api_workers: int
) -> tuple[Server, str]:
    """Migrate, create a key and start ``llfc api`` for ``mode``; returns the server and key."""
    settings = {
        "LLFC_AUTH": "on",
        "LLFC_SECRET_KEY": BENCH_SECRET_KEY,
        "LLFC_API_WORKERS": str(api_workers),
    }
    if mode == "postgres":
        reset_postgres(POSTGRES_URL)
        settings["LLFC_DATABASE_URL"] = POSTGRES_URL
    env = benchmark_env(work_dir / f"data-{mode}", **settings)
    run_llfc("migrate", env=env)
    key = create_key("bench", env)
    port = free_port()
    server = servers.start_llfc(f"llfc-api-{mode}", ["api", "--port", str(port)], env, port)
    server.wait_ready("/readyz")
    return server, key


def run(
    size: str, modes: list[str], generator: str, work_dir: Path, api_workers: int
) -> list[dict[str, Any]]:
    durations = DURATIONS_S[size]
    records = []
    with server_group(work_dir) as servers:
        baseline: Server | None = None
        for mode in modes:
            api, key = start_api(servers, mode, work_dir, api_workers)
            job = _queued_job(str(api.base_url), key)
            path = f"/v1/jobs/{job['id']}"
            if baseline is None:
                job_path = work_dir / "job.json"
                job_path.write_text(json.dumps(job))
                port = free_port()
                command = [
                    sys.executable,
                    __file__,
                    "--baseline-server",
                    str(port),
                    str(job_path),
                    "--api-workers",
                    str(api_workers),
                ]
                baseline = servers.start("baseline", command, os.environ, port)
                baseline.wait_ready()
            ours = measure(api, generator, f"{api.base_url}{path}", key, durations, work_dir)
            servers.stop(api)
            # Right after ours, so both see the machine as alike as it gets.
            baseline_result = measure(
                baseline, generator, f"{baseline.base_url}{path}", key, durations, work_dir
            )
            records.append(
                {
                    "benchmark": "service_polling",
                    "size": size,
                    "mode": mode,
                    "server": f"llfc api, auth on, {mode}",
                    "api_workers": api_workers,
                    "job_status": job["status"],
                    "connections": CONNECTIONS,
                    "seconds": durations["measure"],
                    "load_generator": generator,
                    "ours": ours,
                    "baseline": {
                        "what": "a trivial FastAPI app (uvicorn, same settings and number of "
                        "processes) whose sync GET /v1/jobs/{id} returns the same job JSON as a "
                        "constant",
                        **baseline_result,
                    },
                    "ratio_requests_per_s": round(
                        ours["requests_per_s"] / baseline_result["requests_per_s"], 3
                    ),
                    "targets": TARGETS,
                    "meets_targets": {
                        "requests_per_s": ours["requests_per_s"] >= TARGETS["requests_per_s"],
                        "p99_ms": ours["p99_ms"] < TARGETS["p99_ms"],
                    },
                }
            )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(DURATIONS_S), default="full")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    parser.add_argument("--load-generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--api-workers",
        type=int,
        default=1,
        help="API processes (LLFC_API_WORKERS), the baseline's too",
    )
    parser.add_argument("--baseline-server", nargs=2, metavar=("PORT", "JOB_JSON"))
    args = parser.parse_args()
    if args.baseline_server:
        port, job_path = args.baseline_server
        serve_baseline(int(port), Path(job_path), args.api_workers)
        return
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    if "postgres" in modes and not reachable(POSTGRES_PORT):
        parser.error("PostgreSQL is not running on 127.0.0.1:5432; pass --modes sqlite")
    generator = args.load_generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    with tempfile.TemporaryDirectory(prefix="llfc-polling-bench-") as work_dir:
        for record in run(args.size, modes, generator, Path(work_dir), args.api_workers):
            emit(record)


if __name__ == "__main__":
    main()
