"""Service sweep: one ``sweep`` job of 6 models against the 15 ``analyze`` jobs of its pairs.

Workload: six MLPs trained on digits in this process (``full``: 64-256-256-10, 6 epochs each;
``tiny``: 64-32-10, 1 epoch), uploaded as safetensors to a real ``llfc serve`` (embedded mode:
SQLite, the filesystem broker, one prefork worker child), analysed on the digits test split
(360 examples) with weight matching and the default alphas, as a lab would compare its seeds.

Ours: a ``sweep`` job of the six. Baseline: the 15 ``analyze`` jobs of the same pairs (A = the
first of the pair in the sweep's order) with the same params, all submitted at once. Each side's
time is its wall time from the first submission to the last job seen succeeded (polled every
0.1 s), so it spans what a lab waits for: the queue, each job's claim, inputs, analysis and
stored result; the sum of the jobs' own ``finished_at - started_at`` is reported beside it. The
two sides alternate, ``repeats`` times after one warm-up analyze job. The worker's torch runs
``--threads`` threads (default 1): on the shared 2-core development machine, two threads spin
against the other load and an analysis then takes 3 to 20 times longer from one run to the next,
which drowns what is measured here. Before any time is
recorded, the sweep's matrices are checked against the 15 jobs' own numbers, and each pair's
stored analysis against its job's whole result: equal to the last bit, or the run fails.

    PYTHONPATH=tests python benchmarks/service_sweep.py [--size tiny|full] [--repeats N]
        [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from measure import emit
from safetensors.torch import save_file
from service_servers import benchmark_env, free_port, machine_load, server_group

from llfc_core.analysis.sweep import sweep_pairs
from llfc_core.archs import parse_arch
from llfc_core.data import digits
from llfc_core.training import TrainConfig, train_modes
from llfc_results import AnalysisResult
from llfc_results.sweep import pair_metrics

WORKLOADS: dict[str, dict[str, Any]] = {
    "full": {"widths": [64, 256, 256, 10], "epochs": 6, "repeats": 3},
    "tiny": {"widths": [64, 32, 10], "epochs": 1, "repeats": 1},
}
NUM_MODELS = 6
PARAMS = {"match": "weight", "split": "test"}
JOB_TIMEOUT_S = 900.0
POLL_INTERVAL_S = 0.1
TARGET_SPEEDUP = 1.5


def _upload_models(client: httpx.Client, widths: list[int], epochs: int, folder: Path) -> list[str]:
    """Train the six modes, write each as safetensors and upload it; their checkpoint ids."""
    arch_json = {"name": "mlp", "widths": widths}
    config = TrainConfig(epochs=epochs, seed=0)
    states = train_modes(parse_arch(arch_json), digits("train"), config, num_modes=NUM_MODELS)
    ids = []
    for index, state in enumerate(states):
        path = folder / f"model_{index}.safetensors"
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
        with path.open("rb") as file:
            answer = client.post(
                "/v1/checkpoints",
                files={"file": (path.name, file)},
                data={"arch": json.dumps(arch_json)},
            )
        answer.raise_for_status()
        ids.append(answer.json()["id"])
    return ids


def _run_jobs(
    client: httpx.Client, bodies: list[dict[str, Any]]
) -> tuple[float, list[dict[str, Any]]]:
    """Submit every body at once and wait for all; the wall seconds and the finished jobs."""
    start = time.perf_counter()
    job_ids = []
    for body in bodies:
        answer = client.post("/v1/jobs", json=body)
        answer.raise_for_status()
        job_ids.append(answer.json()["id"])
    finished: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while len(finished) < len(job_ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(job_ids) - len(finished)} jobs did not end in time")
        for job_id in job_ids:
            if job_id in finished:
                continue
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] == "succeeded":
                finished[job_id] = job
            elif job["status"] in ("failed", "cancelled"):
                raise RuntimeError(f"job {job_id} ended {job['status']}: {job['error']}")
        time.sleep(POLL_INTERVAL_S)
    return time.perf_counter() - start, [finished[job_id] for job_id in job_ids]


def _job_seconds(jobs: list[dict[str, Any]]) -> float:
    return sum(
        (
            datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
        ).total_seconds()
        for job in jobs
    )


def _check_equal(
    client: httpx.Client, sweep: dict[str, Any], analyses: list[dict[str, Any]]
) -> int:
    """Every matrix entry equals its pair's analyze job's number, and every stored pair its
    job's whole result; the number of entries compared."""
    matrices = sweep["result"]["matrices"]
    compared = 0
    for (a, b), job in zip(sweep_pairs(NUM_MODELS), analyses, strict=True):
        stored = client.get(f"/v1/jobs/{sweep['id']}/pairs/{a}/{b}").json()
        if stored != job["result"]:
            raise AssertionError(f"pair ({a}, {b}): the sweep's analysis differs from its job's")
        analysis = AnalysisResult.from_json(job["result"])
        for kind, pair in analysis.pairs.items():
            for metric, value in pair_metrics(pair).items():
                for i, j in ((a, b), (b, a)):
                    if matrices[kind][metric][i][j] != value:
                        raise AssertionError(f"{kind} {metric} [{i}][{j}] differs from its job's")
                    compared += 1
    return compared


def _summary(runs: list[float]) -> dict[str, Any]:
    return {
        "runs_s": [round(run, 3) for run in runs],
        "median_s": round(statistics.median(runs), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(WORKLOADS), default="full")
    parser.add_argument("--repeats", type=int, help="measured runs of each side")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the worker (OMP_NUM_THREADS)"
    )
    arguments = parser.parse_args()
    workload = WORKLOADS[arguments.size]
    repeats = arguments.repeats or workload["repeats"]
    with tempfile.TemporaryDirectory(prefix="llfc-service-sweep-") as temporary:
        folder = Path(temporary)
        port = free_port()
        env = benchmark_env(folder / "data", OMP_NUM_THREADS=str(arguments.threads))
        with server_group(folder) as group:
            server = group.start_llfc("serve", ["serve", "--port", str(port)], env, port)
            server.wait_ready()
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                models = _upload_models(client, workload["widths"], workload["epochs"], folder)
                common = {"dataset": "builtin:digits", "params": PARAMS}
                sweep_body = {"kind": "sweep", "models": models, **common}
                pair_bodies = [
                    {"kind": "analyze", "model_a": models[a], "model_b": models[b], **common}
                    for a, b in sweep_pairs(NUM_MODELS)
                ]
                # Warm-up: the worker child's first job pays for imports the others do not.
                _run_jobs(client, pair_bodies[:1])
                sweep_runs, separate_runs = [], []
                sweep_job_s, separate_job_s = [], []
                for _ in range(repeats):
                    seconds, [sweep] = _run_jobs(client, [sweep_body])
                    sweep_runs.append(seconds)
                    sweep_job_s.append(_job_seconds([sweep]))
                    seconds, analyses = _run_jobs(client, pair_bodies)
                    separate_runs.append(seconds)
                    separate_job_s.append(_job_seconds(analyses))
                    compared = _check_equal(client, sweep, analyses)
    ours, baseline = _summary(sweep_runs), _summary(separate_runs)
    speedup = baseline["median_s"] / ours["median_s"]
    emit(
        {
            "benchmark": "service_sweep",
            "size": arguments.size,
            "widths": workload["widths"],
            "models": NUM_MODELS,
            "pairs": len(pair_bodies),
            "params": PARAMS,
            "repeats": repeats,
            "worker_threads": arguments.threads,
            "ours": {**ours, "job_seconds_median": round(statistics.median(sweep_job_s), 3)},
            "baseline": {
                **baseline,
                "job_seconds_median": round(statistics.median(separate_job_s), 3),
            },
            "entries_compared_equal": compared,
            "speedup_median": round(speedup, 3),
            "target_speedup": TARGET_SPEEDUP,
            "met": speedup >= TARGET_SPEEDUP,
            "machine": machine_load(),
        }
    )


if __name__ == "__main__":
    main()
