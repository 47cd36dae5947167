"""scripts/gpu-smoke's dry run: the same steps on the CPU, CUDA-only checks skipped, no failure.

On a lent GPU the script runs as ``scripts/gpu-smoke`` (README, "GPU workers"); this keeps its
code from rotting where CI has no GPU, and holds its output to the form the README describes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu-smoke"
STEPS = [
    "fork safety",
    "per-child pinning",
    "versions",
    "engine jobs",
    "drift vs cpu",
    "determinism",
    "synchronisations",
    "memory and OOM",
    "device-side assert",
    "timings",
]
CUDA_ONLY = {"synchronisations", "device-side assert"}


def test_the_cpu_dry_run_passes_every_step_it_can_run() -> None:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["device"] == "cpu" and summary["passed"] is True
    statuses = {result["step"]: result["status"] for result in summary["results"]}
    assert list(statuses) == STEPS
    assert {step for step, status in statuses.items() if status == "SKIP"} == CUDA_ONLY
    # One line per step, its status first, as the JSON says.
    for result in summary["results"]:
        assert any(
            line.startswith(result["status"]) and result["step"] in line for line in lines
        ), result
    figures = {result["step"]: result["figure"] for result in summary["results"]}
    assert "A vs A exactly 0" in figures["drift vs cpu"]
    assert "lower 'batch_size' (it was 256)" in figures["memory and OOM"]
