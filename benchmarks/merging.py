"""Merging many models: the naive average, MergeMany's weight average and feature averaging.

Prints one JSON line per case, each with the held-out loss and error of every input, of the
naive (unmatched) weight average, of MergeMany's weight average (the matched midpoint, for two
models) and of the feature average started from it, the feature error the fit minimises (on
held-out data), and the seconds each merge took:

- ``mlp-N``, N = 2, 3, 4: digits MLPs 64-512-512-512-10 trained from seeds 0 to N - 1 (as in
  ``digits_pair.py``), the first N of the same four;
- ``vgg-no-bn``: two VGG-11 without BatchNorm on the digits (8x8 images), where averaging
  weights collapses the pre-activations and feature averaging has the most to correct.

Every average is repaired by the default step (BatchNorm reset; none of these nets has one);
``weight_average_repair`` is MergeMany's weight average with REPAIR instead.

    python benchmarks/merging.py [--size tiny|full]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from measure import emit

from llfc_core.archs import parse_arch
from llfc_core.data import digits
from llfc_core.merging import merge_many
from llfc_core.merging.averaging import repair_step
from llfc_core.merging.evaluation import evaluate_merge
from llfc_core.permutation import StateDict
from llfc_core.training import TrainConfig, evaluate, train_modes

CPU = torch.device("cpu")
BATCH_SIZE = 256
VGG_TRAINING = {"optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0, "batch_size": 32}
"""Plain SGD leaves a VGG without BatchNorm at chance on the digits; AdamW trains it."""
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "mlp": {"arch": {"name": "mlp", "widths": [64, 512, 512, 512, 10]}, "epochs": 10},
        "vgg": {
            "arch": {
                "name": "vgg",
                "depth": 11,
                "width": 0.25,
                "batch_norm": False,
                "in_channels": 1,
                "input_size": 8,
            },
            "epochs": 20,
        },
    },
    "tiny": {
        "mlp": {"arch": {"name": "mlp", "widths": [64, 32, 32, 10]}, "epochs": 1},
        "vgg": {
            "arch": {
                "name": "vgg",
                "depth": 11,
                "width": 0.0625,
                "batch_norm": False,
                "in_channels": 1,
                "input_size": 8,
            },
            "epochs": 1,
        },
    },
}
MODEL_COUNTS = (2, 3, 4)


def _merge_case(
    size: str, case: str, arch_json: dict[str, Any], states: list[StateDict]
) -> dict[str, Any]:
    arch = parse_arch(arch_json)
    train, test = digits("train"), digits("test")
    seconds = {}
    results = {}
    for method in ("weight_average", "feature_average"):
        started = time.perf_counter()
        results[method] = merge_many(arch, states, train, method=method, device=CPU)
        seconds[method] = round(time.perf_counter() - started, 3)
    repair = repair_step(arch, train, "reset", batch_size=BATCH_SIZE, device=CPU)
    scores = evaluate_merge(
        arch, results["feature_average"], states, test, repair, batch_size=BATCH_SIZE, device=CPU
    ).to_json()
    weight_average = results["weight_average"].merged
    # The weight average again with REPAIR in place of the default repair (a BatchNorm reset,
    # or nothing without BatchNorm): item 4 compares the feature average with both.
    repaired_average = merge_many(
        arch,
        states,
        train,
        repair=repair_step(arch, train, "repair", batch_size=BATCH_SIZE, device=CPU),
        device=CPU,
    ).merged
    repaired_loss, repaired_error = evaluate(
        arch, repaired_average, test, device=CPU, batch_size=BATCH_SIZE
    )
    return {
        "benchmark": "merging",
        "size": size,
        "case": case,
        "arch": arch_json,
        "models": len(states),
        "threads": torch.get_num_threads(),
        "inputs": scores["inputs"],
        "naive_average": scores["naive_average"],
        "weight_average": scores["matched_average"],
        "weight_average_repair": {"loss": repaired_loss, "error": repaired_error},
        "feature_average": scores["merged"],
        "feature_error": {
            "weight_average": scores["feature_error"]["matched_average"],
            "feature_average": scores["feature_error"]["merged"],
        },
        "rounds": results["weight_average"].rounds,
        "fitted_layers": len(results["feature_average"].fitted_layers),
        "seconds": seconds,
        # The feature average starts from the weight average, which must be the same model.
        "same_weight_average": all(
            torch.equal(weight_average[key], results["feature_average"].matched_average[key])
            for key in weight_average
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    args = parser.parse_args()
    workloads = SIZES[args.size]

    mlp = workloads["mlp"]
    mlp_arch = parse_arch(mlp["arch"])
    config = TrainConfig(epochs=mlp["epochs"], seed=0)
    mlps = train_modes(mlp_arch, digits("train"), config, max(MODEL_COUNTS), CPU)
    for count in MODEL_COUNTS:
        emit(_merge_case(args.size, f"mlp-{count}", mlp["arch"], mlps[:count]))

    vgg = workloads["vgg"]
    vgg_config = TrainConfig(epochs=vgg["epochs"], seed=0, **VGG_TRAINING)
    vggs = train_modes(parse_arch(vgg["arch"]), digits("train"), vgg_config, 2, CPU)
    emit(_merge_case(args.size, "vgg-no-bn", vgg["arch"], vggs))


if __name__ == "__main__":
    main()
