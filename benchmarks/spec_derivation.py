"""Deriving a zoo model's permutation spec from its graph, proving it, and weight matching on it.

For each model: the seconds to trace the model and derive its spec (target: under 2 s on the CPU
for resnet50 and convnext_tiny), the seconds of the proof on random weights, and the size of
what was found (groups, hidden units, composite axes, axes left in place). Then weight matching
on two random initialisations of the first model: seconds, sweeps, and the share of the time
spent in the assignment solver (the floor: the products around it are the rest).

    python benchmarks/spec_derivation.py [--size tiny|full] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch
from measure import emit

from llfc_core.archs import parse_arch
from llfc_core.matching.assignment import maximise_assignment
from llfc_core.matching.weight import weight_matching
from llfc_core.symmetry import derive_symmetry
from llfc_core.symmetry.report import prove_arch

SIZES: dict[str, list[dict[str, Any]]] = {
    "full": [
        {"name": "torchvision", "model": "resnet50", "kwargs": {"num_classes": 1000}},
        {"name": "torchvision", "model": "convnext_tiny", "kwargs": {"num_classes": 1000}},
    ],
    "tiny": [
        {
            "name": "torchvision",
            "model": "resnet18",
            "kwargs": {"num_classes": 10},
            "input_shape": [3, 32, 32],
        },
        {
            "name": "timm",
            "model": "convnext_atto",
            "kwargs": {"num_classes": 10},
            "input_shape": [3, 32, 32],
        },
    ],
}
TARGET_SECONDS = 2.0


def _derivation_seconds(arch_json: dict[str, Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of building the library's model on the meta device, tracing it and
    deriving its spec."""
    arch = parse_arch(arch_json)
    times = []
    derived = None
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.device("meta"):
            model = arch.source_model()
        derived = derive_symmetry(model, arch.input_shape)
        times.append(time.perf_counter() - started)
    return statistics.median(times), derived


class _TimedSolver:
    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, score: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        columns = maximise_assignment(score)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return columns


def _weight_matching(arch_json: dict[str, Any]) -> dict[str, Any]:
    arch = parse_arch(arch_json)
    torch.manual_seed(0)
    state_a = arch.build().state_dict()
    state_b = arch.build().state_dict()
    solver = _TimedSolver()
    started = time.perf_counter()
    _, sweeps = weight_matching(arch.permutation_spec(), state_a, state_b, solver=solver)
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 3),
        "sweeps": sweeps,
        "solver_calls": solver.calls,
        "solver_seconds": round(solver.seconds, 3),
        "solver_share": round(solver.seconds / seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    parse_arch(SIZES["tiny"][0])  # imports and first traces outside the measurements
    for arch_json in SIZES[args.size]:
        seconds, derived = _derivation_seconds(arch_json, args.repeats)
        started = time.perf_counter()
        proof = prove_arch(parse_arch(arch_json))
        emit(
            {
                "benchmark": "spec_derivation",
                "size": args.size,
                "model": f"{arch_json['name']}/{arch_json['model']}",
                "derive_seconds": round(seconds, 3),
                "target_seconds": TARGET_SECONDS,
                "proof_seconds": round(time.perf_counter() - started, 3),
                "proof_relative_change": proof["relative_change"],
                "groups": len(derived.spec.perm_names),
                "hidden_units": sum(derived.sizes.values()),
                "composite_axes": len(derived.spec.composites),
                "unpermuted_axes": len(derived.unpermuted),
                "threads": torch.get_num_threads(),
            }
        )
    first = SIZES[args.size][0]
    emit(
        {
            "benchmark": "spec_derivation_weight_matching",
            "size": args.size,
            "model": f"{first['name']}/{first['model']}",
            **_weight_matching(first),
            "threads": torch.get_num_threads(),
        }
    )


if __name__ == "__main__":
    main()
