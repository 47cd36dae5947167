"""Commutativity matching against weight and activation matching on the same trained pairs.

For each pair (two modes trained on digits from seeds 0 and 1) and each method, B is matched on
the training split and the pair (A, matched B) analysed on the test split; one JSON line per
pair and method with what the poster's Condition II measures (``commutativity``: the mean over
weighted layers of d_rel(W_A H_A + W_B H_B, W_A H_B + W_B H_A)), the loss and error barriers,
the LLFC distance (mean over layers of cos_alpha at alpha = 0.5), the matching's seconds and, for
every method, Eq. (2) summed over layers per training example (``equation_two``: what
commutativity matching minimises). ``commutativity-from-identity`` starts the same descent from
the identity instead of weight matching's solution.

- ``mlp``: MLP 64-512-512-10 (tiny: 64-32-10);
- ``resnet-bn``: ResNet-8 with BatchNorm, width 0.5 (the tests' pair);
- ``vgg-no-bn``: VGG-11 without BatchNorm, width 0.125, 8x8 inputs.

    python benchmarks/matching_methods.py [--size tiny|full]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from measure import emit

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.archs.base import Architecture
from llfc_core.data import digits, fit_to_arch
from llfc_core.matching import match_models
from llfc_core.matching.commutativity import commutativity_matching
from llfc_core.models import load_model
from llfc_core.permutation import StateDict, apply_permutation, identity_permutation
from llfc_core.training import TrainConfig, train_modes

CPU = torch.device("cpu")
IMAGE = {"in_channels": 1, "input_size": 8}
PAIRS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "mlp": {"name": "mlp", "widths": [64, 512, 512, 10]},
        "resnet-bn": {"name": "resnet", "depth": 8, "width": 0.5, **IMAGE},
        "vgg-no-bn": {"name": "vgg", "depth": 11, "width": 0.125, "batch_norm": False, **IMAGE},
    },
    "tiny": {
        "mlp": {"name": "mlp", "widths": [64, 32, 10]},
        "resnet-bn": {"name": "resnet", "depth": 8, "width": 0.25, **IMAGE},
        "vgg-no-bn": {"name": "vgg", "depth": 11, "width": 0.0625, "batch_norm": False, **IMAGE},
    },
}
EPOCHS = {"full": 10, "tiny": 1}
EXAMPLES = {"full": None, "tiny": 128}
"""Training examples matched on and test examples analysed on (None: all of them)."""
METHODS = ("weight", "activation", "commutativity", "commutativity-from-identity")


def _matched(
    arch: Architecture, state_a: StateDict, state_b: StateDict, method: str, size: str
) -> StateDict:
    train = digits("train").limit(EXAMPLES[size])
    if method != "commutativity-from-identity":
        return match_models(arch, state_a, state_b, method, train, device=CPU).permuted_b
    spec = arch.permutation_spec()
    found = commutativity_matching(
        spec,
        load_model(arch, state_a, CPU),
        load_model(arch, state_b, CPU),
        fit_to_arch(arch, train),
        identity_permutation(spec, state_a),
        batch_size=256,
        device=CPU,
    )
    return apply_permutation(spec, found.permutation, state_b)


def _equation_two(arch: Architecture, state_a: StateDict, state_b: StateDict, size: str) -> float:
    """Eq. (2) per training example, measured as commutativity matching's objective at B as
    given (the identity start of a zero-sweep descent)."""
    spec = arch.permutation_spec()
    found = commutativity_matching(
        spec,
        load_model(arch, state_a, CPU),
        load_model(arch, state_b, CPU),
        fit_to_arch(arch, digits("train").limit(EXAMPLES[size])),
        identity_permutation(spec, state_a),
        batch_size=256,
        device=CPU,
        max_iter=0,
    )
    return found.objective_identity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(PAIRS), default="full")
    size = parser.parse_args().size
    for pair_name, arch_json in PAIRS[size].items():
        arch = parse_arch(arch_json)
        config = TrainConfig(epochs=EPOCHS[size], seed=0)
        state_a, state_b = train_modes(arch, digits("train"), config, device=CPU)
        for method in METHODS:
            started = time.perf_counter()
            matched_b = _matched(arch, state_a, state_b, method, size)
            seconds = time.perf_counter() - started
            test = digits("test").limit(EXAMPLES[size])
            pair = analyze_pair(
                arch, state_a, matched_b, test, AnalysisConfig(), device=CPU
            ).to_json()["pairs"]["naive"]
            emit(
                {
                    "benchmark": "matching_methods",
                    "pair": pair_name,
                    "method": method,
                    "commutativity": statistics.mean(pair["commutativity"]),
                    "equation_two": _equation_two(arch, state_a, matched_b, size),
                    "loss_barrier": pair["lmc"]["loss_barrier"],
                    "error_barrier": pair["lmc"]["error_barrier"],
                    "llfc_distance": statistics.mean(pair["llfc"]["cos_alpha"]["0.5"]),
                    "matching_seconds": seconds,
                }
            )


if __name__ == "__main__":
    main()
