"""The paper's experiment at digits scale: LMC and LLFC of two MLPs before and after matching.

Trains two MLPs 64-512-512-512-10 on scikit-learn's digits from different seeds, analyses them
naive and after weight and after activation matching, and prints one JSON line per method plus a
Markdown table (the one in the README).

    python benchmarks/digits_pair.py [--epochs 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.data import digits
from llfc_core.training import TrainConfig, train_modes

WIDTHS = [64, 512, 512, 512, 10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    arch = parse_arch({"name": "mlp", "widths": WIDTHS})
    device = torch.device("cpu")
    started = time.perf_counter()
    state_a, state_b = train_modes(
        arch, digits("train"), TrainConfig(epochs=args.epochs, seed=args.seed)
    )
    train_seconds = time.perf_counter() - started

    rows = []
    for method in ("weight", "activation"):
        started = time.perf_counter()
        result = analyze_pair(
            arch,
            state_a,
            state_b,
            digits("test"),
            AnalysisConfig(match=method, seed=args.seed),
            train_dataset=digits("train"),
            device=device,
        ).to_json()
        seconds = time.perf_counter() - started
        naive, matched = result["pairs"]["naive"], result["pairs"]["matched"]
        row = {
            "method": method,
            "error_a": result["endpoints"]["a"]["error"],
            "error_b": result["endpoints"]["b"]["error"],
            "loss_barrier_naive": naive["lmc"]["loss_barrier"],
            "loss_barrier_matched": matched["lmc"]["loss_barrier"],
            "error_barrier_naive": naive["lmc"]["error_barrier"],
            "error_barrier_matched": matched["lmc"]["error_barrier"],
            "llfc_0.5_naive": statistics.mean(naive["llfc"]["cos_alpha"]["0.5"]),
            "llfc_0.5_matched": statistics.mean(matched["llfc"]["cos_alpha"]["0.5"]),
            "cos_ab_naive": statistics.mean(naive["llfc"]["cos_ab"]),
            "cos_ab_matched": statistics.mean(matched["llfc"]["cos_ab"]),
            "weak_additivity_0.5_naive": statistics.mean(naive["weak_additivity"]["0.5"]),
            "weak_additivity_0.5_matched": statistics.mean(matched["weak_additivity"]["0.5"]),
            "commutativity_naive": statistics.mean(naive["commutativity"]),
            "commutativity_matched": statistics.mean(matched["commutativity"]),
            "train_seconds": train_seconds,
            "analyze_seconds": seconds,
        }
        print(json.dumps(row))
        rows.append(row)

    print()
    print("| quantity (mean over layers) | naive | weight matching | activation matching |")
    print("|---|---|---|---|")
    weight, activation = rows
    for label, key in (
        ("loss barrier", "loss_barrier"),
        ("error barrier", "error_barrier"),
        ("LLFC E[1 - cos], alpha = 0.5", "llfc_0.5"),
        ("baseline E[1 - cos(A, B)]", "cos_ab"),
        ("Condition I (weak additivity), alpha = 0.5", "weak_additivity_0.5"),
        ("Condition II (commutativity)", "commutativity"),
    ):
        print(
            f"| {label} | {weight[key + '_naive']:.4f} | {weight[key + '_matched']:.4f} "
            f"| {activation[key + '_matched']:.4f} |"
        )
    print(f"\nendpoint test errors: A {weight['error_a']:.4f}, B {weight['error_b']:.4f}")


if __name__ == "__main__":
    main()
