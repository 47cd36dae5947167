"""Weight matching time against width, and the share of it spent inside the assignment solver.

Weight matching alternates products (each permutation's cost matrix) and linear assignments; the
assignments alone are the floor, so the baseline of each run is the time its solver calls took
(target: total <= 1.5x that). Each width runs with scipy's ``linear_sum_assignment`` and with
``lap.lapjv`` (when the ``lap`` package is installed) on the same pair, reporting seconds, sweeps,
solver calls, the solver's share and whether both found the same permutation.

- ``mlp``: MLP 784-w-w-w-10 for w = 512, 1024, 2048, 4096 (8192 is left out of the full run: one
  sweep needs ~14 TFLOP of products, minutes per sweep on two cores);
- ``resnet``: ResNet-20 at width x1, x2, x4, x8, x16 (CIFAR-shaped).

Pairs are two random initialisations (seeded), as the analyses of untrained checkpoints see.

    python benchmarks/weight_matching.py [--size tiny|full] [--only mlp,resnet]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from measure import emit

from llfc_core.archs import parse_arch
from llfc_core.matching.assignment import (
    AssignmentSolver,
    lap_assignment,
    maximise_assignment,
    scipy_assignment,
)
from llfc_core.matching.weight import weight_matching

SIZES: dict[str, dict[str, list[dict[str, Any]]]] = {
    "full": {
        "mlp": [{"name": "mlp", "widths": [784, w, w, w, 10]} for w in (512, 1024, 2048, 4096)],
        "resnet": [{"name": "resnet", "depth": 20, "width": w} for w in (1, 2, 4, 8, 16)],
    },
    "tiny": {
        "mlp": [{"name": "mlp", "widths": [784, w, w, w, 10]} for w in (32, 64)],
        "resnet": [{"name": "resnet", "depth": 8, "width": w} for w in (1, 2)],
    },
}
TARGET_RATIO = 1.5


def _lap_available() -> bool:
    try:
        import lap  # noqa: F401
    except ImportError:
        return False
    return True


class _TimedSolver:
    """A solver that counts its calls and the seconds spent in them."""

    def __init__(self, solver: AssignmentSolver) -> None:
        self.solver = solver
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, score: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        columns = self.solver(score)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return columns


def _run(
    arch_json: dict[str, Any], solver: AssignmentSolver
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    arch = parse_arch(arch_json)
    torch.manual_seed(0)
    state_a = arch.build().state_dict()
    state_b = arch.build().state_dict()
    timed = _TimedSolver(solver)
    started = time.perf_counter()
    perm, sweeps = weight_matching(arch.permutation_spec(), state_a, state_b, solver=timed)
    seconds = time.perf_counter() - started
    return {
        "parameters": sum(tensor.numel() for tensor in state_a.values()),
        "seconds": round(seconds, 3),
        "sweeps": sweeps,
        "solver_calls": timed.calls,
        "solver_seconds": round(timed.seconds, 6),
        "solver_share": round(timed.seconds / seconds, 3),
        "total_over_solver": round(seconds / max(timed.seconds, 1e-9), 2),
    }, perm


def _solvers() -> dict[str, AssignmentSolver]:
    solvers: dict[str, AssignmentSolver] = {"scipy": scipy_assignment}
    if _lap_available():
        solvers["lap"] = lap_assignment
    return solvers


def _warm_up() -> None:
    """One small matching per solver first, so no measured run pays for imports and first calls."""
    for solver in _solvers().values():
        _run(SIZES["tiny"]["mlp"][0], solver)


def _measure(size: str, name: str, arch_json: dict[str, Any]) -> dict[str, Any]:
    solvers = _solvers()
    runs, perms = {}, {}
    for solver_name, solver in solvers.items():
        runs[solver_name], perms[solver_name] = _run(arch_json, solver)
    for run in runs.values():
        parameters = run.pop("parameters")
    default = "lap" if maximise_assignment is lap_assignment else "scipy"
    record: dict[str, Any] = {
        "benchmark": "weight_matching",
        "size": size,
        "model": name,
        "arch": arch_json,
        "state_tensor_values": parameters,
        "threads": torch.get_num_threads(),
        "default_solver": default,
        **runs,
        "target_total_over_solver": TARGET_RATIO,
    }
    if "lap" in runs:
        record["lap_speedup_over_scipy"] = round(
            runs["scipy"]["seconds"] / runs["lap"]["seconds"], 2
        )
        record["same_permutation"] = all(
            torch.equal(perms["scipy"][key], perms["lap"][key]) for key in perms["scipy"]
        )
    else:
        record["note"] = "the lap package is not installed: scipy only"
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--only", default="mlp,resnet", help="comma-separated models")
    args = parser.parse_args()
    _warm_up()
    for name in args.only.split(","):
        for arch_json in SIZES[args.size][name]:
            emit(_measure(args.size, name, arch_json))


if __name__ == "__main__":
    main()
