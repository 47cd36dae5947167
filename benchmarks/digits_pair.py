"""The paper's experiment at digits scale: LMC and LLFC of two MLPs before and after matching.

Trains two MLPs 64-512-512-512-10 on scikit-learn's digits from different seeds, analyses them
naive and after each matching method (weight, activation, commutativity, STE), each with the
LMC also measured under REPAIR, merges them (MergeMany's weight average, with and without REPAIR,
and feature averaging), and prints one JSON line per method and merge plus two Markdown tables
(the README's).

    python benchmarks/digits_pair.py [--epochs 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.archs.base import Architecture
from llfc_core.data import digits
from llfc_core.merging import merge_many
from llfc_core.merging.averaging import repair_step
from llfc_core.merging.evaluation import evaluate_merge
from llfc_core.permutation import StateDict
from llfc_core.training import TrainConfig, train_modes

WIDTHS = [64, 512, 512, 512, 10]
METHODS = ("weight", "activation", "commutativity", "ste")
CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    arch = parse_arch({"name": "mlp", "widths": WIDTHS})
    device = CPU
    started = time.perf_counter()
    state_a, state_b = train_modes(
        arch, digits("train"), TrainConfig(epochs=args.epochs, seed=args.seed)
    )
    train_seconds = time.perf_counter() - started

    rows = []
    for method in METHODS:
        started = time.perf_counter()
        result = analyze_pair(
            arch,
            state_a,
            state_b,
            digits("test"),
            AnalysisConfig(match=method, seed=args.seed, repair=("none", "repair")),
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
            **{
                f"{key}_{pair}_repair": result["pairs"][pair]["repairs"]["repair"]["lmc"][key]
                for key in ("loss_barrier", "error_barrier")
                for pair in ("naive", "matched")
            },
            "train_seconds": train_seconds,
            "analyze_seconds": seconds,
        }
        print(json.dumps(row))
        rows.append(row)

    merges = _merges(arch, [state_a, state_b], args.seed)
    for merge in merges:
        print(json.dumps(merge))
    _print_tables(rows, merges)


def _merges(arch: Architecture, states: list[StateDict], seed: int) -> list[dict[str, Any]]:
    """The pair merged three ways, each scored on the test split beside the unmatched average."""
    train, test = digits("train"), digits("test")
    merged = []
    for label, method, mode in (
        ("MergeMany weight average", "weight_average", "none"),
        ("MergeMany weight average + REPAIR", "weight_average", "repair"),
        ("feature average", "feature_average", "none"),
    ):
        started = time.perf_counter()
        repair = repair_step(arch, train, mode, batch_size=256, device=CPU)
        result = merge_many(arch, states, train, method=method, seed=seed, repair=repair)
        scores = evaluate_merge(arch, result, states, test, repair, batch_size=256, device=CPU)
        merged.append(
            {
                "merge": label,
                "loss": scores.merged.loss,
                "error": scores.merged.error,
                "naive_average_loss": scores.naive_average.loss,
                "naive_average_error": scores.naive_average.error,
                "seconds": time.perf_counter() - started,
            }
        )
    return merged


def _print_tables(rows: list[dict[str, Any]], merges: list[dict[str, Any]]) -> None:
    print()
    print("| quantity (mean over layers) | naive | " + " | ".join(METHODS) + " |")
    print("|---|---|" + "---|" * len(METHODS))
    for label, key in (
        ("loss barrier", "loss_barrier"),
        ("loss barrier, REPAIR", "loss_barrier_{}_repair"),
        ("error barrier", "error_barrier"),
        ("error barrier, REPAIR", "error_barrier_{}_repair"),
        ("LLFC E[1 - cos], alpha = 0.5", "llfc_0.5"),
        ("baseline E[1 - cos(A, B)]", "cos_ab"),
        ("Condition I (weak additivity), alpha = 0.5", "weak_additivity_0.5"),
        ("Condition II (commutativity)", "commutativity"),
    ):
        if "{}" in key:
            naive, matched = key.format("naive"), [key.format("matched")] * len(rows)
        else:
            naive, matched = key + "_naive", [key + "_matched"] * len(rows)
        cells = [f"{row[name]:.4f}" for row, name in zip(rows, matched, strict=True)]
        print(f"| {label} | {rows[0][naive]:.4f} | " + " | ".join(cells) + " |")
    print(f"\nendpoint test errors: A {rows[0]['error_a']:.4f}, B {rows[0]['error_b']:.4f}")
    print("\n| merged model (test split) | loss | error |")
    print("|---|---|---|")
    print(
        f"| unmatched average | {merges[0]['naive_average_loss']:.4f} "
        f"| {merges[0]['naive_average_error']:.4f} |"
    )
    for merge in merges:
        print(f"| {merge['merge']} | {merge['loss']:.4f} | {merge['error']:.4f} |")


if __name__ == "__main__":
    main()
