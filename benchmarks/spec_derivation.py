"""Deriving a zoo model's permutation spec from its graph, proving it, and weight matching on it.

For each model: the seconds to trace the model and derive its spec (target: under 2 s on the CPU
for resnet50 and convnext_tiny), the seconds of the proof on random weights, and the size of
what was found (groups, hidden units, composite axes, axes left in place). Then weight matching
on two random initialisations of the first model: seconds, sweeps, and the share of the time
spent in the assignment solver (the floor: the products around it are the rest). The same for a
vision transformer (ViT-S/16 at full size), whose attention heads make nested permutations:
weight matching by heads and head dimensions, and then the orthogonal rotation of every head.

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
from llfc_core.matching.orthogonal import align_heads_orthogonally
from llfc_core.matching.weight import weight_distance, weight_matching, weight_objective
from llfc_core.permutation import apply_permutation, identity_permutation
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
TRANSFORMERS: dict[str, dict[str, Any]] = {
    "full": {"name": "timm", "model": "vit_small_patch16_224", "kwargs": {"num_classes": 1000}},
    "tiny": {
        "name": "timm",
        "model": "vit_tiny_patch16_224",
        "kwargs": {
            "img_size": 32,
            "patch_size": 8,
            "num_classes": 10,
            "embed_dim": 48,
            "depth": 2,
            "num_heads": 3,
        },
        "input_shape": [3, 32, 32],
    },
}
"""Derived and weight-matched after the models of SIZES, two random initialisations each."""
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
    spec = arch.permutation_spec()
    torch.manual_seed(0)
    state_a = arch.build().state_dict()
    state_b = arch.build().state_dict()
    solver = _TimedSolver()
    started = time.perf_counter()
    perm, sweeps = weight_matching(spec, state_a, state_b, solver=solver)
    seconds = time.perf_counter() - started
    record = {
        "seconds": round(seconds, 3),
        "sweeps": sweeps,
        "solver_calls": solver.calls,
        "solver_seconds": round(solver.seconds, 3),
        "solver_share": round(solver.seconds / seconds, 3),
        "nested_permutations": len(spec.nested),
        "weight_distance_before": round(
            weight_objective(spec, identity_permutation(spec, state_a), state_a, state_b), 2
        ),
        "weight_distance_after": round(weight_objective(spec, perm, state_a, state_b), 2),
    }
    if spec.nested:
        started = time.perf_counter()
        rotated = align_heads_orthogonally(spec, state_a, apply_permutation(spec, perm, state_b))
        record["orthogonal_seconds"] = round(time.perf_counter() - started, 3)
        record["weight_distance_orthogonal"] = round(weight_distance(spec, state_a, rotated), 2)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    parse_arch(SIZES["tiny"][0])  # imports and first traces outside the measurements
    for arch_json in [*SIZES[args.size], TRANSFORMERS[args.size]]:
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
                "nested_permutations": len(derived.spec.nested),
                "unpermuted_axes": len(derived.unpermuted),
                "threads": torch.get_num_threads(),
            }
        )
    for matched in (SIZES[args.size][0], TRANSFORMERS[args.size]):
        emit(
            {
                "benchmark": "spec_derivation_weight_matching",
                "size": args.size,
                "model": f"{matched['name']}/{matched['model']}",
                **_weight_matching(matched),
                "threads": torch.get_num_threads(),
            }
        )


if __name__ == "__main__":
    main()
