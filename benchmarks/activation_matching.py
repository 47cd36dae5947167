"""Activation matching against a plain forward pass of A and B over the same data.

Activation matching needs A's and B's features at every permuted layer, over all the data, and
one assignment per permutation; the forward passes are the floor. This reports, per model, the
time of ``activation_matching`` and of the plain forward passes of A and B (the baseline: same
batches, same memory layout, inference mode) and their ratio; target <= 1.5. Each is the best
of a few runs in one process after a warm-up, because other processes share the cores.

- ``mlp``: MLP 784-512-512-512-10 over 10,000 synthetic examples;
- ``vgg``: VGG-16-BN over 1,000 CIFAR-shaped (3x32x32) examples;
- ``resnet``: ResNet-20 x4 over 500 CIFAR-shaped examples.

    python benchmarks/activation_matching.py [--size tiny|full] [--only mlp,vgg,resnet]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from measure import ENGINE_WORKLOADS, emit
from torch import nn

from llfc_core.archs import parse_arch
from llfc_core.data import ArrayDataset, SyntheticDataset
from llfc_core.matching.activation import activation_matching
from llfc_core.models import load_model

REPEATS = 3
BATCH_SIZE = 256
TARGET_RATIO = 1.5
CPU = torch.device("cpu")


def _best_seconds(call: Callable[[], Any], repeats: int = REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def _channels_last(model: nn.Module) -> bool:
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def _plain_forward(models: list[nn.Module], data: ArrayDataset) -> None:
    with torch.inference_mode():
        for inputs, _ in data.batches(BATCH_SIZE):
            if inputs.dim() == 4 and _channels_last(models[0]):
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            for model in models:
                model(inputs)


def _measure(size: str, name: str) -> dict[str, Any]:
    workload = ENGINE_WORKLOADS[size][name]
    arch = parse_arch(workload["arch"])
    torch.manual_seed(0)
    state_a = arch.build().state_dict()
    state_b = arch.build().state_dict()
    stream = SyntheticDataset(workload["examples"], arch.input_shape, arch.num_classes, seed=1)
    x, y = zip(*stream.batches(512), strict=True)
    data = ArrayDataset(torch.cat(x), torch.cat(y), "synthetic")
    models = [load_model(arch, state, CPU) for state in (state_a, state_b)]
    if _channels_last(models[0]):
        models = [model.to(memory_format=torch.channels_last) for model in models]
    spec = arch.permutation_spec()

    def match() -> tuple[Any, float, float, list[str]]:
        return activation_matching(
            spec, models[0], models[1], data, batch_size=BATCH_SIZE, device=CPU
        )

    _plain_forward(models, data.limit(BATCH_SIZE))
    match()
    forward_seconds = _best_seconds(lambda: _plain_forward(models, data))
    matching_seconds = _best_seconds(match)
    _, before, after, _ = match()
    return {
        "benchmark": "activation_matching",
        "size": size,
        "model": name,
        "arch": workload["arch"],
        "examples": workload["examples"],
        "batch_size": BATCH_SIZE,
        "threads": torch.get_num_threads(),
        "matching_seconds": round(matching_seconds, 6),
        "forward_a_and_b_seconds": round(forward_seconds, 6),
        "ratio": round(matching_seconds / forward_seconds, 3),
        "target_ratio": TARGET_RATIO,
        "objective_before": before,
        "objective_after": after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(ENGINE_WORKLOADS), default="full")
    parser.add_argument("--only", default="mlp,vgg,resnet", help="comma-separated models")
    args = parser.parse_args()
    for name in args.only.split(","):
        emit(_measure(args.size, name))


if __name__ == "__main__":
    main()
