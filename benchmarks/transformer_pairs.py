"""LMC and LLFC of two transformers trained from different seeds: naive, after weight and after
activation matching (heads and head dimensions by nested permutations), and after weight
matching with orthogonal maps within each head.

A vision transformer (timm's ViT, 2 blocks of 4 heads, patches of 4x4) on scikit-learn's
digits, and a GPT-2 decoder (Hugging Face's, 2 blocks of 4 heads) on the built-in Markov token
task (next-token loss and error).
Prints one JSON line per pair and method, then the README's Markdown table.

    python benchmarks/transformer_pairs.py [--pairs gpt2 vit] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.data import Dataset, digits, load_builtin
from llfc_core.training import TrainConfig, train_modes

VIT_DIGITS: dict[str, Any] = {
    "name": "timm",
    "model": "vit_tiny_patch16_224",
    "kwargs": {
        "img_size": 8,
        "patch_size": 4,
        "in_chans": 1,
        "num_classes": 10,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 4,
    },
}
METHODS = (
    ("weight", "permutation"),
    ("activation", "permutation"),
    ("weight", "orthogonal"),
)


GPT2_MARKOV: dict[str, Any] = {
    "name": "transformers",
    "model": "gpt2",
    "config": {"vocab_size": 16, "n_positions": 16, "n_embd": 32, "n_layer": 2, "n_head": 4},
}


@dataclass(frozen=True)
class Pair:
    name: str
    arch: dict[str, Any]
    train: Dataset
    test: Dataset
    epochs: int


def vit_pair() -> Pair:
    return Pair("vit", VIT_DIGITS, digits("train"), digits("test"), epochs=10)


def gpt2_pair() -> Pair:
    return Pair(
        "gpt2", GPT2_MARKOV, load_builtin("markov", "train"), load_builtin("markov", "test"), 3
    )


PAIRS = {"vit": vit_pair, "gpt2": gpt2_pair}


def measure(pair: Pair, seed: int) -> list[dict[str, Any]]:
    arch = parse_arch(pair.arch)
    config = TrainConfig(
        epochs=pair.epochs, seed=seed, batch_size=64, lr=3e-3, weight_decay=0.0, optimizer="adamw"
    )
    started = time.perf_counter()
    state_a, state_b = train_modes(arch, pair.train, config, device=torch.device("cpu"))
    train_seconds = time.perf_counter() - started
    rows = []
    for method, symmetry in METHODS:
        started = time.perf_counter()
        result = analyze_pair(
            arch,
            state_a,
            state_b,
            pair.test,
            AnalysisConfig(match=method, symmetry=symmetry, seed=seed),
            train_dataset=pair.train,
            device=torch.device("cpu"),
        ).to_json()
        naive, matched = result["pairs"]["naive"], result["pairs"]["matched"]
        rows.append(
            {
                "pair": pair.name,
                "method": method if symmetry == "permutation" else f"{method}+{symmetry}",
                "error_a": result["endpoints"]["a"]["error"],
                "error_b": result["endpoints"]["b"]["error"],
                "loss_barrier_naive": naive["lmc"]["loss_barrier"],
                "loss_barrier_matched": matched["lmc"]["loss_barrier"],
                "error_barrier_naive": naive["lmc"]["error_barrier"],
                "error_barrier_matched": matched["lmc"]["error_barrier"],
                "llfc_0.5_naive": statistics.mean(naive["llfc"]["cos_alpha"]["0.5"]),
                "llfc_0.5_matched": statistics.mean(matched["llfc"]["cos_alpha"]["0.5"]),
                "weak_additivity_0.5_matched": statistics.mean(matched["weak_additivity"]["0.5"]),
                "commutativity_matched": statistics.mean(matched["commutativity"]),
                "function_check": result["matching"]["function_check"]["relative_change"],
                "train_seconds": round(train_seconds, 2),
                "analyze_seconds": round(time.perf_counter() - started, 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    methods = [row["method"] for row in rows]
    lines = [
        "| quantity | naive | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for label, key in (
        ("loss barrier", "loss_barrier"),
        ("error barrier", "error_barrier"),
        ("LLFC E[1 - cos], alpha = 0.5, mean over layers", "llfc_0.5"),
    ):
        cells = [f"{rows[0][key + '_naive']:.4f}"]
        cells += [f"{row[key + '_matched']:.4f}" for row in rows]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=sorted(PAIRS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in args.pairs:
        rows = measure(PAIRS[name](), args.seed)
        errors = f"A {rows[0]['error_a']:.4f}, B {rows[0]['error_b']:.4f}"
        print(f"\n{name}: endpoint test errors {errors}")
        print(table(rows) + "\n")


if __name__ == "__main__":
    main()
