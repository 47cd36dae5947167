"""Helpers for the end-to-end tests: HTTP clients, small models, jobs (the `llfc` processes
themselves are started with support.servers)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as safetensors_bytes
from torch import nn

from support.servers import Process

FINISHED = ("succeeded", "failed", "cancelled")


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids of this user's processes whose environment has ``name=value``."""
    wanted = f"{name}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def client(base_url: str, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=60)


# --- Models and data ---------------------------------------------------------------------------


def mlp_arch(widths: list[int]) -> dict[str, Any]:
    return {"name": "mlp", "widths": widths}


def mlp_model(widths: list[int], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for index in range(len(widths) - 1):
        layers.append(nn.Linear(widths[index], widths[index + 1]))
        if index < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mlp_state(widths: list[int], seed: int) -> dict[str, torch.Tensor]:
    return dict(mlp_model(widths, seed).state_dict())


def torch_file(state: Mapping[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def safetensors_file(state: Mapping[str, torch.Tensor]) -> bytes:
    return safetensors_bytes({key: value.contiguous() for key, value in state.items()})


def read_safetensors(data: bytes) -> dict[str, torch.Tensor]:
    return load_safetensors_bytes(data)


def upload_checkpoint(
    http: httpx.Client,
    content: bytes,
    arch: Mapping[str, Any],
    filename: str = "model.pt",
    name: str | None = None,
    key_map: str | None = None,
) -> httpx.Response:
    data = {"arch": json.dumps(arch)}
    if name is not None:
        data["name"] = name
    if key_map is not None:
        data["key_map"] = key_map
    return http.post("/v1/checkpoints", files={"file": (filename, content)}, data=data)


def upload_mlp(http: httpx.Client, widths: list[int], seed: int) -> str:
    response = upload_checkpoint(http, torch_file(mlp_state(widths, seed)), mlp_arch(widths))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def submit(http: httpx.Client, body: Mapping[str, Any], **headers: str) -> httpx.Response:
    return http.post("/v1/jobs", json=dict(body), headers=headers)


def wait_for_job(
    http: httpx.Client, job_id: str, statuses: tuple[str, ...] = FINISHED, timeout: float = 180
) -> dict[str, Any]:
    """Poll the job until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"Job {job_id} still {job['status']} after {timeout}s: {job}")
        time.sleep(0.2)


def run_job(http: httpx.Client, body: Mapping[str, Any]) -> dict[str, Any]:
    """Submit a job and wait until it succeeded."""
    response = submit(http, body)
    assert response.status_code == 202, response.text
    job = wait_for_job(http, response.json()["id"])
    assert job["status"] == "succeeded", job
    return job


LONG_ANALYZE_WIDTHS = [64, 1024, 1024, 10]
"""Wide enough that an analysis over 101 alphas runs for minutes on two CPU cores: long enough
to be caught running and cancelled (it never runs to its end in the tests)."""


def long_analyze_body(model_a: str, model_b: str) -> dict[str, Any]:
    return {
        "kind": "analyze",
        "model_a": model_a,
        "model_b": model_b,
        "dataset": "builtin:digits",
        "params": {
            "alphas": [i / 100 for i in range(101)],
            "llfc_alphas": [i / 20 for i in range(1, 20)],
            "split": "train",
            "batch_size": 16,
        },
    }


MAX_UPLOAD_BYTES = 16 * 1024 * 1024
"""The upload cap of the shared embedded service of these tests."""


@dataclass
class EmbeddedService:
    """The session's `llfc serve`: where it listens, its data folder, its owners' keys."""

    base_url: str
    data_dir: Path
    keys: dict[str, str]
    process: Process
