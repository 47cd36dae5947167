"""Service path: an analyze job run through ``llfc serve`` against ``analyze_pair`` in one process.

Workload: the default analysis (11 LMC alphas, 3 LLFC alphas, every metric, no matching) of two
randomly initialised MLPs on synthetic examples (``full``: 784-512-512-512-10 over 10,000
examples, the structure issue's workload; ``tiny``: 784-64-64-64-10 over 300). The two state
dicts are saved as safetensors files and the examples as an uncompressed ``.npz`` (``x`` float32,
``y`` int64), then uploaded to a real ``llfc serve`` (embedded mode: SQLite, the filesystem
broker, one prefork worker child) through ``POST /v1/checkpoints`` and ``POST /v1/datasets``.

Ours: ``finished_at - started_at`` of an ``analyze`` job (``params.match = "none"``), as the
job's row records it: from the worker's claim to the commit of its result, so it spans reading
the checkpoints and the dataset, the analysis, progress writes, and storing the result and its
metric rows; the queue and the HTTP polling are outside it. Baseline, in the same run: this
process calls ``analyze_pair`` with the same config on the same state dicts and examples, held
in memory. The two sides alternate (a job, then an in-process run, ``repeats`` times after one
warm-up of each), so load on the shared machine weighs on both alike; the record carries each
side's runs, their medians, the ratio of medians (the issue's target: at most 1.2) and the
median of each job's ratio to the in-process run that followed it.

    PYTHONPATH=tests python benchmarks/service_path.py [--size tiny|full] [--repeats N]
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
import numpy as np
import torch
from measure import emit
from safetensors.torch import load_file, save_file
from service_servers import benchmark_env, free_port, machine_load, server_group

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.data import ArrayDataset, SyntheticDataset

WORKLOADS: dict[str, dict[str, Any]] = {
    "full": {"widths": [784, 512, 512, 512, 10], "examples": 10_000, "repeats": 5},
    "tiny": {"widths": [784, 64, 64, 64, 10], "examples": 300, "repeats": 1},
}
JOB_TIMEOUT_S = 600.0
POLL_INTERVAL_S = 0.25
"""Polls cost the API CPU that the worker shares on a small machine; the row's timestamps do
not depend on when the job is seen finished."""
TARGET_RATIO = 1.2


def _inputs(
    widths: list[int], examples: int, folder: Path
) -> tuple[dict[str, Any], dict[str, Path], ArrayDataset]:
    """The arch, two random modes written as safetensors, and the examples written as an
    ``.npz``; returns the arch JSON, the files and the examples as the engine reads them."""
    arch_json = {"name": "mlp", "widths": widths}
    arch = parse_arch(arch_json)
    torch.manual_seed(0)
    files = {side: folder / f"model_{side}.safetensors" for side in ("a", "b")}
    for path in files.values():
        save_file(arch.build().state_dict(), str(path))
    stream = SyntheticDataset(examples, arch.input_shape, arch.num_classes, seed=1)
    x, y = (torch.cat(part) for part in zip(*stream.batches(512), strict=True))
    files["dataset"] = folder / "examples.npz"
    np.savez(files["dataset"], x=x.numpy(), y=y.numpy())
    return arch_json, files, ArrayDataset(x, y, "synthetic")


def _upload(
    client: httpx.Client, arch_json: dict[str, Any], files: dict[str, Path]
) -> dict[str, str]:
    ids = {}
    for side in ("a", "b"):
        with files[side].open("rb") as file:
            answer = client.post(
                "/v1/checkpoints",
                files={"file": (files[side].name, file)},
                data={"arch": json.dumps(arch_json)},
            )
        answer.raise_for_status()
        ids[side] = answer.json()["id"]
    with files["dataset"].open("rb") as file:
        answer = client.post("/v1/datasets", files={"file": ("examples.npz", file)})
    answer.raise_for_status()
    ids["dataset"] = answer.json()["id"]
    return ids


def _service_seconds(client: httpx.Client, ids: dict[str, str]) -> float:
    """Run one analyze job to its end; its ``finished_at - started_at`` in seconds."""
    body = {
        "kind": "analyze",
        "model_a": ids["a"],
        "model_b": ids["b"],
        "dataset": ids["dataset"],
        "params": {"match": "none"},
    }
    answer = client.post("/v1/jobs", json=body)
    answer.raise_for_status()
    job_id = answer.json()["id"]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "succeeded":
            started = datetime.fromisoformat(job["started_at"])
            finished = datetime.fromisoformat(job["finished_at"])
            return (finished - started).total_seconds()
        if job["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} ended {job['status']}: {job['error']}")
        time.sleep(POLL_INTERVAL_S)
    raise RuntimeError(f"job {job_id} did not end within {JOB_TIMEOUT_S} s")


def _engine_seconds(arch_json: dict[str, Any], data: ArrayDataset, files: dict[str, Path]) -> float:
    """One ``analyze_pair`` in this process on the same modes and examples, in memory."""
    arch = parse_arch(arch_json)
    state_a, state_b = load_file(str(files["a"])), load_file(str(files["b"]))
    config = AnalysisConfig(match="none")
    start = time.perf_counter()
    analyze_pair(arch, state_a, state_b, data, config, device=torch.device("cpu"))
    return time.perf_counter() - start


def _summary(runs: list[float]) -> dict[str, Any]:
    return {
        "runs_s": [round(run, 4) for run in runs],
        "median_s": round(statistics.median(runs), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(WORKLOADS), default="full")
    parser.add_argument("--repeats", type=int, help="measured runs of each side")
    arguments = parser.parse_args()
    workload = WORKLOADS[arguments.size]
    repeats = arguments.repeats or workload["repeats"]
    with tempfile.TemporaryDirectory(prefix="llfc-service-path-") as temporary:
        folder = Path(temporary)
        arch_json, files, data = _inputs(workload["widths"], workload["examples"], folder)
        port = free_port()
        env = benchmark_env(folder / "data")
        with server_group(folder) as group:
            server = group.start_llfc("serve", ["serve", "--port", str(port)], env, port)
            server.wait_ready()
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                ids = _upload(client, arch_json, files)
                # Warm-ups: the worker child's first job and this process's first analysis pay
                # for imports and first-touch allocations that later runs do not.
                _service_seconds(client, ids)
                _engine_seconds(arch_json, data, files)
                service_runs, engine_runs = [], []
                for _ in range(repeats):
                    service_runs.append(_service_seconds(client, ids))
                    engine_runs.append(_engine_seconds(arch_json, data, files))
    ours, baseline = _summary(service_runs), _summary(engine_runs)
    ratio = ours["median_s"] / baseline["median_s"]
    # Each job and the in-process run after it share the machine's load of that moment, so the
    # median of their ratios is the steadier figure when other work comes and goes.
    paired = statistics.median(s / e for s, e in zip(service_runs, engine_runs, strict=True))
    emit(
        {
            "benchmark": "service_path",
            "size": arguments.size,
            "arch": arch_json,
            "examples": workload["examples"],
            "repeats": repeats,
            "ours": ours,
            "baseline": baseline,
            "ratio_median": round(ratio, 3),
            "ratio_paired_median": round(paired, 3),
            "target_ratio": TARGET_RATIO,
            "met": ratio <= TARGET_RATIO,
            "machine": machine_load(),
        }
    )


if __name__ == "__main__":
    main()
