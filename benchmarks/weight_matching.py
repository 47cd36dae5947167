"""Weight matching time against width, and the share of it spent inside the assignment solver.

Weight matching alternates products (each permutation's cost matrix) and linear assignments; the
assignments alone are the floor, so the baseline of each run is the time its solver calls took
(target: total <= 1.5x that). Each width runs with scipy's ``linear_sum_assignment`` and with
``lap.lapjv`` on the same pair, reporting seconds, sweeps, solver calls, the solver's share and
whether both found the same permutation (then both solved the very same cost matrices).

- ``mlp``: MLP 784-w-w-w-10 for w = 512, 1024, 2048, 4096, or the widths ``--mlp-widths`` names.
  8192 is left out of the full run: at 4096 a run takes ~3 minutes per solver on two cores, and
  each doubling costs ~5x in the solver and 8x in the products, so 8192 would take ~15 minutes
  per solver;
- ``resnet``: ResNet-20 at width x1, x2, x4, x8, x16 (CIFAR-shaped).

Pairs are two random initialisations (seeded), as the analyses of untrained checkpoints see.

    python benchmarks/weight_matching.py [--size tiny|full] [--only mlp,resnet] [--mlp-widths 8192]
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


def _mlp(width: int) -> dict[str, Any]:
    return {"name": "mlp", "widths": [784, width, width, width, 10]}


SIZES: dict[str, dict[str, list[dict[str, Any]]]] = {
    "full": {
        "mlp": [_mlp(width) for width in (512, 1024, 2048, 4096)],
        "resnet": [{"name": "resnet", "depth": 20, "width": w} for w in (1, 2, 4, 8, 16)],
    },
    "tiny": {
        "mlp": [_mlp(width) for width in (32, 64)],
        "resnet": [{"name": "resnet", "depth": 8, "width": w} for w in (1, 2)],
    },
}
TARGET_RATIO = 1.5


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


SOLVERS: dict[str, AssignmentSolver] = {"scipy": scipy_assignment, "lap": lap_assignment}


def _warm_up() -> None:
    """One small matching per solver first, so no measured run pays for imports and first calls."""
    for solver in SOLVERS.values():
        _run(SIZES["tiny"]["mlp"][0], solver)


def _measure(size: str, name: str, arch_json: dict[str, Any]) -> dict[str, Any]:
    runs, perms = {}, {}
    for solver_name, solver in SOLVERS.items():
        runs[solver_name], perms[solver_name] = _run(arch_json, solver)
    for run in runs.values():
        parameters = run.pop("parameters")
    default = "lap" if maximise_assignment is lap_assignment else "scipy"
    return {
        "benchmark": "weight_matching",
        "size": size,
        "model": name,
        "arch": arch_json,
        "state_tensor_values": parameters,
        "threads": torch.get_num_threads(),
        "default_solver": default,
        **runs,
        "target_total_over_solver": TARGET_RATIO,
        "lap_speedup_over_scipy": round(runs["scipy"]["seconds"] / runs["lap"]["seconds"], 2),
        "same_permutation": all(
            torch.equal(perms["scipy"][key], perms["lap"][key]) for key in perms["scipy"]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--only", default="mlp,resnet", help="comma-separated models")
    parser.add_argument(
        "--mlp-widths", help="comma-separated hidden widths of the MLPs, instead of the size's"
    )
    args = parser.parse_args()
    models = {name: SIZES[args.size][name] for name in args.only.split(",")}
    if args.mlp_widths and "mlp" in models:
        models["mlp"] = [_mlp(int(width)) for width in args.mlp_widths.split(",")]
    _warm_up()
    for name, arch_jsons in models.items():
        for arch_json in arch_jsons:
            emit(_measure(args.size, name, arch_json))


if __name__ == "__main__":
    main()
