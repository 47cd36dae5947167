"""Analysis throughput: the engine's ``analyze_pair`` against the paper-style baseline.

Workload: the default analysis (11 LMC alphas, 3 LLFC alphas, every metric, no matching) of two
randomly initialised models on synthetic data, for three models:

- ``mlp``: MLP 784-512-512-512-10 over 10,000 examples;
- ``vgg``: VGG-16-BN over CIFAR-shaped (3x32x32) examples: 1,000 at full size, not 2,000, because
  the baseline then holds ~15 GB and takes over ten minutes on two cores (``--examples 2000``
  runs the full workload);
- ``resnet``: ResNet-20 x4 over CIFAR-shaped examples, 500 at full size: at ~650 MMAC per
  example it costs twice VGG-16 per example.

Ours and the baseline (``paper_baseline.py``) each run in a fresh process, after a warm-up, on the
same examples held in memory; each reports wall time and peak RSS. The FLOPs each executes are
counted (every matmul and convolution, 2 per MAC) on a short run of the same analysis and scaled
by the number of examples, as every pass over the data costs the same per example. The machine's
dense float32 matmul rate is measured in the same run, and one JSON line per model reports
examples/s, achieved FLOP/s and its fraction of that peak, the speed-up and the memory ratio,
and the largest difference between the two results (they must compute the same numbers).

Where a GPU is present (``--devices auto``, the default, or ``--devices cpu,cuda``), the same
workload runs there too, both sides again, and each record carries a ``gpu`` block beside the
CPU numbers: seconds, examples/s, achieved FLOP/s against the GPU's measured float32 matmul
rate, peak device memory, the speed-up over the baseline on the GPU, and the largest difference
from the CPU result.

    python benchmarks/analysis_throughput.py [--size tiny|full] [--only mlp,vgg,resnet]
        [--devices auto|cpu|cpu,cuda]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from measure import (
    ENGINE_WORKLOADS,
    count_flops,
    emit,
    matmul_peak_flops,
    measure_call,
    run_worker,
)
from paper_baseline import baseline_measure_pair, max_difference

from llfc_core.analysis import AnalysisConfig, analyze_pair
from llfc_core.archs import parse_arch
from llfc_core.data import ArrayDataset, SyntheticDataset

FULL_SIZE_REPEATS = {"mlp": 3}
"""Best of this many runs at full size: the MLP takes about a second, where other load weighs."""
NOTES = {
    "vgg": "the issue's workload has 2,000 examples; full size uses 1,000 (run time, memory)",
    "resnet": "the issue's workload has 2,000 examples; full size uses 500 (run time)",
}
TARGETS = {"speedup": 5.0, "memory_ratio_vgg": 10.0, "fraction_of_matmul_peak_mlp": 0.5}
COUNTING_EXAMPLES = 16
WARM_UP_EXAMPLES = 16
CPU = torch.device("cpu")


def _inputs(arch_json: dict[str, Any], examples: int) -> tuple[Any, dict, dict, ArrayDataset]:
    """The arch, two random modes and the examples, materialised so both sides read the same."""
    arch = parse_arch(arch_json)
    torch.manual_seed(0)
    state_a = arch.build().state_dict()
    state_b = arch.build().state_dict()
    stream = SyntheticDataset(examples, arch.input_shape, arch.num_classes, seed=1)
    x, y = zip(*stream.batches(512), strict=True)
    return arch, state_a, state_b, ArrayDataset(torch.cat(x), torch.cat(y), "synthetic")


def _worker(
    side: str, arch_json: dict[str, Any], examples: int, repeats: int, device: torch.device
) -> dict[str, Any]:
    """Time one side on ``examples`` examples on ``device`` (best of ``repeats``: other
    processes share the cores); count its FLOPs per example on a short run."""
    arch, state_a, state_b, data = _inputs(arch_json, examples)
    config = AnalysisConfig()

    def run(subset: ArrayDataset) -> dict[str, Any]:
        if side == "ours":
            result = analyze_pair(arch, state_a, state_b, subset, config, device=device)
            return result.pairs["naive"].to_json()
        return baseline_measure_pair(arch, state_a, state_b, subset, config, device)

    run(data.limit(WARM_UP_EXAMPLES))
    result: dict[str, Any] = {}
    runs = [measure_call(lambda: result.update(run(data)), device) for _ in range(repeats)]
    measured = min(runs, key=lambda measurement: measurement["seconds"])
    flops = count_flops(lambda: run(data.limit(COUNTING_EXAMPLES)))
    return {**measured, "flops": flops / COUNTING_EXAMPLES * examples, "result": result}


def _summary(side: dict[str, Any], examples: int, peak: float) -> dict[str, Any]:
    summary = {
        "seconds": round(side["seconds"], 3),
        "examples_per_s": round(examples / side["seconds"], 1),
        "gflop": round(side["flops"] / 1e9, 2),
        "gflop_per_s": round(side["flops"] / side["seconds"] / 1e9, 1),
        "fraction_of_matmul_peak": round(side["flops"] / side["seconds"] / peak, 3),
        "peak_rss_mib": round(side["peak_rss_mib"], 1),
        "rss_growth_mib": round(side["rss_growth_mib"], 1),
    }
    if "peak_device_memory_mib" in side:
        summary["peak_device_memory_mib"] = round(side["peak_device_memory_mib"], 1)
    return summary


def _run_sides(workload: dict[str, Any], device: torch.device) -> dict[str, dict[str, Any]]:
    """Ours and the baseline on ``device``, each in a fresh process."""
    arguments = [
        json.dumps(workload["arch"]),
        str(workload["examples"]),
        str(workload.get("repeats", 1)),
        str(device),
    ]
    return {side: run_worker(Path(__file__), [side, *arguments]) for side in ("ours", "baseline")}


def _gpu_block(
    workload: dict[str, Any], device: torch.device, cpu_result: dict[str, Any]
) -> dict[str, Any]:
    """The same workload on ``device`` (a GPU), reported beside the CPU numbers."""
    sides = _run_sides(workload, device)
    peak = matmul_peak_flops(device=device)
    examples = workload["examples"]
    return {
        "device": torch.cuda.get_device_name(device),
        "matmul_peak_gflop_per_s": round(peak / 1e9, 1),
        "ours": _summary(sides["ours"], examples, peak),
        "baseline": _summary(sides["baseline"], examples, peak),
        "speedup": round(sides["baseline"]["seconds"] / sides["ours"]["seconds"], 2),
        "max_abs_difference_from_cpu": max_difference(sides["ours"]["result"], cpu_result),
    }


def _measure(
    size: str, name: str, peak: float, examples: int | None, gpu: torch.device | None
) -> dict[str, Any]:
    workload = dict(ENGINE_WORKLOADS[size][name])
    if size == "full":
        workload["repeats"] = FULL_SIZE_REPEATS.get(name, 1)
    if examples is not None:
        workload["examples"] = examples
    sides = _run_sides(workload, CPU)
    ours, baseline = sides["ours"], sides["baseline"]
    examples = workload["examples"]
    record = {
        "benchmark": "analysis_throughput",
        "size": size,
        "model": name,
        "arch": workload["arch"],
        "examples": examples,
        "repeats": workload.get("repeats", 1),
        "threads": torch.get_num_threads(),
        "matmul_peak_gflop_per_s": round(peak / 1e9, 1),
        "ours": _summary(ours, examples, peak),
        "baseline": _summary(baseline, examples, peak),
        "speedup": round(baseline["seconds"] / ours["seconds"], 2),
        "memory_ratio": round(baseline["rss_growth_mib"] / max(ours["rss_growth_mib"], 1), 2),
        "peak_rss_ratio": round(baseline["peak_rss_mib"] / ours["peak_rss_mib"], 2),
        "max_abs_difference": max_difference(ours["result"], baseline["result"]),
        "targets": TARGETS,
        "gpu": _gpu_block(workload, gpu, ours["result"]) if gpu is not None else None,
    }
    if size == "full" and name in NOTES and examples is None:
        record["note"] = NOTES[name]
    return record


def _gpu_device(devices: str) -> torch.device | None:
    """The GPU to measure on as well, if any: ``auto`` takes one when present."""
    wanted = set(devices.split(","))
    if "cuda" in wanted or ("auto" in wanted and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit("--devices asks for cuda, but PyTorch sees no CUDA device here.")
        return torch.device("cuda")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(ENGINE_WORKLOADS), default="full")
    parser.add_argument("--only", default="mlp,vgg,resnet", help="comma-separated models")
    parser.add_argument("--examples", type=int, help="number of examples for every model run")
    parser.add_argument(
        "--devices",
        default="auto",
        help="'auto' (the CPU, and a GPU when present), 'cpu', or 'cpu,cuda'",
    )
    parser.add_argument(
        "--worker", nargs=5, metavar=("SIDE", "ARCH", "EXAMPLES", "REPEATS", "DEVICE")
    )
    args = parser.parse_args()
    if args.worker:
        side, arch_json, examples, repeats, device = args.worker
        arch = json.loads(arch_json)
        emit(_worker(side, arch, int(examples), int(repeats), torch.device(device)))
        return
    gpu = _gpu_device(args.devices)
    for name in args.only.split(","):
        emit(_measure(args.size, name, matmul_peak_flops(), args.examples, gpu))


if __name__ == "__main__":
    main()
